//! End to end on real PostgreSQL 15: base backups read straight from the data
//! directory (`backup --base --pgdata`), with tablespaces, page checksum reports and
//! kill -9; restores that write files in parallel, relocate tablespaces and (with
//! `--delta`) bring an existing copy up to a backup; the mount's `base/` tree.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::mount::Mount;
use common::pg::PgCluster;
use common::vault::{archiving_cluster, switch_and_wait_archived, Vault};

fn tags(pg: &PgCluster) -> String {
    pg.psql(
        "footdash",
        "SELECT coalesce(string_agg(tag, ',' ORDER BY tag), '') FROM marks",
    )
}

/// A directory the server's user owns, inside `pg`'s temporary directory.
fn server_dir(pg: &PgCluster, name: &str) -> PathBuf {
    let d = pg.base_dir().join(name);
    std::fs::create_dir_all(&d).unwrap();
    if let Some((uid, gid)) = pg.run_as() {
        std::os::unix::fs::chown(&d, Some(uid), Some(gid)).unwrap();
    }
    d
}

/// FootDash with its tables spread over two tablespaces, and a marks table.
fn footdash_in_tablespaces(pg: &PgCluster) -> (PathBuf, PathBuf) {
    let (ts1, ts2) = (server_dir(pg, "ts_one"), server_dir(pg, "ts_two"));
    pg.psql(
        "postgres",
        &format!("CREATE TABLESPACE one LOCATION '{}'", ts1.display()),
    );
    pg.psql(
        "postgres",
        &format!("CREATE TABLESPACE two LOCATION '{}'", ts2.display()),
    );
    pg.create_footdash("footdash", 1);
    pg.psql("footdash", "ALTER TABLE matches SET TABLESPACE one");
    pg.psql(
        "footdash",
        "CREATE TABLE marks (tag text) TABLESPACE two; \
         CREATE UNLOGGED TABLE scratch AS SELECT g FROM generate_series(1, 1000) g",
    );
    (ts1, ts2)
}

fn backup_from_pgdata(v: &Vault, pg: &PgCluster, extra: &[&str]) -> serde_json::Value {
    let dir = pg.data_dir().to_str().unwrap().to_string();
    let mut args = vec!["backup", "--base", "--pgdata", &dir, "--json"];
    args.extend_from_slice(extra);
    v.run(&args).ok().json()
}

/// The backup_manifest inside a base backup's stored tar stream.
fn backup_manifest_of(v: &Vault, id: &str) -> Vec<u8> {
    v.file_in_stream(id, "backup_manifest")
        .unwrap_or_else(|| panic!("base backup {id} has no backup_manifest"))
}

fn pg_verifybackup(dir: &Path, manifest: &Path, extra: &[&str]) -> std::process::Output {
    std::process::Command::new(PgCluster::bin("pg_verifybackup"))
        .arg("--no-parse-wal")
        .arg("--manifest-path")
        .arg(manifest)
        .args(extra)
        .arg(dir)
        .output()
        .unwrap()
}

#[test]
fn a_cluster_with_two_tablespaces_is_backed_up_from_pgdata_and_restored_relocated_to_a_time() {
    tablespaces_backed_up_and_restored_relocated_to_a_time(|v, pg| {
        let b = backup_from_pgdata(v, pg, &["--jobs", "3"]);
        assert_eq!(b["bad_pages"], serde_json::json!([]), "{b}");
        b
    });
}

