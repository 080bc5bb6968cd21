//! End-to-end tests of forget, prune, du and the repository locks, on the local
//! backend with real pg_dump output: survivors read back byte-identical, prune frees
//! exactly what its dry run said, races and `kill -9` lose nothing.
//!
//! The helpers (`verify_all`, `race_backup_and_prune`, `import`) only use the CLI, so
//! they run unchanged against any backend a `Vault` points at (S3 included).

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::fixtures::{dumps, Rng};
use common::pg::PgCluster;
use common::s3::S3Server;
use common::vault::{Vault, SMALL_CHUNKS};
use serde_json::Value;

/// A local vault with small chunks, so that neighbouring dumps share some but not all.
fn vault() -> Vault {
    vault_with_chunks(4096, 16384, 65536)
}

fn vault_with_chunks(min: u32, avg: u32, max: u32) -> Vault {
    let v = Vault::local();
    v.init_with(&[
        "--chunk-min",
        &min.to_string(),
        "--chunk-avg",
        &avg.to_string(),
        "--chunk-max",
        &max.to_string(),
    ]);
    v
}

/// Imports `file` as a backup point of `db` at `time` (or now when `None`) and
/// returns its id.
fn import(v: &Vault, db: &str, file: &Path, time: Option<&str>) -> String {
    v.import_id(db, file, time)
}

/// Checks every backup point of the repository: it must be one we know the original
/// of, `cat` it byte-identical, and pass `pg_restore -l`. Returns how many there are.
fn verify_all(v: &Vault, originals: &HashMap<String, PathBuf>) -> usize {
    let snaps = v.snapshots();
    let tmp = tempfile::tempdir().unwrap();
    for s in &snaps {
        let id = s["id"].as_str().unwrap();
        let original = originals
            .get(id)
            .unwrap_or_else(|| panic!("snapshot {id} has no known original"));
        let got = v.run(&["cat", id]);
        assert_eq!(got.code, 0, "cat {id} failed: {}", got.stderr);
        assert!(
            got.stdout == std::fs::read(original).unwrap(),
            "snapshot {id} does not read back as {}",
            original.display()
        );
        let f = tmp.path().join("x.dump");
        std::fs::write(&f, &got.stdout).unwrap();
        common::succeeded(
            std::process::Command::new(PgCluster::bin("pg_restore"))
                .arg("-l")
                .arg(&f)
                .output()
                .unwrap(),
            &format!("pg_restore -l of {id}"),
        );
    }
    snaps.len()
}

fn ids_of(groups: &Value, what: &str) -> Vec<String> {
    groups
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g[what].as_array().unwrap().iter())
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

