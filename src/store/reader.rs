//! The read path: a snapshot's file as an ordered chunk list with cumulative offsets,
//! read sequentially with prefetch (`cat`) or at any offset through a shared,
//! byte-bounded cache of decoded chunks (the mount). A dump stored with its
//! compressed table data as text is read as the file that went in: its spans are
//! re-created on the way (see [`crate::recreate`]).

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::{Arc, Mutex};

use super::manifest::{ChunkRef, SnapshotManifest};
use super::writer::Progress;
use super::Repository;
use crate::blocking::joined;
use crate::crypto::ChunkId;
use crate::error::{Error, Result};
use crate::recreate::{Located, Recreation, SpanRecreator};

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
    /// For a dump stored with its compressed table data as text: how the file is
    /// re-created from the stored stream that `chunks` hold.
    recreated: Option<Arc<Recreated>>,
}

/// A file's re-created spans and the recreators its reads have left running.
#[derive(Debug)]
struct Recreated {
    map: Recreation,
    /// One per span read lately.
    running: Mutex<HashMap<usize, Arc<SpanState>>>,
}

/// A span's recreator, where the last read left it. Reads of one span take turns,
/// so that a sequential reader deflates each byte once.
#[derive(Debug, Default)]
struct SpanState {
    recreator: tokio::sync::Mutex<Option<SpanRecreator>>,
    /// A task is re-creating ahead of the last read.
    ahead: std::sync::atomic::AtomicBool,
}

/// How far ahead of a read of a span its bytes are re-created in the background, so
/// that the reader (pg_restore) and the deflating overlap.
const RECREATE_AHEAD_BYTES: u64 = 4 << 20;

/// How many spans keep a recreator running (each holds a deflater and a few
/// megabytes of output) before idle ones are dropped.
const RUNNING_SPANS: usize = 16;

impl Recreated {
    fn state(&self, span: usize) -> Arc<SpanState> {
        let mut running = self.running.lock().expect("recreators lock");
        if running.len() >= RUNNING_SPANS && !running.contains_key(&span) {
            running.retain(|_, r| Arc::strong_count(r) > 1);
        }
        running.entry(span).or_default().clone()
    }
}

