//! The command line: parses arguments, asks for passphrases, draws progress, prints
//! results for people or as JSON, and turns errors into exit codes. Each command
//! builds an options struct and calls one function in `ops` (the mount: `fuse`).
//!
//! | module | commands |
//! | --- | --- |
//! | this one | the command tree, global options, passphrases, exit codes |
//! | `repo` | `init`, `snapshots`, `cat`, `index`, `key` |
//! | `backup` | `backup` |
//! | `wal` | `wal-push`, `wal-fetch`, `wal-receive`, `wal list`, `restore` |
//! | `agent` | `wal-agent`, and asking or starting the agent for `--async` |
//! | `retention` | `forget`, `prune`, `du`, `locks`, `unlock` |
//! | `verify` | `check`, `drill`, `status`, `metrics` |
//! | `mount` | `mount` |
//! | `args`, `output` | option value parsers; tables, JSON and progress bars |

mod agent;
mod args;
mod backup;
mod mount;
mod output;
mod repo;
mod retention;
mod verify;
mod wal;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use crate::backend::deadline::IoTimeouts;
use crate::backend::s3_location::S3Options;
use crate::backend::Location;
use crate::error::{Error, ErrorKind, Result};
use crate::ops::RepoAccess;
use crate::store::writer::{NoProgress, Progress};
use crate::store::Repository;

/// Deduplicated, encrypted backups of PostgreSQL, browsable as a read-only filesystem.
#[derive(Debug, Parser)]
#[command(name = "pgvault", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// The repository: a local directory, or s3://bucket/prefix (credentials, region
    /// and endpoint from the AWS chain: AWS_ACCESS_KEY_ID, AWS_REGION, AWS_ENDPOINT_URL, AWS_PROFILE...)
    #[arg(
        short = 'r',
        long,
        env = "PGVAULT_REPO",
        global = true,
        value_name = "LOCATION",
        value_parser = args::location
    )]
    pub repo: Option<Location>,

    /// Read the passphrase from this file (first line); else PGVAULT_PASSWORD, else a prompt
    #[arg(
        long,
        env = "PGVAULT_PASSWORD_FILE",
        global = true,
        value_name = "FILE"
    )]
    pub password_file: Option<PathBuf>,

    /// Address S3 buckets path-style (endpoint/bucket); on by itself for IP and localhost endpoints
    #[arg(
        long,
        env = "PGVAULT_S3_PATH_STYLE",
        global = true,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub s3_path_style: bool,

    /// How long to wait for the store's first byte before counting a request failed;
    /// connect, stall, retry and call deadlines scale from it (see the README). With the
    /// default 30s no command waits more than 2 minutes on a store that does not answer
    #[arg(
        long,
        env = "PGVAULT_IO_TIMEOUT",
        global = true,
        value_name = "DURATION",
        default_value = "30s",
        value_parser = args::io_timeout
    )]
    pub io_timeout: IoTimeouts,

    /// More log output on stderr (repeat for more)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new, empty repository
    Init(repo::InitArgs),
    /// Store a backup point: a pg_dump custom-format dump, or a base backup with --base
    Backup(backup::BackupArgs),
    /// List backup points
    Snapshots(repo::SnapshotsArgs),
    /// Write a backup point's file to stdout, byte for byte as pg_dump wrote it
    Cat(repo::CatArgs),
    /// Archive one WAL file: archive_command = 'pgvault wal-push %p'
    WalPush(wal::WalPushArgs),
    /// Restore one WAL file: restore_command = 'pgvault wal-fetch %f %p'
    /// (exit 1: not archived; above 125: the archive could not be read)
    WalFetch(wal::WalFetchArgs),
    /// Stream WAL from the primary with pg_receivewal (a service): completed segments,
    /// and the segment being written every --partial-interval, for an RPO in seconds
    WalReceive(wal::WalReceiveArgs),
    /// Serve wal-push --async and wal-fetch --async for one repository: started on
    /// demand by them, or run as a service (--idle 0s)
    WalAgent(agent::WalAgentArgs),
    /// Inspect the WAL archive
    Wal {
        #[command(subcommand)]
        command: wal::WalCommand,
    },
    /// Restore a base backup into an empty PGDATA, set up to recover to a target
    Restore(wal::RestoreArgs),
    /// Verify the repository: every manifest and the chunks it references; with
    /// --read-data(-subset) also the chunks' contents
    Check(verify::CheckArgs),
    /// Restore a backup into a temporary database (or PGDATA with --base), check it,
    /// throw it away, and record the result and the measured recovery time
    Drill(verify::DrillArgs),
    /// Per database and kind: last success, success rate, size change, last drill, WAL lag
    Status(verify::StatusArgs),
    /// The status in Prometheus text format, for node_exporter's textfile collector
    Metrics(verify::MetricsArgs),
    /// Mount the backup history as a read-only filesystem (foreground; Ctrl-C unmounts)
    Mount(mount::MountArgs),
    /// Manage the local index cache
    Index {
        #[command(subcommand)]
        command: repo::IndexCommand,
    },
    #[command(flatten)]
    Retention(retention::RetentionCommand),
    /// Manage the passphrases that open the repository (several keys, one master key)
    Key {
        #[command(subcommand)]
        command: repo::KeyCommand,
    },
}

