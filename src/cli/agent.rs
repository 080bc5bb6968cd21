//! The WAL agent from the caller's side: which agent serves this repository, asking
//! it (starting one when none listens), and `wal-agent`, the command that runs one.

use clap::Args;

use super::{args, GlobalArgs};
use crate::error::{Error, Result};
use crate::ops::agent::{Answer, Reply, Request};

/// The AWS settings that pick the store and where its credentials come from, none
/// of them secret.
pub(super) const AWS_SETTINGS: [&str; 8] = [
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CA_BUNDLE",
];

/// `pgvault wal-agent`.
#[derive(Debug, Args)]
pub struct WalAgentArgs {
    /// Leave after this long without a request; 0s: never (for a service)
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = args::duration)]
    pub idle: std::time::Duration,
    /// Files pushed or fetched at once
    #[arg(long, default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=32))]
    pub jobs: u16,
    /// Segments marked ready that are pushed ahead of their archive_command
    #[arg(long, default_value_t = 16, value_name = "N", value_parser = clap::value_parser!(u16).range(0..=256))]
    pub ahead: u16,
    /// Read the passphrase from the first line of stdin (how --async starts the agent)
    #[arg(long, hide = true)]
    pub passphrase_stdin: bool,
}

/// What names this repository to the WAL agent: the location, and everything else
/// that picks the store or its credentials (the settings restore_command carries,
/// and the addressing), so two repositories never share an agent.
pub(super) fn agent_identity(g: &GlobalArgs) -> Result<String> {
    let mut id = super::location_arg(g)?;
    for name in AWS_SETTINGS {
        id.push('\n');
        id.push_str(&std::env::var(name).unwrap_or_default());
    }
    id.push_str(&format!("\n{}", g.s3_path_style));
    Ok(id)
}

