//! Keys, sealing and chunk ids: AES-256-GCM, argon2id key wrapping, keyed blake3.
//!
//! One random master key per repository encrypts everything. Each passphrase gets its
//! own key file holding the master key sealed under an argon2id-derived key, so
//! passphrases can be added and removed without re-encrypting data.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use serde::{Deserialize, Serialize};

use zeroize::Zeroizing;

use crate::error::{Error, Result};

const NONCE_LEN: usize = 12;

/// A chunk's identity: blake3 of its plaintext, keyed by a secret of the repository,
/// so that ids reveal nothing about content to someone who holds only the bucket.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The id as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits.
    ///
    /// Errors: `Corrupt` when `s` is not 64 hex digits.
    pub fn from_hex(s: &str) -> Result<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)
            .map_err(|_| Error::Corrupt(format!("Invalid chunk id {s:?}")))?;
        Ok(ChunkId(out))
    }

    /// A short form for messages.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl std::fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChunkId({})", self.short())
    }
}

impl std::fmt::Display for ChunkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for ChunkId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ChunkId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ChunkId::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

/// Fills a buffer from the operating system's random source.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).expect("the operating system random source failed");
    b
}

/// The repository's secrets: one key for sealing, one for chunk ids. Wiped from
/// memory when dropped.
#[derive(Clone, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
pub struct MasterKey {
    seal_key: [u8; 32],
    id_key: [u8; 32],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// A fresh random master key.
    pub fn generate() -> Self {
        MasterKey {
            seal_key: random_bytes(),
            id_key: random_bytes(),
        }
    }

    /// The keyed id of a chunk's plaintext.
    pub fn chunk_id(&self, plaintext: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.id_key, plaintext).as_bytes())
    }

    /// Encrypts and authenticates `plaintext`; `context` is bound into the tag so an
    /// object cannot be passed off as another (a chunk under another id, say).
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> Vec<u8> {
        seal_with(&self.seal_key, plaintext, context)
    }

    /// Reverses [`MasterKey::seal`].
    ///
    /// Errors: `Corrupt` when the data was altered, truncated or sealed for another context.
    pub fn open(&self, sealed: &[u8], context: &[u8], what: &str) -> Result<Vec<u8>> {
        open_with(&self.seal_key, sealed, context).ok_or_else(|| {
            Error::Corrupt(format!(
                "{what} failed authentication: it is corrupt or was tampered with"
            ))
        })
    }

    /// A key for one purpose, derived from the master key (blake3's KDF mode), so
    /// that no two uses share a key.
    fn derived(&self, purpose: &str) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(blake3::derive_key(purpose, &self.to_bytes()))
    }

    /// The tag that authenticates the repository's config object.
    pub fn config_tag(&self, config: &[u8]) -> blake3::Hash {
        blake3::keyed_hash(
            &self.derived("pgvault 2026-11 config authentication"),
            config,
        )
    }

    /// The key that maps similarity-sketch features, so that the local index (which
    /// holds them in the clear) says nothing about content to whoever reads it.
    pub fn sketch_key(&self) -> Zeroizing<[u8; 32]> {
        self.derived("pgvault 2026-11 similarity sketch features")
    }

    fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut v = Zeroizing::new(self.seal_key.to_vec());
        v.extend_from_slice(&self.id_key);
        v
    }

    fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != 64 {
            return None;
        }
        let mut seal_key = [0u8; 32];
        let mut id_key = [0u8; 32];
        seal_key.copy_from_slice(&b[..32]);
        id_key.copy_from_slice(&b[32..]);
        Some(MasterKey { seal_key, id_key })
    }
}

fn seal_with(key: &[u8; 32], plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let cipher = Aes256Gcm::new(key.into());
    let nonce: [u8; NONCE_LEN] = random_bytes();
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .expect("AES-GCM encryption of an in-memory buffer cannot fail");
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

fn open_with(key: &[u8; 32], sealed: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < NONCE_LEN + 16 {
        return None;
    }
    let cipher = Aes256Gcm::new(key.into());
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
        .ok()
}

/// Argon2id cost parameters, stored with each key so they can change per key.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl KdfParams {
    /// The largest costs a key file may ask for (1 GiB, 16 passes: about 15 times
    /// the default). A hostile key file still costs a derivation at this price, which
    /// is why opening tries the key that opened last first, then the cheapest, and at
    /// most a few.
    pub const MAX_MEMORY_KIB: u32 = 1 << 20;
    /// See [`KdfParams::MAX_MEMORY_KIB`].
    pub const MAX_ITERATIONS: u32 = 16;
    /// See [`KdfParams::MAX_MEMORY_KIB`].
    pub const MAX_PARALLELISM: u32 = 64;

    /// The work one derivation takes, for ordering: memory times passes.
    pub fn cost(&self) -> u64 {
        u64::from(self.memory_kib) * u64::from(self.iterations)
    }

    /// Checks the costs against argon2's minimums and pgvault's maximums.
    ///
    /// Errors: `Corrupt` naming the parameter out of range.
    pub fn check(&self) -> Result<()> {
        let ok = (8..=Self::MAX_MEMORY_KIB).contains(&self.memory_kib)
            && (1..=Self::MAX_ITERATIONS).contains(&self.iterations)
            && (1..=Self::MAX_PARALLELISM).contains(&self.parallelism)
            && self.memory_kib >= 8 * self.parallelism;
        if ok {
            Ok(())
        } else {
            Err(Error::Corrupt(format!(
                "Key derivation costs {} KiB, {} passes, {} lanes are out of range (at most {} KiB, {} passes, {} lanes)",
                self.memory_kib,
                self.iterations,
                self.parallelism,
                Self::MAX_MEMORY_KIB,
                Self::MAX_ITERATIONS,
                Self::MAX_PARALLELISM
            )))
        }
    }
}

