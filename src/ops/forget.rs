//! `forget`: applies a retention policy (see [`super::retention`]) by deleting the
//! manifests of the backup points it does not keep and the WAL no surviving base
//! backup needs, then, when asked, prunes under the same exclusive lock.

use std::collections::HashSet;
use std::time::Duration;

use super::prune::{prune_locked, Excluded, PruneOptions, PruneReport};
use super::retention::{plan, Filter, ForgetPlan, Policy};
use crate::error::Result;
use crate::store::lock::{LockGuard, LockKind};
use crate::store::manifest::{SnapshotKind, SnapshotManifest};
use crate::store::Repository;

/// What `forget` is asked to do.
#[derive(Debug, Clone)]
pub struct ForgetOptions {
    pub policy: Policy,
    pub filter: Filter,
    /// Report only: no lock, nothing deleted.
    pub dry_run: bool,
    /// How long to wait for running backups.
    pub lock_wait: Duration,
    /// Prune afterwards, under the same lock, with these options.
    pub prune: Option<PruneOptions>,
}

/// What `forget` did.
#[derive(Debug)]
pub struct ForgetOutcome {
    pub plan: ForgetPlan,
    /// Backup points whose manifests were deleted (none on a dry run).
    pub removed: usize,
    /// The prune that followed, when asked for.
    pub prune: Option<PruneReport>,
    /// Archived WAL files no surviving base backup needs: deleted, or on a dry run
    /// to be deleted (their manifests' keys).
    pub wal_unneeded: Vec<String>,
}

/// Applies a retention policy: deletes the manifests of the backup points it does
/// not keep, then, with `prune`, frees their chunks under the same exclusive lock.
/// A dry run takes no lock and changes nothing.
///
/// Only manifests are deleted here; chunks go in prune, which decides from the
/// manifests that remain. So a crash at any moment leaves every remaining manifest
/// complete: nothing ever deletes a chunk before the last manifest naming it.
///
/// Errors: as [`plan`]; `Locked` when the repository stays locked for `lock_wait`;
/// backend errors.
pub async fn forget(repo: &Repository, opts: &ForgetOptions) -> Result<ForgetOutcome> {
    if opts.dry_run {
        return forget_locked(repo, opts, None).await;
    }
    let lock = repo
        .lock(LockKind::Exclusive, "forget", opts.lock_wait)
        .await?;
    let result = forget_locked(repo, opts, Some(&lock)).await;
    lock.release_after(result).await
}

async fn forget_locked(
    repo: &Repository,
    opts: &ForgetOptions,
    lock: Option<&LockGuard>,
) -> Result<ForgetOutcome> {
    let snaps = repo.snapshots_all().await?;
    let plan = plan(&snaps, &opts.policy, &opts.filter, chrono::Utc::now())?;
    // WAL retention follows the base backups: what the oldest surviving one needs
    // stays, everything before it goes.
    let forgotten: HashSet<String> = plan.to_remove().map(|m| m.id.clone()).collect();
    let surviving_bases: Vec<&SnapshotManifest> = snaps
        .iter()
        .filter(|m| m.kind == SnapshotKind::Base && !forgotten.contains(&m.id))
        .collect();
    let wal_unneeded = repo.wal_unneeded(&surviving_bases).await?;
    let mut removed = 0;
    if let Some(lock) = lock {
        for m in plan.to_remove() {
            lock.ensure_held().await?;
            repo.delete_snapshot(&m.id).await?;
            removed += 1;
        }
        for key in &wal_unneeded {
            lock.ensure_held().await?;
            repo.backend().delete(key).await?;
        }
    }
    let prune = match &opts.prune {
        Some(p) => {
            let p = PruneOptions {
                dry_run: opts.dry_run,
                ..p.clone()
            };
            // A dry run has deleted nothing: count the planned removals out.
            let excluded = if opts.dry_run {
                Excluded {
                    snapshots: forgotten,
                    wal_keys: wal_unneeded.iter().cloned().collect(),
                }
            } else {
                Excluded::default()
            };
            Some(prune_locked(repo, &p, lock, &excluded).await?)
        }
        None => None,
    };
    Ok(ForgetOutcome {
        plan,
        removed,
        prune,
        wal_unneeded,
    })
}
