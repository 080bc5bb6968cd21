//! The stored forms of the repository's objects: config, chunk and manifest envelopes.
//!
//! Every sealed object starts with a short plaintext header (magic, version, type)
//! that is also bound into the AES-GCM tag together with the object's key, so an
//! object moved to another key, or a header edited by hand, fails authentication.

use std::cell::RefCell;

use super::layout;
use crate::crypto::{ChunkId, MasterKey};
use crate::error::{Error, Result};

const CHUNK_MAGIC: &[u8; 4] = b"PGVC";
const MANIFEST_MAGIC: &[u8; 4] = b"PGVM";
const ENVELOPE_VERSION: u8 = 1;
const CHUNK_FULL: u8 = 0;
const CHUNK_DELTA: u8 = 1;

fn aad(header: &[u8], key: &str) -> Vec<u8> {
    let mut v = header.to_vec();
    v.extend_from_slice(key.as_bytes());
    v
}

thread_local! {
    /// One compression context (with its level) and one decompression context per
    /// thread, reused: creating them allocates their tables, a cost otherwise paid for
    /// every chunk (about a tenth of a full chunk's decompression time).
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// zstd at `level`, with this thread's context.
fn compress(data: &[u8], level: i32) -> Vec<u8> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().is_none_or(|(l, _)| *l != level) {
            let fresh = zstd::bulk::Compressor::new(level)
                .expect("a zstd context for a level in range can be made");
            *c = Some((level, fresh));
        }
        let (_, ctx) = c.as_mut().expect("set above");
        ctx.compress(data)
            .expect("zstd compression into memory cannot fail")
    })
}

/// Reverses [`compress`], refusing output larger than `capacity`.
fn decompress(data: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new()?);
        }
        d.as_mut().expect("set above").decompress(data, capacity)
    })
}

/// Compresses and seals a chunk's plaintext into its stored object.
pub fn encode_chunk(key: &MasterKey, id: &ChunkId, plaintext: &[u8], zstd_level: i32) -> Vec<u8> {
    seal_chunk(key, id, CHUNK_FULL, &compress(plaintext, zstd_level))
}

/// Puts the header in front of the sealed payload, the header bound into the tag.
fn seal_chunk(key: &MasterKey, id: &ChunkId, chunk_type: u8, payload: &[u8]) -> Vec<u8> {
    let header = [
        CHUNK_MAGIC[0],
        CHUNK_MAGIC[1],
        CHUNK_MAGIC[2],
        CHUNK_MAGIC[3],
        ENVELOPE_VERSION,
        chunk_type,
    ];
    let sealed = key.seal(payload, &aad(&header, &layout::chunk(id)));
    let mut out = Vec::with_capacity(header.len() + sealed.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(&sealed);
    out
}

/// Compresses `plaintext` with zstd using `base` as a raw-content prefix, then seals
/// it with the base's id in front, inside the ciphertext: which chunks resemble each
/// other is nobody's business but the key holder's.
pub fn encode_delta_chunk(
    key: &MasterKey,
    id: &ChunkId,
    plaintext: &[u8],
    base_id: &ChunkId,
    base: &[u8],
    zstd_level: i32,
) -> Vec<u8> {
    let mut payload = Vec::with_capacity(32 + plaintext.len() / 8);
    payload.extend_from_slice(&base_id.0);
    payload.extend_from_slice(&delta_compress(plaintext, base, zstd_level));
    seal_chunk(key, id, CHUNK_DELTA, &payload)
}

/// zstd with a prefix: the prefix acts as the history the frame starts with, so every
/// run shared with the base costs a match and no literals.
pub fn delta_compress(plaintext: &[u8], base: &[u8], zstd_level: i32) -> Vec<u8> {
    let mut cctx = zstd::zstd_safe::CCtx::create();
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(plaintext.len()));
    cctx.set_parameter(zstd::zstd_safe::CParameter::CompressionLevel(zstd_level))
        .and_then(|_| cctx.ref_prefix(base))
        .and_then(|_| cctx.compress2(&mut out, plaintext))
        .expect("zstd compression into a buffer of compress_bound size cannot fail");
    out
}

/// Reverses [`delta_compress`].
///
/// Errors: `Corrupt` naming `what` when the frame does not decompress against `base`
/// or is larger than `capacity`.
pub fn delta_decompress(delta: &[u8], base: &[u8], capacity: usize, what: &str) -> Result<Vec<u8>> {
    let mut dctx = zstd::zstd_safe::DCtx::create();
    let mut out = Vec::with_capacity(capacity);
    dctx.ref_prefix(base)
        .and_then(|_| dctx.decompress(&mut out, delta))
        .map_err(|code| {
            Error::Corrupt(format!(
                "{what} does not decompress against its base: {}",
                zstd::zstd_safe::get_error_name(code)
            ))
        })?;
    Ok(out)
}

