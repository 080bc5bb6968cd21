//! The WAL archive: each segment, `.history` and `.backup` file stored through the
//! same chunk store as everything else, with one small manifest per file under
//! `wal/<timeline>/<name>`. No backup point per segment.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use super::cache::create_private_dir;
use super::layout;
use super::manifest::{ChunkRef, SnapshotManifest};
use super::Repository;
use crate::blocking::joined;
use crate::crypto::ChunkId;
use crate::error::{Error, ErrorKind, Result};
use crate::wal_name::{segment_name, WalFileKind, DEFAULT_SEGMENT_SIZE};

/// One archived WAL file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WalManifest {
    pub name: String,
    pub timeline: u32,
    pub size_bytes: u64,
    /// Keyed hash of the whole file: tells an identical re-push from a different one.
    pub content_id: ChunkId,
    pub chunks: Vec<ChunkRef>,
    /// When it was archived: a segment holds records from before this time.
    pub pushed: chrono::DateTime<chrono::Utc>,
    pub hostname: String,
    /// The cluster that wrote it, from the segment's first page header (absent in
    /// files archived before it was recorded, and in history files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_identifier: Option<u64>,
}

/// The system identifier in a WAL segment's first page: the long page header
/// (`XLP_LONG_HEADER` in `xlp_info`) holds it at byte 24, after the 24-byte
/// standard header, in the machine's byte order (little-endian here).
pub fn segment_system_identifier(data: &[u8]) -> Option<u64> {
    const XLP_LONG_HEADER: u16 = 0x0002;
    let info = u16::from_le_bytes(data.get(2..4)?.try_into().ok()?);
    if info & XLP_LONG_HEADER == 0 {
        return None;
    }
    let sysid = u64::from_le_bytes(data.get(24..32)?.try_into().ok()?);
    (sysid != 0).then_some(sysid)
}

/// What `wal_push` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalPushOutcome {
    /// The file is now durably archived.
    Stored,
    /// The same name with the same content was archived already.
    AlreadyArchived,
}

/// Where a WAL file is cut into chunks: at fixed offsets, the repository's largest
/// chunk size apart. Content-defined cuts buy nothing here: WAL is appended to, never
/// shifted, so a segment shares bytes with another only at the same offsets (the
/// zero-filled tail of a switched segment, the prefix of a `.streamed` copy and the
/// segment it grows into), which fixed cuts find as well. They cost no CPU (FastCDC
/// is a pass over every byte), and bigger chunks mean fewer objects per segment
/// (16 instead of 64 on S3, each one a request) and better compression.
fn wal_cuts(len: usize, size: usize) -> Vec<(usize, usize)> {
    let size = size.max(1);
    (0..len)
        .step_by(size)
        .map(|off| (off, size.min(len - off)))
        .collect()
}

/// The key of a WAL file's manifest.
pub fn wal_key(kind: &WalFileKind, name: &str) -> String {
    layout::wal(kind.timeline(), name)
}

/// One archived file as a listing shows it (no manifest downloaded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalEntry {
    /// The manifest's object key.
    pub key: String,
    pub name: String,
    pub kind: WalFileKind,
}

/// Everything in the archive, by timeline.
#[derive(Debug, Default)]
pub struct WalCatalog {
    pub timelines: BTreeMap<u32, TimelineWal>,
    pub segment_size: u64,
}

/// One timeline's archived files.
#[derive(Debug, Default, Clone)]
pub struct TimelineWal {
    /// Segment numbers, sorted.
    pub segments: Vec<u64>,
    pub history: bool,
    pub backup_files: Vec<String>,
    pub partial_files: Vec<String>,
    /// Segments as `wal-receive` stored them while they were being written.
    pub streamed_files: Vec<String>,
}

impl TimelineWal {
    /// Contiguous runs of segments: `(first, last)` inclusive.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for &s in &self.segments {
            match out.last_mut() {
                Some((_, last)) if *last + 1 == s => *last = s,
                _ => out.push((s, s)),
            }
        }
        out
    }

    /// The first segment missing in `from..=to`, if any.
    pub fn first_missing(&self, from: u64, to: u64) -> Option<u64> {
        (from..=to).find(|s| self.segments.binary_search(s).is_err())
    }
}

impl WalCatalog {
    /// The name of segment `segno` on `timeline`.
    pub fn name(&self, timeline: u32, segno: u64) -> String {
        segment_name(timeline, segno, self.segment_size)
    }
}

