//! `restore`: a point-in-time recovery. Planning decides which base backup and which
//! WAL, and whether the target can be reached at all, before anything is written;
//! then the base backup is extracted and recovery is configured.

use std::path::PathBuf;
use std::sync::Arc;

use crate::blocking::thread_joined;
use crate::error::{Error, Result};
use crate::pg::recovery::{self, RecoverySettings};
use crate::store::manifest::{SnapshotKind, SnapshotManifest};
use crate::store::wal::WalCatalog;
use crate::store::writer::NoProgress;
use crate::store::Repository;
use crate::time::{pg_timestamptz, rfc3339};
use crate::wal_name::{segno_of, Lsn};

/// Where recovery should stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// Replay all archived WAL.
    Latest,
    Time(chrono::DateTime<chrono::Utc>),
    Lsn(Lsn),
    Xid(u64),
}

/// A checked plan: the base backup to extract and what recovery will need.
#[derive(Debug, Clone)]
pub struct RestorePlan {
    pub base: SnapshotManifest,
    pub target: RecoveryTarget,
    /// The first and last segment names replay needs at the least.
    pub wal_first: String,
    pub wal_last_needed: String,
    /// The newest archived segment that follows the base backup without a gap.
    pub wal_newest: String,
}

/// Chooses the base backup for `target` (or checks the one named) and checks that
/// the archive holds the WAL to make it consistent and to reach the target.
///
/// Errors: `InvalidInput` when no base backup fits the target, the named one is
/// not a base backup or ends after the target, or the WAL needed is missing;
/// `NotFound`/`InvalidInput` for a bad `base` id; backend errors.
pub async fn plan_restore(
    repo: &Repository,
    target: RecoveryTarget,
    base: Option<&str>,
) -> Result<RestorePlan> {
    let fits = |m: &SnapshotManifest| -> bool {
        let Some(info) = &m.base else { return false };
        match &target {
            RecoveryTarget::Latest | RecoveryTarget::Xid(_) => true,
            RecoveryTarget::Time(t) => m.finished <= *t,
            RecoveryTarget::Lsn(l) => info.stop_lsn <= *l,
        }
    };
    let chosen = match base {
        Some(id) => {
            let m = repo.resolve_snapshot(id).await?;
            if m.kind != SnapshotKind::Base || m.base.is_none() {
                return Err(Error::InvalidInput(format!(
                    "Snapshot {} is a {}, not a base backup: PITR needs a physical base backup",
                    m.short_id(),
                    m.kind
                )));
            }
            if !fits(&m) {
                return Err(Error::InvalidInput(format!(
                    "Base backup {} ends at {} (LSN {}), after the recovery target",
                    m.short_id(),
                    rfc3339(&m.finished),
                    m.base.as_ref().expect("checked").stop_lsn
                )));
            }
            m
        }
        None => {
            let bases: Vec<SnapshotManifest> = repo
                .snapshots()
                .await?
                .into_iter()
                .filter(|m| m.kind == SnapshotKind::Base && m.base.is_some())
                .collect();
            if bases.is_empty() {
                return Err(Error::InvalidInput(format!(
                    "Repository {} holds no base backup: run `pgvault backup --base` first",
                    repo.location()
                )));
            }
            let oldest_end = bases.iter().map(|m| m.finished).min().expect("not empty");
            bases
                .into_iter()
                .filter(|m| fits(m))
                .max_by_key(|m| m.finished)
                .ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "No base backup ends before the recovery target: the oldest ends at {}",
                        rfc3339(&oldest_end)
                    ))
                })?
        }
    };
    let catalog = repo.wal_catalog().await?;
    check_wal(repo, chosen, target, &catalog).await
}

