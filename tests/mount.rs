//! End-to-end tests of `pgvault mount` through real FUSE mounts (/dev/fuse, run as
//! root here): the tree, byte-exact random and concurrent reads, pg_restore straight
//! from the mount, backups appearing while mounted, corruption, and mountpoint trouble.

mod common;

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use common::fixtures::{dumps, Rng};
use common::mount::{is_mounted, Mount};
use common::pg::PgCluster;
use common::signal;
use common::vault::{Vault, SMALL_CHUNKS};

fn small_chunk_vault() -> Vault {
    let v = Vault::local();
    v.init_with(SMALL_CHUNKS);
    v
}

/// `backup --stdin` of a file as database `db` at `time`; returns the snapshot id.
fn backup_at(v: &Vault, db: &str, file: &Path, time: &str) -> String {
    v.import_id(db, file, Some(time))
}

fn mountpoint(v: &Vault) -> PathBuf {
    v.dir.path().join("mnt")
}

/// Reads up to `len` bytes at `offset`, looping over short reads until EOF.
fn pread(f: &File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        let n = f.read_at(&mut buf[got..], offset + got as u64)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    buf.truncate(got);
    Ok(buf)
}

fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Retries `f` until it returns true or `patience` runs out.
fn eventually(patience: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + patience;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn system_time(rfc3339: &str) -> SystemTime {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .into()
}

fn by_date_dir(time: &str, db: &str) -> String {
    // 2026-11-04T02:00:00Z -> by-date/2026/11/04/020000Z-<db>-dump
    let (date, clock) = time.trim_end_matches('Z').split_once('T').unwrap();
    let mut d = date.split('-');
    format!(
        "by-date/{}/{}/{}/{}Z-{db}-dump",
        d.next().unwrap(),
        d.next().unwrap(),
        d.next().unwrap(),
        clock.replace(':', "")
    )
}

#[test]
fn pg_restore_reads_dumps_straight_from_the_mount() {
    let pg = PgCluster::start();
    pg.create_footdash("footdash", 6);
    let mut v = small_chunk_vault();
    v.use_pg(&pg);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("file.dump");
    pg.pg_dump_file("footdash", &file);
    let original = std::fs::read(&file).unwrap();
    let from_file = v.backup_file("footdash", &file);
    // pgvault runs pg_dump into a pipe: the stored dump gets its data offsets filled in.
    let piped = v.run(&["backup", "--db", "footdash", "--json"]).ok().json();
    assert_eq!(piped["dump_offsets_filled"], true, "{piped}");

    let m = Mount::start(&v, &mountpoint(&v), &[]);
    let first = format!(
        "snapshots/{}/footdash.dump",
        from_file["snapshot_id"].as_str().unwrap()
    );
    assert_eq!(
        std::fs::read(m.join(&first)).unwrap(),
        original,
        "the mounted file must be the dump byte for byte"
    );

    let latest = m.join("latest/footdash.dump");
    let list = pg
        .command("pg_restore")
        .arg("-l")
        .arg(&latest)
        .output()
        .unwrap();
    assert!(list.status.success(), "{list:?}");
    let toc = String::from_utf8_lossy(&list.stdout);
    assert!(toc.contains("TABLE DATA public users"), "{toc}");
    let printed = pg
        .command("pg_restore")
        .args(["-f", "-"])
        .arg(&latest)
        .output()
        .unwrap();
    assert!(printed.status.success(), "{printed:?}");
    assert_same_bytes(
        &without_restrict_key(&std::fs::read(m.join("latest/footdash.sql")).unwrap()).0,
        &without_restrict_key(&printed.stdout).0,
        "latest/footdash.sql",
    );

    let source = pg.row_counts("footdash");
    pg.create_db("only_users");
    let out = pg
        .command("pg_restore")
        .args(["-t", "users", "-d", "only_users"])
        .arg(&latest)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        pg.row_counts("only_users"),
        [("users".to_string(), source["users"])]
            .into_iter()
            .collect()
    );

    // -j needs a seekable file with data offsets: the whole point of the mount.
    let at_now = format!(
        "at/{}/footdash.dump",
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    pg.create_db("everything");
    let out = pg
        .command("pg_restore")
        .args(["-j", "2", "-d", "everything"])
        .arg(m.join(&at_now))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(pg.row_counts("everything"), source);
    assert!(!m.log().contains("ERROR"), "{}", m.log());
}

#[test]
fn random_offset_reads_are_byte_exact() {
    let d = dumps();
    let v = small_chunk_vault();
    let id = backup_at(&v, "footdash", &d.footdash, "2026-11-04T02:00:00Z");
    let original = std::fs::read(&d.footdash).unwrap();
    let len = original.len() as u64;
    let m = Mount::start(&v, &mountpoint(&v), &["--cache-size", "1MiB"]);
    let paths = [
        m.join("by-date/2026/11/04/020000Z-footdash-dump/footdash.dump"),
        m.join("by-db/footdash/2026-11-04T02:00:00Z-dump/footdash.dump"),
        m.join(&format!("snapshots/{id}/footdash.dump")),
        m.join("at/2026-11-04T02:00:00Z/footdash.dump"),
    ];
    let mut rng = Rng::seeded(0x9e37_79b9_7f4a_7c15);
    for round in 0..1500 {
        // A fresh descriptor now and then: each open is a new handle in pgvault.
        let f = File::open(&paths[round % paths.len()]).unwrap();
        let offset = match rng.below(10) {
            0 => len - rng.below(70_000).min(len), // near the end
            1 => len + rng.below(100_000),         // past the end
            2 => rng.below(200),                   // the header
            _ => rng.below(len),
        };
        let size = match rng.below(4) {
            0 => 1 + rng.below(16),
            1 => 1 + rng.below(4096),
            // Larger than the largest chunk: crosses several chunk boundaries.
            _ => 1 + rng.below(300_000),
        } as usize;
        let got = pread(&f, offset, size).unwrap();
        let start = offset.min(len) as usize;
        let end = (offset + size as u64).min(len) as usize;
        assert_eq!(
            got.len(),
            end - start,
            "read of {size} at {offset} of a {len}-byte file"
        );
        assert!(
            got == original[start..end],
            "bytes differ reading {size} at {offset}"
        );
    }
    assert_eq!(
        std::fs::metadata(&paths[0]).unwrap().len(),
        len,
        "the size in stat is exact"
    );
}

#[test]
fn concurrent_readers_all_get_exact_bytes() {
    let d = dumps();
    let v = small_chunk_vault();
    backup_at(&v, "footdash", &d.footdash, "2026-11-04T02:00:00Z");
    backup_at(&v, "other", &d.other, "2026-11-04T03:00:00Z");
    let m = Mount::start(&v, &mountpoint(&v), &["--cache-size", "2MiB"]);
    let files = [
        (
            m.join("by-db/footdash/2026-11-04T02:00:00Z-dump/footdash.dump"),
            std::fs::read(&d.footdash).unwrap(),
        ),
        (
            m.join("by-db/other/2026-11-04T03:00:00Z-dump/other.dump"),
            std::fs::read(&d.other).unwrap(),
        ),
    ];
    std::thread::scope(|s| {
        let mut workers = Vec::new();
        for t in 0..8u64 {
            let (path, want) = &files[(t % 3 == 2) as usize];
            workers.push(s.spawn(move || {
                if t < 2 {
                    // Whole-file sequential readers, racing the random ones.
                    let mut got = Vec::new();
                    File::open(path).unwrap().read_to_end(&mut got).unwrap();
                    assert!(got == *want, "sequential reader {t} got other bytes");
                    return;
                }
                let f = File::open(path).unwrap();
                let mut rng = Rng::seeded(t * 7919 + 1);
                let len = want.len() as u64;
                for _ in 0..300 {
                    let offset = rng.below(len);
                    let size = 1 + rng.below(200_000) as usize;
                    let got = pread(&f, offset, size).unwrap();
                    let end = (offset as usize + size).min(want.len());
                    assert!(
                        got == want[offset as usize..end],
                        "reader {t}: bytes differ at {offset}+{size}"
                    );
                }
            }));
        }
        for w in workers {
            w.join().unwrap();
        }
    });
}

#[test]
fn the_tree_shows_every_backup_point_read_only() {
    let d = dumps();
    let v = small_chunk_vault();
    let a = backup_at(&v, "footdash", &d.footdash, "2026-11-04T02:00:00Z");
    let b = backup_at(&v, "other", &d.other, "2026-11-05T14:30:05Z");
    let m = Mount::start(&v, &mountpoint(&v), &[]);

    assert_eq!(
        names(&m.path),
        ["at", "by-date", "by-db", "latest", "snapshots", "wal"]
            .map(String::from)
            .into()
    );
    assert_eq!(
        std::fs::read_link(m.join("latest")).unwrap(),
        Path::new("by-date/2026/11/05/143005Z-other-dump")
    );
    assert_eq!(
        names(&m.join("by-date/2026/11")),
        ["04", "05"].map(String::from).into()
    );
    let point_a = m.join(&by_date_dir("2026-11-04T02:00:00Z", "footdash"));
    assert_eq!(
        names(&point_a),
        [
            "footdash.dump",
            "footdash.sql",
            "manifest.json",
            "schema.sql",
            "tables",
            "toc.txt"
        ]
        .map(String::from)
        .into()
    );
    assert_eq!(
        names(&m.join("by-db")),
        ["footdash", "other"].map(String::from).into()
    );
    assert_eq!(
        names(&m.join("by-db/other")),
        ["latest", "2026-11-05T14:30:05Z-dump"]
            .map(String::from)
            .into()
    );
    assert_eq!(
        std::fs::read_link(m.join("by-db/footdash/latest")).unwrap(),
        Path::new("2026-11-04T02:00:00Z-dump")
    );
    assert_eq!(names(&m.join("snapshots")), [a.clone(), b.clone()].into());
    assert_eq!(
        std::fs::read(m.join("latest/other.dump")).unwrap(),
        std::fs::read(&d.other).unwrap()
    );

    // stat: exact sizes, the backup point's time, read-only modes, our own uid.
    let file = point_a.join("footdash.dump");
    let md = std::fs::metadata(&file).unwrap();
    assert_eq!(md.len(), std::fs::metadata(&d.footdash).unwrap().len());
    assert_eq!(md.permissions().mode() & 0o7777, 0o440);
    assert_eq!(md.modified().unwrap(), system_time("2026-11-04T02:00:00Z"));
    let me = std::fs::metadata("/proc/self").unwrap();
    assert_eq!((md.uid(), md.gid()), (me.uid(), me.gid()));
    let dir = std::fs::metadata(&point_a).unwrap();
    assert!(dir.is_dir());
    assert_eq!(dir.permissions().mode() & 0o7777, 0o550);

    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(point_a.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["id"], a.as_str());
    assert_eq!(manifest["db"], "footdash");
    assert_eq!(manifest["kind"], "dump");
    assert_eq!(manifest["time"], "2026-11-04T02:00:00Z");
    assert_eq!(manifest["size_bytes"].as_u64().unwrap(), md.len());
    assert!(manifest["chunk_count"].as_u64().unwrap() > 50, "{manifest}");
    assert_eq!(
        std::fs::metadata(point_a.join("manifest.json"))
            .unwrap()
            .len(),
        std::fs::read(point_a.join("manifest.json")).unwrap().len() as u64
    );

    // Nothing can be written, created, renamed or removed.
    let erofs = |r: std::io::Result<()>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.raw_os_error(), Some(libc_erofs()), "{what}: {e}");
    };
    erofs(
        std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .map(drop),
        "open for writing",
    );
    erofs(std::fs::write(m.join("new-file"), b"x"), "create");
    erofs(std::fs::create_dir(m.join("new-dir")), "mkdir");
    erofs(std::fs::remove_file(&file), "unlink");
    erofs(std::fs::rename(&file, point_a.join("moved.dump")), "rename");
    erofs(
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)),
        "chmod",
    );
    assert!(!m.log().contains("ERROR"), "{}", m.log());
}

