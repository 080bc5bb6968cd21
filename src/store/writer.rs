//! The write path: a byte stream cut into chunks, deduplicated, sealed and stored,
//! then committed as a snapshot only after every chunk is durable.
//!
//! Chunking and the dump inspection run on one thread that reads the source; sealing
//! runs on the blocking pool and uploads on the runtime, with a bounded number of
//! chunks in flight so memory stays flat however large the dump.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use super::chunks::StoredChunk;
use super::manifest::{
    BackupStats, BaseBackupInfo, ChunkRef, FileStamp, Run, SnapshotKind, SnapshotManifest,
};
use super::Repository;
use crate::blocking::{joined, thread_joined};
use crate::crypto::ChunkId;
use crate::error::{Error, Result};
use crate::index::CachedChunk;
use crate::sketch::{Sketch, SketchIndex};

/// Told how far a long operation has got, so the CLI can draw a bar.
pub trait Progress: Send + Sync {
    /// `bytes` more have been processed.
    fn advance(&self, bytes: u64);

    /// `done` of `total` files have been processed, for work that goes file by file.
    fn files(&self, _done: u64, _total: u64) {}
}

/// Progress that nobody watches.
pub struct NoProgress;

impl Progress for NoProgress {
    fn advance(&self, _bytes: u64) {}
}

/// Watches a stream as it is stored: validates it, and may rewrite its first bytes
/// once the whole stream has gone by (a dump's table of contents gets its data
/// offsets). Implemented by the layer that knows the stream's format.
pub trait StreamInspector: Send {
    /// Sees the next bytes of the stream.
    ///
    /// Errors: `InvalidInput` when the stream is not what it should be; the backup stops.
    fn feed(&mut self, data: &[u8]) -> Result<()>;

    /// How many leading bytes `finish` may rewrite, or `None` while that is not yet
    /// known. Chunks that start inside this head are held back until the end.
    fn head_len(&self) -> Option<u64>;

    /// The stream has ended: checks it is complete and returns the (possibly
    /// rewritten, same-length) head and what was learned.
    ///
    /// Errors: `InvalidInput` when the stream is incomplete or malformed.
    fn finish(self: Box<Self>, head: &[u8]) -> Result<Inspected>;

    /// Whether what is stored differs from the source: then each
    /// [`StreamInspector::feed`] is followed by [`StreamInspector::take_stored`],
    /// and the stored bytes are chunked instead of the source's.
    fn transforms(&self) -> bool {
        false
    }

    /// Appends to `into` the bytes to store for what was fed since the last call.
    fn take_stored(&mut self, _into: &mut Vec<u8>) {}
}

/// What an inspector learned from a whole stream.
#[derive(Debug, Default)]
pub struct Inspected {
    /// The head to store instead of the original one, if it changed.
    pub patched_head: Option<Vec<u8>>,
    /// Facts about a base backup, recorded in its manifest.
    pub base: Option<BaseBackupInfo>,
    /// Where each table's rows lie in a dump, recorded in its manifest.
    pub dump_contents: Option<crate::dump_data::DumpContents>,
    /// How the stored stream maps to the source, for a transforming inspector
    /// that changed something.
    pub recreation: Option<crate::recreate::Recreation>,
    /// The extension the stored file's name takes in place of its own, when the
    /// stream turned out to be another kind of file than the name says.
    pub file_extension: Option<&'static str>,
}

/// What the backup point is, as opposed to what it contains.
#[derive(Debug, Clone)]
pub struct SnapshotMeta {
    pub db: String,
    pub kind: SnapshotKind,
    /// The backup point's time; `None` means when the backup started.
    pub time: Option<chrono::DateTime<chrono::Utc>>,
    pub file_name: String,
}

/// How many chunks may be sealed or uploaded at once.
const CHUNKS_IN_FLIGHT: usize = 16;

