//! Key management: several passphrases open one repository, each through its own
//! key file `keys/<id>` that wraps the same master key.
//!
//! Adding or removing a passphrase never re-encrypts data. The flip side: removing a
//! key file stops that passphrase from opening the repository, but whoever kept a copy
//! of the key file and knows its passphrase still holds the master key.

use serde::Serialize;

use super::layout;
use super::Repository;
use crate::blocking::blocking;
use crate::crypto::{KdfParams, KeyFile};
use crate::error::{Error, ErrorKind, Result};

/// One key file, as `key list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    pub id: String,
    pub created: chrono::DateTime<chrono::Utc>,
    pub hostname: String,
    pub kdf_params: KdfParams,
    /// Whether this is the key the repository was opened with.
    pub current: bool,
}

/// A fresh key id: 16 random bytes in hex.
pub(crate) fn new_key_id() -> String {
    hex::encode(crate::crypto::random_bytes::<16>())
}

impl Repository {
    /// The id of the key file this repository was opened with.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Refuses an operation that relies on conditional creates when the store did
    /// not honour them at `init`.
    ///
    /// Errors: `InvalidInput` naming the operation and why it is refused.
    pub fn require_conditional_writes(&self, operation: &str) -> Result<()> {
        if self.config.conditional_writes {
            return Ok(());
        }
        Err(Error::InvalidInput(format!(
            "Cannot {operation} in {}: its store did not honour conditional writes (If-None-Match: *) when the repository was created, so a new object could silently replace another; move the repository to a store that supports them",
            self.location()
        )))
    }

