//! The snapshot manifests: every backup point in the repository, found by id or id
//! prefix, and committed once every chunk it names is durable.

use super::format;
use super::layout;
use super::manifest::SnapshotManifest;
use super::Repository;
use crate::error::{Error, ErrorKind, Result};

/// Every manifest listed, sorted into those that read and those that do not.
#[derive(Debug, Default)]
struct SnapshotListing {
    manifests: Vec<SnapshotManifest>,
    unreadable: Vec<(String, Error)>,
}

impl Repository {
    async fn fetch_manifest(&self, id: &str) -> Result<Vec<u8>> {
        self.backend().get(&layout::snapshot(id)).await
    }

    fn decode_snapshot(&self, id: &str, sealed: &[u8]) -> Result<SnapshotManifest> {
        let key = layout::snapshot(id);
        let json = format::decode_manifest(self.key(), &key, sealed)?;
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

    /// Every readable snapshot in the repository, oldest first. A manifest that
    /// fails authentication or does not parse is left out with a warning: one damaged
    /// backup point must not stop the others from being listed, read or restored.
    /// Decisions that delete ([`Repository::snapshots_all`]) refuse instead.
    ///
    /// Errors: backend errors.
    pub async fn snapshots(&self) -> Result<Vec<SnapshotManifest>> {
        let listing = self.snapshot_listing().await?;
        for (id, e) in &listing.unreadable {
            tracing::warn!("Leaving out snapshot {id}: {e}");
        }
        Ok(listing.manifests)
    }

    /// Every snapshot in the repository, oldest first, or an error if any manifest
    /// cannot be read: what prune and forget decide from, since the chunks of a
    /// manifest they cannot read must not be freed.
    ///
    /// Errors: `Corrupt` naming the first unreadable manifest (and how many there
    /// are); backend errors.
    pub async fn snapshots_all(&self) -> Result<Vec<SnapshotManifest>> {
        let mut listing = self.snapshot_listing().await?;
        match listing.unreadable.len() {
            0 => Ok(listing.manifests),
            n => {
                let (id, e) = listing.unreadable.swap_remove(0);
                Err(Error::Corrupt(format!(
                    "{n} snapshot manifests in {} cannot be read, e.g. {id}: {e}; refusing to decide what to delete (run `pgvault check`)",
                    self.location()
                )))
            }
        }
    }

    /// The manifests, readable and not. The backend's listing decides which
    /// snapshots exist; the index only saves downloading manifests already seen, and
    /// a cached copy that does not decode is fetched again.
    async fn snapshot_listing(&self) -> Result<SnapshotListing> {
        let listed: Vec<String> = self
            .backend
            .list(layout::SNAPSHOTS)
            .await?
            .into_iter()
            .filter_map(|o| layout::snapshot_id(&o.key).map(str::to_string))
            .collect();
        let cached: std::collections::HashMap<String, Vec<u8>> =
            self.index().cached_manifests().await?.into_iter().collect();
        let listed_set: std::collections::HashSet<&String> = listed.iter().collect();
        let mut stale: Vec<String> = cached
            .keys()
            .filter(|k| !listed_set.contains(k))
            .cloned()
            .collect();
        let mut fresh = Vec::new();
        let mut out = SnapshotListing::default();
        for id in &listed {
            let from_cache = cached
                .get(id)
                .and_then(|b| self.decode_snapshot(id, b).ok());
            let m = match from_cache {
                Some(m) => Ok(m),
                None => {
                    if cached.contains_key(id) {
                        stale.push(id.clone());
                    }
                    let b = match self.fetch_manifest(id).await {
                        Ok(b) => b,
                        // Forgotten between our listing and our read.
                        Err(e) if e.kind() == ErrorKind::NotFound => continue,
                        Err(e) => return Err(e),
                    };
                    let m = self.decode_snapshot(id, &b);
                    if m.is_ok() {
                        fresh.push((id.clone(), b));
                    }
                    m
                }
            };
            match m {
                Ok(m) => out.manifests.push(m),
                Err(e) => out.unreadable.push((id.clone(), e)),
            }
        }
        // Stale entries are removed before fresh ones are added, in one batch.
        stale.retain(|id| !fresh.iter().any(|(f, _)| f == id));
        self.index().update_manifests(fresh, stale).await?;
        out.manifests
            .sort_by(|a, b| a.time.cmp(&b.time).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }

    /// The ids of every snapshot, from the backend's listing alone: cheap enough to
    /// poll, so a long-running mount can tell whether anything changed.
    ///
    /// Errors: backend errors.
    pub async fn snapshot_ids(&self) -> Result<Vec<String>> {
        Ok(self
            .backend
            .list(layout::SNAPSHOTS)
            .await?
            .into_iter()
            .filter_map(|o| layout::snapshot_id(&o.key).map(str::to_string))
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

    /// Stores a manifest; refuses to replace an existing one. A local index that
    /// cannot record it is warned about, not an error: the store is the truth.
    ///
    /// Errors: `AlreadyExists` when the id is taken; backend errors otherwise.
    pub async fn write_manifest(&self, m: &SnapshotManifest) -> Result<()> {
        let key = layout::snapshot(&m.id);
        let json = serde_json::to_vec(m).expect("manifest serialises");
        let sealed = self.seal_json(&key, &json);
        if !self.backend().put_if_absent(&key, sealed.clone()).await? {
            return Err(Error::AlreadyExists {
                what: format!("Snapshot {}", m.id),
                location: self.location(),
            });
        }
        // The snapshot is committed once stored; a local cache that could not take it
        // is brought in line by the next listing, and must not turn a stored backup
        // into a reported failure (which a job would retry).
        if let Err(e) = self
            .index()
            .update_manifests(vec![(m.id.clone(), sealed)], Vec::new())
            .await
        {
            tracing::warn!(
                "Snapshot {} is stored, but the local index missed it: {e}",
                m.id
            );
        }
        Ok(())
    }

    /// Deletes a snapshot's manifest (its chunks stay until a prune), and drops it
    /// from the local manifest cache.
    ///
    /// Errors: backend errors.
    pub async fn delete_snapshot(&self, id: &str) -> Result<()> {
        self.backend().delete(&layout::snapshot(id)).await?;
        if let Err(e) = self
            .index()
            .update_manifests(Vec::new(), vec![id.to_string()])
            .await
        {
            tracing::warn!("Snapshot {id} is deleted, but the local index still holds it: {e}");
        }
        Ok(())
    }
}
