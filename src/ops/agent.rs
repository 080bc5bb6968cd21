//! The WAL agent: one long-lived process per repository and user that opens the
//! repository once and serves `wal-push --async` and `wal-fetch --async` over a
//! private Unix socket, pushing the segments PostgreSQL marked ready ahead of their
//! archive_command and fetching the next segments ahead of restore_command.
//!
//! Why a process rather than a spool of files: the costly step of every WAL command
//! is deriving the key from the passphrase (argon2id, 64 MiB). A process that lives
//! across calls pays it once, and the key never leaves its memory; a spool would need
//! the key, or the segments, on disk. The socket lives in a 0700 directory of this
//! user's cache, and the agent answers only its own uid: the same trust as the
//! password file or the environment the synchronous commands read.
//!
//! The contracts stay those of the synchronous commands:
//! - a push is answered "done" only once its file and manifest are durable;
//! - a segment pushed ahead is acknowledged only if the file asked for is still the
//!   file that was read (device, inode, size, mtime), and only once: a second call for
//!   the same name pushes again, so a different file under an archived name is still
//!   refused, whoever asks;
//! - a failure met ahead reaches the call for that segment, with its kind, and is
//!   then forgotten so that PostgreSQL's retry pushes afresh;
//! - a fetch says "not archived" only when the repository says so; a segment fetched
//!   ahead that was not archived yet is asked for again, never answered from memory;
//! - an agent that dies mid-call closes the socket, and the caller fails (exit
//!   non-zero, or above 125 for wal-fetch): nothing is acknowledged early.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Notify, Semaphore};

use super::RepoAccess;
use crate::error::{Error, ErrorKind, Result};
use crate::store::records::WalPushFailure;
use crate::store::wal::{SystemWalName, WalPushOutcome};
use crate::store::Repository;
use crate::wal_name::{segment_name, WalFileKind, DEFAULT_SEGMENT_SIZE};

/// The socket's file name in the agent's directory.
pub const SOCKET: &str = "agent.sock";
/// The file whose lock makes one agent the only one for its directory.
pub const LOCK: &str = "agent.lock";
/// Where an agent started on demand writes its log.
pub const LOG: &str = "agent.log";
/// The agent's process id, for people and tests.
pub const PID: &str = "agent.pid";

/// The longest path a Unix socket address holds (`sun_path` less its NUL).
const SOCKET_PATH_MAX: usize = 107;
/// A request is one short JSON line; anything longer is not from pgvault.
const REQUEST_MAX_BYTES: usize = 64 * 1024;
/// Segments pushed ahead and never asked for (the server stopped, say) are forgotten
/// after this long.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// At most this many segments are held in memory, fetched ahead: 256 MiB at the
/// default segment size, on a host that is recovering a database.
const FETCHED_AHEAD_MAX: usize = 16;
/// How often the agent checks that the location still holds its repository.
const RECHECK_AFTER: Duration = Duration::from_secs(5);
/// How often an idle agent checks that its socket is still there.
const TICK: Duration = Duration::from_secs(2);

/// The directory of the agent for the repository that `identity` names, under cache
/// directory `cache_root`. The identity must name everything that picks the store
/// (location, S3 endpoint, profile), so that two repositories never share an agent.
pub fn agent_dir(cache_root: &Path, identity: &str) -> PathBuf {
    let h = blake3::hash(identity.as_bytes()).to_hex();
    cache_root.join("agents").join(&h.as_str()[..16])
}

/// The socket in agent directory `dir`, or `None` when its path is too long for a
/// Unix socket address (a deep cache directory).
pub fn socket_path(dir: &Path) -> Option<PathBuf> {
    let p = dir.join(SOCKET);
    (p.as_os_str().len() <= SOCKET_PATH_MAX).then_some(p)
}

/// What a caller asks the agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Archive the WAL file at this absolute path.
    /// `system`: the caller's `--system-id`, for a file that names none.
    Push {
        path: PathBuf,
        lock_wait_secs: u64,
        #[serde(default)]
        system: Option<u64>,
    },
    /// Send archived WAL file `name` (the bytes follow the reply on the socket;
    /// the caller writes them, so an agent still working after its caller gave up
    /// never writes into PGDATA), and fetch the next `prefetch` segments ahead.
    /// `system`: the database system whose archive holds it, when the caller knows.
    Fetch {
        name: String,
        prefetch: u16,
        #[serde(default)]
        system: Option<u64>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    /// The caller's pgvault version: an agent of another version retires.
    version: String,
    request: Request,
}

