//! Retention: which backup points a policy keeps, per database and kind, and `forget`,
//! which deletes the manifests of the others (prune then frees their chunks).
//!
//! The rules are restic's, evaluated on each backup point's `time` (so dumps imported
//! with `backup --time` are retained by that time), in UTC:
//! - `keep-last N`: the N newest;
//! - `keep-hourly/daily/weekly/monthly/yearly N`: the newest backup point of each of
//!   the N newest hours (days, ISO weeks, months, years) that have one;
//! - `keep-within D`: every backup point newer than now − D;
//! - `pitr-window D` (base backups only): the newest base backup at least D old and
//!   every newer one, so that any point of the last D can be reached from a base
//!   backup plus WAL. WAL retention follows [`ForgetPlan::wal_anchor`].
//!
//! A backup point is kept when any rule keeps it. Safety nets: a policy that would
//! keep nothing of a group (say `--keep-within 7d` after backups stopped a month ago)
//! is refused as a whole rather than emptying the group, and the newest backup point of
//! every group is kept whatever the rules say. A group of a kind no given rule applies
//! to (dumps under `--pitr-window` alone) is left untouched.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::store::manifest::{SnapshotKind, SnapshotManifest};
use crate::time::{format_duration, parse_duration};

/// Where `forget` looks for a policy when given none on the command line.
pub const DEFAULT_CONFIG: &str = "/etc/pgvault/retention.toml";

/// A retention policy. Counts are at least 1; unset rules keep nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    pub keep_within: Option<Duration>,
    /// Base backups only: see the module documentation.
    pub pitr_window: Option<Duration>,
}

impl Policy {
    /// Whether no rule is set.
    pub fn is_empty(&self) -> bool {
        *self == Policy::default()
    }

    /// The count rules by their option names.
    fn counts(&self) -> [(&'static str, Option<u32>); 6] {
        [
            ("keep-last", self.keep_last),
            ("keep-hourly", self.keep_hourly),
            ("keep-daily", self.keep_daily),
            ("keep-weekly", self.keep_weekly),
            ("keep-monthly", self.keep_monthly),
            ("keep-yearly", self.keep_yearly),
        ]
    }

    /// Checks that every count is at least 1.
    ///
    /// Errors: `InvalidInput` naming the rule set to 0.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in self.counts() {
            if v == Some(0) {
                return Err(Error::InvalidInput(format!(
                    "Retention rule {name} is 0, which keeps nothing: leave it out instead"
                )));
            }
        }
        Ok(())
    }

    /// Whether any rule applies to backup points of `kind`.
    fn applies_to(&self, kind: SnapshotKind) -> bool {
        let general = Policy {
            pitr_window: None,
            ..self.clone()
        };
        !general.is_empty() || (kind == SnapshotKind::Base && self.pitr_window.is_some())
    }

    /// The policy as `--keep-…` options, for messages.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (name, v) in self.counts() {
            if let Some(n) = v {
                parts.push(format!("--{name} {n}"));
            }
        }
        if let Some(d) = self.keep_within {
            parts.push(format!("--keep-within {}", format_duration(d)));
        }
        if let Some(d) = self.pitr_window {
            parts.push(format!("--pitr-window {}", format_duration(d)));
        }
        parts.join(" ")
    }
}

/// The `[retention]` table of a config file; durations are strings like `30d`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct PolicyFile {
    keep_last: Option<u32>,
    keep_hourly: Option<u32>,
    keep_daily: Option<u32>,
    keep_weekly: Option<u32>,
    keep_monthly: Option<u32>,
    keep_yearly: Option<u32>,
    keep_within: Option<String>,
    pitr_window: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    retention: Option<PolicyFile>,
}

/// Reads the `[retention]` table of a TOML config file:
///
/// ```toml
/// [retention]
/// keep-daily = 7
/// keep-weekly = 4
/// keep-within = "30d"
/// pitr-window = "7d"
/// ```
///
/// Errors: `Io` when the file cannot be read; `InvalidInput` naming the file when it
/// does not parse, has unknown keys, or sets a rule to an invalid value.
pub fn load_policy(path: &Path) -> Result<Policy> {
    let text =
        std::fs::read_to_string(path).map_err(|e| Error::io_path("read config file", path, e))?;
    let cfg: ConfigFile = toml::from_str(&text).map_err(|e| {
        Error::InvalidInput(format!(
            "Config file {} does not parse: {}",
            path.display(),
            e.to_string().trim_end()
        ))
    })?;
    let Some(f) = cfg.retention else {
        return Ok(Policy::default());
    };
    let dur = |v: Option<String>| -> Result<Option<Duration>> {
        v.map(|s| {
            parse_duration(&s)
                .map_err(|e| Error::InvalidInput(format!("Config file {}: {e}", path.display())))
        })
        .transpose()
    };
    let p = Policy {
        keep_last: f.keep_last,
        keep_hourly: f.keep_hourly,
        keep_daily: f.keep_daily,
        keep_weekly: f.keep_weekly,
        keep_monthly: f.keep_monthly,
        keep_yearly: f.keep_yearly,
        keep_within: dur(f.keep_within)?,
        pitr_window: dur(f.pitr_window)?,
    };
    p.validate()
        .map_err(|e| Error::InvalidInput(format!("Config file {}: {e}", path.display())))?;
    Ok(p)
}

