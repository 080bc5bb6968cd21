//! Restore drills: prove that a backup restores, by restoring it somewhere harmless,
//! checking the result and throwing it away, and record how long it took (the
//! measured recovery time).
//!
//! - A logical drill restores a dump into a new database with a unique name on a
//!   server (by default the one pg_dump uses), with `pg_restore --no-owner
//!   --no-privileges` (the drill server need not have the source's roles). It never
//!   connects to the source database.
//! - A PITR drill restores a base backup into a temporary PGDATA, stages the WAL the
//!   restore plan needs next to it, and starts a private postgres on it that listens
//!   on no TCP port, only on a socket in the temporary directory (so there is no port
//!   to collide on and nobody else can connect), with archiving off (the restored
//!   configuration would otherwise push the drill's own WAL into the archive).
//!   Staging the WAL, rather than giving the server a `pgvault wal-fetch`
//!   restore_command, means the server's OS user needs neither the passphrase nor
//!   access to the repository.
//!
//! Checks: pg_restore (or recovery) succeeds; per-table row counts are collected;
//! every TABLE DATA entry of the dump's table of contents (`pg_restore -l`) has its
//! table; and an optional assertions file holds, each statement returning one true.
//!
//! Whatever happens, the temporary database is dropped and the temporary directory
//! removed: on success, on failure, and on SIGINT, SIGTERM or SIGHUP, which are caught
//! for the drill's whole run (a `kill -9` cannot be caught: the leftover is named
//! `pgvault_drill_*` or `pgvault-drill-*` so it can be found).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::process::Command;
use tokio::task::JoinSet;

use super::restore::{extract_base_into, plan_restore, tree_targets, RecoveryTarget, RestorePlan};
use super::restore_tree::TreeOptions;
use crate::error::{Error, Result};
use crate::pg::client::{
    client, drop_database, list_tables, psql, quote_ident, row_counts, table_data_entries, tail,
    MAINTENANCE_DB,
};
use crate::pg::recovery::{self, RecoverySettings};
use crate::pg::server::{chown_tree, server_user, stop_server};
use crate::pg::{pg_program, ConnectOptions};
use crate::store::manifest::{SnapshotKind, SnapshotManifest};
use crate::store::records::{AssertionResult, DrillRecord, TableRows};
use crate::store::writer::NoProgress;
use crate::store::Repository;
use crate::time::rfc3339;

/// Parses an assertions file.
///
/// The format: SQL statements, each ending with a `;` at the end of a line. Blank
/// lines and `--` comment lines between statements are skipped. Each statement must
/// return exactly one row of one column whose value is true; false, NULL, another
/// shape or an error fails the drill. For example:
///
/// ```sql
/// -- every match has its two teams
/// SELECT count(*) = 0 FROM matches m LEFT JOIN teams t ON t.id = m.home_team_id WHERE t.id IS NULL;
/// SELECT max(created_at) > now() - interval '2 days' FROM notifications;
/// ```
pub fn parse_assertions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if current.is_empty() && (t.is_empty() || t.starts_with("--")) {
            continue;
        }
        current.push_str(line);
        current.push('\n');
        if t.ends_with(';') {
            let stmt = current.trim().trim_end_matches(';').trim().to_string();
            if !stmt.is_empty() {
                out.push(stmt);
            }
            current.clear();
        }
    }
    let rest = current.trim().to_string();
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

/// What a drill is asked to do.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    /// A dump drill restores this database's newest dump; a PITR drill counts rows
    /// in it and runs the assertions against it.
    pub db: Option<String>,
    /// Restore this snapshot (id or prefix) instead of the newest.
    pub snapshot: Option<String>,
    /// A PITR drill to this target, instead of a dump drill.
    pub pitr: Option<RecoveryTarget>,
    pub assertions: Vec<String>,
    /// Where a dump is restored (a dump drill), or the role to connect as (`user`,
    /// a PITR drill; default postgres).
    pub conn: ConnectOptions,
    /// pg_restore --jobs.
    pub jobs: u32,
    /// Where the temporary dump file or PGDATA goes.
    pub work_dir: PathBuf,
    /// How long recovery may take.
    pub timeout: Duration,
}

