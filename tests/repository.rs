//! End-to-end tests of the repository on the local backend against real PostgreSQL 15:
//! deduplication, byte-exact reads, bad input, concurrency and crashes.

mod common;

use std::io::Write;
use std::process::Stdio;

use common::fixtures::mask_timestamp;
use common::pg::PgCluster;
use common::vault::{Vault, SMALL_CHUNKS};

/// A vault whose pgvault runs pg_dump against `pg`.
fn vault_for(pg: &PgCluster) -> Vault {
    Vault::for_pg(pg, &[])
}

#[test]
fn backups_deduplicate_and_cat_returns_the_dump_byte_for_byte() {
    let pg = PgCluster::start();
    pg.create_footdash("footdash", 6);
    // Small chunks, so that a day's scattered updates leave some chunks untouched.
    let v = Vault::for_pg(&pg, SMALL_CHUNKS);
    let tmp = tempfile::tempdir().unwrap();

    // Day 0 through stdin: cat must give back exactly the file.
    let day0 = tmp.path().join("day0.dump");
    pg.pg_dump_file("footdash", &day0);
    let first = v.backup_file("footdash", &day0);
    let day0_bytes = std::fs::read(&day0).unwrap();
    assert_eq!(
        first["bytes_read"].as_u64().unwrap(),
        day0_bytes.len() as u64
    );
    assert!(first["chunks_new"].as_u64().unwrap() > 5, "{first}");
    assert_eq!(v.cat(first["snapshot_id"].as_str().unwrap()), day0_bytes);

    // The same data again, with pg_dump run by pgvault: only the chunk holding the
    // header (with its creation time) is new.
    let again = v.run(&["backup", "--db", "footdash", "--json"]).ok().json();
    let all0 = first["bytes_stored_new"].as_u64().unwrap();
    assert!(again["chunks_new"].as_u64().unwrap() <= 1, "{again}");
    assert!(
        again["bytes_stored_new"].as_u64().unwrap() * 20 < all0,
        "{again}"
    );

    // A day of traffic: scattered updates touch most chunks of the busy tables, so
    // exact deduplication saves only the untouched ones (delta chunks do better).
    pg.footdash_day("footdash", 1);
    let second = v.run(&["backup", "--db", "footdash", "--json"]).ok().json();
    assert!(second["chunks_reused"].as_u64().unwrap() > 0, "{second}");
    assert!(
        second["bytes_stored_new"].as_u64().unwrap() < all0,
        "{second}"
    );

    // The stored day-1 dump is the dump pg_dump -f writes of the same data, timestamp aside.
    let day1 = tmp.path().join("day1.dump");
    pg.pg_dump_file("footdash", &day1);
    let cat1 = v.cat(second["snapshot_id"].as_str().unwrap());
    assert_eq!(
        mask_timestamp(cat1.clone()),
        mask_timestamp(std::fs::read(&day1).unwrap())
    );

    // And it restores to the same rows.
    let restored = tmp.path().join("restored.dump");
    std::fs::write(&restored, &cat1).unwrap();
    pg.create_db("restored");
    let st = pg
        .command("pg_restore")
        .args(["-j", "2", "-d", "restored"])
        .arg(&restored)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(pg.row_counts("restored"), pg.row_counts("footdash"));

    let snaps = v.snapshots();
    assert_eq!(snaps.len(), 3);
    for s in &snaps {
        assert_eq!(s["db"], "footdash");
        assert_eq!(s["kind"], "dump");
        assert!(s["size"].as_u64().unwrap() > 1_000_000);
        assert!(s["id"].as_str().unwrap().len() == 64 && s["time"].is_string());
    }
    let table = v.run(&["snapshots"]).ok().out();
    assert!(
        table.contains("NEW STORED")
            && table.contains(&snaps[0]["short_id"].as_str().unwrap().to_string())
    );
}