/// What the agent answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Reply {
    Pushed {
        already_archived: bool,
    },
    /// Followed on the socket by the file's `size_bytes` bytes.
    Fetched {
        size_bytes: u64,
    },
    Failed {
        kind: ErrorKind,
        message: String,
    },
    /// This agent is another version of pgvault and is leaving: start a new one.
    Retired,
}

impl Reply {
    fn failed(e: &Error) -> Reply {
        Reply::Failed {
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

/// The largest file a fetch reply may announce: the largest WAL segment size.
const FETCHED_MAX_BYTES: u64 = 1 << 30;

/// An agent's answer: its reply, and for a fetch the file's bytes.
#[derive(Debug)]
pub struct Answer {
    pub reply: Reply,
    pub data: Vec<u8>,
}

/// Asks the agent listening on `socket`, waiting at most `deadline` for the whole
/// answer. Returns `None` when no agent listens there, or the one there went away
/// before it began to answer (killed as the call connected): the caller starts a
/// new one and asks again, which is safe because a push of the same file and a
/// fetch can both be repeated.
///
/// Errors: `InvalidInput` when the socket's process runs as another user (a socket
/// planted where this user's agent would be); `Unavailable` when the agent stops
/// in the middle of its answer, does not answer in time, or answers something that
/// does not parse.
pub async fn ask(socket: &Path, request: &Request, deadline: Duration) -> Result<Option<Answer>> {
    let mut stream = match UnixStream::connect(socket).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(Error::io_path("connect to the WAL agent at", socket, e)),
    };
    let uid = nix::unistd::geteuid().as_raw();
    match stream.peer_cred().map(|c| c.uid()) {
        Ok(u) if u == uid => {}
        other => {
            return Err(Error::InvalidInput(format!(
                "The process listening on {} runs as another user ({}), not this one: \
                 it is not this user's WAL agent; remove it",
                socket.display(),
                other.map_or_else(|e| e.to_string(), |u| format!("uid {u}"))
            )))
        }
    }
    let unavailable = |why: String| {
        Error::Unavailable(format!(
            "The WAL agent at {} {why}; its log is {}",
            socket.display(),
            socket.with_file_name(LOG).display()
        ))
    };
    let exchange = async {
        let (read, mut write) = stream.split();
        let mut line = serde_json::to_vec(&Envelope {
            version: env!("CARGO_PKG_VERSION").into(),
            request: request.clone(),
        })
        .expect("a request serializes");
        line.push(b'\n');
        let gone = |e: &std::io::Error| {
            matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            )
        };
        match write.write_all(&line).await {
            Err(e) if gone(&e) => return Ok(Ok(None)),
            other => other?,
        }
        let mut reader = BufReader::new(read);
        let mut answer = String::new();
        match reader.read_line(&mut answer).await {
            Err(e) if gone(&e) => return Ok(Ok(None)),
            other => other?,
        };
        if answer.is_empty() {
            return Ok(Ok(None));
        }
        let reply: Reply = match serde_json::from_str(&answer) {
            Ok(r) => r,
            Err(e) => return Ok(Err(format!("answered something unreadable ({e})"))),
        };
        let mut data = Vec::new();
        if let Reply::Fetched { size_bytes } = reply {
            if size_bytes > FETCHED_MAX_BYTES {
                return Ok(Err(format!(
                    "announced {size_bytes} bytes, more than any WAL file"
                )));
            }
            data = vec![0u8; size_bytes as usize];
            use tokio::io::AsyncReadExt;
            if let Err(e) = reader.read_exact(&mut data).await {
                return Ok(Err(format!("ended after part of the file ({e})")));
            }
        }
        Ok::<_, std::io::Error>(Ok(Some(Answer { reply, data })))
    };
    match tokio::time::timeout(deadline, exchange).await {
        Err(_) => Err(unavailable(format!(
            "gave no answer within {}",
            crate::time::format_duration(deadline)
        ))),
        Ok(Err(e)) => Err(unavailable(format!("failed: {e}"))),
        Ok(Ok(Err(why))) => Err(unavailable(why)),
        Ok(Ok(Ok(None))) => {
            tracing::info!(
                "The WAL agent at {} went away before answering: asking a new one",
                socket.display()
            );
            Ok(None)
        }
        Ok(Ok(Ok(a))) => Ok(a),
    }
}

/// The lock that makes this process the only agent of its directory.
#[derive(Debug)]
pub struct AgentClaim {
    dir: PathBuf,
    lock: Option<nix::fcntl::Flock<std::fs::File>>,
}

/// Makes this process the agent of directory `dir` (created private if missing).
/// Returns `None` when another live agent has it.
///
/// Errors: `Io` when the directory or its lock file cannot be made or locked;
/// `InvalidInput` when the directory belongs to another user.
pub fn claim(dir: &Path) -> Result<Option<AgentClaim>> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    crate::store::cache::create_private_dir(dir)?;
    let meta = std::fs::symlink_metadata(dir).map_err(|e| Error::io_path("stat", dir, e))?;
    if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(Error::InvalidInput(format!(
            "WAL agent directory {} is not a directory of this user",
            dir.display()
        )));
    }
    // The socket's privacy rests on this directory's mode.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io_path("make private", dir, e))?;
    let path = dir.join(LOCK);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Error::io_path("open", &path, e))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(AgentClaim {
            dir: dir.to_path_buf(),
            lock: Some(lock),
        })),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(Error::io_path("lock", &path, e.into())),
    }
}

