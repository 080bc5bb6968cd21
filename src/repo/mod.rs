//! The repository: keys, chunks and snapshots on top of any backend.

pub mod check;
pub mod format;
pub mod history;
pub mod keys;
pub mod lock;
pub mod manifest;
pub mod prune;
pub mod reader;
pub mod restore;
pub mod retention;
pub mod status;
pub mod wal;
pub mod writer;

use std::sync::Arc;

use crate::backend::Backend;
use crate::chunker::ChunkerParams;
use crate::crypto::{ChunkId, KdfParams, KeyFile, MasterKey};
use crate::error::{Error, ErrorKind, Result};
use crate::index::{CachedChunk, Index};
use format::RepoConfig;
pub use manifest::{BackupStats, ChunkRef, SnapshotKind, SnapshotManifest};

/// Choices fixed when a repository is created.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub chunker: ChunkerParams,
    pub zstd_level: i32,
    pub kdf: KdfParams,
    /// Store new chunks that resemble stored ones as deltas on them.
    pub delta: bool,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            chunker: ChunkerParams::default(),
            zstd_level: 3,
            kdf: KdfParams::default(),
            delta: true,
        }
    }
}

/// An open repository: its backend, config, master key and local index.
#[derive(Debug, Clone)]
pub struct Repository {
    backend: Arc<dyn Backend>,
    config: RepoConfig,
    key: MasterKey,
    /// The id of the key file that opened this repository.
    key_id: String,
    index: Index,
}

fn key_file_key(key_id: &str) -> String {
    format!("keys/{key_id}")
}