/// A chunk object authenticated and decrypted, not yet decompressed.
#[derive(Debug)]
pub enum OpenedChunk {
    /// The chunk's bytes, zstd-compressed.
    Full(Vec<u8>),
    /// A zstd frame that decompresses against the plaintext of `base`.
    Delta { base: ChunkId, frame: Vec<u8> },
}

impl OpenedChunk {
    /// The chunk this one is a delta on, if it is one.
    pub fn base(&self) -> Option<ChunkId> {
        match self {
            OpenedChunk::Full(_) => None,
            OpenedChunk::Delta { base, .. } => Some(*base),
        }
    }
}

/// Checks a chunk object's header, authenticates and decrypts it.
///
/// Errors: `Corrupt` when the header is unknown or the object fails authentication.
pub fn open_chunk(key: &MasterKey, id: &ChunkId, object: &[u8]) -> Result<OpenedChunk> {
    let what = format!("Chunk {}", id.to_hex());
    if object.len() < 6 || &object[..4] != CHUNK_MAGIC || object[4] != ENVELOPE_VERSION {
        return Err(Error::Corrupt(format!("{what} has an unknown header")));
    }
    let chunk_type = object[5];
    if chunk_type != CHUNK_FULL && chunk_type != CHUNK_DELTA {
        return Err(Error::Corrupt(format!(
            "{what} has unknown chunk type {chunk_type}"
        )));
    }
    let mut payload = key.open(&object[6..], &aad(&object[..6], &layout::chunk(id)), &what)?;
    if chunk_type == CHUNK_FULL {
        return Ok(OpenedChunk::Full(payload));
    }
    if payload.len() < 32 {
        return Err(Error::Corrupt(format!("{what} is a delta without a base")));
    }
    let frame = payload.split_off(32);
    let base = ChunkId(payload.try_into().expect("32 bytes split off above"));
    Ok(OpenedChunk::Delta { base, frame })
}

/// Decompresses an opened chunk (given its base's plaintext when it is a delta) and
/// checks that the result has the id it is stored under.
///
/// Errors: `Corrupt` when it does not decompress, a delta comes without its base, or
/// the plaintext hashes to another id.
pub fn finish_chunk(
    key: &MasterKey,
    id: &ChunkId,
    opened: &OpenedChunk,
    base: Option<&[u8]>,
    expected_len: Option<usize>,
) -> Result<Vec<u8>> {
    let what = format!("Chunk {}", id.to_hex());
    let capacity = expected_len.unwrap_or(16 << 20);
    let plain = match (opened, base) {
        (OpenedChunk::Full(compressed), _) => decompress(compressed, capacity)
            .map_err(|e| Error::Corrupt(format!("{what} does not decompress: {e}")))?,
        (OpenedChunk::Delta { frame, .. }, Some(base)) => {
            delta_decompress(frame, base, capacity, &what)?
        }
        (OpenedChunk::Delta { base, .. }, None) => {
            return Err(Error::Corrupt(format!(
                "{what} is a delta on chunk {}, which was not given",
                base.to_hex()
            )))
        }
    };
    if key.chunk_id(&plain) != *id {
        return Err(Error::Corrupt(format!(
            "{what} holds data whose id differs from its name"
        )));
    }
    Ok(plain)
}