/// Runs the command line and returns the process exit code.
pub fn main() -> i32 {
    // As restore_command, every exit from 1 to 125 reads as "not archived" and lets
    // PostgreSQL promote: a bad option, an unset variable or a panic must not say that.
    let is_fetch = std::env::args_os().any(|a| a == "wal-fetch");
    if is_fetch {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            report(info);
            std::process::exit(wal::CANNOT_TELL);
        }));
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if is_fetch && e.use_stderr() => {
            let _ = e.print();
            return wal::CANNOT_TELL;
        }
        Err(e) => return usage_error(e),
    };
    init_logging(cli.global.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pgvault: Cannot start the async runtime: {e}");
            return if is_fetch { wal::CANNOT_TELL } else { 1 };
        }
    };
    let result = runtime.block_on(run(cli));
    // The outcome is known: work still running (a prefetch, a call stuck on a hung
    // store) is abandoned rather than waited for, or a dead store could hold the
    // process after its error was printed.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => 0,
        Err(e) if is_fetch => wal::fetch_exit_code(&e),
        Err(e) => {
            output::print_error(&e);
            exit_code(&e)
        }
    }
}

/// Reports a command line clap refused. A bad value (a mistyped location, a time
/// without a zone, a size with an odd unit) gets one line, as every other error does;
/// help, version and missing arguments keep clap's own output with its usage.
fn usage_error(e: clap::Error) -> i32 {
    use clap::error::ErrorKind as K;
    if !matches!(e.kind(), K::ValueValidation | K::InvalidValue) {
        e.exit();
    }
    let text = e.to_string();
    let first = text.lines().next().unwrap_or("").trim();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let mut chars = first.chars();
    let line: String = match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    };
    eprintln!("pgvault: {}", line.trim_end_matches('.'));
    2
}

