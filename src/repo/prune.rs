//! prune frees the chunks that no manifest references; du tells what each backup point
//! costs and what forgetting it would free. Both decide from the backend's listings and
//! manifests, never from the local index, and neither downloads chunk data.
//!
//! prune's order of work is what makes `kill -9` at any moment harmless:
//! 1. take the exclusive lock (see [`super::lock`] for why no backup runs meanwhile);
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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::format;
use super::lock::{oldest_uncertain_lock, LockGuard, LockKind, CLOCK_SKEW};
use super::manifest::{ChunkRef, SnapshotKind, SnapshotManifest};
use super::Repository;
use crate::backend::ObjectStat;
use crate::crypto::ChunkId;
use crate::error::{Error, Result};
use crate::index::KnownChunks;

/// Where prune markers live.
const MARKERS: &str = "prunes/";

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
        let Some(id) = format::chunk_id_from_key(&o.key) else {
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
    plan.chunks_missing = referenced.len() as u64 - plan.chunks_referenced;
    plan
}

/// One backup point in `du`.
#[derive(Debug, Clone, Serialize)]
pub struct DuEntry {
    pub id: String,
    pub time: DateTime<Utc>,
    pub db: String,
    pub kind: SnapshotKind,
    /// The file's size as read back.
    pub size_bytes: u64,
    /// Stored bytes of the distinct chunk objects it needs: its chunks and the bases
    /// of its delta chunks.
    pub stored_bytes: u64,
    /// Stored bytes of the chunk objects no other backup point needs: what forgetting
    /// it (and pruning) would free.
    pub unique_bytes: u64,
    pub chunks: u64,
}

/// Totals of `du`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DuTotal {
    pub snapshots: u64,
    pub size_bytes: u64,
    /// Stored bytes of every chunk some backup point references.
    pub stored_bytes: u64,
    pub chunk_objects: u64,
    /// Stored bytes of every chunk object, referenced or not.
    pub chunk_bytes: u64,
    /// What prune would free, grace period aside.
    pub unreferenced_chunks: u64,
    pub unreferenced_bytes: u64,
    pub missing_chunks: u64,
}

/// What `du` reports.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DuReport {
    pub snapshots: Vec<DuEntry>,
    pub total: DuTotal,
}

/// Computes `du` from a chunk listing and the manifests.
pub fn disk_usage(listing: &[ObjectStat], manifests: &[SnapshotManifest]) -> DuReport {
    let sizes: HashMap<ChunkId, u64> = listing
        .iter()
        .filter_map(|o| format::chunk_id_from_key(&o.key).map(|id| (id, o.size_bytes)))
        .collect();
    // How many backup points reference each chunk (each counted once per point).
    let mut owners: HashMap<ChunkId, u32> = HashMap::new();
    let distinct: Vec<HashSet<ChunkId>> = manifests
        .iter()
        .map(|m| m.chunks.iter().flat_map(ChunkRef::objects).collect())
        .collect();
    for set in &distinct {
        for id in set {
            *owners.entry(*id).or_default() += 1;
        }
    }
    let mut total = DuTotal {
        snapshots: manifests.len() as u64,
        chunk_objects: sizes.len() as u64,
        chunk_bytes: sizes.values().sum(),
        ..DuTotal::default()
    };
    for (id, size) in &sizes {
        if owners.contains_key(id) {
            total.stored_bytes += size;
        } else {
            total.unreferenced_chunks += 1;
            total.unreferenced_bytes += size;
        }
    }
    total.missing_chunks = owners.keys().filter(|id| !sizes.contains_key(id)).count() as u64;
    let snapshots = manifests
        .iter()
        .zip(&distinct)
        .map(|(m, set)| {
            let mut e = DuEntry {
                id: m.id.clone(),
                time: m.time,
                db: m.db.clone(),
                kind: m.kind,
                size_bytes: m.size_bytes,
                stored_bytes: 0,
                unique_bytes: 0,
                chunks: set.len() as u64,
            };
            for id in set {
                let size = sizes.get(id).copied().unwrap_or(0);
                e.stored_bytes += size;
                if owners.get(id) == Some(&1) {
                    e.unique_bytes += size;
                }
            }
            total.size_bytes += m.size_bytes;
            e
        })
        .collect();
    DuReport { snapshots, total }
}

