//! Turning a base backup into a PGDATA that recovers to a target: extraction into an
//! empty directory, `recovery.signal`, and the recovery settings.

use std::io::{Read, Write};
use std::path::Path;

use crate::error::{Error, Result};

/// Checks that `pgdata` does not exist or is an empty directory, before anything is written.
///
/// Errors: `InvalidInput` when it holds anything or is not a directory.
pub fn check_empty_pgdata(pgdata: &Path) -> Result<()> {
    match std::fs::read_dir(pgdata) {
        Ok(mut rd) => {
            if rd.next().is_some() {
                return Err(Error::InvalidInput(format!(
                    "Refusing to restore into {}: the directory is not empty",
                    pgdata.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::InvalidInput(format!(
            "Refusing to restore into {}: {e}",
            pgdata.display()
        ))),
    }
}

/// Extracts a pg_basebackup tar stream into `pgdata`, created with mode 0700 as
/// PostgreSQL demands.
///
/// Errors: `Io` when the directory cannot be created or the archive not unpacked.
pub fn extract_base(tar_stream: impl Read, pgdata: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(pgdata).map_err(|e| Error::io_path("create", pgdata, e))?;
    std::fs::set_permissions(pgdata, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io_path("chmod", pgdata, e))?;
    let mut archive = tar::Archive::new(tar_stream);
    archive.set_preserve_permissions(true);
    archive
        .unpack(pgdata)
        .map_err(|e| Error::io_path("extract the base backup into", pgdata, e))?;
    // pg_basebackup's own manifest describes the backup, not the restored cluster,
    // whose files recovery will change.
    let _ = std::fs::remove_file(pgdata.join("backup_manifest"));
    Ok(())
}

/// The recovery settings that make a restored PGDATA replay archived WAL.
#[derive(Debug, Clone)]
pub struct RecoverySettings {
    pub restore_command: String,
    /// `recovery_target_time` etc. and their values; empty to replay everything.
    pub target: Vec<(&'static str, String)>,
}

fn conf_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

/// Writes `recovery.signal` (removing a `standby.signal` the backup carried) and
/// appends the settings to `postgresql.auto.conf`.
///
/// Errors: `Io` when the files cannot be written.
pub fn write_recovery_config(pgdata: &Path, s: &RecoverySettings) -> Result<()> {
    let conf = pgdata.join("postgresql.auto.conf");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&conf)
        .map_err(|e| Error::io_path("open", &conf, e))?;
    let mut text = format!(
        "\n# Added by pgvault restore at {}\nrestore_command = {}\n",
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        conf_quote(&s.restore_command)
    );
    for (k, v) in &s.target {
        text.push_str(&format!("{k} = {}\n", conf_quote(v)));
    }
    if !s.target.is_empty() {
        text.push_str("recovery_target_action = 'promote'\n");
    }
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io_path("write", &conf, e))?;
    let signal = pgdata.join("recovery.signal");
    std::fs::write(&signal, b"").map_err(|e| Error::io_path("write", &signal, e))?;
    // A base backup taken from a standby carries its standby.signal (pg_basebackup
    // copies it), which would win over recovery.signal: the restored server would
    // wait for the old primary forever instead of recovering to the target.
    let standby = pgdata.join("standby.signal");
    match std::fs::remove_file(&standby) {
        Ok(()) => tracing::info!(
            "Removed {}: the base backup was taken from a standby",
            standby.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io_path("remove", &standby, e)),
    }
    Ok(())
}

/// Quotes a word for the shell that PostgreSQL runs `restore_command` with.
pub fn shell_quote(s: &str) -> String {
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-=:,+@".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}
