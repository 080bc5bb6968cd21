//! Fast tests of the store on the in-memory backend: the write and read paths, delta
//! chunks, tampering, and the index's view of prunes, with no disk repository, server
//! or FUSE.

use std::sync::Arc;

use super::writer::{NoProgress, PendingSnapshot, SnapshotMeta};
use super::{layout, InitOptions, Repository, SnapshotKind, SnapshotManifest};
use crate::backend::memory::MemoryBackend;
use crate::backend::Backend;
use crate::chunker::ChunkerParams;
use crate::error::ErrorKind;

/// A repository in memory with small chunks and a cheap KDF; the cache lives in
/// `cache`, which the caller keeps.
pub(crate) async fn memory_repo(cache: &tempfile::TempDir) -> (Repository, MemoryBackend) {
    let store = MemoryBackend::new("test");
    let opts = InitOptions {
        chunker: ChunkerParams {
            min_size_bytes: 2048,
            avg_size_bytes: 8192,
            max_size_bytes: 32768,
        },
        kdf: crate::crypto::TEST_KDF,
        ..InitOptions::default()
    };
    let backend: Arc<dyn Backend> = Arc::new(store.clone());
    let repo = Repository::init(backend, b"pw", opts, cache.path())
        .await
        .unwrap();
    (repo, store)
}

/// Row-like text, different for every seed, compressible as dumps are.
pub(crate) fn rows(seed: u64, count: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2) + 1;
    let mut out = Vec::new();
    for i in 0..count {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(
            format!(
                "{i}\tuser{}\t{}@example.com\t{}\n",
                x % 9973,
                x % 100_003,
                x % 7
            )
            .as_bytes(),
        );
    }
    out
}

pub(crate) async fn ingest(repo: &Repository, db: &str, data: &[u8]) -> PendingSnapshot {
    ingest_at(repo, db, data, None).await
}

/// A backup whose point in time is `time` (times are whole seconds: two backups in
/// one second tie, and retention cannot tell which is newer).
pub(crate) async fn backup_at(
    repo: &Repository,
    db: &str,
    data: &[u8],
    time: &str,
) -> SnapshotManifest {
    let t = chrono::DateTime::parse_from_rfc3339(time).unwrap().to_utc();
    ingest_at(repo, db, data, Some(t))
        .await
        .commit()
        .await
        .unwrap()
}

async fn ingest_at(
    repo: &Repository,
    db: &str,
    data: &[u8],
    time: Option<chrono::DateTime<chrono::Utc>>,
) -> PendingSnapshot {
    let meta = SnapshotMeta {
        db: db.into(),
        kind: SnapshotKind::Dump,
        time,
        file_name: format!("{db}.dump"),
    };
    repo.ingest(
        Box::new(std::io::Cursor::new(data.to_vec())),
        meta,
        None,
        Arc::new(NoProgress),
    )
    .await
    .unwrap()
}

pub(crate) async fn backup(repo: &Repository, db: &str, data: &[u8]) -> SnapshotManifest {
    ingest(repo, db, data).await.commit().await.unwrap()
}

pub(crate) async fn cat(repo: &Repository, m: &SnapshotManifest) -> crate::error::Result<Vec<u8>> {
    let mut out = Vec::new();
    repo.cat(m, &mut out, Arc::new(NoProgress)).await?;
    Ok(out)
}

#[tokio::test]
async fn a_stream_reads_back_byte_for_byte_and_a_second_copy_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, _) = memory_repo(&dir).await;
    let data = rows(1, 20_000);
    let m = backup(&repo, "db", &data).await;
    assert_eq!(m.size_bytes, data.len() as u64);
    assert!(m.stats.chunks_new > 10, "{:?}", m.stats);
    assert_eq!(cat(&repo, &m).await.unwrap(), data);
    let again = backup(&repo, "db", &data).await;
    assert_eq!(again.stats.chunks_new, 0, "{:?}", again.stats);
    assert_eq!(again.stats.bytes_stored_new, 0);
    // Nothing is visible before the commit.
    let pending = ingest(&repo, "other", &rows(2, 100)).await;
    assert_eq!(repo.snapshots().await.unwrap().len(), 2);
    drop(pending);
}

