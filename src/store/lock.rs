//! Repository locks: shared for writers (backup, wal-push), exclusive for forget and
//! prune, stored as sealed objects under `locks/<id>` and created with
//! put-if-absent (`O_EXCL`-style hard link locally, `If-None-Match: *` on S3).
//!
//! # What keeps prune from deleting a chunk a backup is about to reference
//!
//! Two mechanisms, because each covers a hole of the other:
//!
//! 1. **Locks (the primary mechanism).** A backup holds a shared lock from before it
//!    reads the local chunk cache until after its manifest is written; prune holds an
//!    exclusive lock from before it lists anything until its last delete. So a prune
//!    never plans or deletes while a backup runs. Only locks can cover the dangerous
//!    case of deduplication: a backup that finds an *old*, unreferenced chunk already
//!    stored (in its cache, or by asking the backend) skips uploading it and will
//!    reference it in its manifest. No age rule can protect that chunk, because it is
//!    old. The protocol is "write your lock, then list the others": with a store that
//!    lists what was written before (a local directory, S3 since 2020), of two
//!    processes that lock at once at least one sees the other. A shared locker that
//!    sees a live exclusive lock removes its own and waits; an exclusive locker that
//!    sees another live exclusive lock also removes its own and waits (with jitter, so
//!    two prunes cannot step aside for ever), and one that sees shared locks keeps its
//!    own and waits for them to finish, so new backups queue behind it while the
//!    running ones complete. Every wait is bounded (`--lock-wait`): a cron backup waits
//!    for a prune rather than failing, and gives up with the holders named only when
//!    the wait runs out.
//!
//! 2. **A grace period (defence in depth).** Prune deletes only chunks that were in its
//!    own listing, taken after its lock, so chunks uploaded while it runs are never
//!    candidates ("newer than the start of prune"). In addition it keeps every
//!    unreferenced chunk written after the creation of the oldest other lock it could
//!    not prove dead (minus a clock-skew margin), and optionally everything younger
//!    than `--grace`. That covers the writers the locks cannot: a backup on another
//!    host whose lock prune took for stale (not refreshed for [`STALE_AFTER`] because
//!    its machine was suspended, say) but which is alive, and writers that take no
//!    lock at all. Those chunks wait for a later prune.
//!
//! A lock is **stale** when its process is certainly gone (same host, and the pid no
//! longer runs or now belongs to another process, told apart by its start time), or,
//! for another host, when it has not been refreshed for [`STALE_AFTER`]. Holders
//! refresh every [`REFRESH_EVERY`]. Stale locks block nobody and are reported; `pgvault
//! unlock` removes them. A holder that could not refresh its lock for too long, or
//! whose lock was removed, stops before its next irreversible step (prune before each
//! batch of deletes, a backup before writing its manifest), since another process may
//! have taken the lock for stale.
//!
//! Locks are the one kind of object that is rewritten in place (refreshing puts the
//! same key again): they describe state, not data, and nothing is lost if a refresh
//! and a concurrent `unlock --all` cross.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::layout;
use super::Repository;
use crate::error::{Error, ErrorKind, Result};
use crate::host::{hostname, probe_process, ProcessProbe};
use crate::time::format_duration;

/// How often a holder rewrites its lock with a new `refreshed` time.
pub const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);

/// How long a lock from another host may go unrefreshed before it counts as stale.
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);

/// How much clocks (of hosts and of the store) may disagree, for age comparisons
/// across machines.
pub const CLOCK_SKEW: Duration = Duration::from_secs(10 * 60);

/// Shared or exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockKind {
    /// Writers: many at once, none while an exclusive lock is held.
    Shared,
    /// forget and prune: alone in the repository.
    Exclusive,
}

impl LockKind {
    /// The lowercase name used in messages and JSON.
    pub fn as_str(&self) -> &'static str {
        match self {
            LockKind::Shared => "shared",
            LockKind::Exclusive => "exclusive",
        }
    }
}

/// What a lock object says about its holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    pub id: String,
    pub kind: LockKind,
    /// The command holding it: `backup`, `prune`, `forget`, `wal-push`.
    pub operation: String,
    pub hostname: String,
    pub pid: u32,
    /// The holder's start time in clock ticks after boot (Linux), so that a pid
    /// reused by another program is not taken for the holder.
    #[serde(default)]
    pub pid_start: Option<u64>,
    pub created: chrono::DateTime<chrono::Utc>,
    pub refreshed: chrono::DateTime<chrono::Utc>,
}

