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
    repo.wal_push(name, first.clone(), None).await.unwrap();
    assert_eq!(
        repo.wal_push(name, first.clone(), None).await.unwrap(),
        super::wal::WalPushOutcome::AlreadyArchived
    );
    let e = repo.wal_push(name, rows(9, 2_000), None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    assert_eq!(repo.wal_fetch(None, name).await.unwrap(), first);
}

/// The start of segment `segno` of timeline 1 as `system` writes it: the long page
/// header names the system.
fn segment_of(system: u64, segno: u64, fill: u8) -> Vec<u8> {
    let seg_size = 1u64 << 20;
    let mut seg = vec![fill; 64 * 1024];
    seg[2..4].copy_from_slice(&2u16.to_le_bytes());
    seg[4..8].copy_from_slice(&1u32.to_le_bytes());
    seg[8..16].copy_from_slice(&(segno * seg_size).to_le_bytes());
    seg[24..32].copy_from_slice(&system.to_le_bytes());
    seg[32..36].copy_from_slice(&(seg_size as u32).to_le_bytes());
    seg
}

#[test]
fn only_a_header_written_for_the_named_segment_names_a_system() {
    use super::wal::segment_system_identifier;
    let seg = segment_of(77, 3, 0);
    let name = "000000010000000000000003";
    assert_eq!(segment_system_identifier(name, &seg), Some(77));
    assert_eq!(
        segment_system_identifier("000000010000000000000003.partial", &seg),
        Some(77)
    );
    assert_eq!(
        segment_system_identifier("000000010000000000000004", &seg),
        None
    );
    assert_eq!(
        segment_system_identifier("000000020000000000000003", &seg),
        None
    );
    let mut odd = seg.clone();
    odd[32..36].copy_from_slice(&12345u32.to_le_bytes());
    assert_eq!(
        segment_system_identifier(name, &odd),
        None,
        "no such segment size"
    );
    let mut short = seg.clone();
    short[2] = 0;
    assert_eq!(
        segment_system_identifier(name, &short),
        None,
        "no long header"
    );
    assert_eq!(segment_system_identifier(name, &seg[..30]), None);
}

#[tokio::test]
async fn two_clusters_archive_the_same_segment_names_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, _) = memory_repo(&dir).await;
    let (a, b) = (7_300_000_000_000_000_001u64, 7_300_000_000_000_000_002u64);
    let name = "000000010000000000000003";
    for (system, fill) in [(a, 1u8), (b, 2u8)] {
        assert_eq!(
            repo.wal_push(name, segment_of(system, 3, fill), None)
                .await
                .unwrap(),
            super::wal::WalPushOutcome::Stored
        );
    }
    // History files name no system: the caller says whose it is.
    repo.wal_push("00000002.history", b"1\t0/3000000\tno\n".to_vec(), Some(b))
        .await
        .unwrap();
    assert_eq!(
        repo.wal_fetch(Some(a), name).await.unwrap(),
        segment_of(a, 3, 1)
    );
    assert_eq!(
        repo.wal_fetch(Some(b), name).await.unwrap(),
        segment_of(b, 3, 2)
    );
    let e = repo.wal_fetch(None, name).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(
        e.to_string().contains(&a.to_string()) && e.to_string().contains(&b.to_string()),
        "{e}"
    );
    let e = repo
        .wal_fetch(Some(a), "00000002.history")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(
        repo.wal_fetch(None, "00000002.history").await.is_ok(),
        "only b has it"
    );
    let e = repo
        .wal_push(name, segment_of(a, 3, 3), Some(b))
        .await
        .unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::InvalidInput,
        "a segment of a given as b's: {e}"
    );
    let e = repo
        .wal_push(name, segment_of(a, 3, 3), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    let cats = repo.wal_catalogs().await.unwrap();
    assert_eq!(
        cats.keys().copied().collect::<Vec<_>>(),
        vec![Some(a), Some(b)]
    );
    assert!(!cats[&Some(a)].timelines.contains_key(&2));
    assert!(cats[&Some(b)].timelines[&2].history);
    assert_eq!(
        repo.wal_catalog(a).await.unwrap().timelines[&1].segments,
        vec![3]
    );
}

