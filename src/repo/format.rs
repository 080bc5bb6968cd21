//! The stored forms of the repository's objects: config, chunk and manifest envelopes.
//!
//! Every sealed object starts with a short plaintext header (magic, version, type)
//! that is also bound into the AES-GCM tag together with the object's key, so an
//! object moved to another key, or a header edited by hand, fails authentication.

use serde::{Deserialize, Serialize};

use crate::chunker::ChunkerParams;
use crate::crypto::{ChunkId, MasterKey};
use crate::error::{Error, Result};

/// The repository format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

const CHUNK_MAGIC: &[u8; 4] = b"PGVC";
const MANIFEST_MAGIC: &[u8; 4] = b"PGVM";
const ENVELOPE_VERSION: u8 = 1;
const CHUNK_FULL: u8 = 0;

/// The plaintext `config` object: everything needed before a key is opened.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepoConfig {
    /// Always "pgvault": tells a pgvault repository from any other JSON file.
    pub kind: String,
    pub format_version: u32,
    pub repo_id: String,
    pub created: chrono::DateTime<chrono::Utc>,
    pub chunker: ChunkerParams,
    pub zstd_level: i32,
    /// Whether the store refused the second of two conditional creates of one key
    /// when the repository was made. Where it did not, creating objects that must
    /// not be overwritten (keys, locks) is unsafe and refused. Repositories made
    /// before this was recorded were local, where `O_EXCL` always holds.
    #[serde(default = "conditional_writes_default")]
    pub conditional_writes: bool,
}

fn conditional_writes_default() -> bool {
    true
}

impl RepoConfig {
    /// A config for a new repository.
    pub fn new(chunker: ChunkerParams, zstd_level: i32, conditional_writes: bool) -> Self {
        RepoConfig {
            conditional_writes,
            kind: "pgvault".into(),
            format_version: FORMAT_VERSION,
            repo_id: hex::encode(crate::crypto::random_bytes::<16>()),
            created: chrono::Utc::now(),
            chunker,
            zstd_level,
        }
    }

    /// Parses and checks a stored config.
    ///
    /// Errors: `InvalidInput` when the bytes are not a pgvault config, or name a
    /// format version this build does not know.
    pub fn parse(bytes: &[u8], location: &str) -> Result<Self> {
        let cfg: RepoConfig = serde_json::from_slice(bytes)
            .ok()
            .filter(|c: &RepoConfig| c.kind == "pgvault")
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "{location} is not a pgvault repository: its config object is not pgvault's"
                ))
            })?;
        if cfg.format_version != FORMAT_VERSION {
            return Err(Error::InvalidInput(format!(
                "Repository {location} has format version {}, this pgvault reads version {FORMAT_VERSION}",
                cfg.format_version
            )));
        }
        Ok(cfg)
    }
}

/// The key of the object that stores a chunk: spread over 256 directories/prefixes.
pub fn chunk_key(id: &ChunkId) -> String {
    let h = id.to_hex();
    format!("chunks/{}/{}", &h[..2], h)
}

/// The chunk id named by a chunk object's key, if it is one.
pub fn chunk_id_from_key(key: &str) -> Option<ChunkId> {
    let name = key.strip_prefix("chunks/")?.rsplit('/').next()?;
    ChunkId::from_hex(name).ok()
}

fn aad(header: &[u8], key: &str) -> Vec<u8> {
    let mut v = header.to_vec();
    v.extend_from_slice(key.as_bytes());
    v
}