/// What a source that knows its own layout sends in place of plain bytes (a base
/// backup read from a data directory).
pub enum Segment {
    /// The stream's next bytes.
    Bytes(Vec<u8>),
    /// Ends a chunk here: the bytes between two cuts are whole chunks, which a later
    /// backup can name again.
    Cut,
    /// Ends a chunk here, as [`Segment::Cut`] does, and cuts the bytes up to the next
    /// cut at fixed distances from here (the repository's average chunk size) instead
    /// of where their content says.
    ///
    /// For a relation file, whose pages change in place and never shift: a chunk then
    /// covers the same pages of the file in every backup, so each changed chunk finds
    /// its previous version as its delta base. Content-defined cuts move wherever a
    /// changed page held one, and a chunk whose base covers only part of it is stored
    /// nearly in full (measured on FootDash: a base backup's changed chunks cost 1.5x
    /// a per-file patch of the same day).
    ///
    /// `previous` holds the chunks the same stretch had in the previous backup, when
    /// it was cut at the same offsets: each new chunk is first tried as a delta on its
    /// earlier version's base (or on that version, when it is full), with no search
    /// of the similarity index.
    FixedCut { previous: Vec<ChunkRef> },
    /// Bytes an earlier snapshot stored between two cuts as exactly `refs`: named,
    /// not read. The inspector sees `header` (the stretch's first bytes) and zeros
    /// for the rest of its `len` bytes.
    Reuse {
        refs: Vec<ChunkRef>,
        header: Vec<u8>,
        len: u64,
    },
}

/// Where the bytes of a backup come from.
enum Source {
    Plain(Box<dyn Read + Send>),
    Segments(std::sync::mpsc::Receiver<Segment>),
}

enum Piece {
    /// A chunk in stream order, with a delta base to try first.
    Body(ChunkId, Vec<u8>, Option<ChunkId>),
    /// Chunks of an earlier snapshot, in stream order, named again.
    Reused(Vec<ChunkRef>),
    /// The chunks that cover the dump's header and table of contents, sent last
    /// because their final bytes (the data offsets) are known only at the end.
    Head(Vec<(ChunkId, Vec<u8>)>),
}

/// A stream fully stored but not yet visible as a snapshot.
#[derive(Debug)]
pub struct PendingSnapshot {
    repo: Repository,
    manifest: SnapshotManifest,
    new_chunks: Vec<CachedChunk>,
    new_sketches: Vec<(ChunkId, Sketch)>,
}

impl PendingSnapshot {
    /// What the snapshot will be.
    pub fn manifest(&self) -> &SnapshotManifest {
        &self.manifest
    }

    /// Records what each file of a base backup was on disk, for the files the
    /// stream was cut around (see [`super::manifest::BaseFile::stamp`]).
    pub fn stamp_base_files(&mut self, stamps: &HashMap<String, FileStamp>) {
        if let Some(b) = self.manifest.base.as_mut() {
            for f in b.files.iter_mut().filter(|f| f.chunks.is_some()) {
                f.stamp = stamps.get(&f.path).copied();
            }
        }
    }

    /// Makes the snapshot visible by writing its manifest: every chunk it names is
    /// already durable. A snapshot with re-created data first raises an older
    /// repository's format (see [`super::config::FORMAT_VERSION`]).
    ///
    /// Errors: `AlreadyExists` if the id is taken; those of
    /// [`Repository::require_current_format`]; backend errors.
    pub async fn commit(mut self) -> Result<SnapshotManifest> {
        if self.manifest.recreation.is_some() {
            self.repo.require_current_format().await?;
        }
        self.manifest.finished = chrono::Utc::now();
        self.manifest.stats.duration_ms = (self.manifest.finished - self.manifest.started)
            .num_milliseconds()
            .max(0) as u64;
        self.repo.write_manifest(&self.manifest).await?;
        let mut known = self.new_chunks;
        let new: HashSet<ChunkId> = known.iter().map(|c| c.id).collect();
        known.extend(
            self.manifest
                .chunks
                .iter()
                .filter(|c| !new.contains(&c.id))
                .map(|c| CachedChunk {
                    id: c.id,
                    size_bytes: 0,
                    base: c.base,
                }),
        );
        // The snapshot is committed whatever happens to the cache.
        if let Err(e) = self
            .repo
            .index()
            .record(known, self.new_sketches, None)
            .await
        {
            tracing::warn!("Cannot record the new chunks in the local index: {e}");
        }
        Ok(self.manifest)
    }
}

