//! `pgvault check`: is every backup point still restorable?
//!
//! The structure check decodes every snapshot manifest and WAL manifest and looks up
//! every chunk they reference in one listing of `chunks/` (no chunk is downloaded).
//! The data check also downloads, authenticates, decompresses and re-hashes chunks:
//! all of them, or a subset chosen so that repeated runs cover everything.
//!
//! A problem is reported against the chunk, and then against every snapshot and WAL
//! file that needs that chunk: a damaged chunk matters only through what it breaks.
//! A delta chunk needs its base to be read: the manifests name the base, so a missing
//! or bad base is reported against every snapshot and WAL file whose deltas need it,
//! and the data check marks each delta on a bad base bad too.
//!
//! Subsets (`--read-data-subset`):
//! - `n/m` reads the chunks whose id falls in the n-th of m equal slices of the id
//!   space; running 1/m .. m/m reads everything once.
//! - `p%` reads the next p% of the id space after where the previous `p%` run of this
//!   machine stopped, and moves the cursor (kept in the cache directory, file
//!   `<repo id>/check-cursor`) past it; so ceil(100/p) runs read every chunk.
//!
//! Chunk ids are keyed hashes, hence uniform: a slice of the id space holds that share
//! of the chunks, and which chunks a slice holds reveals nothing about the data.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::blocking::joined;
use crate::crypto::ChunkId;
use crate::error::{Error, ErrorKind, Result};
use crate::store::layout;
use crate::store::manifest::{ChunkRef, SnapshotManifest};
use crate::store::wal::{wal_key, WalManifest};
use crate::store::writer::{NoProgress, Progress};
use crate::store::Repository;
use crate::wal_name::WalFileKind;

/// Header (6) + nonce (12) + tag (16): no valid chunk object is smaller.
const MIN_CHUNK_OBJECT_BYTES: u64 = 34;

/// How many manifests or chunks are fetched at once.
const CONCURRENCY: usize = 8;

/// Which chunks the data check reads.
#[derive(Debug, Clone, PartialEq)]
pub enum ReadData {
    /// None: the structure check only.
    None,
    /// Every referenced chunk.
    All,
    /// The n-th (1-based) of m slices of the id space.
    Slice { n: u64, m: u64 },
    /// This share (0 < p <= 1) of the id space, after the stored cursor.
    Rotating(f64),
}

impl ReadData {
    /// Parses a `--read-data-subset` value: `n/m` or `p%`.
    ///
    /// Errors: `InvalidInput` naming the value when it is neither, or out of range.
    pub fn parse_subset(s: &str) -> Result<ReadData> {
        let bad = |why: &str| {
            Error::InvalidInput(format!(
                "Subset {s:?} {why}: give n/m (e.g. 1/10) or a percentage (e.g. 10%)"
            ))
        };
        if let Some(p) = s.trim().strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| bad("is not a number"))?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(bad("is not between 0% and 100%"));
            }
            return Ok(ReadData::Rotating(p / 100.0));
        }
        let (n, m) = s.split_once('/').ok_or_else(|| bad("is not a subset"))?;
        let n: u64 = n.trim().parse().map_err(|_| bad("has a bad n"))?;
        let m: u64 = m.trim().parse().map_err(|_| bad("has a bad m"))?;
        if m == 0 || n == 0 || n > m {
            return Err(bad("needs 1 <= n <= m"));
        }
        Ok(ReadData::Slice { n, m })
    }

    /// How the mode is named in reports and records.
    pub fn describe(&self) -> String {
        match self {
            ReadData::None => "structure".into(),
            ReadData::All => "read-data".into(),
            ReadData::Slice { n, m } => format!("read-data-subset {n}/{m}"),
            ReadData::Rotating(p) => format!("read-data-subset {}%", p * 100.0),
        }
    }
}

/// A slice of the chunk-id space: ids whose first 8 bytes (big-endian) lie in
/// `[start, start + width)`, wrapping around.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdWindow {
    pub start: u64,
    /// Up to 2^64 (the whole space), hence u128.
    pub width: u128,
}

impl Serialize for IdWindow {
    /// As `start`, `end` (exclusive, wrapped) and the `fraction` of the id space:
    /// JSON numbers stop short of 2^64.
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("IdWindow", 3)?;
        st.serialize_field("start", &self.start)?;
        st.serialize_field("end", &self.end())?;
        st.serialize_field("fraction", &(self.width as f64 / SPACE as f64))?;
        st.end()
    }
}

