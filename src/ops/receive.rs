//! `wal-receive`: streams WAL from the primary with PostgreSQL's own pg_receivewal
//! into a private spool and stores it through the same path as `wal-push`: every
//! completed segment, and every `--partial-interval` the segment still being written
//! (as a `.streamed` copy that recovery is served while the segment itself is not
//! archived), so a lost primary loses at most that interval's commits, not a segment.
//!
//! Why pg_receivewal rather than speaking the replication protocol here: it is
//! PostgreSQL's own client, released with the server, and already handles slots,
//! timeline switches, segment naming and the feedback that lets the primary recycle
//! WAL; no maintained Rust crate speaks physical replication (tokio-postgres has no
//! replication support in its releases). pgvault supervises it: it is started with
//! `--no-loop`, so a lost connection ends it, the partial segment is stored at once,
//! and it is started again after [`RESTART_AFTER`].

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::RepoAccess;
use crate::error::{Error, Result};
use crate::pg::{pg_program, ConnectOptions};
use crate::store::records::WalPushFailure;
use crate::store::wal::segment_system_identifier;
use crate::store::Repository;
use crate::wal_name::{streamed_name, WalFileKind};

/// How long after pg_receivewal exits it is started again.
pub const RESTART_AFTER: Duration = Duration::from_secs(5);
/// How often the slot's lag is read from the server and reported to the repository.
pub const REPORT_EVERY: Duration = Duration::from_secs(30);
const TICK: Duration = Duration::from_millis(500);

/// What `wal-receive` does.
#[derive(Debug, Clone)]
pub struct ReceiveOptions {
    pub conn: ConnectOptions,
    /// The replication slot that keeps the primary from recycling WAL not yet stored.
    pub slot: String,
    /// Create the slot when it does not exist.
    pub create_slot: bool,
    /// How often the segment being written is stored.
    pub partial_interval: Duration,
    /// pg_receivewal's directory: private, holding WAL not yet stored.
    pub spool: PathBuf,
    pub lock_wait: Duration,
}

/// What one pass over the spool stored.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReceiveStats {
    pub segments_stored: u64,
    pub streamed_copies_stored: u64,
}

/// Runs pg_receivewal and stores what it writes until `stop` completes; then stops
/// it and stores what is left.
///
/// Errors: `External` when the slot cannot be created or pg_receivewal cannot be
/// started at all; `Io` for the spool directory. Failures to store a file are
/// recorded (as wal-push failures) and retried, never fatal.
pub async fn receive(
    repo: &Repository,
    access: &RepoAccess,
    opts: &ReceiveOptions,
    stop: impl Future<Output = ()>,
) -> Result<ReceiveStats> {
    crate::store::cache::create_private_dir(&opts.spool)?;
    warn_of_other_spools(&opts.spool);
    if opts.create_slot {
        create_slot(opts).await?;
    }
    let mut spool = Spool {
        system: server_system(opts).await,
        ..Spool::default()
    };
    let mut child: Option<tokio::process::Child> = None;
    let mut last_start: Option<Instant> = None;
    let mut last_partial = Instant::now();
    let mut last_report: Option<Instant> = None;
    let mut tick = tokio::time::interval(TICK);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {}
        }
        let mut flush_partial = last_partial.elapsed() >= opts.partial_interval;
        let running = match child.as_mut() {
            Some(c) => match c.try_wait() {
                Ok(None) => true,
                Ok(Some(status)) => {
                    tracing::warn!(
                        "pg_receivewal exited ({status}); it is started again in {}",
                        crate::time::format_duration(RESTART_AFTER)
                    );
                    child = None;
                    // The primary may be gone: what was received must be stored now.
                    flush_partial = true;
                    false
                }
                Err(e) => return Err(Error::io("Cannot watch pg_receivewal", e)),
            },
            None => false,
        };
        if !running && last_start.is_none_or(|t| t.elapsed() >= RESTART_AFTER) {
            last_start = Some(Instant::now());
            child = Some(start_receiver(opts)?);
        }
        spool.store_completed(repo, access, opts).await;
        if flush_partial {
            spool.store_partial(repo, opts).await;
            last_partial = Instant::now();
        }
        // The first report once pg_receivewal had a moment to take the slot.
        let due = match last_report {
            Some(t) => t.elapsed() >= REPORT_EVERY,
            None => last_start.is_some_and(|t| t.elapsed() >= 4 * TICK),
        };
        if due {
            last_report = Some(Instant::now());
            report_slot(repo, opts).await;
        }
    }
    if let Some(mut c) = child {
        // SIGTERM: pg_receivewal flushes what it has and exits cleanly.
        if let Some(pid) = c.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), c.wait()).await;
    }
    spool.store_completed(repo, access, opts).await;
    spool.store_partial(repo, opts).await;
    // The last word: where the slot was left, for as long as nobody streams from it.
    report_slot(repo, opts).await;
    Ok(spool.stats)
}

