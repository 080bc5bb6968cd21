//! `pgvault status` and `pgvault metrics`: the state of the backups per database and
//! kind, from snapshots (what exists), attempts (what was tried), drills (what was
//! proven restorable) and the WAL archive (how far behind it is).
//!
//! One [`StatusReport`] feeds both the human/JSON status and the Prometheus text
//! exposition, so the dashboard and the terminal never disagree.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::error::Result;
use crate::store::manifest::SnapshotKind;
use crate::store::records::{
    BackupAttempt, CheckRecord, DrillRecord, ReceiverReport, WalPushFailure,
};
use crate::store::Repository;

/// How far back the success rate looks.
pub const SUCCESS_WINDOW_DAYS: i64 = 30;

/// The last attempt of one db and kind.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptSummary {
    pub time: chrono::DateTime<chrono::Utc>,
    pub ok: bool,
    pub error: Option<String>,
}

/// The last drill of one db and kind.
#[derive(Debug, Clone, Serialize)]
pub struct DrillSummary {
    pub time: chrono::DateTime<chrono::Utc>,
    pub ok: bool,
    pub duration_seconds: f64,
    pub restore_seconds: Option<f64>,
    pub snapshot_id: String,
    pub error: Option<String>,
}

/// The state of one db and kind.
#[derive(Debug, Clone, Serialize)]
pub struct BackupStatus {
    pub db: String,
    pub kind: SnapshotKind,
    pub snapshots: usize,
    /// Sum of the sizes of all its snapshots.
    pub logical_bytes: u64,
    /// The newest backup point's time.
    pub last_success: Option<chrono::DateTime<chrono::Utc>>,
    pub last_success_age_seconds: Option<f64>,
    pub last_snapshot_id: Option<String>,
    /// The newest backup point's size, and what it added to the repository.
    pub size_bytes: Option<u64>,
    pub stored_bytes: Option<u64>,
    pub previous_size_bytes: Option<u64>,
    /// `size / previous - 1`.
    pub size_change_ratio: Option<f64>,
    pub size_anomaly: bool,
    pub last_attempt: Option<AttemptSummary>,
    pub attempts_30d: usize,
    pub successes_30d: usize,
    pub failures_30d: usize,
    /// Successes over attempts in the last 30 days; `None` without attempts.
    pub success_rate_30d: Option<f64>,
    pub successes_total: usize,
    pub failures_total: usize,
    pub last_drill: Option<DrillSummary>,
}

/// One timeline of one database system's WAL archive.
#[derive(Debug, Clone, Serialize)]
pub struct WalStatus {
    /// The cluster's system identifier, as a string (JSON readers that parse
    /// numbers as doubles would round it); `None` for files archived before it was
    /// recorded, when the repository holds several clusters' WAL.
    pub system_identifier: Option<String>,
    pub timeline: u32,
    pub segments: usize,
    pub newest_segment: Option<String>,
    /// When the newest segment was archived.
    pub newest_archived: Option<chrono::DateTime<chrono::Utc>>,
    /// How long ago that was: the archive lag.
    pub lag_seconds: Option<f64>,
    /// The newest copy `wal-receive` stored of a segment still being written, when
    /// it is newer than the newest segment.
    pub newest_streamed: Option<String>,
    /// When it was stored.
    pub newest_streamed_at: Option<chrono::DateTime<chrono::Utc>>,
    /// How old the newest WAL in the repository is, segment or streamed copy: what a
    /// restore after losing the primary now would lose, at most.
    pub rpo_seconds: Option<f64>,
}

impl WalStatus {
    /// The `system` label of its metrics: empty when the system is not known.
    fn system_label(&self) -> &str {
        self.system_identifier.as_deref().unwrap_or("")
    }
}

/// Whether WAL archiving works: failed pushes against the newest archived file.
#[derive(Debug, Clone, Serialize)]
pub struct WalArchiving {
    /// The newest failed `wal-push`, if any.
    pub last_failure: Option<WalPushFailure>,
    /// Failed pushes ever recorded.
    pub failures_total: usize,
    /// Whether the newest push failed: no WAL file was archived after it.
    pub failing: bool,
}