/// EROFS without a libc dependency in the tests.
fn libc_erofs() -> i32 {
    30
}

#[test]
fn at_resolves_the_newest_point_at_or_before_a_time() {
    let d = dumps();
    let v = small_chunk_vault();
    let footdash = std::fs::read(&d.footdash).unwrap();
    let other = std::fs::read(&d.other).unwrap();
    backup_at(&v, "footdash", &d.footdash, "2026-11-04T02:00:00Z");
    backup_at(&v, "other", &d.other, "2026-11-05T02:00:00Z");
    // A later footdash point, with other bytes so that the two can be told apart.
    backup_at(&v, "footdash", &d.other, "2026-11-06T02:00:00Z");
    let m = Mount::start(&v, &mountpoint(&v), &[]);

    let at = |t: &str| m.join(&format!("at/{t}"));
    let missing = std::fs::read_dir(at("2026-11-04T01:59:59Z")).unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::NotFound, "before every point");
    assert_eq!(
        std::fs::read_dir(at("not-a-time")).unwrap_err().kind(),
        ErrorKind::NotFound
    );

    // Exactly at the first point, and between the first and second (another zone).
    let beside = |db: &str| {
        [".dump", ".schema.sql", ".sql", ".tables", ".toc.txt"].map(|s| format!("{db}{s}"))
    };
    for t in ["2026-11-04T02:00:00Z", "2026-11-05T01:00:00+01:00"] {
        assert_eq!(names(&at(t)), beside("footdash").into(), "{t}");
        assert!(std::fs::read(at(t).join("footdash.dump")).unwrap() == footdash);
    }
    // Between the second and third, with fractional seconds.
    let t = "2026-11-05T12:00:00.5Z";
    assert_eq!(
        names(&at(t)),
        [beside("footdash"), beside("other")]
            .concat()
            .into_iter()
            .collect()
    );
    assert!(std::fs::read(at(t).join("footdash.dump")).unwrap() == footdash);
    assert!(std::fs::read(at(t).join("other.dump")).unwrap() == other);
    // After the last: the newest footdash point.
    let t = "2030-01-01T00:00:00Z";
    assert!(std::fs::read(at(t).join("footdash.dump")).unwrap() == other);
    assert!(std::fs::read(at(t).join("other.dump")).unwrap() == other);
    assert_eq!(
        std::fs::metadata(at(t).join("footdash.dump"))
            .unwrap()
            .modified()
            .unwrap(),
        system_time("2026-11-06T02:00:00Z")
    );
    // Listing at/ shows the times worth asking for.
    assert_eq!(
        names(&m.join("at")),
        [
            "2026-11-04T02:00:00Z",
            "2026-11-05T02:00:00Z",
            "2026-11-06T02:00:00Z"
        ]
        .map(String::from)
        .into()
    );
}

