//! Deadlines against a frozen store: the real S3 server stopped with SIGSTOP (the
//! kernel accepts connections and nothing answers them, as in a network partition)
//! and resumed with SIGCONT, and a local repository on a FUSE file system whose
//! daemon is stopped. Every command and mounted read must end within the configured
//! deadline, with a clear line and the right exit code, and work again once the store
//! answers.

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::fixtures::dumps;
use common::mount::Mount;
use common::s3::S3Server;
use common::vault::{Run, Vault, MEDIUM_CHUNKS};

/// The `--io-timeout` of these tests.
const IO_TIMEOUT_SECS: u64 = 2;

/// The longest any one call may take at that setting (3.5 T), plus room for process
/// start-up, the key derivation and a loaded machine.
fn bound() -> Duration {
    Duration::from_millis(IO_TIMEOUT_SECS * 3500) + Duration::from_secs(8)
}

fn vault_on(server: &S3Server, bucket: &str) -> Vault {
    let mut v = Vault::s3(server, bucket, "repo");
    v.extra_env
        .push(("PGVAULT_IO_TIMEOUT".into(), format!("{IO_TIMEOUT_SECS}s")));
    v.init_with(MEDIUM_CHUNKS);
    v
}

/// A WAL file by name: wal-push only cares for the name; the content differs per seed.
fn wal_file(dir: &Path, name: &str, seed: u8) -> std::path::PathBuf {
    let p = dir.join(name);
    let data: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i as u8).wrapping_mul(seed) ^ (i >> 9) as u8)
        .collect();
    std::fs::write(&p, data).unwrap();
    p
}

fn timed(f: impl FnOnce() -> Run) -> (Run, Duration) {
    let started = Instant::now();
    let r = f();
    eprintln!("took {:?}", started.elapsed());
    (r, started.elapsed())
}

#[test]
fn wal_fetch_and_wal_push_give_up_in_time_and_archiving_shows_as_failing() {
    let server = S3Server::start();
    let v = vault_on(&server, &server.new_bucket("walfrozen"));
    let tmp = tempfile::tempdir().unwrap();
    let seg1 = wal_file(tmp.path(), "000000010000000000000001", 3);
    let seg2 = wal_file(tmp.path(), "000000010000000000000002", 5);
    v.run(&["wal-push", seg1.to_str().unwrap()]).ok();
    let dest = tmp.path().join("fetched");

    server.freeze();
    let (fetch, took) = timed(|| {
        v.run(&[
            "wal-fetch",
            "000000010000000000000001",
            dest.to_str().unwrap(),
        ])
    });
    assert!(took < bound(), "wal-fetch took {took:?}");
    assert!(fetch.code > 125, "wal-fetch must stop recovery: {fetch:?}");
    let line = fetch.one_line();
    assert!(line.contains(&server.endpoint()), "{line}");
    assert!(!dest.exists(), "nothing may be handed to PostgreSQL");

    let (push, took) = timed(|| v.run(&["wal-push", seg2.to_str().unwrap()]));
    assert!(took < bound(), "wal-push took {took:?}");
    assert_ne!(push.code, 0);
    let line = push.one_line();
    assert!(line.contains(&server.endpoint()), "{line}");
    server.thaw();

    // The failure was kept here and reaches the repository with the next command.
    let st = v.run(&["status", "--json"]).ok().json();
    let a = &st["wal_archiving"];
    assert_eq!(a["failing"], true, "{a}");
    assert_eq!(a["last_failure"]["name"], "000000010000000000000002", "{a}");
    let cause = a["last_failure"]["error"].as_str().unwrap();
    assert!(cause.contains(&server.endpoint()), "{cause}");
    let metrics = v.run(&["metrics"]).ok().out();
    assert!(
        metrics.contains("\npgvault_wal_push_failing 1\n"),
        "{metrics}"
    );

    // Once the store answers, both work again, and archiving is no longer failing.
    v.run(&["wal-push", seg2.to_str().unwrap()]).ok();
    v.run(&[
        "wal-fetch",
        "000000010000000000000001",
        dest.to_str().unwrap(),
    ])
    .ok();
    assert!(std::fs::read(&dest).unwrap() == std::fs::read(&seg1).unwrap());
    let st = v.run(&["status", "--json"]).ok().json();
    assert_eq!(st["wal_archiving"]["failing"], false, "{st}");
}