impl FileReader {
    /// A reader over `manifest`'s file, sharing `cache` with other readers.
    pub fn new(repo: Repository, manifest: Arc<SnapshotManifest>, cache: Arc<ChunkCache>) -> Self {
        let what = format!("snapshot {}", manifest.id);
        let mut me = Self::for_chunks(repo, what, manifest.chunks.clone(), cache);
        me.recreated = manifest.recreation.clone().map(|map| {
            Arc::new(Recreated {
                map,
                running: Mutex::default(),
            })
        });
        me
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
            recreated: None,
        }
    }

    /// The file's length in bytes.
    pub fn len(&self) -> u64 {
        match &self.recreated {
            Some(r) => r.map.original_len_bytes,
            None => self.stored_len(),
        }
    }

    /// The stored stream's length in bytes: the file's, unless it is re-created.
    fn stored_len(&self) -> u64 {
        self.ends.last().copied().unwrap_or(0)
    }

    /// Where the inflated text of the compressed block whose first frame is at
    /// `offset` lies in the stored stream, when the block is re-created whole: its
    /// text is read there with [`FileReader::read_stored_at`], with no deflating.
    pub fn text_of_block_at(&self, offset: u64) -> Option<u64> {
        let r = self.recreated.as_ref()?;
        r.map.whole_span_at(offset).map(|s| s.stored_offset)
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

    /// The index of the chunk holding byte `offset` of the file (the chunk count at
    /// or past the end); inside a re-created span, about where its text is.
    pub fn chunk_index_at(&self, offset: u64) -> usize {
        let stored = match self.recreated.as_ref().map(|r| (r, r.map.locate(offset))) {
            None => offset,
            Some((_, Located::Stored { offset, .. })) => offset,
            Some((r, Located::Span { span, into })) => {
                let s = r.map.spans[span];
                let share = into as f64 / s.original_len_bytes.max(1) as f64;
                s.stored_offset + (share * s.text_len_bytes as f64) as u64
            }
        };
        self.chunk_at(stored)
    }

    /// The stored stream's chunks that hold bytes `offset..offset + len`, each with
    /// where it starts in the stream.
    pub fn chunks_over(&self, offset: u64, len: u64) -> Vec<(u64, ChunkRef)> {
        let end = offset.saturating_add(len);
        let mut out = Vec::new();
        let mut i = self.chunk_at(offset);
        while i < self.chunks.len() {
            let start = if i == 0 { 0 } else { self.ends[i - 1] };
            if start >= end {
                break;
            }
            out.push((start, self.chunks[i]));
            i += 1;
        }
        out
    }

    /// Starts loading the chunks after `i` that are not cached yet, without waiting.
    pub fn prefetch_after(&self, i: usize, count: usize) {
        self.prefetch_range(i + 1, (i + 1 + count).min(self.chunks.len()));
    }

    /// Starts loading the chunks holding stored bytes `offset..offset + len` that
    /// are not cached yet, without waiting.
    pub fn prefetch_stored(&self, offset: u64, len: u64) {
        if len > 0 {
            let last = self.chunk_at(offset + len - 1).min(self.chunks.len());
            self.prefetch_range(self.chunk_at(offset), (last + 1).min(self.chunks.len()));
        }
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

    /// Up to `size` bytes of the file from `offset`; fewer only at its end.
    ///
    /// Errors: as [`FileReader::chunk`]; `Corrupt` when a re-created span's text
    /// runs out before its bytes; never returns bytes that failed verification.
    pub async fn read_at(&self, offset: u64, size: usize) -> Result<Vec<u8>> {
        let Some(rec) = &self.recreated else {
            return self.read_stored_at(offset, size).await;
        };
        let end = offset.saturating_add(size as u64).min(self.len());
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut at = offset;
        while at < end {
            match rec.map.locate(at) {
                Located::Stored { offset: from, run } => {
                    let n = run.min(end - at);
                    let bytes = self.read_stored_at(from, n as usize).await?;
                    if bytes.len() as u64 != n {
                        return Err(self.short_text(from));
                    }
                    out.extend_from_slice(&bytes);
                    at += n;
                }
                Located::Span { span, into } => {
                    let s = rec.map.spans[span];
                    let n = (s.original_len_bytes - into).min(end - at);
                    self.recreate(rec, span, into, into + n, &mut out).await?;
                    at += n;
                }
            }
        }
        Ok(out)
    }

    /// Appends span `span`'s bytes `into..end` to `out`, going on from where the
    /// span's last read stopped if that is not past `into`.
    async fn recreate(
        &self,
        rec: &Recreated,
        span: usize,
        into: u64,
        end: u64,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let s = rec.map.spans[span];
        if s.codec.is_whole_step() {
            self.recreate_next(rec, span + 1);
        }
        let state = rec.state(span);
        let mut kept = state.recreator.lock().await;
        let mut r = match kept.take().filter(|r| r.can_serve(into)) {
            Some(r) => r,
            None => SpanRecreator::new(s),
        };
        while let Some((from, len)) = r.wants(end) {
            r = self.recreate_step(r, from, len, into).await?;
        }
        // Only for a read inside the span: one that merely enters it (readahead
        // past the end of the table pg_restore wanted) asks for no more of it.
        if into > 0 && r.wants(end + RECREATE_AHEAD_BYTES).is_some() {
            self.spawn_ahead(&state, end);
        }
        let bytes = r.bytes(into, end).ok_or_else(|| {
            Error::Corrupt(format!(
                "The compressed data at byte {} of {} does not re-create from its stored \
                 text",
                s.original_offset + into,
                self.what
            ))
        })?;
        out.extend_from_slice(bytes);
        *kept = Some(r);
        Ok(())
    }

    /// Starts re-creating span `span` whole in the background, unless it is made
    /// or being made, when it is made in one step (a preflate-rs span: about a
    /// second): a reader of the span before it then finds it made, the two spans
    /// re-created on two cores.
    fn recreate_next(&self, rec: &Recreated, span: usize) {
        let Some(&s) = rec.map.spans.get(span).filter(|s| s.codec.is_whole_step()) else {
            return;
        };
        let state = rec.state(span);
        if state.ahead.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        // A locked recreator is in use: a read or a task is making the span.
        let Ok(mut kept) = state.recreator.try_lock() else {
            return;
        };
        match kept.as_ref() {
            Some(r) if r.wants(s.original_len_bytes).is_none() => return,
            Some(_) => {}
            None => *kept = Some(SpanRecreator::new(s)),
        }
        drop(kept);
        // A span made in one step is made whole by the first step ahead of its start.
        self.spawn_ahead(&state, 0);
    }

    /// Runs [`FileReader::recreate_ahead`] of `state` past `end` on a task of its
    /// own, unless one already runs.
    fn spawn_ahead(&self, state: &Arc<SpanState>, end: u64) {
        if state.ahead.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        let (me, state) = (self.clone(), state.clone());
        tokio::spawn(async move {
            me.recreate_ahead(&state, end).await;
            state
                .ahead
                .store(false, std::sync::atomic::Ordering::Release);
        });
    }

    /// Feeds `r` the `len` bytes of text at stored offset `from`, keeping what it
    /// made from `keep_from` on.
    async fn recreate_step(
        &self,
        mut r: SpanRecreator,
        from: u64,
        len: u64,
        keep_from: u64,
    ) -> Result<SpanRecreator> {
        // The text a few steps ahead is loaded while this one deflates.
        let ahead = self.chunk_at(from + len + (8 << 20)).min(self.chunks.len());
        self.prefetch_range(self.chunk_at(from), ahead);
        let text = self.read_stored_at(from, len as usize).await?;
        if text.len() as u64 != len {
            return Err(self.short_text(from));
        }
        // Deflating a megabyte takes tens of milliseconds: not on the runtime.
        joined(
            "re-creating compressed data",
            tokio::task::spawn_blocking(move || {
                r.feed(&text, keep_from);
                r
            })
            .await,
        )
    }

    /// Re-creates a span up to [`RECREATE_AHEAD_BYTES`] past `end`, where the last
    /// read ended, one step at a time so that a read waits for one step at most.
    /// Stops at an error (the next read meets it again) or when a read has moved
    /// the recreator elsewhere.
    async fn recreate_ahead(&self, state: &SpanState, end: u64) {
        let target = end + RECREATE_AHEAD_BYTES;
        loop {
            let mut kept = state.recreator.lock().await;
            let Some(r) = kept.take() else { return };
            let next = r.can_serve(end).then(|| r.wants(target)).flatten();
            let Some((from, len)) = next else {
                *kept = Some(r);
                return;
            };
            match self.recreate_step(r, from, len, end).await {
                Ok(r) => *kept = Some(r),
                Err(e) => {
                    tracing::debug!("Re-creating ahead of a read failed: {e}");
                    return;
                }
            }
        }
    }

    fn short_text(&self, stored_offset: u64) -> Error {
        Error::Corrupt(format!(
            "The stored stream of {} ends at byte {}, before byte {stored_offset} its \
             manifest names",
            self.what,
            self.stored_len()
        ))
    }

    /// Up to `size` bytes of the stored stream from `offset`: the file's own bytes
    /// unless it is re-created (see [`FileReader::text_of_block_at`]).
    ///
    /// Errors: as [`FileReader::chunk`].
    pub async fn read_stored_at(&self, offset: u64, size: usize) -> Result<Vec<u8>> {
        let pieces = self.stored_pieces(offset, size as u64).await?;
        let mut out = Vec::with_capacity(pieces.iter().map(|(_, r)| r.len()).sum());
        for (chunk, range) in &pieces {
            out.extend_from_slice(&chunk[range.clone()]);
        }
        Ok(out)
    }

    /// The decoded chunks holding stored bytes `offset..offset + len`, in order, each
    /// with the range of its bytes that lies there: fewer bytes only at the stream's
    /// end. For writers that take the bytes where they lie instead of a copy.
    ///
    /// Errors: as [`FileReader::chunk`].
    pub async fn stored_pieces(
        &self,
        offset: u64,
        len: u64,
    ) -> Result<Vec<(Arc<Vec<u8>>, std::ops::Range<usize>)>> {
        let end = offset.saturating_add(len).min(self.stored_len());
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let mut i = self.chunk_at(offset);
        // A read spanning several chunks loads them all at once, not one after another.
        let last = self.chunk_at(end - 1);
        if last > i {
            self.prefetch_range(i + 1, last + 1);
        }
        while i < self.ends.len() && self.chunk_start(i) < end {
            let data = self.chunk(i).await?;
            let start = self.chunk_start(i);
            let from = offset.max(start) - start;
            let to = end.min(self.ends[i]) - start;
            out.push((data, from as usize..to as usize));
            i += 1;
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
        if manifest.recreation.is_some() {
            return self.cat_recreated(manifest, out, progress).await;
        }
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
        finish_output(out, &manifest.id, written, manifest.size_bytes)?;
        Ok(written)
    }

    /// [`Repository::cat`] of a snapshot whose compressed table data is re-created:
    /// the file's parts (re-created spans and the runs between them) are made by
    /// up to one task per core ahead of the writer, each into a short queue of its
    /// own, so memory stays bounded; the hash of the original is checked at the end.
    async fn cat_recreated(
        &self,
        manifest: &SnapshotManifest,
        out: &mut (dyn Write + Send),
        progress: Arc<dyn Progress>,
    ) -> Result<u64> {
        let rec = manifest.recreation.as_ref().expect("a re-created snapshot");
        let reader = FileReader::new(
            self.clone(),
            Arc::new(manifest.clone()),
            Arc::new(ChunkCache::new(CAT_CACHE_BYTES)),
        );
        let mut parts = Vec::new();
        let mut at = 0;
        for s in &rec.spans {
            if s.original_offset > at {
                parts.push(at..s.original_offset);
            }
            if s.original_len_bytes > 0 {
                parts.push(s.original_offset..s.original_end());
            }
            at = s.original_end();
        }
        if at < rec.original_len_bytes {
            parts.push(at..rec.original_len_bytes);
        }
        let workers = Arc::new(tokio::sync::Semaphore::new(
            std::thread::available_parallelism().map_or(2, |n| n.get()),
        ));
        // Permits are taken in the parts' order, so the part the writer waits for
        // always holds one or gets the next one freed.
        let (queue_tx, mut queues) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            for part in parts {
                let Ok(permit) = workers.clone().acquire_owned().await else {
                    return;
                };
                let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>>>(2);
                if queue_tx.send(rx).is_err() {
                    return;
                }
                let reader = reader.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let mut at = part.start;
                    while at < part.end {
                        let n = (part.end - at).min(CAT_PIECE_BYTES);
                        let piece = reader.read_at(at, n as usize).await;
                        let failed = piece.is_err();
                        if tx.send(piece).await.is_err() || failed {
                            return;
                        }
                        at += n;
                    }
                });
            }
        });
        let mut hasher = blake3::Hasher::new();
        let mut written = 0u64;
        while let Some(mut rx) = queues.recv().await {
            while let Some(piece) = rx.recv().await {
                let piece = piece?;
                let hashed = rec.hashed_from.saturating_sub(written) as usize;
                hasher.update(&piece[hashed.min(piece.len())..]);
                out.write_all(&piece)
                    .map_err(|e| Error::io("Cannot write output", e))?;
                progress.advance(piece.len() as u64);
                written += piece.len() as u64;
            }
        }
        finish_output(out, &manifest.id, written, rec.original_len_bytes)?;
        let hash = hasher.finalize().to_hex();
        if hash.as_str() != rec.blake3 {
            return Err(Error::Corrupt(format!(
                "Snapshot {} re-created other bytes than it stored: their blake3 is {hash}, its \
                 manifest says {}",
                manifest.id, rec.blake3
            )));
        }
        Ok(written)
    }
}

/// Flushes a whole file's output and checks it got the length the manifest says.
///
/// Errors: `Io` when `out` fails; `Corrupt` when the length differs.
fn finish_output(
    out: &mut (dyn Write + Send),
    snapshot: &str,
    written: u64,
    len: u64,
) -> Result<()> {
    out.flush()
        .map_err(|e| Error::io("Cannot write output", e))?;
    if written != len {
        return Err(Error::Corrupt(format!(
            "Snapshot {snapshot} read back {written} bytes, its manifest says {len}"
        )));
    }
    Ok(())
}

/// The chunk cache of one `cat` of a re-created snapshot: text chunks are read
/// once each, in order.
const CAT_CACHE_BYTES: usize = 64 << 20;
/// How much of the file one step of `cat` makes.
const CAT_PIECE_BYTES: u64 = 4 << 20;
