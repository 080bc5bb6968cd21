//! The verification and monitoring commands: `check`, `drill`, `status`, `metrics`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use indicatif::HumanBytes;
use serde_json::json;

use super::{args, open_repo, output, GlobalArgs};
use crate::error::{Error, Result};
use crate::ops::check::{CheckReport, ReadData};
use crate::ops::drill::{self, Drill, DrillOptions, DrillReport};
use crate::ops::restore::RecoveryTarget;
use crate::ops::status::StatusReport;
use crate::store::records::CheckRecord;
use crate::store::SnapshotKind;
use crate::time::rfc3339;

/// The size-change threshold, shared by `backup`, `status` and `metrics`.
#[derive(Debug, Args, Clone)]
pub struct AnomalyArgs {
    /// Flag a backup whose size differs from the previous one of the same db and kind
    /// by more than this many percent
    #[arg(
        long,
        env = "PGVAULT_SIZE_CHANGE_THRESHOLD",
        default_value_t = 50.0,
        value_name = "PERCENT",
        value_parser = args::percent
    )]
    pub size_change_threshold: f64,
}

impl AnomalyArgs {
    /// The threshold as a ratio: 0.5 for 50%.
    pub fn ratio(&self) -> f64 {
        self.size_change_threshold / 100.0
    }
}

/// `pgvault check`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("data").args(["read_data", "read_data_subset"])))]
pub struct CheckArgs {
    /// Also download, decrypt, decompress and re-hash every referenced chunk
    #[arg(long)]
    pub read_data: bool,
    /// Read only a subset: n/m reads the n-th of m slices of the chunk-id space; p% reads
    /// the next p% after where the previous p% run stopped (cursor kept in the cache
    /// directory), so repeated runs read everything
    #[arg(long, value_name = "SUBSET")]
    pub read_data_subset: Option<String>,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}

/// `pgvault status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub anomaly: AnomalyArgs,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}