#[test]
fn a_backup_made_while_mounted_shows_up() {
    let d = dumps();
    let v = small_chunk_vault();
    backup_at(&v, "footdash", &d.footdash, "2026-11-04T02:00:00Z");
    let m = Mount::start(&v, &mountpoint(&v), &[]);
    assert_eq!(names(&m.join("by-date/2026/11")), ["04".to_string()].into());
    let far = m.join("at/2031-01-01T00:00:00Z/footdash.dump");
    assert!(std::fs::read(&far).unwrap() == std::fs::read(&d.footdash).unwrap());

    let id = backup_at(&v, "footdash", &d.other, "2026-11-07T09:15:00Z");
    let new_dir = by_date_dir("2026-11-07T09:15:00Z", "footdash");
    assert!(
        eventually(Duration::from_secs(10), || m.join(&new_dir).is_dir()),
        "{new_dir} did not appear"
    );
    assert_eq!(
        names(&m.join("by-date/2026/11")),
        ["04", "07"].map(String::from).into()
    );
    assert!(names(&m.join("by-db/footdash")).contains("2026-11-07T09:15:00Z-dump"));
    assert!(names(&m.join("snapshots")).contains(&id));
    assert!(names(&m.join("at")).contains("2026-11-07T09:15:00Z"));
    assert!(eventually(Duration::from_secs(5), || {
        std::fs::read_link(m.join("latest")).ok() == Some(PathBuf::from(&new_dir))
    }));
    let other = std::fs::read(&d.other).unwrap();
    assert!(std::fs::read(m.join("latest/footdash.dump")).unwrap() == other);
    assert!(eventually(Duration::from_secs(5), || {
        std::fs::read(&far).ok().as_ref() == Some(&other)
    }));
}

