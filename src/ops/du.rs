//! `du`: what each backup point costs and what forgetting it would free, from the
//! backend's listing and the manifests, without downloading chunk data.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::backend::ObjectStat;
use crate::crypto::ChunkId;
use crate::error::Result;
use crate::store::layout;
use crate::store::manifest::{ChunkRef, SnapshotKind, SnapshotManifest};
use crate::store::Repository;

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
        .filter_map(|o| layout::chunk_id(&o.key).map(|id| (id, o.size_bytes)))
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

/// What each backup point costs, from listings and manifests only.
///
/// Errors: `Corrupt` when a manifest fails authentication; backend errors.
pub async fn du(repo: &Repository) -> Result<DuReport> {
    let listing = repo.backend().list_stat(layout::CHUNKS).await?;
    let snaps = repo.snapshots().await?;
    Ok(disk_usage(&listing, &snaps))
}