impl Repository {
    /// Archives one WAL file. Returns only once the file and its manifest are durable.
    ///
    /// Errors: `InvalidInput` for a name that is not a WAL file name;
    /// `AlreadyExists` when the name is archived with different content (PostgreSQL's
    /// archive_command contract: never overwrite, fail loudly); backend errors.
    pub async fn wal_push(&self, name: &str, data: Vec<u8>) -> Result<WalPushOutcome> {
        let kind = WalFileKind::parse(name)?;
        let key = wal_key(&kind, name);
        let content_id = self.key().chunk_id(&data);
        let cuts = wal_cuts(data.len(), self.config().chunker.max_size_bytes as usize);
        let mut chunks = Vec::with_capacity(cuts.len());
        let mut tasks = JoinSet::new();
        let mut seen = std::collections::HashSet::new();
        for (off, len) in cuts {
            let piece = data[off..off + len].to_vec();
            let id = self.key().chunk_id(&piece);
            chunks.push(ChunkRef::full(id, len as u32));
            // A forced-switch segment is mostly zeros: one zero chunk, stored once.
            if seen.insert(id) {
                let repo = self.clone();
                // WAL is stored whole: a segment is new data, seldom like an earlier one.
                tasks.spawn(async move { repo.put_chunk_if_missing(id, piece, None).await });
            }
        }
        let mut bases = std::collections::HashMap::new();
        while let Some(r) = tasks.join_next().await {
            let c = joined("WAL chunk upload", r)??;
            if let Some(b) = c.base {
                bases.insert(c.id, b);
            }
        }
        // A chunk stored earlier may be a delta: its manifest must name the base.
        for c in &mut chunks {
            c.base = bases.get(&c.id).copied();
        }
        let manifest = WalManifest {
            name: name.to_string(),
            timeline: kind.timeline(),
            size_bytes: data.len() as u64,
            content_id,
            chunks,
            pushed: chrono::Utc::now(),
            hostname: crate::host::hostname(),
            system_identifier: match kind {
                WalFileKind::History { .. } => None,
                _ => segment_system_identifier(&data),
            },
        };
        let json = serde_json::to_vec(&manifest).expect("WAL manifest serialises");
        let sealed = self.seal_json(&key, &json);
        // A store that ignores conditional creates would let a second push replace an
        // archived segment: there, what is archived is read and compared first (a
        // race between two pushes of one name remains; see the README's threat model).
        let already = if self.config().conditional_writes {
            if self.backend().put_if_absent(&key, sealed).await? {
                return Ok(WalPushOutcome::Stored);
            }
            None
        } else {
            match self.wal_manifest(name).await {
                Ok(m) => Some(m),
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    self.backend().put(&key, sealed).await?;
                    return Ok(WalPushOutcome::Stored);
                }
                Err(e) => return Err(e),
            }
        };
        let existing = match already {
            Some(m) => m,
            None => self.wal_manifest(name).await?,
        };
        let ours = segment_system_identifier(&data)
            .filter(|_| !matches!(kind, WalFileKind::History { .. }));
        if existing.content_id == content_id {
            Ok(WalPushOutcome::AlreadyArchived)
        } else if let (Some(theirs), Some(ours)) = (
            existing.system_identifier,
            ours.filter(|o| Some(*o) != existing.system_identifier),
        ) {
            // Two clusters, one archive: their segment names collide and the
            // second would fail here forever, so say what is wrong.
            Err(Error::AlreadyExists {
                what: format!(
                    "WAL file {name} of database system {ours} (different content: it was archived from \
                     database system {theirs}; one repository holds one cluster's WAL, so give this \
                     cluster its own repository)"
                ),
                location: self.location(),
            })
        } else {
            Err(Error::AlreadyExists {
                what: format!(
                    "WAL file {name} with different content ({} bytes archived at {}, {} bytes now)",
                    existing.size_bytes,
                    existing.pushed.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    data.len()
                ),
                location: self.location(),
            })
        }
    }

    /// The manifest of one archived WAL file.
    ///
    /// Errors: `NotFound` when the file is not archived; `InvalidInput` for a bad
    /// name; `Corrupt` when the manifest fails authentication; backend errors.
    pub async fn wal_manifest(&self, name: &str) -> Result<WalManifest> {
        let kind = WalFileKind::parse(name)?;
        let key = wal_key(&kind, name);
        let json = match self.get_json(&key).await {
            Ok(j) => j,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(Error::NotFound {
                    what: format!("WAL file {name}"),
                    location: self.location(),
                })
            }
            Err(e) => return Err(e),
        };
        let m: WalManifest = serde_json::from_slice(&json)
            .map_err(|e| Error::Corrupt(format!("Manifest {key} does not parse: {e}")))?;
        if m.name != name {
            return Err(Error::Corrupt(format!(
                "Manifest {key} describes another WAL file, {}",
                m.name
            )));
        }
        Ok(m)
    }

    /// Reads one archived WAL file whole, verifying every chunk and the whole content.
    ///
    /// Errors: `NotFound` when the file is not archived (and only then); `Corrupt`
    /// when anything fails verification; backend errors.
    pub async fn wal_fetch(&self, name: &str) -> Result<Vec<u8>> {
        let m = self.wal_manifest(name).await?;
        let mut tasks = JoinSet::new();
        for (i, c) in m.chunks.iter().enumerate() {
            let repo = self.clone();
            let c = *c;
            tasks.spawn(async move {
                let data = repo.load_ref(&c).await;
                (i, data)
            });
        }
        let mut parts: Vec<Option<Vec<u8>>> = vec![None; m.chunks.len()];
        while let Some(r) = tasks.join_next().await {
            let (i, data) = joined("WAL chunk read", r)?;
            let data = data.map_err(|e| match e {
                // A chunk gone from an archived file is damage, not "not archived".
                Error::NotFound { what, location } => Error::Corrupt(format!(
                    "{what} of WAL file {name} is missing from {location}"
                )),
                other => other,
            })?;
            parts[i] = Some(data);
        }
        let data: Vec<u8> = parts
            .into_iter()
            .map(|p| p.expect("every chunk task reported"))
            .collect::<Vec<_>>()
            .concat();
        if data.len() as u64 != m.size_bytes || self.key().chunk_id(&data) != m.content_id {
            return Err(Error::Corrupt(format!(
                "WAL file {name} read back different from what was archived"
            )));
        }
        Ok(data)
    }

    /// Reads WAL file `name` for recovery: the archived file, or for a segment that
    /// is not archived (yet), the newest copy `wal-receive` stored while it was being
    /// written. PostgreSQL replays such a copy up to its end and then asks for the
    /// next segment, so a lost primary costs at most what was not yet streamed.
    ///
    /// Errors: as [`Repository::wal_fetch`]: `NotFound` only when neither exists.
    pub async fn wal_fetch_for_recovery(&self, name: &str) -> Result<Vec<u8>> {
        let kind = WalFileKind::parse(name)?;
        // wal-receive replaces copies and stores the segment while we look: a copy
        // that vanishes between the listing and the read means "look again", never
        // "not archived".
        for _ in 0..3 {
            let missing = match self.wal_fetch(name).await {
                Err(e) if e.kind() == ErrorKind::NotFound => e,
                other => return other,
            };
            if !matches!(kind, WalFileKind::Segment { .. }) {
                return Err(missing);
            }
            let Some(streamed) = self.wal_newest_streamed(&kind, name).await? else {
                return Err(missing);
            };
            match self.wal_fetch(&streamed).await {
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                other => {
                    tracing::info!("Serving {streamed} for {name}, which is not archived");
                    return other;
                }
            }
        }
        Err(Error::Unavailable(format!(
            "WAL file {name} and its streamed copies kept changing while being read from {}",
            self.location()
        )))
    }

    /// Deletes the manifest of archived WAL file `name`; its chunks go with the next
    /// prune. For superseded `.streamed` copies: archived WAL is otherwise removed
    /// only by retention.
    ///
    /// Errors: `InvalidInput` for a bad name; backend errors.
    pub async fn wal_delete(&self, name: &str) -> Result<()> {
        let kind = WalFileKind::parse(name)?;
        self.backend().delete(&wal_key(&kind, name)).await
    }

    /// The name of the newest stored `.streamed` copy of segment `name`, if any.
    ///
    /// Errors: backend errors.
    pub async fn wal_newest_streamed(
        &self,
        kind: &WalFileKind,
        name: &str,
    ) -> Result<Option<String>> {
        let prefix = layout::wal(kind.timeline(), &format!("{name}."));
        Ok(self
            .backend()
            .list(&prefix)
            .await?
            .into_iter()
            .filter_map(|o| {
                let n = o.key.rsplit('/').next()?.to_string();
                let (seg, received) = crate::wal_name::parse_streamed(&n)?;
                (seg == name).then_some((received, n))
            })
            .max()
            .map(|(_, n)| n))
    }

    /// Lists the archive by timeline, from object names alone (plus one manifest
    /// for the segment size).
    ///
    /// Errors: backend errors.
    pub async fn wal_catalog(&self) -> Result<WalCatalog> {
        let entries = self.wal_entries().await?;
        let mut cat = WalCatalog {
            segment_size: self.wal_segment_size(&entries).await,
            ..Default::default()
        };
        for e in entries {
            let tl = cat.timelines.entry(e.kind.timeline()).or_default();
            match e.kind {
                WalFileKind::Segment { .. } => tl
                    .segments
                    .push(e.kind.segno(cat.segment_size).expect("a segment")),
                WalFileKind::History { .. } => tl.history = true,
                WalFileKind::Backup { .. } => tl.backup_files.push(e.name),
                WalFileKind::Partial { .. } => tl.partial_files.push(e.name),
                WalFileKind::Streamed { .. } => tl.streamed_files.push(e.name),
            }
        }
        for tl in cat.timelines.values_mut() {
            tl.segments.sort_unstable();
        }
        Ok(cat)
    }

    /// Fetches a WAL file through this machine's spool: a segment prefetched by an
    /// earlier call is taken from the spool; otherwise it is fetched, and the `ahead`
    /// segments after it are fetched at the same time into the spool, so that
    /// recovery's next requests are answered from local disk. Returns the file's bytes.
    ///
    /// Errors: as [`Repository::wal_fetch`] for `name`; problems with the following
    /// segments are not errors (recovery asks for them again).
    pub async fn wal_fetch_spooled(&self, name: &str, ahead: usize) -> Result<Vec<u8>> {
        let kind = WalFileKind::parse(name)?;
        let spool_dir = self.cache().wal_spool();
        let spool = spool_dir.as_path();
        let spooled = spool.join(name);
        if let Ok(data) = std::fs::read(&spooled) {
            let _ = std::fs::remove_file(&spooled);
            // Checked against what was archived before it is handed to PostgreSQL:
            // the spool is only a local copy, and one small manifest read is cheap.
            let m = self.wal_manifest(name).await?;
            if data.len() as u64 == m.size_bytes && self.key().chunk_id(&data) == m.content_id {
                return Ok(data);
            }
            tracing::warn!(
                "Spooled copy of WAL file {name} in {} differs from the archived one: fetching it again",
                spool.display()
            );
        }
        let mut next = JoinSet::new();
        if let WalFileKind::Segment { timeline, .. } = kind {
            let _ = create_private_dir(spool);
            clean_spool(spool);
            // The segment size is only known once one is read; assume the default
            // for prefetching, which only costs a wasted guess on unusual clusters.
            let segno = kind.segno(DEFAULT_SEGMENT_SIZE).expect("a segment");
            for n in 1..=ahead as u64 {
                let next_name = segment_name(timeline, segno + n, DEFAULT_SEGMENT_SIZE);
                let repo = self.clone();
                let spool = spool.to_path_buf();
                next.spawn(async move {
                    if let Ok(data) = repo.wal_fetch(&next_name).await {
                        let tmp = spool.join(format!(".{next_name}.{}", std::process::id()));
                        if write_private(&tmp, &data).is_ok() {
                            let _ = std::fs::rename(&tmp, spool.join(&next_name));
                        }
                    }
                });
            }
        }
        let data = self.wal_fetch_for_recovery(name).await;
        while next.join_next().await.is_some() {}
        data
    }
}