    async fn read_key_file(&self, key: &str) -> Result<KeyFile> {
        let bytes = self.backend.get(key).await?;
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::Corrupt(format!(
                "Key file {key} in {} does not parse: {e}",
                self.location()
            ))
        })
    }

    /// Every key file of the repository, oldest first; one that does not parse is
    /// left out with a warning.
    ///
    /// Errors: backend errors.
    pub async fn keys(&self) -> Result<Vec<KeyInfo>> {
        let mut out = Vec::new();
        for obj in self.backend.list(layout::KEYS).await? {
            let Some(id) = obj.key.strip_prefix(layout::KEYS) else {
                continue;
            };
            let kf = match self.read_key_file(&obj.key).await {
                Ok(kf) => kf,
                // Removed between the listing and the read.
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                // A damaged key file opens nothing; the others are still listed.
                Err(e) if e.kind() == ErrorKind::Corrupt => {
                    tracing::warn!("{e}");
                    continue;
                }
                Err(e) => return Err(e),
            };
            out.push(KeyInfo {
                id: id.to_string(),
                created: kf.created,
                hostname: kf.hostname,
                kdf_params: kf.kdf_params,
                current: id == self.key_id,
            });
        }
        out.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Adds a passphrase: a new key file wrapping the master key. The key derivation
    /// costs default to those of the key in use. Returns the new key's id.
    ///
    /// Errors: `InvalidInput` when the passphrase is empty or the store does not
    /// honour conditional writes; `AlreadyExists` if the random id is taken;
    /// backend errors otherwise.
    pub async fn add_key(&self, passphrase: &[u8], kdf: Option<KdfParams>) -> Result<String> {
        self.require_conditional_writes("add a key")?;
        if passphrase.is_empty() {
            return Err(Error::InvalidInput("The new passphrase is empty".into()));
        }
        let kdf = match kdf {
            Some(k) => k,
            None => {
                self.read_key_file(&layout::key_file(&self.key_id))
                    .await?
                    .kdf_params
            }
        };
        let master = self.key.clone();
        let pass = passphrase.to_vec();
        let kf = blocking("key derivation", move || KeyFile::wrap(&master, &pass, kdf)).await??;
        let id = new_key_id();
        let bytes = serde_json::to_vec_pretty(&kf).expect("key file serialises");
        if !self
            .backend
            .put_if_absent(&layout::key_file(&id), bytes)
            .await?
        {
            return Err(Error::AlreadyExists {
                what: format!("Key {id}"),
                location: self.location(),
            });
        }
        Ok(id)
    }

    /// Removes the key whose id is `id` or starts with it. Refuses the last key (no
    /// one could open the repository again) and the key in use (`change_passphrase`
    /// replaces that one). Returns the full id removed.
    ///
    /// Two concurrent removals of the last two keys are not prevented: that would take
    /// the exclusive repository lock, which waits for every running backup and WAL
    /// push, for an operation an administrator runs by hand.
    ///
    /// Errors: `NotFound` when no key matches; `InvalidInput` when several match or
    /// the key may not be removed; backend errors otherwise.
    pub async fn remove_key(&self, id: &str) -> Result<String> {
        let keys = self.keys().await?;
        let id = id.to_ascii_lowercase();
        let matching: Vec<&KeyInfo> = keys.iter().filter(|k| k.id.starts_with(&id)).collect();
        let key = match matching.as_slice() {
            [] => {
                return Err(Error::NotFound {
                    what: format!("Key {id}"),
                    location: self.location(),
                })
            }
            [k] => *k,
            _ => {
                return Err(Error::InvalidInput(format!(
                    "Key id prefix {id} is ambiguous: {} keys match; give more digits",
                    matching.len()
                )))
            }
        };
        if keys.len() == 1 {
            return Err(Error::InvalidInput(format!(
                "Cannot remove key {}: it is the last key of {}, and without a key nobody can open the repository",
                key.id,
                self.location()
            )));
        }
        if key.current {
            return Err(Error::InvalidInput(format!(
                "Cannot remove key {}: it is the key this command opened {} with; use `pgvault key passwd` to replace it, or open with another passphrase",
                key.id,
                self.location()
            )));
        }
        self.backend.delete(&layout::key_file(&key.id)).await?;
        Ok(key.id.clone())
    }

    /// Replaces the passphrase in use: adds a key for `new_passphrase`, then removes
    /// the key this repository was opened with. Returns the new key's id.
    ///
    /// Errors: as [`Repository::add_key`]; backend errors when the old key cannot be
    /// removed (the new one then works as well as the old).
    pub async fn change_passphrase(&mut self, new_passphrase: &[u8]) -> Result<String> {
        let new_id = self.add_key(new_passphrase, None).await?;
        let old_id = std::mem::replace(&mut self.key_id, new_id.clone());
        self.backend.delete(&layout::key_file(&old_id)).await?;
        Ok(new_id)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::backend::memory::MemoryBackend;
    use crate::backend::Backend;
    use crate::store::InitOptions;

    const FAST: KdfParams = crate::crypto::TEST_KDF;

    fn opts() -> InitOptions {
        InitOptions {
            kdf: FAST,
            ..InitOptions::default()
        }
    }

    #[tokio::test]
    async fn keys_are_added_listed_removed_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new("keys"));
        let repo = Repository::init(backend.clone(), b"one", opts(), dir.path())
            .await
            .unwrap();
        assert!(repo.config().conditional_writes);
        let two = repo.add_key(b"two", None).await.unwrap();
        let keys = repo.keys().await.unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.iter().filter(|k| k.current).count(), 1);
        assert_eq!(keys[1].kdf_params, FAST, "new keys inherit the KDF costs");

        let mut by_two = Repository::open(backend.clone(), b"two", dir.path())
            .await
            .unwrap();
        assert_eq!(by_two.key_id(), two);
        // The key in use cannot be removed, another one can.
        let e = by_two.remove_key(&two[..6]).await.unwrap_err();
        assert!(e.to_string().contains("opened"), "{e}");
        let one = repo.key_id().to_string();
        by_two.remove_key(&one).await.unwrap();
        let e = Repository::open(backend.clone(), b"one", dir.path())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::WrongPassphrase);
        // The last key cannot be removed.
        let e = by_two.remove_key(&two).await.unwrap_err();
        assert!(e.to_string().contains("last key"), "{e}");
        assert_eq!(
            by_two.remove_key("ffff").await.unwrap_err().kind(),
            ErrorKind::NotFound
        );

        let three = by_two.change_passphrase(b"three").await.unwrap();
        assert_eq!(by_two.key_id(), three);
        assert_eq!(by_two.keys().await.unwrap().len(), 1);
        assert!(Repository::open(backend.clone(), b"two", dir.path())
            .await
            .is_err());
        let reopened = Repository::open(backend, b"three", dir.path())
            .await
            .unwrap();
        assert_eq!(
            reopened.key().chunk_id(b"x"),
            repo.key().chunk_id(b"x"),
            "every passphrase opens the same master key"
        );
    }

    #[tokio::test]
    async fn a_store_without_conditional_writes_is_detected_and_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> =
            Arc::new(MemoryBackend::ignoring_conditional_writes("overwriting"));
        let repo = Repository::init(backend.clone(), b"one", opts(), dir.path())
            .await
            .unwrap();
        assert!(!repo.config().conditional_writes);
        assert!(
            backend.list("").await.unwrap().len() == 2,
            "the probe object is removed again"
        );
        let e = repo.add_key(b"two", None).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains("conditional writes"), "{e}");
        // Reading and writing data still works.
        let again = Repository::open(backend, b"one", dir.path()).await.unwrap();
        assert!(!again.config().conditional_writes);
    }
}