#[test]
fn a_piped_dump_is_stored_with_its_data_offsets_filled_in() {
    let pg = PgCluster::start();
    pg.create_footdash("footdash", 2);
    let v = vault_for(&pg);
    let tmp = tempfile::tempdir().unwrap();
    let piped = pg
        .command("pg_dump")
        .args(["-Fc", "-Z0", "footdash"])
        .output()
        .unwrap();
    assert!(piped.status.success());
    let file = tmp.path().join("file.dump");
    pg.pg_dump_file("footdash", &file);
    let file_bytes = std::fs::read(&file).unwrap();
    assert_ne!(
        mask_timestamp(piped.stdout.clone()),
        mask_timestamp(file_bytes.clone()),
        "a piped dump should lack the offsets a file dump has"
    );

    let b = v
        .run_stdin(
            &["backup", "--stdin", "--db", "footdash", "--json"],
            &piped.stdout,
        )
        .ok()
        .json();
    assert_eq!(b["dump_offsets_filled"], true);
    let stored = v.cat(b["snapshot_id"].as_str().unwrap());
    assert_eq!(mask_timestamp(stored), mask_timestamp(file_bytes));
}

#[test]
fn an_imported_dump_keeps_its_own_time() {
    let pg = PgCluster::start();
    pg.create_footdash("footdash", 1);
    let v = vault_for(&pg);
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("old.dump");
    pg.pg_dump_file("footdash", &f);
    let data = std::fs::read(&f).unwrap();
    v.run_stdin(
        &[
            "backup",
            "--stdin",
            "--db",
            "footdash",
            "--time",
            "2026-11-01T02:00:00Z",
        ],
        &data,
    )
    .ok();
    let snaps = v.snapshots();
    assert_eq!(snaps[0]["time"], "2026-11-01T02:00:00Z");
    let bad = v
        .run_stdin(
            &[
                "backup",
                "--stdin",
                "--db",
                "footdash",
                "--time",
                "yesterday",
            ],
            &data,
        )
        .fails();
    assert!(
        bad.contains("is not a time") && bad.contains("e.g."),
        "{bad}"
    );
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let pg = PgCluster::start();
    pg.create_footdash("footdash", 1);
    let v = vault_for(&pg);
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("d.dump");
    pg.pg_dump_file("footdash", &f);
    let dump = std::fs::read(&f).unwrap();
    let snap = v.backup_file("footdash", &f);
    let id = snap["snapshot_id"].as_str().unwrap().to_string();
    // Every attempt is recorded under attempts/ (the failures too); nothing else may appear.
    let attempts = v.repo_path().join("attempts");
    let stored = || -> Vec<_> {
        v.objects("")
            .into_iter()
            .filter(|p| !p.starts_with(&attempts))
            .collect()
    };
    let before = stored();

    // Wrong passphrase: its own exit code, nothing read or written.
    let mut wrong = vault_for(&pg);
    wrong.repo = v.repo.clone();
    wrong.password = "not the passphrase".into();
    let r = wrong.run(&["snapshots"]);
    assert_eq!(r.code, 3);
    assert!(r.stderr.contains("Wrong passphrase"), "{}", r.stderr);

    // Empty, non-dump and truncated stdin.
    let e = v
        .run_stdin(&["backup", "--stdin", "--db", "footdash"], b"")
        .fails();
    assert!(e.contains("empty"), "{e}");
    let e = v
        .run_stdin(&["backup", "--stdin", "--db", "footdash"], b"SELECT 1;\n")
        .fails();
    assert!(e.contains("custom-format"), "{e}");
    let random: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
        .collect();
    v.run_stdin(&["backup", "--stdin", "--db", "footdash"], &random)
        .fails();
    // A failing pg_dump: its error, no snapshot.
    let e = v.run(&["backup", "--db", "no_such_database"]).fails();
    assert!(
        e.contains("pg_dump") && e.contains("no_such_database"),
        "{e}"
    );
    assert_eq!(
        stored(),
        before,
        "refused input must not leave objects behind"
    );

    // A truncated dump is noticed only at its end, after chunks were stored: those
    // stay as unreferenced chunks for prune, but no snapshot may appear.
    for cut in [10, 100, dump.len() / 3, dump.len() - 1] {
        let e = v
            .run_stdin(&["backup", "--stdin", "--db", "footdash"], &dump[..cut])
            .fails();
        assert!(
            e.contains("truncated") || e.contains("Truncated"),
            "cut at {cut}: {e}"
        );
    }
    assert_eq!(v.snapshots().len(), 1);

    // Unknown, malformed and ambiguous snapshot ids.
    let e = v.run(&["cat", "ffffffffffff"]).fails();
    assert!(e.contains("not found"), "{e}");
    let e = v.run(&["cat", "xyz"]).fails();
    assert!(e.contains("not a hex id"), "{e}");
    // A second snapshot, then a prefix both share (the empty-ish common prefix "").
    let other = v.backup_file("footdash", &f);
    let other_id = other["snapshot_id"].as_str().unwrap().to_string();
    let common: String = id
        .chars()
        .zip(other_id.chars())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a)
        .collect();
    if !common.is_empty() {
        let e = v.run(&["cat", &common]).fails();
        assert!(e.contains("ambiguous"), "{e}");
    }
    assert_eq!(v.snapshots().len(), 2);
    assert_eq!(v.cat(&id), dump);
}