#[test]
fn a_backup_into_a_store_that_freezes_fails_in_time_and_leaves_no_snapshot() {
    let d = dumps();
    let server = S3Server::start();
    let v = vault_on(&server, &server.new_bucket("backupfrozen"));
    v.import_id("footdash", &d.other, None);
    let dump = std::fs::read(&d.footdash).unwrap();

    let mut child = v.spawn_piped(&["backup", "--stdin", "--db", "footdash"]);
    let mut stdin = child.stdin.take().unwrap();
    use std::io::Write;
    stdin.write_all(&dump[..dump.len() / 2]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    server.freeze();
    let frozen = Instant::now();
    // The rest goes into the pipe while uploads hang; pgvault stops reading when it
    // gives up, so the writer may find the pipe closed.
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&dump[dump.len() / 2..]);
    });
    let out = child.wait_with_output().unwrap();
    let took = frozen.elapsed();
    eprintln!("the backup ended {took:?} after the freeze");
    let _ = feeder.join();
    server.thaw();
    let r = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(took < bound(), "the backup took {took:?} after the freeze");
    assert_ne!(r.code, 0, "{r:?}");
    let line = r.one_line();
    assert!(line.contains(&server.endpoint()), "{line}");

    // No snapshot; the attempt is recorded; no live lock is left behind.
    assert_eq!(v.snapshots().len(), 1);
    let st = v.run(&["status", "--json"]).ok().json();
    let row = st["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["db"] == "footdash")
        .unwrap()
        .clone();
    assert_eq!(row["last_attempt"]["ok"], false, "{row}");
    let locks = v.run(&["locks", "--json"]).ok().json();
    assert!(
        locks.as_array().unwrap().iter().all(|l| l["stale"] == true),
        "{locks}"
    );
    // And the next backup works.
    let id = v.import_id("footdash", &d.footdash, None);
    assert!(v.cat(&id) == std::fs::read(&d.footdash).unwrap());
}

