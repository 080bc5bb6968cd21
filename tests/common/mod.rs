//! Shared test bench: throwaway PostgreSQL clusters, S3 servers and a pgvault runner.
#![allow(dead_code)]

pub mod fixtures;
pub mod mount;
pub mod pg;
pub mod s3;
pub mod vault;

/// Panics, with what it printed, unless a program succeeded; returns its output.
pub fn succeeded(out: std::process::Output, what: &str) -> std::process::Output {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stderr ---\n{}\n--- stdout ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

/// Sends a signal to a process with kill(1) (tests stay free of unsafe code too);
/// returns whether it was delivered.
pub fn signal(pid: u32, sig: &str) -> bool {
    std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

/// Every entry below `dir`, recursively, with whether it is a directory (entries
/// whose type cannot be read are left out).
fn walk(dir: &std::path::Path) -> Vec<(std::path::PathBuf, bool)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(t) = e.file_type() else {
                continue;
            };
            if t.is_dir() {
                todo.push(e.path());
            }
            out.push((e.path(), t.is_dir()));
        }
    }
    out.sort();
    out
}

/// Every file below `dir`, recursively.
pub fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    walk(dir)
        .into_iter()
        .filter(|(_, d)| !d)
        .map(|(p, _)| p)
        .collect()
}

/// Every name below `dir` (files and directories), recursively.
pub fn walk_names(dir: &std::path::Path) -> Vec<String> {
    let mut out: Vec<String> = walk(dir)
        .into_iter()
        .filter_map(|(p, _)| Some(p.file_name()?.to_string_lossy().into_owned()))
        .collect();
    out.sort();
    out
}

/// Every directory below `dir`, recursively.
pub fn walk_dirs(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    walk(dir)
        .into_iter()
        .filter(|(_, d)| *d)
        .map(|(p, _)| p)
        .collect()
}
