//! The repository as storage: what each object is and where it lives, how a stream
//! becomes chunks and a manifest (the write path), how a file is read back (the read
//! path), the WAL archive, keys, locks, history records, and keeping this machine's
//! index in step with the store. It decides nothing about policy: `ops` does.
//!
//! | module | what |
//! | --- | --- |
//! | [`layout`] | every object key and prefix |
//! | [`config`], [`format`], [`manifest`] | the config, the sealed envelopes, the manifests |
//! | [`keys`] | passphrases: key files wrapping the master key |
//! | [`chunks`] | one chunk: store if missing (full or delta), load and verify |
//! | [`writer`], [`reader`] | a whole file: ingest a stream, read at any offset |
//! | [`snapshots`] | the manifests: list, resolve an id, commit |
//! | [`wal`] | archived WAL files |
//! | [`lock`] | shared and exclusive locks |
//! | [`records`] | history: backup attempts, drills, checks |
//! | [`sync`] | prune markers and the local index: what this machine may trust |
//! | [`cache`] | this machine's files for a repository |

pub mod cache;
pub mod chunks;
pub mod config;
pub mod format;
pub mod keys;
pub mod layout;
pub mod lock;
pub mod manifest;
pub mod reader;
pub mod records;
pub mod snapshots;
pub mod sync;
pub mod table_reader;
pub mod wal;
pub mod writer;

use std::path::Path;
use std::sync::Arc;

use crate::backend::Backend;
use crate::blocking::blocking;
use crate::chunker::ChunkerParams;
use crate::crypto::{KdfParams, KeyFile, MasterKey};
use crate::error::{Error, ErrorKind, Result};
use crate::index::Index;
use cache::RepoCache;
use config::RepoConfig;
pub use manifest::{BackupStats, ChunkRef, SnapshotKind, SnapshotManifest};
use zeroize::Zeroizing;

/// The default zstd level of chunks stored in full. Level 2 is both smaller and
/// faster than 3 on what pgvault stores, measured on 256 KiB pieces of a FootDash
/// cluster's relation files (level 2: 195.2 MB at 162 MB/s; 3: 198.9 MB at 131 MB/s;
/// 1: 199.6 MB) and of a `-Z0` dump (2: 119.1 MB; 3: 120.6 MB): at this size zstd's
/// level 3 looks for 4-byte matches, which on page and row data cost more in literals
/// and offsets than they save. Level 4 and up search lazily and run at half the speed.
pub const DEFAULT_ZSTD_LEVEL: i32 = 2;

/// The default zstd level of delta chunks. Against a base, level 3 finds what level 2
/// misses (on the same relation files a day apart, level 2's deltas were 1.10x level
/// 3's, level 1's 16x); higher levels shrink deltas by a tenth at a third more time,
/// and the nightly backup is bounded by that time.
pub const DEFAULT_DELTA_ZSTD_LEVEL: i32 = 3;

/// Choices fixed when a repository is created.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub chunker: ChunkerParams,
    /// The zstd level of chunks stored in full.
    pub zstd_level: i32,
    /// The zstd level of delta chunks.
    pub delta_zstd_level: i32,
    pub kdf: KdfParams,
    /// Store new chunks that resemble stored ones as deltas on them.
    pub delta: bool,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            chunker: ChunkerParams::default(),
            zstd_level: DEFAULT_ZSTD_LEVEL,
            delta_zstd_level: DEFAULT_DELTA_ZSTD_LEVEL,
            kdf: KdfParams::default(),
            delta: true,
        }
    }
}

/// An open repository: its backend, config, master key and this machine's cache.
#[derive(Debug, Clone)]
pub struct Repository {
    backend: Arc<dyn Backend>,
    config: RepoConfig,
    key: MasterKey,
    /// The id of the key file that opened this repository.
    key_id: String,
    cache: RepoCache,
    /// Base chunks read lately, shared by clones (one process, one cache).
    bases: chunks::BaseCache,
    /// Set once the stored config is known to be of the current format.
    format_current: Arc<tokio::sync::OnceCell<()>>,
    /// The system whose WAL the unnamespaced layout holds, once looked up: that
    /// layout is no longer written for a known system, so the answer stands.
    unnamespaced_owner: Arc<tokio::sync::OnceCell<Option<u64>>>,
}