/// Why a backup point is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
    Within,
    Pitr,
    /// Kept by the safety net, not by a rule.
    Newest,
    /// No rule applies to this kind: the group is left alone.
    NoRule,
}

impl Reason {
    /// The name printed and used in JSON.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::Last => "last",
            Reason::Hourly => "hourly",
            Reason::Daily => "daily",
            Reason::Weekly => "weekly",
            Reason::Monthly => "monthly",
            Reason::Yearly => "yearly",
            Reason::Within => "within",
            Reason::Pitr => "pitr-window",
            Reason::Newest => "newest",
            Reason::NoRule => "no rule for this kind",
        }
    }
}

/// Which backup points `forget` considers: empty lists mean all.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub dbs: Vec<String>,
    pub kinds: Vec<SnapshotKind>,
}

impl Filter {
    fn matches(&self, m: &SnapshotManifest) -> bool {
        (self.dbs.is_empty() || self.dbs.contains(&m.db))
            && (self.kinds.is_empty() || self.kinds.contains(&m.kind))
    }
}

/// The verdict on one backup point.
#[derive(Debug, Clone)]
pub struct Decision {
    pub snapshot: SnapshotManifest,
    /// Empty when the backup point is to be removed.
    pub reasons: Vec<Reason>,
}

impl Decision {
    /// Whether it stays.
    pub fn keep(&self) -> bool {
        !self.reasons.is_empty()
    }
}

/// The verdicts on one database and kind, newest first.
#[derive(Debug, Clone)]
pub struct GroupPlan {
    pub db: String,
    pub kind: SnapshotKind,
    /// For base backups, the cluster's system identifier: clusters of a fleet that
    /// share a label are kept apart, so one's backups never count for another's.
    pub system: Option<u64>,
    pub decisions: Vec<Decision>,
}

/// What a policy does to a repository's backup points.
#[derive(Debug, Clone)]
pub struct ForgetPlan {
    pub policy: Policy,
    pub now: DateTime<Utc>,
    pub groups: Vec<GroupPlan>,
}

impl ForgetPlan {
    /// The backup points to remove.
    pub fn to_remove(&self) -> impl Iterator<Item = &SnapshotManifest> {
        self.groups
            .iter()
            .flat_map(|g| g.decisions.iter())
            .filter(|d| !d.keep())
            .map(|d| &d.snapshot)
    }

    /// The backup points to keep.
    pub fn to_keep(&self) -> impl Iterator<Item = &SnapshotManifest> {
        self.groups
            .iter()
            .flat_map(|g| g.decisions.iter())
            .filter(|d| d.keep())
            .map(|d| &d.snapshot)
    }

    /// For WAL retention: the oldest base backup of `db` that stays. WAL from before
    /// its start is needed by no kept base backup, and WAL from its start on is needed
    /// to bring it (and every newer one) to consistency and through the PITR window.
    /// `None` when no base backup of `db` stays, in which case WAL retention must keep
    /// everything rather than guess.
    pub fn wal_anchor(&self, db: &str) -> Option<&SnapshotManifest> {
        self.groups
            .iter()
            .filter(|g| g.db == db && g.kind == SnapshotKind::Base)
            .flat_map(|g| g.decisions.iter())
            .filter(|d| d.keep())
            .map(|d| &d.snapshot)
            .min_by_key(|m| (m.time, m.started))
    }
}

/// The base backup a PITR window of `window` rests on at `now`: the newest one at
/// least `window` old. `None` when all are younger (then all are kept). Exposed for WAL
/// retention, which keeps WAL from this backup's start on.
pub fn pitr_anchor(
    bases: &[SnapshotManifest],
    window: Duration,
    now: DateTime<Utc>,
) -> Option<&SnapshotManifest> {
    let edge = crate::time::before(now, window);
    bases
        .iter()
        .filter(|m| m.kind == SnapshotKind::Base && m.time <= edge)
        .max_by_key(|m| (m.time, m.id.clone()))
}