impl Repository {
    /// Reads `source` to its end and stores it as chunks. Nothing becomes visible
    /// until [`PendingSnapshot::commit`]: a caller that must check something first (the
    /// exit status of pg_dump) commits only when that check passes.
    ///
    /// The `inspector`, if any, validates the stream and may rewrite its head.
    ///
    /// Errors: `InvalidInput` when the inspector rejects the stream; `Io` when the
    /// source fails; backend errors.
    pub async fn ingest(
        &self,
        source: Box<dyn Read + Send>,
        meta: SnapshotMeta,
        inspector: Option<Box<dyn StreamInspector>>,
        progress: Arc<dyn Progress>,
    ) -> Result<PendingSnapshot> {
        self.ingest_from(Source::Plain(source), meta, inspector, progress)
            .await
    }

    /// As [`Repository::ingest`], from a source that cuts its stream where it
    /// likes and names stretches of earlier snapshots instead of sending them
    /// ([`Segment`]). A base backup's files that a stretch holds alone record its
    /// chunks ([`super::manifest::BaseFile::chunks`]).
    ///
    /// Errors: as [`Repository::ingest`].
    pub async fn ingest_segments(
        &self,
        source: std::sync::mpsc::Receiver<Segment>,
        meta: SnapshotMeta,
        inspector: Option<Box<dyn StreamInspector>>,
        progress: Arc<dyn Progress>,
    ) -> Result<PendingSnapshot> {
        self.ingest_from(Source::Segments(source), meta, inspector, progress)
            .await
    }

