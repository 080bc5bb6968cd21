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
use crate::store::Repository;
use crate::wal_name::{streamed_name, WalFileKind};

/// How long after pg_receivewal exits it is started again.
pub const RESTART_AFTER: Duration = Duration::from_secs(5);
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
    if opts.create_slot {
        create_slot(opts).await?;
    }
    let mut spool = Spool::default();
    let mut child: Option<tokio::process::Child> = None;
    let mut last_start: Option<Instant> = None;
    let mut last_partial = Instant::now();
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
    Ok(spool.stats)
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
    streamed: std::collections::BTreeMap<String, String>,
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
            match super::wal::push_opened(repo, &path, &name, opts.lock_wait).await {
                Ok(_) => {
                    tracing::info!("Stored streamed {name}");
                    self.stats.segments_stored += 1;
                    let _ = std::fs::remove_file(&path);
                    if let Some(copy) = self.streamed.remove(&name) {
                        self.drop_superseded(repo, &copy).await;
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
        if self.streamed.get(&segment) == Some(&name) {
            return;
        }
        match super::wal::push_bytes(repo, &name, data, opts.lock_wait).await {
            Ok(_) => {
                tracing::debug!("Stored {name}");
                self.stats.streamed_copies_stored += 1;
                if let Some(older) = self.streamed.insert(segment, name) {
                    self.drop_superseded(repo, &older).await;
                }
            }
            Err(e) => tracing::warn!("Cannot store {name}: {e}"),
        }
    }
}

impl Spool {
    /// Deletes a `.streamed` copy that a newer copy or the completed segment
    /// replaces: kept, one every interval, they would cost a chunk each for as long
    /// as retention keeps the segment. Copies left by an earlier run of wal-receive
    /// stay until retention removes their segment.
    async fn drop_superseded(&self, repo: &Repository, name: &str) {
        if let Err(e) = repo.wal_delete(name).await {
            tracing::warn!("Cannot delete the superseded {name}: {e}");
        }
    }
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