/// Asks this user's WAL agent for the repository, starting one when none listens.
/// Returns `None` when no agent can be used here (the cache directory's path is too
/// long for a socket): the caller does the work itself.
///
/// Errors: `Unavailable` when the agent dies or hangs mid-call or cannot be started;
/// the agent's own start-up error (a wrong passphrase, say) with its kind.
pub(super) async fn ask_agent(
    g: &GlobalArgs,
    request: &Request,
    deadline: std::time::Duration,
) -> Result<Option<Answer>> {
    use crate::ops::agent;
    let cache_root = crate::store::cache::default_root()?;
    let dir = agent::agent_dir(&cache_root, &agent_identity(g)?);
    let Some(socket) = agent::socket_path(&dir) else {
        tracing::warn!(
            "{} is too long for a socket: working without the WAL agent (set PGVAULT_CACHE_DIR to a shorter path)",
            dir.display()
        );
        return Ok(None);
    };
    if !is_private_dir(&dir) {
        tracing::warn!(
            "{} is not a private directory of this user: working without the WAL agent",
            dir.display()
        );
        return Ok(None);
    }
    let start_by = std::time::Instant::now() + g.io_timeout.call();
    let mut starts = AgentStarts::default();
    loop {
        match agent::ask(&socket, request, deadline).await? {
            Some(Answer {
                reply: Reply::Retired,
                ..
            })
            | None => {}
            Some(answer) => return Ok(Some(answer)),
        }
        if std::time::Instant::now() > start_by {
            return Err(Error::Unavailable(format!(
                "No WAL agent answers on {}; its log is {}",
                socket.display(),
                dir.join(agent::LOG).display()
            )));
        }
        if starts.start_now(std::time::Instant::now()) {
            if !start_agent(g, &cache_root, &dir).await? {
                // Another agent holds the place: it is opening the repository, or a
                // retiring one is finishing.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        } else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// When a caller that found no agent to answer starts one.
#[derive(Debug, Default)]
struct AgentStarts {
    last: Option<std::time::Instant>,
}

impl AgentStarts {
    /// Whether to start an agent at `now`, having found none that answers. Every
    /// such finding counts, also right after an agent said it listens: one killed
    /// since then is replaced, never waited for until the deadline. An agent that
    /// holds the place while it opens the repository is asked again rather than
    /// joined by one more process, and replaced only if it is still not there a
    /// second after the last start (it failed, or retired).
    fn start_now(&mut self, now: std::time::Instant) -> bool {
        let due = self
            .last
            .is_none_or(|t| now.duration_since(t) >= std::time::Duration::from_secs(1));
        if due {
            self.last = Some(now);
        }
        due
    }
}

/// Whether agent directory `dir` is missing (to be made) or belongs to this user
/// and no one else can enter it: a socket anyone else could plant must not be asked.
fn is_private_dir(dir: &std::path::Path) -> bool {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    match std::fs::symlink_metadata(dir) {
        Ok(m) => {
            m.is_dir()
                && m.uid() == nix::unistd::geteuid().as_raw()
                && m.permissions().mode() & 0o077 == 0
        }
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// Starts a WAL agent for the repository in the background, hands it the passphrase
/// over a pipe (never a file or the environment), and waits until it listens (true)
/// or finds another agent there first (false).
///
/// Errors: the agent's start-up error with its kind; `Unavailable` when it exits
/// without a word or says nothing in time; `Io` when it cannot be started.
async fn start_agent(
    g: &GlobalArgs,
    cache_root: &std::path::Path,
    dir: &std::path::Path,
) -> Result<bool> {
    use std::process::Stdio;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let passphrase = zeroize::Zeroizing::new(super::passphrase(g)?);
    crate::store::cache::create_private_dir(dir)?;
    let log_path = dir.join(crate::ops::agent::LOG);
    let big = std::fs::metadata(&log_path).is_ok_and(|m| m.len() > 1 << 20);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(!big)
        .write(true)
        .truncate(big)
        .open(&log_path)
        .map_err(|e| Error::io_path("open", &log_path, e))?;
    let exe =
        std::env::current_exe().map_err(|e| Error::io("Cannot find the pgvault binary", e))?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.env("PGVAULT_CACHE_DIR", cache_root)
        .env(
            "PGVAULT_IO_TIMEOUT",
            format!("{}s", g.io_timeout.first_byte().as_secs()),
        )
        .env(
            "PGVAULT_S3_PATH_STYLE",
            if g.s3_path_style { "1" } else { "0" },
        )
        .env_remove("PGVAULT_PASSWORD")
        .env_remove("PGVAULT_PASSWORD_FILE")
        .arg("--repo")
        .arg(super::location_arg(g)?)
        .args(["wal-agent", "--passphrase-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        // Out of the caller's process group: a signal to the archiver's group (a
        // Ctrl-C on a terminal) does not reach it.
        .process_group(0)
        .kill_on_drop(false);
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io("Cannot start the WAL agent", e))?;
    let mut stdin = child.stdin.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    let said = async {
        stdin.write_all(passphrase.as_bytes()).await?;
        stdin.write_all(b"\n").await?;
        drop(stdin);
        let mut line = String::new();
        tokio::io::BufReader::new(stdout)
            .read_line(&mut line)
            .await?;
        Ok::<_, std::io::Error>(line)
    };
    let log_shown = log_path.display();
    let line = match tokio::time::timeout(g.io_timeout.call(), said).await {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => {
            return Err(Error::Unavailable(format!(
                "Cannot talk to the WAL agent being started: {e}; its log is {log_shown}"
            )))
        }
        Err(_) => {
            return Err(Error::Unavailable(format!(
                "The WAL agent did not start within {}; its log is {log_shown}",
                crate::time::format_duration(g.io_timeout.call())
            )))
        }
    };
    match line
        .trim_end()
        .split_once(' ')
        .unwrap_or((line.trim_end(), ""))
    {
        ("ready", _) => Ok(true),
        ("busy", _) => Ok(false),
        ("failed", json) => match serde_json::from_str::<Reply>(json) {
            Ok(r) => Err(reply_error(r)),
            Err(_) => Err(Error::Unavailable(format!(
                "The WAL agent failed to start; its log is {log_shown}"
            ))),
        },
        _ => Err(Error::Unavailable(format!(
            "The WAL agent exited as it started; its log is {log_shown}"
        ))),
    }
}

/// The error an agent's reply carries (anything but success).
pub(super) fn reply_error(reply: Reply) -> Error {
    match reply {
        Reply::Failed { kind, message } => Error::Relayed { kind, message },
        other => Error::Unavailable(format!("The WAL agent answered out of turn: {other:?}")),
    }
}

/// `wal-agent`: serve this repository's WAL commands until idle.
///
/// Errors: as [`crate::ops::agent::serve`] and opening the repository.
pub async fn run(g: &GlobalArgs, a: &WalAgentArgs) -> Result<()> {
    use crate::ops::agent;
    let passphrase = if a.passphrase_stdin {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(|e| Error::io("Cannot read the passphrase from stdin", e))?;
        // Exactly the one newline the caller added: the passphrase is as it was read.
        let line = text.strip_suffix('\n').unwrap_or(&text).to_string();
        if line.is_empty() {
            return Err(Error::InvalidInput("No passphrase on stdin".into()));
        }
        line
    } else {
        super::passphrase(g)?
    };
    let started = async {
        let access = super::access_with(g, passphrase)?;
        let dir = agent::agent_dir(&access.cache_root, &agent_identity(g)?);
        if agent::socket_path(&dir).is_none() {
            return Err(Error::InvalidInput(format!(
                "{} is too long for a socket: set PGVAULT_CACHE_DIR to a shorter path",
                dir.display()
            )));
        }
        let Some(claim) = agent::claim(&dir)? else {
            return Ok(None);
        };
        crate::ops::require_repository_dir(&access.location, access.timeouts).await?;
        let repo = access.open().await?;
        Ok(Some((repo, access, claim)))
    }
    .await;
    let say = |s: &str| {
        use std::io::Write;
        let mut out = std::io::stdout();
        let _ = writeln!(out, "{s}");
        let _ = out.flush();
    };
    let (repo, access, claim) = match started {
        Ok(Some(s)) => s,
        Ok(None) => {
            say("busy");
            return Ok(());
        }
        Err(e) => {
            let reply = serde_json::to_string(&Reply::Failed {
                kind: e.kind(),
                message: e.to_string(),
            })
            .expect("a reply serializes");
            say(&format!("failed {reply}"));
            return Err(e);
        }
    };
    let opts = agent::AgentOptions {
        idle: (!a.idle.is_zero()).then_some(a.idle),
        jobs: usize::from(a.jobs),
        ahead: usize::from(a.ahead),
    };
    agent::serve(repo, access, claim, opts, || say("ready")).await
}

#[cfg(test)]
mod tests {
    use super::AgentStarts;
    use std::time::{Duration, Instant};

    #[test]
    fn an_agent_gone_after_it_said_ready_is_replaced_a_second_later() {
        let mut starts = AgentStarts::default();
        let t0 = Instant::now();
        assert!(starts.start_now(t0), "no agent at all: start one");
        // It said ready, then was killed before it answered: asked again and again.
        assert!(!starts.start_now(t0 + Duration::from_millis(50)));
        assert!(!starts.start_now(t0 + Duration::from_millis(900)));
        assert!(starts.start_now(t0 + Duration::from_millis(1000)));
        assert!(!starts.start_now(t0 + Duration::from_millis(1500)));
        assert!(starts.start_now(t0 + Duration::from_millis(2100)));
    }
}