    async fn ingest_from(
        &self,
        source: Source,
        meta: SnapshotMeta,
        inspector: Option<Box<dyn StreamInspector>>,
        progress: Arc<dyn Progress>,
    ) -> Result<PendingSnapshot> {
        let started_at = Instant::now();
        let started = chrono::Utc::now();
        let known = self.known_chunks().await?;
        let similar = if self.config().delta {
            Some(Arc::new(self.sketch_index().await?))
        } else {
            None
        };

        let (tx, mut rx) = mpsc::channel::<Piece>(4);
        let chunker = self.config().chunker;
        let master = self.key().clone();
        let producer = std::thread::spawn(move || produce(source, chunker, master, inspector, tx));

        let mut stats = BackupStats::default();
        let mut body: Vec<ChunkRef> = Vec::new();
        let mut head: Vec<ChunkRef> = Vec::new();
        let mut seen: HashSet<ChunkId> = HashSet::new();
        let mut bases: HashMap<ChunkId, ChunkId> = HashMap::new();
        let mut new_chunks: Vec<CachedChunk> = Vec::new();
        let mut new_sketches: HashMap<ChunkId, Sketch> = HashMap::new();
        let slots = Arc::new(Semaphore::new(CHUNKS_IN_FLIGHT));
        let mut tasks: JoinSet<Result<StoredChunk>> = JoinSet::new();

        let mut absorb = |res: std::result::Result<Result<StoredChunk>, tokio::task::JoinError>,
                          stats: &mut BackupStats,
                          bases: &mut HashMap<ChunkId, ChunkId>|
         -> Result<()> {
            let c = joined("chunk upload", res)??;
            if let Some(base) = c.base {
                bases.insert(c.id, base);
            }
            match c.written_bytes {
                Some(size) => {
                    stats.chunks_new += 1;
                    stats.bytes_stored_new += size;
                    stats.chunks_new_delta += u64::from(c.base.is_some());
                    new_chunks.push(CachedChunk {
                        id: c.id,
                        size_bytes: size,
                        base: c.base,
                    });
                    if let Some(sketch) = c.sketch {
                        new_sketches.insert(c.id, sketch);
                    }
                }
                None => stats.chunks_reused += 1,
            }
            Ok(())
        };

        while let Some(piece) = rx.recv().await {
            let (chunks, into_head) = match piece {
                Piece::Body(id, data, hint) => (vec![(id, data, hint)], false),
                Piece::Head(chunks) => (
                    chunks.into_iter().map(|(id, d)| (id, d, None)).collect(),
                    true,
                ),
                Piece::Reused(refs) => {
                    let len: u64 = refs.iter().map(|r| u64::from(r.len)).sum();
                    progress.advance(len);
                    stats.bytes_read += len;
                    stats.bytes_referenced += len;
                    stats.files_referenced += 1;
                    stats.chunks_total += refs.len() as u64;
                    stats.chunks_reused += refs.len() as u64;
                    for r in refs {
                        if let Some(base) = r.base {
                            bases.insert(r.id, base);
                        }
                        seen.insert(r.id);
                        body.push(r);
                    }
                    continue;
                }
            };
            for (id, data, hint) in chunks {
                let len = data.len();
                progress.advance(len as u64);
                stats.bytes_read += len as u64;
                stats.chunks_total += 1;
                let r = ChunkRef::full(id, len as u32);
                if into_head {
                    head.push(r)
                } else {
                    body.push(r)
                }
                if known.ids.contains(&id) || !seen.insert(id) {
                    if let Some(base) = known.bases.get(&id) {
                        bases.insert(id, *base);
                    }
                    stats.chunks_reused += 1;
                    continue;
                }
                let permit = slots
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("semaphore is never closed");
                let repo = self.clone();
                let similar = similar.clone();
                tasks.spawn(async move {
                    let _permit = permit;
                    repo.put_chunk_if_missing(id, data, similar, hint).await
                });
                while let Some(res) = tasks.try_join_next() {
                    absorb(res, &mut stats, &mut bases)?;
                }
            }
        }
        while let Some(res) = tasks.join_next().await {
            absorb(res, &mut stats, &mut bases)?;
        }
        let (mut inspected, mut runs) = thread_joined("chunking", producer.join())??;

        for r in &mut runs {
            r.first_chunk += head.len() as u32;
        }
        if let Some(b) = inspected.base.as_mut() {
            b.attach_runs(&runs);
        }
        head.extend(body);
        for r in &mut head {
            r.base = bases.get(&r.id).copied();
        }
        let sketches = needed_sketches(&head, &new_sketches, similar.as_deref());
        // Whole seconds, as every listing, directory name and `at/<time>` lookup
        // shows them: a backup named 020000Z must be found at 02:00:00.
        let time = meta.time.unwrap_or(started);
        let time = time - chrono::Duration::nanoseconds(i64::from(time.timestamp_subsec_nanos()));
        stats.duration_ms = started_at.elapsed().as_millis() as u64;
        if let Some(r) = &inspected.recreation {
            stats.bytes_stored_as_text = stats.bytes_read;
            stats.bytes_read = r.original_len_bytes;
            stats.bytes_recreated = r.recreated_bytes();
            stats.bytes_kept_compressed = r.kept_raw_bytes;
        }
        let manifest = SnapshotManifest {
            id: hex::encode(crate::crypto::random_bytes::<32>()),
            time,
            started,
            finished: chrono::Utc::now(),
            kind: meta.kind,
            db: meta.db,
            hostname: crate::host::hostname(),
            file_name: match inspected.file_extension {
                Some(ext) => {
                    let stem = meta
                        .file_name
                        .rsplit_once('.')
                        .map_or(&meta.file_name[..], |(s, _)| s);
                    format!("{stem}.{ext}")
                }
                None => meta.file_name,
            },
            size_bytes: stats.bytes_read,
            chunks: head,
            stats,
            dump_offsets_filled: meta.kind == SnapshotKind::Dump
                && inspected.patched_head.is_some(),
            base: inspected.base,
            dump_contents: inspected.dump_contents,
            recreation: inspected.recreation,
            sketches,
        };
        Ok(PendingSnapshot {
            repo: self.clone(),
            manifest,
            new_chunks,
            new_sketches: new_sketches.into_iter().collect(),
        })
    }
}

