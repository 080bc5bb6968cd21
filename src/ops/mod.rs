//! What is done with a repository: each command of the CLI is one function here,
//! taking an options struct and returning what happened, for the CLI to print.
//!
//! | module | commands |
//! | --- | --- |
//! | [`backup`] | `backup` (dumps and base backups), with its attempt record |
//! | [`snapshots`] | `snapshots`, `cat`, `index rebuild` |
//! | [`keys`] | `key list/add/remove/passwd` |
//! | [`wal`] | `wal-push`, `wal-fetch`, `wal list` |
//! | [`agent`] | `wal-agent`, the process behind `wal-push --async` and `wal-fetch --async` |
//! | [`receive`] | `wal-receive` (streaming WAL with pg_receivewal) |
//! | [`restore`] | `restore` (planning a point-in-time recovery, then doing it) |
//! | [`retention`], [`forget`], [`prune`], [`du`], [`locks`] | retention and space |
//! | [`check`], [`drill`], [`status`] | verification and monitoring |

pub mod agent;
pub mod backup;
pub mod check;
pub mod drill;
pub mod du;
pub mod dump_files;
pub mod forget;
pub mod keys;
pub mod locks;
pub mod prune;
pub mod receive;
pub mod restore;
pub mod restore_tree;
pub mod retention;
pub mod snapshots;
pub mod status;
pub mod wal;

use std::path::PathBuf;
use std::sync::Arc;

use crate::backend::deadline::IoTimeouts;
use crate::backend::local::LocalBackend;
use crate::backend::s3_location::S3Options;
use crate::backend::{Backend, Location};
use crate::error::{Error, Result};
use crate::store::records::{spool, Record};
use crate::store::{InitOptions, Repository};

/// Everything needed to reach a repository: where it is, how to talk to S3, the
/// passphrase, and this machine's cache directory.
#[derive(Debug, Clone)]
pub struct RepoAccess {
    pub location: Location,
    pub s3: S3Options,
    /// The deadlines of every request to the store.
    pub timeouts: IoTimeouts,
    /// Wiped from memory when dropped.
    pub passphrase: zeroize::Zeroizing<String>,
    pub cache_root: PathBuf,
}

impl RepoAccess {
    /// The backend, not yet asked anything.
    ///
    /// Errors: as [`Location::connect`].
    pub async fn backend(&self) -> Result<Arc<dyn Backend>> {
        self.location.connect(&self.s3, self.timeouts).await
    }

    /// Opens the repository.
    ///
    /// Errors: `NotFound` when there is no repository there (a local directory that
    /// does not exist is named as such); otherwise as [`Repository::open`].
    pub async fn open(&self) -> Result<Repository> {
        require_repository_dir(&self.location, self.timeouts).await?;
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

/// Keeps `record` in the repository when it is open, else in this machine's spool for
/// the next command that reaches the repository. Never fails: a record describes an
/// outcome and must not change it.
pub(crate) async fn record_or_spool<R: Record>(
    access: &RepoAccess,
    repo: Option<&Repository>,
    record: &R,
) {
    match repo {
        Some(repo) => {
            repo.record_or_spool(record).await;
            repo.flush_spool(usize::MAX).await;
        }
        None => {
            // Keyed by the location as the backend spells it, so that the next
            // command that opens the repository finds it.
            let location = match access.backend().await {
                Ok(b) => b.location(),
                Err(_) => access.location.to_string(),
            };
            match spool(&access.cache_root, &location, record) {
                Ok(p) => tracing::info!("Record kept in {} for the next command", p.display()),
                Err(e) => tracing::warn!("Cannot record the outcome: {e}"),
            }
        }
    }
}

/// Refuses a local repository directory that does not exist, before anything else
/// (a passphrase prompt, say) is asked for.
///
/// Errors: `NotFound` naming the directory; `Unavailable` when its file system does
/// not answer within the deadline.
pub async fn require_repository_dir(location: &Location, timeouts: IoTimeouts) -> Result<()> {
    let Location::Local(root) = location else {
        return Ok(());
    };
    if LocalBackend::with_timeouts(root.clone(), timeouts)
        .root_exists()
        .await?
    {
        return Ok(());
    }
    Err(Error::NotFound {
        what: "Repository directory".into(),
        location: format!("{}; run `pgvault init` to create one", root.display()),
    })
}

#[cfg(test)]
mod tests;
