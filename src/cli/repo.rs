//! The repository commands: `init`, `snapshots`, `cat`, `index` and `key`.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{access_with, args, new_passphrase, open_repo, output, GlobalArgs};
use crate::error::{Error, Result};
use crate::ops::keys::KdfOverride;
use crate::store::InitOptions;

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
    /// zstd compression level for chunks stored in full (2 is smaller and faster than
    /// 3 on relation files and dumps)
    #[arg(long, default_value_t = crate::store::DEFAULT_ZSTD_LEVEL, value_name = "LEVEL", value_parser = clap::value_parser!(i32).range(1..=19))]
    pub zstd_level: i32,
    /// zstd compression level for chunks stored as deltas on similar ones
    #[arg(long, default_value_t = crate::store::DEFAULT_DELTA_ZSTD_LEVEL, value_name = "LEVEL", value_parser = clap::value_parser!(i32).range(1..=19))]
    pub delta_zstd_level: i32,
    /// Store a new chunk that resembles a stored one as a delta on it (changed rows in
    /// daily dumps): "on" or "off"
    #[arg(long, default_value = "on", value_name = "on|off", value_parser = args::on_off, action = clap::ArgAction::Set)]
    pub delta: bool,
    /// Memory for the argon2id passphrase hash, in KiB
    #[arg(long, default_value_t = 64 * 1024, value_name = "KIB", value_parser = clap::value_parser!(u32).range(8..=1_048_576))]
    pub kdf_memory_kib: u32,
    /// Passes of the argon2id passphrase hash
    #[arg(long, default_value_t = 3, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=16))]
    pub kdf_iterations: u32,
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
    /// Print one table's rows of a dump as COPY text (what `COPY t TO STDOUT`
    /// printed then), reading only that table's chunks; `table` alone when one
    /// schema has it
    #[arg(long, value_name = "SCHEMA.TABLE", conflicts_with_all = ["sql", "schema"])]
    pub table: Option<String>,
    /// Print a dump as the SQL script `pg_restore -f -` prints, for psql
    #[arg(long, conflicts_with = "schema")]
    pub sql: bool,
    /// Print a dump's schema as the SQL script `pg_restore -s -f -` prints
    #[arg(long)]
    pub schema: bool,
}

/// `pgvault index ...`.
#[derive(Debug, Subcommand)]
pub enum IndexCommand {
    /// Recreate the local index from the repository
    Rebuild,
}

/// A byte count such as `256MiB`, `1GiB`, `64M`, `4096` (binary units; `B` optional).
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
    #[arg(long, value_name = "KIB", value_parser = clap::value_parser!(u32).range(8..=1_048_576))]
    pub kdf_memory_kib: Option<u32>,
    /// Passes of the new key's argon2id hash (default: as the key in use)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=16))]
    pub kdf_iterations: Option<u32>,
}

/// `init`.
///
/// Errors: as [`crate::ops::RepoAccess::init`].
pub async fn init(g: &GlobalArgs, a: &InitArgs) -> Result<()> {
    let opts = InitOptions {
        chunker: crate::chunker::ChunkerParams {
            min_size_bytes: a.chunk_min,
            avg_size_bytes: a.chunk_avg,
            max_size_bytes: a.chunk_max,
        },
        zstd_level: a.zstd_level,
        delta_zstd_level: a.delta_zstd_level,
        delta: a.delta,
        kdf: crate::crypto::KdfParams {
            memory_kib: a.kdf_memory_kib,
            iterations: a.kdf_iterations,
            parallelism: 1,
        },
    };
    let repo = access_with(g, new_passphrase(g)?)?.init(opts).await?;
    println!(
        "Created pgvault repository {} at {}",
        repo.config().repo_id,
        repo.location()
    );
    if !repo.config().conditional_writes {
        eprintln!(
            "pgvault: warning: the store under {} does not honour conditional writes (If-None-Match: *): adding keys will be refused{}",
            repo.location(),
            if a.delta { ", and delta chunks are off" } else { "" }
        );
    }
    Ok(())
}

