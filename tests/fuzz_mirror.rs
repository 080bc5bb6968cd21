//! The fuzz targets' mirror in `cargo test`: every decoder entry of `src/fuzz.rs`
//! gets every committed corpus file (`fuzz/corpus/<target>/`, grown by libFuzzer runs
//! here with `scripts/fuzz.sh`) and then a few hundred proptest inputs: random bytes,
//! and corpus files with random bytes flipped, inserted, cut or appended. CI runs this
//! mirror rather than libFuzzer itself: an instrumented build of pgvault takes longer
//! on two cores than the whole CI budget, while replaying the corpus and mutating it
//! costs seconds and keeps every crash libFuzzer ever found from coming back.
//!
//! `cargo test --test fuzz_mirror -- --ignored write_seed_corpora` writes the seed
//! files (real dumps, tar streams, chunk payloads, manifests, configs, key files and
//! typed values) that libFuzzer starts from.

mod common;

use std::path::{Path, PathBuf};

use proptest::prelude::*;

type Target = fn(&[u8]);

const TARGETS: &[(&str, Target)] = &[
    ("custom_format", pgvault::fuzz::custom_format),
    ("base_tar", pgvault::fuzz::base_tar),
    ("chunk_object", pgvault::fuzz::chunk_object),
    ("manifest", pgvault::fuzz::manifest),
    ("config", pgvault::fuzz::config),
    ("key_file", pgvault::fuzz::key_file),
    ("wal_names", pgvault::fuzz::wal_names),
    ("typed_values", pgvault::fuzz::typed_values),
];

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir(target))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

fn target(name: &str) -> Target {
    TARGETS.iter().find(|(n, _)| *n == name).unwrap().1
}

#[test]
fn every_target_has_seeds_and_survives_its_whole_corpus() {
    for (name, run) in TARGETS {
        let files = corpus(name);
        assert!(!files.is_empty(), "fuzz/corpus/{name} is empty");
        for f in &files {
            run(f);
        }
        eprintln!("{name}: {} corpus files", files.len());
    }
}

/// One random edit of a corpus file.
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Cut(usize, usize),
    Truncate(usize),
}

fn apply(mut data: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let len = data.len();
        match e {
            Edit::Flip(at, bits) if len > 0 => data[at % len] ^= bits | 1,
            Edit::Insert(at, bytes) => {
                let at = at % (len + 1);
                data.splice(at..at, bytes.iter().copied());
            }
            Edit::Cut(at, n) if len > 0 => {
                let at = at % len;
                let end = (at + n).min(len);
                data.drain(at..end);
            }
            Edit::Truncate(to) => data.truncate(to % (len + 1)),
            _ => {}
        }
    }
    data
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Edit::Flip(a, b)),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..64)
        )
            .prop_map(|(a, b)| Edit::Insert(a, b)),
        (any::<usize>(), 1usize..512).prop_map(|(a, n)| Edit::Cut(a, n)),
        any::<usize>().prop_map(Edit::Truncate),
    ]
}

fn mutate_corpus(name: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let files = corpus(name);
    let n = files.len().max(1);
    (0..n, proptest::collection::vec(edit(), 1..6))
        .prop_map(move |(i, edits)| apply(files.get(i).cloned().unwrap_or_default(), &edits))
}

macro_rules! mirror {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;
            proptest! {
                #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
                #[test]
                fn survives_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
                    target(stringify!($name))(&data);
                }
                #[test]
                fn survives_edited_corpus_files(data in mutate_corpus(stringify!($name))) {
                    target(stringify!($name))(&data);
                }
            }
        }
    )*};
}

mirror!(
    custom_format,
    base_tar,
    chunk_object,
    manifest,
    config,
    key_file,
    wal_names,
    typed_values,
);