impl AgentClaim {
    /// Gives up the directory: removes the socket and lets another agent start.
    fn release(&mut self) {
        if self.lock.is_some() {
            let _ = std::fs::remove_file(self.dir.join(SOCKET));
            let _ = std::fs::remove_file(self.dir.join(PID));
            self.lock = None;
        }
    }
}

impl Drop for AgentClaim {
    fn drop(&mut self) {
        self.release();
    }
}

/// How an agent works.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Leave after this long without a request; `None`: never (a service).
    pub idle: Option<Duration>,
    /// Files pushed at once.
    pub jobs: usize,
    /// Ready segments pushed ahead of their archive_command.
    pub ahead: usize,
}

/// Serves requests on a new socket in the claimed directory until idle, retired,
/// stopped (SIGTERM, SIGINT) or until the socket file is removed. `ready` is called
/// once the socket listens.
///
/// Errors: `Io` when the socket cannot be made.
pub async fn serve(
    repo: Repository,
    access: RepoAccess,
    mut claim: AgentClaim,
    opts: AgentOptions,
    ready: impl FnOnce(),
) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let socket = claim.dir.join(SOCKET);
    // Left by an agent that died: the lock says no agent owns it.
    let _ = std::fs::remove_file(&socket);
    let listener =
        UnixListener::bind(&socket).map_err(|e| Error::io_path("listen on", &socket, e))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io_path("make private", &socket, e))?;
    let _ = std::fs::write(claim.dir.join(PID), format!("{}\n", std::process::id()));
    let socket_id = file_id(&socket).ok();
    let agent = Arc::new(Agent {
        repo,
        access,
        permits: Arc::new(Semaphore::new(opts.jobs.max(1))),
        opts,
        pushed: Mutex::new(HashMap::new()),
        fetched: Mutex::new(HashMap::new()),
        retire: Notify::new(),
        busy: std::sync::atomic::AtomicUsize::new(0),
        checked: Mutex::new(Instant::now()),
        retiring: std::sync::atomic::AtomicBool::new(false),
    });
    ready();
    tracing::info!(
        "WAL agent {} listening on {}",
        std::process::id(),
        socket.display()
    );
    let uid = nix::unistd::geteuid().as_raw();
    let mut connections = tokio::task::JoinSet::new();
    let mut last_request = Instant::now();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::io("Cannot watch for SIGTERM", e))?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                last_request = Instant::now();
                if stream.peer_cred().map(|c| c.uid()).ok() != Some(uid) {
                    tracing::warn!("Refused a connection from another user");
                    continue;
                }
                let agent = agent.clone();
                connections.spawn(async move { agent.answer(stream).await });
            }
            _ = agent.retire.notified() => {
                tracing::info!("Another pgvault version asked: leaving for a new agent");
                break;
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = tokio::time::sleep(TICK) => {
                while connections.try_join_next().is_some() {}
                let busy = agent.busy.load(std::sync::atomic::Ordering::SeqCst) > 0;
                if busy {
                    last_request = Instant::now();
                }
                if opts_idle_passed(agent.opts.idle, last_request) && !busy {
                    tracing::info!("Idle: leaving");
                    break;
                }
                // Someone removed the socket (or the whole cache): nobody can reach
                // this agent any more.
                if file_id(&socket).ok() != socket_id {
                    tracing::info!("{} is gone: leaving", socket.display());
                    break;
                }
            }
        }
    }
    // Callers that find no socket start a new agent; those already queued on this
    // one are answered (dropping them unanswered would make wal-fetch stop recovery).
    let _ = std::fs::remove_file(&socket);
    while let Ok(Ok((stream, _))) =
        tokio::time::timeout(Duration::from_millis(50), listener.accept()).await
    {
        if stream.peer_cred().map(|c| c.uid()).ok() == Some(uid) {
            let agent = agent.clone();
            connections.spawn(async move { agent.answer(stream).await });
        }
    }
    drop(listener);
    // Another agent may start now; calls in progress still get their answers.
    claim.release();
    while connections.join_next().await.is_some() {}
    Ok(())
}