impl Repository {
    /// The repository's prune generation: the names of the prune markers, which change
    /// whenever a prune is about to delete chunks.
    ///
    /// Errors: backend errors.
    pub async fn prune_generation(&self) -> Result<String> {
        let mut names: Vec<String> = self
            .backend()
            .list(MARKERS)
            .await?
            .into_iter()
            .map(|o| o.key)
            .collect();
        names.sort();
        Ok(names.join(","))
    }

    /// The chunks the local index believes stored, dropped first if a prune ran since
    /// the index last looked (see [`crate::index::Index::known_chunks_at`]). A writer
    /// calls this while it holds its shared lock, so no prune can start deleting
    /// between this check and its manifest.
    ///
    /// Errors: backend errors; `Io` when the index is unusable and cannot be recreated.
    pub async fn known_chunks(&self) -> Result<KnownChunks> {
        let generation = self.prune_generation().await?;
        let index = self.index().clone();
        tokio::task::spawn_blocking(move || index.known_chunks_at(&generation))
            .await
            .map_err(|e| Error::io("Index task failed", std::io::Error::other(e)))?
    }

    /// What each backup point costs, from listings and manifests only.
    ///
    /// Errors: `Corrupt` when a manifest fails authentication; backend errors.
    pub async fn du(&self) -> Result<DuReport> {
        let listing = self.backend().list_stat("chunks/").await?;
        let snaps = self.snapshots().await?;
        Ok(disk_usage(&listing, &snaps))
    }

    /// Deletes every chunk that no manifest references, under an exclusive lock
    /// (waiting up to `opts.lock_wait` for running backups). A dry run takes no lock.
    ///
    /// Errors: `Locked` when backups hold the repository past the wait, or the lock
    /// is lost while deleting; `Corrupt` when a manifest fails authentication (then
    /// nothing is deleted: an unreadable manifest's chunks must not be freed); backend
    /// errors.
    pub async fn prune(&self, opts: &PruneOptions) -> Result<PruneReport> {
        self.prune_with(opts, None).await
    }

    /// [`Repository::prune`] under an exclusive lock the caller already holds (forget
    /// then prune), or taking its own when `held` is `None`.
    ///
    /// Errors: as [`Repository::prune`].
    pub async fn prune_with(
        &self,
        opts: &PruneOptions,
        held: Option<&LockGuard>,
    ) -> Result<PruneReport> {
        self.prune_excluding(opts, held, &HashSet::new()).await
    }

    /// [`Repository::prune_with`], counting the snapshots in `excluded` as already
    /// forgotten: how `forget --dry-run --prune` reports what the real pair would free.
    pub(super) async fn prune_excluding(
        &self,
        opts: &PruneOptions,
        held: Option<&LockGuard>,
        excluded: &HashSet<String>,
    ) -> Result<PruneReport> {
        let own = if opts.dry_run || held.is_some() {
            None
        } else {
            Some(
                self.lock(LockKind::Exclusive, "prune", opts.lock_wait)
                    .await?,
            )
        };
        let result = self
            .prune_locked(opts, held.or(own.as_ref()), excluded)
            .await;
        if let Some(g) = own {
            let released = g.release().await;
            if result.is_ok() {
                released?;
            }
        }
        result
    }