#[test]
fn missing_foreign_and_occupied_locations_are_refused() {
    let v = Vault::local();
    let e = v.run(&["snapshots"]).fails();
    assert!(e.contains("init"), "{e}");

    // A directory that is not a repository.
    std::fs::create_dir_all(v.repo_path()).unwrap();
    std::fs::write(v.repo_path().join("notes.txt"), "hello").unwrap();
    let e = v.run(&["snapshots"]).fails();
    assert!(e.contains("Repository config not found in"), "{e}");
    std::fs::write(v.repo_path().join("config"), "{\"some\": \"json\"}").unwrap();
    let e = v.run(&["snapshots"]).fails();
    assert!(e.contains("not a pgvault repository"), "{e}");

    // init refuses a non-empty directory and an existing repository.
    let e = v.run(&["init", "--kdf-memory-kib", "1024"]).fails();
    assert!(e.contains("not empty"), "{e}");
    let ok = Vault::init_local();
    let e = ok.run(&["init", "--kdf-memory-kib", "1024"]).fails();
    assert!(e.contains("already holds a pgvault repository"), "{e}");

    // No passphrase at all, without a terminal.
    let mut cmd = ok.command(&["snapshots"]);
    cmd.env_remove("PGVAULT_PASSWORD");
    let out = cmd.output().unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("No passphrase"));

    // A passphrase file works and an empty one is refused.
    let pf = ok.dir.path().join("pass");
    std::fs::write(&pf, format!("{}\n", ok.password)).unwrap();
    common::succeeded(
        ok.command(&["snapshots"])
            .env_remove("PGVAULT_PASSWORD")
            .env("PGVAULT_PASSWORD_FILE", &pf)
            .output()
            .unwrap(),
        "snapshots with PGVAULT_PASSWORD_FILE",
    );
    std::fs::write(&pf, "").unwrap();
    let out = ok
        .command(&["snapshots"])
        .env("PGVAULT_PASSWORD_FILE", &pf)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty"));
}

#[test]
fn the_index_is_only_a_cache() {
    let pg = PgCluster::start();
    pg.create_footdash("footdash", 2);
    let v = vault_for(&pg);
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("d.dump");
    pg.pg_dump_file("footdash", &f);
    let dump = std::fs::read(&f).unwrap();
    let first = v.backup_file("footdash", &f);

    std::fs::remove_dir_all(&v.cache).unwrap();
    assert_eq!(v.snapshots().len(), 1);
    assert_eq!(v.cat(first["snapshot_id"].as_str().unwrap()), dump);
    // Without the cache a second backup still stores nothing twice.
    std::fs::remove_dir_all(&v.cache).unwrap();
    let again = v.backup_file("footdash", &f);
    assert_eq!(again["bytes_stored_new"], 0, "{again}");

    std::fs::remove_dir_all(&v.cache).unwrap();
    let out = v.run(&["index", "rebuild"]).ok().out();
    let chunks = v.objects("chunks").len();
    assert!(
        out.contains(&format!("{chunks} chunks, 2 snapshots")),
        "{out}"
    );

    // A corrupt cache is discarded, not fatal.
    let index_dirs: Vec<_> = std::fs::read_dir(&v.cache).unwrap().flatten().collect();
    for d in index_dirs {
        let idx = d.path().join("index");
        for e in std::fs::read_dir(&idx).unwrap().flatten() {
            if e.path().is_file() {
                std::fs::write(e.path(), b"garbage").unwrap();
            }
        }
    }
    assert_eq!(v.snapshots().len(), 2);
}