fn opts_idle_passed(idle: Option<Duration>, since: Instant) -> bool {
    idle.is_some_and(|d| since.elapsed() >= d)
}

/// A file's identity: the same path holding another file (a new cluster's segment
/// under a name pushed ahead) must not be acknowledged by an old push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

fn file_id(path: &Path) -> std::io::Result<FileId> {
    let m = std::fs::metadata(path)?;
    Ok(FileId {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    })
}

/// An outcome shared between the task that produces it and whoever waits for it; the
/// error as kind and text, since errors do not clone.
type Outcome<T> = std::result::Result<T, (ErrorKind, String)>;

struct Pending<T> {
    rx: watch::Receiver<Option<Outcome<T>>>,
    started: Instant,
}

async fn wait_for<T: Clone>(mut rx: watch::Receiver<Option<Outcome<T>>>, what: &str) -> Result<T> {
    match rx.wait_for(|v| v.is_some()).await {
        Ok(v) => match v.clone().expect("waited for a value") {
            Ok(t) => Ok(t),
            Err((kind, message)) => Err(Error::Relayed { kind, message }),
        },
        Err(_) => Err(Error::Unavailable(format!(
            "The WAL agent's work on {what} ended without an outcome"
        ))),
    }
}

struct PushedAhead {
    pending: Pending<WalPushOutcome>,
    file: FileId,
}

struct Agent {
    repo: Repository,
    access: RepoAccess,
    opts: AgentOptions,
    permits: Arc<Semaphore>,
    pushed: Mutex<HashMap<String, PushedAhead>>,
    fetched: Mutex<HashMap<SystemWalName, Pending<Arc<Vec<u8>>>>>,
    retire: Notify,
    /// Requests being answered: an agent is not idle while one waits.
    busy: std::sync::atomic::AtomicUsize,
    /// When the repository was last found still there.
    checked: Mutex<Instant>,
    /// Set once the location was found to hold another repository.
    retiring: std::sync::atomic::AtomicBool,
}

impl Agent {
    async fn answer(self: Arc<Self>, stream: UnixStream) {
        use std::sync::atomic::Ordering;
        let (read, mut write) = stream.into_split();
        let mut line = Vec::new();
        let mut limited = BufReader::new(read).take(REQUEST_MAX_BYTES as u64);
        use tokio::io::AsyncReadExt;
        if limited.read_until(b'\n', &mut line).await.is_err() {
            return;
        }
        let reply = match serde_json::from_slice::<Envelope>(&line) {
            Ok(env) if env.version != env!("CARGO_PKG_VERSION") => {
                self.retire.notify_one();
                (Reply::Retired, None)
            }
            Ok(_) if !self.same_repository().await => {
                self.retire.notify_one();
                (Reply::Retired, None)
            }
            Ok(env) => {
                self.busy.fetch_add(1, Ordering::SeqCst);
                let r = self.clone().handle(env.request).await;
                self.busy.fetch_sub(1, Ordering::SeqCst);
                r
            }
            Err(e) => (
                Reply::Failed {
                    kind: ErrorKind::InvalidInput,
                    message: format!("The WAL agent cannot read the request: {e}"),
                },
                None,
            ),
        };
        let (reply, data) = reply;
        let mut out = serde_json::to_vec(&reply).expect("a reply serializes");
        out.push(b'\n');
        if write.write_all(&out).await.is_ok() {
            if let Some(data) = data {
                let _ = write.write_all(&data).await;
            }
        }
    }

