//! End to end on real PostgreSQL 15: WAL archiving with wal-push, base backups,
//! point-in-time recovery with wal-fetch, and the archive_command/restore_command
//! contracts (identical and different re-push, missing files, unreachable storage).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::mount::Mount;
use common::pg::PgCluster;
use common::s3::S3Server;
use common::vault::{
    archiving_async_cluster, archiving_beside, archiving_cluster, switch_and_wait_archived,
    switch_and_wait_archived_explained, Vault,
};

fn server_time(pg: &PgCluster) -> String {
    pg.psql(
        "postgres",
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    )
}

/// Restores with `args` into a new cluster directory and starts it.
fn restore_and_start(v: &Vault, args: &[&str]) -> PgCluster {
    let populate = |dir: &Path| {
        let mut all = vec!["restore", "--pgdata", dir.to_str().unwrap()];
        all.extend_from_slice(args);
        v.run(&all).ok();
        assert!(dir.join("recovery.signal").exists());
    };
    let restored = PgCluster::start_restored(&populate, &["archive_mode = off"]);
    restored.wait_until_promoted();
    restored
}

fn tags(pg: &PgCluster) -> String {
    pg.psql(
        "footdash",
        "SELECT string_agg(tag, ',' ORDER BY tag) FROM marks",
    )
}

#[test]
fn point_in_time_recovery_from_a_base_backup_and_archived_wal() {
    let (pg, v) = archiving_cluster();
    pg.create_footdash("footdash", 1);
    pg.psql("footdash", "CREATE TABLE marks (tag text)");

    let b = v.run(&["backup", "--base", "--json"]).ok().json();
    let base = &b["base"];
    assert_eq!(base["timeline"], 1);
    assert_eq!(base["pg_version"], "15");
    assert!(base["stop_lsn"].as_str().unwrap() >= base["start_lsn"].as_str().unwrap());
    let sysid = pg.psql(
        "postgres",
        "SELECT system_identifier FROM pg_control_system()",
    );
    assert_eq!(base["system_identifier"].as_str().unwrap(), sysid);

    pg.psql("footdash", "INSERT INTO marks VALUES ('A1'), ('A2')");
    std::thread::sleep(Duration::from_millis(1100));
    let target = server_time(&pg);
    std::thread::sleep(Duration::from_millis(1100));
    pg.psql("footdash", "INSERT INTO marks VALUES ('B1')");
    switch_and_wait_archived(&pg);

    // The listing shows one timeline without gaps, and the base backup's .backup file.
    let list = v.run(&["wal", "list", "--json"]).ok().json();
    let tl = &list["systems"][0]["timelines"][0];
    assert_eq!(tl["timeline"], 1);
    assert_eq!(tl["gaps"].as_array().unwrap().len(), 0, "{list}");
    assert_eq!(tl["backup_files"].as_array().unwrap().len(), 1, "{list}");
    let snaps = v.run(&["snapshots"]).ok().out();
    assert!(snaps.contains("base") && snaps.contains("tl 1"), "{snaps}");

    let at_target = restore_and_start(&v, &["--target-time", &target]);
    assert_eq!(tags(&at_target), "A1,A2");
    assert_eq!(
        at_target.row_counts("footdash")["users"],
        pg.row_counts("footdash")["users"]
    );
    drop(at_target);

    let latest = restore_and_start(&v, &["--latest"]);
    assert_eq!(tags(&latest), "A1,A2,B1");
    assert_eq!(latest.row_counts("footdash"), pg.row_counts("footdash"));
}

#[test]
fn restore_refuses_what_it_cannot_do_before_writing_anything() {
    let (pg, v) = archiving_cluster();
    let before_any = server_time(&pg);
    let tmp = tempfile::tempdir().unwrap();
    let pgdata = tmp.path().join("restore");
    let p = pgdata.to_str().unwrap();

    let e = v.run(&["restore", "--pgdata", p, "--latest"]).fails();
    assert!(e.contains("no base backup"), "{e}");

    v.run(&["backup", "--base"]).ok();
    switch_and_wait_archived(&pg);
    let e = v
        .run(&["restore", "--pgdata", p, "--target-time", &before_any])
        .fails();
    assert!(e.contains("No base backup ends before"), "{e}");
    let e = v
        .run(&[
            "restore",
            "--pgdata",
            p,
            "--target-time",
            "2999-01-01T00:00:00Z",
        ])
        .fails();
    assert!(e.contains("after the newest archived WAL"), "{e}");
    assert!(!pgdata.exists(), "a refused restore must write nothing");

    std::fs::create_dir(&pgdata).unwrap();
    std::fs::write(pgdata.join("PG_VERSION"), "15").unwrap();
    let e = v.run(&["restore", "--pgdata", p, "--latest"]).fails();
    assert!(e.contains("not empty"), "{e}");

    // A dump is no base backup.
    let dump = tmp.path().join("d.dump");
    pg.create_db("x");
    pg.pg_dump_file("x", &dump);
    let d = v.backup_file("x", &dump);
    let e = v
        .run(&[
            "restore",
            "--pgdata",
            tmp.path().join("other").to_str().unwrap(),
            "--latest",
            "--base",
            d["snapshot_id"].as_str().unwrap(),
        ])
        .fails();
    assert!(e.contains("not a base backup"), "{e}");
}