const SPACE: u128 = 1 << 64;

impl IdWindow {
    /// The whole id space.
    pub fn all() -> Self {
        IdWindow {
            start: 0,
            width: SPACE,
        }
    }

    /// Whether the window holds `id`.
    pub fn contains(&self, id: &ChunkId) -> bool {
        let pos = u64::from_be_bytes(id.0[..8].try_into().expect("8 bytes"));
        u128::from(pos.wrapping_sub(self.start)) < self.width
    }

    /// Where the next window starts.
    pub fn end(&self) -> u64 {
        ((u128::from(self.start) + self.width) % SPACE) as u64
    }
}

/// Why a chunk is bad.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChunkProblem {
    /// No object under the chunk's key.
    Missing,
    /// The object fails authentication, decompression or the re-hash.
    Corrupt,
    /// The chunk is fine but another chunk object it needs is not.
    BadDependency,
}

/// A bad chunk and why.
#[derive(Debug, Clone, Serialize)]
pub struct BadChunk {
    pub id: String,
    pub problem: ChunkProblem,
    pub message: String,
}

/// A manifest that cannot be read: its whole backup point or WAL file is lost.
#[derive(Debug, Clone, Serialize)]
pub struct BadManifest {
    pub key: String,
    pub error: String,
}

/// A snapshot that needs a bad chunk.
#[derive(Debug, Clone, Serialize)]
pub struct DamagedSnapshot {
    pub id: String,
    pub db: String,
    pub kind: String,
    pub time: chrono::DateTime<chrono::Utc>,
    /// The bad chunks it needs.
    pub chunks: Vec<String>,
}

/// A WAL file that needs a bad chunk.
#[derive(Debug, Clone, Serialize)]
pub struct DamagedWal {
    pub name: String,
    pub chunks: Vec<String>,
}

/// What a check found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub mode: String,
    pub snapshots_checked: usize,
    pub wal_files_checked: usize,
    pub chunks_stored: usize,
    pub chunks_referenced: usize,
    /// Stored chunks nothing references (left by interrupted backups; prune removes them).
    pub chunks_unreferenced: usize,
    pub chunks_read: u64,
    pub bytes_read: u64,
    /// The part of the id space the data check read, if it read any.
    pub window: Option<IdWindow>,
    pub bad_manifests: Vec<BadManifest>,
    pub bad_chunks: Vec<BadChunk>,
    pub damaged_snapshots: Vec<DamagedSnapshot>,
    pub damaged_wal: Vec<DamagedWal>,
    /// Dumps whose compressed data the full data check re-created and hashed.
    pub snapshots_recreated: usize,
    /// Dumps whose chunks are sound but whose re-created bytes are not the ones
    /// that went in (the check names each with its error).
    pub not_recreated: Vec<BadManifest>,
    pub duration_seconds: f64,
}

impl CheckReport {
    /// How many problems there are: bad manifests and bad chunks.
    pub fn problems(&self) -> usize {
        self.bad_manifests.len() + self.bad_chunks.len() + self.not_recreated.len()
    }

    /// Whether the repository is clean as far as this check looked.
    pub fn ok(&self) -> bool {
        self.problems() == 0
    }
}

fn read_cursor(repo: &Repository) -> u64 {
    std::fs::read_to_string(repo.cache().check_cursor())
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
        .unwrap_or(0)
}

fn write_cursor(repo: &Repository, pos: u64) {
    let path = repo.cache().check_cursor();
    if let Some(dir) = path.parent() {
        let _ = crate::store::cache::create_private_dir(dir);
    }
    if let Err(e) = std::fs::write(&path, format!("{pos:016x}\n")) {
        tracing::warn!(
            "Cannot save the check cursor {}: {e}; the next subset starts at the same place",
            path.display()
        );
    }
}

/// Who needs a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum User {
    Snapshot(usize),
    Wal(usize),
}

/// What reading one chunk found.
struct ChunkRead {
    id: ChunkId,
    bytes: u64,
    result: Result<Vec<ChunkId>>,
}