/// Compresses and seals a manifest (or any JSON document stored under `object_key`).
pub fn encode_manifest(key: &MasterKey, object_key: &str, json: &[u8]) -> Vec<u8> {
    let compressed = compress(json, 3);
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

    /// The one decode path, `open_chunk` then `finish_chunk`, as every reader uses it.
    fn decode(k: &MasterKey, id: &ChunkId, obj: &[u8]) -> Result<Vec<u8>> {
        let opened = open_chunk(k, id, obj)?;
        finish_chunk(k, id, &opened, None, None)
    }

    #[test]
    fn chunk_round_trip_and_misplacement() {
        let k = MasterKey::generate();
        let data = b"some chunk data, some chunk data, some chunk data".repeat(100);
        let id = k.chunk_id(&data);
        let obj = encode_chunk(&k, &id, &data, 3);
        assert!(obj.len() < data.len());
        assert_eq!(decode(&k, &id, &obj).unwrap(), data);
        // Stored under another chunk's key: the key is bound into the tag.
        let other = k.chunk_id(b"other");
        assert_eq!(
            decode(&k, &other, &obj).unwrap_err().kind(),
            crate::error::ErrorKind::Corrupt
        );
        // Another repository's key opens nothing.
        assert!(decode(&MasterKey::generate(), &id, &obj).is_err());
        // A flipped bit anywhere, header included, fails authentication.
        for at in [0, 5, 6, obj.len() / 2, obj.len() - 1] {
            let mut bad = obj.clone();
            bad[at] ^= 1;
            assert!(decode(&k, &id, &bad).is_err(), "flip at {at}");
        }
    }

    /// One random edit: replace, insert or delete a run of bytes.
    fn edit_strategy() -> impl proptest::strategy::Strategy<Value = (u8, f64, Vec<u8>, usize)> {
        use proptest::prelude::*;
        (
            0u8..3,
            0.0f64..1.0,
            proptest::collection::vec(any::<u8>(), 1..300),
            1usize..300,
        )
    }

    fn apply(data: &mut Vec<u8>, (kind, at, bytes, del): &(u8, f64, Vec<u8>, usize)) {
        let pos = ((data.len() as f64) * at) as usize;
        match kind {
            0 => {
                let end = (pos + bytes.len()).min(data.len());
                data.splice(pos..end, bytes.iter().copied());
            }
            1 => {
                data.splice(pos..pos, bytes.iter().copied());
            }
            _ => {
                let end = (pos + del).min(data.len());
                data.drain(pos..end);
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// Any edit of any data survives a delta on the original, byte for byte, and
        /// the stored delta of a lightly edited chunk is far smaller than the chunk.
        #[test]
        fn delta_round_trip(
            seed in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..64),
            len in 0usize..200_000,
            edits in proptest::collection::vec(edit_strategy(), 0..12),
        ) {
            let base: Vec<u8> = (0..len).map(|i| seed[i % seed.len()] ^ (i as u8).wrapping_mul(31) ^ ((i / 7919) as u8)).collect();
            let mut edited = base.clone();
            for e in &edits {
                apply(&mut edited, e);
            }
            let k = MasterKey::generate();
            let base_id = k.chunk_id(&base);
            let id = k.chunk_id(&edited);
            let obj = encode_delta_chunk(&k, &id, &edited, &base_id, &base, 3);
            let opened = open_chunk(&k, &id, &obj).unwrap();
            proptest::prop_assert_eq!(opened.base(), Some(base_id));
            let back = finish_chunk(&k, &id, &opened, Some(&base), Some(edited.len())).unwrap();
            proptest::prop_assert_eq!(&back, &edited);
            // Against another base it must not pass for the chunk.
            let mut wrong = base.clone();
            if !wrong.is_empty() && !edited.is_empty() {
                let mid = wrong.len() / 2;
                wrong[mid] ^= 1;
                let r = finish_chunk(&k, &id, &opened, Some(&wrong), Some(edited.len()));
                if let Ok(b) = &r {
                    // Only possible when the flipped byte was never copied from.
                    proptest::prop_assert_eq!(b, &edited);
                }
            }
        }
    }

    #[test]
    fn delta_of_a_lightly_edited_chunk_is_small_and_needs_its_base() {
        let k = MasterKey::generate();
        let base: Vec<u8> = (0..262_144u32)
            .flat_map(|i| {
                format!(
                    "{i}\tuser{i}@footdash.example\t{}\n",
                    i.wrapping_mul(2_654_435_761)
                )
                .into_bytes()
            })
            .take(262_144)
            .collect();
        let mut edited = base.clone();
        for at in (0..edited.len() - 40).step_by(10_000) {
            edited[at..at + 8].copy_from_slice(b"CHANGED!");
        }
        let (base_id, id) = (k.chunk_id(&base), k.chunk_id(&edited));
        let delta = encode_delta_chunk(&k, &id, &edited, &base_id, &base, 3);
        let full = encode_chunk(&k, &id, &edited, 3);
        assert!(
            delta.len() * 10 < full.len(),
            "delta {} full {}",
            delta.len(),
            full.len()
        );
        let opened = open_chunk(&k, &id, &delta).unwrap();
        let e = finish_chunk(&k, &id, &opened, None, None).unwrap_err();
        assert!(e.to_string().contains("is a delta on chunk"), "{e}");
        // A delta object moved under another id fails authentication.
        assert!(open_chunk(&k, &base_id, &delta).is_err());
    }
}
