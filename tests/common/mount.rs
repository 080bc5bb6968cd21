//! Real FUSE mounts of a test vault, always unmounted again, even when a test fails.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::vault::Vault;

/// How long a mount may take to appear.
const MOUNT_PATIENCE: Duration = Duration::from_secs(30);

/// Whether something is mounted exactly at `path` (per /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let want = path.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// Runs `fusermount3` with `args` and the mountpoint, ignoring the outcome. Without
/// fusermount3 (fuse3 not installed yet: the tests run by hand before the README's
/// test command installed it) root detaches the mount with `umount -l`, so that no
/// dead mount outlives the test.
fn fusermount(args: &[&str], path: &Path) {
    let ran = std::process::Command::new("fusermount3")
        .args(args)
        .arg(path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if ran.is_err() {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A running `pgvault mount`. Dropping it unmounts (fusermount3 -u, then -uz) and
/// kills the process.
pub struct Mount {
    pub path: PathBuf,
    pub child: Option<Child>,
    log: PathBuf,
}

impl Mount {
    /// Mounts `v` on `path` (created if missing) with extra `mount` arguments and waits
    /// until the mount is up. Panics with pgvault's output if it does not come up.
    pub fn start(v: &Vault, path: &Path, extra: &[&str]) -> Mount {
        std::fs::create_dir_all(path).unwrap();
        let path = path.canonicalize().unwrap();
        let log = path.with_extension("log");
        let mut args = vec!["mount".to_string(), path.display().to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = v
            .command(&args)
            .env("PGVAULT_LOG", "pgvault=info")
            .stdout(File::create(path.with_extension("out")).unwrap())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut m = Mount {
            path,
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + MOUNT_PATIENCE;
        while !is_mounted(&m.path) {
            if let Some(status) = m.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "pgvault mount exited with {status} before mounting:\n{}",
                    m.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "pgvault mount did not come up in {MOUNT_PATIENCE:?}:\n{}",
                m.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    /// Takes charge of a mount that something else (the mount helper) started: it is
    /// unmounted on drop like the others.
    pub fn adopt(path: &Path, log: PathBuf) -> Mount {
        Mount {
            path: path.canonicalize().unwrap(),
            child: None,
            log,
        }
    }

    /// A path inside the mount.
    pub fn join(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    /// What pgvault logged on stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The pgvault process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Waits for the pgvault process to exit by itself.
    pub fn wait_exit(&mut self, patience: Duration) -> ExitStatus {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(s) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "pgvault mount did not exit in {patience:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // Nothing here may panic: this also runs while a failed test unwinds.
        if is_mounted(&self.path) {
            fusermount(&["-u", "--"], &self.path);
        }
        if is_mounted(&self.path) {
            fusermount(&["-u", "-z", "--"], &self.path);
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // A mount left stale by a killed process also shows in mountinfo.
        if is_mounted(&self.path) {
            fusermount(&["-u", "-z", "--"], &self.path);
        }
    }
}