#[test]
fn a_corrupted_chunk_gives_eio_and_a_log_line_never_wrong_bytes() {
    let d = dumps();
    let v = small_chunk_vault();
    let id = backup_at(&v, "footdash", &d.footdash, "2026-11-04T02:00:00Z");
    let original = std::fs::read(&d.footdash).unwrap();
    // Flip one byte in the sealed part of a chunk from the middle of the list.
    let chunks = v.objects("chunks");
    let victim = &chunks[chunks.len() / 2];
    let mut bytes = std::fs::read(victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(victim, &bytes).unwrap();
    let chunk_hex = victim.file_name().unwrap().to_string_lossy().into_owned();

    let m = Mount::start(&v, &mountpoint(&v), &[]);
    let f = File::open(m.join("latest/footdash.dump")).unwrap();
    const PAGE: usize = 4096;
    let mut bad_pages = Vec::new();
    for (i, want) in original.chunks(PAGE).enumerate() {
        match pread(&f, (i * PAGE) as u64, PAGE) {
            Ok(got) => assert!(got == want, "page {i} read back other bytes"),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(5), "page {i}: {e}");
                bad_pages.push(i);
            }
        }
    }
    assert!(
        !bad_pages.is_empty(),
        "the damaged chunk must not read back"
    );
    // Only the pages the damaged chunk (at most 64 KiB) touches fail, wherever the
    // chunk occurs in the file.
    let runs = bad_pages.windows(2).filter(|w| w[1] != w[0] + 1).count() + 1;
    eprintln!(
        "{} of {} pages failed, in {runs} runs",
        bad_pages.len(),
        original.len().div_ceil(PAGE)
    );
    assert!(
        bad_pages.len() <= runs * (65536 / PAGE + 2),
        "{} pages failed in {runs} runs",
        bad_pages.len()
    );
    let mut all = Vec::new();
    let e = File::open(m.join("latest/footdash.dump"))
        .unwrap()
        .read_to_end(&mut all)
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(5), "{e}");
    let log = m.log();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains(&chunk_hex) && l.contains(&id)),
        "the log must name the snapshot and the chunk:\n{log}"
    );
}

#[test]
fn an_unreadable_manifest_leaves_only_its_snapshot_out() {
    let d = dumps();
    let v = small_chunk_vault();
    let good = backup_at(&v, "footdash", &d.footdash, "2026-11-04T02:00:00Z");
    let bad = backup_at(&v, "other", &d.other, "2026-11-05T02:00:00Z");
    let object = v.repo_path().join("snapshots").join(&bad);
    let mut bytes = std::fs::read(&object).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&object, &bytes).unwrap();
    // Without the index cache, which still holds the intact copy, the store decides.
    std::fs::remove_dir_all(&v.cache).unwrap();
    let m = Mount::start(&v, &mountpoint(&v), &[]);
    assert_eq!(names(&m.join("snapshots")), [good].into());
    assert!(
        std::fs::read(m.join("latest/footdash.dump")).unwrap()
            == std::fs::read(&d.footdash).unwrap()
    );
    let log = m.log();
    assert!(
        log.lines()
            .any(|l| l.contains("Leaving out snapshot") && l.contains(&bad)),
        "the log must name the unreadable snapshot:\n{log}"
    );
}

#[test]
fn mountpoint_problems_are_explained() {
    let v = small_chunk_vault();
    let mp = mountpoint(&v);

    let e = v.run(&["mount", mp.to_str().unwrap()]).fails();
    assert!(e.contains("does not exist") && e.contains("mnt"), "{e}");
    let file = v.dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let e = v.run(&["mount", file.to_str().unwrap()]).fails();
    assert!(e.contains("not a directory"), "{e}");

    // An empty repository mounts, with nothing in it yet.
    let mut first = Mount::start(&v, &mp, &[]);
    assert_eq!(
        names(&mp),
        ["at", "by-date", "by-db", "snapshots", "wal"]
            .map(String::from)
            .into()
    );
    let e = v.run(&["mount", mp.to_str().unwrap()]).fails();
    assert!(e.contains("busy") && e.contains("already mounted"), "{e}");

    // SIGTERM unmounts cleanly.
    signal(first.pid(), "TERM");
    assert!(first.wait_exit(Duration::from_secs(10)).success());
    assert!(!is_mounted(&first.path));
    drop(first);

    // A crashed mount leaves a stale mountpoint; mounting again says how to clear it.
    let mut crashed = Mount::start(&v, &mp, &[]);
    signal(crashed.pid(), "KILL");
    crashed.wait_exit(Duration::from_secs(10));
    assert!(is_mounted(&mp));
    let e = v.run(&["mount", mp.to_str().unwrap()]).fails();
    assert!(
        e.contains("stale") && e.contains(&format!("fusermount3 -uz {}", mp.display())),
        "{e}"
    );
    let cleared = std::process::Command::new("fusermount3")
        .args(["-u", "-z"])
        .arg(&mp)
        .status()
        .unwrap();
    assert!(cleared.success());
    drop(crashed);
    let _again = Mount::start(&v, &mp, &[]);
}