impl Repository {
    /// Every archived WAL file, from one listing of `wal/`, sorted by name; objects
    /// not named like WAL files are left out.
    ///
    /// Errors: backend errors.
    pub async fn wal_entries(&self) -> Result<Vec<WalEntry>> {
        let mut entries: Vec<WalEntry> = self
            .backend()
            .list(layout::WAL)
            .await?
            .into_iter()
            .filter_map(|o| {
                let name = o.key.rsplit('/').next()?.to_string();
                let kind = WalFileKind::parse(&name).ok()?;
                Some(WalEntry {
                    key: o.key,
                    name,
                    kind,
                })
            })
            .collect();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    /// The archive's segment size, read from the newest segment's manifest: clusters
    /// made with initdb --wal-segsize have other sizes than the default.
    async fn wal_segment_size(&self, entries: &[WalEntry]) -> u64 {
        let newest = entries
            .iter()
            .rev()
            .find(|e| matches!(e.kind, WalFileKind::Segment { .. }));
        if let Some(seg) = newest {
            if let Ok(m) = self.wal_manifest(&seg.name).await {
                // PostgreSQL's own range (initdb --wal-segsize 1..1024 MiB); anything
                // else is a file that only looks like a segment.
                if m.size_bytes.is_power_of_two() && (1 << 20..=1 << 30).contains(&m.size_bytes) {
                    return m.size_bytes;
                }
            }
        }
        DEFAULT_SEGMENT_SIZE
    }

    /// The names of all archived WAL files with their timelines, from one listing.
    ///
    /// Errors: backend errors.
    pub async fn wal_names(&self) -> Result<BTreeMap<String, u32>> {
        Ok(self
            .wal_entries()
            .await?
            .into_iter()
            .map(|e| (e.name, e.kind.timeline()))
            .collect())
    }

    /// The chunks of every archived WAL file, except the files whose keys are in
    /// `excluded` (planned for deletion by a dry run).
    ///
    /// Errors: `Corrupt` when a WAL manifest fails authentication; backend errors.
    pub async fn wal_chunk_refs(
        &self,
        excluded: &std::collections::HashSet<String>,
    ) -> Result<Vec<ChunkRef>> {
        let mut tasks = JoinSet::new();
        let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
        for e in self.wal_entries().await? {
            if excluded.contains(&e.key) {
                continue;
            }
            let name = e.name;
            let repo = self.clone();
            let slots = slots.clone();
            tasks.spawn(async move {
                let _slot = slots.acquire_owned().await.expect("never closed");
                match repo.wal_manifest(&name).await {
                    Ok(m) => Ok(m.chunks),
                    // Deleted by a WAL retention between our listing and our read.
                    Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
                    Err(e) => Err(e),
                }
            });
        }
        let mut out = Vec::new();
        while let Some(r) = tasks.join_next().await {
            out.extend(joined("WAL manifest read", r)??);
        }
        Ok(out)
    }

    /// Every chunk object that archived WAL files need (chunks and their bases),
    /// except for the files whose keys are in `excluded`. Prune adds these to the
    /// chunks that snapshots reference.
    ///
    /// Errors: as [`Repository::wal_chunk_refs`].
    pub async fn wal_referenced_chunks(
        &self,
        excluded: &std::collections::HashSet<String>,
    ) -> Result<std::collections::HashSet<ChunkId>> {
        Ok(self
            .wal_chunk_refs(excluded)
            .await?
            .iter()
            .flat_map(ChunkRef::objects)
            .collect())
    }

    /// The keys of archived WAL files that no surviving base backup needs: segments,
    /// `.backup` and `.partial` files before the segment where the oldest surviving base
    /// backup starts. Timeline history files always stay. With no surviving base
    /// backup nothing is unneeded: without one, pgvault cannot tell what the WAL is for.
    ///
    /// Errors: backend errors.
    pub async fn wal_unneeded(&self, surviving_bases: &[&SnapshotManifest]) -> Result<Vec<String>> {
        let Some(oldest) = surviving_bases
            .iter()
            .filter_map(|m| m.base.as_ref())
            .min_by_key(|b| (b.timeline, b.start_lsn))
        else {
            return Ok(Vec::new());
        };
        let entries = self.wal_entries().await?;
        let segment_size = self.wal_segment_size(&entries).await;
        let first_needed = crate::wal_name::segno_of(oldest.start_lsn, segment_size);
        let mut out = Vec::new();
        for e in entries {
            let segno = match e.kind {
                WalFileKind::History { .. } => None,
                WalFileKind::Segment { .. } => e.kind.segno(segment_size),
                // `<segment>.<offset>.backup` and `<segment>.partial` belong to the
                // segment their name starts with.
                WalFileKind::Backup { .. }
                | WalFileKind::Partial { .. }
                | WalFileKind::Streamed { .. } => WalFileKind::parse(&e.name[..24])
                    .ok()
                    .and_then(|k| k.segno(segment_size)),
            };
            if let Some(segno) = segno {
                if e.kind.timeline() <= oldest.timeline && segno < first_needed {
                    out.push(e.key);
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Writes a file only its owner can read: spooled WAL holds every row written.
fn write_private(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?
        .write_all(data)
}

/// Drops spooled segments nobody asked for within an hour (a recovery that stopped
/// early, or a different timeline was chosen).
fn clean_spool(spool: &std::path::Path) {
    let Ok(rd) = std::fs::read_dir(spool) else {
        return;
    };
    for e in rd.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > std::time::Duration::from_secs(3600));
        if old {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::wal_cuts;

    #[test]
    fn wal_cuts_cover_the_file_at_fixed_offsets() {
        assert_eq!(wal_cuts(0, 1 << 20), vec![]);
        assert_eq!(
            wal_cuts(16 << 20, 1 << 20).len(),
            16,
            "a 16 MiB segment is 16 chunks of 1 MiB"
        );
        assert_eq!(
            wal_cuts(2500, 1000),
            vec![(0, 1000), (1000, 1000), (2000, 500)]
        );
    }
}
