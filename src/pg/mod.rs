//! PostgreSQL's side: running its programs (pg_dump, pg_basebackup, psql, a private
//! postgres) and understanding what they write (the custom-format dump, the base
//! backup's tar stream, recovery settings). It knows nothing of chunks or stores: the
//! stream inspectors plug into the write path through `store::writer`'s hook.

pub mod basebackup;
pub mod client;
pub mod conninfo;
pub mod custom_format;
pub mod gzip_sql;
pub mod page;
pub mod pgdata;
pub mod recovery;
pub mod restore_script;
pub mod server;
pub mod tar_cuts;
pub mod toc_listing;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::thread::JoinHandle;

use crate::error::{Error, Result};
use crate::store::writer::{Inspected, StreamInspector};

/// The system identifier of the cluster whose `pg_wal` directory holds `wal_path`,
/// from its `global/pg_control` (the first field of ControlFileData, in the
/// machine's byte order): archive_command and restore_command run in the data
/// directory and name files in `pg_wal/`. `None` when the path is not in a `pg_wal`
/// directory or pg_control cannot be read.
pub fn system_identifier_beside_wal(wal_path: &std::path::Path) -> Option<u64> {
    let dir = wal_path.parent()?;
    if dir.file_name()? != "pg_wal" {
        return None;
    }
    system_identifier_of(dir.parent()?)
        .ok()
        .filter(|id| *id != 0)
}

/// The system identifier in data directory `pgdata`'s `global/pg_control` (the
/// first field of ControlFileData, in the machine's byte order).
///
/// Errors: `Io` when the control file cannot be read.
pub fn system_identifier_of(pgdata: &std::path::Path) -> Result<u64> {
    let path = pgdata.join("global").join("pg_control");
    let mut id = [0u8; 8];
    std::fs::File::open(&path)
        .and_then(|mut f| f.read_exact(&mut id))
        .map_err(|e| Error::io_path("read", &path, e))?;
    Ok(u64::from_le_bytes(id))
}

/// Reads a child's piped stderr to the end on its own thread: a chatty program must
/// not block on a full pipe, and its last words explain a failure.
fn collect_stderr(child: &mut Child) -> JoinHandle<String> {
    let mut err = child.stderr.take().expect("stderr was piped");
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    })
}

/// Where to find PostgreSQL client programs: `$PGVAULT_PG_BINDIR`, then `PATH`, then
/// the newest `/usr/lib/postgresql/<major>/bin`.
pub fn pg_program(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("PGVAULT_PG_BINDIR") {
        return PathBuf::from(dir).join(name);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            let p = e.path().join("bin").join(name);
            p.is_file().then_some((major, p))
        })
        .collect();
    majors.sort();
    majors
        .pop()
        .map(|(_, p)| p)
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Connection options passed through to pg_dump; unset ones fall back to libpq's
/// environment (PGHOST, PGPORT, PGUSER, ...).
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    /// A libpq connection string for pg_dump's database, instead of its name: it may
    /// hold a password, so it goes to pg_dump or pg_basebackup and nowhere else (see
    /// [`conninfo`]).
    pub conninfo: Option<String>,
}

impl ConnectOptions {
    /// The command-line options every PostgreSQL client program takes for these
    /// settings, and `--no-password`: a backup job has nobody to type one.
    pub fn client_args(&self) -> Vec<String> {
        let mut args = vec!["--no-password".to_string()];
        if let Some(h) = &self.host {
            args.extend(["--host".into(), h.clone()]);
        }
        if let Some(p) = self.port {
            args.extend(["--port".into(), p.to_string()]);
        }
        if let Some(u) = &self.user {
            args.extend(["--username".into(), u.clone()]);
        }
        args
    }
}

/// A running PostgreSQL program whose standard output is read as it is produced.
pub struct PgProcess {
    child: Child,
    stderr: Option<JoinHandle<String>>,
    what: String,
}

impl PgProcess {
    /// Starts `program` with `args` and the connection options, stdout piped.
    ///
    /// Errors: `External` when the program cannot be started.
    fn start(
        program: &str,
        args: &[&str],
        conn: &ConnectOptions,
        what: String,
    ) -> Result<(Self, ChildStdout)> {
        let path = pg_program(program);
        let mut cmd = Command::new(&path);
        cmd.args(args).args(conn.client_args());
        // Messages in English: pgvault reads some of them (pg_basebackup's progress
        // lines) and quotes the rest in its own English errors.
        cmd.env("LC_MESSAGES", "C");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::External(format!("Cannot start {}: {e}", path.display())))?;
        let stdout = child.stdout.take().expect("stdout was piped");
        let stderr = collect_stderr(&mut child);
        Ok((
            PgProcess {
                child,
                stderr: Some(stderr),
                what,
            },
            stdout,
        ))
    }

    /// Waits for the program to exit and checks that it succeeded.
    ///
    /// Errors: `External` carrying the program's own error output when it failed.
    pub fn finish(mut self) -> Result<()> {
        let status = self
            .child
            .wait()
            .map_err(|e| Error::External(format!("Cannot wait for {}: {e}", self.what)))?;
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .map(|s| without_progress(&s))
            .unwrap_or_default();
        if status.success() {
            if !stderr.trim().is_empty() {
                tracing::warn!("{} said: {}", self.what, stderr.trim());
            }
            Ok(())
        } else {
            Err(Error::External(format!(
                "{} failed ({status}): {}",
                self.what,
                stderr.trim()
            )))
        }
    }

    /// Stops the program after a failure on our side, so it does not linger.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A program's error output without pg_basebackup's `--progress` lines
