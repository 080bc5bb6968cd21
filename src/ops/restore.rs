//! `restore`: a point-in-time recovery. Planning decides which base backup and which
//! WAL, and whether the target can be reached at all, before anything is written;
//! then the base backup is extracted and recovery is configured.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::restore_tree::{check_targets, tablespace_targets, write_tree, TreeOptions, TreeStats};
use crate::blocking::thread_joined;
use crate::error::{Error, Result};
use crate::pg::recovery::{self, RecoverySettings};
use crate::store::manifest::{SnapshotKind, SnapshotManifest};
use crate::store::wal::WalCatalog;
use crate::store::writer::Progress;
use crate::store::Repository;
use crate::time::{pg_timestamptz, rfc3339};
use crate::wal_name::{segment_name, segno_of, Lsn};

/// Where recovery should stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// Replay all archived WAL.
    Latest,
    Time(chrono::DateTime<chrono::Utc>),
    Lsn(Lsn),
    Xid(u64),
}

/// A checked plan: the base backup to extract and what recovery will need.
#[derive(Debug, Clone)]
pub struct RestorePlan {
    pub base: SnapshotManifest,
    pub target: RecoveryTarget,
    /// The timeline recovery ends on (`recovery_target_timeline`): the newest one
    /// that descends from the base backup's after it became consistent.
    pub timeline: u32,
    /// The WAL replay reads, in order: the base backup's timeline up to its switch,
    /// then each later timeline of the path, the last one up to its newest segment
    /// archived without a gap.
    pub stretches: Vec<WalStretch>,
    /// The history files of the timelines the path enters.
    pub history_files: Vec<String>,
    /// The first and last segment names replay needs at the least.
    pub wal_first: String,
    pub wal_last_needed: String,
    /// The newest archived segment that follows the base backup without a gap.
    pub wal_newest: String,
}

/// Segments `first..=last` of one timeline, as recovery reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalStretch {
    pub timeline: u32,
    pub first: u64,
    pub last: u64,
}

impl RestorePlan {
    /// The database system of the base backup, whose WAL the plan replays.
    pub fn system(&self) -> u64 {
        self.base
            .base
            .as_ref()
            .expect("planned from a base backup")
            .system_identifier
    }

    /// Every WAL file names the plan replays: the stretches' segments and the
    /// history files.
    pub fn wal_names(&self, segment_size: u64) -> Vec<String> {
        let mut names: Vec<String> = self
            .stretches
            .iter()
            .flat_map(|s| (s.first..=s.last).map(|n| segment_name(s.timeline, n, segment_size)))
            .collect();
        names.extend(self.history_files.iter().cloned());
        names
    }
}

/// The entries of a timeline history file: each earlier timeline of the path and
/// the LSN where it was left.
///
/// Errors: `Corrupt` for a line that is not "timeline, LSN, reason".
pub fn parse_history(name: &str, text: &[u8]) -> Result<Vec<(u32, Lsn)>> {
    let text = String::from_utf8_lossy(text);
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let parsed = (|| {
            let tl: u32 = fields.next()?.parse().ok()?;
            let lsn = Lsn::parse(fields.next()?).ok()?;
            Some((tl, lsn))
        })();
        match parsed {
            Some(e) => out.push(e),
            None => {
                return Err(Error::Corrupt(format!(
                    "Timeline history file {name} has a line that is not \"timeline LSN reason\": {line:?}"
                )))
            }
        }
    }
    Ok(out)
}

