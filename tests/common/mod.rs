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