#[tokio::test]
async fn random_reads_at_any_offset_are_exact() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, _) = memory_repo(&dir).await;
    let data = rows(3, 10_000);
    let m = Arc::new(backup(&repo, "db", &data).await);
    let reader = super::reader::FileReader::new(
        repo.clone(),
        m.clone(),
        Arc::new(super::reader::ChunkCache::new(64 << 10)),
    );
    let mut x = 7u64;
    for _ in 0..200 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let off = (x >> 11) % (data.len() as u64 + 10);
        let len = ((x >> 40) % 70_000) as usize;
        let got = reader.read_at(off, len).await.unwrap();
        let from = (off as usize).min(data.len());
        let to = (from + len).min(data.len());
        assert_eq!(got, data[from..to], "read of {len} at {off}");
    }
}

#[tokio::test]
async fn an_edited_stream_is_stored_as_deltas_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, _) = memory_repo(&dir).await;
    let day1 = rows(4, 20_000);
    let m1 = backup(&repo, "db", &day1).await;
    // Change a byte every 20 KB: every chunk changes a little.
    let mut day2 = day1.clone();
    for i in (100..day2.len()).step_by(20_000) {
        day2[i] = b'#';
    }
    let m2 = backup(&repo, "db", &day2).await;
    assert!(m2.stats.chunks_new_delta > 0, "{:?}", m2.stats);
    assert!(
        m2.stats.bytes_stored_new * 5 < m1.stats.bytes_stored_new,
        "day 2 stored {} against day 1's {}",
        m2.stats.bytes_stored_new,
        m1.stats.bytes_stored_new
    );
    assert!(m2.chunks.iter().any(|c| c.base.is_some()));
    assert_eq!(cat(&repo, &m2).await.unwrap(), day2);
}

#[tokio::test]
async fn a_tampered_chunk_fails_naming_snapshot_and_chunk_never_wrong_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, store) = memory_repo(&dir).await;
    let m = backup(&repo, "db", &rows(5, 5_000)).await;
    let victim = m.chunks[1].id;
    store
        .tamper(&layout::chunk(&victim), |b| {
            let n = b.len();
            b[n - 1] ^= 1;
        })
        .unwrap();
    let e = cat(&repo, &m).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    let msg = e.to_string();
    assert!(
        msg.contains(&victim.to_hex()) && msg.contains(&m.id),
        "{msg}"
    );
    // An object moved to another chunk's key fails too.
    let (a, b) = (
        layout::chunk(&m.chunks[0].id),
        layout::chunk(&m.chunks[2].id),
    );
    let moved = store.get(&a).await.unwrap();
    store.put(&b, moved).await.unwrap();
    let e = repo.load_chunk(&m.chunks[2].id, None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
}

#[tokio::test]
async fn a_prune_elsewhere_makes_this_machine_forget_its_chunk_cache() {
    let store_dir = tempfile::tempdir().unwrap();
    let (repo, store) = memory_repo(&store_dir).await;
    let _m = backup(&repo, "db", &rows(6, 5_000)).await;
    assert!(!repo.known_chunks().await.unwrap().ids.is_empty());
    // Another machine: the same store, its own cache.
    let other_cache = tempfile::tempdir().unwrap();
    let backend: Arc<dyn Backend> = Arc::new(store.clone());
    let other = Repository::open(backend, b"pw", other_cache.path())
        .await
        .unwrap();
    let marker = other.begin_prune_deletes(chrono::Utc::now()).await.unwrap();
    other.end_prune_deletes(marker, Vec::new()).await.unwrap();
    assert!(
        repo.known_chunks().await.unwrap().ids.is_empty(),
        "a cache from before the prune must not be trusted"
    );
    // A rebuild trusts it again, now at the new generation.
    let (chunks, snaps) = repo.rebuild_index().await.unwrap();
    assert_eq!(snaps, 1);
    assert_eq!(repo.known_chunks().await.unwrap().ids.len(), chunks);
}

#[tokio::test]
async fn a_corrupt_manifest_in_the_local_cache_is_fetched_again() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, _) = memory_repo(&dir).await;
    let data = rows(7, 3_000);
    let m = backup(&repo, "db", &data).await;
    repo.index()
        .update_manifests(vec![(m.id.clone(), b"garbage".to_vec())], Vec::new())
        .await
        .unwrap();
    let listed = repo.snapshots().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, m.id);
    // And the cache holds the good copy again.
    let cached = repo.index().cached_manifests().await.unwrap();
    assert!(cached.iter().any(|(id, b)| id == &m.id && b != b"garbage"));
}

