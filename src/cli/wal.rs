//! The WAL commands: archive_command, restore_command, the archive listing, and
//! restoring a base backup for point-in-time recovery.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::json;

use super::{open_repo, output, GlobalArgs};
use crate::error::{Error, ErrorKind, Result};
use crate::pg::recovery::{self, RecoverySettings};
use crate::repo::lock::LockKind;
use crate::repo::restore::RecoveryTarget;
use crate::repo::wal::WalPushOutcome;
use crate::wal_name::Lsn;

/// `pgvault wal-push`.
#[derive(Debug, Args)]
pub struct WalPushArgs {
    /// The WAL file to archive (%p); its file name is the archive name
    pub path: PathBuf,
    /// How long to wait for a prune holding the repository (the archiver retries anyway)
    #[arg(long, env = "PGVAULT_LOCK_WAIT", value_name = "DURATION", default_value = "10m",
          value_parser = super::retention::duration_arg)]
    pub lock_wait: std::time::Duration,
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
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub prefetch: usize,
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
    /// The new data directory: must not exist or be empty
    #[arg(long, value_name = "DIR")]
    pub pgdata: PathBuf,
    /// Recover to this time (RFC 3339, or 'YYYY-MM-DD HH:MM:SS UTC')
    #[arg(long, value_name = "TIME", value_parser = parse_target_time)]
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
}

fn parse_target_time(s: &str) -> std::result::Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let trimmed = s.trim();
    let naive = trimmed
        .strip_suffix(" UTC")
        .or_else(|| trimmed.strip_suffix("Z"))
        .unwrap_or(trimmed);
    chrono::NaiveDateTime::parse_from_str(naive, "%Y-%m-%d %H:%M:%S")
        .map(|t| t.and_utc())
        .map_err(|_| {
            format!("{s:?} is not a time such as 2026-11-05T10:00:00Z or '2026-11-05 10:00:00 UTC'")
        })
}

fn parse_lsn(s: &str) -> std::result::Result<Lsn, String> {
    Lsn::parse(s).map_err(|e| e.to_string())
}

/// `wal-push`: exit 0 only once the file is durably archived.
///
/// Errors: `InvalidInput` for a file that is not a WAL file; `AlreadyExists` for a
/// different file under an archived name; I/O and backend errors.
pub async fn push(g: &GlobalArgs, a: &WalPushArgs) -> Result<()> {
    let name = a
        .path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::InvalidInput(format!("{} names no file", a.path.display())))?
        .to_string();
    crate::wal_name::WalFileKind::parse(&name)?;
    let data = std::fs::read(&a.path).map_err(|e| Error::io_path("read", &a.path, e))?;
    let repo = open_repo(g).await?;
    // A prune must not delete a chunk this push found already stored and reused.
    let lock = repo.lock(LockKind::Shared, "wal-push", a.lock_wait).await?;
    let pushed = repo.wal_push(&name, data).await;
    let pushed = match pushed {
        Ok(p) => lock.ensure_held().await.map(|()| p),
        Err(e) => Err(e),
    };
    match super::retention::release(lock, pushed).await? {
        WalPushOutcome::Stored => tracing::info!("Archived {name}"),
        WalPushOutcome::AlreadyArchived => {
            tracing::info!("{name} was archived already with the same content")
        }
    }
    Ok(())
}

/// `wal-fetch`: writes the file through a temporary name, so PostgreSQL never sees
/// a partial segment.
///
/// Errors: `NotFound` when the file is not archived; anything else means the answer
/// is unknown.
pub async fn fetch(g: &GlobalArgs, a: &WalFetchArgs) -> Result<()> {
    // A missing repository is no answer about the file: it must not read as
    // "not archived", which would end recovery early.
    let repo = open_repo(g).await.map_err(|e| match e.kind() {
        ErrorKind::NotFound => Error::Unavailable(format!("Cannot open the WAL archive: {e}")),
        _ => e,
    })?;
    let data = if a.prefetch == 0 {
        repo.wal_fetch(&a.name).await?
    } else {
        let spool = crate::index::cache_dir()
            .join(&repo.config().repo_id)
            .join("wal-spool");
        repo.wal_fetch_spooled(&a.name, &spool, a.prefetch).await?
    };
    let dir = a
        .dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".pgvault-fetch-{}-{}", std::process::id(), a.name));
    std::fs::write(&tmp, &data).map_err(|e| Error::io_path("write", &tmp, e))?;
    std::fs::rename(&tmp, &a.dest).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io_path("rename into", &a.dest, e)
    })?;
    Ok(())
}

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
        255
    }
}