    /// Whether the location still holds the repository this agent opened, checked
    /// at most every [`RECHECK_AFTER`]: a repository created anew there (a new key)
    /// needs a new agent. A store that does not answer is not a new repository.
    async fn same_repository(&self) -> bool {
        {
            let mut checked = self.checked.lock().expect("not poisoned");
            if checked.elapsed() < RECHECK_AFTER {
                return true;
            }
            *checked = Instant::now();
        }
        match self.repo.is_still_there().await {
            Ok(same) => {
                if !same {
                    self.retiring
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                    tracing::warn!(
                        "{} no longer holds the repository this agent opened: leaving",
                        self.repo.location()
                    );
                }
                same
            }
            Err(_) => true,
        }
    }

    async fn handle(self: Arc<Self>, request: Request) -> (Reply, Option<Arc<Vec<u8>>>) {
        match request {
            Request::Push {
                path,
                lock_wait_secs,
                system,
            } => match self
                .push(&path, system, Duration::from_secs(lock_wait_secs))
                .await
            {
                Ok(o) => (
                    Reply::Pushed {
                        already_archived: o == WalPushOutcome::AlreadyArchived,
                    },
                    None,
                ),
                Err(e) => (Reply::failed(&e), None),
            },
            Request::Fetch {
                name,
                prefetch,
                system,
            } => match self.fetch(system, &name, usize::from(prefetch)).await {
                Ok(data) => (
                    Reply::Fetched {
                        size_bytes: data.len() as u64,
                    },
                    Some(data),
                ),
                Err(e) => (Reply::failed(&e), None),
            },
        }
    }

    async fn push(
        self: &Arc<Self>,
        path: &Path,
        system: Option<u64>,
        lock_wait: Duration,
    ) -> Result<WalPushOutcome> {
        let name = super::wal::wal_file_name(path)?;
        let time = chrono::Utc::now();
        let result = match file_id(path) {
            Err(e) => Err(Error::io_path("read", path, e)),
            Ok(id) => {
                let ahead = {
                    let mut pushed = self.pushed.lock().expect("not poisoned");
                    // Taken out either way: an outcome is acknowledged once.
                    pushed.remove(&name).filter(|p| p.file == id)
                };
                let rx = match ahead {
                    Some(p) => p.pending.rx,
                    None => self.start_push(&name, path, system, lock_wait),
                };
                self.push_ahead(path, &name, lock_wait);
                wait_for(rx, &name).await
            }
        };
        match &result {
            Ok(_) => {
                self.repo
                    .flush_spool(super::wal::SPOOL_UPLOADS_PER_PUSH)
                    .await;
            }
            Err(e) => {
                let failure = WalPushFailure {
                    time,
                    name: name.clone(),
                    error: e.to_string(),
                    hostname: crate::host::hostname(),
                };
                // Not through a repository this agent no longer holds: its records
                // would be sealed with the old key.
                let repo = (!self.retiring.load(std::sync::atomic::Ordering::SeqCst))
                    .then_some(&self.repo);
                super::record_or_spool(&self.access, repo, &failure).await;
            }
        }
        result
    }

    fn start_push(
        self: &Arc<Self>,
        name: &str,
        path: &Path,
        system: Option<u64>,
        lock_wait: Duration,
    ) -> watch::Receiver<Option<Outcome<WalPushOutcome>>> {
        let (tx, rx) = watch::channel(None);
        let agent = self.clone();
        let (name, path) = (name.to_string(), path.to_path_buf());
        tokio::spawn(async move {
            let _permit = agent.permits.clone().acquire_owned().await;
            // Before anything is written: a repository created anew at this location
            // has another key, and an object sealed with the old one would block
            // the name there for good.
            let r = match agent.repo.is_still_there().await {
                Ok(true) => super::wal::push_opened(&agent.repo, &path, &name, system, lock_wait)
                    .await
                    .map_err(|e| (e.kind(), e.to_string())),
                Ok(false) => {
                    agent
                        .retiring
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                    agent.retire.notify_one();
                    Err((
                        ErrorKind::Unavailable,
                        format!(
                            "{} holds another repository than the one the WAL agent opened; \
                             {name} was not pushed, and the next call starts a new agent",
                            agent.repo.location()
                        ),
                    ))
                }
                Err(e) => Err((e.kind(), e.to_string())),
            };
            let _ = tx.send(Some(r));
        });
        rx
    }