/// (`1234/5678 kB (21%), 0/3 tablespaces (…)`), which say nothing once it ended.
fn without_progress(stderr: &str) -> String {
    stderr
        .split(['\n', '\r'])
        .filter(|l| !(l.contains(" kB (") && l.contains(" tablespace")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Starts `pg_dump -Fc -Z0` of `db`: uncompressed, because pgvault compresses each
/// chunk itself and a compressed dump changes everywhere when one row changes.
///
/// Errors: `External` when pg_dump cannot be started.
pub fn pg_dump(db: &str, conn: &ConnectOptions) -> Result<(PgProcess, ChildStdout)> {
    let dbname = conn.conninfo.as_deref().unwrap_or(db);
    PgProcess::start(
        "pg_dump",
        &["--format=custom", "--compress=0", "--dbname", dbname],
        conn,
        format!("pg_dump of database {db}"),
    )
}

/// Checks a dump as it streams by and stores it: a custom-format archive (its data
/// offsets filled in when pg_dump wrote it to a pipe, its compressed table data
/// stored as text where it re-creates), or a gzipped plain-SQL dump (stored as its
/// text where it re-creates); see [`crate::recreate`]. The first bytes tell which.
#[derive(Default)]
pub struct DumpStreamInspector {
    stream: DumpStream,
    /// The first byte, while it alone has been seen.
    first: Vec<u8>,
}

#[derive(Default)]
enum DumpStream {
    /// Fewer bytes seen than tell the format.
    #[default]
    Undecided,
    Custom(Box<custom_format::DumpInspector>),
    Gzip(Box<gzip_sql::GzipSqlInspector>),
}

/// The file extension of a gzipped SQL dump's backup point, in place of `dump`.
pub const GZIP_SQL_EXTENSION: &str = "sql.gz";

fn dump_error(e: custom_format::DumpFormatError) -> Error {
    let what = match e {
        custom_format::DumpFormatError::BadMagic => {
            "Input is neither a pg_dump custom-format archive (pg_dump -Fc) nor a gzipped \
             SQL dump (pg_dump | gzip)"
        }
        _ => "Input is not a complete pg_dump custom-format archive (pg_dump -Fc)",
    };
    Error::InvalidInput(format!("{what}: {e}"))
}

fn gzip_error(e: gzip_sql::GzipSqlError) -> Error {
    Error::InvalidInput(format!(
        "Input is not a complete gzipped SQL dump (pg_dump | gzip): {e}"
    ))
}

impl DumpStreamInspector {
    /// Picks the format from the first two bytes.
    fn decide(&mut self, first: &[u8]) {
        self.stream = if first.starts_with(&gzip_sql::GZIP_MAGIC) {
            DumpStream::Gzip(Box::default())
        } else {
            DumpStream::Custom(Box::new(custom_format::DumpInspector::recreating()))
        };
    }
}

impl StreamInspector for DumpStreamInspector {
    fn feed(&mut self, data: &[u8]) -> Result<()> {
        let joined;
        let data = if matches!(self.stream, DumpStream::Undecided) {
            let mut first = std::mem::take(&mut self.first);
            first.extend_from_slice(data);
            if first.len() < 2 {
                self.first = first;
                return Ok(());
            }
            joined = first;
            self.decide(&joined);
            &joined[..]
        } else {
            data
        };
        match &mut self.stream {
            DumpStream::Undecided => unreachable!("decided above"),
            DumpStream::Custom(c) => c.feed(data).map_err(dump_error),
            DumpStream::Gzip(g) => g.feed(data).map_err(gzip_error),
        }
    }

    fn head_len(&self) -> Option<u64> {
        match &self.stream {
            DumpStream::Undecided => None,
            DumpStream::Custom(c) => c.toc_end(),
            // Nothing of a gzip file is rewritten at the end.
            DumpStream::Gzip(_) => Some(0),
        }
    }

    fn transforms(&self) -> bool {
        true
    }

    fn take_stored(&mut self, into: &mut Vec<u8>) {
        match &mut self.stream {
            DumpStream::Undecided => {}
            DumpStream::Custom(c) => c.take_stored(into),
            DumpStream::Gzip(g) => g.take_stored(into),
        }
    }

    fn finish(self: Box<Self>, head: &[u8]) -> Result<Inspected> {
        let custom = match self.stream {
            DumpStream::Gzip(g) => {
                return Ok(Inspected {
                    recreation: g.finish().map_err(gzip_error)?,
                    file_extension: Some(GZIP_SQL_EXTENSION),
                    ..Inspected::default()
                })
            }
            DumpStream::Custom(c) => *c,
            DumpStream::Undecided => {
                // Under two bytes: the custom-format reader says what is missing.
                let mut c = custom_format::DumpInspector::recreating();
                c.feed(&self.first).map_err(dump_error)?;
                c
            }
        };
        let layout = custom.finish().map_err(dump_error)?;
        let patched_head = if layout.offsets_were_set {
            None
        } else {
            Some(layout.patch_head(head).map_err(dump_error)?)
        };
        if layout.contents.is_none() {
            let why = if layout.is_compressed() {
                "its data is compressed with an algorithm other than gzip, or does not inflate"
            } else {
                "a table's name is not UTF-8"
            };
            tracing::info!("The dump's tables are not shown one by one in the mount: {why}");
        }
        Ok(Inspected {
            patched_head,
            base: None,
            dump_contents: layout.contents,
            recreation: layout.recreation,
            file_extension: None,
        })
    }
}
