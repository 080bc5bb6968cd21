//! The local sled index: a cache of which chunks exist, their sketches, and
//! snapshot manifests.
//!
//! It is never the authority. Deleting it loses nothing, and a command that finds it
//! missing, stale or held by another process carries on by asking the backend.
//!
//! sled lets one process open a database at a time, yet a mount runs for days while
//! the archiver and cron start other pgvault processes. So nobody keeps the index
//! open: each command opens it for a short read or write batch and closes it again,
//! waiting a little if another process is in the middle of its own batch, and going
//! without the cache if the wait runs out. That wait sleeps, so every public method
//! runs its batch on the blocking pool and is async.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::blocking::try_blocking;
use crate::crypto::ChunkId;
use crate::error::{Error, Result};
use crate::sketch::Sketch;

/// How long a command waits for another process's index batch before going without.
const OPEN_PATIENCE: Duration = Duration::from_secs(5);

/// The tree of sketches: chunk id → (when it was recorded, as a sequence number; the
/// features). The sequence lets the newest full chunk win a shared feature, so that a
/// chunk stored in full to rebase its deltas becomes the base of its next versions.
const SKETCHES: &str = "sketches-by-age";

/// Key in the `meta` tree: the repository's prune generation the chunk cache belongs to.
const PRUNE_GENERATION: &[u8] = b"prune_generation";

/// The index of one repository, found by the repository's id under the cache directory.
#[derive(Debug, Clone)]
pub struct Index {
    path: PathBuf,
}

/// What a backup needs to know before it starts: the chunk ids known to be stored.
#[derive(Debug, Default)]
pub struct KnownChunks {
    pub ids: HashSet<ChunkId>,
    /// The base of each known chunk that is stored as a delta.
    pub bases: HashMap<ChunkId, ChunkId>,
}

/// One chunk object as the cache records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachedChunk {
    pub id: ChunkId,
    /// The object's stored size; 0 when the writer did not learn it.
    pub size_bytes: u64,
    /// The chunk its object is a delta on.
    pub base: Option<ChunkId>,
}

impl Index {
    /// The index kept in directory `path` (created on first use).
    pub fn at(path: PathBuf) -> Self {
        Index { path }
    }

