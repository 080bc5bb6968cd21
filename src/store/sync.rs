//! Keeping this machine's index in step with the store.
//!
//! The index caches which chunks are stored, so a backup need not ask the store about
//! each one. A prune on any machine may delete chunks that cache still lists, so
//! before it deletes, prune leaves a marker under `prunes/`; the set of marker names is
//! the repository's *prune generation*. An index records the generation its chunk
//! cache belongs to and drops the cache when the generation changed. Sketches (delta
//! hints) stay: a candidate base is always read before it is used.

use chrono::{DateTime, Utc};

use super::layout;
use super::Repository;
use crate::crypto::ChunkId;
use crate::error::Result;
use crate::index::{CachedChunk, KnownChunks};
use crate::sketch::SketchIndex;

/// A prune marker written by [`Repository::begin_prune_deletes`].
#[derive(Debug)]
pub struct PruneMarker {
    key: String,
    generation_before: String,
}

impl Repository {
    /// The repository's prune generation: the names of the prune markers, which
    /// change whenever a prune is about to delete chunks.
    ///
    /// Errors: backend errors.
    pub async fn prune_generation(&self) -> Result<String> {
        let mut names: Vec<String> = self
            .backend()
            .list(layout::PRUNE_MARKERS)
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
        self.index().known_chunks_at(generation).await
    }

    /// The sketches of stored full chunks the local index knows: where a new chunk
    /// looks for a base. Empty when the index is busy (no deltas, no harm).
    ///
    /// Errors: `Io` when the index is unusable and cannot be recreated.
    pub async fn sketch_index(&self) -> Result<SketchIndex> {
        Ok(SketchIndex::from_pairs(self.index().sketches().await?))
    }

    /// Writes a new prune marker before the first chunk is deleted, so that every
    /// machine's index stops trusting its chunk cache. The caller holds the
    /// exclusive lock.
    ///
    /// Errors: backend errors (then nothing may be deleted).
    pub async fn begin_prune_deletes(&self, start: DateTime<Utc>) -> Result<PruneMarker> {
        let generation_before = self.prune_generation().await?;
        let key = format!(
            "{}{}-{}",
            layout::PRUNE_MARKERS,
            start.format("%Y%m%dT%H%M%S%.6fZ"),
            hex::encode(crate::crypto::random_bytes::<8>())
        );
        let body = serde_json::json!({
            "time": start,
            "hostname": crate::host::hostname(),
            "pid": std::process::id(),
        });
        let sealed = self.seal_json(&key, body.to_string().as_bytes());
        self.backend().put_if_absent(&key, sealed).await?;
        Ok(PruneMarker {
            key,
            generation_before,
        })
    }

    /// After a prune's deletes: removes older markers, so the generation is this
    /// prune's marker alone, and takes the deleted chunks out of this machine's
    /// index, keeping the rest of its chunk cache when it was current before.
    ///
    /// Errors: backend errors; `Io` when the index is unusable.
    pub async fn end_prune_deletes(
        &self,
        marker: PruneMarker,
        deleted: Vec<ChunkId>,
    ) -> Result<()> {
        for o in self.backend().list(layout::PRUNE_MARKERS).await? {
            if o.key != marker.key {
                self.backend().delete(&o.key).await?;
            }
        }
        // The exclusive lock kept any other prune out, so the generation now is this
        // prune's marker alone.
        self.index()
            .forget_chunks(deleted, Some((marker.generation_before, marker.key)))
            .await
    }

    /// Recreates the local index from the backend: the chunk objects that manifests
    /// reference (with the bases the manifests name), the sketches the manifests
    /// carry, and the manifests. Returns the number of chunks and snapshots indexed.
    ///
    /// Chunk objects no manifest references are left out: nothing says whether they
    /// are deltas, and a backup that met one in the cache would record no base for
    /// it. A backup asks the backend about those.
    ///
    /// Errors: backend errors, `Corrupt` for a manifest that fails authentication, or
    /// `Io` when the index cannot be written.
    pub async fn rebuild_index(&self) -> Result<(usize, usize)> {
        self.index().remove().await?;
        // Before the listing: a prune after this point leaves a newer generation,
        // which makes the next backup drop what we record here.
        let generation = self.prune_generation().await?;
        let sizes: std::collections::HashMap<ChunkId, u64> = self
            .backend
            .list(layout::CHUNKS)
            .await?
            .into_iter()
            .filter_map(|o| layout::chunk_id(&o.key).map(|id| (id, o.size_bytes)))
            .collect();
        let snaps = self.snapshots().await?;
        let wal = self.wal_chunk_refs(&Default::default()).await?;
        let mut refs: std::collections::HashMap<ChunkId, Option<ChunkId>> = Default::default();
        for r in snaps.iter().flat_map(|m| &m.chunks).chain(&wal) {
            refs.insert(r.id, r.base);
        }
        let chunks: Vec<CachedChunk> = refs
            .into_iter()
            .filter_map(|(id, base)| {
                sizes.get(&id).map(|&size_bytes| CachedChunk {
                    id,
                    size_bytes,
                    base,
                })
            })
            .collect();
        let sketches: Vec<(ChunkId, crate::sketch::Sketch)> = snaps
            .iter()
            .flat_map(|m| m.sketches.iter().cloned())
            .filter(|(id, _)| sizes.contains_key(id))
            .collect();
        let count = chunks.len();
        self.index()
            .record(chunks, sketches, Some(generation))
            .await?;
        Ok((count, snaps.len()))
    }
}
