//! `backup`.

use std::io::IsTerminal;

use clap::Args;
use indicatif::HumanBytes;
use serde_json::json;

use super::{access, args, output, verify, GlobalArgs};
use crate::error::{Error, Result};
use crate::ops::backup::{BackupOptions, BackupSource};
use crate::store::SnapshotKind;
use crate::time::rfc3339;

/// `pgvault backup`.
#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub struct BackupArgs {
    /// The database: dumped with pg_dump -Fc -Z0, or the name recorded for --stdin
    /// (with --base, a label for the cluster; default "cluster"). A libpq connection
    /// string works too: pg_dump (with --base, pg_basebackup) connects with it, and
    /// only the database name in it is recorded
    #[arg(short = 'd', long, value_name = "DBNAME")]
    pub db: Option<String>,
    /// Take a physical base backup with pg_basebackup (for point-in-time recovery).
    /// For a cluster with tablespaces pg_basebackup writes one archive per tablespace
    /// into a private spool directory under $TMPDIR (default /var/tmp), each read as
    /// it is written and deleted once read; the spool may need room for the largest
    /// archive (usually base.tar)
    #[arg(long)]
    pub base: bool,
    /// With --base: read the files from this data directory, on the database host,
    /// instead of running pg_basebackup. pgvault connects to the server (as psql
    /// would, with --host, --port, --user or a connection string in --db) for
    /// pg_backup_start and pg_backup_stop, reads every tablespace too, and checks
    /// page checksums as it reads
    #[arg(long, value_name = "DIR", requires = "base", conflicts_with = "stdin")]
    pub pgdata: Option<std::path::PathBuf>,
    /// With --pgdata: how many files are read at once (default: the number of cores)
    #[arg(long, value_name = "N", requires = "pgdata", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: Option<u16>,
    /// With --pgdata: read every file. By default a file of 1 MiB or more that is
    /// unchanged since the previous base backup of the cluster (same size, inode,
    /// modification and change times, and changed more than 2 s before that backup
    /// began) is taken from it by reference, unread
    #[arg(long, requires = "pgdata")]
    pub read_all: bool,
    /// Read the archive from standard input instead of running pg_dump (a custom-format
    /// dump, pg_dump -Fc at any compression, or a gzipped SQL dump, pg_dump | gzip) or
    /// pg_basebackup (its tar stream, with --base)
    #[arg(long)]
    pub stdin: bool,
    /// The backup point's time, for importing older dumps (e.g. '2026-11-01 02:00:00+00'); default now
    #[arg(long, value_name = "TIME", value_parser = args::time)]
    pub time: Option<chrono::DateTime<chrono::Utc>>,
    #[command(flatten)]
    pub conn: args::ConnArgs,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub anomaly: verify::AnomalyArgs,
    /// How long to wait for a prune holding the repository before giving up
    #[arg(long, env = "PGVAULT_LOCK_WAIT", value_name = "DURATION", default_value = "10m", value_parser = args::duration)]
    pub lock_wait: std::time::Duration,
    /// Print help
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

/// `backup`: prints what was stored, and warns about a size anomaly.
///
/// Errors: as [`crate::ops::backup::backup`]; `InvalidInput` when neither --db nor
/// --base is given.
pub async fn run(g: &GlobalArgs, a: &BackupArgs) -> Result<()> {
    // A connection string is for pg_dump; only the database name is recorded.
    let target = match a.db.as_deref() {
        // pg_basebackup connects to the cluster, not a database: a connection string
        // for it needs no dbname, and then the cluster keeps its default label.
        Some(db) if a.base && crate::pg::conninfo::is_conninfo(db) => {
            Some(crate::pg::conninfo::DbTarget {
                name: crate::pg::conninfo::parse(db)
                    .map(|t| t.name)
                    .unwrap_or_else(|_| "cluster".into()),
                conninfo: Some(db.to_string()),
            })
        }
        db => db.map(crate::pg::conninfo::parse).transpose()?,
    };
    let (kind, db) = match (&target, a.base) {
        (Some(t), true) => (SnapshotKind::Base, t.name.clone()),
        (Some(t), false) => (SnapshotKind::Dump, t.name.clone()),
        (None, true) => (SnapshotKind::Base, "cluster".to_string()),
        (None, false) => {
            return Err(Error::InvalidInput(
                "Name the database to dump with --db, or take a base backup with --base".into(),
            ))
        }
    };
    let conn = crate::pg::ConnectOptions {
        conninfo: target.and_then(|t| t.conninfo),
        ..a.conn.options()
    };
    let source = if a.stdin {
        BackupSource::Stream(Box::new(std::io::stdin()))
    } else if let Some(dir) = &a.pgdata {
        BackupSource::Pgdata(crate::pg::pgdata::PgdataOptions {
            pgdata: dir.clone(),
            jobs: args::jobs_or_cores(a.jobs),
            conn,
            prior: None,
            read_all: a.read_all,
        })
    } else {
        BackupSource::Run(conn)
    };
    let label = if a.stdin { "backup" } else { kind.as_str() };
    let tty = std::io::stderr().is_terminal() && std::io::stdout().is_terminal();
    let opts = BackupOptions {
        kind,
        db,
        source,
        time: a.time,
        lock_wait: a.lock_wait,
        size_change_threshold: a.anomaly.ratio(),
    };
    let out =
        crate::ops::backup::backup(&access(g)?, opts, super::progress_for(0, label, tty)).await?;
    let m = &out.manifest;
    if let Some((prev, c)) = &out.previous {
        if c.anomaly {
            eprintln!(
                "pgvault: warning: size anomaly: {} {} is {} ({} against {} of {}), over the {}% threshold",
                m.db,
                m.kind,
                HumanBytes(m.size_bytes),
                percent(c.change_ratio),
                HumanBytes(prev.size_bytes),
                rfc3339(&prev.time),
                a.anomaly.size_change_threshold
            );
        }
    }
    if let Some(r) = &out.pgdata {
        for p in &r.bad_pages {
            eprintln!(
                "pgvault: warning: page checksum failure in {} block {} (stored as read)",
                p.path, p.block
            );
        }
    }
    if a.json {
        let change = &out.previous;
        let mut v = output::backup_json(m);
        v["size_bytes"] = json!(m.size_bytes);
        v["size_anomaly"] = json!(change.as_ref().is_some_and(|(_, c)| c.anomaly));
        v["size_change_ratio"] = json!(change.as_ref().map(|(_, c)| c.change_ratio));
        v["previous_size_bytes"] = json!(change.as_ref().map(|(p, _)| p.size_bytes));
        v["previous_snapshot_id"] = json!(change.as_ref().map(|(p, _)| p.id.clone()));
        if let Some(r) = &out.pgdata {
            v["bad_pages"] = json!(r.bad_pages);
            v["files_vanished"] = json!(r.files_vanished);
        }
        output::print_json(&v);
    } else {
        output::print_backup(m);
    }
    Ok(())
}

fn percent(ratio: f64) -> String {
    if ratio.is_infinite() {
        "new data where there was none".into()
    } else {
        format!("{:+.1}%", ratio * 100.0)
    }
}
