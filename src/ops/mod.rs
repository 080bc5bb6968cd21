//! What is done with a repository: each command of the CLI is one function here,
//! taking an options struct and returning what happened, for the CLI to print.
//!
//! | module | commands |
//! | --- | --- |
//! | [`backup`] | `backup` (dumps and base backups), with its attempt record |
//! | [`snapshots`] | `snapshots`, `cat`, `index rebuild` |
//! | [`keys`] | `key list/add/remove/passwd` |
//! | [`wal`] | `wal-push`, `wal-fetch`, `wal list` |
//! | [`restore`] | `restore` (planning a point-in-time recovery, then doing it) |
//! | [`retention`], [`forget`], [`prune`], [`du`], [`locks`] | retention and space |
//! | [`check`], [`drill`], [`status`] | verification and monitoring |

pub mod backup;
pub mod check;
pub mod drill;
pub mod du;
pub mod forget;
pub mod keys;
pub mod locks;
pub mod prune;
pub mod restore;
pub mod retention;
pub mod snapshots;
pub mod status;
pub mod wal;

use std::path::PathBuf;
use std::sync::Arc;

use crate::backend::s3::S3Options;
use crate::backend::{Backend, Location};
use crate::error::{Error, Result};
use crate::store::{InitOptions, Repository};

/// Everything needed to reach a repository: where it is, how to talk to S3, the
/// passphrase, and this machine's cache directory.
#[derive(Debug, Clone)]
pub struct RepoAccess {
    pub location: Location,
    pub s3: S3Options,
    pub passphrase: String,
    pub cache_root: PathBuf,
}

impl RepoAccess {
    /// The backend, not yet asked anything.
    ///
    /// Errors: as [`Location::connect`].
    pub async fn backend(&self) -> Result<Arc<dyn Backend>> {
        self.location.connect(&self.s3).await
    }

    /// Opens the repository.
    ///
    /// Errors: `NotFound` when there is no repository there (a local directory that
    /// does not exist is named as such); otherwise as [`Repository::open`].
    pub async fn open(&self) -> Result<Repository> {
        require_repository_dir(&self.location)?;
        let backend = self.backend().await?;
        Repository::open(backend, self.passphrase.as_bytes(), &self.cache_root).await
    }

    /// Creates a repository.
    ///
    /// Errors: as [`Repository::init`].
    pub async fn init(&self, opts: InitOptions) -> Result<Repository> {
        let backend = self.backend().await?;
        Repository::init(backend, self.passphrase.as_bytes(), opts, &self.cache_root).await
    }
}

/// Refuses a local repository directory that does not exist, before anything else
/// (a passphrase prompt, say) is asked for.
///
/// Errors: `NotFound` naming the directory.
pub fn require_repository_dir(location: &Location) -> Result<()> {
    match location {
        Location::Local(root) if !root.exists() => Err(Error::NotFound {
            what: "Repository directory".into(),
            location: format!("{}; run `pgvault init` to create one", root.display()),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