/// Checks the repository: structure always, data as `read` says.
///
/// Problems with the data are the report's business, not errors: the report is
/// returned for any repository that could be listed.
///
/// Errors: backend errors while listing or reading (an outage is no verdict on
/// the data); `Io` when a task fails.
pub async fn check(
    repo: &Repository,
    read: &ReadData,
    progress: Arc<dyn Progress>,
) -> Result<CheckReport> {
    let started = std::time::Instant::now();
    repo.flush_spool(usize::MAX).await;
    let stored: HashMap<ChunkId, u64> = repo
        .backend()
        .list(layout::CHUNKS)
        .await?
        .into_iter()
        .filter_map(|o| layout::chunk_id(&o.key).map(|id| (id, o.size_bytes)))
        .collect();
    let mut bad_manifests = Vec::new();
    let snapshots = check_snapshot_manifests(repo, &mut bad_manifests).await?;
    let wal = check_wal_manifests(repo, &mut bad_manifests).await?;

    let mut users: HashMap<ChunkId, Vec<User>> = HashMap::new();
    let mut lens: HashMap<ChunkId, u32> = HashMap::new();
    // Which base each delta was stored on, as the manifests say: a base is read
    // beside its deltas, and once for all of them.
    let mut base_of: HashMap<ChunkId, ChunkId> = HashMap::new();
    // A delta's base is needed by whatever needs the delta: a missing or bad base
    // names the same snapshots and WAL files.
    let mut note = |refs: &[ChunkRef], user: User| {
        for r in refs {
            for id in r.objects() {
                let u = users.entry(id).or_default();
                if u.last() != Some(&user) {
                    u.push(user);
                }
            }
            lens.insert(r.id, r.len);
            if let Some(b) = r.base {
                base_of.insert(r.id, b);
            }
        }
    };
    for (i, m) in snapshots.iter().enumerate() {
        note(&m.chunks, User::Snapshot(i));
    }
    for (i, w) in wal.iter().enumerate() {
        note(&w.chunks, User::Wal(i));
    }

    // Structure: every referenced chunk has a plausible object.
    let mut bad: BTreeMap<ChunkId, (ChunkProblem, String)> = BTreeMap::new();
    for id in users.keys() {
        match stored.get(id) {
            None => {
                bad.insert(
                    *id,
                    (
                        ChunkProblem::Missing,
                        format!("Chunk {} is missing from {}", id.to_hex(), repo.location()),
                    ),
                );
            }
            Some(&size) if size < MIN_CHUNK_OBJECT_BYTES => {
                bad.insert(
                    *id,
                    (
                        ChunkProblem::Corrupt,
                        format!("Chunk {} is stored in only {size} bytes", id.to_hex()),
                    ),
                );
            }
            Some(_) => {}
        }
    }

    // Data: read the chosen chunks, then whatever they depend on.
    let window = match read {
        ReadData::None => None,
        ReadData::All => Some(IdWindow::all()),
        ReadData::Slice { n, m } => {
            let start = (u128::from(n - 1) * SPACE / u128::from(*m)) as u64;
            let end = u128::from(*n) * SPACE / u128::from(*m);
            Some(IdWindow {
                start,
                width: end - u128::from(start),
            })
        }
        ReadData::Rotating(p) => Some(IdWindow {
            start: read_cursor(repo),
            width: ((p * SPACE as f64).ceil() as u128).min(SPACE),
        }),
    };
    let mut chunks_read = 0u64;
    let mut bytes_read = 0u64;
    let mut deps: HashMap<ChunkId, Vec<ChunkId>> = HashMap::new();
    if let Some(w) = &window {
        let mut todo: Vec<ChunkId> = users
            .keys()
            .filter(|id| w.contains(id) && !bad.contains_key(id))
            .copied()
            .collect();
        // Each base, then the deltas on it, so that the base is still at hand (and
        // read once) when they need it.
        todo.sort_by_key(|id| {
            (
                *base_of.get(id).unwrap_or(id),
                base_of.contains_key(id),
                *id,
            )
        });
        let bases: HashSet<ChunkId> = base_of.values().copied().collect();
        let mut done: HashSet<ChunkId> = HashSet::new();
        while !todo.is_empty() {
            let batch: Vec<ChunkId> = std::mem::take(&mut todo);
            done.extend(batch.iter().copied());
            for r in read_chunks(repo, batch, &lens, &bases, &stored, progress.clone()).await? {
                chunks_read += 1;
                bytes_read += r.bytes;
                match r.result {
                    Ok(needs) => {
                        for d in &needs {
                            if !stored.contains_key(d) {
                                bad.entry(*d).or_insert((
                                    ChunkProblem::Missing,
                                    format!(
                                        "Chunk {} is missing from {}",
                                        d.to_hex(),
                                        repo.location()
                                    ),
                                ));
                            } else if !done.contains(d) && !todo.contains(d) {
                                todo.push(*d);
                            }
                        }
                        deps.insert(r.id, needs);
                    }
                    Err(e) => {
                        let problem = if e.kind() == ErrorKind::NotFound {
                            ChunkProblem::Missing
                        } else {
                            ChunkProblem::Corrupt
                        };
                        bad.insert(r.id, (problem, e.to_string()));
                    }
                }
            }
        }
        if let ReadData::Rotating(_) = read {
            write_cursor(repo, w.end());
        }
    }
    // A chunk whose dependency is bad is bad too, and so on up the chain.
    loop {
        let newly: Vec<(ChunkId, ChunkId)> = deps
            .iter()
            .filter(|(id, _)| !bad.contains_key(id))
            .filter_map(|(id, ds)| ds.iter().find(|d| bad.contains_key(d)).map(|d| (*id, *d)))
            .collect();
        if newly.is_empty() {
            break;
        }
        for (id, d) in newly {
            bad.insert(
                id,
                (
                    ChunkProblem::BadDependency,
                    format!(
                        "Chunk {} needs chunk {}, which is bad",
                        id.to_hex(),
                        d.to_hex()
                    ),
                ),
            );
        }
    }

    // Attribute every bad chunk to what needs it.
    let mut hit_snaps: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    let mut hit_wal: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for id in bad.keys() {
        for u in users.get(id).map(Vec::as_slice).unwrap_or(&[]) {
            match *u {
                User::Snapshot(i) => hit_snaps.entry(i).or_default().push(id.to_hex()),
                User::Wal(i) => hit_wal.entry(i).or_default().push(id.to_hex()),
            }
        }
    }
    let damaged_snapshots: Vec<DamagedSnapshot> = hit_snaps
        .into_iter()
        .map(|(i, chunks)| {
            let m = &snapshots[i];
            DamagedSnapshot {
                id: m.id.clone(),
                db: m.db.clone(),
                kind: m.kind.as_str().to_string(),
                time: m.time,
                chunks: dedup(chunks),
            }
        })
        .collect();
    let damaged_wal = hit_wal
        .into_iter()
        .map(|(i, chunks)| DamagedWal {
            name: wal[i].name.clone(),
            chunks: dedup(chunks),
        })
        .collect();
    // A dump stored as text is whole only if its text re-creates the bytes that
    // went in: a full data check re-creates each one and checks its hash.
    let mut snapshots_recreated = 0;
    let mut not_recreated = Vec::new();
    if *read == ReadData::All {
        let damaged: HashSet<&str> = damaged_snapshots
            .iter()
            .map(|d: &DamagedSnapshot| d.id.as_str())
            .collect();
        for m in snapshots.iter().filter(|m| m.recreation.is_some()) {
            if damaged.contains(m.id.as_str()) {
                continue;
            }
            snapshots_recreated += 1;
            let mut sink = std::io::sink();
            match repo.cat(m, &mut sink, Arc::new(NoProgress)).await {
                Ok(_) => {}
                Err(e) if is_verdict(&e) => not_recreated.push(BadManifest {
                    key: format!("snapshot {}", m.id),
                    error: e.to_string(),
                }),
                Err(e) => return Err(e),
            }
        }
    }
    let referenced = users.len();
    Ok(CheckReport {
        mode: read.describe(),
        snapshots_checked: snapshots.len(),
        wal_files_checked: wal.len(),
        chunks_stored: stored.len(),
        chunks_referenced: referenced,
        chunks_unreferenced: stored.keys().filter(|id| !users.contains_key(id)).count(),
        chunks_read,
        bytes_read,
        window,
        bad_manifests,
        bad_chunks: bad
            .into_iter()
            .map(|(id, (problem, message))| BadChunk {
                id: id.to_hex(),
                problem,
                message,
            })
            .collect(),
        damaged_snapshots,
        damaged_wal,
        snapshots_recreated,
        not_recreated,
        duration_seconds: started.elapsed().as_secs_f64(),
    })
}