/// `pgvault metrics`.
#[derive(Debug, Args)]
pub struct MetricsArgs {
    #[command(flatten)]
    pub anomaly: AnomalyArgs,
    /// Write to this file (atomically, through a temporary file beside it) instead of
    /// stdout: node_exporter must never read half a file
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// `pgvault drill`.
#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
#[command(group(clap::ArgGroup::new("target").args(["target_time", "latest"])))]
pub struct DrillArgs {
    /// The database whose newest dump to restore; with --base, the database to count
    /// rows in and run the assertions against (default: row counts of every database)
    #[arg(short = 'd', long, value_name = "DBNAME")]
    pub db: Option<String>,
    /// Restore this snapshot (id or prefix) instead of the newest
    #[arg(long, value_name = "ID")]
    pub snapshot: Option<String>,
    /// A PITR drill: restore a base backup and archived WAL into a temporary PGDATA and
    /// start a private postgres on it
    #[arg(long)]
    pub base: bool,
    /// With --base: recover to this time, with its zone ('2026-11-29 20:38:42+00')
    #[arg(long, value_name = "TIME", requires = "base", value_parser = args::time)]
    pub target_time: Option<chrono::DateTime<chrono::Utc>>,
    /// With --base: replay all archived WAL (the default)
    #[arg(long, requires = "base")]
    pub latest: bool,
    /// SQL assertions: statements each ending with ';' at the end of a line, each
    /// returning a single true ('--' comment lines allowed)
    #[arg(long, value_name = "FILE")]
    pub sql: Option<PathBuf>,
    /// The server a dump is restored on; with --base, -U is the role to connect to the
    /// restored cluster as (default postgres)
    #[command(flatten)]
    pub conn: args::ConnArgs,
    /// pg_restore --jobs for a dump drill
    #[arg(short = 'j', long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub jobs: u32,
    /// Where the temporary dump file or PGDATA goes (default: the system temp directory)
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// With --base: how long recovery may take, in seconds
    #[arg(long, default_value_t = 3600, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub timeout: u64,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
    /// Print help
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

/// `check`: prints the report and fails when it found a problem.
///
/// Errors: `Corrupt` naming the count of problems; `InvalidInput` for a bad subset;
/// backend errors when the repository cannot be read.
pub async fn check(g: &GlobalArgs, a: &CheckArgs) -> Result<()> {
    let read = match (&a.read_data_subset, a.read_data) {
        (Some(s), _) => ReadData::parse_subset(s)?,
        (None, true) => ReadData::All,
        (None, false) => ReadData::None,
    };
    let repo = open_repo(g).await?;
    let time = chrono::Utc::now();
    let show = std::io::stderr().is_terminal() && read != ReadData::None && !a.json;
    let progress = super::progress_for(0, "check", show);
    let report = crate::ops::check::check(&repo, &read, progress).await?;
    let record = CheckRecord {
        time,
        ok: report.ok(),
        mode: report.mode.clone(),
        problems: report.problems(),
        chunks_read: report.chunks_read,
        duration_seconds: report.duration_seconds,
        hostname: crate::host::hostname(),
    };
    repo.record_or_spool(&record).await;
    if a.json {
        let mut v = serde_json::to_value(&report).expect("reports serialise");
        v["ok"] = json!(report.ok());
        v["problems"] = json!(report.problems());
        output::print_json(&v);
    } else {
        print_check(&report);
    }
    if report.ok() {
        Ok(())
    } else {
        Err(Error::Corrupt(format!(
            "Check of {} found {} problems: {} snapshots and {} WAL files are damaged",
            repo.location(),
            report.problems(),
            report.damaged_snapshots.len(),
            report.damaged_wal.len()
        )))
    }
}

fn print_check(r: &CheckReport) {
    println!(
        "Checked {} snapshots, {} WAL files and {} referenced chunks ({} stored, {} unreferenced)",
        r.snapshots_checked,
        r.wal_files_checked,
        r.chunks_referenced,
        r.chunks_stored,
        r.chunks_unreferenced
    );
    if let Some(w) = &r.window {
        println!(
            "Read {} chunks ({}), {}: ids {:016x} .. {:016x}",
            r.chunks_read,
            HumanBytes(r.bytes_read),
            r.mode,
            w.start,
            w.end().wrapping_sub(1)
        );
    }
    for m in &r.bad_manifests {
        println!("BAD MANIFEST {}: {}", m.key, m.error);
    }
    for c in &r.bad_chunks {
        println!("BAD CHUNK {}: {}", c.id, c.message);
    }
    for m in &r.not_recreated {
        println!("NOT RE-CREATED {}: {}", m.key, m.error);
    }
    for s in &r.damaged_snapshots {
        println!(
            "DAMAGED SNAPSHOT {} ({} {} at {}): {} bad chunks",
            s.id,
            s.db,
            s.kind,
            rfc3339(&s.time),
            s.chunks.len()
        );
    }
    for w in &r.damaged_wal {
        println!("DAMAGED WAL FILE {}: {} bad chunks", w.name, w.chunks.len());
    }
    if r.ok() {
        println!("No problems found in {:.1} s", r.duration_seconds);
    }
}

/// `status`.
///
/// Errors: backend errors.
pub async fn status(g: &GlobalArgs, a: &StatusArgs) -> Result<()> {
    let repo = open_repo(g).await?;
    let report = crate::ops::status::status(&repo, a.anomaly.ratio()).await?;
    if a.json {
        output::print_json(&serde_json::to_value(&report).expect("reports serialise"));
    } else {
        print_status(&report);
    }
    Ok(())
}

fn human_age(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

fn print_status(r: &StatusReport) {
    println!(
        "{:<16}  {:<4}  {:<20}  {:>7}  {:>9}  {:>10}  {:>8}  {:<7}  {:<6}  LAST DRILL",
        "DB", "KIND", "LAST SUCCESS", "AGE", "OK (30D)", "SIZE", "CHANGE", "ANOMALY", "LAST"
    );
    for b in &r.backups {
        let drill = b
            .last_drill
            .as_ref()
            .map(|d| {
                format!(
                    "{} {} in {:.1} s",
                    if d.ok { "passed" } else { "FAILED" },
                    rfc3339(&d.time),
                    d.duration_seconds
                )
            })
            .unwrap_or_else(|| "never".into());
        println!(
            "{:<16}  {:<4}  {:<20}  {:>7}  {:>9}  {:>10}  {:>8}  {:<7}  {:<6}  {drill}",
            b.db,
            b.kind.as_str(),
            b.last_success
                .as_ref()
                .map(rfc3339)
                .unwrap_or_else(|| "never".into()),
            b.last_success_age_seconds
                .map(human_age)
                .unwrap_or_default(),
            format!("{}/{}", b.successes_30d, b.attempts_30d),
            b.size_bytes
                .map(|s| HumanBytes(s).to_string())
                .unwrap_or_default(),
            b.size_change_ratio
                .map(|c| if c.is_infinite() {
                    "new".into()
                } else {
                    format!("{:+.1}%", c * 100.0)
                })
                .unwrap_or_default(),
            if b.size_anomaly { "YES" } else { "" },
            match &b.last_attempt {
                Some(a) if a.ok => "ok",
                Some(_) => "FAILED",
                None => "",
            },
        );
        if let Some(a) = b.last_attempt.as_ref().filter(|a| !a.ok) {
            println!(
                "    last attempt failed at {}: {}",
                rfc3339(&a.time),
                a.error.as_deref().unwrap_or("")
            );
        }
    }
    for w in &r.wal {
        let of = w
            .system_identifier
            .as_ref()
            .map_or(String::new(), |s| format!(" of system {s}"));
        match (&w.newest_segment, &w.newest_archived) {
            (Some(seg), Some(t)) => println!(
                "WAL{of} timeline {}: {} segments, newest {seg} archived {} ({} ago)",
                w.timeline,
                w.segments,
                rfc3339(t),
                human_age(w.lag_seconds.unwrap_or(0.0))
            ),
            _ => println!("WAL{of} timeline {}: no segments", w.timeline),
        }
        if let (Some(name), Some(t)) = (&w.newest_streamed, &w.newest_streamed_at) {
            println!(
                "  streaming: {name} stored {} ({} ago)",
                rfc3339(t),
                human_age(w.rpo_seconds.unwrap_or(0.0))
            );
        }
    }
    for w in &r.wal_receivers {
        let rep = &w.report;
        let lag = match (rep.slot_retained_bytes, &rep.error) {
            (Some(b), _) => format!("keeps {} of WAL on the server", HumanBytes(b)),
            (None, Some(e)) => format!("slot unreadable: {e}"),
            (None, None) => "slot lag unknown".to_string(),
        };
        println!(
            "wal-receive on {} (slot {}): {lag}; reported {} ago{}",
            rep.hostname,
            rep.slot,
            human_age(w.age_seconds),
            if w.age_seconds > 300.0 {
                " - NOT RUNNING? its slot keeps WAL on the server until it is dropped"
            } else {
                ""
            }
        );
    }
    let a = &r.wal_archiving;
    if let Some(f) = &a.last_failure {
        println!(
            "WAL archiving {}: wal-push of {} failed at {}: {}",
            if a.failing { "FAILING" } else { "recovered" },
            f.name,
            rfc3339(&f.time),
            f.error
        );
    }
    if let Some(c) = &r.last_check {
        println!(
            "Last check ({}) at {}: {}",
            c.mode,
            rfc3339(&c.time),
            if c.ok {
                "no problems".to_string()
            } else {
                format!("{} PROBLEMS", c.problems)
            }
        );
    }
    let repo = &r.repository;
    println!(
        "Repository {}: {} snapshots, {} logical, {} stored{}",
        r.location,
        repo.snapshots,
        HumanBytes(repo.logical_bytes),
        HumanBytes(repo.stored_bytes),
        repo.dedup_ratio
            .map(|d| format!(" (dedup ratio {d:.1})"))
            .unwrap_or_default()
    );
}

/// `metrics`.
///
/// Errors: backend errors; `Io` when the output file cannot be written.
pub async fn metrics(g: &GlobalArgs, a: &MetricsArgs) -> Result<()> {
    let repo = open_repo(g).await?;
    let report = crate::ops::status::status(&repo, a.anomaly.ratio()).await?;
    let text = crate::ops::status::render_prometheus(&report);
    match &a.output {
        None => print!("{text}"),
        Some(path) => {
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            let tmp = dir.join(format!(".pgvault-metrics-{}", std::process::id()));
            std::fs::write(&tmp, &text).map_err(|e| Error::io_path("write", &tmp, e))?;
            std::fs::rename(&tmp, path).map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                Error::io_path("rename into", path, e)
            })?;
        }
    }
    Ok(())
}

/// `drill`: runs it, prints the result, and fails when the drill failed.
///
/// Errors: `External` when the drill failed (it is recorded all the same);
/// `NotFound`/`InvalidInput` when there is nothing to drill; backend errors.
pub async fn drill(g: &GlobalArgs, a: &DrillArgs) -> Result<()> {
    let assertions = match &a.sql {
        Some(p) => drill::parse_assertions(
            &std::fs::read_to_string(p)
                .map_err(|e| Error::io_path("read assertions file", p, e))?,
        ),
        None => Vec::new(),
    };
    let opts = DrillOptions {
        db: a.db.clone(),
        snapshot: a.snapshot.clone(),
        pitr: a.base.then_some(match a.target_time {
            Some(t) => RecoveryTarget::Time(t),
            None => RecoveryTarget::Latest,
        }),
        assertions,
        conn: a.conn.options(),
        jobs: a.jobs,
        work_dir: a.work_dir.clone().unwrap_or_else(std::env::temp_dir),
        timeout: Duration::from_secs(a.timeout),
    };
    let repo = open_repo(g).await?;
    let prepared = drill::prepare(&repo, &opts).await?;
    match &prepared {
        Drill::Base(b) => eprintln!(
            "Drill: restoring base backup {} ({}) to {} into a temporary PGDATA under {}",
            b.plan.base.short_id(),
            rfc3339(&b.plan.base.time),
            b.target_label,
            b.work_dir.display()
        ),
        Drill::Dump(d) => eprintln!(
            "Drill: restoring snapshot {} ({} {} at {}) into a temporary database",
            d.snapshot.short_id(),
            d.snapshot.db,
            d.snapshot.kind,
            rfc3339(&d.snapshot.time)
        ),
    }
    let report = drill::run(&repo, &prepared).await;
    for w in &report.cleanup_warnings {
        eprintln!("pgvault: warning: {w}");
    }
    if a.json {
        let mut v = serde_json::to_value(&report.record).expect("records serialise");
        v["scratch"] = json!(report.scratch);
        v["toc_table_data"] = json!(report.toc_table_data);
        v["missing_tables"] = json!(report.missing_tables);
        v["cleanup_warnings"] = json!(report.cleanup_warnings);
        v["rows"] = json!(report.record.tables.iter().map(|t| t.rows).sum::<i64>());
        output::print_json(&v);
    } else {
        print_drill(&report);
    }
    if report.record.ok {
        Ok(())
    } else {
        Err(Error::External(format!(
            "Drill of {} {} {} failed: {}",
            report.record.db,
            report.record.kind,
            &report.record.snapshot_id[..8.min(report.record.snapshot_id.len())],
            report.record.error.as_deref().unwrap_or("unknown error")
        )))
    }
}

fn print_drill(r: &DrillReport) {
    let rec = &r.record;
    println!(
        "Drill of {} {} {} in {}",
        rec.db,
        rec.kind,
        &rec.snapshot_id[..8.min(rec.snapshot_id.len())],
        r.scratch
    );
    if let Some(s) = rec.restore_seconds {
        println!("  restored in {s:.1} s (measured RTO)");
    }
    if !rec.tables.is_empty() || r.toc_table_data > 0 {
        println!(
            "  {} tables, {} rows{}",
            rec.tables.len(),
            rec.tables.iter().map(|t| t.rows).sum::<i64>(),
            if rec.kind == SnapshotKind::Dump {
                format!(
                    "; {} TABLE DATA entries, {} missing",
                    r.toc_table_data,
                    r.missing_tables.len()
                )
            } else {
                String::new()
            }
        );
    }
    for t in &rec.tables {
        println!("    {:<40} {:>12}", t.table, t.rows);
    }
    for a in &rec.assertions {
        println!(
            "  assertion {}: {} ({})",
            if a.ok { "ok" } else { "FAILED" },
            a.sql.lines().next().unwrap_or(""),
            a.outcome
        );
    }
    println!(
        "Drill {} in {:.1} s; cleaned up",
        if rec.ok { "passed" } else { "FAILED" },
        rec.duration_seconds
    );
}
