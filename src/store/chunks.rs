//! One chunk as stored: put it if missing (in full, or as a delta on a similar full
//! chunk), and load it back authenticated, decompressed and re-hashed.

use std::sync::Arc;

use super::format;
use super::layout;
use super::manifest::ChunkRef;
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
    /// stored as a delta on it when that is smaller. A `hint` (the chunk's earlier
    /// version, or that version's base) is tried as the base instead of searching the
    /// index; the chunk is sketched only if it is then stored in full.
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
        hint: Option<ChunkId>,
    ) -> Result<StoredChunk> {
        let key = layout::chunk(&id);
        let similar = similar.filter(|_| self.config().delta);
        let sketched = similar.is_some();
        if self.backend().exists(&key).await? {
            return self.reuse_or_repair(id, data, sketched).await;
        }
        let (data, sketch, candidate) = match (similar, hint) {
            (None, _) => (data, None, None),
            (Some(_), Some(h)) if h != id => (data, None, Some(h)),
            (Some(idx), _) => {
                let (data, sketch) = self.sketch(data).await?;
                let candidate = idx.most_similar(&sketch, &id);
                (data, Some(sketch), candidate)
            }
        };
        let base = match candidate {
            Some(c) => self.delta_base(&id, &c).await?.map(|plain| (c, plain)),
            None => None,
        };
        let master = self.key().clone();
        let levels = Levels {
            full: self.config().zstd_level,
            delta: self.config().delta_level(),
        };
        let cpu = cpu_slot().await;
        let ((object, base), data) = blocking("chunk sealing", move || {
            (encode_best(&master, &id, &data, base, levels), data)
        })
        .await?;
        drop(cpu);
        let size = object.len() as u64;
        let created = if self.config().conditional_writes {
            self.backend().put_if_absent(&key, object).await?
        } else {
            self.backend().put(&key, object).await?;
            true
        };
        if !created {
            return self.reuse_or_repair(id, data, sketched).await;
        }
        // A full chunk is a base for later deltas: the index needs its sketch.
        let sketch = match (base, sketch) {
            (Some(_), _) => None,
            (None, Some(s)) => Some(s),
            (None, None) if sketched => Some(self.sketch(data).await?.1),
            (None, None) => None,
        };
        Ok(StoredChunk {
            id,
            written_bytes: Some(size),
            base,
            sketch,
        })
    }

    /// The keyed sketch of `data`, made on a turn at the CPU; `data` comes back.
    ///
    /// Errors: `Io` when the blocking task panicked or was cancelled.
    async fn sketch(&self, data: Vec<u8>) -> Result<(Vec<u8>, Sketch)> {
        let sketch_key = self.key().sketch_key();
        let _cpu = cpu_slot().await;
        blocking("chunk sealing", move || {
            let sketch = Sketch::of(&data).keyed(&sketch_key);
            (data, sketch)
        })
        .await
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
    async fn delta_base(&self, id: &ChunkId, candidate: &ChunkId) -> Result<Option<Arc<Vec<u8>>>> {
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
        self.load_with_hint(id, expected_len, None).await
    }

    /// [`Repository::load_chunk`] for a chunk of a manifest, which names the base of a
    /// delta: the base is fetched at the same time as the delta, not after it.
    ///
    /// Errors: as [`Repository::load_chunk`].
    pub async fn load_ref(&self, r: &ChunkRef) -> Result<Vec<u8>> {
        self.load_with_hint(&r.id, Some(r.len as usize), r.base)
            .await
    }

    async fn load_with_hint(
        &self,
        id: &ChunkId,
        expected_len: Option<usize>,
        base_hint: Option<ChunkId>,
    ) -> Result<Vec<u8>> {
        let (object, hinted) = match base_hint {
            None => (self.fetch_object(id).await?, None),
            Some(b) => {
                let (object, base) = tokio::join!(self.fetch_object(id), self.load_base(id, &b));
                (object?, Some((b, base)))
            }
        };
        // One trip to the blocking pool for the common cases (a full chunk, a delta
        // on the base the manifest named): each trip is a hand-over between threads.
        let master = self.key().clone();
        let id_owned = *id;
        let step = try_blocking("chunk decoding", move || {
            let opened = format::open_chunk(&master, &id_owned, &object)?;
            // The object decides: a manifest's hint is only a head start (a delta left
            // without its base may since have been stored again in full).
            let base = match (opened.base(), hinted) {
                (None, _) => None,
                (Some(actual), Some((b, loaded))) if b == actual => Some(loaded?),
                (Some(_), _) => return Ok(Step::NeedsBase(opened)),
            };
            format::finish_chunk(
                &master,
                &id_owned,
                &opened,
                base.as_deref().map(Vec::as_slice),
                expected_len,
            )
            .map(Step::Done)
        })
        .await?;
        match step {
            Step::Done(plain) => Ok(plain),
            Step::NeedsBase(opened) => {
                let actual = opened.base().expect("a delta names its base");
                let base = self.load_base(id, &actual).await?;
                self.finish_chunk(id, opened, Some(base), expected_len)
                    .await
            }
        }
    }

    /// Reads the base `base_id` of delta chunk `id`: a full chunk, since chains are
    /// one link long. Bases recently read are kept (a base serves every delta on it,
    /// and `check --read-data` reads each base once).
    ///
    /// Errors: as [`Repository::load_chunk`], with messages that name both chunks;
    /// `Corrupt` when the base is itself a delta.
    pub async fn load_base(&self, id: &ChunkId, base_id: &ChunkId) -> Result<Arc<Vec<u8>>> {
        if let Some(b) = self.bases().get(base_id) {
            return Ok(b);
        }
        // Deltas on one base read side by side (a check's group, a mount's readahead)
        // share one fetch and decode of it.
        let loading = self.bases().loading(base_id);
        let result = loading
            .get_or_try_init(|| self.fetch_base(id, base_id))
            .await
            .cloned();
        self.bases().loaded(base_id);
        result
    }

    async fn fetch_base(&self, id: &ChunkId, base_id: &ChunkId) -> Result<Arc<Vec<u8>>> {
        // A base read for its own sake (`check`) speaks for itself.
        let own = id == base_id;
        let context = |e: Error| match e {
            e if own => e,
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
        let object = self.fetch_object(base_id).await.map_err(context)?;
        let master = self.key().clone();
        let base_owned = *base_id;
        let plain = try_blocking("chunk decoding", move || {
            let opened = format::open_chunk(&master, &base_owned, &object)?;
            if opened.base().is_some() {
                return Err(Error::Corrupt(format!(
                    "Chunk {} is a delta itself",
                    base_owned.to_hex()
                )));
            }
            format::finish_chunk(&master, &base_owned, &opened, None, None).map(Arc::new)
        })
        .await
        .map_err(context)?;
        self.bases().insert(*base_id, plain.clone());
        Ok(plain)
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
        let object = self.fetch_object(id).await?;
        let size = object.len() as u64;
        let master = self.key().clone();
        let id = *id;
        let opened = try_blocking("chunk decoding", move || {
            format::open_chunk(&master, &id, &object)
        })
        .await?;
        Ok((opened, size))
    }

    /// Downloads one chunk object as stored.
    ///
    /// Errors: `NotFound` naming the chunk when its object is missing; backend errors.
    async fn fetch_object(&self, id: &ChunkId) -> Result<Vec<u8>> {
        match self.backend().get(&layout::chunk(id)).await {
            Ok(o) => Ok(o),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(Error::NotFound {
                what: format!("Chunk {}", id.to_hex()),
                location: self.location(),
            }),
            Err(e) => Err(e),
        }
    }

    /// Decompresses an opened chunk (on `base`'s plaintext when it is a delta) and
    /// checks it has the id it is stored under.
    ///
    /// Errors: `Corrupt` when it does not decompress or hashes to another id.
    pub async fn finish_chunk(
        &self,
        id: &ChunkId,
        opened: format::OpenedChunk,
        base: Option<Arc<Vec<u8>>>,
        expected_len: Option<usize>,
    ) -> Result<Vec<u8>> {
        let master = self.key().clone();
        let id = *id;
        try_blocking("chunk decoding", move || {
            format::finish_chunk(
                &master,
                &id,
                &opened,
                base.as_deref().map(Vec::as_slice),
                expected_len,
            )
        })
        .await
    }
}

/// A delta under this share of the chunk's size is taken without also compressing the
/// chunk in full: dump data seldom compresses below a fifth of its size, so such a
/// delta is far under the rebase threshold below. Saves a second compression of
/// nearly every changed chunk.
const DELTA_GOOD_ENOUGH_DIVISOR: usize = 20;

/// A delta larger than this share of the chunk's full encoding is not taken: the chunk
/// is stored in full instead and becomes the base its next versions are deltas on.
///
/// Why: a chunk of a busy table changes a little every day, and its delta on a fixed
/// base grows with every day of drift, about `k·d` on day `k` for a day's change `d`,
/// until a delta costs as much as the chunk (measured: 4.7 MB on day 2, 16.3 MB on day
/// 7 of the FootDash dumps, and still rising at day 27). Storing a new full copy `F`
/// every `n` days costs `F/n + d·(n+1)/2` a day, least at `n = sqrt(2F/d)`, where the
/// delta has grown to about `sqrt(2F·d)`. Rebasing when the delta passes `F/4` is
/// within a fifth of that optimum for daily changes from 0.5% to 8% of `F` (FootDash
/// measures about 4%), and keeps each changed chunk's daily cost from growing with the
/// repository's age. The new full chunk's sketch is newer than the old base's, so the
/// next version finds it ([`crate::sketch::SketchIndex`] lets the newest win); the old
/// base lives only as long as a surviving snapshot's delta needs it, then prune frees it.
/// Chains stay one link long: a base is always a full chunk.
const REBASE_SHARE_DIVISOR: usize = 4;

/// A turn at CPU-bound sealing work (sketching, compressing, delta encoding). There
/// are as many turns as cores: more chunks sealed at once would not go faster, only
/// hold more chunks, bases and compression contexts in memory (and in more
/// allocator arenas) at the same time. Uploads, which wait on the network, are not
/// limited by it.
async fn cpu_slot() -> tokio::sync::SemaphorePermit<'static> {
    static SLOTS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    SLOTS
        .get_or_init(|| {
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
            tokio::sync::Semaphore::new(cores)
        })
        .acquire()
        .await
        .expect("the semaphore is never closed")
}