/// The timelines recovery passes from `base_tl` (left at each one's switch LSN) to
/// the newest timeline that branched from it at or after `stop_lsn` and holds the
/// segment it starts with; just `base_tl` when none did.
///
/// Errors: backend errors and `Corrupt` from reading history files.
async fn timeline_path(
    repo: &Repository,
    catalog: &WalCatalog,
    system: u64,
    base_tl: u32,
    stop_lsn: Lsn,
) -> Result<Vec<(u32, Option<Lsn>)>> {
    for (&tl, w) in catalog.timelines.iter().rev() {
        if tl <= base_tl {
            break;
        }
        if !w.history {
            continue;
        }
        let name = format!("{tl:08X}.history");
        let entries = parse_history(&name, &repo.wal_fetch(Some(system), &name).await?)?;
        let Some(i) = entries.iter().position(|(t, _)| *t == base_tl) else {
            continue;
        };
        // Left before the base backup was consistent: not a continuation of it.
        if entries[i].1 < stop_lsn {
            continue;
        }
        let entered_at = entries.last().expect("found one").1;
        if !w
            .segments
            .contains(&segno_of(entered_at, catalog.segment_size))
        {
            continue;
        }
        let mut path: Vec<(u32, Option<Lsn>)> =
            entries[i..].iter().map(|(t, l)| (*t, Some(*l))).collect();
        path.push((tl, None));
        return Ok(path);
    }
    Ok(vec![(base_tl, None)])
}

/// Chooses the base backup for `target` (or checks the one named), of database
/// system `system` when given, and checks that the archive holds that system's WAL
/// to make it consistent and to reach the target.
///
/// Errors: `InvalidInput` when no base backup fits the target, the named one is
/// not a base backup, ends after the target or is of another system than `system`,
/// base backups of several systems fit and `system` does not choose, or the WAL
/// needed is missing; `NotFound`/`InvalidInput` for a bad `base` id; backend errors.
pub async fn plan_restore(
    repo: &Repository,
    target: RecoveryTarget,
    base: Option<&str>,
    system: Option<u64>,
) -> Result<RestorePlan> {
    let fits = |m: &SnapshotManifest| -> bool {
        let Some(info) = &m.base else { return false };
        match &target {
            RecoveryTarget::Latest | RecoveryTarget::Xid(_) => true,
            RecoveryTarget::Time(t) => m.finished <= *t,
            RecoveryTarget::Lsn(l) => info.stop_lsn <= *l,
        }
    };
    let chosen = match base {
        Some(id) => {
            let m = repo.resolve_snapshot(id).await?;
            if m.kind != SnapshotKind::Base || m.base.is_none() {
                return Err(Error::InvalidInput(format!(
                    "Snapshot {} is a {}, not a base backup: PITR needs a physical base backup",
                    m.short_id(),
                    m.kind
                )));
            }
            if !fits(&m) {
                return Err(Error::InvalidInput(format!(
                    "Base backup {} ends at {} (LSN {}), after the recovery target",
                    m.short_id(),
                    rfc3339(&m.finished),
                    m.base.as_ref().expect("checked").stop_lsn
                )));
            }
            let of = m.base.as_ref().expect("checked").system_identifier;
            if system.is_some_and(|s| s != of) {
                return Err(Error::InvalidInput(format!(
                    "Base backup {} is of database system {of}, not {}",
                    m.short_id(),
                    system.expect("checked")
                )));
            }
            m
        }
        None => {
            let bases: Vec<SnapshotManifest> = repo
                .snapshots()
                .await?
                .into_iter()
                .filter(|m| {
                    m.kind == SnapshotKind::Base
                        && m.base
                            .as_ref()
                            .is_some_and(|b| system.is_none_or(|s| s == b.system_identifier))
                })
                .collect();
            if bases.is_empty() {
                let of = system.map_or(String::new(), |s| format!(" of database system {s}"));
                return Err(Error::InvalidInput(format!(
                    "Repository {} holds no base backup{of}: run `pgvault backup --base` first",
                    repo.location()
                )));
            }
            let oldest_end = bases.iter().map(|m| m.finished).min().expect("not empty");
            let fitting: Vec<SnapshotManifest> = bases.into_iter().filter(|m| fits(m)).collect();
            let mut systems: BTreeMap<u64, &str> = BTreeMap::new();
            for m in &fitting {
                systems.insert(m.base.as_ref().expect("a base").system_identifier, &m.db);
            }
            if systems.len() > 1 {
                // Choosing by age alone would restore whichever cluster was backed
                // up last: never what a fleet's operator meant.
                return Err(Error::InvalidInput(format!(
                    "Base backups of {} database systems fit the target ({}): choose one with \
                     --system-id or --base",
                    systems.len(),
                    systems
                        .iter()
                        .map(|(s, db)| format!("{s} \"{db}\""))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            fitting
                .into_iter()
                .max_by_key(|m| m.finished)
                .ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "No base backup ends before the recovery target: the oldest ends at {}",
                        rfc3339(&oldest_end)
                    ))
                })?
        }
    };
    let system = chosen
        .base
        .as_ref()
        .expect("a base backup")
        .system_identifier;
    let catalog = repo.wal_catalog(system).await?;
    check_wal(repo, chosen, target, &catalog).await
}

