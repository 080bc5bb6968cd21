//! `key list/add/remove/passwd`: the passphrases that open a repository.

use crate::crypto::KdfParams;
use crate::error::{Error, Result};
use crate::store::keys::KeyInfo;
use crate::store::Repository;

/// Argon2id costs asked for on the command line; unset ones are the key in use's.
#[derive(Debug, Clone, Copy, Default)]
pub struct KdfOverride {
    pub memory_kib: Option<u32>,
    pub iterations: Option<u32>,
}

impl KdfOverride {
    fn is_empty(&self) -> bool {
        self.memory_kib.is_none() && self.iterations.is_none()
    }
}

/// Every key, the one in use marked.
///
/// Errors: `Corrupt` when a key file does not parse; backend errors.
pub async fn list(repo: &Repository) -> Result<Vec<KeyInfo>> {
    repo.keys().await
}

/// Refuses early, before a passphrase is asked for, what the store cannot do.
///
/// Errors: `InvalidInput` when the store does not honour conditional creates.
pub fn can_add(repo: &Repository) -> Result<()> {
    repo.require_conditional_writes("add a key")
}

/// Adds a passphrase; returns the new key's id.
///
/// Errors: as [`Repository::add_key`].
pub async fn add(repo: &Repository, passphrase: &[u8], kdf: KdfOverride) -> Result<String> {
    let params = if kdf.is_empty() {
        None
    } else {
        let current = repo
            .keys()
            .await?
            .into_iter()
            .find(|k| k.current)
            .map(|k| k.kdf_params)
            .unwrap_or_default();
        Some(KdfParams {
            memory_kib: kdf.memory_kib.unwrap_or(current.memory_kib),
            iterations: kdf.iterations.unwrap_or(current.iterations),
            parallelism: current.parallelism,
        })
    };
    repo.add_key(passphrase, params).await
}

/// Removes a key by id or unique prefix; returns its full id.
///
/// Errors: as [`Repository::remove_key`].
pub async fn remove(repo: &Repository, id: &str) -> Result<String> {
    repo.remove_key(id).await
}

/// Replaces the passphrase in use; returns the old and the new key's ids.
///
/// Errors: `InvalidInput` when KDF costs are given (passwd keeps them) or the store
/// does not honour conditional creates; as [`Repository::change_passphrase`].
pub async fn passwd(
    repo: &mut Repository,
    passphrase: &[u8],
    kdf: KdfOverride,
) -> Result<(String, String)> {
    if !kdf.is_empty() {
        return Err(Error::InvalidInput(
            "`key passwd` keeps the key derivation costs; use `key add` with --kdf-* and `key remove` to change them".into(),
        ));
    }
    let old = repo.key_id().to_string();
    let new = repo.change_passphrase(passphrase).await?;
    Ok((old, new))
}
