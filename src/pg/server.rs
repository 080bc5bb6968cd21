//! Running a private PostgreSQL server on a data directory of our own (a restored
//! base backup), as the `postgres` OS user when we are root.

use std::path::Path;
use std::process::Stdio;

use tokio::process::Command;

use super::pg_program;
use crate::error::{Error, Result};

/// The uid and gid of the `postgres` OS user when we run as root (PostgreSQL refuses
/// to run as root), `None` otherwise.
///
/// Errors: `InvalidInput` when running as root and there is no `postgres` user.
pub fn server_user() -> Result<Option<(u32, u32)>> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|r| r.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u32>().ok());
    if euid != Some(0) {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 3 && f[0] == "postgres")
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
        .map(Some)
        .ok_or_else(|| {
            Error::InvalidInput(
                "Running as root, and there is no postgres OS user to run a private server as"
                    .into(),
            )
        })
}

pub fn chown_tree(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .map_err(|e| Error::io_path("chown", path, e))?;
    let meta = std::fs::symlink_metadata(path).map_err(|e| Error::io_path("stat", path, e))?;
    if meta.is_dir() {
        for e in std::fs::read_dir(path).map_err(|e| Error::io_path("list", path, e))? {
            let e = e.map_err(|e| Error::io_path("list", path, e))?;
            chown_tree(&e.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// `pg_ctl stop` of a private server, in the given mode; errors are not reported,
/// because the caller removes the directory next.
pub async fn stop_server(pgdata: &Path, run_as: Option<(u32, u32)>, mode: &str) {
    if !pgdata.join("postmaster.pid").exists() {
        return;
    }
    let mut cmd = Command::new(pg_program("pg_ctl"));
    cmd.arg("stop")
        .arg("-D")
        .arg(pgdata)
        .args(["-m", mode, "-w", "-t", "60"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(parent) = pgdata.parent() {
        cmd.current_dir(parent);
    }
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid).gid(gid);
    }
    let _ = cmd.status().await;
}