#[test]
fn wal_push_and_fetch_keep_postgresql_s_contracts() {
    let v = Vault::for_server(PgCluster::server_user());
    let dir = v.dir.path().join("pg_wal");
    std::fs::create_dir(&dir).unwrap();
    if let Some((uid, gid)) = v.run_as {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
    }
    let name = "000000010000000000000007";
    let seg = dir.join(name);
    // Mostly zeros, as a forced switch leaves a segment.
    let mut data = vec![0u8; 16 << 20];
    data[..4096]
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = (i * 7) as u8);
    std::fs::write(&seg, &data).unwrap();
    let seg_s = seg.to_str().unwrap();

    v.run(&["wal-push", seg_s]).ok();
    let stored: u64 = v
        .objects("chunks")
        .iter()
        .map(|p| p.metadata().unwrap().len())
        .sum();
    assert!(
        stored < 100_000,
        "a mostly-zero segment must cost next to nothing, took {stored} bytes"
    );
    v.run(&["wal-push", seg_s]).ok();

    let mut other = data.clone();
    other[100] ^= 0xff;
    std::fs::write(&seg, &other).unwrap();
    let e = v.run(&["wal-push", seg_s]).fails();
    assert!(e.contains("different content") && e.contains(name), "{e}");

    let e = v
        .run(&["wal-push", dir.join("not-a-wal-file").to_str().unwrap()])
        .fails();
    assert!(e.contains("not a WAL file name"), "{e}");

    // Fetch returns the first content, byte for byte.
    let out = dir.join("RECOVERYXLOG");
    v.run(&["wal-fetch", name, out.to_str().unwrap()]).ok();
    assert!(std::fs::read(&out).unwrap() == data);

    // The next segments come along into the spool, and are served from it.
    let next = dir.join("000000010000000000000008");
    let mut data8 = data.clone();
    data8[0] = 0xAB;
    std::fs::write(&next, &data8).unwrap();
    v.run(&["wal-push", next.to_str().unwrap()]).ok();
    v.run(&["wal-fetch", name, out.to_str().unwrap()]).ok();
    let spooled: Vec<_> = std::fs::read_dir(&v.cache)
        .unwrap()
        .flatten()
        // One spool per cluster: this made-up WAL names none.
        .map(|d| d.path().join("wal-spool/unknown/000000010000000000000008"))
        .filter(|p| p.exists())
        .collect();
    assert_eq!(spooled.len(), 1, "segment 8 should have been prefetched");
    assert!(std::fs::read(&spooled[0]).unwrap() == data8);
    v.run(&[
        "wal-fetch",
        "000000010000000000000008",
        out.to_str().unwrap(),
    ])
    .ok();
    assert!(std::fs::read(&out).unwrap() == data8);
    assert!(
        !spooled[0].exists(),
        "a spooled segment is handed over once"
    );

    // History and backup files are archived and fetched too.
    let hist = dir.join("00000002.history");
    std::fs::write(&hist, "1\t0/3000000\tbefore 2026-11-05\n").unwrap();
    v.run(&["wal-push", hist.to_str().unwrap()]).ok();
    v.run(&[
        "wal-fetch",
        "00000002.history",
        dir.join("h").to_str().unwrap(),
    ])
    .ok();
    assert_eq!(
        std::fs::read(dir.join("h")).unwrap(),
        std::fs::read(&hist).unwrap()
    );

    // A file that is not archived: exit 1 and nothing on stderr.
    let r = v.run(&[
        "wal-fetch",
        "00000003.history",
        dir.join("x").to_str().unwrap(),
    ]);
    assert_eq!(r.code, 1);
    assert_eq!(r.stderr.trim(), "");

    // Corrupt data: exit above 125, so PostgreSQL stops instead of promoting early.
    for victim in v.objects("chunks") {
        let mut bytes = std::fs::read(&victim).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        std::fs::write(&victim, &bytes).unwrap();
    }
    let r = v.run(&["wal-fetch", name, out.to_str().unwrap()]);
    assert!(
        r.code > 125,
        "exit {} for corrupt data: {}",
        r.code,
        r.stderr
    );

    // Storage unreachable: also above 125, with a message.
    std::fs::rename(v.repo_path(), v.dir.path().join("moved")).unwrap();
    let r = v.run(&["wal-fetch", name, out.to_str().unwrap()]);
    assert!(
        r.code > 125,
        "exit {} with the repository gone: {}",
        r.code,
        r.stderr
    );
    assert!(!r.stderr.is_empty());
}

#[test]
fn a_failing_pg_basebackup_leaves_nothing_behind() {
    let (pg, mut v) = archiving_cluster();
    let before = v.objects("");
    v.extra_env.push(("PGPORT".into(), "1".into()));
    let e = v.run(&["backup", "--base"]).fails();
    assert!(e.contains("pg_basebackup"), "{e}");
    assert!(v.snapshots().is_empty());
    assert_eq!(v.objects("snapshots"), Vec::<std::path::PathBuf>::new());
    let _ = before;

    // The same environment, with a connection string saying where the server is: it
    // reaches pg_basebackup (whose own PGPORT is wrong), and the label stays "cluster".
    let conninfo = format!("host={} port={} user={}", pg.host(), pg.port(), pg.user());
    let b = v
        .run(&["backup", "--base", "--db", &conninfo, "--json"])
        .ok()
        .json();
    assert_eq!(b["db"], "cluster", "{b}");
    assert_eq!(b["base"]["timeline"], 1, "{b}");
    assert_eq!(v.snapshots().len(), 1);
}

