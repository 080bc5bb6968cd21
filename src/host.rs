//! This machine: its name (recorded in manifests, key files, locks and records), and
//! whether a process on it still runs (for judging a lock left by a crash).

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