async fn check_wal(
    repo: &Repository,
    base: SnapshotManifest,
    target: RecoveryTarget,
    catalog: &WalCatalog,
) -> Result<RestorePlan> {
    let info = base.base.clone().expect("a base backup");
    let size = catalog.segment_size;
    let first = segno_of(info.start_lsn, size);
    let consistent = segno_of(info.stop_lsn, size);
    let path = timeline_path(
        repo,
        catalog,
        info.system_identifier,
        info.timeline,
        info.stop_lsn,
    )
    .await?;
    let timeline = path.last().expect("never empty").0;
    let mut stretches = Vec::new();
    let mut history_files = Vec::new();
    let mut start = first;
    for (tl, left_at) in &path {
        let w = catalog.timelines.get(tl).cloned().unwrap_or_default();
        if w.history {
            history_files.push(format!("{tl:08X}.history"));
        }
        match left_at {
            Some(lsn) => {
                // The segment holding the switch is read from the next timeline,
                // which starts with a copy of it.
                let switch_seg = segno_of(*lsn, size);
                if switch_seg > start {
                    if let Some(missing) = w.first_missing(start, switch_seg - 1) {
                        return Err(Error::InvalidInput(format!(
                            "WAL segment {} is missing from the archive: recovery from base backup {} \
                             to timeline {timeline} needs {}..{} of timeline {tl}",
                            catalog.name(*tl, missing),
                            base.short_id(),
                            catalog.name(*tl, start),
                            catalog.name(*tl, switch_seg - 1)
                        )));
                    }
                    stretches.push(WalStretch {
                        timeline: *tl,
                        first: start,
                        last: switch_seg - 1,
                    });
                }
                start = start.max(switch_seg);
            }
            None => {
                let newest = w
                    .ranges()
                    .into_iter()
                    .find(|&(a, b)| a <= start && start <= b)
                    .map(|(_, b)| b);
                if let Some(newest) = newest {
                    stretches.push(WalStretch {
                        timeline: *tl,
                        first: start,
                        last: newest,
                    });
                }
                if newest.is_none_or(|n| n < consistent) {
                    let missing = newest.map_or(start, |n| n + 1);
                    return Err(Error::InvalidInput(format!(
                        "WAL segment {} is missing from the archive: base backup {} needs {}..{} to become consistent",
                        catalog.name(*tl, missing),
                        base.short_id(),
                        catalog.name(info.timeline, first),
                        catalog.name(*tl, consistent)
                    )));
                }
            }
        }
    }
    // The archive may hold another cluster's WAL under the same names (a copy of
    // the repository, a second cluster pointed at it): PostgreSQL would refuse it
    // mid-recovery, so refuse it here, before anything is written.
    let first_name = catalog.name(info.timeline, first);
    if let Some(sysid) = repo
        .wal_manifest(Some(info.system_identifier), &first_name)
        .await?
        .system_identifier
    {
        if sysid != info.system_identifier {
            return Err(Error::InvalidInput(format!(
                "WAL segment {first_name} in the archive was written by database system {sysid}, \
                 but base backup {} is of database system {}: this archive's WAL cannot recover it",
                base.short_id(),
                info.system_identifier
            )));
        }
    }
    let last = stretches
        .last()
        .expect("the final timeline holds a stretch");
    let newest = last.last;
    let newest_name = catalog.name(last.timeline, newest);
    let name_at = |segno: u64| {
        let tl = stretches
            .iter()
            .find(|s| s.first <= segno && segno <= s.last)
            .map_or(timeline, |s| s.timeline);
        catalog.name(tl, segno)
    };
    let needed = match &target {
        RecoveryTarget::Lsn(l) => {
            let seg = segno_of(*l, size);
            if seg > newest {
                return Err(Error::InvalidInput(format!(
                    "Target LSN {l} is beyond the archived WAL: the archive continues base backup {} \
                     without a gap only up to segment {newest_name}",
                    base.short_id()
                )));
            }
            seg
        }
        RecoveryTarget::Time(t) => {
            // A segment holds only records written before it was archived, so the
            // target is reachable once some later segment was archived after it.
            let m = repo
                .wal_manifest(Some(info.system_identifier), &newest_name)
                .await?;
            // So does a copy of the next segment that wal-receive stored while it
            // was being written (wal-fetch serves it in the segment's place).
            let mut reached = m.pushed;
            if reached < *t {
                let next = format!("{}.", catalog.name(last.timeline, newest + 1));
                let streamed = catalog.timelines.get(&last.timeline).and_then(|w| {
                    w.streamed_files
                        .iter()
                        .filter(|n| n.starts_with(&next))
                        .max()
                });
                if let Some(name) = streamed {
                    if let Ok(c) = repo.wal_manifest(Some(info.system_identifier), name).await {
                        reached = reached.max(c.pushed);
                    }
                }
            }
            if reached < *t {
                return Err(Error::InvalidInput(format!(
                    "Target time {} is after the newest archived WAL: segment {newest_name} was archived \
                     at {}, and nothing after it follows base backup {} without a gap",
                    rfc3339(t),
                    rfc3339(&reached),
                    base.short_id()
                )));
            }
            newest
        }
        RecoveryTarget::Latest | RecoveryTarget::Xid(_) => newest,
    };
    Ok(RestorePlan {
        base,
        target,
        timeline,
        wal_first: name_at(first),
        wal_last_needed: name_at(needed.max(consistent)),
        wal_newest: newest_name,
        stretches,
        history_files,
    })
}

