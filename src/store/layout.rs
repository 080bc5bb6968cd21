//! Where each kind of object lives in a repository: every object key and key prefix,
//! in one place, the same on every backend.
//!
//! ```text
//! config                      the repository's parameters
//! keys/<key id>               the master key, wrapped by one passphrase
//! chunks/<2 hex>/<64 hex>     one chunk (full or delta), created with put-if-absent
//! snapshots/<id>              one backup point's manifest
//! wal/<system>/<timeline>/<name>
//!                             one archived WAL file's manifest, by the cluster's
//!                             system identifier (decimal, as pg_controldata prints it)
//! wal/<timeline>/<name>       the same, for files whose cluster is not known (archived
//!                             before WAL was namespaced by system; read, never written
//!                             for a known system)
//! locks/<id>                  a shared or exclusive lock
//! receivers/<id>              what a running wal-receive last reported (replaced)
//! prunes/<time>-<random>      left by prune before it deletes (see `sync`)
//! attempts/, drills/, checks/, wal-failures/
//!                             history records (see `records`)
//! ```

use crate::crypto::ChunkId;

/// The most a small metadata object (config, key file, lock, history record) may
/// weigh before it is read: they are a few KB, and a planted giant must not take a
/// command's memory (wal-fetch's included).
pub const SMALL_OBJECT_MAX_BYTES: u64 = 1 << 20;

/// The repository's config object.
pub const CONFIG: &str = "config";
/// Key files, one per passphrase.
pub const KEYS: &str = "keys/";
/// Chunk objects.
pub const CHUNKS: &str = "chunks/";
/// Snapshot manifests.
pub const SNAPSHOTS: &str = "snapshots/";
/// WAL file manifests.
pub const WAL: &str = "wal/";
/// Lock objects.
pub const LOCKS: &str = "locks/";
/// The latest report of each `wal-receive`.
pub const RECEIVERS: &str = "receivers/";
/// Prune markers.
pub const PRUNE_MARKERS: &str = "prunes/";
/// Backup attempt records.
pub const ATTEMPTS: &str = "attempts/";
/// Restore drill records.
pub const DRILLS: &str = "drills/";
/// Data check records.
pub const CHECKS: &str = "checks/";
/// Records of failed WAL pushes.
pub const WAL_FAILURES: &str = "wal-failures/";
/// The short-lived object `init` writes twice to learn whether the store honours
/// conditional creates.
pub const CONDITIONAL_WRITE_PROBE: &str = "probe-conditional-write-";

/// The key of a key file.
pub fn key_file(key_id: &str) -> String {
    format!("{KEYS}{key_id}")
}

/// The key of the object that stores a chunk: spread over 256 directories/prefixes.
pub fn chunk(id: &ChunkId) -> String {
    let h = id.to_hex();
    format!("{CHUNKS}{}/{}", &h[..2], h)
}

/// The chunk id named by a chunk object's key, if it is one.
pub fn chunk_id(key: &str) -> Option<ChunkId> {
    let name = key.strip_prefix(CHUNKS)?.rsplit('/').next()?;
    // Only the key pgvault would write for this id: a copy planted under another
    // folder would otherwise be counted (and deleted by prune) as the real chunk.
    ChunkId::from_hex(name).ok().filter(|id| chunk(id) == key)
}

/// The key of a snapshot manifest.
pub fn snapshot(id: &str) -> String {
    format!("{SNAPSHOTS}{id}")
}

/// The snapshot id named by a manifest's key, if it is one.
pub fn snapshot_id(key: &str) -> Option<&str> {
    key.strip_prefix(SNAPSHOTS).filter(|id| !id.is_empty())
}

/// The key of a WAL file's manifest: in the namespace of database system `system`,
/// or in the one of files whose system is not known.
pub fn wal(system: Option<u64>, timeline: u32, name: &str) -> String {
    match system {
        Some(s) => format!("{WAL}{s}/{timeline:08X}/{name}"),
        None => format!("{WAL}{timeline:08X}/{name}"),
    }
}

/// The system and file name of a WAL manifest's key, if it is one in either layout
/// (the timeline in the key is the name's own, checked by the caller).
pub fn wal_key_parts(key: &str) -> Option<(Option<u64>, &str)> {
    let parts: Vec<&str> = key.strip_prefix(WAL)?.split('/').collect();
    let is_timeline = |t: &str| t.len() == 8 && t.bytes().all(|b| b.is_ascii_hexdigit());
    match parts.as_slice() {
        [tl, name] if is_timeline(tl) => Some((None, name)),
        [sys, tl, name] if is_timeline(tl) => {
            let system: u64 = sys.parse().ok().filter(|s| *s != 0)?;
            // Only the spelling pgvault writes: "007" would be a second key for 7.
            (system.to_string() == *sys).then_some((Some(system), name))
        }
        _ => None,
    }
}

/// The key of a lock object.
pub fn lock(lock_id: &str) -> String {
    format!("{LOCKS}{lock_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_keys_name_their_chunk() {
        let id = ChunkId([0xab; 32]);
        let key = chunk(&id);
        assert!(key.starts_with("chunks/ab/abab"));
        assert_eq!(chunk_id(&key), Some(id));
        assert_eq!(chunk_id("chunks/ab/not-hex"), None);
        assert_eq!(chunk_id("snapshots/abab"), None);
        let elsewhere = key.replacen("chunks/ab/", "chunks/zz/", 1);
        assert_eq!(chunk_id(&elsewhere), None, "a copy under another folder");
        assert_eq!(chunk_id(&key.replacen("chunks/ab/", "chunks/", 1)), None);
        assert_eq!(snapshot_id(&snapshot("8c2e")), Some("8c2e"));
        assert_eq!(snapshot_id("snapshots/"), None);
        assert_eq!(
            wal(None, 1, "000000010000000000000002"),
            "wal/00000001/000000010000000000000002"
        );
        let key = wal(Some(7301234567890123456), 2, "00000002.history");
        assert_eq!(key, "wal/7301234567890123456/00000002/00000002.history");
        assert_eq!(
            wal_key_parts(&key),
            Some((Some(7301234567890123456), "00000002.history"))
        );
        assert_eq!(
            wal_key_parts("wal/00000001/000000010000000000000002"),
            Some((None, "000000010000000000000002"))
        );
        assert_eq!(wal_key_parts("wal/0073/00000001/x"), None);
        assert_eq!(wal_key_parts("wal/0/00000001/x"), None);
        assert_eq!(wal_key_parts("wal/abc/00000001/x"), None);
        assert_eq!(wal_key_parts("wal/1/2/00000001/x"), None);
    }
}
