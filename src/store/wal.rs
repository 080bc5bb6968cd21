//! The WAL archive: each segment, `.history` and `.backup` file stored through the
//! same chunk store as everything else, with one small manifest per file under
//! `wal/<system>/<timeline>/<name>`. No backup point per segment.
//!
//! One repository serves a fleet: clusters share chunks (dumps and base backups of a
//! clone deduplicate against the original), while each cluster's WAL lives under its
//! system identifier, so that two clusters writing the same segment names never meet.
//! Files archived before that (`wal/<timeline>/<name>`) are read where they are, never
//! moved: rewriting the archive in place would be a window in which a crash loses WAL.
//! Such a file is attributed to the system its manifest names, or, for the files
//! that name none, to the system of the newest segment in that layout (a repository
//! then held one cluster's WAL: pushes from a second one failed on the first
//! colliding name).

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

/// Which WAL file of a fleet: its database system (`None`: not known) and name.
pub type SystemWalName = (Option<u64>, String);

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

/// The system identifier in the first page of WAL segment `name` (or of its
/// `.partial` or `.streamed` copy). The long page header (`XLP_LONG_HEADER` in
/// `xlp_info`) holds it at byte 24, after the 24-byte standard header, in the
/// machine's byte order (little-endian here). It is believed only when the header is
/// the one PostgreSQL writes at the start of that very segment: the timeline and the
/// page address agree with the name, the segment size is one initdb allows. Other
/// bytes that happen to have the flag set would otherwise file a copied or damaged
/// file under a made-up cluster.
pub fn segment_system_identifier(name: &str, data: &[u8]) -> Option<u64> {
    const XLP_LONG_HEADER: u16 = 0x0002;
    let u16_at = |at: usize| Some(u16::from_le_bytes(data.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?));
    if u16_at(2)? & XLP_LONG_HEADER == 0 {
        return None;
    }
    let segment = WalFileKind::parse(name.get(..24)?).ok()?;
    let seg_size = u64::from(u32_at(32)?);
    let plausible = seg_size.is_power_of_two() && (1 << 20..=1 << 30).contains(&seg_size);
    if !plausible
        || u32_at(4)? != segment.timeline()
        || Some(u64_at(8)?) != segment.segno(seg_size).map(|n| n * seg_size)
    {
        return None;
    }
    u64_at(24).filter(|s| *s != 0)
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

/// The key of a WAL file's manifest in the namespace of database system `system`
/// (`None`: the files whose system is not known).
pub fn wal_key(system: Option<u64>, kind: &WalFileKind, name: &str) -> String {
    layout::wal(system, kind.timeline(), name)
}

/// One archived file as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalEntry {
    /// The manifest's object key.
    pub key: String,
    pub name: String,
    pub kind: WalFileKind,
    /// The database system whose WAL it is: from the key, or for a file archived
    /// before WAL was namespaced, as the module doc says; `None` when not known.
    pub system: Option<u64>,
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
    /// Archives one WAL file in the namespace of its database system: the one its
    /// first page names, or for files that name none (`.history`, `.backup`),
    /// `system` (from the cluster's pg_control). Returns only once the file and its
    /// manifest are durable.
    ///
    /// Errors: `InvalidInput` for a name that is not a WAL file name, or a segment
    /// of another system than `system`; `AlreadyExists` when the name is archived
    /// for the same system with different content (PostgreSQL's archive_command
    /// contract: never overwrite, fail loudly); backend errors.
    pub async fn wal_push(
        &self,
        name: &str,
        data: Vec<u8>,
        system: Option<u64>,
    ) -> Result<WalPushOutcome> {
        let kind = WalFileKind::parse(name)?;
        let written_by = match kind {
            WalFileKind::History { .. } | WalFileKind::Backup { .. } => None,
            _ => segment_system_identifier(name, &data),
        };
        let system = match (written_by, system) {
            (Some(w), Some(s)) if w != s => {
                return Err(Error::InvalidInput(format!(
                    "WAL file {name} was written by database system {w}, not by {s}"
                )))
            }
            (w, s) => w.or(s),
        };
        let key = wal_key(system, &kind, name);
        if system.is_some() {
            self.require_current_format().await?;
        }
        let content_id = self.key().chunk_id(&data);
        if let Some(s) = system {
            // Archived before WAL was namespaced, for this system: the contract
            // (never overwrite, fail loudly) holds across the layouts.
            if let Some(old) = self.unnamespaced_copy_of(s, &kind, name).await? {
                if old.content_id == content_id {
                    return Ok(WalPushOutcome::AlreadyArchived);
                }
                return Err(Error::AlreadyExists {
                    what: format!(
                        "WAL file {name} of database system {s} with different content ({} bytes \
                         archived at {} before WAL was kept by system, {} bytes now)",
                        old.size_bytes,
                        old.pushed
                            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        data.len()
                    ),
                    location: self.location(),
                });
            }
        }
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
                tasks.spawn(async move { repo.put_chunk_if_missing(id, piece, None, None).await });
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
            system_identifier: system,
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
            match self.wal_manifest_at(&key, name).await {
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
            None => self.wal_manifest_at(&key, name).await?,
        };
        if existing.content_id == content_id {
            Ok(WalPushOutcome::AlreadyArchived)
        } else {
            let of = system.map_or(String::new(), |s| format!(" of database system {s}"));
            Err(Error::AlreadyExists {
                what: format!(
                    "WAL file {name}{of} with different content ({} bytes archived at {}, {} bytes now)",
                    existing.size_bytes,
                    existing.pushed.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    data.len()
                ),
                location: self.location(),
            })
        }
    }

    /// The manifest of archived WAL file `name` of database system `system`: in its
    /// namespace, or archived before WAL was namespaced unless that copy names
    /// another system. With `system` unknown (`None`), the file is looked up in every
    /// namespace, which must hold it for one system only.
    ///
    /// Errors: `NotFound` when the file is not archived (for that system);
    /// `InvalidInput` for a bad name, or a name archived for several systems when
    /// `system` is `None`; `Corrupt` when the manifest fails authentication; backend
    /// errors.
    pub async fn wal_manifest(&self, system: Option<u64>, name: &str) -> Result<WalManifest> {
        let kind = WalFileKind::parse(name)?;
        let system = match system {
            Some(s) => Some(s),
            None => self.wal_system_of(name).await?,
        };
        if let Some(s) = system {
            match self
                .wal_manifest_at(&wal_key(system, &kind, name), name)
                .await
            {
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                other => return other,
            }
            return self
                .unnamespaced_copy_of(s, &kind, name)
                .await?
                .ok_or_else(|| Error::NotFound {
                    what: format!("WAL file {name} of database system {s}"),
                    location: self.location(),
                });
        }
        self.wal_manifest_at(&wal_key(None, &kind, name), name)
            .await
    }

    /// The manifest of `name` as [`Repository::wal_catalogs`] lists it under
    /// `system`: for a known system as [`Repository::wal_manifest`] finds it, for
    /// `None` in the layout of files whose system is not known, never looked up
    /// among other systems.
    ///
    /// Errors: as [`Repository::wal_manifest`].
    pub async fn wal_manifest_of(&self, system: Option<u64>, name: &str) -> Result<WalManifest> {
        match system {
            Some(_) => self.wal_manifest(system, name).await,
            None => {
                let kind = WalFileKind::parse(name)?;
                self.wal_manifest_at(&wal_key(None, &kind, name), name)
                    .await
            }
        }
    }

    /// The database system that archived a file named `name` (or, for a segment,
    /// a `.streamed` copy of it), when one did.
    ///
    /// Errors: `InvalidInput` when several did; backend errors.
    async fn wal_system_of(&self, name: &str) -> Result<Option<u64>> {
        let dotted = format!("{name}.");
        let systems: std::collections::BTreeSet<Option<u64>> = self
            .wal_entries()
            .await?
            .into_iter()
            .filter(|e| {
                e.name == name
                    || (matches!(e.kind, WalFileKind::Streamed { .. })
                        && e.name.starts_with(&dotted))
            })
            .map(|e| e.system)
            .collect();
        match systems.len() {
            0 => Ok(None),
            1 => Ok(systems.into_iter().next().expect("one")),
            _ => Err(Error::InvalidInput(format!(
                "WAL file {name} is archived for {} database systems ({}): name the cluster's \
                 with --system-id (pg_controldata prints it)",
                systems.len(),
                systems
                    .iter()
                    .map(|s| s.map_or("unknown".to_string(), |s| s.to_string()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// The manifest of `name` in the unnamespaced layout, when it is there and of
    /// system `system`: as its manifest says, or for a file that names no system (a
    /// history file, or anything archived before systems were recorded), as the
    /// layout's owner says.
    ///
    /// Errors: `Corrupt` when the manifest fails authentication; backend errors.
    async fn unnamespaced_copy_of(
        &self,
        system: u64,
        kind: &WalFileKind,
        name: &str,
    ) -> Result<Option<WalManifest>> {
        let m = match self.wal_manifest_at(&wal_key(None, kind, name), name).await {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let owner = match m.system_identifier {
            Some(s) => Some(s),
            None => self.unnamespaced_owner().await?,
        };
        Ok(owner.is_none_or(|o| o == system).then_some(m))
    }

    /// The database system whose WAL the unnamespaced layout holds: the one its
    /// newest segment names, in its manifest or (archived before manifests
    /// recorded it) in its first page. Before WAL was namespaced, a repository held
    /// one cluster's WAL: a second one's pushes failed on the first colliding name.
    /// `None` when that layout holds no segment, or it cannot be told.
    ///
    /// Errors: backend errors.
    async fn unnamespaced_owner(&self) -> Result<Option<u64>> {
        let cell = self.unnamespaced_owner_cell().clone();
        cell.get_or_try_init(|| self.look_up_unnamespaced_owner())
            .await
            .copied()
    }

    async fn look_up_unnamespaced_owner(&self) -> Result<Option<u64>> {
        // Timeline directories of the old layout are 8 hex digits starting with 0
        // (timelines below 2^28); system directories never start with 0.
        let mut newest: Option<(String, String)> = None;
        for o in self.backend().list(&format!("{}0", layout::WAL)).await? {
            let Some((None, name)) = layout::wal_key_parts(&o.key) else {
                continue;
            };
            let segment_like = matches!(
                WalFileKind::parse(name),
                Ok(WalFileKind::Segment { .. } | WalFileKind::Partial { .. })
            );
            if segment_like && newest.as_ref().is_none_or(|(n, _)| name > n.as_str()) {
                newest = Some((name.to_string(), o.key.clone()));
            }
        }
        let Some((name, key)) = newest else {
            return Ok(None);
        };
        let m = match self.wal_manifest_at(&key, &name).await {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::Corrupt => return Ok(None),
            Err(e) => return Err(e),
        };
        if m.system_identifier.is_some() {
            return Ok(m.system_identifier);
        }
        match m.chunks.first() {
            Some(first) => Ok(self
                .load_ref(first)
                .await
                .ok()
                .and_then(|page| segment_system_identifier(&name, &page))),
            None => Ok(None),
        }
    }

    /// The manifest stored under `key`, which must describe WAL file `name`.
    ///
    /// Errors: `NotFound` when there is none; `Corrupt` when it fails authentication
    /// or describes another file; backend errors.
    pub async fn wal_manifest_at(&self, key: &str, name: &str) -> Result<WalManifest> {
        let json = match self.get_json(key).await {
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

    /// Reads archived WAL file `name` of database system `system` (looked up as
    /// [`Repository::wal_manifest`] does) whole, verifying every chunk and the whole
    /// content.
    ///
    /// Errors: `NotFound` when the file is not archived (and only then); `Corrupt`
    /// when anything fails verification; `InvalidInput` as for
    /// [`Repository::wal_manifest`]; backend errors.
    pub async fn wal_fetch(&self, system: Option<u64>, name: &str) -> Result<Vec<u8>> {
        let m = self.wal_manifest(system, name).await?;
        self.wal_read(&m).await
    }

    /// Reads the file a WAL manifest describes, verifying every chunk and the whole.
    ///
    /// Errors: `Corrupt` when anything fails verification (a missing chunk too);
    /// backend errors.
    pub async fn wal_read(&self, m: &WalManifest) -> Result<Vec<u8>> {
        let name = &m.name;
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
    pub async fn wal_fetch_for_recovery(&self, system: Option<u64>, name: &str) -> Result<Vec<u8>> {
        let kind = WalFileKind::parse(name)?;
        let system = match system {
            Some(s) => Some(s),
            None => self.wal_system_of(name).await?,
        };
        // wal-receive replaces copies and stores the segment while we look: a copy
        // that vanishes between the listing and the read means "look again", never
        // "not archived".
        for _ in 0..3 {
            let missing = match self.wal_fetch(system, name).await {
                Err(e) if e.kind() == ErrorKind::NotFound => e,
                other => return other,
            };
            if !matches!(kind, WalFileKind::Segment { .. }) {
                return Err(missing);
            }
            let Some(streamed) = self.wal_newest_streamed(system, &kind, name).await? else {
                return Err(missing);
            };
            match self.wal_fetch(system, &streamed).await {
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

    /// Deletes the manifest of archived WAL file `name` of `system`; its chunks go
    /// with the next prune. For superseded `.streamed` copies: archived WAL is
    /// otherwise removed only by retention.
    ///
    /// Errors: `InvalidInput` for a bad name; backend errors.
    pub async fn wal_delete(&self, system: Option<u64>, name: &str) -> Result<()> {
        let kind = WalFileKind::parse(name)?;
        self.backend().delete(&wal_key(system, &kind, name)).await
    }

    /// The name of the newest stored `.streamed` copy of segment `name` in the
    /// namespace of `system`, if any.
    ///
    /// Errors: backend errors.
    pub async fn wal_newest_streamed(
        &self,
        system: Option<u64>,
        kind: &WalFileKind,
        name: &str,
    ) -> Result<Option<String>> {
        // Only this system's: wal-receive wrote `.streamed` copies in the namespaced
        // layout from the start, so a copy in the other one is another cluster's or
        // of an unknown one, and serving it would fail recovery for good.
        let copies = self.wal_streamed_copies(system, kind, name).await?;
        Ok(copies
            .into_iter()
            .filter_map(|n| Some((crate::wal_name::parse_streamed(&n)?.1, n)))
            .max()
            .map(|(_, n)| n))
    }

    /// The names of the stored `.streamed` copies of segment `name` in the namespace
    /// of `system` alone.
    ///
    /// Errors: backend errors.
    pub async fn wal_streamed_copies(
        &self,
        system: Option<u64>,
        kind: &WalFileKind,
        name: &str,
    ) -> Result<Vec<String>> {
        let prefix = layout::wal(system, kind.timeline(), &format!("{name}."));
        Ok(self
            .backend()
            .list(&prefix)
            .await?
            .into_iter()
            .filter_map(|o| {
                let n = o.key.rsplit('/').next()?.to_string();
                let (seg, _) = crate::wal_name::parse_streamed(&n)?;
                (seg == name).then_some(n)
            })
            .collect())
    }

    /// Lists the archive of database system `system` by timeline (with the files
    /// whose system is not known), from object names alone plus a manifest or two.
    ///
    /// Errors: backend errors.
    pub async fn wal_catalog(&self, system: u64) -> Result<WalCatalog> {
        let entries: Vec<WalEntry> = self
            .wal_entries()
            .await?
            .into_iter()
            .filter(|e| e.system.is_none_or(|s| s == system))
            .collect();
        Ok(self.catalog_of(entries).await)
    }

    /// The archive of every database system in it, by system: the files whose
    /// system is not known count as the only system's when there is one, else they
    /// are listed apart, under `None`.
    ///
    /// Errors: backend errors.
    pub async fn wal_catalogs(&self) -> Result<BTreeMap<Option<u64>, WalCatalog>> {
        let entries = self.wal_entries().await?;
        let known: std::collections::BTreeSet<u64> =
            entries.iter().filter_map(|e| e.system).collect();
        let only = (known.len() == 1).then(|| *known.first().expect("one"));
        let mut by_system: BTreeMap<Option<u64>, Vec<WalEntry>> = BTreeMap::new();
        for e in entries {
            by_system.entry(e.system.or(only)).or_default().push(e);
        }
        let mut out = BTreeMap::new();
        for (system, entries) in by_system {
            out.insert(system, self.catalog_of(entries).await);
        }
        Ok(out)
    }

    async fn catalog_of(&self, entries: Vec<WalEntry>) -> WalCatalog {
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
        // A file archived both before and after WAL was namespaced shows once.
        for tl in cat.timelines.values_mut() {
            tl.segments.sort_unstable();
            tl.segments.dedup();
            for names in [
                &mut tl.backup_files,
                &mut tl.partial_files,
                &mut tl.streamed_files,
            ] {
                names.sort();
                names.dedup();
            }
        }
        cat
    }

    /// Fetches a WAL file through this machine's spool: a segment prefetched by an
    /// earlier call is taken from the spool; otherwise it is fetched, and the `ahead`
    /// segments after it are fetched at the same time into the spool, so that
    /// recovery's next requests are answered from local disk. Returns the file's bytes.
    ///
    /// Errors: as [`Repository::wal_fetch`] for `name`; problems with the following
    /// segments are not errors (recovery asks for them again).
    pub async fn wal_fetch_spooled(
        &self,
        system: Option<u64>,
        name: &str,
        ahead: usize,
    ) -> Result<Vec<u8>> {
        let kind = WalFileKind::parse(name)?;
        let system = match system {
            Some(s) => Some(s),
            None => self.wal_system_of(name).await?,
        };
        // One spool per system: two clusters recovering on one host ask for the
        // same names.
        let spool_dir = self
            .cache()
            .wal_spool()
            .join(system.map_or("unknown".to_string(), |s| s.to_string()));
        let spool = spool_dir.as_path();
        let spooled = spool.join(name);
        if let Ok(data) = std::fs::read(&spooled) {
            let _ = std::fs::remove_file(&spooled);
            // Checked against what was archived before it is handed to PostgreSQL:
            // the spool is only a local copy, and one small manifest read is cheap.
            // Not archived (any more) falls through to the full lookup, which may
            // find a streamed copy.
            match self.wal_manifest(system, name).await {
                Ok(m)
                    if data.len() as u64 == m.size_bytes
                        && self.key().chunk_id(&data) == m.content_id =>
                {
                    return Ok(data)
                }
                Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            tracing::warn!(
                "Spooled copy of WAL file {name} in {} differs from the archived one: fetching it again",
                spool.display()
            );
        }
        let mut next = JoinSet::new();
        if let WalFileKind::Segment { timeline, .. } = kind {
            let _ = create_private_dir(spool.parent().unwrap_or(spool));
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
                    if let Ok(data) = repo.wal_fetch(system, &next_name).await {
                        let tmp = spool.join(format!(".{next_name}.{}", std::process::id()));
                        if write_private(&tmp, &data).is_ok() {
                            let _ = std::fs::rename(&tmp, spool.join(&next_name));
                        }
                    }
                });
            }
        }
        let data = self.wal_fetch_for_recovery(system, name).await;
        while next.join_next().await.is_some() {}
        data
    }
}

impl Repository {
    /// Every archived WAL file of every system, from one listing of `wal/`, sorted
    /// by name; objects not named as pgvault names WAL manifests are left out. A
    /// file archived before WAL was namespaced is attributed as the module doc says
    /// (one manifest read).
    ///
    /// Errors: backend errors.
    pub async fn wal_entries(&self) -> Result<Vec<WalEntry>> {
        let mut entries: Vec<WalEntry> = self
            .backend()
            .list(layout::WAL)
            .await?
            .into_iter()
            .filter_map(|o| {
                let (system, name) = layout::wal_key_parts(&o.key)?;
                let name = name.to_string();
                let kind = WalFileKind::parse(&name).ok()?;
                // Only the key pgvault writes for this name: a copy under another
                // timeline's folder is no archived file.
                (wal_key(system, &kind, &name) == o.key).then_some(WalEntry {
                    name,
                    key: o.key,
                    kind,
                    system,
                })
            })
            .collect();
        entries.sort_by(|a, b| a.name.cmp(&b.name).then(a.key.cmp(&b.key)));
        if entries.iter().any(|e| e.system.is_none()) {
            if let Some(system) = self.unnamespaced_owner().await? {
                for e in entries.iter_mut().filter(|e| e.system.is_none()) {
                    e.system = Some(system);
                }
            }
        }
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
            if let Ok(m) = self.wal_manifest_at(&seg.key, &seg.name).await {
                // PostgreSQL's own range (initdb --wal-segsize 1..1024 MiB); anything
                // else is a file that only looks like a segment.
                if m.size_bytes.is_power_of_two() && (1 << 20..=1 << 30).contains(&m.size_bytes) {
                    return m.size_bytes;
                }
            }
        }
        DEFAULT_SEGMENT_SIZE
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
            let repo = self.clone();
            let slots = slots.clone();
            tasks.spawn(async move {
                let _slot = slots.acquire_owned().await.expect("never closed");
                match repo.wal_manifest_at(&e.key, &e.name).await {
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

    /// The keys of archived WAL files that no surviving base backup needs: of each
    /// database system, the segments, `.backup`, `.partial` and `.streamed` files
    /// before the segment where its oldest surviving base backup starts (for files
    /// whose system is not known, the oldest of all). Timeline history files always
    /// stay. A system with no surviving base backup keeps all its WAL: without one,
    /// pgvault cannot tell what the WAL is for.
    ///
    /// Errors: backend errors.
    pub async fn wal_unneeded(&self, surviving_bases: &[&SnapshotManifest]) -> Result<Vec<String>> {
        let oldest_of = |system: Option<u64>| {
            surviving_bases
                .iter()
                .filter_map(|m| m.base.as_ref())
                .filter(|b| system.is_none_or(|s| s == b.system_identifier))
                .min_by_key(|b| (b.timeline, b.start_lsn))
        };
        let entries = self.wal_entries().await?;
        let mut sizes: BTreeMap<Option<u64>, u64> = BTreeMap::new();
        for system in entries
            .iter()
            .map(|e| e.system)
            .collect::<std::collections::BTreeSet<_>>()
        {
            let of_system: Vec<WalEntry> = entries
                .iter()
                .filter(|e| e.system == system)
                .cloned()
                .collect();
            sizes.insert(system, self.wal_segment_size(&of_system).await);
        }
        let mut out = Vec::new();
        for e in entries {
            // A file of the old layout is attributed by one segment of it: where two
            // clusters' WAL may have met there (a pg_upgrade), it is judged by the
            // oldest base backup of any, so that none loses what it needs.
            let namespaced = layout::wal_key_parts(&e.key).is_some_and(|(s, _)| s.is_some());
            let Some(oldest) = oldest_of(if namespaced { e.system } else { None }) else {
                continue;
            };
            let segment_size = sizes[&e.system];
            let first_needed = crate::wal_name::segno_of(oldest.start_lsn, segment_size);
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
