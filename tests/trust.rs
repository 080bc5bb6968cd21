//! The trust boundary: a repository whose objects were edited by someone with write
//! access to the store, a hostile or sloppy command line, and the files pgvault
//! leaves on this machine. Each must meet a clear line and a safe refusal, never a
//! panic, a wrong answer, or a file written where it should not be.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::fixtures::dumps;
use common::mount::Mount;
use common::vault::{Run, Vault};
use serde_json::Value;

fn edit_config(v: &Vault, f: impl FnOnce(&mut Value)) {
    let path = v.repo_path().join("config");
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    f(&mut cfg);
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
}

#[test]
fn an_edited_config_is_refused_at_open_with_one_line() {
    let v = Vault::init_local();
    let original = std::fs::read(v.repo_path().join("config")).unwrap();
    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "zstd level",
            Box::new(|c| c["zstd_level"] = 19.into()),
            "fails authentication",
        ),
        (
            "delta zstd level",
            Box::new(|c| c["delta_zstd_level"] = 19.into()),
            "fails authentication",
        ),
        (
            "delta flag",
            Box::new(|c| c["delta"] = false.into()),
            "fails authentication",
        ),
        (
            "chunk sizes of 1 and 3 bytes",
            Box::new(|c| {
                c["chunker"]["min_size_bytes"] = 1.into();
                c["chunker"]["avg_size_bytes"] = 3.into();
            }),
            "impossible chunk sizes",
        ),
        (
            "a repo id that walks out of the cache",
            Box::new(|c| c["repo_id"] = "../../../../tmp/pgvault-escape".into()),
            "is not 32 hex digits",
        ),
        (
            "no tag",
            Box::new(|c| {
                c.as_object_mut()
                    .unwrap()
                    .remove("tag")
                    .map(|_| ())
                    .unwrap()
            }),
            "fails authentication",
        ),
    ];
    for (what, edit, want) in cases {
        std::fs::write(v.repo_path().join("config"), &original).unwrap();
        edit_config(&v, |c| edit(c));
        let r = v.run(&["snapshots"]);
        assert_ne!(r.code, 0, "{what}: {r:?}");
        let line = r.one_line();
        assert!(line.contains(want), "{what}: {line}");
        assert!(!line.contains("panicked"), "{what}: {line}");
    }
    assert!(!Path::new("/tmp/pgvault-escape").exists());
    std::fs::write(v.repo_path().join("config"), &original).unwrap();
    v.run(&["snapshots"]).ok();
}

