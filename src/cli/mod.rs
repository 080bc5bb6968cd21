//! The command line: parses arguments, asks for passphrases, draws progress, prints
//! results for people or as JSON, and turns errors into exit codes. No logic lives here.

mod output;
mod retention;
mod verify;
mod wal;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use crate::backend::local::LocalBackend;
use crate::backend::s3::{S3Backend, S3Options};
use crate::backend::Backend;
use crate::error::{Error, ErrorKind, Result};
use crate::fuse::MountOptions;
use crate::pg::basebackup::BaseTarInspector;
use crate::pg::{ConnectOptions, DumpStreamInspector};
use crate::repo::lock::{LockGuard, LockKind};
use crate::repo::writer::{NoProgress, Progress, SnapshotMeta, StreamInspector};
use crate::repo::{InitOptions, Repository, SnapshotKind};
use crate::vfs::{Vfs, VfsOptions};

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
        value_name = "LOCATION"
    )]
    pub repo: Option<String>,

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

    /// More log output on stderr (repeat for more)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new, empty repository
    Init(InitArgs),
    /// Store a backup point: a pg_dump custom-format dump, or a base backup with --base
    Backup(BackupArgs),
    /// List backup points
    Snapshots(SnapshotsArgs),
    /// Write a backup point's file to stdout, byte for byte as pg_dump wrote it
    Cat(CatArgs),
    /// Archive one WAL file: archive_command = 'pgvault wal-push %p'
    WalPush(wal::WalPushArgs),
    /// Restore one WAL file: restore_command = 'pgvault wal-fetch %f %p'
    /// (exit 1: not archived; above 125: the archive could not be read)
    WalFetch(wal::WalFetchArgs),
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
    Mount(MountArgs),
    /// Manage the local index cache
    Index {
        #[command(subcommand)]
        command: IndexCommand,
    },
    #[command(flatten)]
    Retention(retention::RetentionCommand),
    /// Manage the passphrases that open the repository (several keys, one master key)
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
}

/// `pgvault key ...`.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// List the keys; * marks the one the passphrase opened
    List {
        /// Print a JSON array
        #[arg(long)]
        json: bool,
    },
    /// Add a passphrase
    Add(NewKeyArgs),
    /// Remove a key by id (or unique id prefix); never the last one or the one in use
    Remove {
        /// Key id or a unique prefix of it
        id: String,
    },
    /// Replace the passphrase in use: add a key for the new one, then remove the old key
    Passwd(NewKeyArgs),
}

/// Where `key add` and `key passwd` get the new passphrase.
#[derive(Debug, Args)]
pub struct NewKeyArgs {
    /// Read the new passphrase from this file (first line); else PGVAULT_NEW_PASSWORD, else a prompt
    #[arg(long, value_name = "FILE")]
    pub new_password_file: Option<PathBuf>,
    /// Memory for the new key's argon2id hash, in KiB (default: as the key in use)
    #[arg(long, value_name = "KIB", value_parser = clap::value_parser!(u32).range(8..))]
    pub kdf_memory_kib: Option<u32>,
    /// Passes of the new key's argon2id hash (default: as the key in use)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub kdf_iterations: Option<u32>,
}

/// `pgvault init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Smallest chunk FastCDC cuts, in bytes
    #[arg(long, default_value_t = 64 * 1024, value_name = "BYTES")]
    pub chunk_min: u32,
    /// Average chunk size, in bytes
    #[arg(long, default_value_t = 256 * 1024, value_name = "BYTES")]
    pub chunk_avg: u32,
    /// Largest chunk, in bytes
    #[arg(long, default_value_t = 1024 * 1024, value_name = "BYTES")]
    pub chunk_max: u32,
    /// zstd compression level for chunks
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
    pub zstd_level: i32,
    /// Store a new chunk that resembles a stored one as a delta on it (changed rows in
    /// daily dumps): "on" or "off"
    #[arg(long, default_value = "on", value_name = "on|off", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    pub delta: bool,
    /// Memory for the argon2id passphrase hash, in KiB
    #[arg(long, default_value_t = 64 * 1024, value_name = "KIB", value_parser = clap::value_parser!(u32).range(8..))]
    pub kdf_memory_kib: u32,
    /// Passes of the argon2id passphrase hash
    #[arg(long, default_value_t = 3, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub kdf_iterations: u32,
}