#[test]
fn concurrent_backups_into_one_repository_both_succeed() {
    let pg = PgCluster::start();
    pg.create_footdash("footdash", 3);
    pg.create_footdash("other", 2);
    let v = vault_for(&pg);
    let children: Vec<_> = (0..3)
        .map(|i| {
            let db = if i == 1 { "other" } else { "footdash" };
            v.command(&["backup", "--db", db, "--json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        common::succeeded(c.wait_with_output().unwrap(), "a concurrent backup");
    }
    let snaps = v.snapshots();
    assert_eq!(snaps.len(), 3);
    for s in snaps {
        let db = s["db"].as_str().unwrap();
        let restored = v.cat(s["id"].as_str().unwrap());
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("x.dump");
        std::fs::write(&p, &restored).unwrap();
        let target = format!("r_{}", &s["short_id"].as_str().unwrap());
        pg.create_db(&target);
        let st = pg
            .command("pg_restore")
            .args(["-d", &target])
            .arg(&p)
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(pg.row_counts(&target), pg.row_counts(db));
    }
}

#[test]
fn kill_9_during_a_backup_leaves_a_consistent_repository() {
    let pg = PgCluster::start();
    pg.create_footdash("footdash", 8);
    let v = vault_for(&pg);
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("d.dump");
    pg.pg_dump_file("footdash", &f);
    let dump = std::fs::read(&f).unwrap();

    for fraction in [0.1, 0.5, 0.9, 1.0] {
        let mut child = v
            .command(&["backup", "--stdin", "--db", "footdash"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let upto = (dump.len() as f64 * fraction) as usize;
        let _ = stdin.write_all(&dump[..upto]);
        // Let it chew on what it has; at 1.0 stdin stays open, so it cannot commit.
        std::thread::sleep(std::time::Duration::from_millis(300));
        child.kill().unwrap();
        child.wait().unwrap();
        drop(stdin);
        assert!(
            v.snapshots().is_empty(),
            "killed at {fraction}: no snapshot may appear"
        );
    }
    let uploaded = v.objects("chunks").len();
    assert!(
        uploaded > 0,
        "the killed backups should have stored some chunks"
    );

    let b = v.backup_file("footdash", &f);
    assert!(
        b["chunks_reused"].as_u64().unwrap() > 0,
        "chunks from the killed runs are reused: {b}"
    );
    assert_eq!(v.cat(b["snapshot_id"].as_str().unwrap()), dump);
}

#[test]
fn an_index_another_user_owns_is_done_without() {
    // Only meaningful when the tests run as root and can act as another user.
    let Some(other) = PgCluster::server_user() else {
        return;
    };
    let pg = PgCluster::start();
    pg.create_footdash("footdash", 1);
    let mut v = vault_for(&pg);
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("d.dump");
    pg.pg_dump_file("footdash", &f);
    let id = v.backup_file("footdash", &f)["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(v.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // The repository is handed to the other user; the cache stays root's, and the
    // other user can neither read, write, lock nor replace the index.
    for p in [v.repo_path().to_path_buf()]
        .into_iter()
        .chain(common::walk_files(v.repo_path()))
        .chain(common::walk_dirs(v.repo_path()))
    {
        std::os::unix::fs::lchown(&p, Some(other.0), Some(other.1)).unwrap();
    }
    v.run_as = Some(other);
    assert_eq!(v.snapshots().len(), 1);
    assert_eq!(v.cat(&id), std::fs::read(&f).unwrap());
}
