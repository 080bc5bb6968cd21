//! This machine: its name (recorded in manifests, key files, locks and records),
//! whether a process on it still runs (for judging a lock left by a crash), and its
//! users and groups.

use std::path::Path;

use crate::error::{Error, Result};

/// The uid (and primary gid) of a user given by name or number.
///
/// Errors: `InvalidInput` naming the user when there is no such user.
pub fn user_ids(user: &str) -> Result<(u32, u32)> {
    let found = match user.parse::<u32>() {
        Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
        Err(_) => nix::unistd::User::from_name(user),
    };
    match found {
        Ok(Some(u)) => Ok((u.uid.as_raw(), u.gid.as_raw())),
        // A number with no passwd entry is still a valid owner.
        Ok(None) if user.parse::<u32>().is_ok() => {
            let uid: u32 = user.parse().expect("checked");
            Ok((uid, uid))
        }
        _ => Err(Error::InvalidInput(format!("No such user {user:?}"))),
    }
}

/// The gid of a group given by name or number.
///
/// Errors: `InvalidInput` naming the group when there is no such group.
pub fn group_id(group: &str) -> Result<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        _ => Err(Error::InvalidInput(format!("No such group {group:?}"))),
    }
}

/// This machine's name.
pub fn hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

/// What can be learnt about a process on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessProbe {
    /// It does not run (or is a zombie).
    Gone,
    /// It runs; its start time, when known.
    Running { start: Option<u64> },
    /// This system cannot tell (no /proc).
    Unknown,
}

/// What this system says about process `pid` (Linux /proc; `Unknown` elsewhere).
pub fn probe_process(pid: u32) -> ProcessProbe {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // Fields after the command name, which is in parentheses and may hold spaces.
            let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            let fields: Vec<&str> = rest.split_whitespace().collect();
            if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
                return ProcessProbe::Gone;
            }
            // starttime is field 22 of the line; the state (field 3) is fields[0].
            ProcessProbe::Running {
                start: fields.get(19).and_then(|s| s.parse().ok()),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::path::Path::new("/proc/self/stat").exists() {
                ProcessProbe::Gone
            } else {
                ProcessProbe::Unknown
            }
        }
        Err(_) => ProcessProbe::Unknown,
    }
}

/// Unescapes a path field of /proc/self/mountinfo (`\040` for a space and so on).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What is mounted at `path` (its file system type and source), if anything, as
/// /proc/self/mountinfo says.
pub fn mounted_at(path: &Path) -> Option<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.to_string_lossy();
    // The last mount listed at a path is the one on top.
    info.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let mount_point = unescape_mountinfo(fields.get(4)?);
        if mount_point != want {
            return None;
        }
        let sep = fields.iter().position(|f| *f == "-")?;
        Some((
            fields.get(sep + 1)?.to_string(),
            unescape_mountinfo(fields.get(sep + 2)?),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo(r"/mnt/with\040space"), "/mnt/with space");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/a\134b"), r"/a\b");
    }
}