impl RecoveryTarget {
    /// The `recovery_target_*` settings for this target; none to replay all WAL.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        match self {
            RecoveryTarget::Latest => vec![],
            RecoveryTarget::Time(t) => vec![("recovery_target_time", pg_timestamptz(t))],
            RecoveryTarget::Lsn(l) => vec![("recovery_target_lsn", l.to_string())],
            RecoveryTarget::Xid(x) => vec![("recovery_target_xid", x.to_string())],
        }
    }
}

/// What `restore` is asked to do.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The new data directory: must not exist or be empty.
    pub pgdata: PathBuf,
    pub target: RecoveryTarget,
    /// A base backup id (or prefix) instead of the newest that fits.
    pub base: Option<String>,
    /// Only base backups of this database system.
    pub system: Option<u64>,
    /// Parallelism, delta and tablespace relocation.
    pub tree: TreeOptions,
}

/// Plans and checks everything, then writes the base backup into `pgdata` (and its
/// tablespaces where `opts.tree` puts them) and the recovery settings, with the
/// restore_command that `restore_command` makes for the chosen backup's system
/// identifier. `progress` is made for the chosen backup and told each file's bytes.
/// Returns the plan it carried out and what writing the files did.
///
/// Errors: `InvalidInput` for a non-empty PGDATA or tablespace location (a running
/// server on it, with `delta`), an unknown `--tablespace-map` location, a delta or
/// relocation asked of a backup stored without its file list, or an unreachable
/// target (nothing is written then); those of `restore_command`; I/O and backend
/// errors.
pub async fn restore(
    repo: &Repository,
    opts: &RestoreOptions,
    restore_command: impl FnOnce(u64) -> Result<String>,
    progress: impl FnOnce(&SnapshotManifest) -> Arc<dyn Progress>,
) -> Result<(RestorePlan, TreeStats)> {
    if !opts.tree.delta {
        recovery::check_empty_pgdata(&opts.pgdata)?;
    }
    let plan = plan_restore(repo, opts.target.clone(), opts.base.as_deref(), opts.system).await?;
    let spaces = tree_targets(&plan.base, &opts.pgdata, &opts.tree)?;
    let mut target = opts.target.settings();
    // Named, not 'latest': the plan checked the WAL of exactly this path.
    target.push(("recovery_target_timeline", plan.timeline.to_string()));
    let settings = RecoverySettings {
        restore_command: restore_command(plan.system())?,
        target,
    };
    let stats = extract_base_into(
        repo,
        &plan.base,
        &opts.pgdata,
        &spaces,
        &opts.tree,
        progress(&plan.base),
    )
    .await?;
    recovery::write_recovery_config(&opts.pgdata, &settings)?;
    Ok((plan, stats))
}