#[test]
fn a_cluster_with_two_tablespaces_is_backed_up_by_pg_basebackup_and_restored_relocated_to_a_time() {
    tablespaces_backed_up_and_restored_relocated_to_a_time(|v, pg| {
        // pg_basebackup writes one archive per tablespace into a private spool.
        let spool = server_dir(pg, "spool");
        // A spool left by a pgvault that was killed is removed; one whose owner
        // lives is not.
        let dead = spool.join("pgvault-basebackup-dead");
        let live = spool.join("pgvault-basebackup-live");
        for (d, pid) in [(&dead, "999999999"), (&live, "1")] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("owner"), pid).unwrap();
            if let Some((uid, gid)) = pg.run_as() {
                for p in [d.clone(), d.join("owner")] {
                    std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
                }
            }
        }
        v.extra_env
            .push(("TMPDIR".into(), spool.to_str().unwrap().into()));
        let b = v.run(&["backup", "--base", "--json"]).ok().json();
        v.extra_env.pop();
        let left: Vec<String> = std::fs::read_dir(&spool)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, vec!["pgvault-basebackup-live".to_string()]);
        // One stream, laid out as a --pgdata backup's: each tablespace a directory.
        let names = v.stream_names(b["snapshot_id"].as_str().unwrap());
        let in_spaces = names
            .iter()
            .filter(|n| n.starts_with("pg_tblspc/") && n.contains("/PG_15_"))
            .count();
        assert!(in_spaces > 4, "{names:?}");
        for n in [
            "tablespace_map",
            "backup_label",
            "backup_manifest",
            "PG_VERSION",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} is missing: {names:?}");
        }
        b
    });
}

/// Two tablespaces, a backup taken by `backup`, marks A and B, then a restore to a
/// time between them with both tablespaces relocated, checked with pg_verifybackup,
/// row counts and a delta restore into the relocated copy.
fn tablespaces_backed_up_and_restored_relocated_to_a_time(
    backup: impl Fn(&mut Vault, &PgCluster) -> serde_json::Value,
) {
    let (pg, mut v) = archiving_cluster();
    let (ts1, ts2) = footdash_in_tablespaces(&pg);
    let source_counts = pg.row_counts("footdash");

    let b = backup(&mut v, &pg);
    let id = b["snapshot_id"].as_str().unwrap().to_string();
    let sysid = pg.psql(
        "postgres",
        "SELECT system_identifier FROM pg_control_system()",
    );
    assert_eq!(b["base"]["system_identifier"].as_str().unwrap(), sysid);

    pg.psql("footdash", "INSERT INTO marks VALUES ('A')");
    let between = pg.psql(
        "postgres",
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    );
    std::thread::sleep(Duration::from_millis(50));
    pg.psql("footdash", "INSERT INTO marks VALUES ('B')");
    switch_and_wait_archived(&pg);

    // The restore goes elsewhere: the source cluster still uses both locations.
    let scratch = server_dir(&pg, "restored_spaces");
    let (new1, new2) = (scratch.join("one"), scratch.join("two"));
    let manifest = pg.base_dir().join("manifest_of_backup");
    std::fs::write(&manifest, backup_manifest_of(&v, &id)).unwrap();
    let populate = |dir: &Path| {
        let map1 = format!("{}={}", ts1.display(), new1.display());
        let map2 = format!("{}={}", ts2.display(), new2.display());
        v.run(&[
            "restore",
            "--pgdata",
            dir.to_str().unwrap(),
            "--target-time",
            &between,
            "--jobs",
            "3",
            "--tablespace-map",
            &map1,
            "--tablespace-map",
            &map2,
        ])
        .ok();
        // The files are the backup's, byte for byte, except tablespace_map, which
        // names the new places.
        let verified = pg_verifybackup(dir, &manifest, &["--ignore", "tablespace_map"]);
        assert!(
            verified.status.success(),
            "pg_verifybackup on the restored copy: {}",
            String::from_utf8_lossy(&verified.stderr)
        );
        for (oid_link, target) in std::fs::read_dir(dir.join("pg_tblspc")).unwrap().map(|e| {
            let p = e.unwrap().path();
            (p.clone(), std::fs::read_link(&p).unwrap())
        }) {
            assert!(
                target == new1 || target == new2,
                "{} points to {}",
                oid_link.display(),
                target.display()
            );
        }
    };
    let restored = PgCluster::start_restored(&populate, &["archive_mode = off"]);
    restored.wait_until_promoted();
    assert_eq!(tags(&restored), "A");
    // marks has changed since, and the unlogged table comes back empty.
    let mut restored_counts = restored.row_counts("footdash");
    let mut source = source_counts.clone();
    for t in ["marks", "scratch"] {
        restored_counts.remove(t);
        source.remove(t);
    }
    assert_eq!(restored_counts, source);
    // The unlogged table comes back empty, from its init fork.
    assert_eq!(
        restored.psql("footdash", "SELECT count(*) FROM scratch"),
        "0"
    );
    for d in [&new1, &new2] {
        let names = common::walk_names(d);
        assert!(
            names.iter().any(|n| n.starts_with("PG_15_")),
            "{} holds {names:?}",
            d.display()
        );
    }
    // The original locations were not touched by the restore.
    assert_eq!(pg.psql("footdash", "SELECT count(*) FROM marks"), "2");

    // A delta restore into the relocated copy cleans inside PostgreSQL's own
    // directory of a tablespace location, and leaves the rest of the location be.
    restored.stop_fast();
    let version_dir = std::fs::read_dir(&new1)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("PG_15_")
        })
        .unwrap();
    std::fs::write(version_dir.join("stray"), b"x").unwrap();
    std::fs::write(new1.join("not_postgres_s"), b"kept").unwrap();
    let map1 = format!("{}={}", ts1.display(), new1.display());
    let map2 = format!("{}={}", ts2.display(), new2.display());
    let out = v
        .run(&[
            "restore",
            "--pgdata",
            restored.data_dir().to_str().unwrap(),
            "--target-time",
            &between,
            "--delta",
            "--tablespace-map",
            &map1,
            "--tablespace-map",
            &map2,
        ])
        .ok()
        .out();
    assert!(out.contains("Delta:"), "{out}");
    assert!(!version_dir.join("stray").exists());
    assert_eq!(std::fs::read(new1.join("not_postgres_s")).unwrap(), b"kept");
}