/// Reads and cuts the source on a plain thread: the reads may block for as long as
/// pg_dump takes, which must not tie up the async runtime. Returns what the
/// inspector learned and, for a segmented source, the stretches between its cuts.
fn produce(
    source: Source,
    chunker: crate::chunker::ChunkerParams,
    master: crate::crypto::MasterKey,
    inspector: Option<Box<dyn StreamInspector>>,
    tx: mpsc::Sender<Piece>,
) -> Result<(Inspected, Vec<Run>)> {
    let transforms = inspector.as_ref().is_some_and(|i| i.transforms());
    let inspector = inspector.map(|i| Rc::new(RefCell::new(i)));
    let refused: Rc<RefCell<Option<Error>>> = Rc::default();
    let mut cutter = Cutter {
        holding: inspector.is_some(),
        inspector: inspector.clone(),
        transforms,
        refused: refused.clone(),
        held: Vec::new(),
        master: master.clone(),
        tx,
        at: 0,
        sent: 0,
    };
    let mut runs = Vec::new();
    match source {
        Source::Plain(source) => {
            let source: Box<dyn Read> = match &inspector {
                Some(ins) if transforms => Box::new(StoredSource {
                    source,
                    inspector: ins.clone(),
                    refused: refused.clone(),
                    read_buf: vec![0; 256 << 10],
                    stored: Vec::new(),
                    at: 0,
                }),
                _ => source,
            };
            if !cutter.cut(chunker.stream(source).map(|c| c.map(|c| c.data)))? {
                return Ok((Inspected::default(), runs));
            }
        }
        Source::Segments(rx) => {
            if transforms {
                return Err(Error::InvalidInput(
                    "A stream with cuts and reused stretches cannot be transformed".into(),
                ));
            }
            let mut reader = SegmentReader {
                rx,
                buf: Vec::new(),
                pos: 0,
                stop: None,
            };
            let mut fixed: Option<Vec<ChunkRef>> = None;
            loop {
                let (start, first) = (cutter.at, cutter.sent);
                let sent = match fixed.take() {
                    Some(previous) => {
                        let avg = chunker.avg_size_bytes;
                        // Only a stretch cut at the same offsets gives each chunk its
                        // earlier version.
                        let aligned = previous.iter().rev().skip(1).all(|r| r.len == avg);
                        let hints: Vec<ChunkId> = match aligned {
                            true => previous.iter().map(|r| r.base.unwrap_or(r.id)).collect(),
                            false => Vec::new(),
                        };
                        cutter.cut_hinted(fixed_chunks(&mut reader, avg as usize), &hints)?
                    }
                    None => cutter.cut(chunker.stream(&mut reader).map(|c| c.map(|c| c.data)))?,
                };
                if !sent {
                    return Ok((Inspected::default(), runs));
                }
                if cutter.at > start {
                    runs.push(Run {
                        start,
                        end: cutter.at,
                        first_chunk: first,
                        chunks: cutter.sent - first,
                    });
                }
                match reader.stop.take() {
                    None => break,
                    Some(Segment::FixedCut { previous }) => fixed = Some(previous),
                    Some(Segment::Reuse { refs, header, len }) => {
                        match cutter.reuse(refs, &header, len)? {
                            Some(run) => runs.push(run),
                            None => return Ok((Inspected::default(), runs)),
                        }
                    }
                    Some(_) => {}
                }
            }
        }
    }
    drop(cutter.inspector.take());
    let Some(ins) = inspector else {
        return Ok((Inspected::default(), runs));
    };
    let ins = Rc::into_inner(ins)
        .expect("the source, which shared the inspector, is gone")
        .into_inner();
    let mut region: Vec<u8> = cutter.held.concat();
    let head_len = (ins.head_len().unwrap_or(0) as usize).min(region.len());
    let inspected = ins.finish(&region[..head_len])?;
    if let Some(patched) = &inspected.patched_head {
        region[..head_len].copy_from_slice(patched);
    }
    // The region ends where an original chunk ended, so re-cutting it changes no
    // boundary after it.
    let head: Vec<(ChunkId, Vec<u8>)> = chunker
        .cut(&region)
        .into_iter()
        .map(|(off, len)| {
            let data = region[off..off + len].to_vec();
            (master.chunk_id(&data), data)
        })
        .collect();
    let _ = cutter.tx.blocking_send(Piece::Head(head));
    Ok((inspected, runs))
}

