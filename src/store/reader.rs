//! The read path: a snapshot's file as an ordered chunk list with cumulative offsets,
//! read sequentially with prefetch (`cat`) or at any offset through a shared,
//! byte-bounded cache of decoded chunks (the mount).

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::{Arc, Mutex};

use super::manifest::{ChunkRef, SnapshotManifest};
use super::writer::Progress;
use super::Repository;
use crate::blocking::joined;
use crate::crypto::ChunkId;
use crate::error::{Error, Result};

/// How many chunks a sequential read keeps in flight ahead of the writer.
pub const PREFETCH_CHUNKS: usize = 8;

/// Decoded chunks, evicted least recently used first once their bytes exceed a budget.
///
/// It also knows which chunks are being loaded right now, so that a read and a
/// prefetch (or two readers) asking for the same chunk share one fetch and decode
/// instead of each doing it.
#[derive(Debug)]
pub struct ChunkCache {
    inner: Mutex<CacheInner>,
    capacity_bytes: usize,
    loading: Mutex<HashMap<ChunkId, Arc<Loading>>>,
}

/// One chunk load in progress; `None` once it has failed (each waiter then learns
/// the error by loading for itself, which is rare and keeps errors unshared).
type Loading = tokio::sync::OnceCell<Option<Arc<Vec<u8>>>>;

#[derive(Debug)]
struct CacheInner {
    map: lru::LruCache<ChunkId, Arc<Vec<u8>>>,
    bytes: usize,
}

impl ChunkCache {
    /// A cache holding at most `capacity_bytes` of decoded chunk data.
    pub fn new(capacity_bytes: usize) -> Self {
        ChunkCache {
            inner: Mutex::new(CacheInner {
                map: lru::LruCache::unbounded(),
                bytes: 0,
            }),
            capacity_bytes,
            loading: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a chunk is cached or being loaded.
    fn has_or_loading(&self, id: &ChunkId) -> bool {
        self.inner.lock().expect("cache lock").map.contains(id)
            || self.loading.lock().expect("loading lock").contains_key(id)
    }

    /// A cached chunk, marked as recently used.
    pub fn get(&self, id: &ChunkId) -> Option<Arc<Vec<u8>>> {
        self.inner.lock().expect("cache lock").map.get(id).cloned()
    }

    /// Adds a chunk, evicting old ones to stay within the budget.
    pub fn insert(&self, id: ChunkId, data: Arc<Vec<u8>>) {
        let mut inner = self.inner.lock().expect("cache lock");
        inner.bytes += data.len();
        if let Some(old) = inner.map.put(id, data) {
            inner.bytes -= old.len();
        }
        while inner.bytes > self.capacity_bytes && inner.map.len() > 1 {
            if let Some((_, old)) = inner.map.pop_lru() {
                inner.bytes -= old.len();
            }
        }
    }
}

/// Random access to one stored file: a snapshot's, or an archived WAL file.
#[derive(Debug, Clone)]
pub struct FileReader {
    repo: Repository,
    /// What the file is, for messages: "snapshot 8c2e…", "WAL file 0000…".
    what: Arc<str>,
    chunks: Arc<Vec<ChunkRef>>,
    /// `ends[i]` is the offset just past chunk `i`.
    ends: Arc<Vec<u64>>,
    cache: Arc<ChunkCache>,
}

impl FileReader {
    /// A reader over `manifest`'s file, sharing `cache` with other readers.
    pub fn new(repo: Repository, manifest: Arc<SnapshotManifest>, cache: Arc<ChunkCache>) -> Self {
        let what = format!("snapshot {}", manifest.id);
        Self::for_chunks(repo, what, manifest.chunks.clone(), cache)
    }

    /// A reader over any file stored as `chunks`; `what` names it in errors.
    pub fn for_chunks(
        repo: Repository,
        what: String,
        chunks: Vec<ChunkRef>,
        cache: Arc<ChunkCache>,
    ) -> Self {
        let mut pos = 0u64;
        let ends = chunks
            .iter()
            .map(|c| {
                pos += u64::from(c.len);
                pos
            })
            .collect();
        FileReader {
            repo,
            what: what.into(),
            chunks: Arc::new(chunks),
            ends: Arc::new(ends),
            cache,
        }
    }

    /// The file's length in bytes.
    pub fn len(&self) -> u64 {
        self.ends.last().copied().unwrap_or(0)
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The file's chunks, in order.
    pub fn chunks(&self) -> &[ChunkRef] {
        &self.chunks
    }

    /// What the file is, as errors name it.
    pub fn what(&self) -> &str {
        &self.what
    }

    /// The index of the chunk holding byte `offset` (binary search over chunk ends).
    fn chunk_at(&self, offset: u64) -> usize {
        self.ends.partition_point(|&end| end <= offset)
    }

    fn chunk_start(&self, i: usize) -> u64 {
        if i == 0 {
            0
        } else {
            self.ends[i - 1]
        }
    }

    /// Decoded bytes of chunk `i`, from the cache or the backend. Concurrent calls for
    /// the same chunk (from any reader sharing the cache) share one load.
    ///
    /// Errors: `NotFound` or `Corrupt` naming the snapshot and chunk; backend errors.
    pub async fn chunk(&self, i: usize) -> Result<Arc<Vec<u8>>> {
        let id = self.chunks[i].id;
        if let Some(d) = self.cache.get(&id) {
            return Ok(d);
        }
        let cell = self
            .cache
            .loading
            .lock()
            .expect("loading lock")
            .entry(id)
            .or_default()
            .clone();
        let mut own_error = None;
        let loaded = cell
            .get_or_init(|| async {
                // Loaded and cached by another reader since we looked.
                if let Some(d) = self.cache.get(&id) {
                    return Some(d);
                }
                match self.load(i).await {
                    Ok(d) => Some(d),
                    Err(e) => {
                        own_error = Some(e);
                        None
                    }
                }
            })
            .await
            .clone();
        {
            let mut loading = self.cache.loading.lock().expect("loading lock");
            if loading.get(&id).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                loading.remove(&id);
            }
        }
        match (loaded, own_error) {
            (Some(d), _) => Ok(d),
            (None, Some(e)) => Err(e),
            // Another reader's load failed: load again to get (or escape) the error.
            (None, None) => self.load(i).await,
        }
    }

    /// Fetches, verifies and caches chunk `i`.
    async fn load(&self, i: usize) -> Result<Arc<Vec<u8>>> {
        let r = self.chunks[i];
        let data = self
            .repo
            .load_ref(&r)
            .await
            .map_err(|e| name_owner(&self.what, &r.id, e))?;
        if data.len() != r.len as usize {
            return Err(Error::Corrupt(format!(
                "Chunk {} of {} has {} bytes, its manifest says {}",
                r.id.to_hex(),
                self.what,
                data.len(),
                r.len
            )));
        }
        let data = Arc::new(data);
        self.cache.insert(r.id, data.clone());
        Ok(data)
    }

    /// The index of the chunk holding byte `offset` (the chunk count at or past the end).
    pub fn chunk_index_at(&self, offset: u64) -> usize {
        self.chunk_at(offset)
    }

    /// Starts loading the chunks after `i` that are not cached yet, without waiting.
    pub fn prefetch_after(&self, i: usize, count: usize) {
        self.prefetch_range(i + 1, (i + 1 + count).min(self.chunks.len()));
    }

    /// Starts loading chunks `from..to` that are neither cached nor loading.
    fn prefetch_range(&self, from: usize, to: usize) {
        for j in from..to {
            if !self.cache.has_or_loading(&self.chunks[j].id) {
                let me = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = me.chunk(j).await {
                        tracing::debug!("Prefetch failed: {e}");
                    }
                });
            }
        }
    }