    async fn prune_locked(
        &self,
        opts: &PruneOptions,
        lock: Option<&LockGuard>,
        excluded: &HashSet<String>,
    ) -> Result<PruneReport> {
        let started = Instant::now();
        let start = chrono::Utc::now();
        let locks = self.locks().await?;
        let own_key = lock.map(|g| g.info().key());
        let lock_edge = oldest_uncertain_lock(&locks, own_key.as_deref())
            .map(|t| t - chrono::Duration::from_std(CLOCK_SKEW).expect("small duration"));
        let grace_edge = (!opts.grace.is_zero()).then(|| {
            start - chrono::Duration::from_std(opts.grace).unwrap_or(chrono::Duration::MAX)
        });
        let cutoff = match (lock_edge, grace_edge) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let held_back_by = if lock_edge.is_some() {
            locks
                .iter()
                .filter(|l| Some(&l.key) != own_key.as_ref())
                .filter(|l| {
                    !matches!(
                        l.liveness,
                        super::lock::Liveness::Stale { certain: true, .. }
                    )
                })
                .map(|l| l.describe(start))
                .collect()
        } else {
            Vec::new()
        };

        // Chunks first, then manifests: see the module documentation.
        let listing = self.backend().list_stat("chunks/").await?;
        let mut snaps = self.snapshots().await?;
        snaps.retain(|m| !excluded.contains(&m.id));
        let mut referenced = referenced_chunks(&snaps);
        // WAL files reference chunks through their own manifests.
        referenced.extend(self.wal_referenced_chunks(excluded).await?);
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
                self.location()
            );
        }
        if !opts.dry_run && !plan.delete.is_empty() {
            let lock = lock.expect("a real prune holds the exclusive lock");
            lock.ensure_held().await?;
            let generation_before = self.prune_generation().await?;
            let marker = self.write_prune_marker(start).await?;
            let mut deleted: Vec<ChunkId> = Vec::with_capacity(plan.delete.len());
            for batch in plan.delete.chunks(DELETE_BATCH) {
                lock.ensure_held().await?;
                let keys: Vec<String> = batch.iter().map(|(id, _)| format::chunk_key(id)).collect();
                self.delete_objects(keys).await?;
                deleted.extend(batch.iter().map(|(id, _)| *id));
            }
            let older: Vec<String> = self
                .backend()
                .list(MARKERS)
                .await?
                .into_iter()
                .map(|o| o.key)
                .filter(|k| *k != marker)
                .collect();
            self.delete_objects(older).await?;
            // The exclusive lock kept any other prune out, so the generation now is
            // this prune's marker alone.
            let index = self.index().clone();
            tokio::task::spawn_blocking(move || {
                index.remove_chunks(&deleted, Some((&generation_before, &marker)))
            })
            .await
            .map_err(|e| Error::io("Index task failed", std::io::Error::other(e)))??;
        }
        report.duration_ms = started.elapsed().as_millis() as u64;
        Ok(report)
    }

    /// Writes a new prune marker and returns its key.
    async fn write_prune_marker(&self, start: DateTime<Utc>) -> Result<String> {
        let key = format!(
            "{MARKERS}{}-{}",
            start.format("%Y%m%dT%H%M%S%.6fZ"),
            hex::encode(crate::crypto::random_bytes::<8>())
        );
        let body = serde_json::json!({
            "time": start,
            "hostname": crate::hostname(),
            "pid": std::process::id(),
        });
        let sealed = format::encode_manifest(self.key(), &key, body.to_string().as_bytes());
        self.backend().put_if_absent(&key, sealed).await?;
        Ok(key)
    }

    /// Deletes objects, several at once.
    async fn delete_objects(&self, keys: Vec<String>) -> Result<()> {
        let slots = Arc::new(Semaphore::new(DELETES_IN_FLIGHT));
        let mut tasks: JoinSet<Result<()>> = JoinSet::new();
        for key in keys {
            let permit = slots
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore is never closed");
            let backend = self.backend().clone();
            tasks.spawn(async move {
                let _permit = permit;
                backend.delete(&key).await
            });
            while let Some(r) = tasks.try_join_next() {
                r.map_err(|e| Error::io("Delete task failed", std::io::Error::other(e)))??;
            }
        }
        while let Some(r) = tasks.join_next().await {
            r.map_err(|e| Error::io("Delete task failed", std::io::Error::other(e)))??;
        }
        Ok(())
    }
}