/// Memory for base chunks kept by [`chunks::BaseCache`]: sixteen 256 KiB bases, enough
/// for the deltas read side by side (see there why it is no larger).
const BASE_CACHE_BYTES: usize = 4 << 20;

/// How many key files one open tries: each costs a key derivation.
const MAX_KEY_FILES_TRIED: usize = 16;

/// Whether the store honours conditional creates: of two `put_if_absent` calls on one
/// fresh key, the second must be refused. A store that ignores `If-None-Match`
/// silently overwrites instead, and one that does not know it refuses the header.
///
/// Errors: backend errors other than "conditional writes are not supported".
async fn probe_conditional_writes(backend: &dyn Backend) -> Result<bool> {
    let key = format!(
        "{}{}",
        layout::CONDITIONAL_WRITE_PROBE,
        hex::encode(crate::crypto::random_bytes::<8>())
    );
    let unsupported = |e: &Error| e.kind() == ErrorKind::InvalidInput;
    let honoured = match backend.put_if_absent(&key, b"first".to_vec()).await {
        Ok(true) => match backend.put_if_absent(&key, b"second".to_vec()).await {
            Ok(created_again) => !created_again,
            Err(e) if unsupported(&e) => false,
            Err(e) => return Err(e),
        },
        // A fresh random key that already exists: the store cannot be trusted.
        Ok(false) => false,
        Err(e) if unsupported(&e) => false,
        Err(e) => return Err(e),
    };
    backend.delete(&key).await?;
    Ok(honoured)
}

impl Repository {
    /// Creates a repository in an empty location and returns it open, with its local
    /// files under `cache_root`. A store that does not honour conditional creates gets
    /// a repository without deltas, in which adding keys is refused: the caller warns
    /// about it, after `config().conditional_writes`.
    ///
    /// Errors: `InvalidInput` when the location already holds objects (a repository
    /// or anything else) or the options are out of range; backend errors otherwise.
    pub async fn init(
        backend: Arc<dyn Backend>,
        passphrase: &[u8],
        opts: InitOptions,
        cache_root: &Path,
    ) -> Result<Self> {
        opts.chunker.validate()?;
        // What `open` refuses, `init` must not write.
        for level in [opts.zstd_level, opts.delta_zstd_level] {
            if !(-7..=22).contains(&level) {
                return Err(Error::InvalidInput(format!(
                    "zstd level {level} is outside -7..=22"
                )));
            }
        }
        let location = backend.location();
        backend.prepare_root().await?;
        let existing = backend.list("").await?;
        if !existing.is_empty() {
            let holds_repo = existing.iter().any(|o| o.key == layout::CONFIG)
                && backend
                    .get(layout::CONFIG)
                    .await
                    .is_ok_and(|b| RepoConfig::parse(&b, &location).is_ok());
            let what = if holds_repo {
                "already holds a pgvault repository"
            } else {
                "is not empty"
            };
            return Err(Error::InvalidInput(format!(
                "Cannot init {location}: it {what} ({} objects); choose an empty location",
                existing.len()
            )));
        }
        let conditional_writes = probe_conditional_writes(backend.as_ref()).await?;
        // A delta names its base, and prune keeps the base for it; that holds only if
        // no writer can replace a chunk object with one built differently, which takes
        // conditional creates.
        let mut config = RepoConfig::new(
            opts.chunker,
            opts.zstd_level,
            opts.delta_zstd_level,
            conditional_writes,
            opts.delta && conditional_writes,
        );
        let key = MasterKey::generate();
        config.sign(&key);
        let kf = KeyFile::wrap(&key, passphrase, opts.kdf)?;
        let key_id = keys::new_key_id();
        let kf_bytes = serde_json::to_vec_pretty(&kf).expect("key file serialises");
        let config_bytes = serde_json::to_vec_pretty(&config).expect("config serialises");
        // The config goes last: a location with a config is a usable repository.
        // Where conditional creates are not honoured, the emptiness check above is
        // all the protection there is; plain puts at least do not fail on such stores.
        let created = if conditional_writes {
            backend
                .put_if_absent(&layout::key_file(&key_id), kf_bytes)
                .await?;
            backend.put_if_absent(layout::CONFIG, config_bytes).await?
        } else {
            backend.put(&layout::key_file(&key_id), kf_bytes).await?;
            backend.put(layout::CONFIG, config_bytes).await?;
            true
        };
        if !created {
            return Err(Error::AlreadyExists {
                what: "A repository config".into(),
                location,
            });
        }
        let cache = RepoCache::new(cache_root, &config.repo_id);
        Ok(Repository::opened(backend, config, key, key_id, cache))
    }