/// Sends a source's chunks on, in order, feeding the inspector and holding back
/// the chunks of a head it may rewrite.
struct Cutter {
    inspector: Option<Rc<RefCell<Box<dyn StreamInspector>>>>,
    transforms: bool,
    refused: Rc<RefCell<Option<Error>>>,
    holding: bool,
    held: Vec<Vec<u8>>,
    master: crate::crypto::MasterKey,
    tx: mpsc::Sender<Piece>,
    /// Bytes of the stream so far.
    at: u64,
    /// Chunks sent as the body so far.
    sent: u32,
}

impl Cutter {
    /// Sends every chunk of `chunks`; `false` when the receiver gave up (after an
    /// error of its own, which it reports).
    fn cut(
        &mut self,
        chunks: impl Iterator<Item = std::result::Result<Vec<u8>, fastcdc::v2020::Error>>,
    ) -> Result<bool> {
        self.cut_hinted(chunks, &[])
    }

    /// [`Cutter::cut`], the `i`-th chunk with `hints[i]` as the delta base to try first.
    fn cut_hinted(
        &mut self,
        chunks: impl Iterator<Item = std::result::Result<Vec<u8>, fastcdc::v2020::Error>>,
        hints: &[ChunkId],
    ) -> Result<bool> {
        for (i, chunk) in chunks.enumerate() {
            let chunk = chunk.map_err(|e| {
                if let Some(e) = self.refused.borrow_mut().take() {
                    return e;
                }
                match e {
                    fastcdc::v2020::Error::IoError(e) => {
                        Error::io("Cannot read the backup source", e)
                    }
                    other => Error::io(
                        "Cannot read the backup source",
                        std::io::Error::other(other.to_string()),
                    ),
                }
            })?;
            let offset = self.at;
            self.at += chunk.len() as u64;
            if let Some(ins) = &self.inspector {
                if !self.transforms {
                    ins.borrow_mut().feed(&chunk)?;
                }
                if self.holding {
                    // Keep every chunk that starts inside the head: its bytes may be
                    // rewritten once the whole stream has been seen.
                    match ins.borrow().head_len() {
                        Some(end) if offset >= end => self.holding = false,
                        _ => {
                            self.held.push(chunk);
                            continue;
                        }
                    }
                }
            }
            let id = self.master.chunk_id(&chunk);
            let hint = hints.get(i).copied();
            if self.tx.blocking_send(Piece::Body(id, chunk, hint)).is_err() {
                return Ok(false);
            }
            self.sent += 1;
        }
        Ok(true)
    }

    /// Names an earlier snapshot's chunks for the next `len` bytes; the stretch they
    /// make, or `None` when the receiver gave up.
    ///
    /// Errors: `InvalidInput` when the chunks do not add up to `len` or the stretch
    /// would lie in a head the inspector may rewrite; the inspector's refusal.
    fn reuse(&mut self, refs: Vec<ChunkRef>, header: &[u8], len: u64) -> Result<Option<Run>> {
        let named: u64 = refs.iter().map(|r| u64::from(r.len)).sum();
        if named != len || (header.len() as u64) > len {
            return Err(Error::InvalidInput(format!(
                "A reused stretch of {len} bytes at {} names chunks of {named} bytes",
                self.at
            )));
        }
        if let Some(ins) = &self.inspector {
            let mut ins = ins.borrow_mut();
            if self.holding {
                match ins.head_len() {
                    Some(end) if self.at >= end => self.holding = false,
                    _ => {
                        return Err(Error::InvalidInput(
                            "A reused stretch cannot lie in the stream's head".into(),
                        ))
                    }
                }
            }
            // The inspector reads the entry's header; the bytes after it are not
            // ones it keeps or hashes (see BaseFile::HASHED_BELOW_BYTES).
            ins.feed(header)?;
            let zeros = vec![0u8; 1 << 20];
            let mut left = len - header.len() as u64;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                ins.feed(&zeros[..n])?;
                left -= n as u64;
            }
        }
        let run = Run {
            start: self.at,
            end: self.at + len,
            first_chunk: self.sent,
            chunks: refs.len() as u32,
        };
        if self.tx.blocking_send(Piece::Reused(refs)).is_err() {
            return Ok(None);
        }
        self.at += len;
        self.sent += run.chunks;
        Ok(Some(run))
    }
}