    /// Up to `size` bytes from `offset`; fewer only at the end of the file.
    ///
    /// Errors: as [`FileReader::chunk`]; never returns bytes that failed verification.
    pub async fn read_at(&self, offset: u64, size: usize) -> Result<Vec<u8>> {
        let end = (offset + size as u64).min(self.len());
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut i = self.chunk_at(offset);
        // A read spanning several chunks loads them all at once, not one after another.
        let last = self.chunk_at(end - 1);
        if last > i {
            self.prefetch_range(i + 1, last + 1);
        }
        while (self.chunk_start(i)) < end {
            let data = self.chunk(i).await?;
            let start = self.chunk_start(i);
            let from = offset.max(start) - start;
            let to = end.min(self.ends[i]) - start;
            out.extend_from_slice(&data[from as usize..to as usize]);
            i += 1;
            if i >= self.ends.len() {
                break;
            }
        }
        Ok(out)
    }
}

/// Adds the file a chunk belongs to (a snapshot, a WAL file) to a chunk error, so
/// the reader learns which backup is hit.
fn name_owner(owner: &str, id: &ChunkId, e: Error) -> Error {
    match e {
        Error::Corrupt(m) => Error::Corrupt(format!("{m} (in {owner})")),
        Error::NotFound { what, location } => Error::NotFound {
            what: format!("{what} of {owner}"),
            location,
        },
        Error::Unavailable(m) => {
            Error::Unavailable(format!("{m} (reading chunk {} of {owner})", id.to_hex()))
        }
        other => other,
    }
}

impl Repository {
    /// Writes a snapshot's whole file to `out`, loading chunks ahead concurrently.
    /// Returns the number of bytes written.
    ///
    /// Errors: `NotFound` or `Corrupt` naming the snapshot and chunk (nothing after a
    /// bad chunk is written); `Io` when `out` fails; backend errors.
    pub async fn cat(
        &self,
        manifest: &SnapshotManifest,
        out: &mut (dyn Write + Send),
        progress: Arc<dyn Progress>,
    ) -> Result<u64> {
        let mut pending: VecDeque<tokio::task::JoinHandle<Result<Vec<u8>>>> = VecDeque::new();
        let mut next = 0usize;
        let mut written = 0u64;
        let snap = manifest.id.clone();
        loop {
            while pending.len() < PREFETCH_CHUNKS && next < manifest.chunks.len() {
                let r = manifest.chunks[next];
                let repo = self.clone();
                let snap = snap.clone();
                pending.push_back(tokio::spawn(async move {
                    repo.load_ref(&r)
                        .await
                        .map_err(|e| name_owner(&format!("snapshot {snap}"), &r.id, e))
                }));
                next += 1;
            }
            let Some(h) = pending.pop_front() else { break };
            let data = joined("chunk read", h.await)??;
            out.write_all(&data)
                .map_err(|e| Error::io("Cannot write output", e))?;
            progress.advance(data.len() as u64);
            written += data.len() as u64;
        }
        out.flush()
            .map_err(|e| Error::io("Cannot write output", e))?;
        if written != manifest.size_bytes {
            return Err(Error::Corrupt(format!(
                "Snapshot {} read back {written} bytes, its manifest says {}",
                manifest.id, manifest.size_bytes
            )));
        }
        Ok(written)
    }
}