/// `pgvault backup`.
#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub struct BackupArgs {
    /// The database: dumped with pg_dump -Fc -Z0, or the name recorded for --stdin
    /// (with --base, a label for the cluster; default "cluster")
    #[arg(short = 'd', long, value_name = "DBNAME")]
    pub db: Option<String>,
    /// Take a physical base backup with pg_basebackup (for point-in-time recovery)
    #[arg(long)]
    pub base: bool,
    /// Read the archive from standard input instead of running pg_dump (a custom-format
    /// dump) or pg_basebackup (its tar stream, with --base)
    #[arg(long)]
    pub stdin: bool,
    /// The backup point's time (RFC 3339), for importing older dumps; default now
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub time: Option<chrono::DateTime<chrono::Utc>>,
    /// Database server host or socket directory (as pg_dump -h)
    #[arg(short = 'h', long, value_name = "HOST")]
    pub host: Option<String>,
    /// Database server port (as pg_dump -p)
    #[arg(short = 'p', long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Database user (as pg_dump -U)
    #[arg(short = 'U', long, value_name = "USER")]
    pub username: Option<String>,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub anomaly: verify::AnomalyArgs,
    /// How long to wait for a prune holding the repository before giving up
    #[arg(long, env = "PGVAULT_LOCK_WAIT", value_name = "DURATION", default_value = "10m", value_parser = retention::duration_arg)]
    pub lock_wait: std::time::Duration,
    /// Print help
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

/// `pgvault snapshots`.
#[derive(Debug, Args)]
pub struct SnapshotsArgs {
    /// Only this database
    #[arg(long, value_name = "DBNAME")]
    pub db: Option<String>,
    /// Print a JSON array
    #[arg(long)]
    pub json: bool,
}

/// `pgvault cat`.
#[derive(Debug, Args)]
pub struct CatArgs {
    /// Snapshot id or a unique prefix of it
    pub snapshot: String,
}

/// `pgvault mount`.
#[derive(Debug, Args)]
pub struct MountArgs {
    /// An existing directory to mount on
    pub mountpoint: PathBuf,
    /// Memory for decoded chunks shared by all readers, e.g. 512MiB or 2GiB
    #[arg(long, default_value = "256MiB", value_name = "SIZE", value_parser = parse_size)]
    pub cache_size: u64,
    /// Let other users read the mount (a non-root user needs user_allow_other in /etc/fuse.conf)
    #[arg(long)]
    pub allow_other: bool,
}

/// `pgvault index ...`.
#[derive(Debug, Subcommand)]
pub enum IndexCommand {
    /// Recreate the local index from the repository
    Rebuild,
}

/// A byte count such as `256MiB`, `1GiB`, `64M`, `4096` (binary units; `B` optional).
fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as 256MiB or 1GiB"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => {
            return Err(format!(
                "{s:?} has an unknown unit; use KiB, MiB, GiB or TiB"
            ))
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

pub(crate) fn parse_time(s: &str) -> std::result::Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("{s:?} is not an RFC 3339 time such as 2026-11-01T02:00:00Z: {e}"))
}

fn parse_on_off(s: &str) -> std::result::Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{s:?} is neither \"on\" nor \"off\"")),
    }
}

/// Runs the command line and returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    init_logging(cli.global.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pgvault: Cannot start the async runtime: {e}");
            return 1;
        }
    };
    let is_fetch = matches!(cli.command, Command::WalFetch(_));
    match runtime.block_on(run(cli)) {
        Ok(()) => 0,
        Err(e) if is_fetch => wal::fetch_exit_code(&e),
        Err(e) => {
            output::print_error(&e);
            exit_code(&e)
        }
    }
}