#[tokio::test]
async fn wal_archived_before_namespacing_is_read_where_it_is_and_attributed() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, backend) = memory_repo(&dir).await;
    let (a, b) = (7_300_000_000_000_000_001u64, 7_300_000_000_000_000_002u64);
    // What an older pgvault wrote: the manifest under wal/<timeline>/<name>.
    for (name, data) in [
        ("000000010000000000000001", segment_of(a, 1, 1)),
        ("000000010000000000000002", segment_of(a, 2, 2)),
    ] {
        repo.wal_push(name, data, None).await.unwrap();
        let new_key = layout::wal(Some(a), 1, name);
        let m = repo.wal_manifest_at(&new_key, name).await.unwrap();
        let old_key = layout::wal(None, 1, name);
        let json = serde_json::to_vec(&m).unwrap();
        backend
            .put(&old_key, repo.seal_json(&old_key, &json))
            .await
            .unwrap();
        backend.delete(&new_key).await.unwrap();
    }
    // And a history file, which names no system.
    repo.wal_push("00000002.history", b"1\t0/3000000\tno\n".to_vec(), None)
        .await
        .unwrap();
    let entries = repo.wal_entries().await.unwrap();
    assert!(entries.iter().all(|e| e.system == Some(a)), "{entries:?}");
    assert!(entries.iter().all(|e| !e.key.contains(&a.to_string())));
    assert_eq!(
        repo.wal_fetch(Some(a), "000000010000000000000002")
            .await
            .unwrap(),
        segment_of(a, 2, 2)
    );
    assert_eq!(
        repo.wal_fetch(None, "000000010000000000000002")
            .await
            .unwrap(),
        segment_of(a, 2, 2)
    );
    let e = repo
        .wal_fetch(Some(b), "000000010000000000000002")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "another system's file: {e}");
    // The archive_command contract holds across the layouts: the same file again is
    // archived already (and not stored twice), another under its name is refused.
    assert_eq!(
        repo.wal_push("000000010000000000000002", segment_of(a, 2, 2), None)
            .await
            .unwrap(),
        super::wal::WalPushOutcome::AlreadyArchived
    );
    assert!(!backend
        .exists(&layout::wal(Some(a), 1, "000000010000000000000002"))
        .await
        .unwrap());
    let e = repo
        .wal_push("000000010000000000000002", segment_of(a, 2, 7), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    // New pushes of the same cluster go to its namespace and join the old ones.
    repo.wal_push("000000010000000000000003", segment_of(a, 3, 3), None)
        .await
        .unwrap();
    let cat = repo.wal_catalog(a).await.unwrap();
    assert_eq!(cat.timelines[&1].segments, vec![1, 2, 3]);
    assert!(cat.timelines[&2].history);
    let cats = repo.wal_catalogs().await.unwrap();
    assert_eq!(cats.keys().copied().collect::<Vec<_>>(), vec![Some(a)]);
    // Nor the history file, which names no system: it is the old layout's cluster's.
    let e = repo
        .wal_fetch(Some(b), "00000002.history")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(repo.wal_fetch(Some(a), "00000002.history").await.is_ok());
    // A second cluster sees none of them.
    repo.wal_push("000000010000000000000001", segment_of(b, 1, 9), None)
        .await
        .unwrap();
    assert_eq!(
        repo.wal_catalog(b).await.unwrap().timelines[&1].segments,
        vec![1]
    );
    assert_eq!(
        repo.wal_fetch(Some(b), "000000010000000000000001")
            .await
            .unwrap(),
        segment_of(b, 1, 9)
    );
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

#[tokio::test]
async fn a_format_1_repository_is_raised_before_its_first_namespaced_wal() {
    use super::config::{RepoConfig, FORMAT_VERSION};
    let dir = tempfile::tempdir().unwrap();
    let (repo, backend) = memory_repo(&dir).await;
    let stored = |backend: MemoryBackend| async move {
        let bytes = backend.get(layout::CONFIG).await.unwrap();
        RepoConfig::parse(&bytes, "test").unwrap()
    };
    // What a pgvault of format 1 made.
    let mut old = stored(backend.clone()).await;
    assert_eq!(old.format_version, FORMAT_VERSION);
    old.format_version = 1;
    old.sign(repo.key());
    backend
        .put(layout::CONFIG, serde_json::to_vec(&old).unwrap())
        .await
        .unwrap();
    let repo = Repository::open(Arc::new(backend.clone()), b"pw", dir.path())
        .await
        .unwrap();
    // A file of no known system goes where format 1 keeps WAL: nothing to raise.
    repo.wal_push("000000010000000000000001", rows(1, 100), None)
        .await
        .unwrap();
    assert_eq!(stored(backend.clone()).await.format_version, 1);
    repo.wal_push("000000010000000000000002", segment_of(5, 2, 1), None)
        .await
        .unwrap();
    let raised = stored(backend.clone()).await;
    assert_eq!(raised.format_version, FORMAT_VERSION);
    raised.verify(repo.key(), "test").unwrap();
    // A format this build does not know is refused.
    let mut newer = raised.clone();
    newer.format_version = FORMAT_VERSION + 1;
    newer.sign(repo.key());
    let e = RepoConfig::parse(&serde_json::to_vec(&newer).unwrap(), "test").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
}

/// Segments of a base-backup-like stream: a lead-in, then `body` after a fixed cut
/// (sent in odd-sized pieces, as a reader's are unaligned), then a tail.
fn fixed_stream(
    lead: &[u8],
    body: &[u8],
    tail: &[u8],
    previous: Vec<super::ChunkRef>,
) -> std::sync::mpsc::Receiver<super::writer::Segment> {
    use super::writer::Segment;
    let (tx, rx) = std::sync::mpsc::channel();
    tx.send(Segment::Bytes(lead.to_vec())).unwrap();
    tx.send(Segment::FixedCut { previous }).unwrap();
    for piece in body.chunks(3001) {
        tx.send(Segment::Bytes(piece.to_vec())).unwrap();
    }
    tx.send(Segment::Cut).unwrap();
    tx.send(Segment::Bytes(tail.to_vec())).unwrap();
    rx
}

async fn ingest_fixed(
    repo: &Repository,
    stream: std::sync::mpsc::Receiver<super::writer::Segment>,
) -> SnapshotManifest {
    let meta = SnapshotMeta {
        db: "cluster".into(),
        kind: SnapshotKind::Dump,
        time: None,
        file_name: "base.tar".into(),
    };
    repo.ingest_segments(stream, meta, None, Arc::new(NoProgress))
        .await
        .unwrap()
        .commit()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_fixed_cut_stretch_is_chunked_at_fixed_offsets_and_each_chunk_is_a_delta_on_its_last_version(
) {
    let dir = tempfile::tempdir().unwrap();
    let (repo, _) = memory_repo(&dir).await;
    let avg = 8192;
    let (lead, tail) = (rows(20, 300), rows(21, 300));
    let body = rows(22, 3000);
    assert!(body.len() > 8 * avg && body.len() % avg != 0);
    let m1 = ingest_fixed(&repo, fixed_stream(&lead, &body, &tail, Vec::new())).await;
    let mut at = 0usize;
    let mut in_body = Vec::new();
    for c in &m1.chunks {
        if at >= lead.len() && at < lead.len() + body.len() {
            in_body.push(c.len as usize);
        }
        at += c.len as usize;
    }
    let mut want = vec![avg; body.len() / avg];
    want.push(body.len() % avg);
    assert_eq!(in_body, want, "chunks of the fixed stretch");
    let whole = [&lead[..], &body, &tail].concat();
    assert_eq!(cat(&repo, &m1).await.unwrap(), whole);

    // The next day a few bytes of every block change in place, as pages do: every
    // block is a new chunk stored as a small delta on its own earlier version.
    let mut body2 = body.clone();
    for i in (1000..body2.len()).step_by(avg) {
        body2[i..i + 8].copy_from_slice(b"CHANGED!");
    }
    // Day 2 is told each block's earlier version, as a --pgdata backup is.
    let previous: Vec<_> = m1
        .chunks
        .iter()
        .scan(0usize, |at, c| {
            let here = *at;
            *at += c.len as usize;
            Some((here, *c))
        })
        .filter(|(at, _)| *at >= lead.len() && *at < lead.len() + body.len())
        .map(|(_, c)| c)
        .collect();
    let m2 = ingest_fixed(&repo, fixed_stream(&lead, &body2, &tail, previous)).await;
    let blocks = body.len().div_ceil(avg) as u64;
    assert_eq!(m2.stats.chunks_new, blocks, "{:?}", m2.stats);
    assert_eq!(m2.stats.chunks_new_delta, blocks, "{:?}", m2.stats);
    let mut at = 0usize;
    for (c1, c2) in m1.chunks.iter().zip(&m2.chunks) {
        assert_eq!(c1.len, c2.len, "chunk at {at} moved");
        if at >= lead.len() && at < lead.len() + body.len() {
            assert_eq!(
                c2.base,
                Some(c1.id),
                "chunk at {at} is a delta on its last version"
            );
        }
        at += c1.len as usize;
    }
    assert!(
        m2.stats.bytes_stored_new * 10 < m1.stats.bytes_stored_new,
        "day 2 stored {} against day 1's {}",
        m2.stats.bytes_stored_new,
        m1.stats.bytes_stored_new
    );
    assert_eq!(
        cat(&repo, &m2).await.unwrap(),
        [&lead[..], &body2, &tail].concat()
    );
}

#[tokio::test]
async fn a_new_repository_records_both_levels_and_an_older_config_uses_its_one_level_for_both() {
    let cache = tempfile::tempdir().unwrap();
    let (repo, _store) = memory_repo(&cache).await;
    assert_eq!(repo.config().zstd_level, super::DEFAULT_ZSTD_LEVEL);
    assert_eq!(repo.config().delta_level(), super::DEFAULT_DELTA_ZSTD_LEVEL);
    assert_ne!(super::DEFAULT_ZSTD_LEVEL, super::DEFAULT_DELTA_ZSTD_LEVEL);

    let mut older = serde_json::to_value(repo.config()).unwrap();
    older.as_object_mut().unwrap().remove("delta_zstd_level");
    older["zstd_level"] = 5.into();
    let parsed =
        super::config::RepoConfig::parse(&serde_json::to_vec(&older).unwrap(), "mem").unwrap();
    assert_eq!(parsed.delta_level(), 5);
    assert!(!serde_json::to_string(&parsed)
        .unwrap()
        .contains("delta_zstd_level"));

    older["delta_zstd_level"] = 23.into();
    let err =
        super::config::RepoConfig::parse(&serde_json::to_vec(&older).unwrap(), "mem").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(err.to_string().contains("zstd level 23"), "{err}");
}