/// The repository as a whole.
#[derive(Debug, Clone, Serialize)]
pub struct RepoSize {
    pub snapshots: usize,
    /// What the backups would take unstored: every snapshot's size plus every archived
    /// WAL segment at the segment size.
    pub logical_bytes: u64,
    /// Every object in the repository.
    pub stored_bytes: u64,
    pub chunk_bytes: u64,
    pub chunks: usize,
    /// Logical bytes per stored chunk byte (deduplication and compression together).
    pub dedup_ratio: Option<f64>,
}

/// Everything `status` shows and `metrics` exports.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub generated: chrono::DateTime<chrono::Utc>,
    pub location: String,
    pub size_change_threshold: f64,
    pub repository: RepoSize,
    pub backups: Vec<BackupStatus>,
    pub wal: Vec<WalStatus>,
    pub wal_archiving: WalArchiving,
    /// The latest report of each `wal-receive`: its slot's lag.
    pub wal_receivers: Vec<ReceiverStatus>,
    pub last_check: Option<CheckRecord>,
}

/// A `wal-receive` as it last reported.
#[derive(Debug, Clone, Serialize)]
pub struct ReceiverStatus {
    #[serde(flatten)]
    pub report: ReceiverReport,
    /// How old the report is. Far beyond the report interval (30 s), the receiver
    /// is gone, and its slot keeps WAL on the server until it is dropped.
    pub age_seconds: f64,
}

fn age(now: chrono::DateTime<chrono::Utc>, t: chrono::DateTime<chrono::Utc>) -> f64 {
    (now - t).num_milliseconds() as f64 / 1000.0
}

/// How a backup's size compares with the previous one of the same db and kind.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SizeChange {
    pub previous_size_bytes: u64,
    /// `size / previous - 1`: 0.5 is 50% larger, -0.5 half the size.
    pub change_ratio: f64,
    /// Whether the change exceeds the threshold either way.
    pub anomaly: bool,
}

/// Compares a size with the previous one; `threshold` is a ratio (0.5 for 50%).
pub fn size_change(previous: u64, size: u64, threshold: f64) -> SizeChange {
    let change_ratio = if previous == 0 {
        if size == 0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        size as f64 / previous as f64 - 1.0
    };
    SizeChange {
        previous_size_bytes: previous,
        change_ratio,
        anomaly: change_ratio.abs() > threshold,
    }
}