/// Decodes every snapshot manifest; the ones that fail go to `bad`.
async fn check_snapshot_manifests(
    repo: &Repository,
    bad: &mut Vec<BadManifest>,
) -> Result<Vec<SnapshotManifest>> {
    let keys: Vec<String> = repo
        .backend()
        .list(layout::SNAPSHOTS)
        .await?
        .into_iter()
        .map(|o| o.key)
        .collect();
    let results = fetch_all(repo, keys, |repo, key| async move {
        let id = layout::snapshot_id(&key).unwrap_or(&key).to_string();
        repo.snapshot(&id).await
    })
    .await?;
    let mut out = sort_out(results, bad)?;
    out.sort_by(|a, b| a.time.cmp(&b.time).then_with(|| a.id.cmp(&b.id)));
    Ok(out)
}

/// Decodes every WAL manifest; the ones that fail go to `bad`.
async fn check_wal_manifests(
    repo: &Repository,
    bad: &mut Vec<BadManifest>,
) -> Result<Vec<WalManifest>> {
    let mut keys = Vec::new();
    for o in repo.backend().list(layout::WAL).await? {
        match layout::wal_key_parts(&o.key) {
            Some((_, name)) if WalFileKind::parse(name).is_ok() => keys.push(o.key),
            _ => bad.push(BadManifest {
                key: o.key.clone(),
                error: format!("Object {} is not named as a WAL file's manifest", o.key),
            }),
        }
    }
    let results = fetch_all(repo, keys, |repo, key| async move {
        let (system, name) = layout::wal_key_parts(&key).expect("checked above");
        let m = repo.wal_manifest_at(&key, name).await?;
        if wal_key(system, &WalFileKind::parse(name)?, name) != key {
            return Err(Error::Corrupt(format!(
                "WAL manifest {key} is stored under the wrong timeline"
            )));
        }
        if system.is_some() && m.system_identifier != system {
            return Err(Error::Corrupt(format!(
                "WAL manifest {key} describes a file of database system {}",
                m.system_identifier
                    .map_or("unknown".to_string(), |s| s.to_string())
            )));
        }
        Ok(m)
    })
    .await?;
    let mut out = sort_out(results, bad)?;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Runs `f` on every key, a few at a time, and returns the results by key.
async fn fetch_all<T, F, Fut>(
    repo: &Repository,
    keys: Vec<String>,
    f: F,
) -> Result<Vec<(String, Result<T>)>>
where
    T: Send + 'static,
    F: Fn(Repository, String) -> Fut,
    Fut: std::future::Future<Output = Result<T>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = JoinSet::new();
    for key in keys {
        let fut = f(repo.clone(), key.clone());
        let slots = slots.clone();
        tasks.spawn(async move {
            let _permit = slots.acquire_owned().await.expect("never closed");
            (key, fut.await)
        });
    }
    let mut out = Vec::new();
    while let Some(r) = tasks.join_next().await {
        out.push(joined("check", r)?);
    }
    Ok(out)
}