async fn check_wal(
    repo: &Repository,
    base: SnapshotManifest,
    target: RecoveryTarget,
    catalog: &WalCatalog,
) -> Result<RestorePlan> {
    let info = base.base.clone().expect("a base backup");
    let size = catalog.segment_size;
    let first = segno_of(info.start_lsn, size);
    let consistent = segno_of(info.stop_lsn, size);
    let tl = catalog
        .timelines
        .get(&info.timeline)
        .cloned()
        .unwrap_or_default();
    if let Some(missing) = tl.first_missing(first, consistent) {
        return Err(Error::InvalidInput(format!(
            "WAL segment {} is missing from the archive: base backup {} needs {}..{} to become consistent",
            catalog.name(info.timeline, missing),
            base.short_id(),
            catalog.name(info.timeline, first),
            catalog.name(info.timeline, consistent)
        )));
    }
    let newest = tl
        .ranges()
        .into_iter()
        .find(|&(a, b)| a <= first && consistent <= b)
        .map(|(_, b)| b)
        .expect("checked contiguous above");
    let newest_name = catalog.name(info.timeline, newest);
    let needed = match &target {
        RecoveryTarget::Lsn(l) => {
            let seg = segno_of(*l, size);
            if seg > newest {
                return Err(Error::InvalidInput(format!(
                    "Target LSN {l} is beyond the archived WAL: the archive continues base backup {} \
                     without a gap only up to segment {newest_name}",
                    base.short_id()
                )));
            }
            seg
        }
        RecoveryTarget::Time(t) => {
            // A segment holds only records written before it was archived, so the
            // target is reachable once some later segment was archived after it.
            let m = repo.wal_manifest(&newest_name).await?;
            if m.pushed < *t {
                return Err(Error::InvalidInput(format!(
                    "Target time {} is after the newest archived WAL: segment {newest_name} was archived \
                     at {}, and nothing after it follows base backup {} without a gap",
                    rfc3339(t),
                    rfc3339(&m.pushed),
                    base.short_id()
                )));
            }
            newest
        }
        RecoveryTarget::Latest | RecoveryTarget::Xid(_) => newest,
    };
    Ok(RestorePlan {
        base,
        target,
        wal_first: catalog.name(info.timeline, first),
        wal_last_needed: catalog.name(info.timeline, needed.max(consistent)),
        wal_newest: newest_name,
    })
}

impl RecoveryTarget {
    /// The `recovery_target_*` settings for this target; none to replay all WAL.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        match self {
            RecoveryTarget::Latest => vec![],
            RecoveryTarget::Time(t) => vec![("recovery_target_time", pg_timestamptz(t))],
            RecoveryTarget::Lsn(l) => vec![("recovery_target_lsn", l.to_string())],
            RecoveryTarget::Xid(x) => vec![("recovery_target_xid", x.to_string())],
        }
    }
}

/// What `restore` is asked to do.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The new data directory: must not exist or be empty.
    pub pgdata: PathBuf,
    pub target: RecoveryTarget,
    /// A base backup id (or prefix) instead of the newest that fits.
    pub base: Option<String>,
    /// The restore_command the restored server will run.
    pub restore_command: String,
}

/// Plans and checks everything, then extracts the base backup into `pgdata` and
/// writes the recovery settings. Returns the plan it carried out.
///
/// Errors: `InvalidInput` for a non-empty PGDATA or an unreachable target (nothing
/// is written then); I/O and backend errors.
pub async fn restore(repo: &Repository, opts: &RestoreOptions) -> Result<RestorePlan> {
    recovery::check_empty_pgdata(&opts.pgdata)?;
    let plan = plan_restore(repo, opts.target.clone(), opts.base.as_deref()).await?;
    let settings = RecoverySettings {
        restore_command: opts.restore_command.clone(),
        target: opts.target.settings(),
    };
    extract_base_into(repo, &plan.base, &opts.pgdata).await?;
    recovery::write_recovery_config(&opts.pgdata, &settings)?;
    Ok(plan)
}

/// Streams base backup `base` out of the repository into `pgdata` (restore and
/// drills): the tar stream is extracted on its own thread as it is read.
///
/// Errors: the extractor's (a bad archive, a file that cannot be written), which
/// explain a broken pipe on the reading side; then the read's (backend, corrupt).
pub(crate) async fn extract_base_into(
    repo: &Repository,
    base: &SnapshotManifest,
    pgdata: &std::path::Path,
) -> Result<()> {
    let (mut writer, reader) = crate::pipe::pipe(8);
    let target = pgdata.to_path_buf();
    let extractor = std::thread::spawn(move || recovery::extract_base(reader, &target));
    let copied = repo.cat(base, &mut writer, Arc::new(NoProgress)).await;
    drop(writer);
    thread_joined("extraction", extractor.join())??;
    copied.map(|_| ())
}