/// Gathers the status report; `threshold` is the size change (a ratio, 0.5 for
/// 50%) above which a backup is flagged.
///
/// Errors: backend errors; `Corrupt` when a snapshot manifest fails authentication.
pub async fn status(repo: &Repository, threshold: f64) -> Result<StatusReport> {
    // Spooled records are history too: upload them before reading it.
    repo.flush_spool(usize::MAX).await;
    let now = chrono::Utc::now();
    let snapshots = repo.snapshots().await?;
    let attempts: Vec<BackupAttempt> = repo.records().await?;
    let drills: Vec<DrillRecord> = repo.records().await?;
    let checks: Vec<CheckRecord> = repo.records().await?;
    let wal_failures: Vec<WalPushFailure> = repo.records().await?;
    let catalogs = repo.wal_catalogs().await?;
    let objects = repo.backend().list("").await?;

    let mut rows: BTreeMap<(String, SnapshotKind), BackupStatus> = BTreeMap::new();
    let mut row = |db: &str, kind: SnapshotKind| -> (String, SnapshotKind) {
        let k = (db.to_string(), kind);
        rows.entry(k.clone()).or_insert_with(|| BackupStatus {
            db: db.to_string(),
            kind,
            snapshots: 0,
            logical_bytes: 0,
            last_success: None,
            last_success_age_seconds: None,
            last_snapshot_id: None,
            size_bytes: None,
            stored_bytes: None,
            previous_size_bytes: None,
            size_change_ratio: None,
            size_anomaly: false,
            last_attempt: None,
            attempts_30d: 0,
            successes_30d: 0,
            failures_30d: 0,
            success_rate_30d: None,
            successes_total: 0,
            failures_total: 0,
            last_drill: None,
        });
        k
    };
    let mut keys = Vec::new();
    for s in &snapshots {
        keys.push(row(&s.db, s.kind));
    }
    for a in &attempts {
        row(&a.db, a.kind);
    }
    for d in &drills {
        row(&d.db, d.kind);
    }
    // Snapshots come oldest first: the last two of a key are the newest and the one before.
    for (s, k) in snapshots.iter().zip(keys) {
        let r = rows.get_mut(&k).expect("row created above");
        r.snapshots += 1;
        r.logical_bytes += s.size_bytes;
        if let Some(prev) = r.size_bytes {
            let c = size_change(prev, s.size_bytes, threshold);
            r.previous_size_bytes = Some(prev);
            r.size_change_ratio = Some(c.change_ratio);
            r.size_anomaly = c.anomaly;
        }
        r.size_bytes = Some(s.size_bytes);
        r.stored_bytes = Some(s.stats.bytes_stored_new);
        r.last_success = Some(s.time);
        r.last_success_age_seconds = Some(age(now, s.time));
        r.last_snapshot_id = Some(s.id.clone());
    }
    let window_start = now - chrono::Duration::days(SUCCESS_WINDOW_DAYS);
    for a in &attempts {
        let r = rows
            .get_mut(&(a.db.clone(), a.kind))
            .expect("row created above");
        if a.ok {
            r.successes_total += 1;
        } else {
            r.failures_total += 1;
        }
        if a.time >= window_start {
            r.attempts_30d += 1;
            if a.ok {
                r.successes_30d += 1;
            } else {
                r.failures_30d += 1;
            }
        }
        r.last_attempt = Some(AttemptSummary {
            time: a.time,
            ok: a.ok,
            error: a.error.clone(),
        });
    }
    for d in &drills {
        let r = rows
            .get_mut(&(d.db.clone(), d.kind))
            .expect("row created above");
        r.last_drill = Some(DrillSummary {
            time: d.time,
            ok: d.ok,
            duration_seconds: d.duration_seconds,
            restore_seconds: d.restore_seconds,
            snapshot_id: d.snapshot_id.clone(),
            error: d.error.clone(),
        });
    }
    for r in rows.values_mut() {
        if r.attempts_30d > 0 {
            r.success_rate_30d = Some(r.successes_30d as f64 / r.attempts_30d as f64);
        }
    }

    let mut wal = Vec::new();
    let mut wal_logical_bytes = 0u64;
    for (system, catalog) in &catalogs {
        // .partial files are whole segments too.
        let segments: u64 = catalog
            .timelines
            .values()
            .map(|t| (t.segments.len() + t.partial_files.len()) as u64)
            .sum();
        wal_logical_bytes += segments * catalog.segment_size;
        for (tl, w) in &catalog.timelines {
            let newest_segment = w.segments.last().map(|s| catalog.name(*tl, *s));
            let newest_archived = match &newest_segment {
                Some(name) => Some(repo.wal_manifest_of(*system, name).await?.pushed),
                None => None,
            };
            // Names sort by segment, then by bytes received.
            let newest_streamed = w
                .streamed_files
                .iter()
                .max()
                .filter(|n| {
                    newest_segment
                        .as_ref()
                        .is_none_or(|seg| n.as_str() > seg.as_str())
                })
                .cloned();
            let newest_streamed_at = match &newest_streamed {
                Some(name) => match repo.wal_manifest_of(*system, name).await {
                    Ok(m) => Some(m.pushed),
                    // Replaced by a newer copy since the listing.
                    Err(e) if e.kind() == crate::error::ErrorKind::NotFound => None,
                    Err(e) => return Err(e),
                },
                None => None,
            };
            let newest = newest_archived.max(newest_streamed_at);
            wal.push(WalStatus {
                system_identifier: system.map(|s| s.to_string()),
                timeline: *tl,
                segments: w.segments.len(),
                newest_segment,
                newest_archived,
                lag_seconds: newest_archived.map(|t| age(now, t)),
                newest_streamed,
                newest_streamed_at,
                rpo_seconds: newest.map(|t| age(now, t)),
            });
        }
    }
    let stored_bytes = objects.iter().map(|o| o.size_bytes).sum();
    let chunk_objects: Vec<_> = objects
        .iter()
        .filter(|o| o.key.starts_with("chunks/"))
        .collect();
    let chunk_bytes: u64 = chunk_objects.iter().map(|o| o.size_bytes).sum();
    let logical_bytes = snapshots.iter().map(|s| s.size_bytes).sum::<u64>() + wal_logical_bytes;
    Ok(StatusReport {
        generated: now,
        location: repo.location(),
        size_change_threshold: threshold,
        repository: RepoSize {
            snapshots: snapshots.len(),
            logical_bytes,
            stored_bytes,
            chunk_bytes,
            chunks: chunk_objects.len(),
            dedup_ratio: (chunk_bytes > 0).then(|| logical_bytes as f64 / chunk_bytes as f64),
        },
        backups: rows.into_values().collect(),
        wal_archiving: WalArchiving {
            failing: wal_failures.last().is_some_and(|f| {
                wal.iter()
                    .filter_map(|w| w.newest_archived)
                    .all(|t| t < f.time)
            }),
            failures_total: wal_failures.len(),
            last_failure: wal_failures.last().cloned(),
        },
        wal,
        wal_receivers: repo
            .receiver_reports()
            .await?
            .into_iter()
            .map(|report| ReceiverStatus {
                age_seconds: age(now, report.time),
                report,
            })
            .collect(),
        last_check: checks.last().cloned(),
    })
}

