//! `snapshots`, `cat` and `index rebuild`: reading what the repository holds.

use std::io::Write;
use std::sync::Arc;

use crate::error::Result;
use crate::store::manifest::SnapshotManifest;
use crate::store::writer::Progress;
use crate::store::Repository;

/// Every backup point, oldest first; only those of `db` when given.
///
/// Errors: `Corrupt` when a manifest fails authentication; backend errors.
pub async fn list(repo: &Repository, db: Option<&str>) -> Result<Vec<SnapshotManifest>> {
    let mut snaps = repo.snapshots().await?;
    if let Some(db) = db {
        snaps.retain(|s| s.db == db);
    }
    Ok(snaps)
}

/// The backup point `id` (or unique id prefix) names.
///
/// Errors: as [`Repository::resolve_snapshot`].
pub async fn find(repo: &Repository, id: &str) -> Result<SnapshotManifest> {
    repo.resolve_snapshot(id).await
}

/// Writes a backup point's file to `out`, byte for byte as it was stored.
///
/// Errors: as [`Repository::cat`].
pub async fn cat(
    repo: &Repository,
    snapshot: &SnapshotManifest,
    out: &mut (dyn Write + Send),
    progress: Arc<dyn Progress>,
) -> Result<u64> {
    repo.cat(snapshot, out, progress).await
}

/// Recreates this machine's index from the repository; returns the chunks and
/// snapshots indexed.
///
/// Errors: as [`Repository::rebuild_index`].
pub async fn rebuild_index(repo: &Repository) -> Result<(usize, usize)> {
    repo.rebuild_index().await
}
