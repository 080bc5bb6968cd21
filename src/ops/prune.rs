//! `prune` frees the chunks that no manifest references. It decides from the
//! backend's listings and manifests, never from the local index, and downloads no
//! chunk data.
//!
//! prune's order of work is what makes `kill -9` at any moment harmless:
//! 1. take the exclusive lock (see [`crate::store::lock`] for why no backup runs
//!    meanwhile);
//! 2. list the chunk objects, *then* the manifests: a manifest written between the two
//!    listings (by a writer that takes no lock) only adds references, and its chunks
//!    were stored before it, so none of them can be planned for deletion;
//! 3. write a new prune marker under `prunes/` before the first delete: every local
//!    index compares the set of markers with the one it last saw and drops its chunk
//!    cache when it changed, so no machine goes on believing in a chunk deleted here
//!    (including this one, if we die before updating our own index);
//! 4. delete the planned chunks in batches, checking the lock before each batch;
//! 5. remove them from the local index and delete older markers.
//!
//! Manifests are never deleted here (`forget` does that, before prune): a crash leaves
//! at worst unreferenced chunks, which the next prune finds and deletes.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::backend::ObjectStat;
use crate::blocking::joined;
use crate::crypto::ChunkId;
use crate::error::Result;
use crate::store::layout;
use crate::store::lock::{oldest_uncertain_lock, Liveness, LockGuard, LockKind, CLOCK_SKEW};
use crate::store::manifest::{ChunkRef, SnapshotManifest};
use crate::store::Repository;

/// Chunks deleted between two checks of the lock.
const DELETE_BATCH: usize = 256;

/// Deletes in flight at once.
const DELETES_IN_FLIGHT: usize = 16;

/// How prune runs.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Plan and report only: no lock, no deletes.
    pub dry_run: bool,
    /// Also keep unreferenced chunks written less than this before prune started.
    pub grace: Duration,
    /// How long to wait for running backups to finish.
    pub lock_wait: Duration,
}

/// What prune found and did, with units in the field names.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub snapshots: usize,
    /// Chunk objects in the repository when prune listed them.
    pub chunks_total: u64,
    pub bytes_total: u64,
    /// Chunks that some manifest references.
    pub chunks_referenced: u64,
    /// Deleted (or, on a dry run, that would be deleted).
    pub chunks_deleted: u64,
    pub bytes_freed: u64,
    /// Unreferenced but young enough that the grace period keeps them for now.
    pub chunks_kept_by_grace: u64,
    pub bytes_kept_by_grace: u64,
    /// Referenced by a manifest but not stored: damage that prune did not cause and
    /// cannot repair; reported so that someone looks.
    pub chunks_missing: u64,
    /// Unreferenced chunks written at or after this time were kept.
    pub grace_cutoff: Option<DateTime<Utc>>,
    /// Locks that prune could not prove dead and that hold the grace cutoff back.
    pub held_back_by: Vec<String>,
    pub duration_ms: u64,
}

/// What a dry run of `forget --prune` has planned to delete but not deleted: prune
/// counts them as gone.
#[derive(Debug, Default)]
pub struct Excluded {
    /// Snapshot ids.
    pub snapshots: HashSet<String>,
    /// Keys of WAL file manifests.
    pub wal_keys: HashSet<String>,
}

/// The decision step of prune, apart from all I/O, so that its cost can be measured.
#[derive(Debug, Default)]
pub struct PrunePlan {
    /// Chunks to delete, with their stored sizes.
    pub delete: Vec<(ChunkId, u64)>,
    pub kept_by_grace: Vec<(ChunkId, u64)>,
    pub chunks_total: u64,
    pub bytes_total: u64,
    pub chunks_referenced: u64,
    pub chunks_missing: u64,
}

/// Every chunk object the manifests need: the chunks they reference and, for the
/// deltas among them, their bases, which the manifests name so that this needs no
/// chunk downloads. A base stays as long as one delta on it does.
pub fn referenced_chunks<'a>(
    manifests: impl IntoIterator<Item = &'a SnapshotManifest>,
) -> HashSet<ChunkId> {
    let mut out = HashSet::new();
    for m in manifests {
        out.extend(m.chunks.iter().flat_map(ChunkRef::objects));
    }
    out
}

/// Decides which listed chunk objects to delete: those no reference names, except
/// those written at or after `cutoff` (or of unknown age, when there is a cutoff).
/// Objects under `chunks/` that are not named like chunks are left alone.
pub fn plan_prune(
    listing: &[ObjectStat],
    referenced: &HashSet<ChunkId>,
    cutoff: Option<DateTime<Utc>>,
) -> PrunePlan {
    let mut plan = PrunePlan::default();
    for o in listing {
        let Some(id) = layout::chunk_id(&o.key) else {
            continue;
        };
        plan.chunks_total += 1;
        plan.bytes_total += o.size_bytes;
        if referenced.contains(&id) {
            plan.chunks_referenced += 1;
        } else if cutoff.is_some_and(|c| o.modified.is_none_or(|m| m >= c)) {
            plan.kept_by_grace.push((id, o.size_bytes));
        } else {
            plan.delete.push((id, o.size_bytes));
        }
    }
    plan.chunks_missing = (referenced.len() as u64).saturating_sub(plan.chunks_referenced);
    plan
}

