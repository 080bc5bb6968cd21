//! The WAL commands: archive_command, restore_command, the archive listing, and
//! restoring a base backup for point-in-time recovery.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;

use super::{args, open_repo, output, GlobalArgs};
use crate::error::{Error, ErrorKind, Result};
use crate::ops::agent::{Answer, Reply, Request};
use crate::ops::restore::{RecoveryTarget, RestoreOptions};
use crate::ops::restore_tree::TreeOptions;
use crate::pg::recovery;
use crate::store::wal::WalPushOutcome;
use crate::time::rfc3339;
use crate::wal_name::{Lsn, WalFileKind};

/// `pgvault wal-push`.
#[derive(Debug, Args)]
pub struct WalPushArgs {
    /// The WAL file to archive (%p); its file name is the archive name
    pub path: PathBuf,
    /// How long to wait for a prune holding the repository (the archiver retries anyway)
    #[arg(long, env = "PGVAULT_LOCK_WAIT", value_name = "DURATION", default_value = "10m",
          value_parser = args::duration)]
    pub lock_wait: std::time::Duration,
    /// Hand the file to this user's WAL agent for this repository (started on demand,
    /// leaving when idle), which derives the key once and pushes the segments marked
    /// ready ahead, several at once. Still exits 0 only once this file is durable
    #[arg(long = "async")]
    pub asynchronous: bool,
    /// The cluster's system identifier (pg_controldata prints it), for a .history or
    /// .backup file outside the data directory's pg_wal; segments name their own
    #[arg(long, value_name = "ID", value_parser = parse_system_id)]
    pub system_id: Option<u64>,
}

/// `pgvault wal-receive`.
#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub struct WalReceiveArgs {
    #[command(flatten)]
    pub conn: args::ConnArgs,
    /// A libpq connection string for the primary instead ('host=db1 user=replicator
    /// sslmode=require'), passed to pg_receivewal only
    #[arg(long, value_name = "CONNINFO")]
    pub db: Option<String>,
    /// The replication slot that keeps the primary from recycling WAL not yet stored
    /// (an abandoned slot makes the primary keep WAL until its disk is full: drop it
    /// with pg_drop_replication_slot when wal-receive is retired)
    #[arg(long, default_value = "pgvault", value_name = "NAME")]
    pub slot: String,
    /// Create the slot when it does not exist
    #[arg(long)]
    pub create_slot: bool,
    /// How often the segment being written is stored: at most this much of the
    /// newest commits is lost with the primary
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = args::duration)]
    pub partial_interval: std::time::Duration,
    /// How long to wait for a prune holding the repository
    #[arg(long, env = "PGVAULT_LOCK_WAIT", value_name = "DURATION", default_value = "10m",
          value_parser = args::duration)]
    pub lock_wait: std::time::Duration,
    /// Print help
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

/// `pgvault wal-fetch`.
#[derive(Debug, Args)]
pub struct WalFetchArgs {
    /// The WAL file name PostgreSQL asks for (%f)
    pub name: String,
    /// Where to write it (%p)
    pub dest: PathBuf,
    /// Also fetch this many following segments into a local spool (in the cache
    /// directory, outside PGDATA), so recovery's next requests are answered locally
    #[arg(long, default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u16).range(0..=64))]
    pub prefetch: u16,
    /// Read the file from this pgvault mount instead of the repository: needs no
    /// passphrase, only read access to the mount; a dead, hung or missing mount exits
    /// above 125, never 1
    #[arg(long, value_name = "MOUNTPOINT", conflicts_with = "asynchronous")]
    pub from_mount: Option<PathBuf>,
    /// Ask this user's WAL agent for this repository (started on demand, leaving when
    /// idle), which derives the key once and keeps the next segments fetched ahead in
    /// memory; the exit codes stay the same
    #[arg(long = "async")]
    pub asynchronous: bool,
    /// The cluster whose WAL to fetch, by system identifier (`restore` writes it);
    /// default: the cluster whose pg_wal the destination is in, else the only one
    /// that archived the name
    #[arg(long, value_name = "ID", value_parser = parse_system_id)]
    pub system_id: Option<u64>,
}