/// Whether the store honours conditional creates: of two `put_if_absent` calls on one
/// fresh key, the second must be refused. A store that ignores `If-None-Match`
/// silently overwrites instead, and one that does not know it refuses the header.
///
/// Errors: backend errors other than "conditional writes are not supported".
async fn probe_conditional_writes(backend: &dyn Backend) -> Result<bool> {
    let key = format!(
        "probe-conditional-write-{}",
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
    /// Creates a repository in an empty location and returns it open.
    ///
    /// Errors: `InvalidInput` when the location already holds objects (a repository
    /// or anything else) or the options are out of range; backend errors otherwise.
    pub async fn init(
        backend: Arc<dyn Backend>,
        passphrase: &[u8],
        opts: InitOptions,
    ) -> Result<Self> {
        opts.chunker.validate()?;
        let location = backend.location();
        backend.prepare_root().await?;
        let existing = backend.list("").await?;
        if !existing.is_empty() {
            let holds_repo = existing.iter().any(|o| o.key == "config")
                && backend
                    .get("config")
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
        if !conditional_writes {
            tracing::warn!(
                "The store under {location} does not honour conditional writes (If-None-Match: *): adding keys will be refused"
            );
        }
        // A delta names its base, and prune keeps the base for it; that holds only if
        // no writer can replace a chunk object with one built differently, which takes
        // conditional creates.
        if opts.delta && !conditional_writes {
            tracing::warn!(
                "The store under {location} does not honour conditional writes: delta chunks are off"
            );
        }
        let config = RepoConfig::new(
            opts.chunker,
            opts.zstd_level,
            conditional_writes,
            opts.delta && conditional_writes,
        );
        let key = MasterKey::generate();
        let kf = KeyFile::wrap(&key, passphrase, opts.kdf)?;
        let key_id = keys::new_key_id();
        let kf_bytes = serde_json::to_vec_pretty(&kf).expect("key file serialises");
        let config_bytes = serde_json::to_vec_pretty(&config).expect("config serialises");
        // The config goes last: a location with a config is a usable repository.
        // Where conditional creates are not honoured, the emptiness check above is
        // all the protection there is; plain puts at least do not fail on such stores.
        let created = if conditional_writes {
            backend
                .put_if_absent(&key_file_key(&key_id), kf_bytes)
                .await?;
            backend.put_if_absent("config", config_bytes).await?
        } else {
            backend.put(&key_file_key(&key_id), kf_bytes).await?;
            backend.put("config", config_bytes).await?;
            true
        };
        if !created {
            return Err(Error::AlreadyExists {
                what: "A repository config".into(),
                location,
            });
        }
        let index = Index::for_repo(&config.repo_id);
        Ok(Repository {
            backend,
            config,
            key,
            key_id,
            index,
        })
    }

    /// Opens an existing repository with a passphrase.
    ///
    /// Errors: `NotFound` when the location holds no repository; `InvalidInput` when it
    /// holds something else; `WrongPassphrase` when no key opens with the passphrase;
    /// backend errors otherwise.
    pub async fn open(backend: Arc<dyn Backend>, passphrase: &[u8]) -> Result<Self> {
        let location = backend.location();
        let config_bytes = match backend.get("config").await {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(Error::NotFound {
                    what: "No pgvault repository (no config object)".into(),
                    location: format!("{location}; run `pgvault init` to create one"),
                })
            }
            Err(e) => return Err(e),
        };
        let config = RepoConfig::parse(&config_bytes, &location)?;
        let mut keys = backend.list("keys/").await?;
        keys.sort_by(|a, b| a.key.cmp(&b.key));
        for obj in &keys {
            let bytes = backend.get(&obj.key).await?;
            let kf: KeyFile = serde_json::from_slice(&bytes).map_err(|e| {
                Error::Corrupt(format!(
                    "Key file {} in {location} does not parse: {e}",
                    obj.key
                ))
            })?;
            let pass = passphrase.to_vec();
            let opened = tokio::task::spawn_blocking(move || kf.unwrap_key(&pass))
                .await
                .map_err(|e| Error::io("Key derivation task failed", std::io::Error::other(e)))??;
            if let Some(key) = opened {
                let index = Index::for_repo(&config.repo_id);
                let key_id = obj.key.trim_start_matches("keys/").to_string();
                return Ok(Repository {
                    backend,
                    config,
                    key,
                    key_id,
                    index,
                });
            }
        }
        Err(Error::WrongPassphrase(location))
    }

    /// The backend under this repository.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The repository's config.
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    /// The local index cache of this repository.
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// The master key.
    pub fn key(&self) -> &MasterKey {
        &self.key
    }

    /// Where the repository lives, for messages.
    pub fn location(&self) -> String {
        self.backend.location()
    }

    /// Reads, authenticates, decompresses and verifies one chunk; a delta chunk is
    /// rebuilt on its base, read as well.
    ///
    /// Errors: `NotFound` naming the chunk when its object (or its base's) is missing;
    /// `Corrupt` when it or its base fails authentication or verification; backend
    /// errors otherwise.
    pub async fn load_chunk(&self, id: &ChunkId, expected_len: Option<usize>) -> Result<Vec<u8>> {
        let opened = self.open_chunk(id).await?;
        let base = match opened.base() {
            None => None,
            Some(base_id) => Some(self.load_base(id, &base_id).await?),
        };
        let master = self.key.clone();
        let id = *id;
        tokio::task::spawn_blocking(move || {
            format::finish_chunk(&master, &id, &opened, base.as_deref(), expected_len)
        })
        .await
        .map_err(|e| Error::io("Chunk decoding task failed", std::io::Error::other(e)))?
    }

    /// Reads the base `base_id` of delta chunk `id`: a full chunk, since chains are
    /// one link long.
    ///
    /// Errors: as [`Repository::load_chunk`], with messages that name both chunks;
    /// `Corrupt` when the base is itself a delta.
    pub async fn load_base(&self, id: &ChunkId, base_id: &ChunkId) -> Result<Vec<u8>> {
        let context = |e: Error| match e {
            Error::NotFound { what, location } => Error::NotFound {
                what: format!("{what} (the base of chunk {})", id.to_hex()),
                location,
            },
            Error::Corrupt(m) => Error::Corrupt(format!(
                "Chunk {} cannot be rebuilt: {m} (it is its base)",
                id.to_hex()
            )),
            other => other,
        };
        let opened = self.open_chunk(base_id).await.map_err(context)?;
        if opened.base().is_some() {
            return Err(context(Error::Corrupt(format!(
                "Chunk {} is a delta itself",
                base_id.to_hex()
            ))));
        }
        let master = self.key.clone();
        let base_id = *base_id;
        tokio::task::spawn_blocking(move || {
            format::finish_chunk(&master, &base_id, &opened, None, None)
        })
        .await
        .map_err(|e| Error::io("Chunk decoding task failed", std::io::Error::other(e)))?
        .map_err(context)
    }

    /// Downloads, authenticates and decrypts one chunk object.
    ///
    /// Errors: `NotFound` naming the chunk when its object is missing; `Corrupt` when
    /// it fails authentication; backend errors otherwise.
    pub async fn open_chunk(&self, id: &ChunkId) -> Result<format::OpenedChunk> {
        let key = format::chunk_key(id);
        let object = match self.backend.get(&key).await {
            Ok(o) => o,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(Error::NotFound {
                    what: format!("Chunk {}", id.to_hex()),
                    location: self.location(),
                })
            }
            Err(e) => return Err(e),
        };
        let master = self.key.clone();
        let id = *id;
        tokio::task::spawn_blocking(move || format::open_chunk(&master, &id, &object))
            .await
            .map_err(|e| Error::io("Chunk decoding task failed", std::io::Error::other(e)))?
    }

    async fn fetch_manifest(&self, id: &str) -> Result<Vec<u8>> {
        self.backend.get(&format::snapshot_key(id)).await
    }

    fn decode_snapshot(&self, id: &str, sealed: &[u8]) -> Result<SnapshotManifest> {
        let key = format::snapshot_key(id);
        let json = format::decode_manifest(&self.key, &key, sealed)?;
        let m: SnapshotManifest = serde_json::from_slice(&json)
            .map_err(|e| Error::Corrupt(format!("Manifest {key} does not parse: {e}")))?;
        if m.id != id {
            return Err(Error::Corrupt(format!(
                "Manifest {key} names another snapshot, {}",
                m.id
            )));
        }
        Ok(m)
    }

    /// Every snapshot in the repository, oldest first.
    ///
    /// The backend's listing decides which snapshots exist; the index only saves
    /// downloading manifests already seen.
    ///
    /// Errors: `Corrupt` when a manifest fails authentication; backend errors otherwise.
    pub async fn snapshots(&self) -> Result<Vec<SnapshotManifest>> {
        let listed: Vec<String> = self
            .backend
            .list("snapshots/")
            .await?
            .into_iter()
            .filter_map(|o| o.key.strip_prefix("snapshots/").map(str::to_string))
            .collect();
        let cached: std::collections::HashMap<String, Vec<u8>> =
            self.index.cached_manifests()?.into_iter().collect();
        let listed_set: std::collections::HashSet<&String> = listed.iter().collect();
        let stale: Vec<String> = cached
            .keys()
            .filter(|k| !listed_set.contains(k))
            .cloned()
            .collect();
        let mut fresh = Vec::new();
        let mut out = Vec::with_capacity(listed.len());
        for id in &listed {
            let sealed = match cached.get(id) {
                Some(b) => b.clone(),
                None => {
                    let b = match self.fetch_manifest(id).await {
                        Ok(b) => b,
                        // Forgotten between our listing and our read.
                        Err(e) if e.kind() == ErrorKind::NotFound => continue,
                        Err(e) => return Err(e),
                    };
                    fresh.push((id.clone(), b.clone()));
                    b
                }
            };
            out.push(self.decode_snapshot(id, &sealed)?);
        }
        self.index.update_manifests(&fresh, &stale)?;
        out.sort_by(|a, b| a.time.cmp(&b.time).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }

    /// The ids of every snapshot, from the backend's listing alone: cheap enough to
    /// poll, so a long-running mount can tell whether anything changed.
    ///
    /// Errors: backend errors.
    pub async fn snapshot_ids(&self) -> Result<Vec<String>> {
        Ok(self
            .backend
            .list("snapshots/")
            .await?
            .into_iter()
            .filter_map(|o| o.key.strip_prefix("snapshots/").map(str::to_string))
            .collect())
    }

    /// One snapshot's manifest, fetched from the backend.
    ///
    /// Errors: `NotFound` when there is no such snapshot; `Corrupt` when its manifest
    /// fails authentication or does not parse; backend errors otherwise.
    pub async fn snapshot(&self, id: &str) -> Result<SnapshotManifest> {
        let sealed = match self.fetch_manifest(id).await {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(Error::NotFound {
                    what: format!("Snapshot {id}"),
                    location: self.location(),
                })
            }
            Err(e) => return Err(e),
        };
        // Not cached in the index: a mount polls this and must not wait on sled.
        self.decode_snapshot(id, &sealed)
    }

    /// The snapshot whose id is `prefix` or starts with it.
    ///
    /// Errors: `NotFound` when none matches; `InvalidInput` when several do.
    pub async fn resolve_snapshot(&self, prefix: &str) -> Result<SnapshotManifest> {
        if prefix.is_empty() || !prefix.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::InvalidInput(format!(
                "Snapshot id {prefix:?} is not a hex id or id prefix"
            )));
        }
        let prefix = prefix.to_ascii_lowercase();
        let mut matches: Vec<SnapshotManifest> = self
            .snapshots()
            .await?
            .into_iter()
            .filter(|m| m.id.starts_with(&prefix))
            .collect();
        match matches.len() {
            0 => Err(Error::NotFound {
                what: format!("Snapshot {prefix}"),
                location: self.location(),
            }),
            1 => Ok(matches.remove(0)),
            n => Err(Error::InvalidInput(format!(
                "Snapshot id prefix {prefix} is ambiguous: {n} snapshots match ({}); give more digits",
                matches.iter().map(|m| m.short_id().to_string()).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    /// Stores a manifest; refuses to replace an existing one.
    ///
    /// Errors: `AlreadyExists` when the id is taken; backend errors otherwise.
    pub async fn write_manifest(&self, m: &SnapshotManifest) -> Result<()> {
        let key = format::snapshot_key(&m.id);
        let json = serde_json::to_vec(m).expect("manifest serialises");
        let sealed = format::encode_manifest(&self.key, &key, &json);
        if !self.backend.put_if_absent(&key, sealed.clone()).await? {
            return Err(Error::AlreadyExists {
                what: format!("Snapshot {}", m.id),
                location: self.location(),
            });
        }
        self.index
            .update_manifests(&[(m.id.clone(), sealed)], &[])?;
        Ok(())
    }

    /// Recreates the local index from the backend: the chunk objects that manifests
    /// reference (with the bases the manifests name), the sketches the manifests
    /// carry, and the manifests. Returns the number of chunks and snapshots indexed.
    ///
    /// Chunk objects no manifest references are left out: nothing says whether they
    /// are deltas, and a backup that met one in the cache would record no base for
    /// it. A backup asks the backend about those.
    ///
    /// Errors: backend errors, `Corrupt` for a manifest that fails authentication, or
    /// `Io` when the index cannot be written.
    pub async fn rebuild_index(&self) -> Result<(usize, usize)> {
        self.index.remove()?;
        // Before the listing: a prune after this point leaves a newer generation,
        // which makes the next backup drop what we record here.
        let generation = self.prune_generation().await?;
        let sizes: std::collections::HashMap<ChunkId, u64> = self
            .backend
            .list("chunks/")
            .await?
            .into_iter()
            .filter_map(|o| format::chunk_id_from_key(&o.key).map(|id| (id, o.size_bytes)))
            .collect();
        let snaps = self.snapshots().await?;
        let wal = self.wal_chunk_refs(&Default::default()).await?;
        let mut refs: std::collections::HashMap<ChunkId, Option<ChunkId>> = Default::default();
        for r in snaps.iter().flat_map(|m| &m.chunks).chain(&wal) {
            refs.insert(r.id, r.base);
        }
        let chunks: Vec<CachedChunk> = refs
            .into_iter()
            .filter_map(|(id, base)| {
                sizes.get(&id).map(|&size_bytes| CachedChunk {
                    id,
                    size_bytes,
                    base,
                })
            })
            .collect();
        let sketches: Vec<(ChunkId, crate::sketch::Sketch)> = snaps
            .iter()
            .flat_map(|m| m.sketches.iter().cloned())
            .filter(|(id, _)| sizes.contains_key(id))
            .collect();
        let index = self.index.clone();
        let count = chunks.len();
        tokio::task::spawn_blocking(move || {
            index.set_generation(&generation)?;
            index.add_chunks(&chunks)?;
            index.add_sketches(&sketches)
        })
        .await
        .map_err(|e| Error::io("Index task failed", std::io::Error::other(e)))??;
        Ok((count, snaps.len()))
    }
}
