//! Storage backends: a small object-store trait that knows nothing of what the bytes mean.
//!
//! Keys are `/`-separated relative paths such as `chunks/3f/3fa1…`. Objects are
//! immutable: the repository never overwrites one in place, so a backend needs no
//! read-modify-write support, only put, put-if-absent, get, list and delete.
//!
//! Three backends: `local` (a directory), `s3` (aws-sdk-s3) and `memory` (for fast
//! tests); one conformance suite (`tests/backend.rs`) runs on all three.

pub mod deadline;
pub mod local;
pub mod memory;
#[cfg(feature = "s3")]
pub mod s3;
pub mod s3_location;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::{Error, Result};

/// Where a repository lives, as the user named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local directory (`/srv/backups/footdash`, `file:///srv/...`).
    Local(PathBuf),
    /// `s3://bucket/prefix`.
    S3(String),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::S3(url) => f.write_str(url),
        }
    }
}

impl Location {
    /// Parses a repository location.
    ///
    /// Errors: `InvalidInput` for an empty location, an unknown scheme, or what looks
    /// like a mistyped `s3://` URL (`s3:/bucket`, `S3://bucket`), which would
    /// otherwise quietly become a local directory of that name.
    pub fn parse(location: &str) -> Result<Location> {
        if location.trim().is_empty() {
            return Err(Error::InvalidInput(
                "The repository location is empty: set PGVAULT_REPO or pass --repo".into(),
            ));
        }
        if location.starts_with("s3://") {
            s3_location::parse_location(location)?;
            return Ok(Location::S3(location.to_string()));
        }
        if let Some(path) = location.strip_prefix("file://") {
            return Ok(Location::Local(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = location.split_once("://") {
            return Err(Error::InvalidInput(format!(
                "Repository {location}: unknown scheme {scheme}://; use a directory or s3://bucket/prefix"
            )));
        }
        let lower = location.to_ascii_lowercase();
        if lower.starts_with("s3:") || lower.starts_with("file:") {
            return Err(Error::InvalidInput(format!(
                "Repository {location:?} looks like a mistyped URL: write s3://bucket/prefix (or file:///path), or ./{location} for a local directory of that name"
            )));
        }
        Ok(Location::Local(PathBuf::from(location)))
    }

    /// Opens the backend at this location, every request under `timeouts`. Nothing
    /// is read yet: a missing directory or bucket shows at the first request.
    ///
    /// Errors: `InvalidInput` or `Unavailable` when the S3 client cannot be set up.
    pub async fn connect(
        &self,
        s3_options: &s3_location::S3Options,
        timeouts: deadline::IoTimeouts,
    ) -> Result<Arc<dyn Backend>> {
        Ok(match self {
            Location::Local(p) => Arc::new(local::LocalBackend::with_timeouts(p.clone(), timeouts)),
            #[cfg(feature = "s3")]
            Location::S3(url) => {
                let opts = s3_location::S3Options {
                    timeouts,
                    ..s3_options.clone()
                };
                Arc::new(s3::S3Backend::connect(url, &opts).await?)
            }
            #[cfg(not(feature = "s3"))]
            Location::S3(url) => {
                let _ = (s3_options, timeouts);
                return Err(Error::InvalidInput(format!(
                    "Repository {url}: this pgvault was built without S3 support (cargo feature s3)"
                )));
            }
        })
    }
}

/// One object as a listing reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The key relative to the repository root.
    pub key: String,
    /// The stored size in bytes.
    pub size_bytes: u64,
}

/// One object with its last-modified time, for decisions that depend on age (prune's
/// grace period, stale locks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectStat {
    /// The key relative to the repository root.
    pub key: String,
    /// The stored size in bytes.
    pub size_bytes: u64,
    /// When the store last wrote the object, by the store's clock; `None` when the
    /// backend cannot tell.
    pub modified: Option<chrono::DateTime<chrono::Utc>>,
}

impl From<ObjectStat> for ObjectInfo {
    fn from(o: ObjectStat) -> Self {
        ObjectInfo {
            key: o.key,
            size_bytes: o.size_bytes,
        }
    }
}

/// The object store under a repository.
#[async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Where this backend stores things, for messages: a path or `s3://bucket/prefix`.
    fn location(&self) -> String;

    /// Makes the place the repository lives ready to be written: creates an S3
    /// bucket that does not exist yet. Only `init` calls it; every other command
    /// expects the repository to be there and says so when it is not.
    ///
    /// Errors: `Unavailable` or `Io` when the store cannot be reached or written.
    async fn prepare_root(&self) -> Result<()> {
        Ok(())
    }

    /// Stores `data` under `key`, replacing nothing that the repository relies on:
    /// callers use it only for content-addressed keys whose content is fixed by the key.
    ///
    /// Errors: `Unavailable` or `Io` when the store cannot be written.
    async fn put(&self, key: &str, data: Vec<u8>) -> Result<()>;

    /// Stores `data` under `key` only if no object has that key yet. Returns `false`,
    /// storing nothing, when the key already exists. Of several concurrent callers
    /// for one key exactly one gets `true` (`O_EXCL`-like locally, a conditional
    /// `If-None-Match: *` put on S3). Callers store unique bytes (random ids, salts or
    /// nonces): a backend may recognise its own earlier attempt by them after a lost
    /// answer, and then reports `true`.
    ///
    /// Errors: `InvalidInput` when the store does not support conditional writes;
    /// `Unavailable` or `Io` when the store cannot be written.
    async fn put_if_absent(&self, key: &str, data: Vec<u8>) -> Result<bool>;

    /// Reads a whole object.
    ///
    /// Errors: `NotFound` when there is no such key; `Unavailable` or `Io` otherwise.
    async fn get(&self, key: &str) -> Result<Vec<u8>>;

    /// Whether an object exists.
    ///
    /// Errors: `Unavailable` or `Io` when the store cannot be asked.
    async fn exists(&self, key: &str) -> Result<bool>;

    /// Every object whose key starts with `prefix`, in no particular order, with its
    /// size and last-modified time (a file's mtime, S3's `LastModified`). All of them
    /// or an error: a partial listing must never pass for a whole one, or prune would
    /// delete chunks it did not see referenced.
    ///
    /// Errors: `Unavailable` or `Io` when the store cannot be listed; `Corrupt` when
    /// the store's answer cannot be a whole listing.
    async fn list_stat(&self, prefix: &str) -> Result<Vec<ObjectStat>>;

    /// [`Backend::list_stat`] without the times.
    ///
    /// Errors: as [`Backend::list_stat`].
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        Ok(self
            .list_stat(prefix)
            .await?
            .into_iter()
            .map(ObjectInfo::from)
            .collect())
    }

    /// Removes an object; removing a missing object is not an error.
    ///
    /// Errors: `Unavailable` or `Io` when the store cannot be written.
    async fn delete(&self, key: &str) -> Result<()>;
}
