//! Test support: throwaway PostgreSQL 15 clusters filled with FootDash-like data for pgvault's integration tests.
//!
//! Every [`PgCluster`] is a private `initdb` in its own temporary directory, listening on
//! its own free TCP port on 127.0.0.1 and on its own unix socket directory, so tests can
//! run in parallel without ever touching a system PostgreSQL. Dropping the value stops the
//! server (`pg_ctl -m immediate stop`) and removes the directory.
//!
//! `initdb`, `postgres` and `pg_ctl` refuse to run as root. Tests (and CI) run as root
//! here, so in that case the server side is run as the `postgres` OS user; client
//! programs (psql, pg_dump, pgvault itself) may keep running as root because they only
//! talk to the server through the socket with `-U postgres` and trust auth.
//!
//! FootDash is a made-up football app: `teams`, `players`, `users`, `matches`,
//! `match_events` and `notifications`, with primary and foreign keys, `jsonb` and
//! `timestamptz` columns. All data is generated server-side from `md5` of fixed seeds,
//! so the same scale and the same sequence of [`PgCluster::footdash_day`] calls always
//! produce byte-identical table contents.
//!
//! Size (measured with PostgreSQL 15.18, `pg_dump -Fc -Z0`): about 1.48 MB and ~9,900 rows
//! per scale unit, linear (scale 1 ≈ 1.47 MB, scale 3 ≈ 4.4 MB, scale 10 ≈ 15.0 MB); each
//! `footdash_day` adds roughly 1.3%. Creating scale 1 takes ~0.5 s and scale 10 ~3 s on a
//! 2-core machine, plus ~1 s for `initdb` + start.
//!
//! The binaries come from `/usr/lib/postgresql/15/bin` unless `PG_BIN_DIR` says otherwise.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

const DEFAULT_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
const SUPERUSER: &str = "postgres";

/// Ports handed out by this test binary. Binding port 0 and dropping the listener
/// leaves a window in which a parallel test could be given the same port; remembering
/// them closes that window within one process (other processes are covered by retrying).
static PORTS_IN_USE: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A running throwaway cluster. Stopped and deleted on drop.
pub struct PgCluster {
    // Field order matters only for `dir`: it is dropped (removed) after `Drop::drop`
    // has stopped the server.
    port: u16,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_file: PathBuf,
    /// uid/gid to run server-side programs as, when we are root.
    run_as: Option<(u32, u32)>,
    dir: tempfile::TempDir,
}

impl PgCluster {
    /// Starts a cluster with the default settings. Panics (with the server log) on failure.
    pub fn start() -> PgCluster {
        Self::start_with(&[])
    }

    /// Starts a cluster with extra `postgresql.conf` lines, e.g. `"wal_level = replica"`,
    /// `"archive_mode = on"`, `"archive_command = 'cp %p /x/%f'"`. They are appended after
    /// the defaults, so they win.
    pub fn start_with(extra_conf: &[&str]) -> PgCluster {
        Self::start_inner(extra_conf, None)
    }