/// Compresses and seals a chunk's plaintext into its stored object.
pub fn encode_chunk(key: &MasterKey, id: &ChunkId, plaintext: &[u8], zstd_level: i32) -> Vec<u8> {
    let compressed = zstd::bulk::compress(plaintext, zstd_level)
        .expect("zstd compression into memory cannot fail");
    let header = [
        CHUNK_MAGIC[0],
        CHUNK_MAGIC[1],
        CHUNK_MAGIC[2],
        CHUNK_MAGIC[3],
        ENVELOPE_VERSION,
        CHUNK_FULL,
    ];
    let sealed = key.seal(&compressed, &aad(&header, &chunk_key(id)));
    let mut out = Vec::with_capacity(header.len() + sealed.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(&sealed);
    out
}

/// Opens a stored chunk object and checks that its plaintext has the id it is stored under.
///
/// Errors: `Corrupt` when the object fails authentication, does not decompress, has an
/// unknown header, or its plaintext hashes to another id.
pub fn decode_chunk(
    key: &MasterKey,
    id: &ChunkId,
    object: &[u8],
    expected_len: Option<usize>,
) -> Result<Vec<u8>> {
    let what = format!("Chunk {}", id.to_hex());
    if object.len() < 6 || &object[..4] != CHUNK_MAGIC || object[4] != ENVELOPE_VERSION {
        return Err(Error::Corrupt(format!("{what} has an unknown header")));
    }
    if object[5] != CHUNK_FULL {
        return Err(Error::Corrupt(format!(
            "{what} has unknown chunk type {}",
            object[5]
        )));
    }
    let compressed = key.open(&object[6..], &aad(&object[..6], &chunk_key(id)), &what)?;
    let capacity = expected_len.unwrap_or(16 << 20);
    let plain = zstd::bulk::decompress(&compressed, capacity)
        .map_err(|e| Error::Corrupt(format!("{what} does not decompress: {e}")))?;
    if key.chunk_id(&plain) != *id {
        return Err(Error::Corrupt(format!(
            "{what} holds data whose id differs from its name"
        )));
    }
    Ok(plain)
}

/// The key of a snapshot manifest.
pub fn snapshot_key(id: &str) -> String {
    format!("snapshots/{id}")
}

/// Compresses and seals a manifest (or any JSON document stored under `object_key`).
pub fn encode_manifest(key: &MasterKey, object_key: &str, json: &[u8]) -> Vec<u8> {
    let compressed =
        zstd::bulk::compress(json, 3).expect("zstd compression into memory cannot fail");
    let header = [
        MANIFEST_MAGIC[0],
        MANIFEST_MAGIC[1],
        MANIFEST_MAGIC[2],
        MANIFEST_MAGIC[3],
        ENVELOPE_VERSION,
        0,
    ];
    let sealed = key.seal(&compressed, &aad(&header, object_key));
    let mut out = header.to_vec();
    out.extend_from_slice(&sealed);
    out
}

/// Reverses [`encode_manifest`].
///
/// Errors: `Corrupt` when the object fails authentication or does not decompress.
pub fn decode_manifest(key: &MasterKey, object_key: &str, object: &[u8]) -> Result<Vec<u8>> {
    let what = format!("Manifest {object_key}");
    if object.len() < 6 || &object[..4] != MANIFEST_MAGIC || object[4] != ENVELOPE_VERSION {
        return Err(Error::Corrupt(format!("{what} has an unknown header")));
    }
    let compressed = key.open(&object[6..], &aad(&object[..6], object_key), &what)?;
    zstd::stream::decode_all(&compressed[..])
        .map_err(|e| Error::Corrupt(format!("{what} does not decompress: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_round_trip_and_misplacement() {
        let k = MasterKey::generate();
        let data = b"some chunk data, some chunk data, some chunk data".repeat(100);
        let id = k.chunk_id(&data);
        let obj = encode_chunk(&k, &id, &data, 3);
        assert!(obj.len() < data.len());
        assert_eq!(decode_chunk(&k, &id, &obj, Some(data.len())).unwrap(), data);
        let other = k.chunk_id(b"other");
        assert!(decode_chunk(&k, &other, &obj, None).is_err());
        assert_eq!(chunk_id_from_key(&chunk_key(&id)), Some(id));
    }
}