/// `pgvault wal ...`.
#[derive(Debug, Subcommand)]
pub enum WalCommand {
    /// Timelines, segment ranges and gaps in the archive
    List {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

/// `pgvault restore`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true)
    .args(["target_time", "target_lsn", "target_xid", "latest"])))]
pub struct RestoreArgs {
    /// The new data directory: must not exist or be empty (with --delta: a stopped
    /// copy to bring to the backup)
    #[arg(long, value_name = "DIR")]
    pub pgdata: PathBuf,
    /// Restore over an existing copy whose server is stopped: files that already
    /// match the backup (same size and blake3) are left alone, the others
    /// rewritten, and files the backup does not hold removed, in PGDATA and the
    /// tablespace locations
    #[arg(long)]
    pub delta: bool,
    /// How many files are written at once (default: the number of cores)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: Option<u16>,
    /// Put the tablespace that lived in OLD into NEW instead (repeatable)
    #[arg(long, value_name = "OLD=NEW", value_parser = parse_mapping)]
    pub tablespace_map: Vec<(PathBuf, PathBuf)>,
    /// Recover to this time, with its zone: as PostgreSQL prints it
    /// ('2026-11-29 20:38:42.421088+00', '2026-11-29 20:38:42 UTC') or RFC 3339
    #[arg(long, value_name = "TIME", value_parser = args::time)]
    pub target_time: Option<chrono::DateTime<chrono::Utc>>,
    /// Recover to this LSN
    #[arg(long, value_name = "LSN", value_parser = parse_lsn)]
    pub target_lsn: Option<Lsn>,
    /// Recover to just after this transaction id commits
    #[arg(long, value_name = "XID")]
    pub target_xid: Option<u64>,
    /// Replay all archived WAL
    #[arg(long)]
    pub latest: bool,
    /// Use this base backup (id or prefix) instead of the newest that fits
    #[arg(long, value_name = "ID")]
    pub base: Option<String>,
    /// Only base backups of this cluster, by system identifier (pg_controldata
    /// prints it): needed when several clusters back up into the repository
    #[arg(long, value_name = "ID", value_parser = parse_system_id)]
    pub system_id: Option<u64>,
}

/// A `--tablespace-map` value: two absolute directories.
fn parse_mapping(s: &str) -> std::result::Result<(PathBuf, PathBuf), String> {
    let (old, new) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}' is no OLD=NEW mapping"))?;
    let (old, new) = (PathBuf::from(old), PathBuf::from(new));
    if !old.is_absolute() || !new.is_absolute() {
        return Err(format!("'{s}': both directories must be absolute paths"));
    }
    Ok((old, new))
}

fn parse_lsn(s: &str) -> std::result::Result<Lsn, String> {
    Lsn::parse(s).map_err(|e| e.to_string())
}

/// A system identifier as pg_controldata prints it: a non-zero decimal number.
fn parse_system_id(s: &str) -> std::result::Result<u64, String> {
    match s.parse::<u64>() {
        Ok(id) if id != 0 => Ok(id),
        _ => Err(format!(
            "'{s}' is no system identifier: pg_controldata prints it as a decimal number"
        )),
    }
}

/// `wal-push`: exit 0 only once the file is durably archived.
///
/// Errors: as [`crate::ops::wal::push`].
pub async fn push(g: &GlobalArgs, a: &WalPushArgs) -> Result<()> {
    // A bad path is refused before the repository is opened.
    let name = crate::ops::wal::wal_file_name(&a.path)?;
    if a.asynchronous {
        let path =
            std::path::absolute(&a.path).map_err(|e| Error::io_path("resolve", &a.path, e))?;
        let request = Request::Push {
            path,
            lock_wait_secs: a.lock_wait.as_secs(),
            system: a.system_id,
        };
        let deadline = a.lock_wait + g.io_timeout.call() * 4;
        match super::agent::ask_agent(g, &request, deadline)
            .await?
            .map(|a| a.reply)
        {
            Some(Reply::Pushed { already_archived }) => {
                if already_archived {
                    tracing::info!("{name} was archived already with the same content");
                } else {
                    tracing::info!("Archived {name} through the WAL agent");
                }
                return Ok(());
            }
            Some(other) => return Err(super::agent::reply_error(other)),
            // No agent can be had here: the synchronous path is as safe, only slower.
            None => {}
        }
    }
    match crate::ops::wal::push(&super::access(g)?, &a.path, a.system_id, a.lock_wait).await? {
        WalPushOutcome::Stored => tracing::info!("Archived {name}"),
        WalPushOutcome::AlreadyArchived => {
            tracing::info!("{name} was archived already with the same content")
        }
    }
    Ok(())
}