/// Downloads and verifies chunks, a few at a time.
async fn read_chunks(
    repo: &Repository,
    ids: Vec<ChunkId>,
    lens: &HashMap<ChunkId, u32>,
    bases: &HashSet<ChunkId>,
    stored: &HashMap<ChunkId, u64>,
    progress: Arc<dyn Progress>,
) -> Result<Vec<ChunkRead>> {
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = JoinSet::new();
    for id in ids {
        let repo = repo.clone();
        let slots = slots.clone();
        let len = lens.get(&id).map(|l| *l as usize);
        let as_base = bases
            .contains(&id)
            .then(|| stored.get(&id).copied().unwrap_or(0));
        let progress = progress.clone();
        tasks.spawn(async move {
            let _permit = slots.acquire_owned().await.expect("never closed");
            let r = verify_chunk(&repo, id, len, as_base).await;
            if let Ok((_, n)) = &r {
                progress.advance(*n);
            }
            r.map(|(deps, n)| ChunkRead {
                id,
                bytes: n,
                result: Ok(deps),
            })
            .or_else(|e| {
                if is_verdict(&e) {
                    Ok(ChunkRead {
                        id,
                        bytes: 0,
                        result: Err(e),
                    })
                } else {
                    Err(e)
                }
            })
        });
    }
    let mut out = Vec::new();
    while let Some(r) = tasks.join_next().await {
        out.push(joined("check", r)??);
    }
    Ok(out)
}

