//! The retention commands: forget, prune, du, locks and unlock. Parsing and printing
//! only; the work is in `ops::forget`, `ops::prune`, `ops::du` and `ops::locks`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use indicatif::HumanBytes;
use serde_json::{json, Value};

use super::{args, open_repo, output, GlobalArgs};
use crate::error::Result;
use crate::ops::forget::{ForgetOptions, ForgetOutcome};
use crate::ops::prune::{PruneOptions, PruneReport};
use crate::ops::retention::{self, Filter, Policy};
use crate::store::lock::{FoundLock, Liveness};
use crate::store::SnapshotKind;
use crate::time::rfc3339;

/// Retention subcommands, flattened into the top-level command list.
#[derive(Debug, Subcommand)]
pub enum RetentionCommand {
    /// Remove backup points by a retention policy, per database and kind
    Forget(ForgetArgs),
    /// Delete the chunks that no backup point references
    Prune(PruneArgs),
    /// Show each backup point's size, stored size and the bytes only it holds
    Du(JsonArgs),
    /// List the repository's locks, live and stale
    Locks(JsonArgs),
    /// Remove stale locks left by crashed processes
    Unlock(UnlockArgs),
}

/// The kinds of backup point, for --kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    /// Logical dumps
    Dump,
    /// Physical base backups
    Base,
}

/// `pgvault forget`.
#[derive(Debug, Args)]
pub struct ForgetArgs {
    /// Keep the N newest backup points
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_last: Option<u32>,
    /// Keep the newest backup point of each of the N newest hours that have one
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_hourly: Option<u32>,
    /// Keep the newest backup point of each of the N newest days (UTC) that have one
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_daily: Option<u32>,
    /// Keep the newest backup point of each of the N newest ISO weeks that have one
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_weekly: Option<u32>,
    /// Keep the newest backup point of each of the N newest months that have one
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_monthly: Option<u32>,
    /// Keep the newest backup point of each of the N newest years that have one
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_yearly: Option<u32>,
    /// Keep every backup point newer than DURATION ago (e.g. 30d, 12h, 2w)
    #[arg(long, value_name = "DURATION", value_parser = args::duration)]
    pub keep_within: Option<Duration>,
    /// Base backups: keep the newest one at least DURATION old and all newer ones
    #[arg(long, value_name = "DURATION", value_parser = args::duration)]
    pub pitr_window: Option<Duration>,
    /// Only backup points of this database (repeatable)
    #[arg(long, value_name = "DBNAME")]
    pub db: Vec<String>,
    /// Only backup points of this kind (repeatable)
    #[arg(long, value_enum)]
    pub kind: Vec<KindArg>,
    /// Retention policy file used when no --keep-*/--pitr-window option is given
    #[arg(
        long,
        env = "PGVAULT_CONFIG",
        value_name = "FILE",
        default_value = retention::DEFAULT_CONFIG
    )]
    pub config: PathBuf,
    /// Run prune afterwards, under the same lock
    #[arg(long)]
    pub prune: bool,
    /// Show what would be removed (and, with --prune, freed) without changing anything
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub prune_opts: PruneTuning,
}

/// Options prune shares with `forget --prune`.
#[derive(Debug, Args)]
pub struct PruneTuning {
    /// Also keep unreferenced chunks written less than DURATION before prune started
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = args::duration)]
    pub grace: Duration,
    /// How long to wait for running backups (or another prune) before giving up
    #[arg(long, env = "PGVAULT_LOCK_WAIT", value_name = "DURATION", default_value = "10m", value_parser = args::duration)]
    pub lock_wait: Duration,
}

/// `pgvault prune`.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Report what would be deleted and freed without deleting
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub tuning: PruneTuning,
}