/// Whether a lock still protects a running process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    Live,
    /// Blocks nobody. `certain` when the holder is known to be gone (same host); an
    /// uncertain one may belong to a process that is only slow, so prune's grace period
    /// still respects it.
    Stale {
        reason: String,
        certain: bool,
    },
}

impl LockInfo {
    fn new(kind: LockKind, operation: &str) -> Self {
        let now = chrono::Utc::now();
        let pid = std::process::id();
        LockInfo {
            id: hex::encode(crate::crypto::random_bytes::<16>()),
            kind,
            operation: operation.to_string(),
            hostname: hostname(),
            pid,
            pid_start: match probe_process(pid) {
                ProcessProbe::Running { start } => start,
                _ => None,
            },
            created: now,
            refreshed: now,
        }
    }

    /// The object key of this lock.
    pub fn key(&self) -> String {
        layout::lock(&self.id)
    }

    /// Whether the lock still stands for a running process, judged at `now` on host
    /// `this_host`, with `probe` telling about processes on this host.
    pub fn liveness(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        this_host: &str,
        probe: impl Fn(u32) -> ProcessProbe,
        stale_after: Duration,
    ) -> Liveness {
        if self.hostname == this_host {
            match probe(self.pid) {
                ProcessProbe::Gone => {
                    return Liveness::Stale {
                        reason: format!("process {} no longer runs on this host", self.pid),
                        certain: true,
                    }
                }
                ProcessProbe::Running { start: Some(s) }
                    if self.pid_start.is_some_and(|p| p != s) =>
                {
                    return Liveness::Stale {
                        reason: format!("process {} on this host is another program now", self.pid),
                        certain: true,
                    }
                }
                ProcessProbe::Running { .. } => return Liveness::Live,
                ProcessProbe::Unknown => {}
            }
        }
        let quiet = (now - self.refreshed).to_std().unwrap_or_default();
        if quiet > stale_after {
            Liveness::Stale {
                reason: format!("not refreshed for {}", format_duration(quiet)),
                certain: false,
            }
        } else {
            Liveness::Live
        }
    }

    /// "exclusive lock of prune on host db1, pid 1234, taken 2h 3m ago".
    pub fn describe(&self, now: chrono::DateTime<chrono::Utc>) -> String {
        format!(
            "{} lock of {} on host {}, pid {}, taken {} ago",
            self.kind.as_str(),
            self.operation,
            self.hostname,
            self.pid,
            format_duration((now - self.created).to_std().unwrap_or_default())
        )
    }
}

/// One lock object found in the repository.
#[derive(Debug, Clone)]
pub struct FoundLock {
    pub key: String,
    /// `None` when the object cannot be read (then `liveness` says why).
    pub info: Option<LockInfo>,
    pub liveness: Liveness,
    /// When the store wrote the object, if it can tell.
    pub modified: Option<chrono::DateTime<chrono::Utc>>,
}

impl FoundLock {
    /// Whether the lock blocks others.
    pub fn is_live(&self) -> bool {
        self.liveness == Liveness::Live
    }

    /// A sentence for messages, with the reason when stale.
    pub fn describe(&self, now: chrono::DateTime<chrono::Utc>) -> String {
        let what = match &self.info {
            Some(i) => i.describe(now),
            None => format!("unreadable lock {}", self.key),
        };
        match &self.liveness {
            Liveness::Live => what,
            Liveness::Stale { reason, .. } => format!("{what} (stale: {reason})"),
        }
    }

    /// When the lock was taken, for the grace period: its own time, or the store's.
    fn created(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.info.as_ref().map(|i| i.created).or(self.modified)
    }
}

fn seal(repo: &Repository, info: &LockInfo) -> Vec<u8> {
    let json = serde_json::to_vec(info).expect("lock serialises");
    repo.seal_json(&info.key(), &json)
}