#[test]
fn the_mount_shows_a_base_backup_as_a_tree_that_pg_verifybackup_accepts() {
    let (pg, mut v) = archiving_cluster();
    footdash_in_tablespaces(&pg);
    let b = backup_from_pgdata(&v, &pg, &[]);
    let id = b["snapshot_id"].as_str().unwrap();
    // Mounted by root: FUSE needs /dev/fuse.
    let server_user = v.run_as.take();
    let m = Mount::start(&v, &v.dir.path().join("mnt"), &[]);
    v.run_as = server_user;
    let base = m.join(&format!("snapshots/{id}/base"));
    let out = pg_verifybackup(&base, &base.join("backup_manifest"), &[]);
    assert!(
        out.status.success(),
        "pg_verifybackup on the mount: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A relation file reads back as the stored tar stream has it.
    let path = pg.psql("footdash", "SELECT pg_relation_filepath('teams')");
    let from_mount = std::fs::read(base.join(&path)).unwrap();
    assert_eq!(Some(from_mount), v.file_in_stream(id, &path), "{path}");
    assert!(m.join(&format!("snapshots/{id}/base.tar")).exists());
}

#[test]
fn a_delta_restore_brings_a_modified_copy_to_the_same_state_as_a_fresh_restore() {
    let (pg, v) = archiving_cluster();
    pg.create_footdash("footdash", 1);
    pg.psql("footdash", "CREATE TABLE marks (tag text)");
    // A table of several chunks, of which one day changes a few pages.
    pg.psql(
        "footdash",
        "CREATE TABLE big AS SELECT g, md5(g::text) AS h FROM generate_series(1, 200000) g",
    );
    pg.psql("footdash", "VACUUM FREEZE big");
    let big_bytes: u64 = pg
        .psql("footdash", "SELECT pg_relation_size('big')")
        .parse()
        .unwrap();
    backup_from_pgdata(&v, &pg, &[]);
    pg.psql("footdash", "INSERT INTO marks VALUES ('day1')");
    switch_and_wait_archived(&pg);

    // Yesterday's copy: restored, recovered, stopped, then changed by hand.
    let copy_root = server_dir(&pg, "copy");
    let copy = copy_root.join("data");
    let populate = |dir: &Path| {
        v.run(&["restore", "--pgdata", dir.to_str().unwrap(), "--latest"])
            .ok();
    };
    let yesterday = PgCluster::start_restored(&populate, &["archive_mode = off"]);
    yesterday.wait_until_promoted();
    assert_eq!(tags(&yesterday), "day1");
    // A running server is never written under.
    let e = v
        .run(&[
            "restore",
            "--pgdata",
            yesterday.data_dir().to_str().unwrap(),
            "--latest",
            "--delta",
        ])
        .fails();
    assert!(e.contains("is running on it"), "{e}");
    yesterday.stop_fast();
    copy_dir(yesterday.data_dir(), &copy);
    drop(yesterday);
    std::fs::write(copy.join("base").join("stray_file"), b"not from any backup").unwrap();
    std::fs::remove_file(copy.join("global").join("pg_filenode.map")).unwrap();
    let conf = copy.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("\nthis line is not valid = = =\n");
    std::fs::write(&conf, text).unwrap();

    // Today: more changes and a new backup.
    pg.psql("footdash", "INSERT INTO marks VALUES ('day2')");
    pg.psql(
        "footdash",
        "UPDATE big SET h = 'changed' WHERE g IN (7, 100000)",
    );
    pg.footdash_day("footdash", 2);
    backup_from_pgdata(&v, &pg, &[]);
    pg.psql("footdash", "INSERT INTO marks VALUES ('day2 after')");
    switch_and_wait_archived(&pg);

    let populate_delta = |dir: &Path| {
        copy_dir(&copy, dir);
        let out = v
            .run(&[
                "restore",
                "--pgdata",
                dir.to_str().unwrap(),
                "--latest",
                "--delta",
                "--jobs",
                "2",
            ])
            .ok()
            .out();
        let line = out.lines().find(|l| l.starts_with("Delta:")).unwrap_or("");
        let matched: u64 = line
            .split(", ")
            .find_map(|p| p.strip_suffix(" already matched"))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(matched > 100, "most files should match yesterday's: {out}");
        // Only the chunks that differ are written: far less than the changed files.
        let written: u64 = line
            .split(", ")
            .find_map(|p| p.strip_suffix(" bytes written)"))
            .and_then(|n| n.parse().ok())
            .unwrap_or(u64::MAX);
        assert!(
            written < big_bytes / 2,
            "{written} bytes written for a day that changed a few pages of a {big_bytes}-byte table: {out}"
        );
        assert!(!dir.join("base").join("stray_file").exists());
        assert!(dir.join("global").join("pg_filenode.map").exists());
    };
    let delta = PgCluster::start_restored(&populate_delta, &["archive_mode = off"]);
    delta.wait_until_promoted();
    let fresh = PgCluster::start_restored(&populate, &["archive_mode = off"]);
    fresh.wait_until_promoted();
    assert_eq!(tags(&delta), "day1,day2,day2 after");
    assert_eq!(delta.row_counts("footdash"), pg.row_counts("footdash"));
    assert_eq!(delta.row_counts("footdash"), fresh.row_counts("footdash"));
    for table in ["teams", "big"] {
        let fingerprint =
            format!("SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM {table} t");
        assert_eq!(
            delta.psql("footdash", &fingerprint),
            pg.psql("footdash", &fingerprint),
            "{table}"
        );
    }
}

/// Copies a data directory (files, directories, symlinks) keeping owners and modes.
fn copy_dir(from: &Path, to: &Path) {
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_damaged_page_is_reported_by_file_and_block_and_the_backup_still_completes() {
    let (pg, v) = archiving_cluster();
    pg.psql(
        "postgres",
        "CREATE TABLE victim AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 5000) g; \
         CHECKPOINT",
    );
    let rel = pg.psql("postgres", "SELECT pg_relation_filepath('victim')");
    let file = pg.data_dir().join(&rel);
    // Flip a byte in block 3's tuple data, behind the server's back: its buffer is
    // clean, so the server never writes the page again.
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[3 * 8192 + 5000] ^= 0xFF;
    std::fs::write(&file, &bytes).unwrap();

    let dir = pg.data_dir().to_str().unwrap().to_string();
    let run = v
        .run(&["backup", "--base", "--pgdata", &dir, "--json"])
        .ok();
    let b = run.json();
    assert_eq!(
        b["bad_pages"],
        serde_json::json!([{"path": rel, "block": 3}]),
        "{b}"
    );
    assert!(
        run.stderr
            .contains(&format!("page checksum failure in {rel} block 3")),
        "the warning names file and block: {}",
        run.stderr
    );
    assert_eq!(v.snapshots().len(), 1);
}

#[test]
fn kill_9_in_the_middle_of_a_parallel_pgdata_backup_leaves_no_base_backup() {
    kill_9_in_the_middle_leaves_no_base_backup(false);
}

#[test]
fn kill_9_in_the_middle_of_a_spooled_pg_basebackup_leaves_no_base_backup_and_no_spool() {
    kill_9_in_the_middle_leaves_no_base_backup(true);
}

/// The command lines of running pg_basebackup processes writing under `spool`.
fn pg_basebackups(spool: &Path) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains("pg_basebackup") && c.contains(spool.to_str().unwrap()))
        .collect()
}