/// The repository's zstd levels, for chunks in full and for deltas.
#[derive(Debug, Clone, Copy)]
struct Levels {
    full: i32,
    delta: i32,
}

/// Seals a chunk as a delta on `base` when that is small enough, else in full.
fn encode_best(
    master: &crate::crypto::MasterKey,
    id: &ChunkId,
    data: &[u8],
    base: Option<(ChunkId, Arc<Vec<u8>>)>,
    levels: Levels,
) -> (Vec<u8>, Option<ChunkId>) {
    let Some((base_id, base)) = base else {
        return (format::encode_chunk(master, id, data, levels.full), None);
    };
    let delta = format::encode_delta_chunk(master, id, data, &base_id, &base, levels.delta);
    if delta.len() <= data.len() / DELTA_GOOD_ENOUGH_DIVISOR {
        return (delta, Some(base_id));
    }
    let full = format::encode_chunk(master, id, data, levels.full);
    if delta.len() <= full.len() / REBASE_SHARE_DIVISOR {
        (delta, Some(base_id))
    } else {
        (full, None)
    }
}

/// Where decoding a chunk stands after its first trip to the blocking pool.
enum Step {
    Done(Vec<u8>),
    /// A delta on another base than the manifest named: that base is read first.
    NeedsBase(format::OpenedChunk),
}