/// The exit code for an error: 1 in general, 2 for a request that cannot be done as
/// asked (as clap's own usage errors), 3 for a wrong passphrase, so scripts can tell
/// "the key is wrong" or "the command is wrong" from "the backup failed".
pub fn exit_code(e: &Error) -> i32 {
    match e.kind() {
        ErrorKind::WrongPassphrase => 3,
        ErrorKind::InvalidInput => 2,
        _ => 1,
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGVAULT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("pgvault={default}")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person: a mount's log usually goes to a file or journal.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

async fn run(cli: Cli) -> Result<()> {
    let g = &cli.global;
    match &cli.command {
        Command::Init(a) => repo::init(g, a).await,
        Command::Backup(a) => backup::run(g, a).await,
        Command::Snapshots(a) => repo::snapshots(g, a).await,
        Command::Cat(a) => repo::cat(g, a).await,
        Command::Index { command } => repo::index(g, command).await,
        Command::Key { command } => repo::key(g, command).await,
        Command::Check(a) => verify::check(g, a).await,
        Command::Drill(a) => verify::drill(g, a).await,
        Command::Status(a) => verify::status(g, a).await,
        Command::Metrics(a) => verify::metrics(g, a).await,
        Command::WalPush(a) => wal::push(g, a).await,
        Command::WalFetch(a) => wal::fetch(g, a).await,
        Command::WalAgent(a) => agent::run(g, a).await,
        Command::WalReceive(a) => wal::receive(g, a).await,
        Command::Wal {
            command: wal::WalCommand::List { json },
        } => wal::list(g, *json).await,
        Command::Restore(a) => wal::restore(g, a).await,
        Command::Mount(a) => mount::run(g, a).await,
        Command::Retention(c) => retention::run(g, c).await,
    }
}

/// A progress bar on stderr when `show`, else nothing.
pub(crate) fn progress_for(total: u64, label: &str, show: bool) -> Arc<dyn Progress> {
    if show {
        Arc::new(output::Bar::new(total, label))
    } else {
        Arc::new(NoProgress)
    }
}

/// Where the repository is, from --repo or PGVAULT_REPO.
///
/// Errors: `InvalidInput` when neither is given or the location does not parse.
pub(crate) fn location(g: &GlobalArgs) -> Result<Location> {
    g.repo.clone().ok_or_else(|| {
        Error::InvalidInput("No repository given: set PGVAULT_REPO or pass --repo".into())
    })
}

/// The repository's location as a command line for another process names it: a
/// local directory made absolute (the other process may run elsewhere), an S3 URL
/// as given.
///
/// Errors: as [`location`].
pub(crate) fn location_arg(g: &GlobalArgs) -> Result<String> {
    Ok(match location(g)? {
        Location::Local(p) => std::path::absolute(&p).unwrap_or(p).display().to_string(),
        s3 => s3.to_string(),
    })
}

fn s3_options(g: &GlobalArgs) -> S3Options {
    S3Options {
        path_style: g.s3_path_style,
        ..S3Options::default()
    }
}

/// How to reach the repository with `passphrase`.
///
/// Errors: `InvalidInput` for a missing or bad location, or no cache directory.
pub(crate) fn access_with(g: &GlobalArgs, passphrase: String) -> Result<RepoAccess> {
    let passphrase = zeroize::Zeroizing::new(passphrase);
    Ok(RepoAccess {
        location: location(g)?,
        s3: s3_options(g),
        timeouts: g.io_timeout,
        passphrase,
        cache_root: crate::store::cache::default_root()?,
    })
}

/// How to reach the repository, asking for the passphrase.
///
/// Errors: as [`access_with`]; `InvalidInput` when there is no passphrase.
pub(crate) fn access(g: &GlobalArgs) -> Result<RepoAccess> {
    // Location problems are reported before asking for a passphrase.
    location(g)?;
    access_with(g, passphrase(g)?)
}

/// Opens the repository; a local directory that does not exist is refused before a
/// passphrase is asked for.
///
/// Errors: as [`access`] and [`RepoAccess::open`].
pub(crate) async fn open_repo(g: &GlobalArgs) -> Result<Repository> {
    crate::ops::require_repository_dir(&location(g)?, g.io_timeout).await?;
    access(g)?.open().await
}

fn read_password_file(path: &std::path::Path) -> Result<String> {
    let s =
        std::fs::read_to_string(path).map_err(|e| Error::io_path("read password file", path, e))?;
    let line = s.lines().next().unwrap_or("").to_string();
    if line.is_empty() {
        return Err(Error::InvalidInput(format!(
            "Password file {} is empty",
            path.display()
        )));
    }
    Ok(line)
}

pub(crate) fn passphrase(g: &GlobalArgs) -> Result<String> {
    if let Some(p) = &g.password_file {
        return read_password_file(p);
    }
    if let Ok(p) = std::env::var("PGVAULT_PASSWORD") {
        if !p.is_empty() {
            return Ok(p);
        }
    }
    rpassword::prompt_password("Repository passphrase: ").map_err(|_| no_passphrase())
}

fn no_passphrase() -> Error {
    Error::InvalidInput(
        "No passphrase: set PGVAULT_PASSWORD_FILE or PGVAULT_PASSWORD, or run on a terminal".into(),
    )
}

fn new_passphrase(g: &GlobalArgs) -> Result<String> {
    if g.password_file.is_some() || std::env::var("PGVAULT_PASSWORD").is_ok_and(|p| !p.is_empty()) {
        return passphrase(g);
    }
    prompt_new_passphrase()
}

fn prompt_new_passphrase() -> Result<String> {
    let a =
        rpassword::prompt_password("New repository passphrase: ").map_err(|_| no_passphrase())?;
    let b = rpassword::prompt_password("Repeat the passphrase: ").map_err(|_| no_passphrase())?;
    if a != b {
        return Err(Error::InvalidInput("The two passphrases differ".into()));
    }
    if a.is_empty() {
        return Err(Error::InvalidInput("The passphrase is empty".into()));
    }
    Ok(a)
}