/// `wal-fetch`.
///
/// Errors: `NotFound` when the file is not archived; anything else means the answer
/// is unknown.
pub async fn fetch(g: &GlobalArgs, a: &WalFetchArgs) -> Result<()> {
    if let Some(mount) = &a.from_mount {
        return crate::ops::wal::fetch_from_mount(
            mount,
            a.system_id,
            &a.name,
            &a.dest,
            g.io_timeout.call(),
        );
    }
    let system = a
        .system_id
        .or_else(|| crate::pg::system_identifier_beside_wal(&a.dest));
    if a.asynchronous {
        WalFileKind::parse(&a.name)?;
        let request = Request::Fetch {
            name: a.name.clone(),
            prefetch: a.prefetch,
            system,
        };
        // The agent's own fetch is bounded by the store's deadlines; this bounds an
        // agent that hangs, so that recovery stops rather than waits forever.
        let deadline = g.io_timeout.call() * 3;
        match super::agent::ask_agent(g, &request, deadline)
            .await
            .map_err(crate::ops::wal::open_error_for_fetch)?
        {
            Some(Answer {
                reply: Reply::Fetched { .. },
                data,
            }) => return crate::ops::wal::hand_over(&a.name, &data, &a.dest),
            Some(other) => return Err(super::agent::reply_error(other.reply)),
            None => {}
        }
    }
    let repo = open_repo(g)
        .await
        .map_err(crate::ops::wal::open_error_for_fetch)?;
    crate::ops::wal::fetch(&repo, system, &a.name, &a.dest, usize::from(a.prefetch)).await
}

/// `wal-fetch`'s exit code for "could not find out": above 125, so PostgreSQL stops
/// recovery instead of taking the end of the archive.
pub const CANNOT_TELL: i32 = 255;

/// The exit code of a failed `wal-fetch`. "Not archived" is 1, said quietly:
/// PostgreSQL probes for files that do not exist. Anything else is above 125, which
/// PostgreSQL treats as fatal: recovery stops instead of ending early and promoting,
/// which would silently lose everything after that point.
pub fn fetch_exit_code(e: &Error) -> i32 {
    if e.kind() == ErrorKind::NotFound {
        tracing::debug!("{e}");
        1
    } else {
        output::print_error(e);
        CANNOT_TELL
    }
}

/// `wal list`.
///
/// Errors: backend errors.
pub async fn list(g: &GlobalArgs, json_out: bool) -> Result<()> {
    let repo = open_repo(g).await?;
    let catalogs = crate::ops::wal::list(&repo).await?;
    let systems: Vec<serde_json::Value> = catalogs
        .iter()
        .map(|(system, cat)| {
            json!({
                // A string: JSON readers that parse numbers as doubles would round it.
                "system_identifier": system.map(|s| s.to_string()),
                "segment_size": cat.segment_size,
                "timelines": timelines_json(cat),
            })
        })
        .collect();
    if json_out {
        output::print_json(&json!({ "systems": systems }));
        return Ok(());
    }
    if systems.is_empty() {
        println!("The WAL archive is empty");
    }
    for s in &systems {
        match s["system_identifier"].as_str() {
            Some(id) => println!("database system {id}:"),
            None => println!("database system not recorded (archived by an older pgvault):"),
        }
        for t in s["timelines"].as_array().expect("array") {
            print_timeline(t);
        }
    }
    Ok(())
}

fn timelines_json(cat: &crate::store::wal::WalCatalog) -> Vec<serde_json::Value> {
    let mut tls = Vec::new();
    for (tl, w) in &cat.timelines {
        let ranges = w.ranges();
        let gaps: Vec<(String, String)> = ranges
            .windows(2)
            .map(|p| (cat.name(*tl, p[0].1 + 1), cat.name(*tl, p[1].0 - 1)))
            .collect();
        tls.push(json!({
            "timeline": tl,
            "segments": w.segments.len(),
            "ranges": ranges.iter().map(|(a, b)| json!({"first": cat.name(*tl, *a), "last": cat.name(*tl, *b)})).collect::<Vec<_>>(),
            "gaps": gaps.iter().map(|(a, b)| json!({"first": a, "last": b})).collect::<Vec<_>>(),
            "history_file": w.history,
            "backup_files": w.backup_files,
            "partial_files": w.partial_files,
            "streamed_files": w.streamed_files,
        }));
    }
    tls
}

