//! This machine's own files for a repository, under one cache directory: the sled
//! index, downloaded history records, the check cursor, the WAL fetch spool, and
//! records waiting for a repository that could not be reached.
//!
//! Everything here can be deleted at any time. It is still private: manifests and
//! WAL hold every row of every table, so directories are made 0700.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::index::Index;

/// The cache directory: `$PGVAULT_CACHE_DIR`, else `$XDG_CACHE_HOME/pgvault`, else
/// `$HOME/.cache/pgvault`.
///
/// Errors: `InvalidInput` when none of those is set: guessing a shared directory
/// such as /tmp would put backup data where other users can reach it.
pub fn default_root() -> Result<PathBuf> {
    let set = |v: &str| std::env::var_os(v).filter(|s| !s.is_empty());
    if let Some(d) = set("PGVAULT_CACHE_DIR") {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = set("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(d).join("pgvault"));
    }
    if let Some(h) = set("HOME") {
        return Ok(PathBuf::from(h).join(".cache/pgvault"));
    }
    Err(Error::InvalidInput(
        "No cache directory: set PGVAULT_CACHE_DIR (or HOME or XDG_CACHE_HOME)".into(),
    ))
}

/// Creates `dir` and its missing parents, each readable by its owner only.
///
/// Errors: `Io` naming the directory.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io_path("create directory", dir, e))
}

/// One repository's files under the cache directory.
#[derive(Debug, Clone)]
pub struct RepoCache {
    root: PathBuf,
    dir: PathBuf,
}

impl RepoCache {
    /// The files of repository `repo_id` under cache directory `root`. The id must
    /// already have been checked to be plain hex (see `store::config`).
    pub fn new(root: &Path, repo_id: &str) -> Self {
        RepoCache {
            root: root.to_path_buf(),
            dir: root.join(repo_id),
        }
    }

    /// Creates this repository's cache directory (and the cache root), private to
    /// this user, so that the index sled creates inside inherits the protection. A
    /// cache that cannot be made is done without, with a warning.
    pub fn prepare(&self) {
        if let Err(e) = create_private_dir(&self.dir) {
            tracing::warn!("Cannot create the local cache: {e}; going without it");
        }
    }

    /// The cache directory all repositories share.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The local index.
    pub fn index(&self) -> Index {
        Index::at(self.dir.join("index"))
    }

    /// Where downloaded history records are kept, sealed.
    pub fn records_dir(&self) -> PathBuf {
        self.dir.join("records")
    }

    /// Where `check --read-data-subset p%` remembers how far it got.
    pub fn check_cursor(&self) -> PathBuf {
        self.dir.join("check-cursor")
    }

    /// Which key file opened the repository last: tried first next time.
    pub fn last_key(&self) -> PathBuf {
        self.dir.join("last-key")
    }

    /// Where `wal-fetch` keeps segments it fetched ahead.
    pub fn wal_spool(&self) -> PathBuf {
        self.dir.join("wal-spool")
    }
}

/// Where records wait for the repository at `location` to be reachable. Keyed by the
/// location, because a repository that cannot be reached cannot tell its id.
pub fn record_spool(root: &Path, location: &str) -> PathBuf {
    let h = blake3::hash(location.as_bytes());
    root.join("spool").join(&h.to_hex().as_str()[..16])
}
