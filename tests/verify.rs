//! End to end on real PostgreSQL 15: `check` (structure, data, subsets), restore drills
//! (pass, failed assertion, interrupted, PITR), backup attempts and size anomalies in
//! `status`, and `metrics` read by a real Prometheus text parser.
//!
//! The helpers take a [`Vault`] and touch stored objects only through
//! [`flip_byte`]/[`delete_object`], so the S3 variants can reuse them with their own
//! object access.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::pg::PgCluster;
use common::vault::{archiving_cluster, switch_and_wait_archived, Vault, SMALL_CHUNKS};
use serde_json::Value;

/// Chunk object keys of a local repository (`chunks/xx/<id>`).
fn chunk_keys(v: &Vault) -> BTreeSet<String> {
    v.objects("chunks")
        .iter()
        .map(|p| {
            p.strip_prefix(v.repo_path())
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// Flips one byte in the middle of a stored object (local backend).
fn flip_byte(v: &Vault, key: &str) {
    let p = v.repo_path().join(key);
    let mut b = std::fs::read(&p).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x40;
    std::fs::write(&p, b).unwrap();
}

/// Removes a stored object (local backend).
fn delete_object(v: &Vault, key: &str) {
    std::fs::remove_file(v.repo_path().join(key)).unwrap();
}

fn id_of(key: &str) -> &str {
    key.rsplit('/').next().unwrap()
}

/// Dumps `db` to a file in `dir` and returns its path.
fn dump(pg: &PgCluster, db: &str, dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    pg.pg_dump_file(db, &p);
    p
}

fn import(v: &Vault, db: &str, file: &Path, time: &str) -> common::vault::Run {
    v.import(db, file, Some(time))
}

/// The databases whose name marks them as a drill's.
fn drill_databases(pg: &PgCluster) -> String {
    pg.psql(
        "postgres",
        "SELECT coalesce(string_agg(datname, ','), '') FROM pg_database WHERE datname LIKE 'pgvault_drill_%'",
    )
}

fn dir_entries(p: &Path) -> Vec<String> {
    std::fs::read_dir(p)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Parses Prometheus text with the reference Python client's parser and returns
/// `[{name, type, samples: [{name, labels, value}]}]`.
fn parse_prometheus(text: &str) -> Vec<Value> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for f in text_string_to_metric_families(sys.stdin.read()):
    out.append({"name": f.name, "type": f.type, "help": f.documentation,
                "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]})
print(json.dumps(out))
"#;
    use std::io::Write;
    let mut child = std::process::Command::new("/usr/bin/python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with prometheus_client: run scripts/install-deps.sh test");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser rejected the metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// The value of the sample `name` with labels db and kind, if any.
fn sample(families: &[Value], name: &str, db: &str, kind: &str) -> Option<f64> {
    families.iter().find_map(|f| {
        f["samples"].as_array().unwrap().iter().find_map(|s| {
            (s["name"] == name && s["labels"]["db"] == db && s["labels"]["kind"] == kind)
                .then(|| s["value"].as_f64().unwrap())
        })
    })
}

/// A metric's value for FootDash's dumps.
fn footdash_dump(families: &[Value], name: &str) -> Option<f64> {
    sample(families, name, "footdash", "dump")
}

fn status_row<'a>(status: &'a Value, db: &str, kind: &str) -> &'a Value {
    status["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["db"] == db && b["kind"] == kind)
        .unwrap_or_else(|| panic!("no status row for {db} {kind}: {status}"))
}

#[test]
fn check_names_the_snapshots_and_wal_files_hit_by_bad_chunks() {
    let pg = PgCluster::start();
    pg.create_footdash("footdash", 2);
    let v = Vault::for_pg(&pg, SMALL_CHUNKS);
    let tmp = tempfile::tempdir().unwrap();

    let first = import(
        &v,
        "footdash",
        &dump(&pg, "footdash", tmp.path(), "d0"),
        "2026-11-01T02:00:00Z",
    )
    .ok()
    .json();
    let after_first = chunk_keys(&v);
    pg.footdash_day("footdash", 1);
    let second = import(
        &v,
        "footdash",
        &dump(&pg, "footdash", tmp.path(), "d1"),
        "2026-11-02T02:00:00Z",
    )
    .ok()
    .json();
    let only_second: Vec<String> = chunk_keys(&v).difference(&after_first).cloned().collect();
    assert!(!only_second.is_empty());

    // A WAL file: its chunks are the ones that appear with it.
    let before_wal = chunk_keys(&v);
    let seg = tmp.path().join("000000010000000000000003");
    let mut data = vec![0u8; 16 << 20];
    data[..100_000]
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = (i * 31 % 251) as u8);
    std::fs::write(&seg, &data).unwrap();
    v.run(&["wal-push", seg.to_str().unwrap()]).ok();
    let wal_chunks: Vec<String> = chunk_keys(&v).difference(&before_wal).cloned().collect();
    assert!(!wal_chunks.is_empty());

    // Clean: structure and data.
    let clean = v.run(&["check", "--json"]).ok().json();
    assert_eq!(clean["ok"], true, "{clean}");
    assert_eq!(clean["snapshots_checked"], 2);
    assert_eq!(clean["wal_files_checked"], 1);
    assert_eq!(clean["chunks_read"], 0);
    let full = v.run(&["check", "--read-data", "--json"]).ok().json();
    assert_eq!(full["chunks_read"], full["chunks_referenced"], "{full}");
    let text = v.run(&["check", "--read-data"]).ok().out();
    assert!(text.contains("No problems found"), "{text}");

    // A flipped byte: invisible to the structure check, found by reading, and blamed
    // on the second snapshot only.
    let victim = &only_second[only_second.len() / 2];
    flip_byte(&v, victim);
    v.run(&["check"]).ok();
    let r = v.run(&["check", "--read-data", "--json"]);
    assert_ne!(r.code, 0);
    let rep = r.json();
    assert_eq!(rep["bad_chunks"].as_array().unwrap().len(), 1, "{rep}");
    assert_eq!(rep["bad_chunks"][0]["id"], id_of(victim));
    assert_eq!(rep["bad_chunks"][0]["problem"], "corrupt");
    let damaged = rep["damaged_snapshots"].as_array().unwrap();
    assert_eq!(damaged.len(), 1, "{rep}");
    assert_eq!(damaged[0]["id"], second["snapshot_id"]);
    assert_eq!(damaged[0]["db"], "footdash");
    assert_eq!(damaged[0]["kind"], "dump");
    assert_eq!(damaged[0]["time"], "2026-11-02T02:00:00Z");
    let r = v.run(&["check", "--read-data"]);
    let err = r.stderr.clone();
    assert_ne!(r.code, 0);
    let out = r.out();
    assert!(
        out.contains(&format!(
            "DAMAGED SNAPSHOT {} (footdash dump at 2026-11-02T02:00:00Z)",
            second["snapshot_id"].as_str().unwrap()
        )),
        "{out}"
    );
    assert!(err.contains("found 1 problems"), "{err}");

    // A deleted chunk of the first backup: the structure check alone finds it.
    let gone = after_first.iter().next().unwrap();
    delete_object(&v, gone);
    let rep = v.run(&["check", "--json"]).json();
    assert_eq!(rep["ok"], false);
    let missing: Vec<&Value> = rep["bad_chunks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["problem"] == "missing")
        .collect();
    assert_eq!(missing.len(), 1, "{rep}");
    assert_eq!(missing[0]["id"], id_of(gone));
    let names: Vec<&str> = rep["damaged_snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&first["snapshot_id"].as_str().unwrap()),
        "{rep}"
    );

    // A bad WAL chunk names the WAL file.
    let wal_victim = wal_chunks.last().unwrap();
    flip_byte(&v, wal_victim);
    let rep = v.run(&["check", "--read-data", "--json"]).json();
    let wal = rep["damaged_wal"].as_array().unwrap();
    assert_eq!(wal.len(), 1, "{rep}");
    assert_eq!(wal[0]["name"], "000000010000000000000003");

    // A manifest that does not decode is a problem of its own.
    let snap_key = format!("snapshots/{}", first["snapshot_id"].as_str().unwrap());
    flip_byte(&v, &snap_key);
    let rep = v.run(&["check", "--json"]).json();
    assert!(
        rep["bad_manifests"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["key"] == snap_key.as_str()),
        "{rep}"
    );
}

#[test]
fn read_data_subsets_cover_every_chunk_over_repeated_runs() {
    let pg = PgCluster::start();
    pg.create_footdash("footdash", 2);
    let v = Vault::for_pg(&pg, SMALL_CHUNKS);
    v.run(&["backup", "--db", "footdash"]).ok();
    let total = v.run(&["check", "--json"]).ok().json()["chunks_referenced"]
        .as_u64()
        .unwrap();
    assert!(total > 40, "{total} chunks");

    // Rotating 25% windows: four runs tile the id space exactly.
    let mut read = 0;
    let mut next_start: Option<u64> = None;
    for _ in 0..4 {
        let r = v
            .run(&["check", "--read-data-subset", "25%", "--json"])
            .ok()
            .json();
        let w = &r["window"];
        if let Some(s) = next_start {
            assert_eq!(w["start"].as_u64().unwrap(), s, "windows must follow on");
        }
        assert_eq!(w["fraction"], 0.25, "{w}");
        next_start = Some(w["end"].as_u64().unwrap());
        let n = r["chunks_read"].as_u64().unwrap();
        assert!(n < total, "a quarter must not read everything");
        read += n;
    }
    assert_eq!(read, total, "four 25% runs read every chunk exactly once");

    // n/m slices: 1/3 .. 3/3 read everything once.
    let read: u64 = (1..=3)
        .map(|n| {
            v.run(&["check", "--read-data-subset", &format!("{n}/3"), "--json"])
                .ok()
                .json()["chunks_read"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(read, total);

    // One bad chunk is found by exactly one of four 25% runs.
    let keys = chunk_keys(&v);
    flip_byte(&v, keys.iter().nth(keys.len() / 3).unwrap());
    let failures = (0..4)
        .filter(|_| v.run(&["check", "--read-data-subset", "25%"]).code != 0)
        .count();
    assert_eq!(failures, 1);

    let e = v.run(&["check", "--read-data-subset", "0/3"]).fails();
    assert!(e.contains("0/3"), "{e}");
}

fn write_sql(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn a_drill_restores_checks_and_cleans_up_and_fails_on_a_false_assertion() {
    let pg = PgCluster::start();
    pg.create_footdash("footdash", 1);
    let v = Vault::for_pg(&pg, &[]);
    let work = tempfile::tempdir().unwrap();
    let w = work.path().to_str().unwrap();
    v.run(&["backup", "--db", "footdash"]).ok();
    let source_counts = pg.row_counts("footdash");

    let good = write_sql(
        work.path(),
        "good.sql",
        "-- FootDash invariants\nSELECT count(*) > 0 FROM users;\n\nSELECT count(*) = 0\n  FROM matches m LEFT JOIN teams t ON t.id = m.home_team_id\n  WHERE t.id IS NULL;\n",
    );
    let r = v
        .run(&[
            "drill",
            "--db",
            "footdash",
            "--sql",
            good.to_str().unwrap(),
            "--work-dir",
            w,
            "--json",
        ])
        .ok()
        .json();
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["db"], "footdash");
    assert_eq!(r["kind"], "dump");
    assert_eq!(r["missing_tables"].as_array().unwrap().len(), 0);
    assert_eq!(
        r["toc_table_data"].as_u64().unwrap() as usize,
        source_counts.len()
    );
    for t in r["tables"].as_array().unwrap() {
        let name = t["table"]
            .as_str()
            .unwrap()
            .strip_prefix("public.")
            .unwrap();
        assert_eq!(t["rows"].as_i64().unwrap(), source_counts[name], "{t}");
    }
    assert_eq!(r["assertions"].as_array().unwrap().len(), 2);
    assert!(r["restore_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(drill_databases(&pg), "");
    assert!(dir_entries(work.path()).iter().all(|n| n.ends_with(".sql")));
    // The source is untouched.
    assert_eq!(pg.row_counts("footdash"), source_counts);

    // A false assertion fails the drill, which still cleans up and is recorded.
    let bad = write_sql(
        work.path(),
        "bad.sql",
        "SELECT true;\nSELECT count(*) = 0 FROM users;\n",
    );
    let r = v.run(&[
        "drill",
        "--db",
        "footdash",
        "--sql",
        bad.to_str().unwrap(),
        "--work-dir",
        w,
    ]);
    let out = r.out();
    let e = r.fails();
    assert!(
        e.contains("assertions failed") && e.contains("FROM users"),
        "{e}"
    );
    assert!(out.contains("assertion FAILED"), "{out}");
    assert_eq!(drill_databases(&pg), "");
    assert!(dir_entries(work.path()).iter().all(|n| n.ends_with(".sql")));

    // status and metrics show the last drill.
    let st = v.run(&["status", "--json"]).ok().json();
    let row = status_row(&st, "footdash", "dump");
    assert_eq!(row["last_drill"]["ok"], false, "{row}");
    let fams = parse_prometheus(&v.run(&["metrics"]).ok().out());
    assert_eq!(
        footdash_dump(&fams, "pgvault_drill_last_success"),
        Some(0.0)
    );
    assert!(footdash_dump(&fams, "pgvault_drill_last_duration_seconds").unwrap() > 0.0);

    // Nothing to drill.
    let e = v.run(&["drill", "--db", "nonesuch"]).fails();
    assert!(e.contains("nonesuch"), "{e}");
}

#[test]
fn an_interrupted_drill_drops_its_database_and_directory() {
    let pg = PgCluster::start();
    pg.create_footdash("footdash", 1);
    let v = Vault::for_pg(&pg, &[]);
    let work = tempfile::tempdir().unwrap();
    v.run(&["backup", "--db", "footdash"]).ok();
    let slow = write_sql(
        work.path(),
        "slow.sql",
        "SELECT pg_sleep(120) IS NOT NULL;\n",
    );
    for signal in ["TERM", "INT"] {
        let child = v
            .command(&[
                "drill",
                "--db",
                "footdash",
                "--sql",
                slow.to_str().unwrap(),
                "--work-dir",
                work.path().to_str().unwrap(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Wait until the drill sits in its assertion, with its database restored.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let sleeping = pg.psql(
                "postgres",
                "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE 'pgvault_drill_%' AND query LIKE '%pg_sleep%'",
            );
            if sleeping == "1" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the drill never reached its assertion"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_ne!(drill_databases(&pg), "");
        let st = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        let started = Instant::now();
        let out = child.wait_with_output().unwrap();
        assert!(started.elapsed() < Duration::from_secs(30));
        assert_ne!(out.status.code(), Some(0));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("SIG{signal}")), "{err}");
        assert_eq!(drill_databases(&pg), "", "SIG{signal} left a database");
        assert_eq!(dir_entries(work.path()), vec!["slow.sql".to_string()]);
    }
    let st = v.run(&["status", "--json"]).ok().json();
    assert_eq!(
        status_row(&st, "footdash", "dump")["last_drill"]["ok"],
        false
    );
}

#[test]
fn failed_backups_show_in_status_and_metrics() {
    let pg = PgCluster::start();
    pg.create_footdash("footdash", 1);
    let v = Vault::for_pg(&pg, &[]);
    v.run(&["backup", "--db", "footdash"]).ok();
    v.run(&["backup", "--db", "footdash"]).ok();
    // A failing pg_dump.
    let e = v.run(&["backup", "--db", "no_such_db"]).fails();
    assert!(e.contains("pg_dump"), "{e}");
    // Bad input.
    v.run_stdin(&["backup", "--stdin", "--db", "footdash"], b"not a dump")
        .fails();
    // An outage: the repository is gone; the attempt waits in the spool.
    let moved = v.dir.path().join("moved");
    std::fs::rename(v.repo_path(), &moved).unwrap();
    v.run(&["backup", "--db", "footdash"]).fails();
    std::fs::rename(&moved, v.repo_path()).unwrap();

    let st = v.run(&["status", "--json"]).ok().json();
    let bad = status_row(&st, "no_such_db", "dump");
    assert_eq!(bad["last_attempt"]["ok"], false, "{bad}");
    assert!(bad["last_attempt"]["error"]
        .as_str()
        .unwrap()
        .contains("no_such_db"));
    assert_eq!(bad["failures_total"], 1);
    assert_eq!(bad["success_rate_30d"], 0.0);
    assert!(bad["last_success"].is_null());
    let good = status_row(&st, "footdash", "dump");
    assert_eq!(good["successes_total"], 2, "{good}");
    assert_eq!(
        good["failures_total"], 2,
        "bad input and the outage: {good}"
    );
    assert_eq!(good["attempts_30d"], 4);
    assert_eq!(good["success_rate_30d"], 0.5);
    assert_eq!(good["last_attempt"]["ok"], false);
    assert_eq!(good["snapshots"], 2);
    let text = v.run(&["status"]).ok().out();
    assert!(
        text.contains("no_such_db") && text.contains("FAILED"),
        "{text}"
    );

    let metrics = v.run(&["metrics"]).ok().out();
    let fams = parse_prometheus(&metrics);
    let get = |n: &str, db: &str| sample(&fams, n, db, "dump");
    assert_eq!(get("pgvault_backup_failure_total", "no_such_db"), Some(1.0));
    assert_eq!(get("pgvault_backup_success_total", "no_such_db"), Some(0.0));
    assert_eq!(
        get("pgvault_backup_last_attempt_success", "no_such_db"),
        Some(0.0)
    );
    assert_eq!(
        get(
            "pgvault_backup_last_success_timestamp_seconds",
            "no_such_db"
        ),
        None
    );
    assert_eq!(get("pgvault_backup_success_total", "footdash"), Some(2.0));
    assert_eq!(get("pgvault_backup_failure_total", "footdash"), Some(2.0));
    assert!(get("pgvault_backup_last_success_timestamp_seconds", "footdash").unwrap() > 1.7e9);
    assert!(get("pgvault_backup_size_bytes", "footdash").unwrap() > 1e6);
    assert!(get("pgvault_backup_stored_bytes", "footdash").is_some());

    // Every family has HELP and a type, follows the naming rules, and counters are counters.
    for f in &fams {
        let name = f["name"].as_str().unwrap();
        assert!(name.starts_with("pgvault_"), "{name}");
        assert!(!f["help"].as_str().unwrap().is_empty(), "{name}");
        let ty = f["type"].as_str().unwrap();
        assert!(ty == "gauge" || ty == "counter", "{name}: {ty}");
        for s in f["samples"].as_array().unwrap() {
            let sname = s["name"].as_str().unwrap();
            assert_eq!(sname.ends_with("_total"), ty == "counter", "{sname}");
        }
    }
    let names: BTreeSet<&str> = fams.iter().map(|f| f["name"].as_str().unwrap()).collect();
    for required in [
        "pgvault_backup_last_success_timestamp_seconds",
        "pgvault_backup_last_attempt_success",
        "pgvault_backup_size_bytes",
        "pgvault_backup_stored_bytes",
        "pgvault_backup_size_anomaly",
        // The parser reports counter families without their _total suffix.
        "pgvault_backup_success",
        "pgvault_backup_failure",
        "pgvault_repository_logical_bytes",
        "pgvault_repository_stored_bytes",
        "pgvault_repository_dedup_ratio",
    ] {
        assert!(
            names.contains(required),
            "{required} missing from\n{metrics}"
        );
    }
    let dedup = fams
        .iter()
        .find(|f| f["name"] == "pgvault_repository_dedup_ratio")
        .unwrap();
    assert!(
        dedup["samples"][0]["value"].as_f64().unwrap() > 1.5,
        "{dedup}"
    );

    // --output writes the same text atomically.
    let prom = v.dir.path().join("pgvault.prom");
    v.run(&["metrics", "--output", prom.to_str().unwrap()]).ok();
    parse_prometheus(&std::fs::read_to_string(&prom).unwrap());
}

#[test]
fn a_size_anomaly_is_flagged_in_the_backup_status_and_metrics() {
    let pg = PgCluster::start();
    pg.create_footdash("small", 1);
    pg.create_footdash("big", 3);
    let v = Vault::for_pg(&pg, &[]);
    let tmp = tempfile::tempdir().unwrap();
    let small = dump(&pg, "small", tmp.path(), "small.dump");
    let big = dump(&pg, "big", tmp.path(), "big.dump");

    let r = import(&v, "footdash", &small, "2026-11-01T02:00:00Z").ok();
    assert_eq!(r.json()["size_anomaly"], false);
    assert!(!r.stderr.contains("anomaly"), "{}", r.stderr);
    let r = import(&v, "footdash", &small, "2026-11-02T02:00:00Z").ok();
    assert_eq!(r.json()["size_anomaly"], false);
    let r = import(&v, "footdash", &big, "2026-11-03T02:00:00Z").ok();
    let b = r.json();
    assert_eq!(b["size_anomaly"], true, "{b}");
    assert!(b["size_change_ratio"].as_f64().unwrap() > 1.0, "{b}");
    assert_eq!(
        b["previous_size_bytes"].as_u64().unwrap(),
        std::fs::metadata(&small).unwrap().len()
    );
    assert!(
        r.stderr.contains("warning: size anomaly: footdash dump"),
        "{}",
        r.stderr
    );

    let st = v.run(&["status", "--json"]).ok().json();
    let row = status_row(&st, "footdash", "dump");
    assert_eq!(row["size_anomaly"], true, "{row}");
    assert_eq!(row["size_bytes"], b["bytes_read"]);
    let text = v.run(&["status"]).ok().out();
    assert!(text.contains("YES"), "{text}");
    let fams = parse_prometheus(&v.run(&["metrics"]).ok().out());
    assert_eq!(
        footdash_dump(&fams, "pgvault_backup_size_anomaly"),
        Some(1.0)
    );
    assert!(footdash_dump(&fams, "pgvault_backup_size_change_ratio").unwrap() > 1.0);

    // The threshold is settable.
    let st = v
        .run(&["status", "--json", "--size-change-threshold", "500"])
        .ok()
        .json();
    assert_eq!(status_row(&st, "footdash", "dump")["size_anomaly"], false);

    // Shrinking back is an anomaly too.
    let r = import(&v, "footdash", &small, "2026-11-04T02:00:00Z").ok();
    assert_eq!(r.json()["size_anomaly"], true);
}

#[test]
fn a_pitr_drill_recovers_a_base_backup_in_a_private_server_and_removes_it() {
    let (pg, mut v) = archiving_cluster();
    pg.create_footdash("footdash", 1);
    pg.psql("footdash", "CREATE TABLE marks (tag text)");
    v.run(&["backup", "--base"]).ok();
    pg.psql(
        "footdash",
        "INSERT INTO marks VALUES ('A1'), ('A2'), ('A3')",
    );
    switch_and_wait_archived(&pg);

    // The drill runs as the invoking user (root in CI, which then runs postgres as the
    // postgres OS user), in a work directory of its own.
    let work = tempfile::Builder::new()
        .prefix("pgvault-drill-test-")
        .tempdir_in("/tmp")
        .unwrap();
    let run_as = v.run_as.take();
    let sql = write_sql(
        work.path(),
        "marks.sql",
        "SELECT count(*) = 3 FROM marks;\n",
    );
    let r = v
        .run(&[
            "drill",
            "--base",
            "--latest",
            "--db",
            "footdash",
            "--sql",
            sql.to_str().unwrap(),
            "--work-dir",
            work.path().to_str().unwrap(),
            "--json",
        ])
        .ok()
        .json();
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["kind"], "base");
    let counts = pg.row_counts("footdash");
    for t in r["tables"].as_array().unwrap() {
        let name = t["table"]
            .as_str()
            .unwrap()
            .strip_prefix("public.")
            .unwrap();
        assert_eq!(t["rows"].as_i64().unwrap(), counts[name], "{t}");
    }
    assert_eq!(dir_entries(work.path()), vec!["marks.sql".to_string()]);

    // A failing assertion fails a PITR drill too, and it is removed all the same.
    let bad = write_sql(work.path(), "bad.sql", "SELECT count(*) = 99 FROM marks;\n");
    let e = v
        .run(&[
            "drill",
            "--base",
            "--db",
            "footdash",
            "--sql",
            bad.to_str().unwrap(),
            "--work-dir",
            work.path().to_str().unwrap(),
        ])
        .fails();
    assert!(e.contains("assertions failed"), "{e}");
    let mut left = dir_entries(work.path());
    left.sort();
    assert_eq!(left, vec!["bad.sql".to_string(), "marks.sql".to_string()]);
    v.run_as = run_as;

    let st = v.run(&["status", "--json"]).ok().json();
    let row = status_row(&st, "cluster", "base");
    assert_eq!(row["last_drill"]["ok"], false);
    assert!(
        st["wal"][0]["lag_seconds"].as_f64().unwrap() < 600.0,
        "{st}"
    );
    let fams = parse_prometheus(&v.run(&["metrics"]).ok().out());
    assert!(fams
        .iter()
        .any(|f| f["name"] == "pgvault_wal_last_archived_timestamp_seconds"));
}