/// Commands whose only option is --json.
#[derive(Debug, Args)]
pub struct JsonArgs {
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

/// `pgvault unlock`.
#[derive(Debug, Args)]
pub struct UnlockArgs {
    /// Remove live locks too (only when you know their processes are gone)
    #[arg(long)]
    pub all: bool,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

/// Runs one retention subcommand.
///
/// Errors: whatever the repository operation returns (`Locked`, `InvalidInput` for a
/// refused policy, backend errors).
pub async fn run(g: &GlobalArgs, cmd: &RetentionCommand) -> Result<()> {
    match cmd {
        RetentionCommand::Forget(a) => forget(g, a).await,
        RetentionCommand::Prune(a) => {
            let repo = open_repo(g).await?;
            let report =
                crate::ops::prune::prune(&repo, &prune_options(&a.tuning, a.dry_run)).await?;
            if a.json {
                output::print_json(&prune_json(&report));
            } else {
                print_prune(&report);
            }
            Ok(())
        }
        RetentionCommand::Du(a) => {
            let repo = open_repo(g).await?;
            let du = crate::ops::du::du(&repo).await?;
            if a.json {
                let mut v = serde_json::to_value(&du).expect("du serialises");
                for (e, s) in v["snapshots"]
                    .as_array_mut()
                    .expect("an array")
                    .iter_mut()
                    .zip(&du.snapshots)
                {
                    e["short_id"] = json!(&s.id[..8]);
                    e["time"] = json!(rfc3339(&s.time));
                }
                output::print_json(&v);
            } else {
                println!(
                    "{:<8}  {:<20}  {:<16}  {:<4}  {:>10}  {:>10}  {:>10}",
                    "ID", "TIME", "DB", "KIND", "SIZE", "STORED", "UNIQUE"
                );
                for e in &du.snapshots {
                    println!(
                        "{:<8}  {:<20}  {:<16}  {:<4}  {:>10}  {:>10}  {:>10}",
                        &e.id[..8],
                        rfc3339(&e.time),
                        e.db,
                        e.kind.as_str(),
                        HumanBytes(e.size_bytes).to_string(),
                        HumanBytes(e.stored_bytes).to_string(),
                        HumanBytes(e.unique_bytes).to_string()
                    );
                }
                let t = &du.total;
                println!(
                    "{} backup points, {} of files stored in {} ({} chunk objects)",
                    t.snapshots,
                    HumanBytes(t.size_bytes),
                    HumanBytes(t.chunk_bytes),
                    t.chunk_objects
                );
                println!(
                    "  referenced {}, unreferenced {} in {} chunks (prune frees them)",
                    HumanBytes(t.stored_bytes),
                    HumanBytes(t.unreferenced_bytes),
                    t.unreferenced_chunks
                );
                if t.missing_chunks > 0 {
                    println!("  {} referenced chunks are MISSING", t.missing_chunks);
                }
            }
            Ok(())
        }
        RetentionCommand::Locks(a) => {
            let repo = open_repo(g).await?;
            let locks = crate::ops::locks::list(&repo).await?;
            let now = chrono::Utc::now();
            if a.json {
                output::print_json(&Value::Array(
                    locks.iter().map(|l| lock_json(l, now)).collect(),
                ));
            } else {
                for l in &locks {
                    println!("{}  {}", l.key, l.describe(now));
                }
                println!("{} locks", locks.len());
            }
            Ok(())
        }
        RetentionCommand::Unlock(a) => {
            let repo = open_repo(g).await?;
            let done = crate::ops::locks::unlock(&repo, a.all).await?;
            let (removed, live_left) = (done.removed, done.live);
            let now = chrono::Utc::now();
            if a.json {
                output::print_json(&json!({
                    "removed": removed.iter().map(|l| lock_json(l, now)).collect::<Vec<_>>(),
                    "live": live_left.iter().map(|l| lock_json(l, now)).collect::<Vec<_>>(),
                }));
            } else {
                for l in &removed {
                    println!("Removed {}", l.describe(now));
                }
                if removed.is_empty() {
                    println!("No stale locks");
                }
                for l in &live_left {
                    println!("Left live {} (use --all to remove it)", l.describe(now));
                }
            }
            Ok(())
        }
    }
}

fn prune_options(t: &PruneTuning, dry_run: bool) -> PruneOptions {
    PruneOptions {
        dry_run,
        grace: t.grace,
        lock_wait: t.lock_wait,
    }
}

fn policy_from(a: &ForgetArgs) -> Result<Policy> {
    let given = Policy {
        keep_last: a.keep_last,
        keep_hourly: a.keep_hourly,
        keep_daily: a.keep_daily,
        keep_weekly: a.keep_weekly,
        keep_monthly: a.keep_monthly,
        keep_yearly: a.keep_yearly,
        keep_within: a.keep_within,
        pitr_window: a.pitr_window,
    };
    if !given.is_empty() {
        return Ok(given);
    }
    // The default file is optional; one named with --config or PGVAULT_CONFIG is not.
    if a.config == Path::new(retention::DEFAULT_CONFIG) && !a.config.exists() {
        return Ok(Policy::default());
    }
    retention::load_policy(&a.config)
}

async fn forget(g: &GlobalArgs, a: &ForgetArgs) -> Result<()> {
    let policy = policy_from(a)?;
    let filter = Filter {
        dbs: a.db.clone(),
        kinds: a
            .kind
            .iter()
            .map(|k| match k {
                KindArg::Dump => SnapshotKind::Dump,
                KindArg::Base => SnapshotKind::Base,
            })
            .collect(),
    };
    let repo = open_repo(g).await?;
    let opts = ForgetOptions {
        policy,
        filter,
        dry_run: a.dry_run,
        lock_wait: a.prune_opts.lock_wait,
        prune: a.prune.then(|| prune_options(&a.prune_opts, a.dry_run)),
    };
    let out = crate::ops::forget::forget(&repo, &opts).await?;
    if a.json {
        output::print_json(&forget_json(&out, a.dry_run));
    } else {
        print_forget(&out, a.dry_run);
    }
    Ok(())
}

fn forget_json(out: &ForgetOutcome, dry_run: bool) -> Value {
    let groups: Vec<Value> = out
        .plan
        .groups
        .iter()
        .map(|g| {
            let entry = |d: &retention::Decision| {
                json!({
                    "id": d.snapshot.id,
                    "short_id": d.snapshot.short_id(),
                    "time": rfc3339(&d.snapshot.time),
                    "reasons": d.reasons.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
                })
            };
            json!({
                "db": g.db,
                "kind": g.kind.as_str(),
                "system_identifier": g.system.map(|s| s.to_string()),
                "keep": g.decisions.iter().filter(|d| d.keep()).map(entry).collect::<Vec<_>>(),
                "remove": g.decisions.iter().filter(|d| !d.keep()).map(entry).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "dry_run": dry_run,
        "policy": out.plan.policy.describe(),
        "groups": groups,
        "kept": out.plan.to_keep().count(),
        "removed": if dry_run { out.plan.to_remove().count() } else { out.removed },
        "prune": out.prune.as_ref().map(prune_json),
        "wal_files_removed": out.wal_unneeded.len(),
        "wal_removed_first": out.wal_unneeded.first(),
        "wal_removed_last": out.wal_unneeded.last(),
    })
}

fn print_forget(out: &ForgetOutcome, dry_run: bool) {
    let plan = &out.plan;
    println!("Policy: {}", plan.policy.describe());
    for g in &plan.groups {
        let keep = g.decisions.iter().filter(|d| d.keep()).count();
        let of = g.system.map_or(String::new(), |s| format!(", system {s}"));
        println!(
            "{} ({}{of}): keep {keep}, remove {}",
            g.db,
            g.kind,
            g.decisions.len() - keep
        );
        for d in &g.decisions {
            let reasons = d
                .reasons
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            let line = format!(
                "  {:<6}  {}  {}  {}",
                if d.keep() { "keep" } else { "remove" },
                d.snapshot.short_id(),
                rfc3339(&d.snapshot.time),
                reasons
            );
            println!("{}", line.trim_end());
        }
    }
    let total = plan.to_keep().count() + plan.to_remove().count();
    if dry_run {
        println!(
            "Would remove {} of {total} backup points (dry run)",
            plan.to_remove().count()
        );
    } else {
        println!("Removed {} of {total} backup points", out.removed);
    }
    if let (Some(first), Some(last)) = (out.wal_unneeded.first(), out.wal_unneeded.last()) {
        println!(
            "{} {} archived WAL files no surviving base backup needs ({first} .. {last})",
            if dry_run { "Would remove" } else { "Removed" },
            out.wal_unneeded.len()
        );
    }
    if let Some(p) = &out.prune {
        print_prune(p);
    }
}

fn prune_json(r: &PruneReport) -> Value {
    let mut v = serde_json::to_value(r).expect("prune report serialises");
    v["grace_cutoff"] = json!(r.grace_cutoff.as_ref().map(rfc3339));
    v
}

fn print_prune(r: &PruneReport) {
    if r.dry_run {
        println!(
            "Would delete {} chunks, freeing {} (dry run)",
            r.chunks_deleted,
            HumanBytes(r.bytes_freed)
        );
    } else {
        println!(
            "Deleted {} chunks, freed {}",
            r.chunks_deleted,
            HumanBytes(r.bytes_freed)
        );
    }
    println!(
        "  {} chunks ({}) stored, {} referenced by {} backup points",
        r.chunks_total,
        HumanBytes(r.bytes_total),
        r.chunks_referenced,
        r.snapshots
    );
    if r.chunks_kept_by_grace > 0 {
        println!(
            "  kept {} unreferenced chunks ({}) written after {}: a later prune frees them",
            r.chunks_kept_by_grace,
            HumanBytes(r.bytes_kept_by_grace),
            r.grace_cutoff.as_ref().map(rfc3339).unwrap_or_default()
        );
    }
    for l in &r.held_back_by {
        println!("  held back by {l}; `pgvault unlock` removes it if stale");
    }
    if r.chunks_missing > 0 {
        println!(
            "  WARNING: {} chunks referenced by backup points are missing",
            r.chunks_missing
        );
    }
}

fn lock_json(l: &FoundLock, now: chrono::DateTime<chrono::Utc>) -> Value {
    let (stale, reason) = match &l.liveness {
        Liveness::Live => (false, None),
        Liveness::Stale { reason, .. } => (true, Some(reason.clone())),
    };
    let info = l.info.as_ref();
    json!({
        "key": l.key,
        "kind": info.map(|i| i.kind.as_str()),
        "operation": info.map(|i| i.operation.clone()),
        "hostname": info.map(|i| i.hostname.clone()),
        "pid": info.map(|i| i.pid),
        "created": info.map(|i| rfc3339(&i.created)),
        "refreshed": info.map(|i| rfc3339(&i.refreshed)),
        "age_seconds": info.map(|i| (now - i.created).num_seconds().max(0)),
        "stale": stale,
        "stale_reason": reason,
    })
}