/// A drill chosen and ready to run.
#[derive(Debug, Clone)]
pub enum Drill {
    Dump(DumpDrill),
    Base(BaseDrill),
}

/// Chooses what to restore: the snapshot for a dump drill, the checked restore plan
/// for a PITR drill.
///
/// Errors: `InvalidInput` when neither a database nor a snapshot is named for a dump
/// drill; `NotFound` when there is no dump of the database; as
/// [`plan_restore`] for a PITR drill; backend errors.
pub async fn prepare(repo: &Repository, o: &DrillOptions) -> Result<Drill> {
    repo.flush_spool(usize::MAX).await;
    if let Some(target) = &o.pitr {
        let plan = plan_restore(repo, target.clone(), o.snapshot.as_deref(), None).await?;
        let target_label = match target {
            RecoveryTarget::Time(t) => rfc3339(t),
            _ => "latest".to_string(),
        };
        return Ok(Drill::Base(BaseDrill {
            plan,
            target_label,
            target: target.settings(),
            dbs: o.db.iter().cloned().collect(),
            user: o.conn.user.clone().unwrap_or_else(|| "postgres".into()),
            assertions: o.assertions.clone(),
            work_dir: o.work_dir.clone(),
            timeout: o.timeout,
        }));
    }
    let snapshot = match (&o.snapshot, &o.db) {
        (Some(id), _) => repo.resolve_snapshot(id).await?,
        (None, Some(db)) => repo
            .snapshots()
            .await?
            .into_iter()
            .filter(|s| &s.db == db && s.kind == SnapshotKind::Dump)
            .max_by_key(|s| s.time)
            .ok_or_else(|| Error::NotFound {
                what: format!("A dump of database {db}"),
                location: repo.location(),
            })?,
        (None, None) => return Err(Error::InvalidInput(
            "Name the database to drill with --db (or a snapshot with --snapshot), or use --base"
                .into(),
        )),
    };
    Ok(Drill::Dump(DumpDrill {
        snapshot,
        conn: o.conn.clone(),
        assertions: o.assertions.clone(),
        work_dir: o.work_dir.clone(),
        jobs: o.jobs.max(1),
    }))
}

/// Runs a prepared drill and records its result; a failure is a failed drill in the
/// report, not an error.
pub async fn run(repo: &Repository, drill: &Drill) -> DrillReport {
    match drill {
        Drill::Dump(d) => dump_drill(repo, d).await,
        Drill::Base(d) => base_drill(repo, d).await,
    }
}

/// What a drill found, beyond what its record keeps.
#[derive(Debug, Clone)]
pub struct DrillReport {
    pub record: DrillRecord,
    /// The temporary database or PGDATA.
    pub scratch: String,
    /// TABLE DATA entries in the dump's table of contents.
    pub toc_table_data: usize,
    /// TABLE DATA entries whose table is missing after the restore.
    pub missing_tables: Vec<String>,
    /// Problems while cleaning up, which a person must look at.
    pub cleanup_warnings: Vec<String>,
}

/// A logical drill: which dump, restored where, checked how.
#[derive(Debug, Clone)]
pub struct DumpDrill {
    pub snapshot: SnapshotManifest,
    pub conn: ConnectOptions,
    pub assertions: Vec<String>,
    /// Where the dump file is written for pg_restore.
    pub work_dir: PathBuf,
    /// pg_restore --jobs.
    pub jobs: u32,
}

/// A PITR drill: a checked restore plan and how to check the result.
#[derive(Debug, Clone)]
pub struct BaseDrill {
    pub plan: RestorePlan,
    /// The target as the user gave it, for the record.
    pub target_label: String,
    /// `recovery_target_*` settings; empty to replay all archived WAL.
    pub target: Vec<(&'static str, String)>,
    /// Databases to count rows in; empty means every database that allows connections.
    pub dbs: Vec<String>,
    /// The database role to connect as in the restored cluster.
    pub user: String,
    pub assertions: Vec<String>,
    pub work_dir: PathBuf,
    /// How long recovery may take.
    pub timeout: Duration,
}

/// What must be undone, whatever happens.
#[derive(Debug, Default)]
struct Scratch {
    temp_db: Option<(ConnectOptions, String)>,
    server: Option<(PathBuf, Option<(u32, u32)>)>,
    dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Default)]