/// The exit code for an error: 1 in general, 3 for a wrong passphrase, so scripts can
/// tell "the key is wrong" from "the backup failed".
pub fn exit_code(e: &Error) -> i32 {
    match e.kind() {
        ErrorKind::WrongPassphrase => 3,
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
        Command::Init(a) => {
            let backend = open_backend(g).await?;
            let pass = new_passphrase(g)?;
            let opts = InitOptions {
                chunker: crate::chunker::ChunkerParams {
                    min_size_bytes: a.chunk_min,
                    avg_size_bytes: a.chunk_avg,
                    max_size_bytes: a.chunk_max,
                },
                zstd_level: a.zstd_level,
                delta: a.delta,
                kdf: crate::crypto::KdfParams {
                    memory_kib: a.kdf_memory_kib,
                    iterations: a.kdf_iterations,
                    parallelism: 1,
                },
            };
            let repo = Repository::init(backend, pass.as_bytes(), opts).await?;
            println!(
                "Created pgvault repository {} at {}",
                repo.config().repo_id,
                repo.location()
            );
            if !repo.config().conditional_writes {
                eprintln!(
                    "pgvault: Warning: the store under {} does not honour conditional writes (If-None-Match: *); adding keys will be refused",
                    repo.location()
                );
            }
            Ok(())
        }
        Command::Backup(a) => verify::backup(g, a).await,
        Command::Check(a) => verify::check(g, a).await,
        Command::Drill(a) => verify::drill(g, a).await,
        Command::Status(a) => verify::status(g, a).await,
        Command::Metrics(a) => verify::metrics(g, a).await,
        Command::WalPush(a) => wal::push(g, a).await,
        Command::WalFetch(a) => wal::fetch(g, a).await,
        Command::Wal {
            command: wal::WalCommand::List { json },
        } => wal::list(g, *json).await,
        Command::Restore(a) => wal::restore(g, a).await,
        Command::Key { command } => key(g, command).await,
        Command::Snapshots(a) => {
            let repo = open_repo(g).await?;
            let mut snaps = repo.snapshots().await?;
            if let Some(db) = &a.db {
                snaps.retain(|s| &s.db == db);
            }
            if a.json {
                output::print_json(&output::snapshots_json(&snaps));
            } else {
                output::print_snapshot_table(&snaps);
            }
            Ok(())
        }
        Command::Cat(a) => {
            let repo = open_repo(g).await?;
            let m = repo.resolve_snapshot(&a.snapshot).await?;
            let progress = progress_for(m.size_bytes, "cat", std::io::stderr().is_terminal());
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout);
            repo.cat(&m, &mut out, progress.clone()).await?;
            Ok(())
        }
        Command::Mount(a) => mount(g, a).await,
        Command::Index {
            command: IndexCommand::Rebuild,
        } => {
            let repo = open_repo(g).await?;
            let (chunks, snaps) = repo.rebuild_index().await?;
            println!(
                "Rebuilt index {}: {chunks} chunks, {snaps} snapshots",
                repo.index().path().display()
            );
            Ok(())
        }
        Command::Retention(c) => retention::run(g, c).await,
    }
}

/// Which database and kind `backup` is asked for.
///
/// Errors: `InvalidInput` when neither --db nor --base is given.
pub(crate) fn backup_target(a: &BackupArgs) -> Result<(SnapshotKind, String)> {
    match (&a.db, a.base) {
        (Some(db), _) => Ok((
            if a.base {
                SnapshotKind::Base
            } else {
                SnapshotKind::Dump
            },
            db.clone(),
        )),
        (None, true) => Ok((SnapshotKind::Base, "cluster".to_string())),
        (None, false) => Err(Error::InvalidInput(
            "Name the database to dump with --db, or take a base backup with --base".into(),
        )),
    }
}

/// Takes the backup and commits it; `opened` gets the repository once it is open, so
/// the caller can record the attempt there even when the backup fails.
///
/// Errors: as the backup fails: pg_dump or pg_basebackup, bad input, the backend.
pub(crate) async fn take_backup(
    g: &GlobalArgs,
    a: &BackupArgs,
    opened: &mut Option<Repository>,
) -> Result<crate::repo::SnapshotManifest> {
    let (kind, db) = backup_target(a)?;
    let repo = open_repo(g).await?;
    *opened = Some(repo.clone());
    // Held from before the chunk cache is read until after the manifest is written.
    let lock = repo.lock(LockKind::Shared, "backup", a.lock_wait).await?;
    let result = backup_locked(&repo, a, kind, db, &lock).await;
    retention::release(lock, result).await
}