/// Runs one query on the server over an ordinary connection (the `postgres`
/// database, or the one the connection string names), for at most 10 s.
///
/// Errors: `External` when psql fails, cannot start or takes longer.
async fn ask_server(opts: &ReceiveOptions, sql: &str) -> Result<String> {
    let db = opts.conn.conninfo.as_deref().unwrap_or("postgres");
    tokio::time::timeout(
        Duration::from_secs(10),
        crate::pg::client::psql(&opts.conn, db, sql),
    )
    .await
    .unwrap_or_else(|_| Err(Error::External("The server took over 10s to answer".into())))
}

/// The server's system identifier; `None` when the query is refused (a role that
/// may only replicate), and the segments tell.
async fn server_system(opts: &ReceiveOptions) -> Option<u64> {
    match ask_server(opts, "SELECT system_identifier FROM pg_control_system()").await {
        Ok(out) => out.trim().parse().ok(),
        Err(e) => {
            tracing::info!(
                "Cannot ask the server its system identifier ({e}): the segments will tell"
            );
            None
        }
    }
}

/// Reads the slot's position and the server's, and stores them as this receiver's
/// report. Failures are logged and reported, never fatal: streaming matters more.
async fn report_slot(repo: &Repository, opts: &ReceiveOptions) {
    let sql = format!(
        "WITH s AS (SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() \
         ELSE pg_current_wal_lsn() END AS lsn) \
         SELECT s.lsn, r.restart_lsn, pg_wal_lsn_diff(s.lsn, r.restart_lsn)::bigint, r.active \
         FROM s LEFT JOIN pg_replication_slots r ON r.slot_name = {}",
        crate::pg::client::quote_literal(&opts.slot)
    );
    let read = ask_server(opts, &sql).await;
    let mut report = crate::store::records::ReceiverReport {
        time: chrono::Utc::now(),
        slot: opts.slot.clone(),
        hostname: crate::host::hostname(),
        server_lsn: None,
        slot_restart_lsn: None,
        slot_retained_bytes: None,
        slot_active: None,
        error: None,
    };
    match read {
        Ok(row) => {
            let f: Vec<&str> = row.split('|').collect();
            let field = |i: usize| f.get(i).filter(|v| !v.is_empty()).map(|v| v.to_string());
            report.server_lsn = field(0);
            report.slot_restart_lsn = field(1);
            report.slot_retained_bytes = field(2).and_then(|v| v.parse().ok());
            report.slot_active = field(3).map(|v| v == "t");
            if report.slot_restart_lsn.is_none() {
                report.error = Some(format!(
                    "Replication slot {} does not exist on the server, or holds no WAL yet",
                    opts.slot
                ));
            }
        }
        Err(e) => {
            tracing::warn!("Cannot read replication slot {}: {e}", opts.slot);
            report.error = Some(e.to_string());
        }
    }
    if let Err(e) = repo.put_receiver_report(&report).await {
        tracing::warn!("Cannot store the report of slot {}: {e}", opts.slot);
    }
}