#[test]
fn wal_retention_follows_the_surviving_base_backups_and_prune_keeps_wal_chunks() {
    let (pg, v) = archiving_cluster();
    pg.create_footdash("footdash", 1);
    v.run(&["backup", "--base"]).ok();
    pg.footdash_day("footdash", 1);
    switch_and_wait_archived(&pg);
    pg.footdash_day("footdash", 2);
    switch_and_wait_archived(&pg);
    let second = v.run(&["backup", "--base", "--json"]).ok().json();
    pg.footdash_day("footdash", 3);
    let last = switch_and_wait_archived(&pg);
    let before = v.run(&["wal", "list", "--json"]).ok().json();
    let first_before = before["systems"][0]["timelines"][0]["ranges"][0]["first"]
        .as_str()
        .unwrap()
        .to_string();

    let dry = v
        .run(&[
            "forget",
            "--keep-last",
            "1",
            "--kind",
            "base",
            "--prune",
            "--dry-run",
            "--json",
        ])
        .ok()
        .json();
    let wal_planned = dry["wal_files_removed"].as_u64().unwrap();
    assert!(wal_planned > 0, "{dry}");
    let real = v
        .run(&[
            "forget",
            "--keep-last",
            "1",
            "--kind",
            "base",
            "--prune",
            "--json",
        ])
        .ok()
        .json();
    assert_eq!(real["wal_files_removed"].as_u64().unwrap(), wal_planned);
    assert_eq!(
        real["prune"]["bytes_freed"], dry["prune"]["bytes_freed"],
        "{real}\n{dry}"
    );

    // What remains starts where the surviving base backup starts, and nothing it
    // needs lost its chunks.
    let after = v.run(&["wal", "list", "--json"]).ok().json();
    let first_after = after["systems"][0]["timelines"][0]["ranges"][0]["first"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(first_after > first_before, "{after}");
    let start_lsn = second["base"]["start_lsn"].as_str().unwrap();
    let start_seg = pg.psql(
        "postgres",
        &format!("SELECT pg_walfile_name('{start_lsn}')"),
    );
    assert!(first_after <= start_seg, "{first_after} > {start_seg}");
    assert_eq!(
        after["systems"][0]["timelines"][0]["ranges"][0]["last"]
            .as_str()
            .unwrap(),
        last
    );
    v.run(&["check", "--read-data"]).ok();

    let restored = restore_and_start(&v, &["--latest"]);
    assert_eq!(restored.row_counts("footdash"), pg.row_counts("footdash"));
}

#[test]
fn the_mount_serves_wal_to_restore_command_while_archiving_and_backups_go_on() {
    let (pg, mut v) = archiving_cluster();
    pg.create_footdash("footdash", 1);
    pg.psql("footdash", "CREATE TABLE marks (tag text)");
    v.run(&["backup", "--base"]).ok();

    // Mounted by root (FUSE needs /dev/fuse), owned by the server's user.
    let server_user = v.run_as.take();
    let owner = server_user.map_or(0, |(uid, _)| uid).to_string();
    let mnt = Mount::start(
        &v,
        &v.dir.path().join("mnt"),
        &["--allow-other", "--uid", &owner],
    );
    v.run_as = server_user;

    // A long-running mount, the archiver and a cron-style dump, all at once.
    let dumps = std::thread::scope(|s| {
        let dumper = s.spawn(|| {
            (0..2)
                .map(|_| v.run(&["backup", "--db", "footdash", "--json"]).ok().json())
                .collect::<Vec<_>>()
        });
        for i in 0..3 {
            pg.psql("footdash", &format!("INSERT INTO marks VALUES ('m{i}')"));
            switch_and_wait_archived(&pg);
            let _ = std::fs::read_dir(mnt.join("by-date")).unwrap().count();
        }
        dumper.join().unwrap()
    });
    let last = switch_and_wait_archived(&pg);

    // New WAL and dumps appear without a remount.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !mnt.join("wal").join(&last).exists() {
        assert!(
            Instant::now() < deadline,
            "{last} did not show up in the mount"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(mnt.join("wal/00000001").join(&last).exists());
    let fetched = v.dir.path().join("fetched");
    v.run(&[
        "wal-fetch",
        &last,
        fetched.to_str().unwrap(),
        "--prefetch",
        "0",
    ])
    .ok();
    assert!(
        std::fs::read(mnt.join("wal").join(&last)).unwrap() == std::fs::read(&fetched).unwrap()
    );
    for d in &dumps {
        let id = d["snapshot_id"].as_str().unwrap();
        let mounted = std::fs::read(mnt.join("snapshots").join(id).join("footdash.dump"))
            .unwrap_or_else(|e| panic!("dump {id} through the mount: {e}\n{}", mnt.log()));
        assert!(
            mounted == v.cat(id),
            "dump {id} reads differently through the mount"
        );
    }

    // restore_command = 'pgvault wal-fetch --from-mount <mount> %f %p' recovers as
    // well as wal-fetch from the repository does, with no passphrase.
    let populate = |dir: &Path| {
        v.run(&["restore", "--pgdata", dir.to_str().unwrap(), "--latest"])
            .ok();
        let conf = dir.join("postgresql.auto.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str(&format!(
            "restore_command = '{} wal-fetch --from-mount {} %f %p'\n",
            common::vault::bin().display(),
            mnt.path.display()
        ));
        std::fs::write(&conf, text).unwrap();
    };
    let restored = PgCluster::start_restored(&populate, &["archive_mode = off"]);
    restored.wait_until_promoted();
    assert_eq!(tags(&restored), "m0,m1,m2");
    assert_eq!(restored.row_counts("footdash"), pg.row_counts("footdash"));
    drop(mnt);
}

#[test]
fn point_in_time_recovery_through_the_s3_server() {
    let server = S3Server::start();
    let bucket = server.new_bucket("pitr");
    // The passphrase file and cache belong to the server's user; the repository is S3.
    let mut v = Vault::for_server(PgCluster::server_user());
    v.repo = format!("s3://{bucket}/repo");
    v.extra_env = server.env();
    v.init();
    let aws: String = server
        .env()
        .iter()
        .map(|(k, val)| format!("{k}={val}"))
        .collect::<Vec<_>>()
        .join(" ");
    let (pg, v) = common::vault::archiving_into(v, &aws);
    pg.create_footdash("footdash", 1);
    pg.psql("footdash", "CREATE TABLE marks (tag text)");
    v.run(&["backup", "--base"]).ok();
    pg.psql("footdash", "INSERT INTO marks VALUES ('A1')");
    std::thread::sleep(Duration::from_millis(1100));
    let target = server_time(&pg);
    std::thread::sleep(Duration::from_millis(1100));
    pg.psql("footdash", "INSERT INTO marks VALUES ('B1')");
    switch_and_wait_archived(&pg);

    // The restore_command that restore writes reaches S3 with no hand edit: the
    // endpoint, region and the credentials file's path are carried, the secret is not.
    let creds = v.dir.path().join("aws-credentials");
    let env = server.env();
    let get = |k: &str| env.iter().find(|(n, _)| n == k).unwrap().1.clone();
    std::fs::write(
        &creds,
        format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            get("AWS_ACCESS_KEY_ID"),
            get("AWS_SECRET_ACCESS_KEY")
        ),
    )
    .unwrap();
    if let Some((uid, gid)) = v.run_as {
        std::os::unix::fs::chown(&creds, Some(uid), Some(gid)).unwrap();
    }
    let populate = |dir: &Path| {
        let mut c = v.command(&[
            "restore",
            "--pgdata",
            dir.to_str().unwrap(),
            "--target-time",
            &target,
        ]);
        c.env("AWS_SHARED_CREDENTIALS_FILE", &creds);
        let out = c.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(
            stderr.contains("does not carry AWS_ACCESS_KEY_ID"),
            "{stderr}"
        );
        let conf = std::fs::read_to_string(dir.join("postgresql.auto.conf")).unwrap();
        assert!(!conf.contains(&get("AWS_SECRET_ACCESS_KEY")), "{conf}");
        assert!(conf.contains(&get("AWS_ENDPOINT_URL")), "{conf}");
    };
    let restored = PgCluster::start_restored(&populate, &["archive_mode = off"]);
    restored.wait_until_promoted();
    assert_eq!(tags(&restored), "A1");
    assert_eq!(
        restored.row_counts("footdash")["users"],
        pg.row_counts("footdash")["users"]
    );

    // Missing is 1 and quiet; S3 down is above 125, so recovery stops, not promotes.
    let out = v.dir.path().join("fetched");
    let out = out.to_str().unwrap();
    let r = v.run(&["wal-fetch", "00000009.history", out]);
    assert_eq!((r.code, r.stderr.trim()), (1, ""));
    server.stop();
    let r = v.run(&[
        "wal-fetch",
        "000000010000000000000002",
        out,
        "--prefetch",
        "0",
    ]);
    assert!(r.code > 125, "exit {} with S3 down: {}", r.code, r.stderr);
    assert!(r.stderr.contains("127.0.0.1"), "{}", r.stderr);
}