struct Cleanup(Arc<Mutex<Scratch>>);

impl Cleanup {
    fn set(&self, f: impl FnOnce(&mut Scratch)) {
        f(&mut self.0.lock().expect("cleanup lock"));
    }

    /// Drops the database, stops the server, removes the directory. Returns what
    /// could not be undone.
    async fn run(&self) -> Vec<String> {
        let s = std::mem::take(&mut *self.0.lock().expect("cleanup lock"));
        let mut warnings = Vec::new();
        if let Some((conn, name)) = s.temp_db {
            if let Err(e) = drop_database(&conn, &name).await {
                warnings.push(format!(
                    "Cannot drop temporary database {name}: {e}; drop it by hand"
                ));
            }
        }
        if let Some((pgdata, run_as)) = s.server {
            stop_server(&pgdata, run_as, "immediate").await;
        }
        if let Some(dir) = s.dir {
            let mut last = None;
            // A server that was just killed may still be writing its last files.
            for _ in 0..20 {
                match std::fs::remove_dir_all(&dir) {
                    Ok(()) => {
                        last = None;
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        last = None;
                        break;
                    }
                    Err(e) => last = Some(e),
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            if let Some(e) = last {
                warnings.push(format!(
                    "Cannot remove temporary directory {}: {e}; remove it by hand",
                    dir.display()
                ));
            }
        }
        warnings
    }
}

/// Runs `fut` unless a termination signal comes first.
///
/// Errors: `External` naming the signal when one arrives; `Io` when the handlers
/// cannot be installed; otherwise whatever `fut` returns.
async fn interruptible<T>(fut: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    use tokio::signal::unix::{signal, SignalKind};
    let handler = |k| signal(k).map_err(|e| Error::io("Cannot install a signal handler", e));
    let mut int = handler(SignalKind::interrupt())?;
    let mut term = handler(SignalKind::terminate())?;
    let mut hup = handler(SignalKind::hangup())?;
    let interrupted = |name: &str| {
        Err(Error::External(format!(
            "Drill interrupted by {name}: cleaned up and gave up"
        )))
    };
    tokio::select! {
        r = fut => r,
        _ = int.recv() => interrupted("SIGINT"),
        _ = term.recv() => interrupted("SIGTERM"),
        _ = hup.recv() => interrupted("SIGHUP"),
    }
}

/// A unique name for a drill's database: recognisable, and within 63 bytes.
fn temp_db_name(db: &str) -> String {
    let clean: String = db
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(24)
        .collect();
    format!(
        "pgvault_drill_{clean}_{}",
        hex::encode(crate::crypto::random_bytes::<6>())
    )
}

/// Creates a private directory for the drill's files.
fn make_scratch_dir(parent: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = parent.join(format!(
        "pgvault-drill-{}",
        hex::encode(crate::crypto::random_bytes::<6>())
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(false)
        .create(&dir)
        .map_err(|e| Error::io_path("create drill directory", &dir, e))?;
    Ok(dir)
}

fn table_rows(counts: Vec<(String, i64)>) -> Vec<TableRows> {
    counts
        .into_iter()
        .map(|(table, rows)| TableRows { table, rows })
        .collect()
}

/// Runs each assertion; a statement passes when it returns exactly one true.
async fn run_assertions(conn: &ConnectOptions, db: &str, sqls: &[String]) -> Vec<AssertionResult> {
    let mut out = Vec::new();
    for sql in sqls {
        let (ok, outcome) = match psql(conn, db, sql).await {
            Ok(s) if s.trim() == "t" => (true, "true".to_string()),
            Ok(s) if s.trim() == "f" => (false, "false".to_string()),
            Ok(s) if s.trim().is_empty() => (false, "no row or NULL".to_string()),
            Ok(s) => (false, format!("not a single boolean: {}", s.trim())),
            Err(e) => (false, e.to_string()),
        };
        out.push(AssertionResult {
            sql: sql.clone(),
            ok,
            outcome,
        });
    }
    out
}

/// What the checks of a restored database found.
#[derive(Default)]
struct Found {
    restore_seconds: Option<f64>,
    tables: Vec<TableRows>,
    assertions: Vec<AssertionResult>,
    toc_table_data: usize,
    missing_tables: Vec<String>,
}

/// Finishes a drill: cleans up, judges, and records the result in the repository
/// (or the local spool when it cannot be written).
async fn conclude(
    repo: &Repository,
    mut record: DrillRecord,
    started: Instant,
    scratch: String,
    result: Result<Found>,
    cleanup: Cleanup,
) -> DrillReport {
    let cleanup_warnings = cleanup.run().await;
    let mut toc_table_data = 0;
    let mut missing_tables = Vec::new();
    match result {
        Ok(f) => {
            let failed: Vec<&AssertionResult> = f.assertions.iter().filter(|a| !a.ok).collect();
            let mut why = Vec::new();
            if !f.missing_tables.is_empty() {
                why.push(format!(
                    "{} tables of the dump's TABLE DATA entries are missing after the restore: {}",
                    f.missing_tables.len(),
                    f.missing_tables.join(", ")
                ));
            }
            if !failed.is_empty() {
                why.push(format!(
                    "{} of {} assertions failed: {}",
                    failed.len(),
                    f.assertions.len(),
                    failed
                        .iter()
                        .map(|a| format!("{} ({})", first_line(&a.sql), a.outcome))
                        .collect::<Vec<_>>()
                        .join("; ")
                ));
            }
            record.ok = why.is_empty();
            record.error = (!why.is_empty()).then(|| why.join("; "));
            record.restore_seconds = f.restore_seconds;
            record.tables = f.tables;
            record.assertions = f.assertions;
            toc_table_data = f.toc_table_data;
            missing_tables = f.missing_tables;
        }
        Err(e) => {
            record.ok = false;
            record.error = Some(e.to_string());
        }
    }
    record.duration_seconds = started.elapsed().as_secs_f64();
    repo.record_or_spool(&record).await;
    DrillReport {
        record,
        scratch,
        toc_table_data,
        missing_tables,
        cleanup_warnings,
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

fn new_record(db: &str, kind: SnapshotKind, snapshot_id: &str) -> DrillRecord {
    DrillRecord {
        time: chrono::Utc::now(),
        db: db.to_string(),
        kind,
        snapshot_id: snapshot_id.to_string(),
        target: None,
        ok: false,
        error: None,
        duration_seconds: 0.0,
        restore_seconds: None,
        tables: Vec::new(),
        assertions: Vec::new(),
        hostname: crate::host::hostname(),
    }
}

/// Runs a logical drill and records its result. The report says whether it passed;
/// every failure (pg_restore, a missing table, an assertion, a signal) is a failed
/// drill rather than an error, so it is recorded and cleaned up like any other.
pub async fn dump_drill(repo: &Repository, d: &DumpDrill) -> DrillReport {
    let started = Instant::now();
    let record = new_record(&d.snapshot.db, SnapshotKind::Dump, &d.snapshot.id);
    let cleanup = Cleanup::default();
    let name = temp_db_name(&d.snapshot.db);
    let result = interruptible(dump_body(repo, d, &name, &cleanup, started)).await;
    conclude(repo, record, started, name, result, cleanup).await
}

async fn dump_body(
    repo: &Repository,
    d: &DumpDrill,
    name: &str,
    cleanup: &Cleanup,
    started: Instant,
) -> Result<Found> {
    if d.snapshot.kind != SnapshotKind::Dump {
        return Err(Error::InvalidInput(format!(
            "Snapshot {} is a {}, not a dump: use drill --base for base backups",
            d.snapshot.short_id(),
            d.snapshot.kind
        )));
    }
    let dir = make_scratch_dir(&d.work_dir)?;
    cleanup.set(|s| s.dir = Some(dir.clone()));
    if !d.snapshot.is_custom_archive() {
        return script_body(repo, d, name, cleanup, started, &dir).await;
    }
    let file = dir.join(&d.snapshot.file_name);
    {
        let mut f = std::fs::File::create(&file).map_err(|e| Error::io_path("create", &file, e))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, &mut f);
        repo.cat(&d.snapshot, &mut w, Arc::new(NoProgress)).await?;
    }
    let listing = client("pg_restore", &ConnectOptions::default())
        .arg("--list")
        .arg(&file)
        .output()
        .await
        .map_err(|e| Error::External(format!("Cannot start pg_restore: {e}")))?;
    if !listing.status.success() {
        return Err(Error::External(format!(
            "pg_restore --list of snapshot {} failed ({}): {}",
            d.snapshot.short_id(),
            listing.status,
            tail(&listing.stderr)
        )));
    }
    let toc = table_data_entries(&String::from_utf8_lossy(&listing.stdout));
    create_temp_db(d, name, cleanup).await?;

    let mut cmd = client("pg_restore", &d.conn);
    cmd.args(["--no-owner", "--no-privileges", "--dbname", name]);
    if d.jobs > 1 {
        cmd.args(["--jobs", &d.jobs.to_string()]);
    }
    let out = cmd
        .arg(&file)
        .output()
        .await
        .map_err(|e| Error::External(format!("Cannot start pg_restore: {e}")))?;
    if !out.status.success() {
        return Err(Error::External(format!(
            "pg_restore of snapshot {} into temporary database {name} failed ({}): {}",
            d.snapshot.short_id(),
            out.status,
            tail(&out.stderr)
        )));
    }
    restored(d, name, started, &file, &toc).await
}

/// Creates the drill's temporary database and hands it to `cleanup` to drop.
async fn create_temp_db(d: &DumpDrill, name: &str, cleanup: &Cleanup) -> Result<()> {
    psql(
        &d.conn,
        MAINTENANCE_DB,
        &format!("CREATE DATABASE {}", quote_ident(name)),
    )
    .await?;
    // Only a database we created is ever dropped.
    cleanup.set(|s| s.temp_db = Some((d.conn.clone(), name.to_string())));
    Ok(())
}

/// What a restored dump drill found: the time the restore took, its tables and
/// row counts, the tables the dump had that are missing, and the assertions.
async fn restored(
    d: &DumpDrill,
    name: &str,
    started: Instant,
    file: &Path,
    toc: &[(String, String)],
) -> Result<Found> {
    let restore_seconds = started.elapsed().as_secs_f64();
    // The file is no longer needed: free its space before the checks.
    let _ = std::fs::remove_file(file);

    let tables = list_tables(&d.conn, name).await?;
    let present: std::collections::HashSet<&(String, String)> = tables.iter().collect();
    let missing_tables = toc
        .iter()
        .filter(|t| !present.contains(t))
        .map(|(s, t)| format!("{s}.{t}"))
        .collect();
    Ok(Found {
        restore_seconds: Some(restore_seconds),
        tables: table_rows(row_counts(&d.conn, name, &tables).await?),
        assertions: run_assertions(&d.conn, name, &d.assertions).await,
        toc_table_data: toc.len(),
        missing_tables,
    })
}

/// The drill of a gzipped SQL dump: its script, gunzipped on the way out of the
/// repository, is run by psql into the temporary database. Without pg_restore's
/// `--no-owner`, ownership and grants name roles the drill's server may lack:
/// those errors are let by, as `--no-owner --no-privileges` would avoid them; any
/// other error fails the drill.
async fn script_body(
    repo: &Repository,
    d: &DumpDrill,
    name: &str,
    cleanup: &Cleanup,
    started: Instant,
    dir: &Path,
) -> Result<Found> {
    let file = dir.join(format!("{}.sql", d.snapshot.db));
    {
        let f = std::fs::File::create(&file).map_err(|e| Error::io_path("create", &file, e))?;
        let mut w =
            flate2::write::MultiGzDecoder::new(std::io::BufWriter::with_capacity(1 << 20, f));
        repo.cat(&d.snapshot, &mut w, Arc::new(NoProgress)).await?;
        w.finish()
            .and_then(|mut f| std::io::Write::flush(&mut f))
            .map_err(|e| Error::io_path("write", &file, e))?;
    }
    let script = std::fs::File::open(&file).map_err(|e| Error::io_path("open", &file, e))?;
    let (toc, connects) = scan_script(std::io::BufReader::new(script));
    if connects {
        // psql would follow it out of the temporary database, into the real one.
        return Err(Error::InvalidInput(format!(
            "The SQL script of snapshot {} connects to other databases (\\connect, as \
             pg_dump --create and pg_dumpall write): a drill restores only a script of \
             one database",
            d.snapshot.short_id()
        )));
    }
    create_temp_db(d, name, cleanup).await?;
    let out = client("psql", &d.conn)
        .args(["-X", "-q", "--dbname", name, "-f"])
        .arg(&file)
        .output()
        .await
        .map_err(|e| Error::External(format!("Cannot start psql: {e}")))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("ERROR:"))
        .filter(|l| !(l.contains("role \"") && l.contains("does not exist")))
        .collect();
    if !out.status.success() || !errors.is_empty() {
        return Err(Error::External(format!(
            "psql of the SQL script of snapshot {} into temporary database {name} failed \
             ({}): {}",
            d.snapshot.short_id(),
            out.status,
            if errors.is_empty() {
                tail(&out.stderr)
            } else {
                errors.join("\n")
            }
        )));
    }
    restored(d, name, started, &file, &toc).await
}

/// The tables a plain-SQL dump loads rows into (its `COPY schema.table (...) FROM
/// stdin;` lines, names unquoted), and whether it has a `\connect` line. A data line
/// that begins with "COPY " is read as a statement only if it ends the way pg_dump
/// ends its COPY statements; a data line cannot begin with a backslash and a letter
/// (COPY's text format writes a backslash as two).
fn scan_script(script: impl std::io::BufRead) -> (Vec<(String, String)>, bool) {
    let mut tables = Vec::new();
    let mut connects = false;
    for line in script.split(b'\n').map_while(std::result::Result::ok) {
        connects |= line.starts_with(b"\\connect ") || line.starts_with(b"\\c ");
        let Ok(line) = String::from_utf8(line) else {
            continue;
        };
        let Some(rest) = line.strip_prefix("COPY ") else {
            continue;
        };
        if !rest.ends_with(" FROM stdin;") {
            continue;
        }
        let Some((schema, rest)) = sql_ident(rest) else {
            continue;
        };
        if let Some((table, _)) = rest.strip_prefix('.').and_then(sql_ident) {
            tables.push((schema, table));
        }
    }
    (tables, connects)
}

/// The identifier at the start of `s`, unquoted, and what follows it.
fn sql_ident(s: &str) -> Option<(String, &str)> {
    if let Some(quoted) = s.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = quoted.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if chars.peek().map(|&(_, c)| c) == Some('"') {
                    chars.next();
                    name.push('"');
                    continue;
                }
                return Some((name, &quoted[i + 1..]));
            }
            name.push(c);
        }
        return None;
    }
    let end = s.find(['.', ' ']).unwrap_or(s.len());
    Some((s[..end].to_string(), &s[end..]))
}

/// Runs a PITR drill and records its result; failures are failed drills, as for
/// [`dump_drill`].
pub async fn base_drill(repo: &Repository, d: &BaseDrill) -> DrillReport {
    let started = Instant::now();
    let mut record = new_record(&d.plan.base.db, SnapshotKind::Base, &d.plan.base.id);
    record.target = Some(d.target_label.clone());
    let cleanup = Cleanup::default();
    let scratch = Arc::new(Mutex::new(String::new()));
    let result = interruptible(base_body(repo, d, &cleanup, started, scratch.clone())).await;
    let scratch = scratch.lock().expect("scratch lock").clone();
    conclude(repo, record, started, scratch, result, cleanup).await
}

const DRILL_SOCKET_PORT: &str = "5432";

async fn base_body(
    repo: &Repository,
    d: &BaseDrill,
    cleanup: &Cleanup,
    started: Instant,
    scratch: Arc<Mutex<String>>,
) -> Result<Found> {
    let run_as = server_user()?;
    let dir = make_scratch_dir(&d.work_dir)?;
    cleanup.set(|s| s.dir = Some(dir.clone()));
    let pgdata = dir.join("data");
    let sock = dir.join("sock");
    let wal_dir = dir.join("wal");
    *scratch.lock().expect("scratch lock") = pgdata.display().to_string();
    for p in [&sock, &wal_dir] {
        std::fs::create_dir(p).map_err(|e| Error::io_path("create", p, e))?;
    }

    // Tablespaces go beside the data directory, inside the scratch directory, never
    // where the source cluster keeps them.
    let tree = TreeOptions {
        jobs: 2,
        tablespaces_under: Some(dir.join("tablespaces")),
        ..TreeOptions::default()
    };
    let spaces = tree_targets(&d.plan.base, &pgdata, &tree)?;
    extract_base_into(
        repo,
        &d.plan.base,
        &pgdata,
        &spaces,
        &tree,
        Arc::new(NoProgress),
    )
    .await?;

    stage_wal(repo, &d.plan, &wal_dir).await?;
    let mut target = d.target.clone();
    target.push(("recovery_target_timeline", d.plan.timeline.to_string()));
    recovery::write_recovery_config(
        &pgdata,
        &RecoverySettings {
            restore_command: format!(
                "cp {}/%f %p",
                recovery::shell_quote(&wal_dir.to_string_lossy())
            ),
            target,
        },
    )?;
    // Our own access rules and, for a cluster whose postgresql.conf lived outside
    // PGDATA (Debian keeps it in /etc), an empty one: defaults serve a drill.
    let hba = pgdata.join("pg_hba.conf");
    std::fs::write(&hba, "local all all trust\n").map_err(|e| Error::io_path("write", &hba, e))?;
    let ident = pgdata.join("pg_ident.conf");
    std::fs::write(&ident, "").map_err(|e| Error::io_path("write", &ident, e))?;
    let conf = pgdata.join("postgresql.conf");
    if !conf.exists() {
        std::fs::write(&conf, "").map_err(|e| Error::io_path("write", &conf, e))?;
    }
    if let Some((uid, gid)) = run_as {
        chown_tree(&dir, uid, gid)?;
    }

    let log_path = dir.join("postgres.log");
    let log =
        std::fs::File::create(&log_path).map_err(|e| Error::io_path("create", &log_path, e))?;
    let log2 = log
        .try_clone()
        .map_err(|e| Error::io_path("open", &log_path, e))?;
    let mut cmd = Command::new(pg_program("postgres"));
    cmd.arg("-D").arg(&pgdata);
    for (k, v) in [
        ("port", DRILL_SOCKET_PORT.to_string()),
        ("listen_addresses", String::new()),
        ("unix_socket_directories", sock.display().to_string()),
        ("hba_file", hba.display().to_string()),
        ("ident_file", ident.display().to_string()),
        ("archive_mode", "off".into()),
        ("logging_collector", "off".into()),
        ("cluster_name", "pgvault-drill".into()),
    ] {
        cmd.arg("-c").arg(format!("{k}={v}"));
    }
    cmd.current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        // Its own process group: a ^C on the terminal reaches us, and we stop it in order.
        .process_group(0);
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid).gid(gid);
    }
    cleanup.set(|s| s.server = Some((pgdata.clone(), run_as)));
    let mut server = cmd
        .spawn()
        .map_err(|e| Error::External(format!("Cannot start postgres for the drill: {e}")))?;

    let conn = ConnectOptions {
        host: Some(sock.display().to_string()),
        port: Some(DRILL_SOCKET_PORT.parse().expect("a port")),
        user: Some(d.user.clone()),
        conninfo: None,
    };
    let deadline = Instant::now() + d.timeout;
    loop {
        if let Some(status) = server
            .try_wait()
            .map_err(|e| Error::External(format!("Cannot watch the drill's postgres: {e}")))?
        {
            let log = std::fs::read(&log_path).unwrap_or_default();
            return Err(Error::External(format!(
                "The drill's postgres exited during recovery ({status}): {}",
                tail(&log)
            )));
        }
        match psql(&conn, MAINTENANCE_DB, "SELECT pg_is_in_recovery()").await {
            Ok(s) if s.trim() == "f" => break,
            _ => {}
        }
        if Instant::now() > deadline {
            return Err(Error::External(format!(
                "Recovery did not finish within {} s; the server log ends: {}",
                d.timeout.as_secs(),
                tail(&std::fs::read(&log_path).unwrap_or_default())
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let restore_seconds = started.elapsed().as_secs_f64();

    let dbs = if d.dbs.is_empty() {
        let json = psql(
            &conn,
            MAINTENANCE_DB,
            "SELECT coalesce(json_agg(datname ORDER BY datname), '[]') FROM pg_database \
             WHERE datallowconn AND NOT datistemplate",
        )
        .await?;
        serde_json::from_str::<Vec<String>>(json.trim())
            .map_err(|e| Error::External(format!("Unexpected database list: {e}")))?
    } else {
        d.dbs.clone()
    };
    let mut tables = Vec::new();
    for db in &dbs {
        let list = list_tables(&conn, db).await?;
        for mut t in table_rows(row_counts(&conn, db, &list).await?) {
            if d.dbs.len() != 1 {
                t.table = format!("{db}/{}", t.table);
            }
            tables.push(t);
        }
    }
    let assertion_db = d.dbs.first().map(String::as_str).unwrap_or(MAINTENANCE_DB);
    let assertions = run_assertions(&conn, assertion_db, &d.assertions).await;
    stop_server(&pgdata, run_as, "fast").await;
    let _ = server.wait().await;
    Ok(Found {
        restore_seconds: Some(restore_seconds),
        tables,
        assertions,
        toc_table_data: 0,
        missing_tables: Vec::new(),
    })
}

/// Fetches (and so verifies) the WAL the plan needs into `dir`: every stretch of the
/// timeline path from the base backup's first segment to the newest one archived
/// without a gap, the history files of the timelines it enters, and the newest copy
/// `wal-receive` stored of the segment after that (as restore_command would serve it).
///
/// Errors: `Corrupt` or backend errors from fetching; `Io` when writing.
async fn stage_wal(repo: &Repository, plan: &RestorePlan, dir: &Path) -> Result<()> {
    let system = plan.system();
    let catalog = repo.wal_catalog(system).await?;
    let mut names: Vec<(String, String)> = plan
        .wal_names(catalog.segment_size)
        .into_iter()
        .map(|n| (n.clone(), n))
        .collect();
    if let Some(last) = plan.stretches.last() {
        let next = catalog.name(last.timeline, last.last + 1);
        let kind = crate::wal_name::WalFileKind::parse(&next)?;
        if let Some(copy) = repo.wal_newest_streamed(Some(system), &kind, &next).await? {
            names.push((copy, next));
        }
    }
    let slots = Arc::new(tokio::sync::Semaphore::new(4));
    let mut tasks = JoinSet::new();
    for (name, staged_as) in names {
        let repo = repo.clone();
        let path = dir.join(&staged_as);
        let slots = slots.clone();
        tasks.spawn(async move {
            let _permit = slots.acquire_owned().await.expect("never closed");
            let data = match repo.wal_fetch(Some(system), &name).await {
                // A streamed copy replaced since the listing: replay ends a little
                // earlier, as it would have a moment before.
                Err(e) if e.kind() == crate::error::ErrorKind::NotFound && name != staged_as => {
                    return Ok(())
                }
                other => other?,
            };
            std::fs::write(&path, data).map_err(|e| Error::io_path("write", &path, e))
        });
    }
    while let Some(r) = tasks.join_next().await {
        crate::blocking::joined("WAL staging", r)??;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assertions_split_on_line_ending_semicolons() {
        let text = "-- header\n\nSELECT true;\nSELECT count(*) = 3\n  FROM t; \n-- between\nSELECT 'a;b' = 'a;b'";
        assert_eq!(
            parse_assertions(text),
            vec![
                "SELECT true".to_string(),
                "SELECT count(*) = 3\n  FROM t".to_string(),
                "SELECT 'a;b' = 'a;b'".to_string()
            ]
        );
    }

    #[test]
    fn temp_names_are_valid_identifiers() {
        let n = temp_db_name("Foot-Dash with a very long name indeed, really");
        assert!(n.len() <= 63 && n.starts_with("pgvault_drill_foot_dash"));
        assert!(n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    }

    #[test]
    fn a_script_s_tables_and_connects_are_found() {
        let script = b"--\nSET x = 1;\nCOPY public.teams (id, name) FROM stdin;\n1\tCOPY a.b FROM stdin;\n\\.\n\nCOPY \"Odd\"\"s\".\"t.x\" (a) FROM stdin;\n\\.\n";
        let (tables, connects) = scan_script(&script[..]);
        assert_eq!(
            tables,
            [
                ("public".to_string(), "teams".to_string()),
                ("Odd\"s".to_string(), "t.x".to_string())
            ]
        );
        assert!(!connects);
        let (_, connects) = scan_script(&b"SET x;\n\\connect footdash\nCOPY t FROM stdin;\n"[..]);
        assert!(connects);
    }
}