    /// Starts pushing the segments PostgreSQL marked ready beside `path`, oldest
    /// first, so that their archive_command finds them stored.
    fn push_ahead(self: &Arc<Self>, path: &Path, name: &str, lock_wait: Duration) {
        let Some(dir) = path.parent() else { return };
        let Ok(entries) = std::fs::read_dir(dir.join("archive_status")) else {
            return;
        };
        let mut ready: Vec<String> = entries
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().into_string().ok()?;
                let n = n.strip_suffix(".ready")?.to_string();
                WalFileKind::parse(&n).ok().map(|_| n)
            })
            .filter(|n| n != name)
            .collect();
        ready.sort();
        let mut pushed = self.pushed.lock().expect("not poisoned");
        pushed.retain(|_, p| p.pending.started.elapsed() < FORGET_AFTER);
        let room = self.opts.ahead.saturating_sub(pushed.len());
        let fresh: Vec<String> = ready
            .into_iter()
            .filter(|n| !pushed.contains_key(n))
            .take(room)
            .collect();
        for n in fresh {
            let p = dir.join(&n);
            let Ok(file) = file_id(&p) else { continue };
            let rx = self.start_push(&n, &p, None, lock_wait);
            pushed.insert(
                n,
                PushedAhead {
                    pending: Pending {
                        rx,
                        started: Instant::now(),
                    },
                    file,
                },
            );
        }
    }

    async fn fetch(
        self: &Arc<Self>,
        system: Option<u64>,
        name: &str,
        prefetch: usize,
    ) -> Result<Arc<Vec<u8>>> {
        let kind = WalFileKind::parse(name)?;
        let ahead = self
            .fetched
            .lock()
            .expect("not poisoned")
            .remove(&(system, name.to_string()));
        if let WalFileKind::Segment { timeline, .. } = kind {
            let segno = kind.segno(DEFAULT_SEGMENT_SIZE).expect("a segment");
            self.fetch_ahead(system, timeline, segno, prefetch);
        }
        if let Some(p) = ahead {
            // Not archived then, or failed: only a fresh answer counts.
            if let Ok(d) = wait_for(p.rx, name).await {
                return Ok(d);
            }
        }
        Ok(Arc::new(
            self.repo.wal_fetch_for_recovery(system, name).await?,
        ))
    }

    /// Starts fetching the `count` segments after `segno` that are not held already.
    /// The segment size is only known once one is read; the default is assumed, which
    /// only costs a wasted guess on unusual clusters.
    fn fetch_ahead(self: &Arc<Self>, system: Option<u64>, timeline: u32, segno: u64, count: usize) {
        let mut fetched = self.fetched.lock().expect("not poisoned");
        fetched.retain(|_, p| p.started.elapsed() < FORGET_AFTER);
        for n in 1..=count as u64 {
            if fetched.len() >= FETCHED_AHEAD_MAX {
                break;
            }
            let next = (
                system,
                segment_name(timeline, segno + n, DEFAULT_SEGMENT_SIZE),
            );
            if fetched.contains_key(&next) {
                continue;
            }
            let (tx, rx) = watch::channel(None);
            let agent = self.clone();
            let name = next.1.clone();
            tokio::spawn(async move {
                let _permit = agent.permits.clone().acquire_owned().await;
                let r = agent
                    .repo
                    .wal_fetch(system, &name)
                    .await
                    .map(Arc::new)
                    .map_err(|e| (e.kind(), e.to_string()));
                let _ = tx.send(Some(r));
            });
            fetched.insert(
                next,
                Pending {
                    rx,
                    started: Instant::now(),
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An "agent" that takes each connection and lets it go: after reading the
    /// request, or at once.
    async fn vanishing_agent(read_first: bool) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join(SOCKET);
        let listener = UnixListener::bind(&socket).unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                if read_first {
                    let mut line = String::new();
                    let _ = BufReader::new(&mut stream).read_line(&mut line).await;
                }
                drop(stream);
            }
        });
        (dir, socket)
    }

    #[tokio::test]
    async fn an_agent_gone_before_answering_is_no_agent_to_the_caller() {
        let request = Request::Fetch {
            name: "000000010000000000000001".into(),
            prefetch: 0,
            system: None,
        };
        for read_first in [false, true] {
            let (_dir, socket) = vanishing_agent(read_first).await;
            let answer = ask(&socket, &request, Duration::from_secs(10)).await;
            assert!(matches!(answer, Ok(None)), "{answer:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let answer = ask(&dir.path().join(SOCKET), &request, Duration::from_secs(10)).await;
        assert!(matches!(answer, Ok(None)), "nobody listens: {answer:?}");
    }
}