impl Default for KdfParams {
    /// 64 MiB and 3 passes: about half a second here, which is paid once per command.
    fn default() -> Self {
        KdfParams {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
        }
    }
}

/// A passphrase's key file: the master key sealed under an argon2id-derived key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyFile {
    pub created: chrono::DateTime<chrono::Utc>,
    pub hostname: String,
    pub kdf: String,
    pub kdf_params: KdfParams,
    #[serde(with = "hex_bytes")]
    pub salt: Vec<u8>,
    #[serde(with = "hex_bytes")]
    pub sealed_master_key: Vec<u8>,
}

const KEYFILE_AAD: &[u8] = b"pgvault keyfile v1";

fn derive(passphrase: &[u8], salt: &[u8], p: KdfParams) -> Result<Zeroizing<[u8; 32]>> {
    p.check()?;
    let params = argon2::Params::new(p.memory_kib, p.iterations, p.parallelism, Some(32))
        .map_err(|e| Error::Corrupt(format!("Invalid key derivation parameters: {e}")))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase, salt, out.as_mut())
        .map_err(|e| Error::Corrupt(format!("Key derivation failed: {e}")))?;
    Ok(out)
}

impl KeyFile {
    /// Wraps `master` under `passphrase`.
    ///
    /// Errors: `Corrupt` when the KDF parameters are out of argon2's range.
    pub fn wrap(master: &MasterKey, passphrase: &[u8], params: KdfParams) -> Result<Self> {
        let salt: [u8; 32] = random_bytes();
        let kek = derive(passphrase, &salt, params)?;
        Ok(KeyFile {
            created: chrono::Utc::now(),
            hostname: crate::host::hostname(),
            kdf: "argon2id".into(),
            kdf_params: params,
            salt: salt.to_vec(),
            sealed_master_key: seal_with(&kek, &master.to_bytes(), KEYFILE_AAD),
        })
    }

    /// Unwraps the master key, or `None` when the passphrase does not fit this key.
    ///
    /// Errors: `Corrupt` when the key file names an unknown KDF or bad parameters.
    pub fn unwrap_key(&self, passphrase: &[u8]) -> Result<Option<MasterKey>> {
        if self.kdf != "argon2id" {
            return Err(Error::Corrupt(format!(
                "Unknown key derivation function {:?}",
                self.kdf
            )));
        }
        let kek = derive(passphrase, &self.salt, self.kdf_params)?;
        Ok(open_with(&kek, &self.sealed_master_key, KEYFILE_AAD)
            .map(Zeroizing::new)
            .and_then(|b| MasterKey::from_bytes(&b)))
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

/// A cheap key derivation, for tests that open many repositories.
#[cfg(test)]
pub(crate) const TEST_KDF: KdfParams = KdfParams {
    memory_kib: 256,
    iterations: 1,
    parallelism: 1,
};

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: KdfParams = TEST_KDF;

    #[test]
    fn seal_round_trips_and_binds_context() {
        let k = MasterKey::generate();
        let sealed = k.seal(b"hello", b"ctx-a");
        assert_eq!(k.open(&sealed, b"ctx-a", "x").unwrap(), b"hello");
        assert!(k.open(&sealed, b"ctx-b", "x").is_err());
        let mut flipped = sealed.clone();
        flipped[20] ^= 1;
        assert_eq!(
            k.open(&flipped, b"ctx-a", "x").unwrap_err().kind(),
            crate::error::ErrorKind::Corrupt
        );
    }

    #[test]
    fn keyfile_opens_only_with_its_passphrase() {
        let k = MasterKey::generate();
        let kf = KeyFile::wrap(&k, b"right", FAST).unwrap();
        let back = kf.unwrap_key(b"right").unwrap().unwrap();
        assert_eq!(back.chunk_id(b"x"), k.chunk_id(b"x"));
        assert!(kf.unwrap_key(b"wrong").unwrap().is_none());
    }

    #[test]
    fn chunk_ids_are_keyed() {
        let a = MasterKey::generate();
        let b = MasterKey::generate();
        assert_eq!(a.chunk_id(b"same"), a.chunk_id(b"same"));
        assert_ne!(a.chunk_id(b"same"), b.chunk_id(b"same"));
        assert_ne!(
            a.chunk_id(b"same"),
            ChunkId(*blake3::hash(b"same").as_bytes())
        );
    }
}