#[tokio::test]
async fn a_store_that_ignores_conditional_writes_never_gets_an_archived_segment_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn Backend> =
        Arc::new(MemoryBackend::ignoring_conditional_writes("overwriting"));
    let opts = InitOptions {
        kdf: crate::crypto::TEST_KDF,
        ..InitOptions::default()
    };
    let repo = Repository::init(backend, b"pw", opts, dir.path())
        .await
        .unwrap();
    assert!(!repo.config().conditional_writes);
    let name = "000000010000000000000002";
    let first = rows(8, 2_000);
    repo.wal_push(name, first.clone()).await.unwrap();
    assert_eq!(
        repo.wal_push(name, first.clone()).await.unwrap(),
        super::wal::WalPushOutcome::AlreadyArchived
    );
    let e = repo.wal_push(name, rows(9, 2_000)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    assert_eq!(repo.wal_fetch(name).await.unwrap(), first);
}

#[test]
fn sketches_are_keyed_so_the_index_says_nothing_without_the_key() {
    use crate::crypto::MasterKey;
    use crate::sketch::Sketch;
    let data = rows(10, 3_000);
    let (a, b) = (MasterKey::generate(), MasterKey::generate());
    let plain = Sketch::of(&data);
    let ka = Sketch::of(&data).keyed(&a.sketch_key());
    assert_eq!(
        ka,
        Sketch::of(&data).keyed(&a.sketch_key()),
        "stable per key"
    );
    assert_ne!(ka, Sketch::of(&data).keyed(&b.sketch_key()));
    assert!(ka.0.iter().all(|f| !plain.0.contains(f)));
    // Similar data still shares features under one key.
    let mut edited = data.clone();
    edited[10] ^= 1;
    let ke = Sketch::of(&edited).keyed(&a.sketch_key());
    assert!(ke.0.iter().any(|f| ka.0.contains(f)));
}

#[tokio::test]
async fn spooled_records_go_up_in_bounded_batches_and_listed_keys_never_name_a_local_path() {
    use super::records::BackupAttempt;
    let cache = tempfile::tempdir().unwrap();
    let (repo, store) = memory_repo(&cache).await;
    let attempt = BackupAttempt {
        time: chrono::Utc::now(),
        db: "footdash".into(),
        kind: SnapshotKind::Dump,
        ok: true,
        error: None,
        snapshot_id: None,
        size_bytes: 1,
        bytes_stored_new: 1,
        duration_seconds: 1.0,
        hostname: "h".into(),
    };
    let good = repo.write_record(&attempt).await.unwrap();
    let target = cache.path().join("planted");
    let depth = repo.cache().records_dir().components().count();
    let hostile = format!(
        "{}{}{}",
        layout::ATTEMPTS,
        "../".repeat(depth),
        target.display().to_string().trim_start_matches('/')
    );
    store.put(&hostile, b"attacker".to_vec()).await.unwrap();
    // A well-formed key whose bytes do not authenticate: skipped, and not cached.
    let forged = good.replacen(&good[good.len() - 12..], "000000000000", 1);
    store
        .put(&forged, store.get(&good).await.unwrap())
        .await
        .unwrap();

    let read: Vec<BackupAttempt> = repo.records().await.unwrap();
    assert_eq!(read.len(), 1, "only the record pgvault wrote is read");
    assert_eq!(read[0].db, "footdash");
    assert!(!target.exists(), "a listed key wrote {}", target.display());
    let cached: Vec<_> = std::fs::read_dir(repo.cache().records_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        cached.len(),
        1,
        "only the authenticated record is cached: {cached:?}"
    );
    assert!(cached[0].bytes().all(|b| b.is_ascii_hexdigit()));

    // Spooled records go up at most `limit` at a time, and none is lost.
    for _ in 0..3 {
        super::records::spool(repo.cache().root(), &repo.location(), &attempt).unwrap();
    }
    assert_eq!(repo.flush_spool(2).await, 2);
    assert_eq!(repo.flush_spool(usize::MAX).await, 1);
    assert_eq!(repo.flush_spool(usize::MAX).await, 0);
    assert_eq!(repo.records::<BackupAttempt>().await.unwrap().len(), 4);
}