async fn backup_locked(
    repo: &Repository,
    a: &BackupArgs,
    kind: SnapshotKind,
    db: String,
    lock: &LockGuard,
) -> Result<crate::repo::SnapshotManifest> {
    let tty = std::io::stderr().is_terminal() && std::io::stdout().is_terminal();
    let meta = SnapshotMeta {
        file_name: match kind {
            SnapshotKind::Dump => format!("{db}.dump"),
            SnapshotKind::Base => "base.tar".to_string(),
        },
        db,
        kind,
        time: a.time,
    };
    let inspector: Box<dyn StreamInspector> = match kind {
        SnapshotKind::Dump => Box::new(DumpStreamInspector::default()),
        SnapshotKind::Base => Box::new(BaseTarInspector::new()),
    };
    let pending = if a.stdin {
        let progress = progress_for(0, "backup", tty);
        repo.ingest(Box::new(std::io::stdin()), meta, Some(inspector), progress)
            .await?
    } else {
        let conn = ConnectOptions {
            host: a.host.clone(),
            port: a.port,
            user: a.username.clone(),
        };
        let (process, stdout) = match kind {
            SnapshotKind::Dump => crate::pg::pg_dump(&meta.db, &conn)?,
            SnapshotKind::Base => crate::pg::basebackup::pg_basebackup(&conn)?,
        };
        let progress = progress_for(0, kind.as_str(), tty);
        match repo
            .ingest(Box::new(stdout), meta, Some(inspector), progress)
            .await
        {
            Ok(p) => {
                // The program's verdict comes before the commit: a dump that failed
                // half-way must never become a backup point.
                process.finish()?;
                p
            }
            Err(e) if e.kind() == ErrorKind::InvalidInput => {
                // A failing program explains itself better than the broken stream it left.
                process.finish()?;
                return Err(e);
            }
            Err(e) => {
                process.kill();
                return Err(e);
            }
        }
    };
    lock.ensure_held().await?;
    pending.commit().await
}

async fn mount(g: &GlobalArgs, a: &MountArgs) -> Result<()> {
    // Mountpoint trouble is reported before asking for a passphrase.
    crate::fuse::check_mountpoint(&a.mountpoint)?;
    let repo = open_repo(g).await?;
    let location = repo.location();
    let opts = VfsOptions {
        cache_bytes: usize::try_from(a.cache_size).unwrap_or(usize::MAX),
        ..VfsOptions::default()
    };
    let vfs = Vfs::open(repo, opts).await?;
    let points = vfs.point_count();
    let mounted = crate::fuse::mount(
        vfs,
        &a.mountpoint,
        &MountOptions {
            allow_other: a.allow_other,
            fsname: format!("pgvault:{location}"),
        },
    )
    .await?;
    let mp = mounted.mountpoint().display().to_string();
    println!(
        "Mounted {location} on {mp} ({points} backup points); Ctrl-C or `umount {mp}` unmounts"
    );
    mounted.serve_until_signal().await?;
    println!("Unmounted {mp}");
    Ok(())
}

async fn key(g: &GlobalArgs, command: &KeyCommand) -> Result<()> {
    let mut repo = open_repo(g).await?;
    match command {
        KeyCommand::List { json } => {
            let keys = repo.keys().await?;
            if *json {
                output::print_json(&output::keys_json(&keys));
            } else {
                output::print_key_table(&keys);
            }
        }
        KeyCommand::Add(a) => {
            // Refuse before asking for a passphrase that could not be used.
            repo.require_conditional_writes("add a key")?;
            let pass = new_key_passphrase(a)?;
            let kdf = kdf_override(&repo, a).await?;
            let id = repo.add_key(pass.as_bytes(), kdf).await?;
            println!("Added key {id} to {}", repo.location());
        }
        KeyCommand::Remove { id } => {
            let id = repo.remove_key(id).await?;
            println!("Removed key {id} from {}", repo.location());
        }
        KeyCommand::Passwd(a) => {
            repo.require_conditional_writes("change the passphrase")?;
            let pass = new_key_passphrase(a)?;
            if kdf_override(&repo, a).await?.is_some() {
                return Err(Error::InvalidInput(
                    "`key passwd` keeps the key derivation costs; use `key add` with --kdf-* and `key remove` to change them".into(),
                ));
            }
            let old = repo.key_id().to_string();
            let id = repo.change_passphrase(pass.as_bytes()).await?;
            println!(
                "Changed the passphrase of {}: key {id} replaces key {old}",
                repo.location()
            );
        }
    }
    Ok(())
}