/// kill -9 once a base backup has stored chunks: read from the data directory, or
/// (`spooled`) by pg_basebackup from a cluster with a tablespace.
fn kill_9_in_the_middle_leaves_no_base_backup(spooled: bool) {
    let (pg, mut v) = archiving_cluster();
    let mut space = "";
    if spooled {
        let ts = server_dir(&pg, "ts_bulk");
        pg.psql(
            "postgres",
            &format!("CREATE TABLESPACE bulk LOCATION '{}'", ts.display()),
        );
        space = " TABLESPACE bulk";
    }
    pg.psql(
        "postgres",
        &format!(
            "CREATE TABLE bulk{space} AS SELECT g, md5(g::text) || md5((g * 7)::text) AS pad \
             FROM generate_series(1, 1500000) g"
        ),
    );
    let spool = server_dir(&pg, "spool");
    v.extra_env
        .push(("TMPDIR".into(), spool.to_str().unwrap().into()));
    let dir = pg.data_dir().to_str().unwrap().to_string();
    let args: Vec<&str> = if spooled {
        vec!["backup", "--base"]
    } else {
        vec!["backup", "--base", "--pgdata", &dir, "--jobs", "2"]
    };
    let chunks = v.repo_path().join("chunks");
    let count = |p: &Path| common::walk_files(p).len();
    let before = count(&chunks);
    let mut child = v
        .command(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed once it has stored some chunks, before it can have finished.
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&chunks) < before + 3 && Instant::now() < deadline {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup ended too soon"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(count(&chunks) > before, "the killed backup stored nothing");
    assert!(
        v.snapshots().is_empty(),
        "a killed backup must leave no snapshot"
    );
    if spooled {
        // pg_basebackup does not outlive pgvault for long.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !pg_basebackups(&spool).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(pg_basebackups(&spool), Vec::<String>::new());
    }
    // Its backup session ended with it: the next backup starts at once and completes.
    let started = Instant::now();
    let b = v.run(&args).ok();
    assert!(started.elapsed() < Duration::from_secs(120), "{}", b.out());
    assert_eq!(v.snapshots().len(), 1);
    assert_eq!(v.snapshots()[0]["kind"], "base");
    // The killed backup's spool is gone with the next one's.
    assert_eq!(common::walk_files(&spool), Vec::<PathBuf>::new());
    v.run(&["check", "--read-data"]).ok();
}

#[test]
fn a_pgdata_backup_refuses_another_cluster_s_directory_and_a_bad_map() {
    let (pg, v) = archiving_cluster();
    let other = PgCluster::start();
    let e = v
        .run(&[
            "backup",
            "--base",
            "--pgdata",
            other.data_dir().to_str().unwrap(),
        ])
        .fails();
    assert!(e.contains("is not the data directory"), "{e}");
    assert!(v.snapshots().is_empty());

    backup_from_pgdata(&v, &pg, &[]);
    switch_and_wait_archived(&pg);
    let target = pg.base_dir().join("never_written");
    let e = v
        .run(&[
            "restore",
            "--pgdata",
            target.to_str().unwrap(),
            "--latest",
            "--tablespace-map",
            "/nowhere/old=/tmp/new",
        ])
        .fails();
    assert!(e.contains("has no tablespace there"), "{e}");
    assert!(!target.exists(), "a refused restore must write nothing");
}

fn referenced(b: &serde_json::Value) -> u64 {
    b["bytes_referenced"]
        .as_u64()
        .unwrap_or_else(|| panic!("no bytes_referenced in {b}"))
}

#[test]
fn unchanged_files_are_named_from_the_previous_backup_unread_and_restore_exactly() {
    let (pg, v) = archiving_cluster();
    pg.psql(
        "postgres",
        "CREATE TABLE big AS SELECT g, md5(g::text) AS pad FROM generate_series(1, 200000) g; \
         CREATE TABLE steady AS SELECT g, md5(g::text) AS pad FROM generate_series(1, 100000) g; \
         ALTER TABLE big SET (autovacuum_enabled = false); \
         ALTER TABLE steady SET (autovacuum_enabled = false)",
    );
    // Hint bits and the visibility map set now, not by a vacuum between backups.
    pg.psql("postgres", "VACUUM (FREEZE, ANALYZE) big");
    pg.psql("postgres", "VACUUM (FREEZE, ANALYZE) steady");
    pg.psql("postgres", "CHECKPOINT");
    let big_bytes: u64 = pg
        .psql("postgres", "SELECT pg_relation_size('big')")
        .parse()
        .unwrap();
    let big_path = pg.psql("postgres", "SELECT pg_relation_filepath('big')");
    assert!(big_bytes > 4 << 20, "{big_bytes}");
    // Files changed within the margin (2 s) before a backup began are read again by
    // the next one; these were changed well before the first. The backup's beginning
    // is its label's START TIME, in whole seconds, which may be up to 1 s early.
    std::thread::sleep(Duration::from_millis(3500));

    let first = backup_from_pgdata(&v, &pg, &[]);
    assert_eq!(referenced(&first), 0, "{first}");
    let second = backup_from_pgdata(&v, &pg, &[]);
    assert!(
        referenced(&second) >= big_bytes,
        "the unchanged table was read again: {second}"
    );
    // The same chunks, named again.
    let list_of = |b: &serde_json::Value| {
        let id = b["snapshot_id"].as_str().unwrap();
        v.run(&["snapshots", "--json"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(
        list_of(&second)["bytes_referenced"],
        second["bytes_referenced"]
    );
    let tar1 = v
        .file_in_stream(first["snapshot_id"].as_str().unwrap(), &big_path)
        .unwrap();
    let tar2 = v
        .file_in_stream(second["snapshot_id"].as_str().unwrap(), &big_path)
        .unwrap();
    assert!(tar1 == tar2, "the named copy differs from the read one");

    // A changed file is read again; the unchanged one still is not.
    pg.psql(
        "postgres",
        "UPDATE big SET pad = 'changed' WHERE g = 5; CHECKPOINT",
    );
    let third = backup_from_pgdata(&v, &pg, &[]);
    assert!(
        referenced(&third) + big_bytes <= referenced(&second),
        "the changed table was named, not read: {third} after {second}"
    );
    assert!(referenced(&third) > 0, "{third}");
    let all = backup_from_pgdata(&v, &pg, &["--read-all"]);
    assert_eq!(referenced(&all), 0, "{all}");

    let md5 = |c: &PgCluster, t: &str| {
        c.psql(
            "postgres",
            &format!("SELECT md5(string_agg(g::text || pad, ',' ORDER BY g)) FROM {t}"),
        )
    };
    let (big_sum, steady_sum) = (md5(&pg, "big"), md5(&pg, "steady"));
    switch_and_wait_archived(&pg);
    // The third backup, half named and half read, restores to the source's rows and
    // passes pg_verifybackup with the manifest it wrote (CRCs of named files too).
    let third_id = third["snapshot_id"].as_str().unwrap().to_string();
    let manifest = pg.base_dir().join("manifest_of_third");
    std::fs::write(&manifest, backup_manifest_of(&v, &third_id)).unwrap();
    let populate = |dir: &Path| {
        v.run(&[
            "restore",
            "--pgdata",
            dir.to_str().unwrap(),
            "--base",
            &third_id,
            "--latest",
        ])
        .ok();
        let verified = pg_verifybackup(dir, &manifest, &[]);
        assert!(
            verified.status.success(),
            "pg_verifybackup: {}",
            String::from_utf8_lossy(&verified.stderr)
        );
    };
    let restored = PgCluster::start_restored(&populate, &["archive_mode = off"]);
    restored.wait_until_promoted();
    assert_eq!(md5(&restored, "big"), big_sum);
    assert_eq!(md5(&restored, "steady"), steady_sum);
    assert_eq!(
        restored.psql("postgres", "SELECT pad FROM big WHERE g = 5"),
        "changed"
    );
    v.run(&["check", "--read-data"]).ok();
}

/// An md5 of a table's rows in order, to compare contents, not just counts.
fn table_digest(pg: &PgCluster, db: &str, table: &str) -> String {
    pg.psql(
        db,
        &format!(
            "SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {table} t"
        ),
    )
}

#[test]
fn three_located_tablespaces_and_one_in_place_are_backed_up_both_ways_and_restored_whole() {
    let (pg, mut v) = archiving_cluster();
    let located: Vec<PathBuf> = ["ts_a", "ts_b", "ts_c"]
        .iter()
        .map(|n| server_dir(&pg, n))
        .collect();
    for (name, dir) in ["a", "b", "c"].iter().zip(&located) {
        pg.psql(
            "postgres",
            &format!("CREATE TABLESPACE {name} LOCATION '{}'", dir.display()),
        );
    }
    // An in-place tablespace is a directory under pg_tblspc, not a link, and
    // tablespace_map does not name it: it belongs to the data directory.
    pg.psql(
        "postgres",
        "ALTER SYSTEM SET allow_in_place_tablespaces = on",
    );
    pg.psql("postgres", "SELECT pg_reload_conf()");
    pg.psql("postgres", "CREATE TABLESPACE here LOCATION ''");
    pg.create_footdash("footdash", 1);
    for (table, space) in [
        ("matches", "a"),
        ("players", "b"),
        ("users", "c"),
        ("notifications", "here"),
    ] {
        pg.psql(
            "footdash",
            &format!("ALTER TABLE {table} SET TABLESPACE {space}"),
        );
    }
    let in_place: Vec<PathBuf> = std::fs::read_dir(pg.data_dir().join("pg_tblspc"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| std::fs::symlink_metadata(p).unwrap().is_dir())
        .collect();
    assert_eq!(in_place.len(), 1, "{in_place:?}");
    let source_counts = pg.row_counts("footdash");
    let source_digest = table_digest(&pg, "footdash", "notifications");
    assert_ne!(
        pg.psql("footdash", "SELECT count(*) FROM notifications"),
        "0"
    );

    // pg_basebackup sends no file of an in-place tablespace: refused, not half done.
    let spool = server_dir(&pg, "spool");
    v.extra_env
        .push(("TMPDIR".into(), spool.to_str().unwrap().into()));
    let e = v.run(&["backup", "--base"]).fails();
    assert!(
        e.contains("Tablespace here is in place") && e.contains("--pgdata"),
        "{e}"
    );
    assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 0);
    assert!(v.snapshots().is_empty());

    let from_pgdata = backup_from_pgdata(&v, &pg, &["--jobs", "2"]);
    let pgdata_digest = source_digest.clone();
    // Backup 0 is restored to this time, before its in-place tablespace is dropped.
    let before_drop = pg.psql(
        "postgres",
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    );
    std::thread::sleep(Duration::from_millis(50));
    // With the in-place tablespace gone, pg_basebackup backs up the other three.
    pg.psql(
        "footdash",
        "ALTER TABLE notifications SET TABLESPACE pg_default",
    );
    pg.psql("postgres", "DROP TABLESPACE here");
    let from_basebackup = v.run(&["backup", "--base", "--json"]).ok().json();
    v.extra_env.pop();
    switch_and_wait_archived(&pg);

    let oid = in_place[0].file_name().unwrap().to_str().unwrap();
    let backups = [
        (
            from_pgdata,
            true,
            "a,here,b,c",
            ["--target-time", &before_drop],
        ),
        (from_basebackup, false, "a,,b,c", ["--latest", "--jobs=2"]),
    ];
    for (n, (b, has_in_place, placed, target)) in backups.iter().enumerate() {
        let id = b["snapshot_id"].as_str().unwrap().to_string();
        let names = v.stream_names(&id);
        assert_eq!(
            names
                .iter()
                .any(|x| x.starts_with(&format!("pg_tblspc/{oid}/PG_15_"))),
            *has_in_place,
            "backup {n}: {names:?}"
        );
        let scratch = server_dir(&pg, &format!("restored_{n}"));
        let maps: Vec<String> = located
            .iter()
            .enumerate()
            .map(|(i, old)| {
                format!(
                    "{}={}",
                    old.display(),
                    scratch.join(i.to_string()).display()
                )
            })
            .collect();
        let populate = |dir: &Path| {
            let mut args = vec!["restore", "--pgdata", dir.to_str().unwrap(), "--base", &id];
            args.extend(target.iter().copied());
            for m in &maps {
                args.extend(["--tablespace-map", m.as_str()]);
            }
            v.run(&args).ok();
            if *has_in_place {
                let kept = dir.join("pg_tblspc").join(oid);
                assert!(
                    std::fs::symlink_metadata(&kept).unwrap().is_dir(),
                    "{} is not a directory",
                    kept.display()
                );
            }
        };
        let restored = PgCluster::start_restored(&populate, &["archive_mode = off"]);
        restored.wait_until_promoted();
        assert_eq!(restored.row_counts("footdash"), source_counts, "backup {n}");
        assert_eq!(
            table_digest(&restored, "footdash", "notifications"),
            pgdata_digest,
            "backup {n}"
        );
        let spaces = restored.psql(
            "footdash",
            "SELECT string_agg(coalesce(t.spcname, ''), ',' ORDER BY c.relname) FROM pg_class c \
             LEFT JOIN pg_tablespace t ON t.oid = c.reltablespace \
             WHERE c.relname IN ('matches', 'players', 'users', 'notifications')",
        );
        assert_eq!(spaces, *placed, "backup {n}");
        for i in 0..3 {
            let names = common::walk_names(&scratch.join(i.to_string()));
            assert!(
                names.iter().any(|x| x.starts_with("PG_15_")),
                "backup {n}, tablespace {i}: {names:?}"
            );
        }
    }
}