/// `source` cut into chunks of `bytes` each (the last may be shorter).
fn fixed_chunks<R: Read>(
    mut source: R,
    bytes: usize,
) -> impl Iterator<Item = std::result::Result<Vec<u8>, fastcdc::v2020::Error>> {
    std::iter::from_fn(move || {
        let mut chunk = Vec::with_capacity(bytes);
        match source.by_ref().take(bytes as u64).read_to_end(&mut chunk) {
            Ok(0) => None,
            Ok(_) => Some(Ok(chunk)),
            Err(e) => Some(Err(fastcdc::v2020::Error::IoError(e))),
        }
    })
}

/// A segmented source read as bytes up to its next cut or reused stretch, which
/// waits in `stop` (reads return 0 until it is taken).
struct SegmentReader {
    rx: std::sync::mpsc::Receiver<Segment>,
    buf: Vec<u8>,
    pos: usize,
    stop: Option<Segment>,
}

impl Read for SegmentReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.stop.is_some() {
            return Ok(0);
        }
        while self.pos == self.buf.len() {
            match self.rx.recv() {
                Ok(Segment::Bytes(b)) => {
                    self.buf = b;
                    self.pos = 0;
                }
                Ok(other) => {
                    self.stop = Some(other);
                    return Ok(0);
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The source as a transforming inspector stores it: each read feeds the inspector
/// the source's next bytes and returns what it stores for them.
struct StoredSource {
    source: Box<dyn Read + Send>,
    inspector: Rc<RefCell<Box<dyn StreamInspector>>>,
    /// Where an inspector's refusal waits for the chunker to report a failed read.
    refused: Rc<RefCell<Option<Error>>>,
    read_buf: Vec<u8>,
    stored: Vec<u8>,
    at: usize,
}

impl Read for StoredSource {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.stored.len() {
            self.stored.clear();
            self.at = 0;
            let n = self.source.read(&mut self.read_buf)?;
            if n == 0 {
                return Ok(0);
            }
            let mut ins = self.inspector.borrow_mut();
            if let Err(e) = ins.feed(&self.read_buf[..n]) {
                *self.refused.borrow_mut() = Some(e);
                return Err(std::io::Error::other("the inspector refused the stream"));
            }
            ins.take_stored(&mut self.stored);
        }
        let n = buf.len().min(self.stored.len() - self.at);
        buf[..n].copy_from_slice(&self.stored[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// The sketches of the full chunks a snapshot needs (its full chunks and the bases
/// of its deltas), where known: recorded in its manifest so that an index rebuild
/// restores them.
fn needed_sketches(
    refs: &[ChunkRef],
    new: &HashMap<ChunkId, Sketch>,
    known: Option<&SketchIndex>,
) -> Vec<(ChunkId, Sketch)> {
    let mut done = HashSet::new();
    let mut out = Vec::new();
    for id in refs.iter().map(|r| r.base.unwrap_or(r.id)) {
        if !done.insert(id) {
            continue;
        }
        if let Some(s) = new
            .get(&id)
            .or_else(|| known.and_then(|k| k.sketch_of(&id)))
        {
            out.push((id, s.clone()));
        }
    }
    out
}