#[test]
fn sigterm_with_a_file_open_detaches_and_serves_until_it_is_closed() {
    let d = dumps();
    let v = small_chunk_vault();
    backup_at(&v, "footdash", &d.footdash, "2026-11-04T02:00:00Z");
    let original = std::fs::read(&d.footdash).unwrap();
    let mut m = Mount::start(&v, &mountpoint(&v), &[]);
    let f = File::open(m.join("latest/footdash.dump")).unwrap();
    signal(m.pid(), "TERM");
    assert!(
        eventually(Duration::from_secs(10), || !is_mounted(&m.path)),
        "the busy mount should be detached"
    );
    // The open file still reads, byte for byte.
    let mid = original.len() as u64 / 2;
    assert!(pread(&f, mid, 100_000).unwrap() == original[mid as usize..mid as usize + 100_000]);
    assert!(m.child.as_mut().unwrap().try_wait().unwrap().is_none());
    drop(f);
    // Generous: the kernel ends the detached session only after the release, and
    // this machine may be busy with other tests.
    let status = m.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}: {}", m.log());
    assert!(m.log().contains("busy"), "{}", m.log());
}

/// uid and gid of an OS user, from /etc/passwd.
fn os_user(name: &str) -> Option<(u32, u32)> {
    std::fs::read_to_string("/etc/passwd")
        .ok()?
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&name)).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
        })
}

#[test]
fn only_the_owner_given_reads_and_only_with_allow_other_another_user_enters() {
    use std::os::unix::process::CommandExt;
    if std::fs::metadata("/proc/self").unwrap().uid() != 0 {
        eprintln!("skipped: needs root to act as another user");
        return;
    }
    let (uid, gid) = os_user("postgres").expect("a postgres OS user");
    let d = dumps();
    let v = small_chunk_vault();
    backup_at(&v, "footdash", &d.footdash, "2026-11-04T02:00:00Z");
    // The other user must be able to reach the mountpoint at all.
    std::fs::set_permissions(v.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let read_as = |(uid, gid): (u32, u32), path: &Path| {
        std::process::Command::new("head")
            .args(["-c", "5"])
            .arg(path)
            .uid(uid)
            .gid(gid)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .unwrap()
    };
    let uid_s = uid.to_string();
    // Owned by postgres, but without allow_other nobody but the mounting user enters.
    let private = Mount::start(&v, &mountpoint(&v), &["--uid", &uid_s]);
    let md = std::fs::metadata(private.join("latest/footdash.dump")).unwrap();
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o777), (uid, gid, 0o440));
    let out = read_as((uid, gid), &private.join("latest/footdash.dump"));
    assert!(!out.status.success(), "{out:?}");
    drop(private);
    // With allow_other the owner reads, and a third user still does not (0440).
    let shared = Mount::start(&v, &mountpoint(&v), &["--allow-other", "--uid", "postgres"]);
    let out = read_as((uid, gid), &shared.join("latest/footdash.dump"));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"PGDMP");
    let nobody = os_user("nobody").expect("a nobody OS user");
    let out = read_as(nobody, &shared.join("latest/footdash.dump"));
    assert!(
        !out.status.success(),
        "nobody must not read backups: {out:?}"
    );
}

#[test]
fn the_mount_helper_mounts_in_the_background() {
    let d = dumps();
    let v = small_chunk_vault();
    backup_at(&v, "footdash", &d.footdash, "2026-11-04T02:00:00Z");
    let mp = mountpoint(&v);
    std::fs::create_dir_all(&mp).unwrap();
    let pass = v.dir.path().join("pass");
    std::fs::write(&pass, format!("{}\n", v.password)).unwrap();
    let helper = Path::new(env!("CARGO_MANIFEST_DIR")).join("mount/mount.pgvault");
    let bin_dir = common::vault::bin().parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let log = v.dir.path().join("helper.log");
    let opts = format!(
        "rw,password_file={},cache_dir={},cache_size=64MiB,log={}",
        pass.display(),
        v.cache.display(),
        log.display()
    );
    // As mount(8) calls it: mount.pgvault SOURCE DIR -o OPTIONS.
    let out = std::process::Command::new(&helper)
        .arg(&v.repo)
        .arg(&mp)
        .args(["-o", &opts])
        .env("PATH", &path)
        .env_remove("PGVAULT_PASSWORD")
        .env_remove("PGVAULT_REPO")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let guard = Mount::adopt(&mp, log.clone());
    assert!(
        out.status.success(),
        "mount.pgvault failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // It returned only once the mount was up, leaving pgvault running.
    assert!(is_mounted(&guard.path));
    assert!(
        std::fs::read(mp.join("latest/footdash.dump")).unwrap()
            == std::fs::read(&d.footdash).unwrap()
    );
    let umount = std::process::Command::new("umount")
        .arg(&mp)
        .status()
        .unwrap();
    assert!(umount.success());
    assert!(!is_mounted(&guard.path));
    // A bad option is refused before anything starts.
    let out = std::process::Command::new(&helper)
        .arg(&v.repo)
        .arg(&mp)
        .args(["-o", "no_such_option=1"])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no_such_option"),
        "{out:?}"
    );
}

