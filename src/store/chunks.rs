//! One chunk as stored: put it if missing (in full, or as a delta on a similar full
//! chunk), and load it back authenticated, decompressed and re-hashed.

use std::sync::Arc;

use super::format;
use super::layout;
use super::Repository;
use crate::blocking::{blocking, try_blocking};
use crate::crypto::ChunkId;
use crate::error::{Error, ErrorKind, Result};
use crate::sketch::{Sketch, SketchIndex};

/// What storing one chunk found or did.
#[derive(Debug, Clone)]
pub struct StoredChunk {
    pub id: ChunkId,
    /// The size of the object this call wrote; `None` when one was already stored.
    pub written_bytes: Option<u64>,
    /// The chunk the stored object is a delta on.
    pub base: Option<ChunkId>,
    /// The sketch of a chunk this call wrote in full: a base for later deltas.
    pub sketch: Option<Sketch>,
}

impl Repository {
    /// Stores a chunk unless an object for it already exists. With `similar` (and
    /// deltas on in the repository) a chunk that resembles a stored full chunk is
    /// stored as a delta on it when that is smaller.
    ///
    /// Objects are created with put-if-absent: a chunk stored as a delta on one base
    /// must never be replaced by one built on another, or the manifests naming the
    /// first base would stop keeping the right one alive. Whoever loses a race reads
    /// what the winner stored.
    ///
    /// Errors: backend errors.
    pub async fn put_chunk_if_missing(
        &self,
        id: ChunkId,
        data: Vec<u8>,
        similar: Option<Arc<SketchIndex>>,
    ) -> Result<StoredChunk> {
        let key = layout::chunk(&id);
        let similar = similar.filter(|_| self.config().delta);
        if self.backend().exists(&key).await? {
            return self.reuse_or_repair(id, data, similar.is_some()).await;
        }
        let (data, sketch, candidate) = match similar {
            None => (data, None, None),
            Some(idx) => {
                let sketch_key = self.key().sketch_key();
                blocking("chunk sealing", move || {
                    let sketch = Sketch::of(&data).keyed(&sketch_key);
                    let candidate = idx.most_similar(&sketch, &id);
                    (data, Some(sketch), candidate)
                })
                .await?
            }
        };
        let base = match candidate {
            Some(c) => self.delta_base(&id, &c).await?.map(|plain| (c, plain)),
            None => None,
        };
        let master = self.key().clone();
        let level = self.config().zstd_level;
        let ((object, base), data) = blocking("chunk sealing", move || {
            (encode_best(&master, &id, &data, base, level), data)
        })
        .await?;
        let size = object.len() as u64;
        let created = if self.config().conditional_writes {
            self.backend().put_if_absent(&key, object).await?
        } else {
            self.backend().put(&key, object).await?;
            true
        };
        if !created {
            return self.reuse_or_repair(id, data, sketch.is_some()).await;
        }
        Ok(StoredChunk {
            id,
            written_bytes: Some(size),
            base,
            sketch: sketch.filter(|_| base.is_none()),
        })
    }

    /// Reuses the object someone else stored for a chunk, learning its base from it;
    /// or, when it is a delta whose base is gone, replaces it with the chunk in full.
    ///
    /// A delta without its base is what a prune killed between deleting a base and
    /// deleting its (equally unreferenced) deltas leaves behind. No committed manifest
    /// can need that object as it is (a manifest naming the delta names its base, and
    /// prune keeps that), and no prune runs while this writer holds its lock, so the
    /// object can only be a leftover. Overwriting it with the full chunk is safe: the
    /// content is the same, a full chunk needs nothing else, and another writer doing
    /// the same repair writes the same full object.
    ///
    /// Errors: `Corrupt` when the stored object fails authentication; backend errors.
    async fn reuse_or_repair(
        &self,
        id: ChunkId,
        data: Vec<u8>,
        sketched: bool,
    ) -> Result<StoredChunk> {
        let opened = self.open_chunk(&id).await?;
        let base = opened.base();
        match base {
            Some(b) if !self.backend().exists(&layout::chunk(&b)).await? => {
                tracing::warn!(
                    "Chunk {} is a delta on chunk {}, which is missing (an interrupted prune?): storing it in full",
                    id.to_hex(),
                    b.to_hex()
                );
            }
            _ => {
                return Ok(StoredChunk {
                    id,
                    written_bytes: None,
                    base,
                    sketch: None,
                })
            }
        }
        let master = self.key().clone();
        let level = self.config().zstd_level;
        let (object, sketch) = blocking("chunk sealing", move || {
            let sketch = sketched.then(|| Sketch::of(&data).keyed(&master.sketch_key()));
            (format::encode_chunk(&master, &id, &data, level), sketch)
        })
        .await?;
        let size = object.len() as u64;
        self.backend().put(&layout::chunk(&id), object).await?;
        Ok(StoredChunk {
            id,
            written_bytes: Some(size),
            base: None,
            sketch,
        })
    }