fn print_timeline(t: &serde_json::Value) {
    println!(
        "  timeline {}: {} segments{}",
        t["timeline"],
        t["segments"],
        if t["history_file"] == true {
            ", history file"
        } else {
            ""
        }
    );
    for r in t["ranges"].as_array().expect("array") {
        println!(
            "    {} .. {}",
            r["first"].as_str().unwrap_or(""),
            r["last"].as_str().unwrap_or("")
        );
    }
    for gap in t["gaps"].as_array().expect("array") {
        println!(
            "    GAP: {} .. {} missing",
            gap["first"].as_str().unwrap_or(""),
            gap["last"].as_str().unwrap_or("")
        );
    }
    for b in t["backup_files"].as_array().expect("array") {
        println!("    backup file {}", b.as_str().unwrap_or(""));
    }
    let streamed: Vec<&str> = t["streamed_files"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    if let Some(newest) = streamed.iter().max() {
        println!(
            "    streamed by wal-receive: newest copy {newest} ({} copies kept)",
            streamed.len()
        );
    }
}

/// The restore_command the restored server will run: this binary, this repository,
/// and where the passphrase is.
fn restore_command(g: &GlobalArgs, system: u64) -> Result<String> {
    let exe =
        std::env::current_exe().map_err(|e| Error::io("Cannot find the pgvault binary", e))?;
    let repo = super::location_arg(g)?;
    let mut cmd = String::new();
    if !matches!(g.repo, Some(crate::backend::Location::Local(_))) {
        cmd.push_str(&s3_settings_for_restore_command(g));
    }
    if let Some(cache) = std::env::var_os("PGVAULT_CACHE_DIR") {
        cmd.push_str(&format!(
            "PGVAULT_CACHE_DIR={} ",
            recovery::shell_quote(&cache.to_string_lossy())
        ));
    }
    cmd.push_str(&format!(
        "{} --repo {}",
        recovery::shell_quote(&exe.to_string_lossy()),
        recovery::shell_quote(&repo)
    ));
    match &g.password_file {
        Some(pf) => {
            let pf = std::path::absolute(pf).unwrap_or(pf.clone());
            cmd.push_str(&format!(" --password-file {}", recovery::shell_quote(&pf.to_string_lossy())));
        }
        None => eprintln!(
            "pgvault: note: no --password-file/PGVAULT_PASSWORD_FILE was given, so the restored server \
             needs PGVAULT_PASSWORD in its environment for restore_command"
        ),
    }
    // PostgreSQL expands %f, %p and %% in restore_command: a % in a path or an
    // endpoint must reach the shell as itself.
    let mut cmd = cmd.replace('%', "%%");
    cmd.push_str(&format!(" wal-fetch --async --system-id {system} %f %p"));
    Ok(cmd)
}

/// The S3 settings a restored server's restore_command needs, as `NAME=value `
/// assignments: where the store is and where credentials come from, never the
/// credentials themselves (postgresql.auto.conf is readable by anyone who can read
/// PGDATA, and is copied by every base backup). A note says where the secret must
/// come from when it was given in this environment.
fn s3_settings_for_restore_command(g: &GlobalArgs) -> String {
    let mut out = String::new();
    for name in super::agent::AWS_SETTINGS {
        if let Some(v) = std::env::var_os(name).filter(|v| !v.is_empty()) {
            let v = v.to_string_lossy();
            let v = if name.ends_with("_FILE") || name == "AWS_CA_BUNDLE" {
                std::path::absolute(v.as_ref())
                    .map(|p| p.display().to_string())
                    .unwrap_or(v.into_owned())
            } else {
                v.into_owned()
            };
            out.push_str(&format!("{name}={} ", recovery::shell_quote(&v)));
        }
    }
    if g.s3_path_style {
        out.push_str("PGVAULT_S3_PATH_STYLE=1 ");
    }
    if std::env::var_os("AWS_SECRET_ACCESS_KEY").is_some() {
        eprintln!(
            "pgvault: note: restore_command does not carry AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY; \
             the restored server's user needs them from a credentials file (AWS_SHARED_CREDENTIALS_FILE \
             when running restore names one, else ~/.aws/credentials), an instance role, or its environment"
        );
    }
    out
}

/// `restore`: plan and check everything, then extract and configure.
///
/// Errors: as [`crate::ops::restore::restore`].
pub async fn restore(g: &GlobalArgs, a: &RestoreArgs) -> Result<()> {
    if !a.delta {
        recovery::check_empty_pgdata(&a.pgdata)?;
    }
    let target = if let Some(t) = a.target_time {
        RecoveryTarget::Time(t)
    } else if let Some(l) = a.target_lsn {
        RecoveryTarget::Lsn(l)
    } else if let Some(x) = a.target_xid {
        RecoveryTarget::Xid(x)
    } else {
        RecoveryTarget::Latest
    };
    let repo = open_repo(g).await?;
    let opts = RestoreOptions {
        pgdata: a.pgdata.clone(),
        target,
        base: a.base.clone(),
        system: a.system_id,
        tree: TreeOptions {
            jobs: args::jobs_or_cores(a.jobs),
            delta: a.delta,
            tablespace_map: a.tablespace_map.clone(),
            tablespaces_under: None,
        },
    };
    eprintln!("Restoring into {}", a.pgdata.display());
    let tty = std::io::stderr().is_terminal();
    let (plan, stats) = crate::ops::restore::restore(
        &repo,
        &opts,
        |system| restore_command(g, system),
        |base| super::progress_for(base.size_bytes, "restore", tty),
    )
    .await?;
    if a.delta {
        println!(
            "Delta: {} files rewritten ({}, {} bytes written), {} already matched, {} paths removed",
            stats.files_written,
            indicatif::HumanBytes(stats.bytes_written),
            stats.bytes_written,
            stats.files_unchanged,
            stats.paths_removed
        );
    }
    let info = plan.base.base.clone().expect("planned from a base backup");
    println!(
        "Restored base backup {} ({}, timeline {}, LSN {}..{}) into {}. WAL {}..{} is needed (archived up to {} without a gap).",
        plan.base.short_id(),
        rfc3339(&plan.base.time),
        info.timeline,
        info.start_lsn,
        info.stop_lsn,
        a.pgdata.display(),
        plan.wal_first,
        plan.wal_last_needed,
        plan.wal_newest
    );
    println!("Start the server to recover; as the postgres user:");
    println!(
        "  chown -R postgres: {0} && pg_ctl -D {0} start",
        a.pgdata.display()
    );
    Ok(())
}

/// `wal-receive`: stream WAL from the primary until stopped (SIGTERM, SIGINT).
///
/// Errors: as [`crate::ops::receive::receive`] and opening the repository.
pub async fn receive(g: &GlobalArgs, a: &WalReceiveArgs) -> Result<()> {
    if a.partial_interval.is_zero() {
        return Err(Error::InvalidInput(
            "--partial-interval must be longer than 0s".into(),
        ));
    }
    let access = super::access(g)?;
    let mut conn = a.conn.options();
    conn.conninfo = a.db.clone();
    let where_from = format!(
        "{}\n{:?}\n{:?}\n{:?}\n{}",
        super::agent::agent_identity(g)?,
        a.conn.host,
        a.conn.port,
        a.db,
        a.slot
    );
    let hash = blake3::hash(where_from.as_bytes()).to_hex();
    let spool = access.cache_root.join("receive").join(&hash.as_str()[..16]);
    let repo = access.open().await?;
    let opts = crate::ops::receive::ReceiveOptions {
        conn,
        slot: a.slot.clone(),
        create_slot: a.create_slot,
        partial_interval: a.partial_interval,
        spool,
        lock_wait: a.lock_wait,
    };
    eprintln!(
        "Receiving WAL through slot {} into {} (spool {})",
        a.slot,
        repo.location(),
        opts.spool.display()
    );
    let stop = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    let stats = crate::ops::receive::receive(&repo, &access, &opts, stop).await?;
    eprintln!(
        "Stopped: {} segments and {} streamed copies stored",
        stats.segments_stored, stats.streamed_copies_stored
    );
    Ok(())
}