/// A number as the Prometheus text format spells it.
fn num(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

fn ts(t: &chrono::DateTime<chrono::Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One metric family being written: HELP and TYPE once, then its samples.
struct Family<'a> {
    out: &'a mut String,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &str, kind: &str, help: &str) -> Self {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Family { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {}", num(value));
        } else {
            let _ = writeln!(self.out, "{name}{{{}}} {}", labels.join(","), num(value));
        }
    }
}

type Getter = fn(&BackupStatus) -> Option<f64>;

/// The report in the Prometheus text exposition format (version 0.0.4), for
/// node_exporter's textfile collector. Per-backup metrics carry `db` and `kind`
/// labels; a value that does not exist yet (no success so far) is left out rather
/// than faked.
pub fn render_prometheus(r: &StatusReport) -> String {
    let mut out = String::new();
    let per_backup: &[(&str, &str, &str, Getter)] = &[
        (
            "pgvault_backup_last_success_timestamp_seconds",
            "gauge",
            "Time of the newest backup point, in seconds since the epoch",
            |b| b.last_success.as_ref().map(ts),
        ),
        (
            "pgvault_backup_last_attempt_timestamp_seconds",
            "gauge",
            "Start of the newest recorded backup attempt, in seconds since the epoch",
            |b| b.last_attempt.as_ref().map(|a| ts(&a.time)),
        ),
        (
            "pgvault_backup_last_attempt_success",
            "gauge",
            "1 if the newest recorded backup attempt succeeded, 0 if it failed",
            |b| b.last_attempt.as_ref().map(|a| f64::from(u8::from(a.ok))),
        ),
        (
            "pgvault_backup_size_bytes",
            "gauge",
            "Size of the newest backup point (the dump or base backup stream)",
            |b| b.size_bytes.map(|v| v as f64),
        ),
        (
            "pgvault_backup_stored_bytes",
            "gauge",
            "Bytes the newest backup point added to the repository after deduplication and compression",
            |b| b.stored_bytes.map(|v| v as f64),
        ),
        (
            "pgvault_backup_previous_size_bytes",
            "gauge",
            "Size of the backup point before the newest one",
            |b| b.previous_size_bytes.map(|v| v as f64),
        ),
        (
            "pgvault_backup_size_change_ratio",
            "gauge",
            "Size of the newest backup point over the previous one, minus 1",
            |b| b.size_change_ratio,
        ),
        (
            "pgvault_backup_size_anomaly",
            "gauge",
            "1 if the newest backup point's size changed more than the threshold from the previous one",
            |b| Some(f64::from(u8::from(b.size_anomaly))),
        ),
        (
            "pgvault_backup_snapshots",
            "gauge",
            "Backup points in the repository",
            |b| Some(b.snapshots as f64),
        ),
        (
            "pgvault_backup_logical_bytes",
            "gauge",
            "Sum of the sizes of all backup points",
            |b| Some(b.logical_bytes as f64),
        ),
        (
            "pgvault_backup_success_ratio",
            "gauge",
            "Successful over recorded backup attempts in the last 30 days",
            |b| b.success_rate_30d,
        ),
        (
            "pgvault_backup_success_total",
            "counter",
            "Recorded successful backup attempts",
            |b| Some(b.successes_total as f64),
        ),
        (
            "pgvault_backup_failure_total",
            "counter",
            "Recorded failed backup attempts",
            |b| Some(b.failures_total as f64),
        ),
        (
            "pgvault_drill_last_timestamp_seconds",
            "gauge",
            "Start of the newest restore drill, in seconds since the epoch",
            |b| b.last_drill.as_ref().map(|d| ts(&d.time)),
        ),
        (
            "pgvault_drill_last_success",
            "gauge",
            "1 if the newest restore drill passed, 0 if it failed",
            |b| b.last_drill.as_ref().map(|d| f64::from(u8::from(d.ok))),
        ),
        (
            "pgvault_drill_last_duration_seconds",
            "gauge",
            "How long the newest restore drill took, checks included",
            |b| b.last_drill.as_ref().map(|d| d.duration_seconds),
        ),
        (
            "pgvault_drill_last_restore_seconds",
            "gauge",
            "Measured recovery time of the newest restore drill: until the restored database was usable",
            |b| b.last_drill.as_ref().and_then(|d| d.restore_seconds),
        ),
    ];
    for (name, kind, help, get) in per_backup {
        let samples: Vec<(&BackupStatus, f64)> = r
            .backups
            .iter()
            .filter_map(|b| get(b).map(|v| (b, v)))
            .collect();
        if samples.is_empty() {
            continue;
        }
        let mut f = Family::new(&mut out, name, kind, help);
        for (b, v) in samples {
            f.sample(name, &[("db", &b.db), ("kind", b.kind.as_str())], v);
        }
    }

    let repo = &r.repository;
    let repo_gauges: &[(&str, &str, Option<f64>)] = &[
        (
            "pgvault_repository_logical_bytes",
            "Bytes of all backup points and archived WAL segments, before deduplication and compression",
            Some(repo.logical_bytes as f64),
        ),
        (
            "pgvault_repository_stored_bytes",
            "Bytes of all objects stored in the repository",
            Some(repo.stored_bytes as f64),
        ),
        (
            "pgvault_repository_chunk_bytes",
            "Bytes of all chunk objects in the repository",
            Some(repo.chunk_bytes as f64),
        ),
        (
            "pgvault_repository_dedup_ratio",
            "Logical bytes per stored chunk byte (deduplication and compression together)",
            repo.dedup_ratio,
        ),
        (
            "pgvault_repository_snapshots",
            "Backup points in the repository",
            Some(repo.snapshots as f64),
        ),
    ];
    for (name, help, v) in repo_gauges {
        if let Some(v) = v {
            Family::new(&mut out, name, "gauge", help).sample(name, &[], *v);
        }
    }

    let with_time: Vec<&WalStatus> = r
        .wal
        .iter()
        .filter(|w| w.newest_archived.is_some())
        .collect();
    if !with_time.is_empty() {
        let name = "pgvault_wal_last_archived_timestamp_seconds";
        let mut f = Family::new(
            &mut out,
            name,
            "gauge",
            "When the newest WAL segment of the timeline was archived, in seconds since the epoch",
        );
        for w in &with_time {
            let tl = format!("{:08X}", w.timeline);
            f.sample(
                name,
                &[("system", w.system_label()), ("timeline", &tl)],
                ts(w.newest_archived.as_ref().expect("filtered")),
            );
        }
    }
    let with_rpo: Vec<&WalStatus> = r.wal.iter().filter(|w| w.rpo_seconds.is_some()).collect();
    if !with_rpo.is_empty() {
        let name = "pgvault_wal_newest_stored_timestamp_seconds";
        let mut f = Family::new(
            &mut out,
            name,
            "gauge",
            "When the newest WAL of the timeline was stored, a segment or a copy streamed by wal-receive, in seconds since the epoch: the recovery point a lost primary leaves",
        );
        for w in &with_rpo {
            let tl = format!("{:08X}", w.timeline);
            let newest = w.newest_archived.max(w.newest_streamed_at);
            f.sample(
                name,
                &[("system", w.system_label()), ("timeline", &tl)],
                ts(&newest.expect("filtered")),
            );
        }
    }
    if !r.wal.is_empty() {
        let name = "pgvault_wal_segments";
        let mut f = Family::new(
            &mut out,
            name,
            "gauge",
            "Archived WAL segments of the timeline",
        );
        for w in &r.wal {
            let tl = format!("{:08X}", w.timeline);
            f.sample(
                name,
                &[("system", w.system_label()), ("timeline", &tl)],
                w.segments as f64,
            );
        }
    }
    if !r.wal_receivers.is_empty() {
        let name = "pgvault_wal_receive_slot_retained_bytes";
        let mut f = Family::new(
            &mut out,
            name,
            "gauge",
            "WAL the replication slot of a wal-receive makes the server keep, as last reported",
        );
        for w in &r.wal_receivers {
            if let Some(b) = w.report.slot_retained_bytes {
                let labels = [
                    ("host", w.report.hostname.as_str()),
                    ("slot", &w.report.slot),
                ];
                f.sample(name, &labels, b as f64);
            }
        }
        let name = "pgvault_wal_receive_reported_timestamp_seconds";
        let mut f = Family::new(
            &mut out,
            name,
            "gauge",
            "When a wal-receive last reported, in seconds since the epoch (every 30 s while it runs)",
        );
        for w in &r.wal_receivers {
            let labels = [
                ("host", w.report.hostname.as_str()),
                ("slot", &w.report.slot),
            ];
            f.sample(name, &labels, ts(&w.report.time));
        }
    }
    let a = &r.wal_archiving;
    if let Some(f) = &a.last_failure {
        let wal: &[(&str, &str, &str, f64)] = &[
            (
                "pgvault_wal_push_failing",
                "gauge",
                "1 if the newest wal-push failed and no WAL file was archived since",
                f64::from(u8::from(a.failing)),
            ),
            (
                "pgvault_wal_push_last_failure_timestamp_seconds",
                "gauge",
                "When the newest failed wal-push ran, in seconds since the epoch",
                ts(&f.time),
            ),
            (
                "pgvault_wal_push_failures_total",
                "counter",
                "Failed wal-push runs recorded in the repository",
                a.failures_total as f64,
            ),
        ];
        for (name, kind, help, v) in wal {
            Family::new(&mut out, name, kind, help).sample(name, &[], *v);
        }
    }
    if let Some(c) = &r.last_check {
        let checks: &[(&str, &str, f64)] = &[
            (
                "pgvault_check_last_timestamp_seconds",
                "Start of the newest repository check, in seconds since the epoch",
                ts(&c.time),
            ),
            (
                "pgvault_check_last_success",
                "1 if the newest repository check found no problem",
                f64::from(u8::from(c.ok)),
            ),
            (
                "pgvault_check_last_problems",
                "Problems the newest repository check found",
                c.problems as f64,
            ),
        ];
        for (name, help, v) in checks {
            Family::new(&mut out, name, "gauge", help).sample(name, &[("mode", &c.mode)], *v);
        }
    }
    let name = "pgvault_metrics_generated_timestamp_seconds";
    Family::new(
        &mut out,
        name,
        "gauge",
        "When these metrics were computed, in seconds since the epoch",
    )
    .sample(name, &[], ts(&r.generated));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_change_flags_both_directions() {
        assert!(!size_change(100, 149, 0.5).anomaly);
        assert!(size_change(100, 151, 0.5).anomaly);
        assert!(size_change(100, 49, 0.5).anomaly);
        assert!(!size_change(100, 51, 0.5).anomaly);
        assert!(size_change(0, 1, 0.5).anomaly);
        assert!(!size_change(0, 0, 0.5).anomaly);
        assert!((size_change(200, 300, 0.5).change_ratio - 0.5).abs() < 1e-9);
    }

    #[test]
    fn numbers_and_labels_are_spelled_for_prometheus() {
        assert_eq!(num(f64::INFINITY), "+Inf");
        assert_eq!(num(1.5), "1.5");
        assert_eq!(num(3.0), "3");
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