/// Writes the seed corpora. Run by hand when the formats change.
#[test]
#[ignore]
fn write_seed_corpora() {
    use pgvault::crypto::{ChunkId, KdfParams, KeyFile, MasterKey};
    use pgvault::store::format;

    let write = |target: &str, name: &str, data: &[u8]| {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), data).unwrap();
    };

    // Real dumps: a tiny database, and the head of a larger one.
    let d = common::fixtures::dumps();
    let tiny = std::fs::read(&d.tiny).unwrap();
    write("custom_format", "tiny.dump", &tiny);
    write(
        "custom_format",
        "tiny-truncated.dump",
        &tiny[..tiny.len() / 2],
    );
    let other = std::fs::read(&d.other).unwrap();
    write(
        "custom_format",
        "other-head.dump",
        &other[..other.len().min(16 << 10)],
    );

    // A base backup's tar stream, as much of it as pgvault reads.
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o600);
        h.set_cksum();
        tar.append_data(&mut h, path, data).unwrap();
    };
    add("PG_VERSION", b"15\n");
    add(
        "backup_label",
        b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\nBACKUP FROM: primary\nSTART TIME: 2026-11-29 20:38:42 UTC\nLABEL: pgvault\nSTART TIMELINE: 1\n",
    );
    let mut control = vec![0u8; 8192];
    control[..8].copy_from_slice(&7_300_000_000_000_000_001u64.to_le_bytes());
    add("global/pg_control", &control);
    add(
        "backup_manifest",
        br#"{"PostgreSQL-Backup-Manifest-Version": 1, "Files": [], "WAL-Ranges": [{"Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100"}]}"#,
    );
    write("base_tar", "minimal.tar", &tar.into_inner().unwrap());

    // Chunk payloads: a full zstd frame, a delta frame, and a sealed object.
    let data = b"1\tuser1\talice@example.com\n2\tuser2\tbob@example.com\n".repeat(40);
    write(
        "chunk_object",
        "zstd-frame",
        &zstd::bulk::compress(&data, 3).unwrap(),
    );
    let mut edited = data.clone();
    edited[100] = b'#';
    write(
        "chunk_object",
        "delta-frame",
        &[&data[..], &format::delta_compress(&edited, &data, 3)].concat(),
    );
    let k = MasterKey::generate();
    let id = k.chunk_id(&data);
    write(
        "chunk_object",
        "sealed-full",
        &format::encode_chunk(&k, &id, &data, 3),
    );
    write(
        "chunk_object",
        "sealed-delta",
        &format::encode_delta_chunk(&k, &k.chunk_id(&edited), &edited, &id, &data, 3),
    );

    // Manifests: the JSON inside, and a sealed one.
    let manifest = serde_json::json!({
        "id": "8c2e".repeat(16), "time": "2026-11-29T02:00:00Z",
        "started": "2026-11-29T02:00:00Z", "finished": "2026-11-29T02:01:00Z",
        "kind": "dump", "db": "footdash", "hostname": "db1", "file_name": "footdash.dump",
        "size_bytes": 4096,
        "chunks": [{"id": ChunkId([1; 32]), "len": 4096, "base": ChunkId([2; 32])}],
        "stats": {"bytes_read": 4096, "bytes_stored_new": 100, "chunks_total": 1,
                  "chunks_new": 1, "chunks_reused": 0, "chunks_new_delta": 1, "duration_ms": 5},
        "dump_offsets_filled": true
    });
    let json = serde_json::to_vec(&manifest).unwrap();
    assert!(serde_json::from_slice::<pgvault::SnapshotManifest>(&json).is_ok());
    write("manifest", "snapshot.json", &json);
    write(
        "manifest",
        "sealed",
        &format::encode_manifest(&k, "snapshots/x", &json),
    );
    let wal = serde_json::json!({
        "name": "000000010000000000000002", "timeline": 1, "size_bytes": 16777216,
        "content_id": ChunkId([3; 32]), "chunks": [], "pushed": "2026-11-29T02:00:00Z",
        "hostname": "db1"
    });
    write("manifest", "wal.json", &serde_json::to_vec(&wal).unwrap());

    // A config and a key file as init writes them.
    let mut cfg = pgvault::store::config::RepoConfig::new(Default::default(), 3, 3, true, true);
    cfg.sign(&k);
    write(
        "config",
        "config.json",
        &serde_json::to_vec_pretty(&cfg).unwrap(),
    );
    let kf = KeyFile::wrap(
        &k,
        b"passphrase",
        KdfParams {
            memory_kib: 8,
            iterations: 1,
            parallelism: 1,
        },
    )
    .unwrap();
    write(
        "key_file",
        "cheap.json",
        &serde_json::to_vec_pretty(&kf).unwrap(),
    );

    for (i, name) in [
        "000000010000000000000002",
        "00000002.history",
        "000000010000000000000002.00000028.backup",
        "000000010000000100000002.partial",
        "0/3000028",
        "16/B374D848",
    ]
    .iter()
    .enumerate()
    {
        write("wal_names", &format!("seed-{i}"), name.as_bytes());
    }
    for (i, value) in [
        "2026-11-29 20:38:42.421088+00",
        "2026-11-29 20:38:42 UTC",
        "2026-11-29T20:38:42+05:30",
        "1d12h",
        "s3://bucket/prefix",
        "postgresql://alice:pw@db.example:5432/footdash?sslmode=require",
        "host=db dbname='foot dash' password=x",
        "10%",
        "3/7",
    ]
    .iter()
    .enumerate()
    {
        write("typed_values", &format!("seed-{i}"), value.as_bytes());
    }
}