#[test]
fn a_mounted_read_from_a_frozen_store_fails_with_eio_in_time_and_reads_again_after() {
    let d = dumps();
    let server = S3Server::start();
    let v = vault_on(&server, &server.new_bucket("mountfrozen"));
    let id = v.import_id("footdash", &d.footdash, None);
    let original = std::fs::read(&d.footdash).unwrap();
    let mnt = Mount::start(&v, &v.dir.path().join("mnt"), &["--cache-size", "8MiB"]);
    let file = File::open(mnt.join(&format!("snapshots/{id}/footdash.dump"))).unwrap();

    server.freeze();
    let started = Instant::now();
    let mut buf = vec![0u8; 1 << 20];
    let mut failed = None;
    let mut offset = 0u64;
    while offset < original.len() as u64 {
        match file.read_at(&mut buf, offset) {
            Ok(0) => break,
            Ok(n) => offset += n as u64,
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let took = started.elapsed();
    eprintln!("the read failed after {took:?} at offset {offset}: {failed:?}");
    server.thaw();
    let e = failed.expect("a read from a frozen store must fail");
    assert_eq!(e.raw_os_error(), Some(libc_eio()), "{e}");
    assert!(took < bound(), "the read took {took:?}");
    let log = mnt.log();
    assert!(
        log.contains(&format!("snapshot {id}")) && log.contains("chunk "),
        "the log must name the snapshot and chunk:\n{log}"
    );

    // The same mount serves the whole file, byte for byte, once the store answers.
    let deadline = Instant::now() + Duration::from_secs(30);
    let back = loop {
        match std::fs::read(mnt.join(&format!("snapshots/{id}/footdash.dump"))) {
            Ok(b) => break b,
            Err(e) if Instant::now() < deadline => {
                eprintln!("not yet: {e}");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("the mount did not recover: {e}\n{}", mnt.log()),
        }
    };
    assert!(back == original, "the file read back differs");
}

fn libc_eio() -> i32 {
    5
}

/// Resumes a stopped process when dropped, so a failing test leaves nothing frozen.
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        common::signal(self.0, "CONT");
    }
}

#[test]
fn a_local_repository_on_a_hung_fuse_mount_gives_up_in_time() {
    // A directory inside a FUSE mount whose daemon is stopped: every system call on
    // it blocks in the kernel, as on a hung NFS server.
    let d = dumps();
    let source = Vault::init_local();
    let id = source.import_id("footdash", &d.tiny, None);
    let mnt = Mount::start(&source, &source.dir.path().join("mnt"), &[]);
    let hung_dir = mnt.join(&format!("snapshots/{id}"));
    assert!(hung_dir.join("manifest.json").exists());
    let mut v = Vault::local();
    v.repo = hung_dir.display().to_string();
    v.extra_env
        .push(("PGVAULT_IO_TIMEOUT".into(), format!("{IO_TIMEOUT_SECS}s")));

    common::signal(mnt.pid(), "STOP");
    let resume = Resume(mnt.pid());
    let (r, took) = timed(|| v.run(&["snapshots"]));
    drop(resume);
    assert!(took < bound(), "snapshots took {took:?}");
    assert_ne!(r.code, 0);
    let line = r.one_line();
    assert!(
        line.contains(&hung_dir.display().to_string()) && line.contains("hung NFS or FUSE mount"),
        "{line}"
    );
}

#[test]
fn a_prune_into_a_store_that_freezes_while_deleting_loses_nothing() {
    let d = dumps();
    let server = S3Server::start();
    let bucket = server.new_bucket("prunefrozen");
    let mut v = Vault::s3(&server, &bucket, "repo");
    v.extra_env
        .push(("PGVAULT_IO_TIMEOUT".into(), format!("{IO_TIMEOUT_SECS}s")));
    // Tiny chunks: many deletes, so that the freeze lands among them.
    v.init_with(&[
        "--chunk-min",
        "256",
        "--chunk-avg",
        "1024",
        "--chunk-max",
        "4096",
    ]);
    v.import_id("footdash", &d.other, Some("2024-07-01T02:00:00Z"));
    for (i, f) in d.days[..2].iter().enumerate() {
        v.import_id(
            "footdash",
            f,
            Some(&format!("2024-08-0{}T02:00:00Z", i + 1)),
        );
    }
    let kept = v.import_id("footdash", &d.days[3], Some("2024-08-05T02:00:00Z"));
    v.run(&["forget", "--keep-last", "1", "--db", "footdash"])
        .ok();
    let plan = v.run(&["prune", "--dry-run", "--json"]).ok().json();
    let to_free = plan["chunks_deleted"].as_u64().unwrap();
    assert!(to_free > 500, "{plan}");

    let mut prune = v.spawn_piped(&["prune", "--json"]);
    // Deletes start once the prune marker is written.
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.keys(&bucket, "repo/prunes/").is_empty() {
        assert!(Instant::now() < deadline, "prune never started deleting");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    server.freeze();
    let frozen = Instant::now();
    let status = prune.wait().unwrap();
    let took = frozen.elapsed();
    server.thaw();
    eprintln!("prune ended {took:?} after the freeze: {status}");
    assert!(took < bound(), "prune took {took:?} after the freeze");
    assert!(!status.success(), "the freeze must stop the prune");

    // Nothing a surviving backup needs is gone, and the next prune finishes the job.
    assert!(v.cat(&kept) == std::fs::read(&d.days[3]).unwrap());
    v.run(&["check", "--read-data"]).ok();
    let done = v.run(&["prune", "--json"]).ok().json();
    assert_eq!(done["chunks_missing"], 0, "{done}");
    assert!(done["chunks_deleted"].as_u64().unwrap() < to_free, "{done}");
    assert_eq!(
        v.run(&["prune", "--dry-run", "--json"]).ok().json()["chunks_deleted"],
        0
    );
}