    fn start_inner(extra_conf: &[&str], restored: Option<&dyn Fn(&Path)>) -> PgCluster {
        let run_as = if effective_uid() == 0 {
            Some(lookup_user(SUPERUSER).unwrap_or_else(|| {
                panic!("running as root but there is no '{SUPERUSER}' OS user to run the server as")
            }))
        } else {
            None
        };

        // As root, $TMPDIR might point somewhere the postgres user cannot traverse; /tmp
        // is world-traversable by convention.
        let mut builder = tempfile::Builder::new();
        builder.prefix("pgvault-pg-");
        let dir = if run_as.is_some() {
            builder.tempdir_in("/tmp")
        } else {
            builder.tempdir()
        }
        .expect("create temp dir for cluster");

        let data_dir = dir.path().join("data");
        let socket_dir = dir.path().join("sock");
        let log_file = dir.path().join("postgres.log");
        std::fs::create_dir(&socket_dir).expect("create socket dir");
        if let Some((uid, gid)) = run_as {
            // initdb creates data/ and pg_ctl creates the log inside dir, so the server
            // user must own it; the socket dir must be writable by the server too.
            for p in [dir.path(), socket_dir.as_path()] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid))
                    .unwrap_or_else(|e| panic!("chown {} to {uid}:{gid}: {e}", p.display()));
            }
        }

        let mut cluster = PgCluster {
            port: 0,
            data_dir,
            socket_dir,
            log_file,
            run_as,
            dir,
        };
        // From here on a panic drops `cluster`, which stops whatever did start.
        match restored {
            None => cluster.initdb(),
            Some(populate) => populate(&cluster.data_dir),
        }
        cluster.write_conf(extra_conf);
        cluster.start_server();
        cluster
    }

    /// Starts a server on a data directory that `populate` creates at the path it is
    /// given (a restore), with `extra_conf` appended; runs as the same user as other
    /// clusters. Returns once pg_ctl says the server is up (it may still be recovering).
    pub fn start_restored(populate: &dyn Fn(&Path), extra_conf: &[&str]) -> PgCluster {
        Self::start_inner(extra_conf, Some(populate))
    }

    /// The uid and gid server programs run as (Some when the tests run as root).
    pub fn run_as(&self) -> Option<(u32, u32)> {
        self.run_as
    }

    /// The OS user clusters run as when the tests run as root: the `postgres` user.
    pub fn server_user() -> Option<(u32, u32)> {
        (effective_uid() == 0).then(|| lookup_user(SUPERUSER).expect("a postgres OS user"))
    }

    /// Waits until the server has finished recovery and accepts writes.
    pub fn wait_until_promoted(&self) {
        for _ in 0..600 {
            let out = self
                .command("psql")
                .args([
                    "-X",
                    "-At",
                    "-d",
                    "postgres",
                    "-c",
                    "SELECT pg_is_in_recovery()",
                ])
                .output()
                .expect("spawn psql");
            if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "f" {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!(
            "server did not finish recovery in 60 s; log:\n{}",
            self.log()
        );
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The unix socket directory, which is what libpq expects as `host`.
    pub fn host(&self) -> String {
        self.socket_dir.to_string_lossy().into_owned()
    }

    pub fn user(&self) -> &str {
        SUPERUSER
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The cluster's temporary root directory (holds `data/`, `sock/`, the log); a handy
    /// place for a test's WAL archive or backup repository, since it is cleaned up too.
    pub fn base_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server log collected so far (empty if unreadable).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    /// Path of a PostgreSQL binary, e.g. `PgCluster::bin("pg_dump")`.
    pub fn bin(name: &str) -> PathBuf {
        let dir = std::env::var_os("PG_BIN_DIR").unwrap_or_else(|| DEFAULT_BIN_DIR.into());
        PathBuf::from(dir).join(name)
    }

    /// `PGHOST`, `PGPORT` and `PGUSER` for a child process (e.g. pgvault itself).
    pub fn libpq_env(&self) -> Vec<(String, String)> {
        vec![
            ("PGHOST".into(), self.host()),
            ("PGPORT".into(), self.port.to_string()),
            ("PGUSER".into(), SUPERUSER.into()),
        ]
    }

    /// A libpq keyword/value connection string for `db` over the unix socket.
    pub fn conninfo(&self, db: &str) -> String {
        format!(
            "host={} port={} user={} dbname={}",
            self.host(),
            self.port,
            SUPERUSER,
            db
        )
    }

    /// A `Command` for a PostgreSQL client binary (`"psql"`, `"pg_restore"`, ...) with
    /// the libpq environment pointing at this cluster. Other `PG*` variables inherited
    /// from the test runner (PGDATABASE, PGSERVICE, ...) are removed so they cannot
    /// redirect the client elsewhere.
    pub fn command(&self, bin: &str) -> Command {
        let mut cmd = Command::new(Self::bin(bin));
        scrub_pg_env(&mut cmd);
        cmd.envs(self.libpq_env());
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs one SQL string with psql (`-X -v ON_ERROR_STOP=1 -At -c`) and returns its
    /// trimmed stdout (unaligned, tuples only, `|`-separated). Panics with stderr on failure.
    /// Several statements in one string run as one implicit transaction.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = self
            .command("psql")
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-At", "-d", db, "-c", sql])
            .output()
            .expect("spawn psql");
        check_output(&out, &format!("psql -d {db} -c {}", abbreviate(sql)));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Runs a multi-statement script through psql's stdin (`-f -`), each statement in its
    /// own transaction unless `single_transaction`. Returns trimmed stdout.
    pub fn psql_script(&self, db: &str, script: &str, single_transaction: bool) -> String {
        let mut cmd = self.command("psql");
        cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-d", db]);
        if single_transaction {
            cmd.arg("-1");
        }
        cmd.args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn psql");
        let mut stdin = child.stdin.take().expect("psql stdin");
        // Write from another thread so a chatty script cannot deadlock on a full stdout pipe.
        let script_owned = script.to_string();
        let writer = std::thread::spawn(move || stdin.write_all(script_owned.as_bytes()));
        let out = child.wait_with_output().expect("wait for psql");
        let write_result = writer.join().expect("psql stdin writer thread");
        check_output(&out, &format!("psql -d {db} -f - <<{}", abbreviate(script)));
        write_result.expect("write script to psql");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn create_db(&self, name: &str) {
        self.psql(
            "postgres",
            &format!("CREATE DATABASE {}", quote_ident(name)),
        );
    }

    /// Creates database `db` with the FootDash schema and `scale` units of data
    /// (~1.48 MB of `pg_dump -Fc -Z0` output and ~9,900 rows per unit).
    pub fn create_footdash(&self, db: &str, scale: u32) {
        assert!(scale >= 1, "footdash scale must be at least 1");
        self.create_db(db);
        self.psql_script(db, FOOTDASH_SCHEMA, true);
        let data = FOOTDASH_DATA.replace("__SCALE__", &scale.to_string());
        self.psql_script(db, &data, true);
        // Realistic visibility map / stats, and keeps later timings free of first-touch hint-bit writes.
        self.psql(db, "VACUUM ANALYZE");
    }

    /// Applies one deterministic "day of traffic" to a FootDash database, in one
    /// transaction: ~0.5% new users, ~2% new matches (with their events), ~2% new
    /// notifications, ~1% of users, notifications and matches updated, ~0.2% of
    /// notifications, ~0.1% of match events and ~0.1% of users (with their
    /// notifications) deleted. The same `day` applied to the same state gives the same result.
    pub fn footdash_day(&self, db: &str, day: u32) {
        let sql = FOOTDASH_DAY
            .replace("__TS__", FOOTDASH_DAY_TS)
            .replace("__DAY__", &day.to_string());
        self.psql_script(db, &sql, true);
    }

    /// Exact `count(*)` of every ordinary table in schema `public`.
    pub fn row_counts(&self, db: &str) -> BTreeMap<String, i64> {
        let query = self.psql(
            db,
            "SELECT coalesce(string_agg(format('SELECT %L, count(*) FROM public.%I', c.relname, c.relname), \
             ' UNION ALL ' ORDER BY c.relname), '') \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')",
        );
        if query.is_empty() {
            return BTreeMap::new();
        }
        self.psql(db, &query)
            .lines()
            .map(|line| {
                let (name, count) = line
                    .rsplit_once('|')
                    .unwrap_or_else(|| panic!("unexpected row_counts line {line:?}"));
                let count = count
                    .parse()
                    .unwrap_or_else(|e| panic!("bad count in {line:?}: {e}"));
                (name.to_string(), count)
            })
            .collect()
    }

    /// `pg_dump -Fc -Z0 -f path db`: an uncompressed custom-format dump, e.g. as a
    /// reference to compare a pgvault restore against.
    pub fn pg_dump_file(&self, db: &str, path: &Path) {
        let out = self
            .command("pg_dump")
            .args(["-Fc", "-Z0", "-d", db, "-f"])
            .arg(path)
            .output()
            .expect("spawn pg_dump");
        check_output(&out, &format!("pg_dump -d {db} -f {}", path.display()));
    }

    // ---- server-side plumbing ----

    /// A Command for a server-side binary: runs as the postgres user when we are root,
    /// from a directory that user can enter (initdb/pg_ctl fail if the cwd is unreadable,
    /// and root's cwd often is).
    fn server_command(&self, bin: &str) -> Command {
        let mut cmd = Command::new(Self::bin(bin));
        scrub_pg_env(&mut cmd);
        cmd.current_dir(self.dir.path()).stdin(Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            // std drops root's supplementary groups when uid is set.
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    fn initdb(&self) {
        let out = self
            .server_command("initdb")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-A", "trust", "-U", SUPERUSER, "--no-sync", "-E", "UTF8"])
            // Page checksums on, as production clusters have them: a base backup
            // read from PGDATA checks them.
            .arg("--data-checksums")
            // C locale: fast, and independent of whatever LANG the test runner has.
            .args(["--locale=C", "--no-instructions"])
            .output()
            .expect("spawn initdb");
        check_output(&out, "initdb");
    }

    fn write_conf(&self, extra_conf: &[&str]) {
        let mut conf = String::from("\n# --- added by pgvault tests/common/pg.rs ---\n");
        conf.push_str("listen_addresses = '127.0.0.1'\n");
        conf.push_str(&format!(
            "unix_socket_directories = {}\n",
            quote_literal(&self.host())
        ));
        // Durability is worthless for a throwaway cluster and fsync dominates runtime.
        conf.push_str("fsync = off\nsynchronous_commit = off\n");
        // Generated-data statements cross jit_above_cost; compiling them costs more than they run.
        conf.push_str("jit = off\n");
        // Deterministic timestamptz text output regardless of the host's zone.
        conf.push_str("timezone = 'UTC'\nlog_timezone = 'UTC'\n");
        for line in extra_conf {
            conf.push_str(line);
            conf.push('\n');
        }
        append(&self.data_dir.join("postgresql.conf"), &conf);
    }

    /// Starts the server on a fresh port, retrying with another port if something else
    /// grabbed ours between probing and binding.
    fn start_server(&mut self) {
        const ATTEMPTS: usize = 5;
        for attempt in 1..=ATTEMPTS {
            self.port = free_port();
            // A later `port =` line overrides earlier ones, so retries just append.
            append(
                &self.data_dir.join("postgresql.conf"),
                &format!("port = {}\n", self.port),
            );
            let log_before = self.log().len();
            let out = self
                .server_command("pg_ctl")
                .arg("-D")
                .arg(&self.data_dir)
                .arg("-l")
                .arg(&self.log_file)
                .args(["-w", "-t", "60", "start"])
                .output()
                .expect("spawn pg_ctl start");
            if out.status.success() {
                return;
            }
            let log = self.log();
            let new_log = log.get(log_before..).unwrap_or(&log);
            let port_clash =
                new_log.contains("could not bind") || new_log.contains("already in use");
            if !(port_clash && attempt < ATTEMPTS) {
                panic!(
                    "pg_ctl start failed ({}):\n{}{}\n--- server log {} ---\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr),
                    self.log_file.display(),
                    log
                );
            }
        }
    }
}

impl PgCluster {
    /// Stops the server as a crash would (`pg_ctl -m immediate`): nothing is flushed
    /// or archived on the way out.
    pub fn crash(&self) {
        self.stop_with("immediate", "60");
    }

    /// Stops the server cleanly (`pg_ctl -m fast`): the archiver archives what is
    /// ready before it exits, and pg_wal is at rest afterwards.
    pub fn stop_fast(&self) {
        self.stop_with("fast", "120");
    }

    /// `pg_ctl stop -m <mode>`, waiting up to `timeout` seconds; panics with the
    /// server's log when it fails.
    fn stop_with(&self, mode: &str, timeout: &str) {
        let out = self
            .server_command("pg_ctl")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", mode, "-w", "-t", timeout, "stop"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl stop -m {mode}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Nothing here may panic: drop also runs while a failed test unwinds.
        let stopped = self
            .server_command("pg_ctl")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "immediate", "-w", "-t", "30", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !stopped {
            // Not running (start failed) or pg_ctl could not stop it; in the latter case a
            // leftover postmaster would keep the deleted directory busy, so kill it.
            if let Some(pid) = std::fs::read_to_string(self.data_dir.join("postmaster.pid"))
                .ok()
                .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
            {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        if let Ok(mut ports) = PORTS_IN_USE.lock() {
            ports.remove(&self.port);
        }
        // `self.dir` (TempDir) removes the directory after this returns.
    }
}

// ---- helpers ----

fn effective_uid() -> u32 {
    // /proc/self/status: "Uid:\treal\teffective\tsaved\tfs"
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(euid) = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
        {
            return euid;
        }
    }
    let out = Command::new("id").arg("-u").output().expect("run id -u");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("parse id -u output")
}

/// uid and primary gid of `name` from /etc/passwd.
fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        if f.next()? != name {
            return None;
        }
        let _password = f.next()?;
        Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
    })
}

/// A free TCP port on 127.0.0.1, never handed out twice in this test binary (the S3
/// fixture takes its ports from here too).
pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0 to find a free port")
            .port();
        let mut ports = PORTS_IN_USE.lock().unwrap_or_else(|e| e.into_inner());
        if ports.insert(port) {
            return port;
        }
    }
}

fn scrub_pg_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
}

fn check_output(out: &Output, what: &str) {
    super::succeeded(out.clone(), what);
}

fn abbreviate(s: &str) -> String {
    const MAX: usize = 300;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

// ---- FootDash ----

const FOOTDASH_SCHEMA: &str = include_str!("../data/footdash-schema.sql");

// Per scale unit: 16 teams, 400 players, 2000 users, 300 matches (~2650 events), 4500
// notifications. Initial data covers 2023-07-01 .. 2024-06-30; days start at 2024-08-05.
const FOOTDASH_DATA: &str = include_str!("../data/footdash-data.sql");

// Ids continue from max(id); rows are picked with fd_rand over (day, id), so the result
// depends only on the previous state and the day number. "now" for day d is
// 2024-08-05 + d days, later than all initial data.
const FOOTDASH_DAY_TS: &str = "(timestamptz '2024-08-05 00:00:00+00' + __DAY__ * interval '1 day')";
const FOOTDASH_DAY: &str = include_str!("../data/footdash-day.sql");