/// `snapshots`.
///
/// Errors: as [`crate::ops::snapshots::list`].
pub async fn snapshots(g: &GlobalArgs, a: &SnapshotsArgs) -> Result<()> {
    let repo = open_repo(g).await?;
    let snaps = crate::ops::snapshots::list(&repo, a.db.as_deref()).await?;
    if a.json {
        output::print_json(&output::snapshots_json(&snaps));
    } else {
        output::print_snapshot_table(&snaps);
    }
    Ok(())
}

/// `cat`.
///
/// Errors: as [`crate::ops::snapshots::cat`].
pub async fn cat(g: &GlobalArgs, a: &CatArgs) -> Result<()> {
    let repo = open_repo(g).await?;
    let m = crate::ops::snapshots::find(&repo, &a.snapshot).await?;
    if let Some(table) = &a.table {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout());
        crate::ops::snapshots::cat_table(&repo, &m, table, &mut out).await?;
        return Ok(());
    }
    if a.sql || a.schema {
        use crate::ops::snapshots::ScriptKind;
        let kind = if a.schema {
            ScriptKind::SchemaOnly
        } else {
            ScriptKind::Whole
        };
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout());
        crate::ops::snapshots::cat_script(&repo, &m, kind, &mut out).await?;
        return Ok(());
    }
    let progress = super::progress_for(m.size_bytes, "cat", std::io::stderr().is_terminal());
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout());
    crate::ops::snapshots::cat(&repo, &m, &mut out, progress).await?;
    Ok(())
}

/// `index rebuild`.
///
/// Errors: as [`crate::ops::snapshots::rebuild_index`].
pub async fn index(g: &GlobalArgs, command: &IndexCommand) -> Result<()> {
    match command {
        IndexCommand::Rebuild => {
            let repo = open_repo(g).await?;
            let (chunks, snaps) = crate::ops::snapshots::rebuild_index(&repo).await?;
            println!(
                "Rebuilt index {}: {chunks} chunks, {snaps} snapshots",
                repo.index().path().display()
            );
            Ok(())
        }
    }
}

/// `key list|add|remove|passwd`.
///
/// Errors: as the `crate::ops::keys` function called.
pub async fn key(g: &GlobalArgs, command: &KeyCommand) -> Result<()> {
    let mut repo = open_repo(g).await?;
    match command {
        KeyCommand::List { json } => {
            let keys = crate::ops::keys::list(&repo).await?;
            if *json {
                output::print_json(&output::keys_json(&keys));
            } else {
                output::print_key_table(&keys);
            }
        }
        KeyCommand::Add(a) => {
            // Refuse before asking for a passphrase that could not be used.
            crate::ops::keys::can_add(&repo)?;
            let pass = new_key_passphrase(a)?;
            let id = crate::ops::keys::add(&repo, pass.as_bytes(), kdf(a)).await?;
            println!("Added key {id} to {}", repo.location());
        }
        KeyCommand::Remove { id } => {
            let id = crate::ops::keys::remove(&repo, id).await?;
            println!("Removed key {id} from {}", repo.location());
        }
        KeyCommand::Passwd(a) => {
            crate::ops::keys::can_add(&repo)?;
            let pass = new_key_passphrase(a)?;
            let (old, new) = crate::ops::keys::passwd(&mut repo, pass.as_bytes(), kdf(a)).await?;
            println!(
                "Changed the passphrase of {}: key {new} replaces key {old}",
                repo.location()
            );
        }
    }
    Ok(())
}

fn kdf(a: &NewKeyArgs) -> KdfOverride {
    KdfOverride {
        memory_kib: a.kdf_memory_kib,
        iterations: a.kdf_iterations,
    }
}

/// The new passphrase for `key add` / `key passwd`: --new-password-file, else
/// PGVAULT_NEW_PASSWORD, else asked twice on the terminal.
fn new_key_passphrase(a: &NewKeyArgs) -> Result<String> {
    if let Some(p) = &a.new_password_file {
        return super::read_password_file(p);
    }
    if let Ok(p) = std::env::var("PGVAULT_NEW_PASSWORD") {
        if !p.is_empty() {
            return Ok(p);
        }
    }
    super::prompt_new_passphrase().map_err(|e| match e {
        Error::InvalidInput(m) if m.starts_with("No passphrase") => Error::InvalidInput(
            "No new passphrase: pass --new-password-file or set PGVAULT_NEW_PASSWORD, or run on a terminal".into(),
        ),
        other => other,
    })
}
