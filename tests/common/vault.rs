//! Runs the real `pgvault` binary against a throwaway repository and cache.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A repository location, passphrase and cache directory, and a way to run pgvault on them.
pub struct Vault {
    pub dir: tempfile::TempDir,
    pub repo: String,
    pub password: String,
    pub cache: PathBuf,
    pub extra_env: Vec<(String, String)>,
    /// Run pgvault as this uid/gid (the PostgreSQL server's user, for WAL tests).
    pub run_as: Option<(u32, u32)>,
    /// Pass the passphrase through this file instead of PGVAULT_PASSWORD.
    pub password_file: Option<PathBuf>,
}

/// What one run of pgvault did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Run {
    /// The single line a failed run printed on stderr (the house style), asserted
    /// to be one line.
    pub fn one_line(&self) -> String {
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "expected one line on stderr, got:\n{}",
            self.stderr
        );
        eprintln!("exit {}: {}", self.code, lines[0]);
        lines[0].to_string()
    }

    /// Stdout as text.
    pub fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Panics with both streams unless the run succeeded.
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code,
            0,
            "pgvault failed: stderr:\n{}\nstdout:\n{}",
            self.stderr,
            self.out()
        );
        self
    }

    /// Panics unless the run failed; returns stderr.
    pub fn fails(self) -> String {
        assert_ne!(
            self.code,
            0,
            "pgvault unexpectedly succeeded: stdout:\n{}",
            self.out()
        );
        assert!(
            !self.stderr.trim().is_empty(),
            "a failure must say why on stderr"
        );
        self.stderr
    }

    /// Stdout parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.out()))
    }
}

/// The built pgvault binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pgvault"))
}

impl Vault {
    /// A new, not yet initialised, local repository in a temp dir.
    pub fn local() -> Vault {
        let dir = tempfile::Builder::new()
            .prefix("pgvault-test-")
            .tempdir()
            .unwrap();
        let repo = dir.path().join("repo").display().to_string();
        let cache = dir.path().join("cache");
        Vault {
            dir,
            repo,
            password: "correct horse battery staple".into(),
            cache,
            extra_env: Vec::new(),
            run_as: None,
            password_file: None,
        }
    }