/// Deletes every chunk that no manifest references, under an exclusive lock
/// (waiting up to `opts.lock_wait` for running backups). A dry run takes no lock.
///
/// Errors: `Locked` when backups hold the repository past the wait, or the lock
/// is lost while deleting; `Corrupt` when a manifest fails authentication (then
/// nothing is deleted: an unreadable manifest's chunks must not be freed); backend
/// errors.
pub async fn prune(repo: &Repository, opts: &PruneOptions) -> Result<PruneReport> {
    if opts.dry_run {
        return prune_locked(repo, opts, None, &Excluded::default()).await;
    }
    let lock = repo
        .lock(LockKind::Exclusive, "prune", opts.lock_wait)
        .await?;
    let result = prune_locked(repo, opts, Some(&lock), &Excluded::default()).await;
    lock.release_after(result).await
}

/// Prune under an exclusive lock the caller holds (`forget --prune`), or without one
/// on a dry run, counting the snapshots and WAL files in `excluded` as already
/// forgotten: how `forget --dry-run --prune` reports what the real pair would free.
///
/// Errors: as [`prune`].
pub(super) async fn prune_locked(
    repo: &Repository,
    opts: &PruneOptions,
    lock: Option<&LockGuard>,
    excluded: &Excluded,
) -> Result<PruneReport> {
    let started = Instant::now();
    let start = chrono::Utc::now();
    let locks = repo.locks().await?;
    let own_key = lock.map(|g| g.info().key());
    let lock_edge = oldest_uncertain_lock(&locks, own_key.as_deref())
        .map(|t| t - chrono::Duration::from_std(CLOCK_SKEW).expect("small duration"));
    let grace_edge = (!opts.grace.is_zero()).then(|| crate::time::before(start, opts.grace));
    let cutoff = match (lock_edge, grace_edge) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let held_back_by = if lock_edge.is_some() {
        locks
            .iter()
            .filter(|l| Some(&l.key) != own_key.as_ref())
            .filter(|l| !matches!(l.liveness, Liveness::Stale { certain: true, .. }))
            .map(|l| l.describe(start))
            .collect()
    } else {
        Vec::new()
    };

    // Chunks first, then manifests: see the module documentation.
    let listing = repo.backend().list_stat(layout::CHUNKS).await?;
    let mut snaps = repo.snapshots_all().await?;
    snaps.retain(|m| !excluded.snapshots.contains(&m.id));
    let mut referenced = referenced_chunks(&snaps);
    // WAL files reference chunks through their own manifests.
    referenced.extend(repo.wal_referenced_chunks(&excluded.wal_keys).await?);
    let snapshot_count = snaps.len();
    drop(snaps);
    let plan = plan_prune(&listing, &referenced, cutoff);
    drop(listing);
    drop(referenced);

    let mut report = PruneReport {
        dry_run: opts.dry_run,
        snapshots: snapshot_count,
        chunks_total: plan.chunks_total,
        bytes_total: plan.bytes_total,
        chunks_referenced: plan.chunks_referenced,
        chunks_deleted: plan.delete.len() as u64,
        bytes_freed: plan.delete.iter().map(|(_, s)| s).sum(),
        chunks_kept_by_grace: plan.kept_by_grace.len() as u64,
        bytes_kept_by_grace: plan.kept_by_grace.iter().map(|(_, s)| s).sum(),
        chunks_missing: plan.chunks_missing,
        grace_cutoff: cutoff,
        held_back_by,
        duration_ms: 0,
    };
    if plan.chunks_missing > 0 {
        tracing::warn!(
            "{} chunks referenced by manifests are missing from {}: some backup points are damaged",
            plan.chunks_missing,
            repo.location()
        );
    }
    if !opts.dry_run && !plan.delete.is_empty() {
        let lock = lock.expect("a real prune holds the exclusive lock");
        lock.ensure_held().await?;
        let marker = repo.begin_prune_deletes(start).await?;
        let mut deleted: Vec<ChunkId> = Vec::with_capacity(plan.delete.len());
        for batch in plan.delete.chunks(DELETE_BATCH) {
            lock.ensure_held().await?;
            let keys: Vec<String> = batch.iter().map(|(id, _)| layout::chunk(id)).collect();
            delete_objects(repo, keys).await?;
            deleted.extend(batch.iter().map(|(id, _)| *id));
        }
        repo.end_prune_deletes(marker, deleted).await?;
    }
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Deletes objects, several at once.
async fn delete_objects(repo: &Repository, keys: Vec<String>) -> Result<()> {
    let slots = Arc::new(Semaphore::new(DELETES_IN_FLIGHT));
    let mut tasks: JoinSet<Result<()>> = JoinSet::new();
    for key in keys {
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore is never closed");
        let backend = repo.backend().clone();
        tasks.spawn(async move {
            let _permit = permit;
            backend.delete(&key).await
        });
        while let Some(r) = tasks.try_join_next() {
            joined("delete", r)??;
        }
    }
    while let Some(r) = tasks.join_next().await {
        joined("delete", r)??;
    }
    Ok(())
}