/// Applies `policy` at time `now` to the backup points `filter` selects, grouped by
/// database and kind (and base backups by cluster).
///
/// Errors: `InvalidInput` when the policy is empty or invalid, or would remove every
/// backup point of some group (naming the group).
pub fn plan(
    snapshots: &[SnapshotManifest],
    policy: &Policy,
    filter: &Filter,
    now: DateTime<Utc>,
) -> Result<ForgetPlan> {
    if policy.is_empty() {
        return Err(Error::InvalidInput(format!(
            "No retention policy: give --keep-last, --keep-daily, --keep-within, --pitr-window … \
             or set a [retention] table in {DEFAULT_CONFIG} (or --config)"
        )));
    }
    policy.validate()?;
    type Group = (String, SnapshotKind, Option<u64>);
    let mut groups: BTreeMap<Group, Vec<SnapshotManifest>> = BTreeMap::new();
    for m in snapshots.iter().filter(|m| filter.matches(m)) {
        let system = m.base.as_ref().map(|b| b.system_identifier);
        groups
            .entry((m.db.clone(), m.kind, system))
            .or_default()
            .push(m.clone());
    }
    let mut out = Vec::with_capacity(groups.len());
    for ((db, kind, system), mut snaps) in groups {
        snaps.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.id.cmp(&a.id)));
        let reasons = evaluate(&snaps, policy, kind, now);
        if policy.applies_to(kind) && reasons.iter().all(|r| r.is_empty()) {
            let newest = &snaps[0];
            let of = system.map_or(String::new(), |s| format!(" of database system {s}"));
            return Err(Error::InvalidInput(format!(
                "Policy {} would remove all {} backup points of {db} ({kind}{of}), the newest \
                 being {} from {}: refusing (have backups stopped?); add --keep-last 1 to keep the newest",
                policy.describe(),
                snaps.len(),
                newest.short_id(),
                newest.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )));
        }
        let mut decisions: Vec<Decision> = snaps
            .into_iter()
            .zip(reasons)
            .map(|(snapshot, reasons)| Decision { snapshot, reasons })
            .collect();
        if !decisions[0].keep() {
            decisions[0].reasons.push(Reason::Newest);
        }
        out.push(GroupPlan {
            db,
            kind,
            system,
            decisions,
        });
    }
    Ok(ForgetPlan {
        policy: policy.clone(),
        now,
        groups: out,
    })
}