    /// The repository once a key has opened it; its local cache directory is
    /// created now.
    fn opened(
        backend: Arc<dyn Backend>,
        config: RepoConfig,
        key: MasterKey,
        key_id: String,
        cache: RepoCache,
    ) -> Self {
        cache.prepare();
        Repository {
            backend,
            config,
            key,
            key_id,
            cache,
            bases: chunks::BaseCache::new(BASE_CACHE_BYTES),
            format_current: Arc::new(tokio::sync::OnceCell::new()),
            unnamespaced_owner: Arc::new(tokio::sync::OnceCell::new()),
        }
    }

    /// The cell of [`Repository::unnamespaced_owner`]'s answer.
    pub(crate) fn unnamespaced_owner_cell(&self) -> &Arc<tokio::sync::OnceCell<Option<u64>>> {
        &self.unnamespaced_owner
    }

    /// Raises the stored config to the current format version, if it is older,
    /// before something only the current format has is written (see
    /// [`config::FORMAT_VERSION`]).
    ///
    /// Errors: `Corrupt` when the stored config fails authentication;
    /// `Unavailable` when the location now holds another repository; backend errors.
    pub async fn require_current_format(&self) -> Result<()> {
        if self.config.format_version >= config::FORMAT_VERSION {
            return Ok(());
        }
        self.format_current
            .get_or_try_init(|| async {
                let location = self.location();
                let stored =
                    RepoConfig::parse(&self.backend.get(layout::CONFIG).await?, &location)?;
                if stored.repo_id != self.config.repo_id {
                    return Err(Error::Unavailable(format!(
                        "{location} holds another repository than the one opened"
                    )));
                }
                if stored.format_version >= config::FORMAT_VERSION {
                    return Ok(());
                }
                // Signed anew only what is authentic: an edited config stays refused.
                stored.verify(&self.key, &location)?;
                let mut raised = stored;
                raised.format_version = config::FORMAT_VERSION;
                raised.sign(&self.key);
                let bytes = serde_json::to_vec_pretty(&raised).expect("config serialises");
                self.backend.put(layout::CONFIG, bytes).await?;
                tracing::info!(
                    "Raised repository {location} to format version {}",
                    config::FORMAT_VERSION
                );
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// Opens an existing repository with a passphrase, with its local files under
    /// `cache_root`.
    ///
    /// Errors: `NotFound` when the location holds no repository; `InvalidInput` when it
    /// holds something else; `Corrupt` when its config is impossible or fails
    /// authentication; `WrongPassphrase` when no key opens with the passphrase;
    /// backend errors otherwise.
    pub async fn open(
        backend: Arc<dyn Backend>,
        passphrase: &[u8],
        cache_root: &Path,
    ) -> Result<Self> {
        let location = backend.location();
        let config_bytes = match backend.get(layout::CONFIG).await {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(Error::NotFound {
                    what: "Repository config".into(),
                    location: format!("{location}; run `pgvault init` to create one"),
                })
            }
            Err(e) => return Err(e),
        };
        let config = RepoConfig::parse(&config_bytes, &location)?;
        let cache = RepoCache::new(cache_root, &config.repo_id);
        let remembered = std::fs::read_to_string(cache.last_key()).unwrap_or_default();
        let mut keys = backend.list(layout::KEYS).await?;
        keys.sort_by(|a, b| a.key.cmp(&b.key));
        let mut candidates: Vec<(String, KeyFile)> = Vec::new();
        for obj in keys {
            if obj.size_bytes > layout::SMALL_OBJECT_MAX_BYTES {
                tracing::warn!(
                    "Skipping key file {} in {location}: {} bytes is no key file",
                    obj.key.escape_debug(),
                    obj.size_bytes
                );
                continue;
            }
            let bytes = match backend.get(&obj.key).await {
                Ok(b) => b,
                // Removed (key remove) between the listing and the read.
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            // One damaged or hostile key file must not lock everyone out: skip it
            // and try the others.
            let kf: KeyFile = match serde_json::from_slice(&bytes) {
                Ok(kf) => kf,
                Err(e) => {
                    tracing::warn!(
                        "Skipping key file {} in {location}: it does not parse: {e}",
                        obj.key
                    );
                    continue;
                }
            };
            if let Err(e) = kf.kdf_params.check() {
                tracing::warn!("Skipping key file {} in {location}: {e}", obj.key);
                continue;
            }
            candidates.push((obj.key, kf));
        }
        // Anyone who can write to the bucket can add key files that cost a derivation
        // each: the key that opened here last goes first, then the cheapest, and only
        // so many are tried.
        candidates.sort_by_key(|(key, kf)| (*key != remembered, kf.kdf_params.cost()));
        if candidates.len() > MAX_KEY_FILES_TRIED {
            tracing::warn!(
                "{} key files in {location}; trying the {MAX_KEY_FILES_TRIED} cheapest",
                candidates.len()
            );
            candidates.truncate(MAX_KEY_FILES_TRIED);
        }
        for (obj_key, kf) in candidates {
            tracing::debug!("Trying key file {obj_key}");
            let pass = Zeroizing::new(passphrase.to_vec());
            let key = match blocking("key derivation", move || kf.unwrap_key(&pass)).await? {
                Ok(Some(key)) => key,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!("Skipping key file {obj_key} in {location}: {e}");
                    continue;
                }
            };
            config.verify(&key, &location)?;
            let key_id = obj_key.trim_start_matches(layout::KEYS).to_string();
            let repo = Repository::opened(backend, config, key, key_id, cache);
            if obj_key != remembered {
                let _ = std::fs::write(repo.cache.last_key(), &obj_key);
            }
            return Ok(repo);
        }
        Err(Error::WrongPassphrase(location))
    }

    /// The backend under this repository.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Whether the location still holds this repository: its config names the same
    /// repository id. A long-lived process (the WAL agent) asks, so that it never
    /// writes with an old key into a repository created anew at the same place.
    ///
    /// Errors: backend errors other than a missing config.
    pub async fn is_still_there(&self) -> Result<bool> {
        let location = self.location();
        match self.backend().get(layout::CONFIG).await {
            Ok(bytes) => Ok(RepoConfig::parse(&bytes, &location)
                .is_ok_and(|c| c.repo_id == self.config().repo_id)),
            Err(e) if e.kind() == crate::error::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The repository's config.
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    /// This machine's files for the repository.
    pub fn cache(&self) -> &RepoCache {
        &self.cache
    }

    /// Base chunks read lately.
    pub(crate) fn bases(&self) -> &chunks::BaseCache {
        &self.bases
    }

    /// The local index cache of this repository.
    pub fn index(&self) -> Index {
        self.cache.index()
    }

    /// The master key.
    pub fn key(&self) -> &MasterKey {
        &self.key
    }

    /// Where the repository lives, for messages.
    pub fn location(&self) -> String {
        self.backend.location()
    }

    /// Seals a JSON document stored under `object_key` (a manifest, a lock, a record).
    pub fn seal_json(&self, object_key: &str, json: &[u8]) -> Vec<u8> {
        format::encode_manifest(&self.key, object_key, json)
    }

    /// Reads and unseals the JSON document stored under `object_key`.
    ///
    /// Errors: `NotFound` when there is no such object; `Corrupt` when it fails
    /// authentication; backend errors otherwise.
    pub async fn get_json(&self, object_key: &str) -> Result<Vec<u8>> {
        let sealed = self.backend.get(object_key).await?;
        format::decode_manifest(&self.key, object_key, &sealed)
    }
}

#[cfg(test)]
pub(crate) mod tests;