#[test]
fn every_time_format_postgresql_prints_recovers_to_the_right_side_of_two_commits_in_one_second() {
    let (pg, v) = archiving_cluster();
    pg.create_db("footdash");
    pg.psql("footdash", "CREATE TABLE marks (tag text)");
    v.run(&["backup", "--base"]).ok();
    // A, a timestamp as PostgreSQL prints it, then B, all within one second: only
    // the fraction of the second tells the target apart from either commit.
    let printed = loop {
        pg.psql("footdash", "INSERT INTO marks VALUES ('A')");
        let t = pg.psql("footdash", "SELECT clock_timestamp()::text");
        pg.psql("footdash", "INSERT INTO marks VALUES ('B')");
        let same_second = pg.psql(
            "footdash",
            &format!(
                "SELECT date_trunc('second', '{t}'::timestamptz) = date_trunc('second', clock_timestamp())"
            ),
        );
        if same_second == "t" {
            break t;
        }
        pg.psql("footdash", "TRUNCATE marks");
    };
    switch_and_wait_archived(&pg);
    // The same instant, spelled as psql, a server log, RFC 3339 and another zone print it.
    let utc = pg.psql(
        "postgres",
        &format!("SELECT to_char('{printed}'::timestamptz AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')"),
    );
    let kolkata = pg.psql(
        "postgres",
        &format!(
            "SELECT to_char('{printed}'::timestamptz AT TIME ZONE 'Asia/Kolkata', 'YYYY-MM-DD HH24:MI:SS.US')"
        ),
    );
    for spelled in [
        printed.clone(),
        format!("{utc} UTC"),
        format!("{}Z", utc.replace(' ', "T")),
        format!("{kolkata}+05:30"),
        format!("{kolkata}+0530"),
    ] {
        eprintln!("target {spelled}");
        let restored = restore_and_start(&v, &["--target-time", &spelled]);
        assert_eq!(tags(&restored), "A", "target {spelled}");
    }
}

fn kill(signal: &str, pid: u32) -> bool {
    std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap()
        .success()
}

/// The segment names PostgreSQL marked archived (`.done`) whose files are still in
/// pg_wal.
fn archived_segments_in(pg_wal: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(pg_wal.join("archive_status"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().into_string().ok()?;
            let n = n.strip_suffix(".done")?.to_string();
            (n.len() == 24 && pg_wal.join(&n).exists()).then_some(n)
        })
        .collect();
    names.sort();
    names
}

#[test]
fn async_archiving_under_pgbench_loses_nothing_when_its_agent_is_killed() {
    let (pg, v) = archiving_async_cluster();
    let pgbench = |args: &[&str]| {
        let out = pg
            .command("pgbench")
            .args(args)
            .arg("postgres")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pgbench {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // Archived segments stay in pg_wal, to be compared with the archive at the end.
    pg.psql("postgres", "ALTER SYSTEM SET wal_keep_size = '1GB'");
    pg.psql("postgres", "SELECT pg_reload_conf()");
    pgbench(&["-q", "-i", "-s", "5"]);
    v.run(&["backup", "--base"]).ok();

    // kill -9 the agent twice while pgbench writes; the next archive_command starts
    // a new one each time.
    let killed = std::thread::scope(|s| {
        let bench = s.spawn(|| pgbench(&["-c", "4", "-j", "2", "-T", "12", "-n"]));
        let mut killed = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while killed.len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(700));
            match v.agent_pid().filter(|p| !killed.contains(p)) {
                Some(pid) if kill("-KILL", pid) => killed.push(pid),
                Some(_) => {}
                // pgbench is done before the second kill on a slow machine: a new
                // segment makes archive_command start the next agent.
                None if bench.is_finished() => {
                    pg.psql(
                        "postgres",
                        "INSERT INTO pgbench_history VALUES (1, 1, 1, 0, now(), 'x')",
                    );
                    pg.psql("postgres", "SELECT pg_switch_wal()");
                }
                None => {}
            }
        }
        bench.join().unwrap();
        killed
    });
    assert_eq!(killed.len(), 2, "no agent to kill: {}", pg.log());
    let last = switch_and_wait_archived_explained(&pg, || v.explain_agents());
    let history = "SELECT count(*), sum(delta) FROM pgbench_history";
    let committed = pg.psql("postgres", history);
    // Usually both kills hit a push in flight (failed_count 2), which PostgreSQL retried.
    eprintln!(
        "archived, failed: {}",
        pg.psql(
            "postgres",
            "SELECT archived_count, failed_count FROM pg_stat_archiver"
        )
    );
    pg.stop_fast();

    // Every segment PostgreSQL counts as archived is in the archive, byte for byte.
    let pg_wal = pg.data_dir().join("pg_wal");
    let archived = archived_segments_in(&pg_wal);
    assert!(archived.len() >= 3, "{archived:?}");
    let fetched = v.dir.path().join("fetched");
    for name in &archived {
        v.run(&[
            "wal-fetch",
            name,
            fetched.to_str().unwrap(),
            "--prefetch",
            "0",
        ])
        .ok();
        assert!(
            std::fs::read(&fetched).unwrap() == std::fs::read(pg_wal.join(name)).unwrap(),
            "{name} was archived with other content"
        );
    }
    let list = v.run(&["wal", "list", "--json"]).ok().json();
    let tl = &list["systems"][0]["timelines"][0];
    assert_eq!(tl["gaps"].as_array().unwrap().len(), 0, "{list}");
    assert!(
        tl["ranges"][0]["last"].as_str().unwrap() >= last.as_str(),
        "{list}"
    );

    // Recovery fetches through the agent too (restore writes `wal-fetch --async`).
    let restored = restore_and_start(&v, &["--latest"]);
    assert_eq!(restored.psql("postgres", history), committed);
}