async fn create_slot(opts: &ReceiveOptions) -> Result<()> {
    let mut cmd = tokio::process::Command::new(pg_program("pg_receivewal"));
    cmd.args(["--create-slot", "--if-not-exists", "--slot"])
        .arg(&opts.slot)
        .args(opts.conn.client_args())
        .args(opts.conn.conninfo.iter().map(|c| format!("--dbname={c}")))
        .stdin(std::process::Stdio::null());
    let out = cmd
        .output()
        .await
        .map_err(|e| Error::External(format!("Cannot start pg_receivewal: {e}")))?;
    if !out.status.success() {
        return Err(Error::External(format!(
            "pg_receivewal could not create replication slot {}: {}",
            opts.slot,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn start_receiver(opts: &ReceiveOptions) -> Result<tokio::process::Child> {
    let path = pg_program("pg_receivewal");
    let mut cmd = tokio::process::Command::new(&path);
    cmd.arg("--directory")
        .arg(&opts.spool)
        .args(["--slot", &opts.slot, "--no-loop"])
        .args(opts.conn.client_args())
        .args(opts.conn.conninfo.iter().map(|c| format!("--dbname={c}")))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    cmd.spawn()
        .map_err(|e| Error::External(format!("Cannot start {}: {e}", path.display())))
}

/// The bytes of a pg_receivewal `.partial` file received so far: it is zero-filled
/// to the segment size ahead of what was written, and WAL never ends in zeros
/// (every record has a non-zero length and checksum).
pub fn received_bytes(data: &[u8]) -> u32 {
    data.iter()
        .rposition(|&b| b != 0)
        .map_or(0, |i| u32::try_from(i + 1).unwrap_or(u32::MAX))
}

#[derive(Default)]
struct Spool {
    /// The newest `.streamed` copy this run stored, by segment: the same bytes are
    /// not stored twice, and a copy is deleted only once a newer copy of the same
    /// segment or the segment itself is stored.
    streamed: std::collections::BTreeMap<String, (Option<u64>, String)>,
    /// The database system of the newest segment stored: the one a `.history` file
    /// pg_receivewal fetches belongs to.
    system: Option<u64>,
    stats: ReceiveStats,
}

impl Spool {
    /// Stores each completed file in the spool, oldest first, and removes it once
    /// durable. A failure is recorded and left for the next pass.
    async fn store_completed(
        &mut self,
        repo: &Repository,
        access: &RepoAccess,
        opts: &ReceiveOptions,
    ) {
        let mut names: Vec<String> = match std::fs::read_dir(&opts.spool) {
            Ok(d) => d
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| {
                    matches!(
                        WalFileKind::parse(n),
                        Ok(WalFileKind::Segment { .. } | WalFileKind::History { .. })
                    )
                })
                .collect(),
            Err(e) => {
                tracing::warn!("Cannot read the spool {}: {e}", opts.spool.display());
                return;
            }
        };
        names.sort();
        for name in names {
            let path = opts.spool.join(&name);
            let time = chrono::Utc::now();
            // A history file names no system: it is the one whose segments came
            // before it on this connection.
            let segment = matches!(WalFileKind::parse(&name), Ok(WalFileKind::Segment { .. }));
            if let Some(system) = read_head(&path)
                .filter(|_| segment)
                .and_then(|h| segment_system_identifier(&name, &h))
            {
                self.system = Some(system);
            }
            if !segment && self.system.is_none() {
                self.system = newest_partial(&opts.spool).and_then(|(seg, partial)| {
                    segment_system_identifier(&seg, &read_head(&partial)?)
                });
            }
            if !segment && self.system.is_none() {
                // Stored without its system it would land where every cluster's
                // recovery finds it: kept until a segment says whose it is.
                tracing::debug!("Keeping {name} until the server's system identifier is known");
                continue;
            }
            match super::wal::push_opened(repo, &path, &name, self.system, opts.lock_wait).await {
                Ok(_) => {
                    tracing::info!("Stored streamed {name}");
                    self.stats.segments_stored += 1;
                    let _ = std::fs::remove_file(&path);
                    self.streamed.remove(&name);
                    if segment {
                        drop_copies(repo, self.system, &name, None).await;
                    }
                }
                Err(e) => {
                    tracing::warn!("Cannot store streamed {name}: {e}");
                    let failure = WalPushFailure {
                        time,
                        name,
                        error: e.to_string(),
                        hostname: crate::host::hostname(),
                    };
                    super::record_or_spool(access, Some(repo), &failure).await;
                    // The later files are stored all the same: one that cannot be
                    // (refused, unreadable) must not hold up the rest.
                }
            }
        }
    }

    /// Stores the segment being written as `<segment>.<received>.streamed`, unless
    /// that much of it is stored already.
    async fn store_partial(&mut self, repo: &Repository, opts: &ReceiveOptions) {
        let Some((segment, path)) = newest_partial(&opts.spool) else {
            return;
        };
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            // Completed and renamed between the listing and the read.
            Err(_) => return,
        };
        let received = received_bytes(&data);
        if received == 0 {
            return;
        }
        let name = streamed_name(&segment, received);
        if self.streamed.get(&segment).is_some_and(|(_, n)| *n == name) {
            return;
        }
        let system = segment_system_identifier(&segment, &data);
        match super::wal::push_bytes(repo, &name, data, system, opts.lock_wait).await {
            Ok(_) => {
                tracing::debug!("Stored {name}");
                self.stats.streamed_copies_stored += 1;
                match self
                    .streamed
                    .insert(segment.clone(), (system, name.clone()))
                {
                    Some((system, older)) => {
                        if let Err(e) = repo.wal_delete(system, &older).await {
                            tracing::warn!("Cannot delete the superseded {older}: {e}");
                        }
                    }
                    // The first copy of this run: an earlier run may have left some.
                    None => drop_copies(repo, system, &segment, Some(&name)).await,
                }
            }
            Err(e) => tracing::warn!("Cannot store {name}: {e}"),
        }
    }
}

/// Deletes the stored `.streamed` copies of `segment` once the segment itself is
/// stored (`keep` is `None`), or those holding less than copy `keep`: kept, one
/// every interval, they would cost a chunk each for as long as retention keeps the
/// segment. A copy holding more (another receiver ahead of this one) stays. A
/// recovery reading one meanwhile looks again (see `wal_fetch_for_recovery`).
async fn drop_copies(repo: &Repository, system: Option<u64>, segment: &str, keep: Option<&str>) {
    let Ok(kind) = WalFileKind::parse(segment) else {
        return;
    };
    let copies = match repo.wal_streamed_copies(system, &kind, segment).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("Cannot list the streamed copies of {segment}: {e}");
            return;
        }
    };
    let kept = keep
        .and_then(crate::wal_name::parse_streamed)
        .map(|(_, r)| r);
    let superseded = |c: &String| match (kept, crate::wal_name::parse_streamed(c)) {
        (None, _) => true,
        (Some(k), Some((_, r))) => r < k,
        (Some(_), None) => false,
    };
    for copy in copies.iter().filter(|c| superseded(c)) {
        if let Err(e) = repo.wal_delete(system, copy).await {
            tracing::warn!("Cannot delete the superseded {copy}: {e}");
        }
    }
}

/// Warns of spools beside `spool` that still hold WAL not stored: the spool is chosen
/// by the repository, server and slot, so a changed connection option starts a new
/// one, and what the old one held would otherwise wait there unnoticed.
fn warn_of_other_spools(spool: &Path) {
    let Some(Ok(siblings)) = spool.parent().map(std::fs::read_dir) else {
        return;
    };
    for dir in siblings.flatten().map(|e| e.path()) {
        if dir == spool {
            continue;
        }
        let waiting = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        let n = e.file_name();
                        let n = n.to_string_lossy();
                        WalFileKind::parse(n.trim_end_matches(".partial")).is_ok()
                    })
                    .count()
            })
            .unwrap_or(0);
        if waiting > 0 {
            tracing::warn!(
                "Spool {} of an earlier wal-receive (other connection options or slot) still \
                 holds {waiting} WAL files not stored: run wal-receive with those options, or \
                 store them with `pgvault wal-push` and remove the directory",
                dir.display()
            );
        }
    }
}

/// The first page header of a WAL file, where a segment names its system.
fn read_head(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut head = vec![0u8; 40];
    std::fs::File::open(path).ok()?.read_exact(&mut head).ok()?;
    Some(head)
}

/// The `.partial` file pg_receivewal is writing, with its segment name.
fn newest_partial(spool: &Path) -> Option<(String, PathBuf)> {
    std::fs::read_dir(spool)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().into_string().ok()?;
            let seg = n.strip_suffix(".partial")?;
            matches!(WalFileKind::parse(seg), Ok(WalFileKind::Segment { .. }))
                .then(|| (seg.to_string(), e.path()))
        })
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_bytes_end_at_the_last_non_zero_byte() {
        let mut seg = vec![0u8; 1 << 20];
        assert_eq!(received_bytes(&seg), 0);
        seg[..8192].fill(7);
        seg[8200] = 1;
        assert_eq!(received_bytes(&seg), 8201);
    }
}
