//! One entry point per decoder of untrusted input, shared by the libFuzzer targets in
//! `fuzz/` and their mirror in `cargo test` (`tests/fuzz_mirror.rs`). Each takes any
//! bytes and must return: no panic, no unbounded allocation, no hang. What a decoder
//! accepts or refuses is its own business; here only its survival is checked, plus
//! the invariants that must hold whatever the input (a refused input is refused with
//! a kind, an accepted head patch keeps its length, a parsed time prints back).
//!
//! The inputs reach the decoders as an attacker could shape them: a hostile stdin for
//! the dump and tar inspectors, a hostile bucket for chunks, manifests, the config
//! and key files, a tired operator for names and times.

use std::sync::OnceLock;

use crate::crypto::{ChunkId, KeyFile, MasterKey};
use crate::store::config::RepoConfig;
use crate::store::format;
use crate::store::writer::StreamInspector;

/// One fixed key for every run, so that the fuzzer's corpus stays meaningful.
fn key() -> &'static MasterKey {
    static KEY: OnceLock<MasterKey> = OnceLock::new();
    KEY.get_or_init(MasterKey::generate)
}

/// Feeds `data` to a stream inspector in pieces of sizes taken from its first byte,
/// as the chunker would, then finishes it.
fn inspect(mut ins: Box<dyn StreamInspector>, data: &[u8]) {
    let step = 1 + usize::from(data.first().copied().unwrap_or(0)) * 37;
    let mut fed = 0;
    let mut stored = Vec::new();
    for piece in data.chunks(step) {
        if ins.feed(piece).is_err() {
            return;
        }
        ins.take_stored(&mut stored);
        fed += piece.len();
    }
    let transforms = ins.transforms();
    let head_len = ins.head_len().map_or(0, |h| h.min(fed as u64) as usize);
    let head = &data[..head_len];
    if let Ok(inspected) = ins.finish(head) {
        if let Some(patched) = inspected.patched_head {
            assert_eq!(patched.len(), head.len(), "a patched head keeps its length");
        }
        // No byte is lost: what is stored gives back what came in.
        match inspected.recreation {
            Some(rec) => {
                let back = crate::recreate::recreate_all(&stored, &rec)
                    .expect("a stream the inspector accepted re-creates");
                assert!(back == data, "the re-created stream differs from the input");
            }
            None if transforms => assert!(stored == data, "the stored stream differs"),
            None => {}
        }
    }
}

/// A dump on stdin (`backup --stdin`): a custom-format archive or a gzipped SQL
/// dump.
pub fn custom_format(data: &[u8]) {
    inspect(Box::<crate::pg::DumpStreamInspector>::default(), data);
}

/// pg_basebackup's tar stream on stdin (`backup --base --stdin`).
pub fn base_tar(data: &[u8]) {
    inspect(
        Box::new(crate::pg::basebackup::BaseTarInspector::new()),
        data,
    );
}

/// A chunk object from the bucket: its envelope, then its payload as a full chunk and
/// as a delta frame (past authentication only the key holder gets, but decompression
/// must be safe all the same).
pub fn chunk_object(data: &[u8]) {
    let id = ChunkId([7; 32]);
    if let Ok(opened) = format::open_chunk(key(), &id, data) {
        let _ = format::finish_chunk(key(), &id, &opened, Some(b"base"), Some(1 << 16));
    }
    let full = format::OpenedChunk::Full(data.to_vec());
    let _ = format::finish_chunk(key(), &id, &full, None, Some(1 << 16));
    let (base, frame) = data.split_at(data.len() / 3);
    let delta = format::OpenedChunk::Delta {
        base: id,
        frame: frame.to_vec(),
    };
    let _ = format::finish_chunk(key(), &id, &delta, Some(base), Some(1 << 16));
}

/// A sealed manifest (snapshot, WAL, lock or record) from the bucket, and the JSON
/// inside one.
pub fn manifest(data: &[u8]) {
    let _ = format::decode_manifest(key(), "snapshots/x", data);
    let _ = serde_json::from_slice::<crate::store::SnapshotManifest>(data);
    let _ = serde_json::from_slice::<crate::store::wal::WalManifest>(data);
    let _ = serde_json::from_slice::<crate::store::lock::LockInfo>(data);
    let _ = serde_json::from_slice::<crate::store::records::BackupAttempt>(data);
}

/// The `config` object from the bucket.
pub fn config(data: &[u8]) {
    if let Ok(cfg) = RepoConfig::parse(data, "fuzz") {
        assert!(crate::store::config::is_repo_id(&cfg.repo_id));
        assert!(cfg.chunker.validate().is_ok());
        // An attacker without the key cannot make it authenticate.
        assert!(cfg.verify(key(), "fuzz").is_err());
    }
}

/// A key file from the bucket. Unwrapping is tried only with costs a test can pay:
/// the bounds themselves are what stands between a hostile file and the memory.
pub fn key_file(data: &[u8]) {
    let Ok(kf) = serde_json::from_slice::<KeyFile>(data) else {
        return;
    };
    let cheap = kf.kdf_params.memory_kib <= 64 && kf.kdf_params.iterations <= 2;
    if kf.kdf_params.check().is_ok() && cheap {
        let _ = kf.unwrap_key(b"passphrase");
    }
}

/// WAL file names and LSNs, as PostgreSQL and people give them.
pub fn wal_names(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(kind) = crate::wal_name::WalFileKind::parse(s) {
        for size in [1 << 20, 16 << 20, 1 << 30] {
            let _ = kind.segno(size);
        }
    }
    if let Ok(lsn) = crate::wal_name::Lsn::parse(s) {
        assert_eq!(
            crate::wal_name::Lsn::parse(&lsn.to_string()).ok(),
            Some(lsn)
        );
    }
}

/// Every parser of what people type: times, durations, sizes, locations,
/// connection strings, check subsets.
pub fn typed_values(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = crate::time::parse_time(s) {
        let back = crate::time::parse_time(&t.to_rfc3339()).expect("an RFC 3339 time parses");
        assert_eq!(back, t);
        let _ = crate::time::pg_timestamptz(&t);
    }
    if let Ok(d) = crate::time::parse_duration(s) {
        let _ = crate::time::format_duration(d);
    }
    let _ = crate::backend::Location::parse(s);
    if let Ok(t) = crate::pg::conninfo::parse(s) {
        assert!(!t.name.is_empty());
    }
    let _ = crate::ops::check::ReadData::parse_subset(s);
}