impl Repository {
    /// Every lock in the repository, judged live or stale now.
    ///
    /// Errors: backend errors (an unreadable lock is reported as stale, not an error).
    pub async fn locks(&self) -> Result<Vec<FoundLock>> {
        let now = chrono::Utc::now();
        let host = hostname();
        let mut out = Vec::new();
        for obj in self.backend().list_stat(layout::LOCKS).await? {
            let parsed = if obj.size_bytes > layout::SMALL_OBJECT_MAX_BYTES {
                Err(Error::Corrupt(format!(
                    "Lock {} is {} bytes, no lock",
                    obj.key, obj.size_bytes
                )))
            } else {
                self.get_json(&obj.key).await
            };
            let parsed = match parsed {
                // Released between the listing and the read.
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) if e.kind() != ErrorKind::Corrupt => return Err(e),
                sealed => sealed.and_then(|j| {
                    serde_json::from_slice::<LockInfo>(&j).map_err(|e| {
                        Error::Corrupt(format!("Lock {} does not parse: {e}", obj.key))
                    })
                }),
            };
            let found = match parsed {
                Ok(info) if info.key() == obj.key => FoundLock {
                    key: obj.key,
                    liveness: info.liveness(now, &host, probe_process, STALE_AFTER),
                    info: Some(info),
                    modified: obj.modified,
                },
                Ok(_) => FoundLock {
                    liveness: Liveness::Stale {
                        reason: "it names another lock".into(),
                        certain: false,
                    },
                    key: obj.key,
                    info: None,
                    modified: obj.modified,
                },
                Err(e) => FoundLock {
                    key: obj.key,
                    info: None,
                    liveness: Liveness::Stale {
                        reason: e.to_string(),
                        certain: false,
                    },
                    modified: obj.modified,
                },
            };
            out.push(found);
        }
        out.sort_by_key(|l| l.created());
        Ok(out)
    }

    /// Takes a lock of `kind` for `operation`, waiting up to `wait` for conflicting
    /// live locks to go. The lock is refreshed in the background until released.
    ///
    /// Errors: `Locked` naming the holders when the wait runs out; `Unavailable`
    /// when the store refuses every new lock object; backend errors.
    pub async fn lock(&self, kind: LockKind, operation: &str, wait: Duration) -> Result<LockGuard> {
        let deadline = Instant::now() + wait;
        let mut info = LockInfo::new(kind, operation);
        let mut own: Option<String> = None;
        let mut announced = false;
        let mut warned_stale = std::collections::HashSet::new();
        let mut ids_tried = 0;
        loop {
            if own.is_none() {
                info.refreshed = chrono::Utc::now();
                if !self
                    .backend()
                    .put_if_absent(&info.key(), seal(self, &info))
                    .await?
                {
                    // 128 random bits do not collide by chance: a store that says
                    // "exists" again and again is refusing every conditional create.
                    ids_tried += 1;
                    if ids_tried >= 4 {
                        return Err(Error::Unavailable(format!(
                            "Cannot take a lock in {}: the store reports every new lock object as existing",
                            self.location()
                        )));
                    }
                    info.id = hex::encode(crate::crypto::random_bytes::<16>());
                    continue;
                }
                own = Some(info.key());
            }
            let now = chrono::Utc::now();
            let others: Vec<FoundLock> = self
                .locks()
                .await?
                .into_iter()
                .filter(|l| Some(&l.key) != own.as_ref())
                .collect();
            for l in others.iter().filter(|l| !l.is_live()) {
                if warned_stale.insert(l.key.clone()) {
                    tracing::warn!("Ignoring {}; `pgvault unlock` removes it", l.describe(now));
                }
            }
            let blockers: Vec<&FoundLock> = others
                .iter()
                .filter(|l| l.is_live())
                .filter(|l| {
                    kind == LockKind::Exclusive
                        || l.info.as_ref().map(|i| i.kind) == Some(LockKind::Exclusive)
                })
                .collect();
            if blockers.is_empty() {
                return Ok(LockGuard::start(self.clone(), info));
            }
            // Step aside for an exclusive holder, so that it can finish; an exclusive
            // locker waiting for shared ones keeps its place, so new writers queue.
            let yield_own = blockers
                .iter()
                .any(|l| l.info.as_ref().map(|i| i.kind) == Some(LockKind::Exclusive));
            let names = blockers
                .iter()
                .map(|l| l.describe(now))
                .collect::<Vec<_>>()
                .join("; ");
            if Instant::now() >= deadline {
                if let Some(k) = own.take() {
                    self.backend().delete(&k).await?;
                }
                return Err(Error::Locked(format!(
                    "Repository {} is locked: {names}; waited {} (--lock-wait)",
                    self.location(),
                    format_duration(wait)
                )));
            }
            if yield_own {
                if let Some(k) = own.take() {
                    self.backend().delete(&k).await?;
                }
            }
            if !announced {
                tracing::warn!(
                    "Waiting up to {} for {names}",
                    format_duration(deadline.saturating_duration_since(Instant::now()))
                );
                announced = true;
            }
            let jitter = u64::from(crate::crypto::random_bytes::<1>()[0]) * 4;
            let pause = Duration::from_millis(250 + jitter)
                .min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
        }
    }

    /// Removes stale locks, or every lock with `all`. Returns the locks removed.
    ///
    /// Errors: backend errors.
    pub async fn unlock(&self, all: bool) -> Result<Vec<FoundLock>> {
        let mut removed = Vec::new();
        for l in self.locks().await? {
            if all || !l.is_live() {
                self.backend().delete(&l.key).await?;
                removed.push(l);
            }
        }
        Ok(removed)
    }
}