/// The KDF costs `key add` was asked for, filled in from the key in use.
async fn kdf_override(
    repo: &Repository,
    a: &NewKeyArgs,
) -> Result<Option<crate::crypto::KdfParams>> {
    if a.kdf_memory_kib.is_none() && a.kdf_iterations.is_none() {
        return Ok(None);
    }
    let current = repo
        .keys()
        .await?
        .into_iter()
        .find(|k| k.current)
        .map(|k| k.kdf_params)
        .unwrap_or_default();
    Ok(Some(crate::crypto::KdfParams {
        memory_kib: a.kdf_memory_kib.unwrap_or(current.memory_kib),
        iterations: a.kdf_iterations.unwrap_or(current.iterations),
        parallelism: current.parallelism,
    }))
}

/// The new passphrase for `key add` / `key passwd`: --new-password-file, else
/// PGVAULT_NEW_PASSWORD, else asked twice on the terminal.
fn new_key_passphrase(a: &NewKeyArgs) -> Result<String> {
    if let Some(p) = &a.new_password_file {
        return read_password_file(p);
    }
    if let Ok(p) = std::env::var("PGVAULT_NEW_PASSWORD") {
        if !p.is_empty() {
            return Ok(p);
        }
    }
    prompt_new_passphrase().map_err(|e| match e {
        Error::InvalidInput(m) if m.starts_with("No passphrase") => Error::InvalidInput(
            "No new passphrase: pass --new-password-file or set PGVAULT_NEW_PASSWORD, or run on a terminal".into(),
        ),
        other => other,
    })
}

pub(crate) fn progress_for(total: u64, label: &str, show: bool) -> Arc<dyn Progress> {
    if show {
        Arc::new(output::Bar::new(total, label))
    } else {
        Arc::new(NoProgress)
    }
}

pub(crate) async fn open_backend(g: &GlobalArgs) -> Result<Arc<dyn Backend>> {
    let loc = g.repo.as_deref().ok_or_else(|| {
        Error::InvalidInput("No repository given: set PGVAULT_REPO or pass --repo".into())
    })?;
    if loc.starts_with("s3://") {
        let opts = S3Options {
            path_style: g.s3_path_style,
            ..S3Options::default()
        };
        return Ok(Arc::new(S3Backend::connect(loc, &opts).await?));
    }
    if let Some((scheme, _)) = loc.split_once("://").filter(|(s, _)| *s != "file") {
        return Err(Error::InvalidInput(format!(
            "Repository {loc}: unknown scheme {scheme}://; use a directory or s3://bucket/prefix"
        )));
    }
    let path = PathBuf::from(loc.strip_prefix("file://").unwrap_or(loc));
    Ok(Arc::new(LocalBackend::new(path)))
}

pub(crate) async fn open_repo(g: &GlobalArgs) -> Result<Repository> {
    let backend = open_backend(g).await?;
    if let Some(local) = local_root(g) {
        if !local.exists() {
            return Err(Error::NotFound {
                what: "Repository directory".into(),
                location: format!("{}; run `pgvault init` to create one", local.display()),
            });
        }
    }
    let pass = passphrase(g)?;
    Repository::open(backend, pass.as_bytes()).await
}

fn local_root(g: &GlobalArgs) -> Option<PathBuf> {
    let loc = g.repo.as_deref()?;
    (!loc.contains("://") || loc.starts_with("file://"))
        .then(|| PathBuf::from(loc.strip_prefix("file://").unwrap_or(loc)))
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

fn passphrase(g: &GlobalArgs) -> Result<String> {
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

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("2 gb"), Ok(2 << 30));
        assert!(parse_size("lots").unwrap_err().contains("256MiB"));
        assert!(parse_size("5XB").unwrap_err().contains("unit"));
        assert!(parse_size("99999999999TiB")
            .unwrap_err()
            .contains("too large"));
    }
}