    /// A vault that a PostgreSQL server's archive_command and restore_command can use:
    /// everything owned by, and every command run as, `run_as` (the server's user),
    /// with the passphrase in a file.
    pub fn for_server(run_as: Option<(u32, u32)>) -> Vault {
        let dir = tempfile::Builder::new()
            .prefix("pgvault-test-")
            .tempdir_in("/tmp")
            .unwrap();
        let pass = dir.path().join("passphrase");
        let mut v = Vault {
            repo: dir.path().join("repo").display().to_string(),
            cache: dir.path().join("cache"),
            password: "wal test passphrase".into(),
            extra_env: Vec::new(),
            run_as,
            password_file: Some(pass.clone()),
            dir,
        };
        std::fs::write(&pass, format!("{}\n", v.password)).unwrap();
        if let Some((uid, gid)) = run_as {
            for p in [v.dir.path(), pass.as_path()] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
            }
        }
        v.init();
        v.extra_env.clear();
        v
    }

    /// The environment assignments and binary for a server-run command line
    /// (archive_command, restore_command), without single quotes.
    pub fn shell_prefix(&self) -> String {
        format!(
            "PGVAULT_REPO={} PGVAULT_PASSWORD_FILE={} PGVAULT_CACHE_DIR={} {}",
            self.repo,
            self.password_file
                .as_ref()
                .expect("a server vault")
                .display(),
            self.cache.display(),
            bin().display()
        )
    }

    /// A new, not yet initialised, repository at `s3://bucket/prefix` on `server`, with
    /// the AWS variables pointing at it.
    pub fn s3(server: &super::s3::S3Server, bucket: &str, prefix: &str) -> Vault {
        let mut v = Vault::local();
        v.repo = format!("s3://{bucket}/{prefix}");
        v.extra_env = server.env();
        v
    }

    /// A new local repository, initialised with cheap key derivation (tests open it often).
    pub fn init_local() -> Vault {
        let v = Vault::local();
        v.init();
        v
    }

    /// `pgvault init` with a fast KDF.
    pub fn init(&self) {
        self.init_with(&[]);
    }

    /// `pgvault init` with a fast KDF and more options.
    pub fn init_with(&self, extra: &[&str]) {
        let mut args = vec!["init", "--kdf-memory-kib", "1024", "--kdf-iterations", "1"];
        args.extend_from_slice(extra);
        self.run(&args).ok();
    }

    /// The repository path (local repositories only).
    pub fn repo_path(&self) -> &Path {
        Path::new(&self.repo)
    }

    /// A pgvault command with this vault's environment, not yet started.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args)
            .env("PGVAULT_REPO", &self.repo)
            .env("PGVAULT_CACHE_DIR", &self.cache)
            .stdin(Stdio::null());
        match &self.password_file {
            Some(pf) => c
                .env("PGVAULT_PASSWORD_FILE", pf)
                .env_remove("PGVAULT_PASSWORD"),
            None => c
                .env("PGVAULT_PASSWORD", &self.password)
                .env_remove("PGVAULT_PASSWORD_FILE"),
        };
        if let Some((uid, gid)) = self.run_as {
            use std::os::unix::process::CommandExt;
            c.uid(uid).gid(gid).current_dir(self.dir.path());
        }
        for (k, v) in &self.extra_env {
            c.env(k, v);
        }
        c
    }

    /// Runs pgvault to completion.
    pub fn run(&self, args: &[&str]) -> Run {
        to_run(self.command(args).output().unwrap())
    }

    /// Starts pgvault with stdin, stdout and stderr piped.
    pub fn spawn_piped(&self, args: &[&str]) -> std::process::Child {
        self.command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Runs pgvault with `input` on stdin.
    pub fn run_stdin(&self, args: &[&str], input: &[u8]) -> Run {
        use std::io::Write;
        let mut child = self.spawn_piped(args);
        let mut stdin = child.stdin.take().unwrap();
        let data = input.to_vec();
        // Feed on another thread: pgvault may stop reading early and exit.
        let feeder = std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
        let out = child.wait_with_output().unwrap();
        let _ = feeder.join();
        to_run(out)
    }

    /// `backup --stdin --json` of a dump file as database `db`, at `time` (or now).
    pub fn import(&self, db: &str, file: &Path, time: Option<&str>) -> Run {
        let mut args = vec!["backup", "--stdin", "--db", db, "--json"];
        if let Some(t) = time {
            args.extend(["--time", t]);
        }
        self.run_stdin(&args, &std::fs::read(file).unwrap())
    }

    /// [`Vault::import`], which must succeed; returns the new snapshot's id.
    pub fn import_id(&self, db: &str, file: &Path, time: Option<&str>) -> String {
        let out = self.import(db, file, time).ok().json();
        out["snapshot_id"].as_str().unwrap().to_string()
    }

    /// Backs up a dump file through stdin now and returns the backup's JSON.
    pub fn backup_file(&self, db: &str, file: &Path) -> serde_json::Value {
        self.import(db, file, None).ok().json()
    }

    /// `snapshots --json`.
    pub fn snapshots(&self) -> Vec<serde_json::Value> {
        self.run(&["snapshots", "--json"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .clone()
    }

    /// `cat` into memory.
    pub fn cat(&self, id: &str) -> Vec<u8> {
        self.run(&["cat", id]).ok().stdout
    }

    /// Every object file under a local repository, relative paths.
    /// The entry names of base backup `id`'s stored tar stream, in stream order.
    pub fn stream_names(&self, id: &str) -> Vec<String> {
        let tar_bytes = self.cat(id);
        tar::Archive::new(&tar_bytes[..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    /// The bytes of the file at `path` in base backup `id`'s stored tar stream.
    pub fn file_in_stream(&self, id: &str, path: &str) -> Option<Vec<u8>> {
        let tar_bytes = self.cat(id);
        let mut archive = tar::Archive::new(&tar_bytes[..]);
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            if e.path().unwrap().to_str() == Some(path) {
                let mut out = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut out).unwrap();
                return Some(out);
            }
        }
        None
    }

    pub fn objects(&self, prefix: &str) -> Vec<PathBuf> {
        let mut out = super::walk_files(&self.repo_path().join(prefix));
        out.retain(|p| {
            !p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(".tmp-")
        });
        out.sort();
        out
    }
}

fn to_run(o: Output) -> Run {
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: o.stdout,
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// `init` options for small chunks (16 KiB on average), so that a small database
/// makes many of them.
pub const SMALL_CHUNKS: &[&str] = &[
    "--chunk-min",
    "4096",
    "--chunk-avg",
    "16384",
    "--chunk-max",
    "65536",
];

/// `init` options for 64 KiB chunks on average: many objects from a few MB of dump,
/// but not so many that a test against an S3 server crawls.
pub const MEDIUM_CHUNKS: &[&str] = &[
    "--chunk-min",
    "16384",
    "--chunk-avg",
    "65536",
    "--chunk-max",
    "262144",
];

/// Where the tests find PostgreSQL 15's programs.
pub const PG_BINDIR: &str = "/usr/lib/postgresql/15/bin";

impl Vault {
    /// Makes this vault's pgvault run pg_dump and pg_basebackup against `pg`.
    pub fn use_pg(&mut self, pg: &super::pg::PgCluster) {
        self.extra_env.extend(pg.libpq_env());
        self.extra_env
            .push(("PGVAULT_PG_BINDIR".into(), PG_BINDIR.into()));
    }

    /// A new local vault, initialised with extra `init` options, using `pg`.
    pub fn for_pg(pg: &super::pg::PgCluster, init: &[&str]) -> Vault {
        let mut v = Vault::local();
        v.init_with(init);
        v.use_pg(pg);
        v
    }
}

/// A cluster archiving into a fresh vault through `pgvault wal-push`; the vault's
/// commands run as the server's user.
pub fn archiving_cluster() -> (super::pg::PgCluster, Vault) {
    use super::pg::PgCluster;
    archiving_into(Vault::for_server(PgCluster::server_user()), "")
}

/// A cluster archiving into `v` (which runs as the server's user) through `pgvault
/// wal-push`, with `env` (`NAME=value ...`) in front of the archive command.
pub fn archiving_into(v: Vault, env: &str) -> (super::pg::PgCluster, Vault) {
    archiving_with(v, env, "wal-push %p")
}

/// A cluster archiving into a fresh vault through `pgvault wal-push --async` and its
/// WAL agent; the vault's commands run as the server's user.
pub fn archiving_async_cluster() -> (super::pg::PgCluster, Vault) {
    use super::pg::PgCluster;
    archiving_with(
        Vault::for_server(PgCluster::server_user()),
        "",
        "wal-push --async %p",
    )
}

fn archiving_with(mut v: Vault, env: &str, push: &str) -> (super::pg::PgCluster, Vault) {
    let pg = start_archiving(&v, env, push);
    v.use_pg(&pg);
    (pg, v)
}

/// Another cluster archiving into `v`'s repository through `pgvault wal-push`.
pub fn archiving_beside(v: &Vault) -> super::pg::PgCluster {
    start_archiving(v, "", "wal-push %p")
}

fn start_archiving(v: &Vault, env: &str, push: &str) -> super::pg::PgCluster {
    let archive = format!("archive_command = '{env} {} {push}'", v.shell_prefix());
    super::pg::PgCluster::start_with(&[
        "wal_level = replica",
        "archive_mode = on",
        &archive,
        "max_wal_senders = 4",
    ])
}

impl Vault {
    /// This vault's WAL agent logs and the pgvault processes running now, to
    /// explain an archive_command that hangs.
    pub fn explain_agents(&self) -> String {
        let mut out = String::new();
        for d in std::fs::read_dir(self.cache.join("agents"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let log = std::fs::read_to_string(d.path().join("agent.log")).unwrap_or_default();
            out.push_str(&format!("agent log {}:\n{log}\n", d.path().display()));
        }
        let ps = Command::new("ps")
            .args(["-eo", "pid,ppid,stat,wchan:24,etime,args"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        out.push_str("processes:\n");
        for line in ps
            .lines()
            .filter(|l| l.contains("pgvault") || l.contains("archiver"))
        {
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    /// The process id of this vault's running WAL agent, if one runs.
    pub fn agent_pid(&self) -> Option<u32> {
        let agents = std::fs::read_dir(self.cache.join("agents")).ok()?;
        agents.flatten().find_map(|d| {
            let pid: u32 = std::fs::read_to_string(d.path().join("agent.pid"))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            alive(pid).then_some(pid)
        })
    }
}

/// Whether process `pid` runs (a zombie that nobody reaped does not).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| Some(s.rsplit_once(')')?.1.trim_start().starts_with('Z')))
        == Some(false)
}

/// Forces a segment switch, waits until the archiver has pushed it, and returns its name.
pub fn switch_and_wait_archived(pg: &super::pg::PgCluster) -> String {
    switch_and_wait_archived_explained(pg, String::new)
}

/// As [`switch_and_wait_archived`]; a failure also shows what `explain` says (the
/// WAL agents' logs and processes, for an asynchronous archive_command).
pub fn switch_and_wait_archived_explained(
    pg: &super::pg::PgCluster,
    explain: impl Fn() -> String,
) -> String {
    let seg = pg.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let done = pg.psql(
            "postgres",
            &format!("SELECT coalesce(last_archived_wal >= '{seg}', false) FROM pg_stat_archiver"),
        );
        if done == "t" {
            return seg;
        }
        let failed = pg.psql("postgres", "SELECT failed_count FROM pg_stat_archiver");
        assert!(
            std::time::Instant::now() < deadline,
            "segment {seg} not archived in 60 s (failed_count {failed}); log:\n{}\n{}",
            pg.log(),
            explain()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