/// Where `base`'s tablespaces go, once checked that the restore may write there
/// (see [`check_targets`]).
///
/// Errors: as [`tablespace_targets`] and [`check_targets`]; `InvalidInput` when a
/// delta restore or a relocation is asked of a backup stored without its file list.
pub(crate) fn tree_targets(
    base: &SnapshotManifest,
    pgdata: &std::path::Path,
    opts: &TreeOptions,
) -> Result<Vec<(u32, PathBuf)>> {
    if !base.has_file_list() && (opts.delta || !opts.tablespace_map.is_empty()) {
        return Err(Error::InvalidInput(format!(
            "Base backup {} was stored before pgvault kept a base backup's file list: it \
             restores only whole, into an empty directory (no --delta or --tablespace-map)",
            base.short_id()
        )));
    }
    let spaces = tablespace_targets(base, opts)?;
    check_targets(pgdata, &spaces, opts.delta)?;
    Ok(spaces)
}

/// Writes base backup `base` into `pgdata` (restore and drills): file by file and in
/// parallel when its manifest lists its files, else by extracting its tar stream on
/// a thread as it is read.
///
/// Errors: those of [`write_tree`]; the extractor's (a bad archive, a file that
/// cannot be written), which explain a broken pipe on the reading side; then the
/// read's (backend, corrupt).
pub(crate) async fn extract_base_into(
    repo: &Repository,
    base: &SnapshotManifest,
    pgdata: &std::path::Path,
    spaces: &[(u32, PathBuf)],
    opts: &TreeOptions,
    progress: Arc<dyn Progress>,
) -> Result<TreeStats> {
    if base.has_file_list() {
        return write_tree(repo, base, pgdata, spaces, opts, progress).await;
    }
    let (mut writer, reader) = crate::pipe::pipe(8);
    let target = pgdata.to_path_buf();
    let extractor = std::thread::spawn(move || recovery::extract_base(reader, &target));
    let copied = repo.cat(base, &mut writer, progress).await;
    drop(writer);
    thread_joined("extraction", extractor.join())??;
    let bytes_written = copied?;
    Ok(TreeStats {
        bytes_written,
        ..TreeStats::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_files_parse_as_postgresql_writes_them() {
        let text =
            b"1\t0/3000158\tno recovery target specified\n\n2\t0/5000000\tat restore point \"x\"\n";
        assert_eq!(
            parse_history("00000003.history", text).unwrap(),
            vec![(1, Lsn(0x300_0158)), (2, Lsn(0x500_0000))]
        );
        let e = parse_history("00000003.history", b"1\tnot-an-lsn\treason\n").unwrap_err();
        assert!(e.to_string().contains("00000003.history"), "{e}");
    }
}