/// `wal list`.
///
/// Errors: backend errors.
pub async fn list(g: &GlobalArgs, json_out: bool) -> Result<()> {
    let repo = open_repo(g).await?;
    let cat = repo.wal_catalog().await?;
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
        }));
    }
    if json_out {
        output::print_json(&json!({ "segment_size": cat.segment_size, "timelines": tls }));
        return Ok(());
    }
    if tls.is_empty() {
        println!("The WAL archive is empty");
    }
    for t in &tls {
        println!(
            "timeline {}: {} segments{}",
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
                "  {} .. {}",
                r["first"].as_str().unwrap_or(""),
                r["last"].as_str().unwrap_or("")
            );
        }
        for gap in t["gaps"].as_array().expect("array") {
            println!(
                "  GAP: {} .. {} missing",
                gap["first"].as_str().unwrap_or(""),
                gap["last"].as_str().unwrap_or("")
            );
        }
        for b in t["backup_files"].as_array().expect("array") {
            println!("  backup file {}", b.as_str().unwrap_or(""));
        }
    }
    Ok(())
}

/// The restore_command the restored server will run: this binary, this repository,
/// and where the passphrase is.
fn restore_command(g: &GlobalArgs) -> Result<String> {
    let exe =
        std::env::current_exe().map_err(|e| Error::io("Cannot find the pgvault binary", e))?;
    let repo = g.repo.as_deref().expect("open_repo checked it");
    let repo = match (repo.contains("://"), std::path::absolute(repo)) {
        (false, Ok(p)) => p.display().to_string(),
        _ => repo.to_string(),
    };
    let mut cmd = String::new();
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
            "pgvault: note: no --password-file/PGVAULT_PASSWORD_FILE was given, so the restored server \\
             needs PGVAULT_PASSWORD in its environment for restore_command"
        ),
    }
    cmd.push_str(" wal-fetch %f %p");
    Ok(cmd)
}

/// `restore`: plan and check everything, then extract and configure.
///
/// Errors: `InvalidInput` for a non-empty PGDATA or an unreachable target (nothing
/// is written then); I/O and backend errors.
pub async fn restore(g: &GlobalArgs, a: &RestoreArgs) -> Result<()> {
    recovery::check_empty_pgdata(&a.pgdata)?;
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
    let plan = repo.plan_restore(target.clone(), a.base.as_deref()).await?;
    let settings = RecoverySettings {
        restore_command: restore_command(g)?,
        target: match &target {
            RecoveryTarget::Latest => vec![],
            RecoveryTarget::Time(t) => vec![(
                "recovery_target_time",
                t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string(),
            )],
            RecoveryTarget::Lsn(l) => vec![("recovery_target_lsn", l.to_string())],
            RecoveryTarget::Xid(x) => vec![("recovery_target_xid", x.to_string())],
        },
    };
    let info = plan.base.base.clone().expect("planned from a base backup");
    eprintln!(
        "Restoring base backup {} ({}, timeline {}, LSN {}..{}) into {}",
        plan.base.short_id(),
        plan.base
            .time
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        info.timeline,
        info.start_lsn,
        info.stop_lsn,
        a.pgdata.display()
    );
    let (mut writer, reader) = crate::pipe::pipe(8);
    let pgdata = a.pgdata.clone();
    let extractor = std::thread::spawn(move || recovery::extract_base(reader, &pgdata));
    let copied = repo
        .cat(
            &plan.base,
            &mut writer,
            std::sync::Arc::new(crate::repo::writer::NoProgress),
        )
        .await;
    drop(writer);
    let extracted = extractor
        .join()
        .map_err(|_| Error::io("Extraction thread panicked", std::io::Error::other("panic")))?;
    // The extractor's error explains a broken pipe on the copying side.
    extracted?;
    copied?;
    recovery::write_recovery_config(&a.pgdata, &settings)?;
    println!(
        "Restored into {}. WAL {}..{} is needed (archived up to {} without a gap).",
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
