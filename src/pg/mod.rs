//! Running PostgreSQL's own tools (pg_dump) and understanding what they write.

pub mod custom_format;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::thread::JoinHandle;

use crate::error::{Error, Result};

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
}

/// A running `pg_dump -Fc -Z0`, whose output is read as it is produced.
pub struct PgDump {
    child: Child,
    stderr: Option<JoinHandle<String>>,
    db: String,
}

impl PgDump {
    /// Starts pg_dump for `db`, uncompressed (pgvault compresses each chunk itself;
    /// a compressed dump changes everywhere when one row changes).
    ///
    /// Errors: `External` when pg_dump cannot be started.
    pub fn start(db: &str, conn: &ConnectOptions) -> Result<(Self, ChildStdout)> {
        let program = pg_program("pg_dump");
        let mut cmd = Command::new(&program);
        cmd.args(["--format=custom", "--compress=0", "--no-password"]);
        if let Some(h) = &conn.host {
            cmd.args(["--host", h]);
        }
        if let Some(p) = conn.port {
            cmd.args(["--port", &p.to_string()]);
        }
        if let Some(u) = &conn.user {
            cmd.args(["--username", u]);
        }
        cmd.args(["--dbname", db]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::External(format!("Cannot start {}: {e}", program.display())))?;
        let stdout = child.stdout.take().expect("stdout was piped");
        let mut err_pipe = child.stderr.take().expect("stderr was piped");
        // Read stderr on its own thread: a chatty pg_dump must not block on a full pipe.
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err_pipe.read_to_string(&mut s);
            s
        });
        Ok((
            PgDump {
                child,
                stderr: Some(stderr),
                db: db.to_string(),
            },
            stdout,
        ))
    }

    /// Waits for pg_dump to exit and checks that it succeeded.
    ///
    /// Errors: `External` carrying pg_dump's own error output when it failed.
    pub fn finish(mut self) -> Result<()> {
        let status = self
            .child
            .wait()
            .map_err(|e| Error::External(format!("Cannot wait for pg_dump: {e}")))?;
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        if status.success() {
            if !stderr.trim().is_empty() {
                tracing::warn!("pg_dump said: {}", stderr.trim());
            }
            Ok(())
        } else {
            Err(Error::External(format!(
                "pg_dump of database {} failed ({status}): {}",
                self.db,
                stderr.trim()
            )))
        }
    }

    /// Stops pg_dump after a failure on our side, so it does not linger.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