fn spawn(v: &Vault, args: &[&str], stdin: Stdio) -> Child {
    v.command(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(c: Child) -> (i32, String, String) {
    let out = c.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn forget_then_prune_frees_exactly_the_dry_run_figure_and_survivors_read_back() {
    let d = dumps();
    let v = vault();
    let mut originals = HashMap::new();
    let mut ids = Vec::new();
    for (i, f) in d.days[..3].iter().enumerate() {
        let id = import(
            &v,
            "footdash",
            f,
            Some(&format!("2024-08-0{}T02:00:00Z", i + 1)),
        );
        originals.insert(id.clone(), f.clone());
        ids.push(id);
    }
    let other = import(&v, "other", &d.other, Some("2024-08-01T03:00:00Z"));
    originals.insert(other.clone(), d.other.clone());

    // What du says forgetting day 0 would free, before anything is forgotten.
    let du = v.run(&["du", "--json"]).ok().json();
    let day0 = du["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == ids[0].as_str())
        .unwrap()
        .clone();
    let unique0 = day0["unique_bytes"].as_u64().unwrap();
    assert!(
        unique0 > 0 && unique0 < day0["stored_bytes"].as_u64().unwrap(),
        "{day0}"
    );
    assert_eq!(du["total"]["unreferenced_bytes"], 0, "{du}");
    assert!(v.run(&["du"]).ok().out().contains("UNIQUE"));

    let dry = v
        .run(&["forget", "--keep-last", "2", "--dry-run", "--json"])
        .ok()
        .json();
    assert_eq!(
        ids_of(&dry["groups"], "remove"),
        vec![ids[0].clone()],
        "{dry}"
    );
    assert_eq!(
        dry["groups"].as_array().unwrap().len(),
        2,
        "grouped by db: {dry}"
    );
    assert_eq!(v.snapshots().len(), 4, "a dry run removes nothing");
    let dry_pair = v
        .run(&[
            "forget",
            "--keep-last",
            "2",
            "--prune",
            "--dry-run",
            "--json",
        ])
        .ok()
        .json();
    assert_eq!(
        dry_pair["prune"]["bytes_freed"].as_u64().unwrap(),
        unique0,
        "{dry_pair}"
    );
    let human = v
        .run(&["forget", "--keep-last", "2", "--dry-run"])
        .ok()
        .out();
    assert!(
        human.contains("footdash (dump): keep 2, remove 1") && human.contains("last"),
        "{human}"
    );

    let real = v.run(&["forget", "--keep-last", "2", "--json"]).ok().json();
    assert_eq!(real["removed"], 1, "{real}");
    assert_eq!(v.snapshots().len(), 3);
    let e = v.run(&["cat", &ids[0]]).fails();
    assert!(e.contains("not found"), "{e}");

    let chunks_before = v.objects("chunks").len() as u64;
    let plan = v.run(&["prune", "--dry-run", "--json"]).ok().json();
    assert_eq!(plan["bytes_freed"].as_u64().unwrap(), unique0, "{plan}");
    assert_eq!(v.objects("chunks").len() as u64, chunks_before);
    let done = v.run(&["prune", "--json"]).ok().json();
    assert_eq!(done["chunks_deleted"], plan["chunks_deleted"], "{done}");
    assert_eq!(done["bytes_freed"], plan["bytes_freed"], "{done}");
    assert_eq!(done["chunks_missing"], 0);
    assert_eq!(
        v.objects("chunks").len() as u64,
        chunks_before - done["chunks_deleted"].as_u64().unwrap()
    );
    let again = v.run(&["prune", "--dry-run", "--json"]).ok().json();
    assert_eq!(again["chunks_deleted"], 0, "{again}");

    assert_eq!(verify_all(&v, &originals), 3);
    let du = v.run(&["du", "--json"]).ok().json();
    assert_eq!(du["total"]["unreferenced_chunks"], 0, "{du}");
    assert_eq!(du["total"]["missing_chunks"], 0, "{du}");
    assert!(v.objects("locks").is_empty(), "locks are released");
}

#[test]
fn policies_follow_the_imported_times_and_refuse_to_empty_a_group() {
    let d = dumps();
    let v = vault();
    // footdash: every day of July 2024 at 02:00, plus one at 20:00 on the 31st.
    let mut by_time: HashMap<String, String> = HashMap::new();
    let mut times: Vec<String> = (1..=31)
        .map(|day| format!("2024-07-{day:02}T02:00:00Z"))
        .collect();
    times.push("2024-07-31T20:00:00Z".into());
    for t in &times {
        by_time.insert(import(&v, "footdash", &d.tiny, Some(t)), t.clone());
    }
    // other: two backup points long ago.
    for t in ["2023-01-01T00:00:00Z", "2023-06-01T00:00:00Z"] {
        by_time.insert(import(&v, "other", &d.tiny, Some(t)), t.to_string());
    }
    let plan = |args: &[&str]| -> Value {
        let mut a = vec!["forget", "--dry-run", "--json"];
        a.extend_from_slice(args);
        v.run(&a).ok().json()
    };
    let kept_times = |p: &Value, db: &str, by_time: &HashMap<String, String>| -> Vec<String> {
        let g = p["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["db"] == db)
            .unwrap();
        let mut t: Vec<String> = g["keep"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| by_time[e["id"].as_str().unwrap()].clone())
            .collect();
        t.sort();
        t
    };

    // Daily 3 + weekly 2: 07-31T20 (newest of its day and of the week from Mon 07-29),
    // 07-30, 07-29, and the newest of the week before, Sun 07-28.
    let p = plan(&["--keep-daily", "3", "--keep-weekly", "2"]);
    assert_eq!(
        kept_times(&p, "footdash", &by_time),
        vec![
            "2024-07-28T02:00:00Z",
            "2024-07-29T02:00:00Z",
            "2024-07-30T02:00:00Z",
            "2024-07-31T20:00:00Z"
        ]
    );
    let fd = &p["groups"].as_array().unwrap()[0];
    assert_eq!(fd["db"], "footdash");
    assert_eq!(
        fd["keep"][0]["reasons"],
        serde_json::json!(["daily", "weekly"])
    );
    // Grouped by database: the old `other` points are judged on their own.
    assert_eq!(
        kept_times(&p, "other", &by_time),
        vec!["2023-01-01T00:00:00Z", "2023-06-01T00:00:00Z"]
    );

    let p = plan(&["--keep-monthly", "2"]);
    assert_eq!(
        kept_times(&p, "footdash", &by_time),
        vec!["2024-07-31T20:00:00Z"]
    );
    assert_eq!(
        kept_times(&p, "other", &by_time),
        vec!["2023-01-01T00:00:00Z", "2023-06-01T00:00:00Z"]
    );
    let p = plan(&["--keep-last", "3", "--db", "other"]);
    assert_eq!(p["groups"].as_array().unwrap().len(), 1);
    assert!(ids_of(&p["groups"], "remove").is_empty());

    // keep-within counts back from now: these backup points are all older.
    let e = v.run(&["forget", "--keep-within", "30d"]).fails();
    assert!(
        e.contains("would remove all") && e.contains("refusing"),
        "{e}"
    );
    let e = v.run(&["forget"]).fails();
    assert!(e.contains("No retention policy"), "{e}");
    assert_eq!(v.snapshots().len(), 34, "refused policies remove nothing");

    // Recent backup points, within the window.
    let now = chrono::Utc::now();
    for h in [1, 30, 80] {
        let t =
            (now - chrono::Duration::hours(h)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        by_time.insert(import(&v, "recent", &d.tiny, Some(&t)), t);
    }
    let p = plan(&["--keep-within", "2d", "--db", "recent"]);
    assert_eq!(kept_times(&p, "recent", &by_time).len(), 2);
    assert_eq!(
        p["groups"][0]["keep"][0]["reasons"],
        serde_json::json!(["within"])
    );

    // A policy from a config file, as cron would run it.
    let cfg = v.dir.path().join("retention.toml");
    std::fs::write(&cfg, "[retention]\nkeep-daily = 3\nkeep-weekly = 2\n").unwrap();
    let out = common::succeeded(
        v.command(&["forget", "--db", "footdash"])
            .env("PGVAULT_CONFIG", &cfg)
            .output()
            .unwrap(),
        "forget with PGVAULT_CONFIG",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Removed 28 of 32 backup points"), "{text}");
    let e = v
        .run(&["forget", "--config", "/nonexistent/retention.toml"])
        .fails();
    assert!(e.contains("/nonexistent/retention.toml"), "{e}");
    std::fs::write(&cfg, "[retention]\nkeep-dayly = 3\n").unwrap();
    let e = v
        .run(&["forget", "--config", cfg.to_str().unwrap()])
        .fails();
    assert!(e.contains("keep-dayly"), "{e}");
}

#[test]
fn a_prune_through_one_cache_is_noticed_by_a_backup_through_another() {
    let d = dumps();
    let a = vault();
    let mut b = Vault::local();
    b.repo = a.repo.clone();
    let mut originals = HashMap::new();
    // Both caches learn day 0's chunks.
    let s1 = import(&a, "footdash", &d.days[0], Some("2024-08-01T02:00:00Z"));
    let s2 = import(&b, "footdash", &d.days[0], Some("2024-08-01T03:00:00Z"));
    let s3 = import(&a, "footdash", &d.other, Some("2024-08-02T02:00:00Z"));
    originals.insert(s3.clone(), d.other.clone());
    // Forget both day-0 points and prune through cache a.
    let f = a
        .run(&["forget", "--keep-last", "1", "--prune", "--json"])
        .ok()
        .json();
    assert_eq!(f["removed"], 2, "{f}");
    assert!(f["prune"]["chunks_deleted"].as_u64().unwrap() > 0, "{f}");
    assert!(a.run(&["cat", &s1]).fails().contains("not found"));
    assert!(a.run(&["cat", &s2]).fails().contains("not found"));
    // Cache b still lists day 0's chunks; it must not trust them.
    let s4 = b
        .run_stdin(
            &["backup", "--stdin", "--db", "footdash", "--json"],
            &std::fs::read(&d.days[0]).unwrap(),
        )
        .ok()
        .json();
    assert!(s4["chunks_new"].as_u64().unwrap() > 0, "{s4}");
    originals.insert(
        s4["snapshot_id"].as_str().unwrap().to_string(),
        d.days[0].clone(),
    );
    assert_eq!(verify_all(&a, &originals), 2);
    assert_eq!(verify_all(&b, &originals), 2);
}

/// Backs up one of two dumps while `forget --keep-last 1 --prune` runs, `rounds`
/// times, so that prune sometimes frees the very chunks the backup is reusing; checks
/// every backup point after every round. Works on any backend.
fn race_backup_and_prune(v: &Vault, files: [&Path; 2], rounds: usize) {
    let mut rng = Rng::from_env_or_clock();
    let mut next = |below| rng.below(below);
    let mut originals: HashMap<String, PathBuf> = HashMap::new();
    for i in 0..rounds {
        let (x, y) = (files[i % 2], files[(i + 1) % 2]);
        // Older points of both dumps; forget keeps only the newest of the group.
        for (f, minute) in [(x, 0), (y, 30)] {
            let t = format!("2020-01-01T{:02}:{minute:02}:00Z", i % 24);
            originals.insert(import(v, "footdash", f, Some(&t)), f.to_path_buf());
        }
        let backup = spawn(
            v,
            &["backup", "--stdin", "--db", "footdash", "--json"],
            Stdio::from(std::fs::File::open(x).unwrap()),
        );
        std::thread::sleep(Duration::from_millis(next(60)));
        let prune = spawn(
            v,
            &["forget", "--keep-last", "1", "--prune", "--json"],
            Stdio::null(),
        );
        let (bc, bout, berr) = finish(backup);
        let (pc, pout, perr) = finish(prune);
        assert_eq!(bc, 0, "round {i}: backup failed: {berr}");
        assert_eq!(pc, 0, "round {i}: forget --prune failed: {perr}");
        let b: Value = serde_json::from_str(&bout).unwrap();
        originals.insert(
            b["snapshot_id"].as_str().unwrap().to_string(),
            x.to_path_buf(),
        );
        let p: Value = serde_json::from_str(&pout).unwrap();
        assert_eq!(p["prune"]["chunks_missing"], 0, "round {i}: {p}");
        let n = verify_all(v, &originals);
        assert!((1..=2).contains(&n), "round {i}: {n} snapshots");
    }
}

#[test]
fn a_backup_racing_a_prune_loses_no_chunk() {
    let d = dumps();
    let v = vault();
    let started = Instant::now();
    race_backup_and_prune(&v, [&d.days[0], &d.days[2]], 15);
    eprintln!("15 rounds in {:?}", started.elapsed());
}

#[test]
fn a_backup_racing_a_prune_on_the_s3_server_loses_no_chunk() {
    let d = dumps();
    let server = S3Server::start();
    let bucket = server.new_bucket("race");
    let v = Vault::s3(&server, &bucket, "repo");
    v.init_with(SMALL_CHUNKS);
    let started = Instant::now();
    race_backup_and_prune(&v, [&d.days[0], &d.days[2]], 10);
    eprintln!("10 rounds on S3 in {:?}", started.elapsed());
}

#[test]
fn kill_9_of_prune_at_any_moment_loses_nothing_and_the_next_prune_finishes() {
    let d = dumps();
    // Tiny chunks: thousands of deletes, so that kills land in the middle of them.
    let v = vault_with_chunks(256, 1024, 4096);
    let mut originals = HashMap::new();
    import(&v, "footdash", &d.other, Some("2024-07-01T02:00:00Z"));
    for (i, f) in d.days.iter().enumerate() {
        let id = import(
            &v,
            "footdash",
            f,
            Some(&format!("2024-08-0{}T02:00:00Z", i + 1)),
        );
        originals.insert(id, f.clone());
    }
    v.run(&["forget", "--keep-last", "1"]).ok();
    let plan = v.run(&["prune", "--dry-run", "--json"]).ok().json();
    let to_free = plan["chunks_deleted"].as_u64().unwrap();
    // Fewer than the forgotten chunks: day 1's full chunks stay as the bases of the
    // kept day's deltas. Still enough deletes for kills to land among them.
    assert!(to_free > 1000, "{plan}");
    let total = v.objects("chunks").len() as u64;

    let mut rng = Rng::from_env_or_clock();
    let mut next = |below| rng.below(below);
    let mut killed_midway = 0;
    // Kills that land before the first delete push the next ones later, so a slow
    // machine still gets kills in the middle.
    let mut earliest = 0;
    let mut deleted_before = 0;
    for round in 0..12 {
        let markers = v.objects("prunes");
        let mut child = spawn(&v, &["prune"], Stdio::null());
        // Prune writes its marker just before its first delete: aim the kill at the
        // deleting that follows, however fast this machine deletes.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while v.objects("prunes") == markers
            && child.try_wait().unwrap().is_none()
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(earliest + next(4)));
        let running = child.try_wait().unwrap().is_none();
        child.kill().unwrap();
        child.wait().unwrap();
        let left = v.objects("chunks").len() as u64;
        eprintln!(
            "round {round}: killed {} with {} of {to_free} chunks deleted",
            if running {
                "while running"
            } else {
                "after it ended"
            },
            total - left
        );
        if running && left > total - to_free && total - left > deleted_before {
            killed_midway += 1;
        }
        if total - left == deleted_before {
            earliest += 2;
        }
        deleted_before = total - left;
        assert_eq!(verify_all(&v, &originals), 1, "round {round}");
        if left == total - to_free {
            break;
        }
    }
    eprintln!("{killed_midway} kills landed in the middle of deleting");
    assert!(killed_midway > 0, "no kill landed while prune was deleting");

    // The same cache backs up a forgotten dump again: chunks the killed prune deleted
    // must be stored anew even though this index may still list them.
    let again = import(&v, "footdash", &d.days[0], None);
    originals.insert(again, d.days[0].clone());
    assert_eq!(verify_all(&v, &originals), 2);
    // The next prune completes the job, past the stale lock the kills left.
    let done = v.run(&["prune", "--json"]).ok().json();
    assert_eq!(done["chunks_missing"], 0, "{done}");
    assert_eq!(
        v.run(&["prune", "--dry-run", "--json"]).ok().json()["chunks_deleted"],
        0
    );
    assert_eq!(verify_all(&v, &originals), 2);
    let locks = v.run(&["locks", "--json"]).ok().json();
    for l in locks.as_array().unwrap() {
        assert_eq!(
            l["stale"], true,
            "only the killed prunes' locks remain: {l}"
        );
    }
    v.run(&["unlock"]).ok();
    assert!(v
        .run(&["locks", "--json"])
        .ok()
        .json()
        .as_array()
        .unwrap()
        .is_empty());
}

/// Starts a backup that holds its shared lock until the returned stdin is fed and closed.
fn held_backup(v: &Vault) -> (Child, std::process::ChildStdin) {
    let mut c = spawn(
        v,
        &["backup", "--stdin", "--db", "footdash", "--json"],
        Stdio::piped(),
    );
    let stdin = c.stdin.take().unwrap();
    wait_for_lock(v, "shared", 1);
    (c, stdin)
}

/// Waits until `count` live locks of `kind` exist.
fn wait_for_lock(v: &Vault, kind: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let locks = v.run(&["locks", "--json"]).ok().json();
        let n = locks
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["kind"] == kind && l["stale"] == false)
            .count();
        if n >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {kind} lock appeared: {locks}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn backups_and_prunes_wait_for_each_other() {
    let d = dumps();
    let v = vault();
    let mut originals = HashMap::new();
    let old = import(&v, "footdash", &d.days[1], Some("2024-08-01T00:00:00Z"));
    originals.insert(old, d.days[1].clone());
    let day0 = std::fs::read(&d.days[0]).unwrap();

    // A running backup holds a shared lock: a prune with a short wait gives up,
    // naming it.
    let (a, mut a_in) = held_backup(&v);
    let e = v.run(&["prune", "--lock-wait", "1s"]).fails();
    assert!(
        e.contains("locked") && e.contains("shared lock of backup") && e.contains("pid"),
        "{e}"
    );
    // A patient prune waits, holding its exclusive lock meanwhile...
    let p = spawn(&v, &["prune", "--json", "--lock-wait", "2m"], Stdio::null());
    wait_for_lock(&v, "exclusive", 1);
    // ...so a new backup waits for it, and one with a short wait gives up.
    let e = v
        .run_stdin(
            &["backup", "--stdin", "--db", "footdash", "--lock-wait", "1s"],
            &day0,
        )
        .fails();
    assert!(e.contains("exclusive lock of prune"), "{e}");
    let b = spawn(
        &v,
        &["backup", "--stdin", "--db", "footdash", "--json"],
        Stdio::from(std::fs::File::open(&d.days[2]).unwrap()),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let mut b = b;
    assert!(
        b.try_wait().unwrap().is_none(),
        "the backup must wait for prune"
    );

    // The first backup finishes; then prune runs; then the waiting backup.
    a_in.write_all(&day0).unwrap();
    drop(a_in);
    let (ac, aout, aerr) = finish(a);
    assert_eq!(ac, 0, "{aerr}");
    let aj: Value = serde_json::from_str(&aout).unwrap();
    originals.insert(
        aj["snapshot_id"].as_str().unwrap().to_string(),
        d.days[0].clone(),
    );
    let (pc, _, perr) = finish(p);
    assert_eq!(pc, 0, "{perr}");
    assert!(perr.contains("Waiting"), "{perr}");
    let (bc, bout, berr) = finish(b);
    assert_eq!(bc, 0, "{berr}");
    assert!(berr.contains("Waiting") && berr.contains("prune"), "{berr}");
    let bj: Value = serde_json::from_str(&bout).unwrap();
    originals.insert(
        bj["snapshot_id"].as_str().unwrap().to_string(),
        d.days[2].clone(),
    );
    assert_eq!(verify_all(&v, &originals), 3);
    assert!(v
        .run(&["locks", "--json"])
        .ok()
        .json()
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn stale_locks_are_reported_and_unlock_removes_them() {
    let d = dumps();
    let v = vault();
    let day0 = std::fs::read(&d.days[0]).unwrap();
    // A backup killed with -9 leaves its lock behind.
    let (mut dead, dead_in) = held_backup(&v);
    let dead_pid = dead.id();
    dead.kill().unwrap();
    dead.wait().unwrap();
    drop(dead_in);
    let locks = v.run(&["locks", "--json"]).ok().json();
    let l = &locks[0];
    assert_eq!(l["stale"], true, "{locks}");
    assert_eq!(l["pid"], dead_pid);
    assert_eq!(l["operation"], "backup");
    assert!(
        l["stale_reason"]
            .as_str()
            .unwrap()
            .contains("no longer runs"),
        "{l}"
    );
    assert!(
        !l["hostname"].as_str().unwrap().is_empty() && l["age_seconds"].is_u64(),
        "{l}"
    );
    let text = v.run(&["locks"]).ok().out();
    assert!(
        text.contains(&format!("pid {dead_pid}")) && text.contains("ago") && text.contains("stale"),
        "{text}"
    );
    // It blocks nobody, and is reported when met.
    let r = v.run(&["prune", "--lock-wait", "1s"]).ok();
    assert!(
        r.stderr.contains("Ignoring") && r.stderr.contains("stale"),
        "{}",
        r.stderr
    );

    // A live backup's lock is left by unlock, removed by unlock --all, and the backup
    // then refuses to commit.
    let (live, mut live_in) = held_backup(&v);
    let out = v.run(&["unlock"]).ok().out();
    assert!(
        out.contains("Removed shared lock of backup") && out.contains(&dead_pid.to_string()),
        "{out}"
    );
    assert!(out.contains("Left live"), "{out}");
    let locks = v.run(&["locks", "--json"]).ok().json();
    assert_eq!(locks.as_array().unwrap().len(), 1, "{locks}");
    assert_eq!(locks[0]["stale"], false);
    let removed = v.run(&["unlock", "--all", "--json"]).ok().json();
    assert_eq!(removed["removed"].as_array().unwrap().len(), 1);
    live_in.write_all(&day0).unwrap();
    drop(live_in);
    let (code, _, err) = finish(live);
    assert_ne!(code, 0);
    assert!(err.contains("was removed"), "{err}");
    assert!(v.snapshots().is_empty());
}