    /// The plaintext of `candidate` if it can serve as a base: stored, intact and full.
    /// The sketch index is only a hint, so a candidate that is gone or unusable means
    /// no delta rather than an error.
    ///
    /// Errors: backend errors other than a missing object (an outage is no answer).
    async fn delta_base(&self, id: &ChunkId, candidate: &ChunkId) -> Result<Option<Vec<u8>>> {
        match self.load_base(id, candidate).await {
            Ok(plain) => Ok(Some(plain)),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                tracing::debug!("No delta for chunk {}: {e}", id.to_hex());
                Ok(None)
            }
            Err(e) if e.kind() == ErrorKind::Corrupt => {
                tracing::warn!("No delta for chunk {}: {e}", id.to_hex());
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Reads, authenticates, decompresses and verifies one chunk; a delta chunk is
    /// rebuilt on its base, read as well.
    ///
    /// Errors: `NotFound` naming the chunk when its object (or its base's) is missing;
    /// `Corrupt` when it or its base fails authentication or verification; backend
    /// errors otherwise.
    pub async fn load_chunk(&self, id: &ChunkId, expected_len: Option<usize>) -> Result<Vec<u8>> {
        let opened = self.open_chunk(id).await?;
        let base = match opened.base() {
            None => None,
            Some(base_id) => Some(self.load_base(id, &base_id).await?),
        };
        self.finish_chunk(id, opened, base, expected_len).await
    }

    /// Reads the base `base_id` of delta chunk `id`: a full chunk, since chains are
    /// one link long.
    ///
    /// Errors: as [`Repository::load_chunk`], with messages that name both chunks;
    /// `Corrupt` when the base is itself a delta.
    pub async fn load_base(&self, id: &ChunkId, base_id: &ChunkId) -> Result<Vec<u8>> {
        let context = |e: Error| match e {
            Error::NotFound { what, location } => Error::NotFound {
                what: format!("{what} (the base of chunk {})", id.to_hex()),
                location,
            },
            Error::Corrupt(m) => Error::Corrupt(format!(
                "Chunk {} cannot be rebuilt: {m} (it is its base)",
                id.to_hex()
            )),
            other => other,
        };
        let opened = self.open_chunk(base_id).await.map_err(context)?;
        if opened.base().is_some() {
            return Err(context(Error::Corrupt(format!(
                "Chunk {} is a delta itself",
                base_id.to_hex()
            ))));
        }
        self.finish_chunk(base_id, opened, None, None)
            .await
            .map_err(context)
    }

    /// Downloads, authenticates and decrypts one chunk object.
    ///
    /// Errors: `NotFound` naming the chunk when its object is missing; `Corrupt` when
    /// it fails authentication; backend errors otherwise.
    pub async fn open_chunk(&self, id: &ChunkId) -> Result<format::OpenedChunk> {
        Ok(self.open_chunk_sized(id).await?.0)
    }

    /// [`Repository::open_chunk`], also returning the object's stored size.
    ///
    /// Errors: as [`Repository::open_chunk`].
    pub async fn open_chunk_sized(&self, id: &ChunkId) -> Result<(format::OpenedChunk, u64)> {
        let object = match self.backend().get(&layout::chunk(id)).await {
            Ok(o) => o,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(Error::NotFound {
                    what: format!("Chunk {}", id.to_hex()),
                    location: self.location(),
                })
            }
            Err(e) => return Err(e),
        };
        let size = object.len() as u64;
        let master = self.key().clone();
        let id = *id;
        let opened = try_blocking("chunk decoding", move || {
            format::open_chunk(&master, &id, &object)
        })
        .await?;
        Ok((opened, size))
    }

    /// Decompresses an opened chunk (on `base`'s plaintext when it is a delta) and
    /// checks it has the id it is stored under.
    ///
    /// Errors: `Corrupt` when it does not decompress or hashes to another id.
    pub async fn finish_chunk(
        &self,
        id: &ChunkId,
        opened: format::OpenedChunk,
        base: Option<Vec<u8>>,
        expected_len: Option<usize>,
    ) -> Result<Vec<u8>> {
        let master = self.key().clone();
        let id = *id;
        try_blocking("chunk decoding", move || {
            format::finish_chunk(&master, &id, &opened, base.as_deref(), expected_len)
        })
        .await
    }
}

/// A delta under this share of the chunk's size is taken without also compressing the
/// chunk in full: zstd seldom gets real data below a twentieth, and where it does the
/// most a delta can lose is that twentieth. Saves a second compression of nearly every
/// changed chunk.
const DELTA_GOOD_ENOUGH_DIVISOR: usize = 20;

/// Seals a chunk as a delta on `base` when that is smaller, else in full.
fn encode_best(
    master: &crate::crypto::MasterKey,
    id: &ChunkId,
    data: &[u8],
    base: Option<(ChunkId, Vec<u8>)>,
    level: i32,
) -> (Vec<u8>, Option<ChunkId>) {
    let Some((base_id, base)) = base else {
        return (format::encode_chunk(master, id, data, level), None);
    };
    let delta = format::encode_delta_chunk(master, id, data, &base_id, &base, level);
    if delta.len() <= data.len() / DELTA_GOOD_ENOUGH_DIVISOR {
        return (delta, Some(base_id));
    }
    let full = format::encode_chunk(master, id, data, level);
    if delta.len() < full.len() {
        (delta, Some(base_id))
    } else {
        (full, None)
    }
}
