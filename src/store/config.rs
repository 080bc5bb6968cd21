//! The `config` object: the parameters fixed when a repository is created.
//!
//! It is read before any key is opened (it says what the repository is), so it is
//! stored as plain JSON, but it carries a tag keyed from the master key: once a key
//! opens, a config whose chunk sizes, zstd level, id or flags were edited in the
//! bucket is refused. Values that could do harm before the tag can be checked (an id
//! that becomes a local path, chunk sizes FastCDC asserts on) are checked on parse.

use serde::{Deserialize, Serialize};

use crate::chunker::ChunkerParams;
use crate::crypto::MasterKey;
use crate::error::{Error, Result};

/// The repository format this build writes. Version 2 keeps WAL under the system
/// identifier of its cluster (`wal/<system>/...`); a version 1 repository is read
/// as it is and raised to 2 before its first such WAL file is written, so that a
/// pgvault that knows only version 1 refuses it rather than miss that WAL (its
/// prune would free the chunks, its wal-fetch would call the files not archived).
/// Version 3 adds dumps stored with their compressed table data as text (the
/// manifest's `recreation`), which an older pgvault would serve as the file itself:
/// a repository is raised to 3 before the first such dump is committed.
/// Version 4 adds spans re-created through correction records (gzipped SQL dumps,
/// [`crate::recreate::SpanCodec::Preflate`]), which version 3 would take for zlib
/// spans; a re-created dump raises the repository to 4 as it raised it to 3.
/// Version 5 adds spans re-created from the text before them (a long gzip member
/// cut into spans, [`crate::recreate::SpanCodec::PreflateAfter`]), whose manifests
/// version 4 cannot read; raised the same way.
pub const FORMAT_VERSION: u32 = 5;
/// The oldest repository format this build reads.
pub const OLDEST_FORMAT_VERSION: u32 = 1;

/// The plaintext `config` object: everything needed before a key is opened.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepoConfig {
    /// Always "pgvault": tells a pgvault repository from any other JSON file.
    pub kind: String,
    pub format_version: u32,
    pub repo_id: String,
    pub created: chrono::DateTime<chrono::Utc>,
    pub chunker: ChunkerParams,
    /// The zstd level of chunks stored in full.
    pub zstd_level: i32,
    /// The zstd level of delta chunks; repositories made before it was recorded used
    /// `zstd_level` for both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_zstd_level: Option<i32>,
    /// Whether the store refused the second of two conditional creates of one key
    /// when the repository was made. Where it did not, creating objects that must
    /// not be overwritten (keys, locks) is unsafe and refused. Repositories made
    /// before this was recorded were local, where `O_EXCL` always holds.
    #[serde(default = "conditional_writes_default")]
    pub conditional_writes: bool,
    /// Whether a new chunk that resembles a stored one is stored as a delta on it.
    /// Repositories made before deltas existed have none.
    #[serde(default)]
    pub delta: bool,
    /// The authentication tag of every other field (hex), keyed from the master key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

fn conditional_writes_default() -> bool {
    true
}

impl RepoConfig {
    /// A config for a new repository.
    pub fn new(
        chunker: ChunkerParams,
        zstd_level: i32,
        delta_zstd_level: i32,
        conditional_writes: bool,
        delta: bool,
    ) -> Self {
        RepoConfig {
            conditional_writes,
            delta,
            kind: "pgvault".into(),
            format_version: FORMAT_VERSION,
            repo_id: hex::encode(crate::crypto::random_bytes::<16>()),
            created: chrono::Utc::now(),
            chunker,
            zstd_level,
            delta_zstd_level: Some(delta_zstd_level),
            tag: None,
        }
    }

    /// The zstd level of delta chunks.
    pub fn delta_level(&self) -> i32 {
        self.delta_zstd_level.unwrap_or(self.zstd_level)
    }

    /// The bytes the tag covers: every field but the tag, as stored.
    fn tagged_bytes(&self) -> Vec<u8> {
        let untagged = RepoConfig {
            tag: None,
            ..self.clone()
        };
        serde_json::to_vec(&untagged).expect("config serialises")
    }

    /// Sets the tag under `key`.
    pub fn sign(&mut self, key: &MasterKey) {
        self.tag = Some(key.config_tag(&self.tagged_bytes()).to_hex().to_string());
    }

    /// Checks the tag under `key`, once a key has opened.
    ///
    /// Errors: `Corrupt` when the tag is missing or does not match: the config was
    /// edited (or made by a pgvault from before configs were authenticated).
    pub fn verify(&self, key: &MasterKey, location: &str) -> Result<()> {
        let want = key.config_tag(&self.tagged_bytes());
        let ok = self
            .tag
            .as_deref()
            .and_then(|t| blake3::Hash::from_hex(t).ok())
            // blake3's Hash compares in constant time.
            .is_some_and(|t| t == want);
        if ok {
            Ok(())
        } else {
            Err(Error::Corrupt(format!(
                "Repository {location} has a config object that fails authentication: it was edited (chunk sizes, zstd level, id or flags), or written by a pgvault older than 0.1 that did not sign it"
            )))
        }
    }

    /// Parses and checks a stored config.
    ///
    /// Errors: `InvalidInput` when the bytes are not a pgvault config, or name a
    /// format version this build does not know; `Corrupt` when its repository id,
    /// chunk sizes or zstd level are impossible.
    pub fn parse(bytes: &[u8], location: &str) -> Result<Self> {
        let cfg: RepoConfig = serde_json::from_slice(bytes)
            .ok()
            .filter(|c: &RepoConfig| c.kind == "pgvault")
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "{location} is not a pgvault repository: its config object is not pgvault's"
                ))
            })?;
        if !is_repo_id(&cfg.repo_id) {
            return Err(Error::Corrupt(format!(
                "Repository {location} has a config whose repo_id {:?} is not 32 hex digits: it was edited, or it is not pgvault's",
                cfg.repo_id
            )));
        }
        if let Err(e) = cfg.chunker.validate() {
            return Err(Error::Corrupt(format!(
                "Repository {location} has a config with impossible chunk sizes: {e}"
            )));
        }
        for level in [cfg.zstd_level, cfg.delta_level()] {
            if !(-7..=22).contains(&level) {
                return Err(Error::Corrupt(format!(
                    "Repository {location} has a config with zstd level {level}, outside -7..=22"
                )));
            }
        }
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&cfg.format_version) {
            return Err(Error::InvalidInput(format!(
                "Repository {location} has format version {}, this pgvault reads versions \
                 {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION}",
                cfg.format_version
            )));
        }
        Ok(cfg)
    }
}

/// Whether `id` has the form every repository id has: 32 lowercase hex digits. The
/// id names this machine's cache directory, so nothing else may reach a path.
pub fn is_repo_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}