/// Plaintexts of base chunks read lately, bounded in bytes: a base is read once for
/// all the deltas on it that a reader meets. Bases are full chunks, verified before
/// they get here, and never change.
///
/// Small on purpose: within one file a base seldom serves more than one delta, and
/// every byte held is memory a `cat` must fault in; readers that meet a base many
/// times (`check`, which reads a base beside its deltas) keep them close together.
#[derive(Debug, Clone)]
pub struct BaseCache {
    inner: Arc<std::sync::Mutex<BasesHeld>>,
    loading: Arc<std::sync::Mutex<std::collections::HashMap<ChunkId, Arc<BaseLoading>>>>,
    capacity_bytes: usize,
}

/// One base being fetched; its waiters share the result (on an error each of them
/// tries for itself, so errors stay unshared).
type BaseLoading = tokio::sync::OnceCell<Arc<Vec<u8>>>;

impl BaseCache {
    /// A cache of at most `capacity_bytes` of base plaintext.
    pub fn new(capacity_bytes: usize) -> Self {
        BaseCache {
            inner: Arc::new(std::sync::Mutex::new(BasesHeld {
                map: lru::LruCache::unbounded(),
                bytes: 0,
            })),
            loading: Arc::default(),
            capacity_bytes,
        }
    }

    fn loading(&self, id: &ChunkId) -> Arc<BaseLoading> {
        self.loading
            .lock()
            .expect("base loading lock")
            .entry(*id)
            .or_default()
            .clone()
    }

    fn loaded(&self, id: &ChunkId) {
        self.loading.lock().expect("base loading lock").remove(id);
    }

    fn get(&self, id: &ChunkId) -> Option<Arc<Vec<u8>>> {
        self.inner
            .lock()
            .expect("base cache lock")
            .map
            .get(id)
            .cloned()
    }

    /// Keeps the plaintext of full chunk `id`, verified by the caller, for the
    /// deltas on it that come next.
    pub(crate) fn insert(&self, id: ChunkId, data: Arc<Vec<u8>>) {
        let mut held = self.inner.lock().expect("base cache lock");
        held.bytes += data.len();
        if let Some(old) = held.map.put(id, data) {
            held.bytes -= old.len();
        }
        while held.bytes > self.capacity_bytes {
            match held.map.pop_lru() {
                Some((_, old)) => held.bytes -= old.len(),
                None => break,
            }
        }
    }
}

#[derive(Debug)]
struct BasesHeld {
    map: lru::LruCache<ChunkId, Arc<Vec<u8>>>,
    bytes: usize,
}