/// The reasons each backup point of one group (newest first) is kept.
fn evaluate(
    snaps: &[SnapshotManifest],
    policy: &Policy,
    kind: SnapshotKind,
    now: DateTime<Utc>,
) -> Vec<Vec<Reason>> {
    let mut reasons: Vec<Vec<Reason>> = vec![Vec::new(); snaps.len()];
    if !policy.applies_to(kind) {
        for r in &mut reasons {
            r.push(Reason::NoRule);
        }
        return reasons;
    }
    if let Some(n) = policy.keep_last {
        for r in reasons.iter_mut().take(n as usize) {
            r.push(Reason::Last);
        }
    }
    type Bucket = fn(&DateTime<Utc>) -> (i32, u32, u32, u32);
    let buckets: [(Option<u32>, Reason, Bucket); 5] = [
        (policy.keep_hourly, Reason::Hourly, |t| {
            (t.year(), t.ordinal(), t.hour(), 0)
        }),
        (policy.keep_daily, Reason::Daily, |t| {
            (t.year(), t.ordinal(), 0, 0)
        }),
        (policy.keep_weekly, Reason::Weekly, |t| {
            let w = t.iso_week();
            (w.year(), w.week(), 0, 0)
        }),
        (policy.keep_monthly, Reason::Monthly, |t| {
            (t.year(), t.month(), 0, 0)
        }),
        (policy.keep_yearly, Reason::Yearly, |t| (t.year(), 0, 0, 0)),
    ];
    for (count, reason, bucket) in buckets {
        let Some(n) = count else { continue };
        let mut kept = 0;
        let mut last = None;
        for (m, r) in snaps.iter().zip(reasons.iter_mut()) {
            if kept >= n {
                break;
            }
            let b = bucket(&m.time);
            if last != Some(b) {
                r.push(reason);
                kept += 1;
                last = Some(b);
            }
        }
    }
    if let Some(d) = policy.keep_within {
        let edge = crate::time::before(now, d);
        for (m, r) in snaps.iter().zip(reasons.iter_mut()) {
            if m.time > edge {
                r.push(Reason::Within);
            }
        }
    }
    if let (Some(w), SnapshotKind::Base) = (policy.pitr_window, kind) {
        let anchor_time = pitr_anchor(snaps, w, now).map(|a| a.time);
        for (m, r) in snaps.iter().zip(reasons.iter_mut()) {
            if anchor_time.is_none_or(|t| m.time >= t) {
                r.push(Reason::Pitr);
            }
        }
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::manifest::BackupStats;

    fn snap(db: &str, kind: SnapshotKind, time: &str) -> SnapshotManifest {
        let t = DateTime::parse_from_rfc3339(time)
            .unwrap()
            .with_timezone(&Utc);
        SnapshotManifest {
            id: hex::encode(blake3::hash(format!("{db}{kind}{time}").as_bytes()).as_bytes()),
            time: t,
            started: t,
            finished: t,
            db: db.into(),
            kind,
            hostname: "h".into(),
            file_name: format!("{db}.dump"),
            size_bytes: 0,
            chunks: vec![],
            stats: BackupStats::default(),
            dump_offsets_filled: false,
            base: None,
            dump_contents: None,
            recreation: None,
            sketches: Vec::new(),
        }
    }

    fn kept_times(plan: &ForgetPlan) -> Vec<String> {
        let mut v: Vec<String> = plan
            .to_keep()
            .map(|m| m.time.format("%Y-%m-%dT%H").to_string())
            .collect();
        v.sort();
        v
    }

    fn daily(db: &str, days: std::ops::Range<u32>) -> Vec<SnapshotManifest> {
        // 2024-07-01 was a Monday.
        days.map(|d| {
            let t = chrono::NaiveDate::from_ymd_opt(2024, 7, 1).unwrap()
                + chrono::Days::new(u64::from(d));
            snap(db, SnapshotKind::Dump, &format!("{t}T02:00:00Z"))
        })
        .collect()
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2024-09-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn daily_and_weekly_keep_the_newest_of_each_day_and_week() {
        // 35 days from Mon 2024-07-01, plus a second backup on the last day.
        let mut snaps = daily("footdash", 0..35);
        snaps.push(snap("footdash", SnapshotKind::Dump, "2024-08-04T20:00:00Z"));
        let p = Policy {
            keep_daily: Some(7),
            keep_weekly: Some(4),
            ..Policy::default()
        };
        let plan = plan(&snaps, &p, &Filter::default(), now()).unwrap();
        // Days 29..=34 at 02:00 plus the 20:00 backup of day 34 (Sun 2024-08-04):
        // the daily rule takes 08-04T20, 08-03 .. 07-29 (7 days); weekly takes the
        // newest of the weeks ending 08-04, 07-28, 07-21, 07-14.
        assert_eq!(
            kept_times(&plan),
            vec![
                "2024-07-14T02",
                "2024-07-21T02",
                "2024-07-28T02",
                "2024-07-29T02",
                "2024-07-30T02",
                "2024-07-31T02",
                "2024-08-01T02",
                "2024-08-02T02",
                "2024-08-03T02",
                "2024-08-04T20",
            ]
        );
        let g = &plan.groups[0];
        assert_eq!(g.decisions[0].reasons, vec![Reason::Daily, Reason::Weekly]);
        assert_eq!(plan.to_remove().count(), 36 - 10);
    }

    #[test]
    fn last_hourly_monthly_yearly_and_within() {
        let snaps = daily("db", 0..62); // 2024-07-01 .. 2024-08-31
        let by = |p: Policy| kept_times(&plan(&snaps, &p, &Filter::default(), now()).unwrap());
        assert_eq!(
            by(Policy {
                keep_last: Some(2),
                ..Policy::default()
            }),
            vec!["2024-08-30T02", "2024-08-31T02"]
        );
        assert_eq!(
            by(Policy {
                keep_monthly: Some(5),
                ..Policy::default()
            }),
            vec!["2024-07-31T02", "2024-08-31T02"]
        );
        assert_eq!(
            by(Policy {
                keep_yearly: Some(1),
                ..Policy::default()
            }),
            vec!["2024-08-31T02"]
        );
        assert_eq!(
            by(Policy {
                keep_hourly: Some(3),
                ..Policy::default()
            })
            .len(),
            3
        );
        // now is 2024-09-01T00: within 3d keeps 08-29T02 .. 08-31T02.
        assert_eq!(
            by(Policy {
                keep_within: Some(parse_duration("3d").unwrap()),
                ..Policy::default()
            }),
            vec!["2024-08-29T02", "2024-08-30T02", "2024-08-31T02"]
        );
    }

    #[test]
    fn groups_are_per_database_and_kind_and_filters_apply() {
        let mut snaps = daily("a", 0..5);
        snaps.extend(daily("b", 0..3));
        snaps.push(snap("a", SnapshotKind::Base, "2024-07-01T03:00:00Z"));
        let p = Policy {
            keep_last: Some(1),
            ..Policy::default()
        };
        let plan1 = plan(&snaps, &p, &Filter::default(), now()).unwrap();
        assert_eq!(plan1.groups.len(), 3);
        assert_eq!(plan1.to_keep().count(), 3);
        let only_b = Filter {
            dbs: vec!["b".into()],
            kinds: vec![],
        };
        let plan2 = plan(&snaps, &p, &only_b, now()).unwrap();
        assert_eq!(plan2.groups.len(), 1);
        assert_eq!(plan2.to_remove().count(), 2);
        let only_base = Filter {
            dbs: vec![],
            kinds: vec![SnapshotKind::Base],
        };
        let plan3 = plan(&snaps, &p, &only_base, now()).unwrap();
        assert_eq!(plan3.to_remove().count(), 0);
    }

    #[test]
    fn a_policy_that_removes_everything_and_no_policy_are_refused() {
        let snaps = daily("footdash", 0..5);
        let p = Policy {
            keep_within: Some(parse_duration("1d").unwrap()),
            ..Policy::default()
        };
        let e = plan(&snaps, &p, &Filter::default(), now())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("would remove all 5 backup points of footdash"),
            "{e}"
        );
        let e = plan(&snaps, &Policy::default(), &Filter::default(), now())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("No retention policy"), "{e}");
        let zero = Policy {
            keep_last: Some(0),
            ..Policy::default()
        };
        assert!(plan(&snaps, &zero, &Filter::default(), now()).is_err());
    }

    #[test]
    fn pitr_window_keeps_the_newest_base_at_least_that_old_and_leaves_dumps_alone() {
        let mut snaps: Vec<SnapshotManifest> = [
            "2024-08-01T01:00:00Z",
            "2024-08-15T01:00:00Z",
            "2024-08-22T01:00:00Z",
            "2024-08-25T01:00:00Z",
            "2024-08-29T01:00:00Z",
        ]
        .iter()
        .map(|t| snap("cluster", SnapshotKind::Base, t))
        .collect();
        snaps.extend(daily("cluster", 0..3));
        let p = Policy {
            pitr_window: Some(parse_duration("7d").unwrap()),
            ..Policy::default()
        };
        let plan = plan(&snaps, &p, &Filter::default(), now()).unwrap();
        // now - 7d = 08-25T00: the newest base at least 7 days old is 08-22.
        let removed: Vec<String> = plan
            .to_remove()
            .map(|m| m.time.format("%m-%d").to_string())
            .collect();
        assert_eq!(removed, vec!["08-15", "08-01"]);
        assert_eq!(
            plan.wal_anchor("cluster")
                .unwrap()
                .time
                .format("%m-%d")
                .to_string(),
            "08-22"
        );
        let dumps = plan
            .groups
            .iter()
            .find(|g| g.kind == SnapshotKind::Dump)
            .unwrap();
        assert!(dumps
            .decisions
            .iter()
            .all(|d| d.reasons == vec![Reason::NoRule]));
        // All bases younger than the window: all stay.
        let young = Policy {
            pitr_window: Some(parse_duration("60d").unwrap()),
            ..Policy::default()
        };
        assert_eq!(
            super::plan(&snaps, &young, &Filter::default(), now())
                .unwrap()
                .to_remove()
                .count(),
            0
        );
    }

    #[test]
    fn config_files_parse_and_reject_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("retention.toml");
        std::fs::write(
            &f,
            "[retention]\nkeep-daily = 7\nkeep-weekly = 4\nkeep-within = \"30d\"\npitr-window = \"7d\"\n",
        )
        .unwrap();
        let p = load_policy(&f).unwrap();
        assert_eq!(p.keep_daily, Some(7));
        assert_eq!(p.keep_weekly, Some(4));
        assert_eq!(p.keep_within, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(p.pitr_window, Some(Duration::from_secs(7 * 86_400)));
        std::fs::write(&f, "[retention]\nkeep-dayly = 7\n").unwrap();
        let e = load_policy(&f).unwrap_err().to_string();
        assert!(
            e.contains("does not parse") && e.contains("keep-dayly"),
            "{e}"
        );
        std::fs::write(&f, "[retention]\nkeep-within = \"soon\"\n").unwrap();
        assert!(load_policy(&f).is_err());
    }
}