#[test]
fn the_wal_agent_keeps_the_push_and_fetch_contracts() {
    let v = Vault::for_server(PgCluster::server_user());
    let pg_wal = v.dir.path().join("pg_wal");
    std::fs::create_dir_all(pg_wal.join("archive_status")).unwrap();
    let segment = |n: u8| {
        let mut data = vec![n; 16 << 20];
        data[..4096]
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = (i as u8).wrapping_mul(n));
        data
    };
    let name = |n: u8| format!("0000000100000000000000{n:02X}");
    for n in 1..=4 {
        std::fs::write(pg_wal.join(name(n)), segment(n)).unwrap();
        if n > 1 {
            std::fs::write(pg_wal.join(format!("archive_status/{}.ready", name(n))), "").unwrap();
        }
    }
    if let Some((uid, gid)) = v.run_as {
        for p in [pg_wal.clone(), pg_wal.join("archive_status")] {
            std::os::unix::fs::chown(&p, Some(uid), Some(gid)).unwrap();
        }
    }
    let path = |n: u8| pg_wal.join(name(n)).display().to_string();
    v.run(&["wal-push", "--async", &path(1)]).ok();
    let agent = v.agent_pid().expect("an agent was started");

    // The segments marked ready are pushed ahead, before their own archive_command.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = v.run(&["wal", "list", "--json"]).ok().json();
        if list["systems"][0]["timelines"][0]["segments"] == 4 {
            break;
        }
        assert!(Instant::now() < deadline, "not pushed ahead: {list}");
        std::thread::sleep(Duration::from_millis(100));
    }
    v.run(&["wal-push", "--async", &path(2)]).ok();
    // A file changed under a name pushed ahead is refused, never acknowledged by the
    // push of its old content.
    std::fs::write(pg_wal.join(name(3)), segment(9)).unwrap();
    let e = v.run(&["wal-push", "--async", &path(3)]).fails();
    assert!(
        e.contains("different content") && e.contains(&name(3)),
        "{e}"
    );

    // Fetch: the bytes archived; "not archived" is exit 1, quietly.
    let out = v.dir.path().join("out");
    let out_s = out.to_str().unwrap();
    v.run(&["wal-fetch", "--async", &name(3), out_s]).ok();
    assert!(std::fs::read(&out).unwrap() == segment(3));
    v.run(&["wal-fetch", "--async", &name(4), out_s]).ok();
    assert!(std::fs::read(&out).unwrap() == segment(4));
    let r = v.run(&["wal-fetch", "--async", &name(0x20), out_s]);
    assert_eq!((r.code, r.stderr.trim()), (1, ""));
    assert_eq!(v.agent_pid(), Some(agent), "one agent served it all");

    // A wrong passphrase reaches the caller from an agent that cannot start.
    let mut wrong = Vault::for_server(v.run_as);
    wrong.repo = v.repo.clone();
    let wrong_file = wrong.password_file.clone().unwrap();
    std::fs::write(&wrong_file, "not the passphrase\n").unwrap();
    let r = wrong.run(&["wal-push", "--async", &path(4)]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("Wrong passphrase"), "{}", r.stderr);

    // A hung agent: wal-fetch stops recovery (above 125) within its deadline.
    assert!(kill("-STOP", agent));
    let started = Instant::now();
    let r = v.run(&[
        "--io-timeout",
        "1s",
        "wal-fetch",
        "--async",
        &name(2),
        out_s,
    ]);
    assert!(kill("-CONT", agent));
    assert!(
        r.code > 125,
        "exit {} from a hung agent: {}",
        r.code,
        r.stderr
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );

    // A killed agent is replaced by the next call (once it is gone: a call that
    // connects while it dies fails, and archive_command would retry).
    assert!(kill("-KILL", agent));
    let deadline = Instant::now() + Duration::from_secs(10);
    while common::vault::alive(agent) {
        assert!(Instant::now() < deadline, "agent {agent} stayed");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(pg_wal.join(name(5)), segment(5)).unwrap();
    v.run(&["wal-push", "--async", &path(5)]).ok();
    let replaced = v.agent_pid().expect("a new agent");
    assert_ne!(replaced, agent);
    v.run(&["wal-fetch", "--async", &name(5), out_s]).ok();
    assert!(std::fs::read(&out).unwrap() == segment(5));

    // A repository created anew at the same place (another key): the agent that
    // opened the old one acknowledges nothing there and makes way for a new agent.
    std::fs::remove_dir_all(v.repo_path()).unwrap();
    v.init();
    std::fs::write(pg_wal.join(name(6)), segment(6)).unwrap();
    // Either the agent notices before the push (and a new agent does it) or after
    // (and the push fails, to be retried): never acknowledged under the old key.
    let r = v.run(&["wal-push", "--async", &path(6)]);
    if r.code != 0 {
        assert!(r.stderr.contains("another repository"), "{}", r.stderr);
        v.run(&["wal-push", "--async", &path(6)]).ok();
    }
    v.run(&["wal-fetch", &name(6), out_s]).ok();
    assert!(std::fs::read(&out).unwrap() == segment(6));

    // A socket that another user planted where this user's agent would listen is
    // never trusted with a segment.
    if v.run_as.is_some() {
        let pid = v.agent_pid().expect("an agent");
        assert!(kill("-KILL", pid));
        let deadline = Instant::now() + Duration::from_secs(10);
        while common::vault::alive(pid) {
            assert!(Instant::now() < deadline, "agent {pid} stayed");
            std::thread::sleep(Duration::from_millis(50));
        }
        let dir = std::fs::read_dir(v.cache.join("agents"))
            .unwrap()
            .flatten()
            .next()
            .unwrap()
            .path();
        let socket = dir.join("agent.sock");
        let _ = std::fs::remove_file(&socket);
        let planted = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::write(pg_wal.join(name(7)), segment(7)).unwrap();
        let r = v.run(&["wal-push", "--async", &path(7)]);
        assert_ne!(r.code, 0, "a planted socket was trusted");
        assert!(r.stderr.contains("another user"), "{}", r.stderr);
        drop(planted);
        std::fs::remove_file(&socket).unwrap();
        v.run(&["wal-push", "--async", &path(7)]).ok();
    }
    let next = v.agent_pid().expect("an agent");

    // An agent whose socket is gone (its cache removed) leaves.
    std::fs::remove_dir_all(v.cache.join("agents")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while common::vault::alive(next) {
        assert!(Instant::now() < deadline, "agent {next} stayed");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_target_after_a_promotion_is_reached_through_the_new_timeline() {
    let (pg, v) = archiving_cluster();
    pg.create_db("footdash");
    pg.psql("footdash", "CREATE TABLE marks (tag text)");
    v.run(&["backup", "--base"]).ok();
    pg.psql("footdash", "INSERT INTO marks VALUES ('A')");
    switch_and_wait_archived(&pg);
    // The primary is lost; a copy restored from the archive is promoted (timeline 2)
    // and archives into the same repository.
    drop(pg);
    let populate = |dir: &Path| {
        v.run(&["restore", "--pgdata", dir.to_str().unwrap(), "--latest"])
            .ok();
    };
    let promoted = PgCluster::start_restored(&populate, &["archive_mode = on"]);
    promoted.wait_until_promoted();
    let timeline_now = "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)";
    assert_eq!(promoted.psql("postgres", timeline_now), "00000002");
    promoted.psql("footdash", "INSERT INTO marks VALUES ('B')");
    std::thread::sleep(Duration::from_millis(1100));
    let target = server_time(&promoted);
    std::thread::sleep(Duration::from_millis(1100));
    promoted.psql("footdash", "INSERT INTO marks VALUES ('C')");
    switch_and_wait_archived(&promoted);
    let list = v.run(&["wal", "list", "--json"]).ok().json();
    assert_eq!(list["systems"][0]["timelines"][1]["timeline"], 2, "{list}");
    assert_eq!(
        list["systems"][0]["timelines"][1]["history_file"], true,
        "{list}"
    );

    // From the base backup of timeline 1, across the switch, to a time on timeline 2.
    let populate = |dir: &Path| {
        v.run(&[
            "restore",
            "--pgdata",
            dir.to_str().unwrap(),
            "--target-time",
            &target,
        ])
        .ok();
        let conf = std::fs::read_to_string(dir.join("postgresql.auto.conf")).unwrap();
        assert!(conf.contains("recovery_target_timeline = '2'"), "{conf}");
    };
    let restored = PgCluster::start_restored(&populate, &["archive_mode = off"]);
    restored.wait_until_promoted();
    assert_eq!(tags(&restored), "A,B");
    // And to the end of the archive: everything timeline 2 committed.
    let restored = restore_and_start(&v, &["--latest"]);
    assert_eq!(tags(&restored), "A,B,C");
}

/// Starts `wal-receive --create-slot --partial-interval 1s -v` for `pg` into `v`,
/// logging to a file, and waits until its slot is active. Returns the process and
/// its log.
/// Waits until the wal-receive logging to `log` has stored `segment`, then stops it
/// (SIGTERM) and checks that it left cleanly.
fn stop_wal_receive_once_stored(mut receiver: std::process::Child, log: &Path, segment: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(log)
        .unwrap()
        .contains(&format!("Stored streamed {segment}"))
    {
        assert!(
            Instant::now() < deadline,
            "wal-receive did not store {segment}:\n{}",
            std::fs::read_to_string(log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(kill("-TERM", receiver.id()));
    assert!(receiver.wait().unwrap().success());
}

fn start_wal_receive(v: &Vault, pg: &PgCluster) -> (std::process::Child, std::path::PathBuf) {
    let log = v.dir.path().join("wal-receive.log");
    let receiver = v
        .command(&[
            "wal-receive",
            "--create-slot",
            "--partial-interval",
            "1s",
            "-v",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while pg.psql(
        "postgres",
        "SELECT count(*) FROM pg_replication_slots WHERE active",
    ) != "1"
    {
        assert!(
            Instant::now() < deadline,
            "no active slot: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (receiver, log)
}

#[test]
fn wal_receive_loses_at_most_a_partial_interval_when_the_primary_dies() {
    // A primary that archives nothing: its WAL reaches the repository only through
    // wal-receive.
    let pg = PgCluster::start_with(&[
        "wal_level = replica",
        "max_wal_senders = 4",
        "max_replication_slots = 4",
    ]);
    let mut v = Vault::for_server(PgCluster::server_user());
    v.use_pg(&pg);
    pg.psql("postgres", "CREATE TABLE ticks (id int PRIMARY KEY)");
    let (mut receiver, log) = start_wal_receive(&v, &pg);
    v.run(&["backup", "--base"]).ok();

    // Commits, one at a time, each acknowledged before the next; then the primary
    // dies in the middle of a segment.
    let started = Instant::now();
    let mut acked = 0;
    let mut midway = None;
    while started.elapsed() < Duration::from_secs(4) {
        pg.psql(
            "postgres",
            &format!("INSERT INTO ticks VALUES ({})", acked + 1),
        );
        acked += 1;
        if midway.is_none() && started.elapsed() > Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(20));
            midway = Some((acked, server_time(&pg)));
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let (midway_acked, midway_time) = midway.expect("two seconds passed");
    let per_second = acked as f64 / started.elapsed().as_secs_f64();
    pg.crash();
    std::thread::sleep(Duration::from_secs(3));
    assert!(kill("-TERM", receiver.id()));
    let status = receiver.wait().unwrap();
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "wal-receive: {status}\n{said}");
    let list = v.run(&["wal", "list", "--json"]).ok().json();
    // One copy stays: of the segment being written; the copies that newer ones or
    // the completed segments superseded are gone.
    assert_eq!(
        list["systems"][0]["timelines"][0]["streamed_files"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "{list}\n{said}"
    );

    // status and metrics show the recovery point: the streamed copy, newer than
    // the newest complete segment.
    let status = v.run(&["status", "--json"]).ok().json();
    let w = &status["wal"][0];
    assert!(
        w["newest_streamed"]
            .as_str()
            .unwrap()
            .ends_with(".streamed"),
        "{status}"
    );
    assert!(
        w["rpo_seconds"].as_f64().unwrap() <= w["lag_seconds"].as_f64().unwrap(),
        "{status}"
    );
    let metrics = v.run(&["metrics"]).ok().out();
    assert!(
        metrics.contains(&format!(
            "pgvault_wal_newest_stored_timestamp_seconds{{system=\"{}\",timeline=\"00000001\"}}",
            w["system_identifier"].as_str().unwrap()
        )),
        "{metrics}"
    );

    // Everything up to the last stored copy of the segment being written comes back.
    let restored = restore_and_start(&v, &["--latest"]);
    let got: i64 = restored
        .psql("postgres", "SELECT count(*) FROM ticks")
        .parse()
        .unwrap();
    let max: i64 = restored
        .psql("postgres", "SELECT coalesce(max(id), 0) FROM ticks")
        .parse()
        .unwrap();
    assert_eq!(got, max, "the restored commits have a gap");
    let lost = acked - max;
    assert!(
        lost >= 0 && (lost as f64) <= per_second * 1.0 + 1.0,
        "lost {lost} of {acked} acknowledged commits ({per_second:.0}/s, interval 1s)\n{said}"
    );
    eprintln!("acknowledged {acked}, restored {max}, lost {lost}");

    // A time inside the segment that was being written is reachable too: exactly
    // the commits before it.
    let populate = |dir: &Path| {
        v.run(&[
            "restore",
            "--pgdata",
            dir.to_str().unwrap(),
            "--target-time",
            &midway_time,
        ])
        .ok();
    };
    let restored = PgCluster::start_restored(&populate, &["archive_mode = off"]);
    restored.wait_until_promoted();
    assert_eq!(
        restored.psql("postgres", "SELECT count(*) FROM ticks"),
        midway_acked.to_string()
    );
}

#[test]
fn base_backups_and_dumps_taken_from_a_hot_standby_restore_with_the_primary_s_archive() {
    let (pg, mut v) = archiving_cluster();
    pg.create_footdash("footdash", 1);
    pg.psql("footdash", "CREATE TABLE marks (tag text)");
    pg.psql("footdash", "INSERT INTO marks VALUES ('A')");
    // A streaming standby of the primary (archive_mode = on does not archive there).
    let populate = |dir: &Path| {
        let mut c = pg.command("pg_basebackup");
        c.args([
            "-D",
            dir.to_str().unwrap(),
            "-R",
            "-X",
            "stream",
            "--checkpoint=fast",
        ]);
        if let Some((uid, gid)) = pg.run_as() {
            use std::os::unix::process::CommandExt;
            c.uid(uid).gid(gid);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "pg_basebackup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let standby = PgCluster::start_restored(&populate, &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while standby
        .command("psql")
        .args([
            "-X",
            "-At",
            "-d",
            "footdash",
            "-c",
            "SELECT count(*) FROM marks",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() != "1")
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "standby did not catch up");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(standby.psql("postgres", "SELECT pg_is_in_recovery()"), "t");

    // Every kind of backup pointed at the standby.
    v.use_pg(&standby);
    let base = v.run(&["backup", "--base", "--json"]).ok().json();
    let dump = v.run(&["backup", "--db", "footdash", "--json"]).ok().json();
    let from_pgdata = v
        .run(&[
            "backup",
            "--base",
            "--pgdata",
            standby.data_dir().to_str().unwrap(),
            "--json",
        ])
        .ok()
        .json();
    assert_eq!(from_pgdata["bad_pages"], serde_json::json!([]));
    let label = v
        .file_in_stream(from_pgdata["snapshot_id"].as_str().unwrap(), "backup_label")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&label).contains("BACKUP FROM: standby"),
        "{}",
        String::from_utf8_lossy(&label)
    );
    // pg_control is read after every other file of the data directory: recovery of a
    // standby's backup ends at its minimum recovery point.
    let names = v.stream_names(from_pgdata["snapshot_id"].as_str().unwrap());
    let after: Vec<&String> = names
        .iter()
        .skip_while(|n| n.as_str() != "global/pg_control")
        .collect();
    assert_eq!(
        after,
        ["global/pg_control", "backup_label", "backup_manifest"],
        "{names:?}"
    );
    assert_eq!(
        base["base"]["system_identifier"].as_str().unwrap(),
        pg.psql(
            "postgres",
            "SELECT system_identifier FROM pg_control_system()"
        )
    );

    // The primary goes on and archives; the standby's base backup recovers with it.
    pg.psql("footdash", "INSERT INTO marks VALUES ('B')");
    switch_and_wait_archived(&pg);
    let id = from_pgdata["snapshot_id"].as_str().unwrap();
    let restored = restore_and_start(&v, &["--latest", "--base", id]);
    assert_eq!(tags(&restored), "A,B");
    assert_eq!(restored.row_counts("footdash"), pg.row_counts("footdash"));
    restored.stop_fast();
    let id = base["snapshot_id"].as_str().unwrap();
    let restored = restore_and_start(&v, &["--latest", "--base", id]);
    assert_eq!(tags(&restored), "A,B");
    assert_eq!(
        restored.row_counts("footdash")["users"],
        pg.row_counts("footdash")["users"]
    );

    // The dump taken on the standby restores with pg_restore.
    let file = v.dir.path().join("standby.dump");
    std::fs::write(&file, v.cat(dump["snapshot_id"].as_str().unwrap())).unwrap();
    restored.create_db("scratch");
    let out = restored
        .command("pg_restore")
        .args(["-d", "scratch", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        restored.psql("scratch", "SELECT string_agg(tag, ',') FROM marks"),
        "A"
    );
}

#[test]
fn two_clusters_archive_into_one_repository_and_each_is_restored_to_a_time() {
    let (a, mut v) = archiving_cluster();
    // A second cluster archives into the same repository: its first segments have
    // the names cluster A archives too.
    let b = archiving_beside(&v);
    let sysid = |pg: &PgCluster| {
        pg.psql(
            "postgres",
            "SELECT system_identifier FROM pg_control_system()",
        )
    };
    let (sys_a, sys_b) = (sysid(&a), sysid(&b));
    assert_ne!(sys_a, sys_b);
    let mut targets = Vec::new();
    let mut bases = Vec::new();
    for (pg, tag) in [(&a, "A"), (&b, "B")] {
        v.use_pg(pg);
        pg.create_footdash("footdash", 1);
        pg.psql("footdash", "CREATE TABLE marks (tag text)");
        bases.push(v.run(&["backup", "--base", "--json"]).ok().json());
        pg.psql("footdash", &format!("INSERT INTO marks VALUES ('{tag}1')"));
        std::thread::sleep(Duration::from_millis(1100));
        targets.push(server_time(pg));
        std::thread::sleep(Duration::from_millis(1100));
        pg.psql("footdash", &format!("INSERT INTO marks VALUES ('{tag}2')"));
        switch_and_wait_archived(pg);
    }
    for pg in [&a, &b] {
        assert_eq!(
            pg.psql("postgres", "SELECT failed_count FROM pg_stat_archiver"),
            "0",
            "{}",
            pg.log()
        );
    }
    // Both base backups are of their own systems, and the archive lists each
    // system's WAL apart, the same names in both.
    assert_eq!(bases[0]["base"]["system_identifier"], sys_a.as_str());
    assert_eq!(bases[1]["base"]["system_identifier"], sys_b.as_str());
    let list = v.run(&["wal", "list", "--json"]).ok().json();
    let systems: Vec<&str> = list["systems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["system_identifier"].as_str().unwrap())
        .collect();
    let mut expected = vec![sys_a.as_str(), sys_b.as_str()];
    expected.sort();
    assert_eq!(systems, expected, "{list}");
    let first = |i: usize| list["systems"][i]["timelines"][0]["ranges"][0]["first"].clone();
    assert_eq!(
        first(0),
        first(1),
        "both archived the same first name: {list}"
    );

    // Which cluster to restore must be said: the newest base is no answer.
    let target = v.dir.path().join("restore-any");
    let e = v
        .run(&["restore", "--pgdata", target.to_str().unwrap(), "--latest"])
        .fails();
    assert!(
        e.contains("2 database systems") && e.contains(&sys_a) && e.contains(&sys_b),
        "{e}"
    );
    assert!(!target.exists());

    // Each to its own target: chosen by system, or by base backup.
    let base_b = bases[1]["snapshot_id"].as_str().unwrap();
    let choices = [["--system-id", sys_a.as_str()], ["--base", base_b]];
    for (i, (source, tag)) in [(&a, "A1"), (&b, "B1")].into_iter().enumerate() {
        let mut args = vec!["--target-time", targets[i].as_str()];
        args.extend(choices[i]);
        let restored = restore_and_start(&v, &args);
        assert_eq!(tags(&restored), tag);
        assert_eq!(sysid(&restored), sysid(source));
        let (mut got, mut want) = (
            restored.row_counts("footdash"),
            source.row_counts("footdash"),
        );
        got.remove("marks");
        want.remove("marks");
        assert_eq!(got, want);
    }

    // The mount shows each system's WAL in its own directory; a name both
    // archived is in neither's place at the top.
    let name = first(0).as_str().unwrap().to_string();
    // Mounted by root: FUSE needs /dev/fuse.
    let server_user = v.run_as.take();
    let mnt = Mount::start(&v, &v.dir.path().join("mnt"), &[]);
    let from_a = std::fs::read(mnt.join(&format!("wal/{sys_a}/{name}"))).unwrap();
    let from_b = std::fs::read(mnt.join(&format!("wal/{sys_b}/{name}"))).unwrap();
    assert_ne!(from_a, from_b);
    assert_eq!(
        &from_a[24..32],
        &sys_a.parse::<u64>().unwrap().to_le_bytes()
    );
    assert!(!mnt.join(&format!("wal/{name}")).exists());
    drop(mnt);

    // A restore_command without --system-id finds the system in pg_control (run
    // by root here, who owns the copy).
    let dest = v.dir.path().join("fetch");
    std::fs::create_dir_all(dest.join("pg_wal")).unwrap();
    std::fs::create_dir_all(dest.join("global")).unwrap();
    std::fs::copy(
        b.data_dir().join("global/pg_control"),
        dest.join("global/pg_control"),
    )
    .unwrap();
    let got = dest.join("pg_wal/RECOVERYXLOG");
    v.run(&["wal-fetch", &name, got.to_str().unwrap()]).ok();
    assert_eq!(std::fs::read(&got).unwrap(), from_b);
    let e = v
        .run(&["wal-fetch", &name, dest.join("elsewhere").to_str().unwrap()])
        .fails();
    assert!(e.contains("--system-id"), "{e}");
    v.run_as = server_user;

    // Retention keeps each cluster apart, though both base backups carry the label
    // "cluster": a new base backup of A lets A's older one and the WAL before the
    // new one go, while B's only base backup and all its WAL stay.
    v.use_pg(&a);
    v.run(&["backup", "--base"]).ok();
    switch_and_wait_archived(&a);
    let out = v.run(&["forget", "--keep-last", "1", "--json"]).ok().json();
    assert_eq!(out["removed"], 1, "{out}");
    assert!(out["wal_files_removed"].as_u64().unwrap() > 0, "{out}");
    // Each system's WAL now starts where its oldest surviving base backup does.
    let after = v.run(&["wal", "list", "--json"]).ok().json();
    for s in after["systems"].as_array().unwrap() {
        let tl = &s["timelines"][0];
        let first = tl["ranges"][0]["first"].as_str().unwrap();
        let backup_files = tl["backup_files"].as_array().unwrap();
        assert_eq!(backup_files.len(), 1, "{after}");
        assert_eq!(first, &backup_files[0].as_str().unwrap()[..24], "{after}");
        if s["system_identifier"] == sys_b.as_str() {
            let before = list["systems"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["system_identifier"] == sys_b.as_str())
                .unwrap();
            assert_eq!(
                tl["ranges"][0]["last"], before["timelines"][0]["ranges"][0]["last"],
                "{after}"
            );
        } else {
            assert!(first > name.as_str(), "{after}");
        }
    }
    let latest_b = restore_and_start(&v, &["--latest", "--system-id", &sys_b]);
    assert_eq!(tags(&latest_b), "B1,B2");
}

#[test]
fn wal_receive_beside_archive_command_stores_each_segment_once_without_a_conflict() {
    // The primary archives with wal-push and is streamed by wal-receive, into one
    // repository: the same segments arrive twice, with the same bytes.
    let (pg, mut v) = archiving_cluster();
    v.use_pg(&pg);
    let (receiver, log) = start_wal_receive(&v, &pg);
    pg.psql("postgres", "CREATE TABLE t (x int)");
    let mut last = String::new();
    for i in 0..4 {
        pg.psql(
            "postgres",
            &format!(
                "INSERT INTO t SELECT generate_series(1, {})",
                1000 * (i + 1)
            ),
        );
        last = switch_and_wait_archived(&pg);
    }
    // wal-receive has stored the last switched segment too.
    stop_wal_receive_once_stored(receiver, &log, &last);
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(!said.contains("Cannot store"), "{said}");
    let status = v.run(&["status", "--json"]).ok().json();
    assert_eq!(
        status["wal_archiving"]["failures_total"], 0,
        "{status}\n{said}"
    );
    // The receiver reported its slot: how much WAL it makes the primary keep.
    let r = &status["wal_receivers"][0];
    assert_eq!(r["slot"], "pgvault", "{status}");
    assert!(r["error"].is_null(), "{status}");
    let retained = r["slot_retained_bytes"].as_u64().expect("a number");
    let (from, to) = (
        r["slot_restart_lsn"].as_str().unwrap(),
        r["server_lsn"].as_str().unwrap(),
    );
    assert_eq!(
        pg.psql(
            "postgres",
            &format!("SELECT pg_wal_lsn_diff('{to}', '{from}')::bigint")
        ),
        retained.to_string(),
        "{status}"
    );
    // A slot only moves forward: the one reported is at or behind the slot now.
    let reported = r["slot_restart_lsn"].as_str().unwrap();
    assert_eq!(
        pg.psql(
            "postgres",
            &format!(
                "SELECT pg_wal_lsn_diff(restart_lsn, '{reported}') >= 0 \
                 FROM pg_replication_slots WHERE slot_name = 'pgvault'"
            ),
        ),
        "t"
    );
    assert!(r["age_seconds"].as_f64().unwrap() < 120.0, "{status}");
    let metrics = v.run(&["metrics"]).ok().out();
    assert!(
        metrics.contains(&format!(
            "pgvault_wal_receive_slot_retained_bytes{{host=\"{}\",slot=\"pgvault\"}} {retained}",
            r["hostname"].as_str().unwrap()
        )),
        "{metrics}"
    );
    let list = v.run(&["wal", "list", "--json"]).ok().json();
    assert_eq!(
        list["systems"][0]["timelines"][0]["gaps"]
            .as_array()
            .unwrap()
            .len(),
        0,
        "{list}"
    );
    // A run that stops leaves a copy of the segment being written.
    let copies_of = |list: &serde_json::Value, seg: &str| -> usize {
        list["systems"][0]["timelines"][0]["streamed_files"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f.as_str().unwrap().starts_with(seg))
            .count()
    };
    let (mut receiver, _) = start_wal_receive(&v, &pg);
    pg.psql("postgres", "INSERT INTO t VALUES (1)");
    // After the row: on a segment boundary pg_walfile_name names the segment before.
    let current = pg.psql(
        "postgres",
        "SELECT pg_walfile_name(pg_current_wal_insert_lsn())",
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(kill("-TERM", receiver.id()));
    assert!(receiver.wait().unwrap().success());
    let list = v.run(&["wal", "list", "--json"]).ok().json();
    assert!(copies_of(&list, &current) > 0, "{current}: {list}");

    // A second run, after a change of options left WAL in another spool: it warns
    // of that spool, and once it stores the segment the first run left a copy of,
    // the copy goes.
    let stale = v.cache.join("receive").join("0123456789abcdef");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("000000010000000000000001"), b"x").unwrap();
    if let Some((uid, gid)) = v.run_as {
        std::os::unix::fs::chown(&stale, Some(uid), Some(gid)).unwrap();
    }
    let (receiver, log) = start_wal_receive(&v, &pg);
    switch_and_wait_archived(&pg);
    stop_wal_receive_once_stored(receiver, &log, &current);
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        said.contains(&format!("Spool {}", stale.display())) && said.contains("holds 1 WAL files"),
        "{said}"
    );
    let list = v.run(&["wal", "list", "--json"]).ok().json();
    assert_eq!(copies_of(&list, &current), 0, "{list}");
}