    /// Where the sled database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with the database open, on the blocking pool, or returns `Ok(None)`
    /// when another process held it for longer than we are willing to wait.
    async fn batch<T: Send + 'static>(
        &self,
        f: impl FnOnce(&sled::Db) -> sled::Result<T> + Send + 'static,
    ) -> Result<Option<T>> {
        let me = self.clone();
        try_blocking("index", move || me.with_db(f)).await
    }

    fn with_db<T>(&self, f: impl FnOnce(&sled::Db) -> sled::Result<T>) -> Result<Option<T>> {
        let deadline = Instant::now() + OPEN_PATIENCE;
        let db = loop {
            match sled::Config::new().path(&self.path).open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e)) if is_lock_conflict(&e) => {
                    if Instant::now() >= deadline {
                        tracing::info!(
                            "Index {} is busy in another process: going without it",
                            self.path.display()
                        );
                        return Ok(None);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    // A damaged cache is worth nothing: drop it and start afresh. One
                    // that cannot even be replaced (another user's files, a full disk)
                    // is done without: no command may fail for want of a cache.
                    tracing::warn!(
                        "Index {} cannot be opened ({e}): discarding it",
                        self.path.display()
                    );
                    let reopened = self.remove_now().ok().and_then(|()| {
                        sled::Config::new()
                            .path(&self.path)
                            .open()
                            .map_err(|e| {
                                tracing::warn!(
                                    "Index {} cannot be recreated ({e}): going without it",
                                    self.path.display()
                                )
                            })
                            .ok()
                    });
                    match reopened {
                        Some(db) => break db,
                        None => return Ok(None),
                    }
                }
            }
        };
        let out = f(&db).and_then(|v| db.flush().map(|_| v));
        out.map(Some).map_err(|e| index_error(&self.path, e))
    }

    fn remove_now(&self) -> Result<()> {
        match std::fs::remove_dir_all(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io_path("remove index", &self.path, e)),
        }
    }

    /// Deletes the index from disk.
    ///
    /// Errors: `Io` when the directory exists but cannot be removed.
    pub async fn remove(&self) -> Result<()> {
        let me = self.clone();
        try_blocking("index", move || me.remove_now()).await
    }

    /// The chunk ids the cache believes stored, trusted only while the repository's
    /// prune generation (see `store::sync`) is the one this cache last saw: a prune on
    /// another machine may have deleted chunks this cache still lists, and a backup
    /// that skipped uploading one of them would commit a snapshot with a hole in it.
    /// When the generation differs the chunk cache is dropped (the backup then asks
    /// the backend for each chunk) and the new generation is recorded, in the same
    /// batch. Sketches stay: they are only hints, checked by reading the base. Empty
    /// when the index is busy.
    ///
    /// Errors: `Io` when the index is unreadable and cannot be recreated.
    pub async fn known_chunks_at(&self, generation: String) -> Result<KnownChunks> {
        let path = self.path.clone();
        let known = self
            .batch(move |db| {
                let meta = db.open_tree("meta")?;
                let tree = db.open_tree("chunks")?;
                let seen = meta.get(PRUNE_GENERATION)?;
                let mut known = KnownChunks::default();
                if seen.as_deref() != Some(generation.as_bytes()) {
                    if !tree.is_empty() {
                        tracing::info!(
                            "Repository was pruned since index {} was written: dropping its chunk cache",
                            path.display()
                        );
                    }
                    tree.clear()?;
                    meta.insert(PRUNE_GENERATION, generation.as_bytes())?;
                    return Ok(known);
                }
                known.ids.reserve(tree.len());
                for kv in tree.iter() {
                    let (k, v) = kv?;
                    let Ok(arr) = <[u8; 32]>::try_from(&k[..]) else {
                        continue;
                    };
                    known.ids.insert(ChunkId(arr));
                    if let Some(Ok(base)) = v.get(8..40).map(<[u8; 32]>::try_from) {
                        known.bases.insert(ChunkId(arr), ChunkId(base));
                    }
                }
                Ok(known)
            })
            .await?;
        Ok(known.unwrap_or_default())
    }

    /// Records chunks as stored (with their stored sizes and bases) and sketches of
    /// full chunks, in one batch; with `generation`, also the repository's prune
    /// generation the chunk cache now matches (after a rebuild). Skipped when the
    /// index is busy.
    ///
    /// Errors: `Io` when the index is unwritable and cannot be recreated.
    pub async fn record(
        &self,
        chunks: Vec<CachedChunk>,
        sketches: Vec<(ChunkId, Sketch)>,
        generation: Option<String>,
    ) -> Result<()> {
        if chunks.is_empty() && sketches.is_empty() && generation.is_none() {
            return Ok(());
        }
        self.batch(move |db| {
            if let Some(g) = &generation {
                db.open_tree("meta")?
                    .insert(PRUNE_GENERATION, g.as_bytes())?;
            }
            let mut batch = sled::Batch::default();
            for c in &chunks {
                let mut v = c.size_bytes.to_be_bytes().to_vec();
                if let Some(base) = c.base {
                    v.extend_from_slice(&base.0);
                }
                batch.insert(&c.id.0[..], v);
            }
            db.open_tree("chunks")?.apply_batch(batch)?;
            // Sequence numbers after every one recorded so far, in the order given: a
            // batch number from sled's monotonic counter, then the place in the batch.
            let first = db.generate_id()? << 32;
            let mut batch = sled::Batch::default();
            for (i, (id, s)) in sketches.iter().enumerate() {
                let mut v = (first + i as u64).to_be_bytes().to_vec();
                v.extend(s.0.iter().flat_map(|f| f.to_be_bytes()));
                batch.insert(&id.0[..], v);
            }
            db.open_tree(SKETCHES)?.apply_batch(batch)
        })
        .await?;
        Ok(())
    }

    /// Forgets chunks and their sketches, so that a later backup checks the backend
    /// for them again and builds no delta on them. A prune that deleted exactly these
    /// chunks passes the repository's prune generations before and after it: a cache
    /// that was current before is current after (nothing else was deleted), and
    /// keeping it spares the next backup a backend lookup per chunk.
    ///
    /// Errors: `Io` when the index is unwritable and cannot be recreated.
    pub async fn forget_chunks(
        &self,
        ids: Vec<ChunkId>,
        generations: Option<(String, String)>,
    ) -> Result<()> {
        self.batch(move |db| {
            let mut batch = sled::Batch::default();
            for id in &ids {
                batch.remove(&id.0[..]);
            }
            db.open_tree("chunks")?.apply_batch(batch.clone())?;
            db.open_tree(SKETCHES)?.apply_batch(batch)?;
            if let Some((before, after)) = generations {
                let meta = db.open_tree("meta")?;
                if meta.get(PRUNE_GENERATION)?.as_deref() == Some(before.as_bytes()) {
                    meta.insert(PRUNE_GENERATION, after.as_bytes())?;
                }
            }
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// Every recorded sketch of a full chunk, oldest first (empty when the index is
    /// busy).
    ///
    /// Errors: `Io` when the index is unreadable and cannot be recreated.
    pub async fn sketches(&self) -> Result<Vec<(ChunkId, Sketch)>> {
        let out = self
            .batch(|db| {
                // The tree of an older layout, without ages: dropped, it is only hints.
                let _ = db.drop_tree("sketches");
                let tree = db.open_tree(SKETCHES)?;
                let mut out = Vec::with_capacity(tree.len());
                for kv in tree.iter() {
                    let (k, v) = kv?;
                    let Ok(arr) = <[u8; 32]>::try_from(&k[..]) else {
                        continue;
                    };
                    let Some((seq, features)) = v.split_first_chunk::<8>() else {
                        continue;
                    };
                    let features = features
                        .chunks_exact(8)
                        .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
                        .collect();
                    out.push((u64::from_be_bytes(*seq), ChunkId(arr), Sketch(features)));
                }
                out.sort_unstable_by_key(|(seq, _, _)| *seq);
                let out: Vec<(ChunkId, Sketch)> =
                    out.into_iter().map(|(_, id, s)| (id, s)).collect();
                Ok(out)
            })
            .await?;
        Ok(out.unwrap_or_default())
    }

    /// Cached sealed manifests by snapshot id (empty when the index is busy).
    ///
    /// Errors: `Io` when the index is unreadable and cannot be recreated.
    pub async fn cached_manifests(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let out = self
            .batch(|db| {
                let tree = db.open_tree("snapshots")?;
                tree.iter()
                    .map(|kv| {
                        kv.map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v.to_vec()))
                    })
                    .collect::<sled::Result<Vec<_>>>()
            })
            .await?;
        Ok(out.unwrap_or_default())
    }

    /// Updates the manifest cache: adds `add` and drops `remove`. Skipped when busy.
    ///
    /// Errors: `Io` when the index is unwritable and cannot be recreated.
    pub async fn update_manifests(
        &self,
        add: Vec<(String, Vec<u8>)>,
        remove: Vec<String>,
    ) -> Result<()> {
        if add.is_empty() && remove.is_empty() {
            return Ok(());
        }
        self.batch(move |db| {
            let tree = db.open_tree("snapshots")?;
            let mut batch = sled::Batch::default();
            for (id, blob) in &add {
                batch.insert(id.as_bytes(), &blob[..]);
            }
            for id in &remove {
                batch.remove(id.as_bytes());
            }
            tree.apply_batch(batch)
        })
        .await?;
        Ok(())
    }
}

fn is_lock_conflict(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock
        || e.raw_os_error() == Some(libc::EWOULDBLOCK)
        || e.to_string().contains("lock")
}

fn index_error(path: &Path, e: sled::Error) -> Error {
    Error::io(
        format!("Local index {} failed", path.display()),
        std::io::Error::other(e.to_string()),
    )
}
