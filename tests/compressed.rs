//! The runbook's own dumps: `pg_dump -Fc` with zlib compression (the default level,
//! -Z1 and -Z9) stored with each table's data as its inflated text, deduplicated day
//! to day, and read back byte for byte through `cat`, the mount, `check --read-data`
//! and `pg_restore`; a stream that does not re-create is kept as it came.

mod common;

use std::path::{Path, PathBuf};

use common::mount::Mount;
use common::pg::PgCluster;
use common::vault::Vault;
use serde_json::Value;

/// `pg_dump -Fc` of `db` at `level` (None: pg_dump's default) into `path`.
fn dump_compressed(pg: &PgCluster, db: &str, level: Option<u8>, path: &Path) {
    let mut cmd = pg.command("pg_dump");
    cmd.args(["-Fc", "-d", db, "-f"]).arg(path);
    if let Some(l) = level {
        cmd.arg(format!("-Z{l}"));
    }
    common::succeeded(cmd.output().unwrap(), "pg_dump -Fc");
}

fn stat(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// Backs up two days of compressed dumps at `level`; checks each day reads back
/// exactly and that day 2 cost about what a day of changed text costs.
fn two_days_at(pg: &PgCluster, v: &Vault, dir: &Path, level: Option<u8>) -> (PathBuf, String) {
    let name = level.map_or("default".to_string(), |l| format!("z{l}"));
    let db = format!("fd_{name}");
    pg.create_footdash(&db, 2);
    let d1 = dir.join(format!("{name}-1.dump"));
    dump_compressed(pg, &db, level, &d1);
    let a = v.import(&db, &d1, Some("2026-11-01T02:00:00Z")).ok().json();
    pg.footdash_day(&db, 1);
    let d2 = dir.join(format!("{name}-2.dump"));
    dump_compressed(pg, &db, level, &d2);
    let b = v.import(&db, &d2, Some("2026-11-02T02:00:00Z")).ok().json();
    for (run, file) in [(&a, &d1), (&b, &d2)] {
        let r = &run["recreated"];
        let len = std::fs::metadata(file).unwrap().len();
        assert_eq!(stat(run, "bytes_read"), len, "{run}");
        assert_eq!(stat(r, "bytes_kept_compressed"), 0, "{name}: {run}");
        // Nearly all of a dump is its table data.
        assert!(stat(r, "bytes_recreated") * 10 > len * 8, "{name}: {run}");
        assert!(stat(r, "bytes_stored_as_text") > len * 2, "{name}: {run}");
        let id = run["snapshot_id"].as_str().unwrap();
        assert!(
            v.cat(id) == std::fs::read(file).unwrap(),
            "{name}: cat differs from the dump"
        );
    }
    // As compressed bytes, day 2 shares almost nothing with day 1; as text, most.
    let len2 = std::fs::metadata(&d2).unwrap().len();
    let new2 = stat(&b, "bytes_stored_new");
    assert!(
        new2 * 3 < len2,
        "{name}: day 2 stored {new2} of a {len2}-byte dump"
    );
    (d2, b["snapshot_id"].as_str().unwrap().to_string())
}

#[test]
fn compressed_dumps_are_stored_as_text_and_read_back_byte_for_byte() {
    let pg = PgCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let v = Vault::local();
    v.init();

    let mut days = Vec::new();
    for level in [None, Some(1), Some(9)] {
        days.push((level, two_days_at(&pg, &v, dir.path(), level)));
    }

    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mount = Mount::start(&v, &mnt, &[]);
    for (level, (file, id)) in &days {
        let dump = mount.join(&format!(
            "snapshots/{id}/fd_{}.dump",
            level.map_or("default".into(), |l| format!("z{l}"))
        ));
        assert!(
            std::fs::read(&dump).unwrap() == std::fs::read(file).unwrap(),
            "{level:?}: the mount's dump differs"
        );
    }

    // pg_restore of one table and of the whole dump, straight from the mount.
    let (_, (_, id)) = &days[0];
    let dump = mount.join(&format!("snapshots/{id}/fd_default.dump"));
    pg.create_db("one_table");
    common::succeeded(
        pg.command("pg_restore")
            .args(["-d", "one_table", "-t", "matches"])
            .arg(&dump)
            .output()
            .unwrap(),
        "pg_restore -t matches from the mount",
    );
    let want = pg.row_counts("fd_default");
    assert_eq!(pg.row_counts("one_table")["matches"], want["matches"]);
    pg.create_db("whole");
    common::succeeded(
        pg.command("pg_restore")
            .args(["-d", "whole"])
            .arg(&dump)
            .output()
            .unwrap(),
        "pg_restore from the mount",
    );
    assert_eq!(pg.row_counts("whole"), want);

    // A table's file is read from the stored text: it is what COPY prints.
    let copy =
        std::fs::read(mount.join(&format!("snapshots/{id}/tables/public.matches.copy"))).unwrap();
    let mut psql = pg.command("psql");
    psql.args([
        "-X",
        "-q",
        "-d",
        "fd_default",
        "-c",
        "COPY public.matches TO STDOUT",
    ]);
    let expected = common::succeeded(psql.output().unwrap(), "COPY TO STDOUT").stdout;
    assert!(
        copy == expected,
        "the table's file differs from COPY's output"
    );
    drop(mount);

    let c = v.run(&["check", "--read-data", "--json"]).ok().json();
    assert_eq!(c["bad_chunks"].as_array().unwrap().len(), 0, "{c}");
    assert_eq!(stat(&c, "snapshots_recreated"), 6, "{c}");
}

/// The archive header's compression level: an int (sign byte, 4 bytes) right after
/// the 11-byte fixed header, in archive version 1.14.
const LEVEL_FIELD: std::ops::Range<usize> = 11..16;

#[test]
fn a_stream_that_does_not_re_create_is_kept_as_it_came() {
    let pg = PgCluster::start();
    let dir = tempfile::tempdir().unwrap();
    pg.create_footdash("footdash", 1);
    let z9 = dir.path().join("z9.dump");
    dump_compressed(&pg, "footdash", Some(9), &z9);
    // Announced as level 6, written at 9: deflating the text at 6 gives other
    // bytes, as a dump made by another zlib would.
    let mut bytes = std::fs::read(&z9).unwrap();
    assert_eq!(
        bytes[LEVEL_FIELD],
        [0, 9, 0, 0, 0],
        "a 1.14 header at level 9"
    );
    bytes[LEVEL_FIELD.start + 1] = 6;
    let crafted = dir.path().join("crafted.dump");
    std::fs::write(&crafted, &bytes).unwrap();

    let v = Vault::local();
    v.init();
    let run = v.import("footdash", &crafted, None).ok().json();
    assert!(
        stat(&run["recreated"], "bytes_kept_compressed") > 0,
        "{run}"
    );
    let id = run["snapshot_id"].as_str().unwrap();
    assert!(v.cat(id) == bytes, "cat differs from the crafted dump");
    let listed = v.run(&["snapshots"]).ok().out();
    assert!(listed.contains("kept as it came"), "{listed}");

    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mount = Mount::start(&v, &mnt, &[]);
    let dump = mount.join(&format!("snapshots/{id}/footdash.dump"));
    assert!(std::fs::read(&dump).unwrap() == bytes);
    pg.create_db("restored");
    common::succeeded(
        pg.command("pg_restore")
            .args(["-d", "restored"])
            .arg(&dump)
            .output()
            .unwrap(),
        "pg_restore of the crafted dump from the mount",
    );
    assert_eq!(pg.row_counts("restored"), pg.row_counts("footdash"));
}

#[test]
fn a_piped_compressed_dump_gets_its_offsets_and_re_creates() {
    let pg = PgCluster::start();
    let dir = tempfile::tempdir().unwrap();
    pg.create_footdash("footdash", 1);
    let file = dir.path().join("file.dump");
    dump_compressed(&pg, "footdash", None, &file);
    let v = Vault::local();
    v.init();
    let mut dump = pg
        .command("pg_dump")
        .args(["-Fc", "-d", "footdash"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = v
        .command(&["backup", "--stdin", "--db", "footdash", "--json"])
        .stdin(dump.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(dump.wait().unwrap().success());
    let out = common::succeeded(out, "pg_dump -Fc | pgvault backup --stdin");
    let run: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(run["dump_offsets_filled"], true, "{run}");
    assert_eq!(stat(&run["recreated"], "bytes_kept_compressed"), 0, "{run}");
    // With its offsets filled, the piped dump is the file pg_dump -f writes.
    let got = v.cat(run["snapshot_id"].as_str().unwrap());
    let want = std::fs::read(&file).unwrap();
    assert!(
        common::fixtures::mask_timestamp(got) == common::fixtures::mask_timestamp(want),
        "the piped dump differs from pg_dump -f's"
    );
}

/// `pg_dump -d db | gzip -6 > path`: the runbook's plain-SQL habit, with GNU
/// gzip's encoder (not zlib's: its blocks end elsewhere).
fn dump_gzipped(pg: &PgCluster, db: &str, path: &Path) {
    dump_gzipped_with(pg, db, &[], path)
}

fn dump_gzipped_with(pg: &PgCluster, db: &str, args: &[&str], path: &Path) {
    let mut dump = pg
        .command("pg_dump")
        .args(["-d", db])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let file = std::fs::File::create(path).unwrap();
    let gzip = std::process::Command::new("gzip")
        .arg("-6")
        .stdin(dump.stdout.take().unwrap())
        .stdout(file)
        .status()
        .unwrap();
    assert!(dump.wait().unwrap().success() && gzip.success());
}

#[test]
fn gzipped_sql_dumps_are_stored_as_text_and_read_back_byte_for_byte() {
    let pg = PgCluster::start();
    let dir = tempfile::tempdir().unwrap();
    // Connected to the cluster, for the drill.
    let v = Vault::for_pg(&pg, &[]);
    pg.create_footdash("footdash", 2);
    let d1 = dir.path().join("footdash-1.sql.gz");
    dump_gzipped(&pg, "footdash", &d1);
    let a = v
        .import("footdash", &d1, Some("2026-11-01T02:00:00Z"))
        .ok()
        .json();
    pg.footdash_day("footdash", 1);
    let d2 = dir.path().join("footdash-2.sql.gz");
    dump_gzipped(&pg, "footdash", &d2);
    let b = v
        .import("footdash", &d2, Some("2026-11-02T02:00:00Z"))
        .ok()
        .json();
    for (run, file) in [(&a, &d1), (&b, &d2)] {
        let len = std::fs::metadata(file).unwrap().len();
        assert_eq!(stat(run, "bytes_read"), len, "{run}");
        assert_eq!(run["file_name"], "footdash.sql.gz", "{run}");
        let r = &run["recreated"];
        assert_eq!(stat(r, "bytes_kept_compressed"), 0, "{run}");
        // All but the gzip header and trailer.
        assert!(stat(r, "bytes_recreated") + 64 > len, "{run}");
        assert!(stat(r, "bytes_stored_as_text") > len * 3, "{run}");
        let id = run["snapshot_id"].as_str().unwrap();
        assert!(
            v.cat(id) == std::fs::read(file).unwrap(),
            "cat differs from the gzip file"
        );
    }
    // As gzip, day 2 shares almost nothing with day 1; as SQL, most.
    let len2 = std::fs::metadata(&d2).unwrap().len();
    let new2 = stat(&b, "bytes_stored_new");
    assert!(new2 * 2 < len2, "day 2 stored {new2} of a {len2}-byte file");

    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mount = Mount::start(&v, &mnt, &[]);
    let id2 = b["snapshot_id"].as_str().unwrap();
    let in_mount = mount.join(&format!("snapshots/{id2}/footdash.sql.gz"));
    assert!(
        std::fs::read(&in_mount).unwrap() == std::fs::read(&d2).unwrap(),
        "the mount's file differs"
    );
    // psql reads the script straight from the mount, through gunzip.
    pg.create_db("restored");
    let mut gunzip = std::process::Command::new("gunzip")
        .arg("-c")
        .arg(&in_mount)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    common::succeeded(
        pg.command("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "restored"])
            .stdin(gunzip.stdout.take().unwrap())
            .output()
            .unwrap(),
        "gunzip | psql from the mount",
    );
    assert!(
        gunzip.wait().unwrap().success(),
        "gunzip of the mount's file"
    );
    assert_eq!(pg.row_counts("restored"), pg.row_counts("footdash"));
    // Or with nothing to gunzip: beside it, the script itself, read from the
    // stored text, in the backup point's directory and in at/<time>/.
    let mut plain = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(&std::fs::read(&d2).unwrap()[..]),
        &mut plain,
    )
    .unwrap();
    let script = mount.join(&format!("snapshots/{id2}/footdash.sql"));
    assert_eq!(
        std::fs::metadata(&script).unwrap().len(),
        plain.len() as u64
    );
    assert!(
        std::fs::read(&script).unwrap() == plain,
        "the mount's script differs"
    );
    let at = mount.join("at/2026-11-02T02:00:00Z/footdash.sql");
    assert!(std::fs::read(at).unwrap() == plain, "at/'s script differs");
    pg.create_db("from_script");
    common::succeeded(
        pg.command("psql")
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                "from_script",
                "-f",
            ])
            .arg(&script)
            .output()
            .unwrap(),
        "psql -f the mount's script",
    );
    assert_eq!(pg.row_counts("from_script"), pg.row_counts("footdash"));
    drop(mount);

    let c = v.run(&["check", "--read-data", "--json"]).ok().json();
    assert_eq!(c["bad_chunks"].as_array().unwrap().len(), 0, "{c}");
    assert_eq!(stat(&c, "snapshots_recreated"), 2, "{c}");

    // A drill restores the script with psql and counts the source's rows.
    let work = tempfile::tempdir().unwrap();
    let r = v
        .run(&[
            "drill",
            "--db",
            "footdash",
            "--work-dir",
            work.path().to_str().unwrap(),
            "--json",
        ])
        .ok()
        .json();
    assert_eq!(r["ok"], true, "{r}");
    let want = pg.row_counts("footdash");
    assert_eq!(stat(&r, "toc_table_data") as usize, want.len(), "{r}");
    for t in r["tables"].as_array().unwrap() {
        let name = t["table"]
            .as_str()
            .unwrap()
            .strip_prefix("public.")
            .unwrap();
        assert_eq!(t["rows"].as_i64().unwrap(), want[name], "{t}");
    }
}

/// A `.sql.gz` of over 32 MiB of SQL is re-created span by span (each span after
/// the first from the text before it), not kept as it came past its first span,
/// and reads back exactly through `cat`, the mount and `check --read-data`.
#[test]
fn a_large_gzipped_dump_is_re_created_span_by_span() {
    let pg = PgCluster::start();
    let dir = tempfile::tempdir().unwrap();
    pg.create_footdash("footdash", 1);
    // One table big enough for about 80 MB of SQL: three spans or more.
    pg.psql(
        "footdash",
        "CREATE TABLE big AS SELECT i, md5(i::text) AS a, md5((i * 7)::text) AS b, \
         'row ' || i % 977 AS c FROM generate_series(1, 900000) AS i",
    );
    let gz = dir.path().join("footdash.sql.gz");
    dump_gzipped(&pg, "footdash", &gz);
    let bytes = std::fs::read(&gz).unwrap();
    let mut plain = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut plain).unwrap();
    assert!(plain.len() > 2 * (32 << 20), "{} bytes of SQL", plain.len());
    let v = Vault::local();
    v.init();
    let run = v.import("footdash", &gz, None).ok().json();
    let r = &run["recreated"];
    assert!(stat(r, "spans") >= 3, "{run}");
    // Only the bytes where two spans meet, and the last byte, are kept as they
    // came.
    assert!(
        stat(r, "bytes_kept_compressed") <= 2 * stat(r, "spans") + 1,
        "{run}"
    );
    assert!(
        stat(r, "bytes_recreated") + 64 > bytes.len() as u64,
        "{run}"
    );
    let id = run["snapshot_id"].as_str().unwrap();
    assert!(v.cat(id) == bytes, "cat differs from the gzip file");

    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mount = Mount::start(&v, &mnt, &[]);
    let in_mount = mount.join(&format!("snapshots/{id}/footdash.sql.gz"));
    // The end first: a read far into the file re-creates only the span it is in.
    let mut f = std::fs::File::open(&in_mount).unwrap();
    let mut tail = vec![0u8; 1 << 20];
    std::io::Seek::seek(&mut f, std::io::SeekFrom::End(-(1 << 20))).unwrap();
    std::io::Read::read_exact(&mut f, &mut tail).unwrap();
    assert!(
        tail[..] == bytes[bytes.len() - (1 << 20)..],
        "the mount's end differs"
    );
    assert!(
        std::fs::read(&in_mount).unwrap() == bytes,
        "the mount's file differs"
    );
    // The script beside it is read from the spans' texts, in order.
    let script = mount.join(&format!("snapshots/{id}/footdash.sql"));
    assert!(
        std::fs::read(&script).unwrap() == plain,
        "the mount's script differs"
    );
    drop(mount);

    let c = v.run(&["check", "--read-data", "--json"]).ok().json();
    assert_eq!(c["bad_chunks"].as_array().unwrap().len(), 0, "{c}");
    assert_eq!(stat(&c, "snapshots_recreated"), 1, "{c}");
}

#[test]
fn a_gzip_file_that_is_cut_short_or_not_a_whole_dump_is_refused() {
    let pg = PgCluster::start();
    let dir = tempfile::tempdir().unwrap();
    pg.create_footdash("footdash", 1);
    let gz = dir.path().join("footdash.sql.gz");
    dump_gzipped(&pg, "footdash", &gz);
    let bytes = std::fs::read(&gz).unwrap();
    let v = Vault::local();
    v.init();
    let cut = dir.path().join("cut.sql.gz");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = v.import("footdash", &cut, None).fails();
    assert!(e.contains("truncated"), "{e}");
    // A pg_dump that died half way, gzipped whole: a valid gzip of an unfinished
    // script.
    let mut plain = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut plain).unwrap();
    let mut half = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut half, &plain[..plain.len() / 2]).unwrap();
    let half_gz = dir.path().join("half.sql.gz");
    std::fs::write(&half_gz, half.finish().unwrap()).unwrap();
    let e = v.import("footdash", &half_gz, None).fails();
    assert!(e.contains("dump complete"), "{e}");
    let listed = v.run(&["snapshots", "--json"]).ok().json();
    assert_eq!(listed.as_array().unwrap().len(), 0, "{listed}");
}

#[test]
fn a_drill_refuses_a_script_that_would_connect_to_the_real_database() {
    let pg = PgCluster::start();
    let dir = tempfile::tempdir().unwrap();
    pg.create_footdash("footdash", 1);
    let before = pg.row_counts("footdash");
    // --create writes CREATE DATABASE and \connect footdash: psql would follow it
    // out of the drill's temporary database and load the rows into the source.
    let gz = dir.path().join("create.sql.gz");
    dump_gzipped_with(&pg, "footdash", &["--create"], &gz);
    let v = Vault::for_pg(&pg, &[]);
    v.import("footdash", &gz, None).ok();
    let work = tempfile::tempdir().unwrap();
    let e = v
        .run(&[
            "drill",
            "--db",
            "footdash",
            "--work-dir",
            work.path().to_str().unwrap(),
        ])
        .fails();
    assert!(e.contains("connects to other databases"), "{e}");
    assert_eq!(pg.row_counts("footdash"), before);
}