#[test]
fn a_bad_key_file_beside_a_good_one_locks_nobody_out() {
    let mut v = Vault::init_local();
    let keys = v.repo_path().join("keys");
    // Sorted before the good key: garbage, and costs that would take all memory.
    std::fs::write(keys.join("0000-garbage"), b"{not json").unwrap();
    let good = std::fs::read_dir(&keys)
        .unwrap()
        .flatten()
        .find(|e| !e.file_name().to_string_lossy().starts_with("0000"))
        .unwrap()
        .path();
    let mut hostile: Value = serde_json::from_slice(&std::fs::read(&good).unwrap()).unwrap();
    hostile["kdf_params"]["memory_kib"] = 4_000_000_000u32.into();
    std::fs::write(
        keys.join("0001-hostile"),
        serde_json::to_vec(&hostile).unwrap(),
    )
    .unwrap();
    let started = Instant::now();
    let r = v.run(&["snapshots"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert!(
        r.stderr.contains("0000-garbage") && r.stderr.contains("0001-hostile"),
        "{}",
        r.stderr
    );
    // The garbage is left out of the list; the hostile one shows, to be removed.
    let listed = v.run(&["key", "list", "--json"]).ok().json();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    v.run(&["key", "remove", "0001-hostile"]).ok();

    // Costs in range but dear (1 GiB, 16 passes), sorted first: with no key
    // remembered, the cheapest key is tried first and the dear one never is.
    let mut dear = hostile.clone();
    dear["kdf_params"]["memory_kib"] = (1u32 << 20).into();
    dear["kdf_params"]["iterations"] = 16.into();
    std::fs::write(keys.join("0002-dear"), serde_json::to_vec(&dear).unwrap()).unwrap();
    for f in common::walk_files(&v.cache) {
        if f.file_name().is_some_and(|n| n == "last-key") {
            std::fs::remove_file(f).unwrap();
        }
    }
    v.extra_env
        .push(("PGVAULT_LOG".into(), "pgvault=debug".into()));
    let r = v.run(&["snapshots"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("Trying key file"), "{}", r.stderr);
    assert!(!r.stderr.contains("0002-dear"), "{}", r.stderr);
}

#[test]
fn one_corrupt_manifest_does_not_stop_the_others_but_stops_prune() {
    let d = dumps();
    let v = Vault::init_local();
    let good = v.import_id("footdash", &d.tiny, Some("2026-11-01T02:00:00Z"));
    let bad = v.import_id("footdash", &d.other, Some("2026-11-02T02:00:00Z"));
    let path = v.repo_path().join("snapshots").join(&bad);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    // The index still holds the intact copy; drop it so the store decides.
    std::fs::remove_dir_all(&v.cache).unwrap();

    let r = v.run(&["snapshots", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let ids: Vec<String> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, vec![good.clone()]);
    assert!(
        r.stderr.contains(&bad),
        "the unreadable one is named: {}",
        r.stderr
    );
    assert!(v.cat(&good) == std::fs::read(&d.tiny).unwrap());
    let mnt = Mount::start(&v, &v.dir.path().join("mnt"), &[]);
    assert!(
        std::fs::read(mnt.join(&format!("snapshots/{good}/footdash.dump"))).unwrap()
            == std::fs::read(&d.tiny).unwrap()
    );
    drop(mnt);
    // Deciding what to delete from a partial view could free a live chunk: refused.
    let r = v.run(&["prune"]);
    assert_ne!(r.code, 0);
    assert!(
        r.one_line().contains("refusing to decide what to delete"),
        "{r:?}"
    );
    let r = v.run(&["forget", "--keep-last", "1"]);
    assert_ne!(r.code, 0);
}

#[test]
fn a_dead_or_missing_mount_is_no_answer_for_restore_command() {
    let d = dumps();
    let v = Vault::init_local();
    v.import_id("footdash", &d.tiny, None);
    let tmp = tempfile::tempdir().unwrap();
    let seg = tmp.path().join("000000010000000000000002");
    std::fs::write(&seg, vec![7u8; 1 << 20]).unwrap();
    v.run(&["wal-push", seg.to_str().unwrap()]).ok();
    let mp = v.dir.path().join("mnt");
    let mut mnt = Mount::start(&v, &mp, &[]);
    let dest = tmp.path().join("restored");
    let fetch = |name: &str| {
        let mut c = v.command(&[
            "--io-timeout",
            "3s",
            "wal-fetch",
            "--from-mount",
            mp.to_str().unwrap(),
            name,
            dest.to_str().unwrap(),
        ]);
        // It needs neither the repository nor the passphrase.
        c.env_remove("PGVAULT_REPO").env_remove("PGVAULT_PASSWORD");
        let o = c.output().unwrap();
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: o.stdout,
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    };
    // Archived: copied, byte for byte, readable by the server only.
    let r = fetch("000000010000000000000002");
    assert_eq!(r.code, 0, "{r:?}");
    assert!(std::fs::read(&dest).unwrap() == std::fs::read(&seg).unwrap());
    assert_eq!(
        std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Archived a moment ago, after the mount last listed wal/: there, not ENOENT.
    let seg3 = tmp.path().join("000000010000000000000003");
    std::fs::write(&seg3, vec![9u8; 1 << 20]).unwrap();
    v.run(&["wal-push", seg3.to_str().unwrap()]).ok();
    assert_eq!(fetch("000000010000000000000003").code, 0);
    // Not archived, the mount alive: 1, quietly.
    let r = fetch("000000010000000000000009");
    assert_eq!((r.code, r.stderr.trim()), (1, ""), "{r:?}");

    // Archived, but a chunk of it is gone: the file opens and its read fails. That is
    // damage, never "not archived" (1 would end recovery at the segment before).
    let chunks_before = common::walk_files(&v.repo_path().join("chunks"));
    let seg4 = tmp.path().join("000000010000000000000004");
    let mut rng = common::fixtures::Rng::seeded(4);
    let noise: Vec<u8> = (0..(1 << 20) / 8)
        .flat_map(|_| rng.next().to_le_bytes())
        .collect();
    std::fs::write(&seg4, noise).unwrap();
    v.run(&["wal-push", seg4.to_str().unwrap()]).ok();
    let added: Vec<_> = common::walk_files(&v.repo_path().join("chunks"))
        .into_iter()
        .filter(|p| !chunks_before.contains(p))
        .collect();
    assert!(!added.is_empty());
    std::fs::remove_file(&added[added.len() / 2]).unwrap();
    let r = fetch("000000010000000000000004");
    assert!(r.code > 125, "{r:?}");
    assert!(r.one_line().contains("reading"), "{r:?}");

    // The mount's process hangs (stopped, not dead): no answer within the deadline is
    // no answer, not a wait for ever.
    assert!(common::signal(mnt.pid(), "STOP"));
    let started = Instant::now();
    let r = fetch("000000010000000000000002");
    let waited = started.elapsed();
    assert!(common::signal(mnt.pid(), "CONT"));
    assert!(r.code > 125, "{r:?}");
    assert!(r.one_line().contains("gave no answer"), "{r:?}");
    assert!(waited < Duration::from_secs(60), "waited {waited:?}");

    // The mount's process dies: cp would say 1 here, which PostgreSQL takes for the
    // end of the archive; wal-fetch says it cannot tell.
    common::signal(mnt.pid(), "KILL");
    mnt.wait_exit(Duration::from_secs(10));
    let cp = std::process::Command::new("cp")
        .arg(mp.join("wal/000000010000000000000009"))
        .arg(&dest)
        .output()
        .unwrap();
    assert_eq!(
        cp.status.code(),
        Some(1),
        "this is why cp is no restore_command"
    );
    let r = fetch("000000010000000000000009");
    assert!(r.code > 125, "{r:?}");
    assert!(r.one_line().contains("is dead"), "{r:?}");
    drop(mnt);
    // Nothing mounted at all.
    let r = fetch("000000010000000000000002");
    assert!(r.code > 125, "{r:?}");
    assert!(r.one_line().contains("nothing is mounted"), "{r:?}");
}

#[test]
fn a_connection_string_password_lands_nowhere() {
    let d = dumps();
    let v = Vault::init_local();
    let secret = "s3cr3tPW";
    let db = format!("postgresql://alice:{secret}@db.example/footdash");
    let r = v.run_stdin(
        &["backup", "--stdin", "--db", &db, "--json"],
        &std::fs::read(&d.tiny).unwrap(),
    );
    let b = r.ok().json();
    assert_eq!(b["db"], "footdash");
    // A failing run records its attempt (spooled: the repository is moved away).
    let moved = v.dir.path().join("moved");
    std::fs::rename(v.repo_path(), &moved).unwrap();
    v.run_stdin(&["backup", "--stdin", "--db", &db], b"not a dump")
        .fails();
    std::fs::rename(&moved, v.repo_path()).unwrap();
    let mut shown = String::new();
    for args in [
        &["snapshots", "--json"][..],
        &["status", "--json"],
        &["metrics"],
        &["du", "--json"],
    ] {
        shown.push_str(&v.run(args).ok().out());
    }
    assert!(shown.contains("footdash"));
    assert!(!shown.contains(secret), "{shown}");
    let mnt = Mount::start(&v, &v.dir.path().join("mnt"), &[]);
    let listing = format!("{:?}", common::walk_names(&mnt.join("by-db")));
    assert!(!listing.contains(secret), "{listing}");
    drop(mnt);
    for f in common::walk_files(v.dir.path()) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{} holds the password",
            f.display()
        );
    }
}

#[test]
fn local_files_are_private_and_a_missing_home_is_refused() {
    let d = dumps();
    let v = Vault::init_local();
    v.import_id("footdash", &d.tiny, None);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&v.cache), 0o700);
    for dir in std::fs::read_dir(&v.cache).unwrap().flatten() {
        if dir.path().is_dir() {
            assert_eq!(mode(&dir.path()), 0o700, "{}", dir.path().display());
        }
    }
    for f in common::walk_files(&v.repo_path().join("keys")) {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    assert_eq!(mode(&v.repo_path().join("chunks")), 0o700);

    let r = {
        let mut c = v.command(&["snapshots"]);
        c.env_remove("HOME")
            .env_remove("XDG_CACHE_HOME")
            .env_remove("PGVAULT_CACHE_DIR");
        let o = c.output().unwrap();
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: o.stdout,
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    };
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.one_line().contains("No cache directory"), "{r:?}");
}

#[test]
fn sloppy_command_lines_get_one_line_and_exit_2_never_a_panic() {
    let v = Vault::init_local();
    let cases: &[&[&str]] = &[
        &["--repo", "s3:/bucket", "snapshots"],
        &["--repo", "S3://bucket", "snapshots"],
        &["backup", "--db", "x", "--lock-wait", "99999999999d"],
        &["prune", "--grace", "1.5h"],
        &["mount", "/tmp", "--cache-size", "5XB"],
        &["--io-timeout", "0s", "snapshots"],
        &[
            "restore",
            "--pgdata",
            "/tmp/nowhere",
            "--target-time",
            "2026-11-29 20:38:42",
        ],
        &["drill", "--db", "x", "--timeout", "99999999999"],
        &["drill", "--db", "x", "--jobs", "0"],
        &["backup", "--db", "x", "--size-change-threshold", "NaN"],
        &["init", "--kdf-memory-kib", "4294967295"],
        &["mount", "/tmp", "--uid", "no-such-user-here"],
        &["backup", "--db", "host=db password=x"],
        &["check", "--read-data-subset", "0/0"],
    ];
    for args in cases {
        let r = v.run(args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(!r.stderr.contains("panicked"), "{args:?}: {r:?}");
        let first = r.stderr.lines().next().unwrap_or("");
        assert!(!first.is_empty(), "{args:?}");
    }
}

/// As restore_command, any exit from 1 to 125 is "not archived" and PostgreSQL
/// promotes: a mistyped option or an unset variable must stop recovery instead.
#[test]
fn a_sloppy_restore_command_stops_recovery_rather_than_ending_it() {
    let v = Vault::init_local();
    let seg = "000000010000000000000001";
    let cases: &[&[&str]] = &[
        &["wal-fetch", seg, "/tmp/x", "--prefetch", "1000000"],
        &["wal-fetch", seg, "/tmp/x", "--no-such-option"],
        &["wal-fetch", seg],
        &["--io-timeout", "0s", "wal-fetch", seg, "/tmp/x"],
        &["wal-fetch", "not-a-wal-name", "/tmp/x"],
    ];
    for args in cases {
        let r = v.run(args);
        assert!(r.code > 125, "{args:?}: {r:?}");
        assert!(!r.stderr.trim().is_empty(), "{args:?}: {r:?}");
    }
    // Help is no failure.
    assert_eq!(v.run(&["wal-fetch", "--help"]).code, 0);
}

/// Root running a job on another user's repository hands what it creates to that
/// user; a link that user planted inside the repository must not carry root's writes
/// (and the chown after them) to a place of the link's choosing.
#[test]
fn root_does_not_follow_a_link_planted_in_another_users_repository() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let d = dumps();
    let v = Vault::init_local();
    v.import_id("footdash", &d.tiny, Some("2026-11-01T02:00:00Z"));
    let repo = v.repo_path();
    let status = std::process::Command::new("chown")
        .args(["-R", "65534:65534", repo.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::remove_dir_all(repo.join("locks")).ok();
    std::os::unix::fs::symlink(elsewhere.path(), repo.join("locks")).unwrap();

    let r = v.import("footdash", &d.other, Some("2026-11-02T02:00:00Z"));
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.one_line().contains("symbolic link"), "{r:?}");
    assert_eq!(
        std::fs::read_dir(elsewhere.path()).unwrap().count(),
        0,
        "root wrote through the link"
    );
    // Without the link, root's job works and what it creates belongs to the owner.
    std::fs::remove_file(repo.join("locks")).unwrap();
    v.import_id("footdash", &d.other, Some("2026-11-02T02:00:00Z"));
    use std::os::unix::fs::MetadataExt;
    for f in common::walk_files(&repo.join("snapshots")) {
        assert_eq!(
            std::fs::metadata(&f).unwrap().uid(),
            65534,
            "{}",
            f.display()
        );
    }
}