#[test]
fn a_base_backup_shows_as_base_tar() {
    let pg = PgCluster::start();
    let mut v = Vault::init_local();
    v.use_pg(&pg);
    let b = v.run(&["backup", "--base", "--json"]).ok().json();
    let id = b["snapshot_id"].as_str().unwrap().to_string();
    let m = Mount::start(&v, &mountpoint(&v), &[]);

    let point = m.join(&format!("snapshots/{id}"));
    assert_eq!(
        names(&point),
        ["base", "base.tar", "manifest.json"]
            .map(String::from)
            .into()
    );
    // pg_basebackup's stream shows as a tree too, each file read from the stream.
    assert_eq!(
        std::fs::read_to_string(point.join("base/PG_VERSION")).unwrap(),
        std::fs::read_to_string(pg.data_dir().join("PG_VERSION")).unwrap()
    );
    assert!(point.join("base/global/pg_control").is_file());
    let target = std::fs::read_link(m.join("latest")).unwrap();
    assert!(
        target.to_string_lossy().ends_with("-cluster-base"),
        "{target:?}"
    );
    // The tar stream reads back whole: tar lists the data directory from the mount.
    let tar = m.join("latest/base.tar");
    assert_eq!(
        std::fs::read(&tar).unwrap(),
        v.cat(&id),
        "the mounted tar is the stored stream"
    );
    let list = std::process::Command::new("tar")
        .arg("-tf")
        .arg(&tar)
        .output()
        .unwrap();
    assert!(list.status.success(), "{list:?}");
    assert!(String::from_utf8_lossy(&list.stdout)
        .lines()
        .any(|l| l.trim_start_matches("./") == "PG_VERSION"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(point.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["kind"], "base");
    assert_eq!(manifest["base"]["pg_version"], "15", "{manifest}");
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert_eq!(
        names(&m.join(&format!("at/{now}"))),
        ["base.tar".to_string()].into()
    );
}

/// Awkward names and kinds: several schemas, quoted and non-ASCII names, a dot in a
/// schema's name, escapes in rows, a partitioned table, an empty table, a sequence,
/// a large object and a comment (none of the last three has COPY text).
const AWKWARD: &str = r#"
CREATE SCHEMA "Ligue 1";
CREATE SCHEMA "a.b";
CREATE TABLE public.users (id int PRIMARY KEY, email text, note text);
INSERT INTO public.users SELECT g, 'user' || g || '@example.com', repeat('x', g % 97)
  FROM generate_series(1, 20000) g;
INSERT INTO public.users VALUES (0, 'alice@example.com', E'tab\there\nnew line \\ and é');
COMMENT ON TABLE public.users IS 'people';
CREATE TABLE "Ligue 1"."Équipes" (nom text, "points gagnés" int);
INSERT INTO "Ligue 1"."Équipes" VALUES ('Paris', 70), ('Lens', NULL);
CREATE TABLE "a.b".c (x int);
INSERT INTO "a.b".c VALUES (1);
CREATE TABLE public.empty (x int);
CREATE TABLE public."two
lines" (x int);
INSERT INTO public."two
lines" VALUES (2);
COMMENT ON DATABASE awkward IS 'a comment pg_restore leaves out without -C';
CREATE TABLE public.matches (id int, played date, score text) PARTITION BY RANGE (played);
CREATE TABLE public.matches_2025 PARTITION OF public.matches
  FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE public.matches_2026 PARTITION OF public.matches
  FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO public.matches SELECT g, date '2025-01-01' + g % 700, g || '-' || g % 5
  FROM generate_series(1, 3000) g;
CREATE SEQUENCE public.s;
SELECT nextval('public.s');
SELECT lo_from_bytea(0, 'a large object');
SELECT lo_from_bytea(0, convert_to(repeat('big ', 9000), 'UTF8'));
CREATE ROLE "Fan Club";
CREATE TYPE public.mood AS ENUM ('sad', 'happy');
CREATE DOMAIN public.score AS int CHECK (VALUE >= 0);
CREATE TABLE public."user" (id serial PRIMARY KEY, mood public.mood, s public.score,
  best int REFERENCES public.users (id));
INSERT INTO public."user" (mood, s, best) VALUES ('happy', 3, 0), ('sad', 0, NULL);
ALTER TABLE public."user" OWNER TO "Fan Club";
CREATE VIEW public.happy AS SELECT * FROM public."user" WHERE mood = 'happy';
CREATE MATERIALIZED VIEW public.counts AS SELECT count(*) AS n FROM public.users;
CREATE FUNCTION public.touch() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;
CREATE TRIGGER touch BEFORE UPDATE ON public.users FOR EACH ROW EXECUTE FUNCTION public.touch();
CREATE INDEX users_email ON public.users (email);
GRANT SELECT ON public.users TO "Fan Club";
ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO "Fan Club";
COMMENT ON COLUMN public.users.email IS 'where to write';
"#;

/// Panics unless `got == want`, saying where they first differ.
fn assert_same_bytes(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let at = got.iter().zip(want).take_while(|(a, b)| a == b).count();
        let around = |b: &[u8]| {
            String::from_utf8_lossy(&b[at.saturating_sub(40).min(b.len())..(at + 40).min(b.len())])
                .into_owned()
        };
        panic!(
            "{what}: {} bytes, expected {}; first difference at {at}: {:?} against {:?}",
            got.len(),
            want.len(),
            around(got),
            around(want)
        );
    }
}

/// A script with the key of its `\restrict` and `\unrestrict` lines taken out, and
/// that key.
fn without_restrict_key(script: &[u8]) -> (Vec<u8>, String) {
    let text = String::from_utf8_lossy(script).into_owned();
    let key = text
        .lines()
        .find_map(|l| l.strip_prefix("\\restrict "))
        .expect("a \\restrict line")
        .to_string();
    (text.replace(&key, "KEY").into_bytes(), key)
}

/// `COPY <table> TO STDOUT` as psql prints it: the bytes pg_dump stored.
fn copy_out(pg: &PgCluster, db: &str, table: &str) -> Vec<u8> {
    let out = pg
        .command("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db, "-c"])
        .arg(format!("COPY {table} TO STDOUT"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    out.stdout
}

const COMPRESSED_AT: &str = "2026-01-01T00:00:00Z";

#[test]
fn each_table_of_a_dump_is_its_copy_text_in_the_mount_and_through_cat() {
    let pg = PgCluster::start();
    pg.create_db("awkward");
    pg.psql_script("awkward", AWKWARD, true);
    let tables = [
        ("public.users.copy", "public.users"),
        ("Ligue 1.Équipes.copy", r#""Ligue 1"."Équipes""#),
        ("a%2Eb.c.copy", r#""a.b".c"#),
        ("public.empty.copy", "public.empty"),
        ("public.two%0Alines.copy", "public.\"two\nlines\""),
        ("public.user.copy", "public.\"user\""),
        ("public.matches_2025.copy", "public.matches_2025"),
        ("public.matches_2026.copy", "public.matches_2026"),
    ];
    let expected: Vec<(&str, Vec<u8>)> = tables
        .iter()
        .map(|(file, table)| (*file, copy_out(&pg, "awkward", table)))
        .collect();
    assert!(expected[0].1.len() > 1 << 20, "users spans many marks");

    let mut v = small_chunk_vault();
    v.use_pg(&pg);
    // pg_dump's own default, compressed data (each table a zlib stream), imported as
    // of an earlier time, so that the newest point is pgvault's own dump.
    let tmp = tempfile::tempdir().unwrap();
    let compressed = tmp.path().join("compressed.dump");
    let out = pg
        .command("pg_dump")
        .args(["-Fc", "-d", "awkward", "-f"])
        .arg(&compressed)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let compressed_id = v.import_id("awkward", &compressed, Some(COMPRESSED_AT));
    let id = v.run(&["backup", "--db", "awkward", "--json"]).ok().json()["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();

    // Without a mount: one table, by its full name or its name alone.
    let by_cat = v.run(&["cat", &id, "--table", "public.users"]).ok();
    assert_same_bytes(&by_cat.stdout, &expected[0].1, "cat --table public.users");
    let by_cat = v.run(&["cat", &id, "--table", "Équipes"]).ok();
    assert_same_bytes(&by_cat.stdout, &expected[1].1, "cat --table Équipes");
    let err = v.run(&["cat", &id, "--table", "public.nosuch"]).fails();
    assert!(err.contains("public.nosuch"), "{err}");
    let by_cat = v
        .run(&["cat", &compressed_id, "--table", "public.users"])
        .ok();
    assert_same_bytes(
        &by_cat.stdout,
        &expected[0].1,
        "cat --table of a compressed dump",
    );

    let m = Mount::start(&v, &mountpoint(&v), &[]);
    let users = &expected[0].1;
    let mut rng = Rng::from_env_or_clock();
    for (snapshot, reads) in [(&id, 200), (&compressed_id, 40)] {
        let dir = m.join(&format!("snapshots/{snapshot}/tables"));
        assert_eq!(
            names(&dir),
            tables.iter().map(|(f, _)| f.to_string()).collect(),
            "one file per table with data, none for the sequence or the large objects"
        );
        for (file, bytes) in &expected {
            let path = dir.join(file);
            assert_eq!(
                std::fs::metadata(&path).unwrap().len(),
                bytes.len() as u64,
                "{file}: the size in stat is exact before any read"
            );
            assert_same_bytes(&std::fs::read(&path).unwrap(), bytes, file);
        }
        // Readers at once on one open file, each its own blocks, in any order.
        let f = File::open(dir.join("public.users.copy")).unwrap();
        std::thread::scope(|scope| {
            for k in 0..4u64 {
                let f = &f;
                scope.spawn(move || {
                    let block = 100_000u64;
                    let blocks = users.len() as u64 / block + 1;
                    for b in (0..blocks).filter(|b| b % 4 == k) {
                        let start = (b * block) as usize;
                        let end = (start + block as usize).min(users.len());
                        assert_same_bytes(
                            &pread(f, start as u64, block as usize).unwrap(),
                            &users[start..end],
                            &format!("block {b} read by reader {k}"),
                        );
                    }
                });
            }
        });
        // Any offset, any length, in any order: the bytes of COPY's output there
        // (a compressed table inflates again from its start for a read far behind).
        for _ in 0..reads {
            let offset = rng.below(users.len() as u64 + 10);
            let len = 1 + rng.below(300_000) as usize;
            let start = (offset as usize).min(users.len());
            let end = (start + len).min(users.len());
            assert_same_bytes(
                &pread(&f, offset, len).unwrap(),
                &users[start..end],
                &format!("users at {offset}, {len} bytes"),
            );
        }
    }

    // The same files under every view of the point, and psql reads them back.
    let by_db = m.join("by-db/awkward");
    let point = names(&by_db)
        .into_iter()
        .map(|n| by_db.join(n))
        .find(|p| std::fs::read_to_string(p.join("manifest.json")).is_ok_and(|j| j.contains(&id)))
        .expect("the dump under by-db");
    let users_file = point.join("tables/public.users.copy");
    assert_same_bytes(&std::fs::read(&users_file).unwrap(), users, "by-db tables");
    for other in ["latest/tables", "at/2099-01-01T00:00:00Z/awkward.tables"] {
        let path = m.join(&format!("{other}/public.users.copy"));
        assert_same_bytes(&std::fs::read(&path).unwrap(), users, other);
    }
    let before = names(&m.join(&format!("at/{COMPRESSED_AT}")));
    assert_eq!(
        before,
        [
            "awkward.dump",
            "awkward.schema.sql",
            "awkward.sql",
            "awkward.tables",
            "awkward.toc.txt"
        ]
        .map(String::from)
        .into()
    );

    // awkward.sql and schema.sql are what pg_restore prints, but for the random key
    // of the \restrict lines, for compressed dumps too.
    for (point, file, args) in [
        (format!("snapshots/{id}"), "awkward.sql", &[][..]),
        (format!("snapshots/{compressed_id}"), "awkward.sql", &[][..]),
        (format!("snapshots/{id}"), "schema.sql", &["-s"][..]),
        (
            format!("snapshots/{compressed_id}"),
            "schema.sql",
            &["-s"][..],
        ),
        ("latest".to_string(), "awkward.sql", &[][..]),
        (
            "at/2099-01-01T00:00:00Z".to_string(),
            "awkward.schema.sql",
            &["-s"][..],
        ),
    ] {
        let printed = pg
            .command("pg_restore")
            .args(args)
            .args(["-f", "-"])
            .arg(m.join(&format!("{point}/awkward.dump")))
            .output()
            .unwrap();
        assert!(printed.status.success(), "{printed:?}");
        let path = m.join(&format!("{point}/{file}"));
        let ours = std::fs::read(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), ours.len() as u64);
        let (ours, our_key) = without_restrict_key(&ours);
        let (theirs, their_key) = without_restrict_key(&printed.stdout);
        assert_eq!(our_key.len(), their_key.len(), "{our_key} {their_key}");
        assert_ne!(our_key, their_key);
        assert_same_bytes(&ours, &theirs, &path.display().to_string());
    }
    // The same without a mount.
    for (snapshot, flag, file) in [
        (&id, "--sql", "awkward.sql"),
        (&compressed_id, "--schema", "schema.sql"),
        (&compressed_id, "--sql", "awkward.sql"),
    ] {
        let printed = v.run(&["cat", snapshot, flag]).ok().stdout;
        let mounted = std::fs::read(m.join(&format!("snapshots/{snapshot}/{file}"))).unwrap();
        assert_same_bytes(
            &without_restrict_key(&printed).0,
            &without_restrict_key(&mounted).0,
            &format!("cat {flag}"),
        );
    }
    // psql restores the whole dump from its script.
    pg.create_db("replayed");
    let replayed = pg
        .command("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "replayed", "-f"])
        .arg(m.join(&format!("snapshots/{id}/awkward.sql")))
        .output()
        .unwrap();
    assert!(replayed.status.success(), "{replayed:?}");
    for (_, table) in &tables {
        let count = format!(
            "SELECT count(*), md5(string_agg(t::text, ',' ORDER BY t::text)) FROM {table} t"
        );
        assert_eq!(
            pg.psql("replayed", &count),
            pg.psql("awkward", &count),
            "{table}"
        );
    }

    // toc.txt is what pg_restore -l prints, for compressed dumps too.
    for (point, toc) in [
        (format!("snapshots/{id}"), "toc.txt"),
        (format!("snapshots/{compressed_id}"), "toc.txt"),
        (format!("at/{COMPRESSED_AT}"), "awkward.toc.txt"),
    ] {
        let listed = pg
            .command("pg_restore")
            .arg("-l")
            .arg(m.join(&format!("{point}/awkward.dump")))
            .output()
            .unwrap();
        assert!(listed.status.success(), "{listed:?}");
        let path = m.join(&format!("{point}/{toc}"));
        let ours = std::fs::read(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), ours.len() as u64);
        assert_same_bytes(&ours, &listed.stdout, &path.display().to_string());
    }
    pg.create_db("then");
    pg.psql(
        "then",
        "CREATE TABLE users_then (id int PRIMARY KEY, email text, note text)",
    );
    let loaded = pg
        .command("psql")
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-d", "then", "-c"])
        .arg(format!("\\copy users_then FROM '{}'", users_file.display()))
        .output()
        .unwrap();
    assert!(loaded.status.success(), "{loaded:?}");
    let fingerprint = "SELECT count(*), md5(string_agg(id || email || note, ',' ORDER BY id))";
    let source = pg.psql("awkward", &format!("{fingerprint} FROM public.users"));
    assert_eq!(
        pg.psql("then", &format!("{fingerprint} FROM users_then")),
        source
    );
    assert!(!m.log().contains("ERROR"), "{}", m.log());
    drop(m);

    // The server itself reads a mounted table through file_fdw: the mount must let
    // its OS user in.
    let mut extra = Vec::new();
    if PgCluster::server_user().is_some() {
        std::fs::set_permissions(v.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        extra = vec!["--allow-other", "--uid", "postgres"];
    }
    let m = Mount::start(&v, &mountpoint(&v), &extra);
    let table_file = m.join(&format!("snapshots/{id}/tables/public.users.copy"));
    pg.psql_script(
        "then",
        &format!(
            "CREATE EXTENSION file_fdw;
             CREATE SERVER files FOREIGN DATA WRAPPER file_fdw;
             CREATE FOREIGN TABLE users_tue (id int, email text, note text)
               SERVER files OPTIONS (filename '{}');",
            table_file.display()
        ),
        false,
    );
    assert_eq!(
        pg.psql("then", &format!("{fingerprint} FROM users_tue")),
        source
    );
    assert_eq!(
        pg.psql(
            "then",
            "SELECT note FROM users_tue WHERE email = 'alice@example.com'"
        ),
        "tab\there\nnew line \\ and é"
    );
}