/// Downloads one chunk object, verifies it and returns what it depends on (a
/// delta's base) and its stored size. A delta is rebuilt on its base and checked;
/// when the base itself cannot be read the delta is left to be marked bad through
/// its dependency, which the caller reads and reports on its own. A chunk that is a
/// base (`as_base` holds its stored size) is read through the base cache, so that
/// the deltas on it find it there.
async fn verify_chunk(
    repo: &Repository,
    id: ChunkId,
    len: Option<usize>,
    as_base: Option<u64>,
) -> Result<(Vec<ChunkId>, u64)> {
    if let Some(size) = as_base {
        let plain = repo.load_base(&id, &id).await?;
        check_len(&id, plain.len(), len)?;
        return Ok((Vec::new(), size));
    }
    let (opened, size) = repo.open_chunk_sized(&id).await?;
    let deps: Vec<ChunkId> = opened.base().into_iter().collect();
    let base = match opened.base() {
        None => None,
        Some(b) => match repo.load_base(&id, &b).await {
            Ok(plain) => Some(plain),
            Err(e) if is_verdict(&e) => return Ok((deps, size)),
            Err(e) => return Err(e),
        },
    };
    let plain = repo.finish_chunk(&id, opened, base, len).await?;
    check_len(&id, plain.len(), len)?;
    Ok((deps, size))
}

fn check_len(id: &ChunkId, actual: usize, expected: Option<usize>) -> Result<()> {
    match expected {
        Some(len) if actual != len => Err(Error::Corrupt(format!(
            "Chunk {} holds {actual} bytes, its manifests say {len}",
            id.to_hex()
        ))),
        _ => Ok(()),
    }
}

/// Whether an error says something about the stored data (a finding), rather than
/// about our ability to look (an outage, which must not pass for a verdict).
fn is_verdict(e: &Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Corrupt | ErrorKind::NotFound | ErrorKind::InvalidInput
    )
}

fn dedup(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}

/// Splits fetched manifests into the decoded ones and the damaged ones (into `bad`):
/// one deleted meanwhile is neither; an error that is no verdict on the repository
/// (storage down) ends the check.
fn sort_out<T>(results: Vec<(String, Result<T>)>, bad: &mut Vec<BadManifest>) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for (key, r) in results {
        match r {
            Ok(m) => out.push(m),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) if is_verdict(&e) => bad.push(BadManifest {
                key,
                error: e.to_string(),
            }),
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_parse() {
        assert_eq!(
            ReadData::parse_subset("1/10").unwrap(),
            ReadData::Slice { n: 1, m: 10 }
        );
        assert_eq!(
            ReadData::parse_subset("10%").unwrap(),
            ReadData::Rotating(0.1)
        );
        for bad in ["0/10", "11/10", "1/0", "0%", "101%", "x", "1/x"] {
            assert!(ReadData::parse_subset(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn slices_tile_the_id_space() {
        let ids: Vec<ChunkId> = (0u32..2000)
            .map(|i| ChunkId(*blake3::hash(&i.to_le_bytes()).as_bytes()))
            .collect();
        let m: u64 = 7;
        let mut seen = 0;
        for n in 1..=m {
            let start = (u128::from(n - 1) * SPACE / u128::from(m)) as u64;
            let end = u128::from(n) * SPACE / u128::from(m);
            let w = IdWindow {
                start,
                width: end - u128::from(start),
            };
            seen += ids.iter().filter(|id| w.contains(id)).count();
        }
        assert_eq!(seen, ids.len());
        // Rotating windows wrap around the end of the space.
        let w = IdWindow {
            start: u64::MAX - 10,
            width: SPACE / 2,
        };
        assert_eq!(w.end(), (SPACE / 2 - 11) as u64);
        let mut all = IdWindow::all();
        assert!(ids.iter().all(|id| all.contains(id)));
        all.start = 12345;
        assert!(ids.iter().all(|id| all.contains(id)));
    }
}