/// The earliest time from which chunks may belong to the holder of a lock that is not
/// certainly dead: prune keeps unreferenced chunks written after it. `None` when no
/// such lock exists besides `own`.
pub fn oldest_uncertain_lock(
    locks: &[FoundLock],
    own: Option<&str>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    locks
        .iter()
        .filter(|l| Some(l.key.as_str()) != own)
        .filter(|l| !matches!(l.liveness, Liveness::Stale { certain: true, .. }))
        .filter_map(|l| l.created())
        .min()
}

#[derive(Debug)]
struct GuardState {
    last_refresh: Instant,
    lost: bool,
}

/// A held lock, refreshed in the background. Release it with
/// [`LockGuard::release_after`], the one way a lock is released; dropping it stops the
/// refreshing and leaves the object, which then turns stale.
#[derive(Debug)]
pub struct LockGuard {
    repo: Repository,
    info: LockInfo,
    state: Arc<Mutex<GuardState>>,
    refresher: tokio::task::JoinHandle<()>,
}

impl LockGuard {
    fn start(repo: Repository, info: LockInfo) -> Self {
        let state = Arc::new(Mutex::new(GuardState {
            last_refresh: Instant::now(),
            lost: false,
        }));
        let refresher = {
            let repo = repo.clone();
            let mut info = info.clone();
            let state = state.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(REFRESH_EVERY).await;
                    match repo.backend().exists(&info.key()).await {
                        Ok(false) => {
                            state.lock().expect("lock state").lost = true;
                            return;
                        }
                        Ok(true) => {}
                        Err(e) => {
                            tracing::warn!("Cannot refresh lock {}: {e}", info.key());
                            continue;
                        }
                    }
                    info.refreshed = chrono::Utc::now();
                    match repo.backend().put(&info.key(), seal(&repo, &info)).await {
                        Ok(()) => state.lock().expect("lock state").last_refresh = Instant::now(),
                        Err(e) => tracing::warn!("Cannot refresh lock {}: {e}", info.key()),
                    }
                }
            })
        };
        LockGuard {
            repo,
            info,
            state,
            refresher,
        }
    }

    /// What the lock says.
    pub fn info(&self) -> &LockInfo {
        &self.info
    }

    /// Checks that the lock still protects us before an irreversible step: it exists,
    /// and it has been refreshed recently enough that nobody can have taken it for stale.
    ///
    /// Errors: `Locked` when the lock was removed or went unrefreshed too long;
    /// backend errors.
    pub async fn ensure_held(&self) -> Result<()> {
        let (quiet, lost) = {
            let s = self.state.lock().expect("lock state");
            (s.last_refresh.elapsed(), s.lost)
        };
        let what = format!(
            "The {} lock {} of this {}",
            self.info.kind.as_str(),
            self.info.key(),
            self.info.operation
        );
        if lost || !self.repo.backend().exists(&self.info.key()).await? {
            return Err(Error::Locked(format!(
                "{what} was removed by another process (pgvault unlock --all?): stopping"
            )));
        }
        // Leave a margin: others judge by their own clocks.
        if quiet + CLOCK_SKEW > STALE_AFTER {
            return Err(Error::Locked(format!(
                "{what} could not be refreshed for {}, so others may take it for stale: stopping",
                format_duration(quiet)
            )));
        }
        Ok(())
    }

    /// Releases the lock once the work it protected is done, and passes on that
    /// work's `result`. When both the work and the release fail, the work's error is
    /// the one returned (it is what the user must act on) and the release failure is
    /// logged: the lock then turns stale, which blocks nobody for long.
    ///
    /// Errors: `result`'s error; else a backend error from removing the lock.
    pub async fn release_after<T>(self, result: Result<T>) -> Result<T> {
        self.refresher.abort();
        let released = self.repo.backend().delete(&self.info.key()).await;
        match (result, released) {
            (Ok(v), Ok(())) => Ok(v),
            (Ok(_), Err(e)) => Err(e),
            (Err(e), Ok(())) => Err(e),
            (Err(e), Err(r)) => {
                // Most often the outage behind `e` itself: `e` says what to fix.
                tracing::info!(
                    "Cannot release lock {} ({r}); it turns stale and `pgvault unlock` removes it",
                    self.info.key()
                );
                Err(e)
            }
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339("2024-08-01T12:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc)
    }

    fn info(host: &str, pid: u32, pid_start: Option<u64>, age_min: i64) -> LockInfo {
        let t = t0() - chrono::Duration::minutes(age_min);
        LockInfo {
            id: "00".into(),
            kind: LockKind::Shared,
            operation: "backup".into(),
            hostname: host.into(),
            pid,
            pid_start,
            created: t,
            refreshed: t,
        }
    }

    #[test]
    fn staleness_on_this_host_follows_the_process() {
        let now = t0();
        let gone = |_| ProcessProbe::Gone;
        let running = |_| ProcessProbe::Running { start: Some(7) };
        let l = info("here", 10, Some(7), 0);
        assert!(matches!(
            l.liveness(now, "here", gone, STALE_AFTER),
            Liveness::Stale { certain: true, .. }
        ));
        // Old but running: a long backup on this host is not stale.
        let old = info("here", 10, Some(7), 600);
        assert_eq!(
            old.liveness(now, "here", running, STALE_AFTER),
            Liveness::Live
        );
        // The pid now belongs to a process that started at another time.
        let reused = info("here", 10, Some(3), 0);
        assert!(matches!(
            reused.liveness(now, "here", running, STALE_AFTER),
            Liveness::Stale { certain: true, .. }
        ));
        // No /proc: judged by age like a lock from elsewhere.
        let unknown = |_| ProcessProbe::Unknown;
        assert!(matches!(
            old.liveness(now, "here", unknown, STALE_AFTER),
            Liveness::Stale { certain: false, .. }
        ));
    }

    #[test]
    fn staleness_on_other_hosts_follows_the_refresh_time() {
        let now = t0();
        let never = |_| panic!("must not probe processes of other hosts");
        let fresh = info("there", 10, None, 5);
        assert_eq!(
            fresh.liveness(now, "here", never, STALE_AFTER),
            Liveness::Live
        );
        let old = info("there", 10, None, 31);
        match old.liveness(now, "here", never, STALE_AFTER) {
            Liveness::Stale { reason, certain } => {
                assert!(!certain);
                assert!(reason.contains("not refreshed for 31m"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn this_process_is_running_and_a_dead_pid_is_gone() {
        let me = std::process::id();
        assert!(matches!(
            probe_process(me),
            ProcessProbe::Running { start: Some(_) }
        ));
        // pid_max is at most 2^22 on Linux.
        assert_eq!(probe_process(u32::MAX - 1), ProcessProbe::Gone);
    }

    #[test]
    fn the_grace_period_ignores_only_certainly_dead_locks() {
        let mk = |key: &str, age: i64, liveness: Liveness| FoundLock {
            key: key.into(),
            info: Some(info("h", 1, None, age)),
            liveness,
            modified: None,
        };
        let locks = vec![
            mk(
                "locks/a",
                100,
                Liveness::Stale {
                    reason: "gone".into(),
                    certain: true,
                },
            ),
            mk(
                "locks/b",
                50,
                Liveness::Stale {
                    reason: "old".into(),
                    certain: false,
                },
            ),
            mk("locks/c", 10, Liveness::Live),
        ];
        let oldest = oldest_uncertain_lock(&locks, None).unwrap();
        assert_eq!(oldest, locks[1].info.as_ref().unwrap().created);
        assert_eq!(
            oldest_uncertain_lock(&locks[2..], Some("locks/c")),
            None,
            "our own lock does not count"
        );
    }
}
