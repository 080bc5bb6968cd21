//! The S3 backend: objects in a bucket under an optional prefix, through aws-sdk-s3.
//!
//! Credentials, region and endpoint come from the standard AWS chain (AWS_ACCESS_KEY_ID,
//! AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL, AWS_PROFILE, …), so pgvault
//! behaves like every other AWS tool on the machine. The SDK retries throttling,
//! timeouts and connection resets with backoff; what is left after that is turned
//! into one line that names the endpoint, the bucket and the key, never an SDK dump.
//!
//! Error kinds matter more than the text: a missing object is `NotFound`, while a
//! missing bucket, refused credentials or an unreachable endpoint are `Unavailable`,
//! because `wal-fetch` must never answer "not in the archive" when it could not look.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_sdk_s3::config::retry::{ReconnectMode, RetryConfig, RetryPartition, TokenBucket};
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{Region, StalledStreamProtectionConfig};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use aws_smithy_http_client::tls;

use super::deadline::{Breaker, IoTimeouts};
pub use super::s3_location::{parse_location, S3Options};
use super::{Backend, ObjectStat};
use crate::error::{Error, Result};

/// Attempts per request (the first one included) once the endpoint has answered,
/// unless AWS_MAX_ATTEMPTS says otherwise. The SDK's default of 3 gives up within a
/// second of a connection reset; a backup that has run for an hour should ride out a
/// restart of the store or a load balancer. The backoff doubles per attempt from
/// T/120 with full jitter, and all attempts together stay within the operation
/// deadline (see [`super::deadline`]).
const MAX_ATTEMPTS: u32 = 8;

/// Attempts per request before the endpoint has answered anything. An endpoint that
/// is unreachable from the start is far more often a wrong URL than an outage, and the
/// person who typed it should hear so in a second, not after half a minute.
const FIRST_CONTACT_ATTEMPTS: u32 = 3;

/// Retry tokens for this process. The SDK spends 14 per retry from a shared bucket of
/// 500 and stops retrying when it is empty, a circuit breaker sized for a few requests
/// at a time: with 16 chunks in flight all failing at once, 500 tokens last one round
/// of retries. This many let every request in flight use all its attempts, while a
/// long outage still empties the bucket and fails fast from then on.
const RETRY_TOKENS: usize = 5000;

/// Idle connections kept open to the endpoint. The write path keeps at most 16 chunks
/// in flight (`store::writer`), each using one connection at a time, and readers
/// prefetch a few chunks ahead: keeping this many idle lets a steady backup reuse
/// its connections instead of opening (and TLS-handshaking) new ones per chunk.
/// The number of open connections is bounded by those callers, not by the pool.
const IDLE_CONNECTIONS_KEPT: usize = 32;

/// A repository in `s3://bucket/prefix`.
#[derive(Debug, Clone)]
pub struct S3Backend {
    client: Client,
    bucket: String,
    /// Empty, or the prefix with a trailing `/`.
    prefix: String,
    /// The endpoint URL, for messages.
    endpoint: String,
    region: String,
    /// Attempts per request once the endpoint has answered.
    max_attempts: u32,
    /// Whether the endpoint has answered anything yet (see [`FIRST_CONTACT_ATTEMPTS`]).
    reached: Arc<AtomicBool>,
    timeouts: IoTimeouts,
    /// Open for a moment after the endpoint stopped answering.
    breaker: Breaker,
}

/// Whether an endpoint URL's host is an IP address or localhost, where only
/// path-style addressing works.
fn needs_path_style(endpoint: &str) -> bool {
    let after_scheme = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let authority = after_scheme.split('/').next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    let host = host.to_ascii_lowercase();
    host.parse::<std::net::IpAddr>().is_ok() || host == "localhost" || host.ends_with(".localhost")
}

/// What went wrong with one request, reduced to what a message needs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    /// The store answered with an error status.
    Service {
        status: u16,
        /// The S3 error code, empty when the answer had no body (HEAD).
        code: String,
        message: String,
        /// The `x-amz-bucket-region` header: where the bucket really is.
        bucket_region: Option<String>,
    },
    /// No usable answer: refused, reset, unresolvable or timed out.
    Transport { timeout: bool, cause: String },
    /// The request was never sent: no credentials, or it could not be built.
    Local { credentials: bool, cause: String },
}

/// The innermost cause's text: "Connection refused (os error 111)" rather than the
/// SDK's "dispatch failure".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last: &dyn std::error::Error = e;
    while let Some(s) = last.source() {
        last = s;
    }
    last.to_string()
}

/// Which deadline fired, as the SDK words it ("HTTP read timeout occurred after
/// 30s"), rather than its innermost "timed out".
fn timeout_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut found = None;
    let mut cur: Option<&dyn std::error::Error> = Some(e);
    while let Some(c) = cur {
        let text = c.to_string();
        if text.contains("timeout occurred after") || text.contains("minimum throughput") {
            found = Some(text);
        }
        cur = c.source();
    }
    let why = found.unwrap_or_else(|| "timed out".into());
    format!("{why} (gave up after retrying)")
}

fn chain_mentions(e: &(dyn std::error::Error + 'static), needle: &str) -> bool {
    let mut cur: Option<&dyn std::error::Error> = Some(e);
    while let Some(c) = cur {
        if c.to_string().to_ascii_lowercase().contains(needle) {
            return true;
        }
        cur = c.source();
    }
    false
}

fn classify<E>(err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err {
        SdkError::ServiceError(ctx) => {
            let raw = ctx.raw();
            let e = ctx.err();
            Failure::Service {
                status: raw.status().as_u16(),
                code: e.code().unwrap_or("").to_string(),
                message: e.message().unwrap_or("").to_string(),
                bucket_region: raw.headers().get("x-amz-bucket-region").map(str::to_string),
            }
        }
        SdkError::ResponseError(ctx) => {
            let status = ctx.raw().status().as_u16();
            if status >= 300 {
                Failure::Service {
                    status,
                    code: String::new(),
                    message: String::new(),
                    bucket_region: ctx
                        .raw()
                        .headers()
                        .get("x-amz-bucket-region")
                        .map(str::to_string),
                }
            } else if chain_mentions(err, "minimum throughput") {
                Failure::Transport {
                    timeout: true,
                    cause: "the answer stopped coming (no byte within the stall limit)".into(),
                }
            } else {
                Failure::Transport {
                    timeout: false,
                    cause: format!("unreadable answer: {}", root_cause(err)),
                }
            }
        }
        SdkError::TimeoutError(_) => Failure::Transport {
            timeout: true,
            cause: timeout_cause(err),
        },
        SdkError::DispatchFailure(d) => {
            if chain_mentions(err, "credential") {
                Failure::Local {
                    credentials: true,
                    cause: root_cause(err),
                }
            } else if d.is_timeout() {
                Failure::Transport {
                    timeout: true,
                    cause: timeout_cause(err),
                }
            } else {
                Failure::Transport {
                    timeout: false,
                    cause: root_cause(err),
                }
            }
        }
        _ => Failure::Local {
            credentials: chain_mentions(err, "credential"),
            cause: root_cause(err),
        },
    }
}

impl Failure {
    /// Whether retrying the same request may succeed (used where pgvault retries by
    /// itself instead of leaving it to the SDK).
    fn is_transient(&self) -> bool {
        match self {
            Failure::Transport { .. } => true,
            Failure::Service { status, code, .. } => {
                matches!(status, 500 | 502 | 503 | 504)
                    || matches!(
                        code.as_str(),
                        "SlowDown" | "Throttling" | "RequestTimeout" | "InternalError"
                    )
            }
            Failure::Local { .. } => false,
        }
    }

    fn is_throttling(&self) -> bool {
        matches!(self, Failure::Service { status: 503, .. })
            || matches!(self, Failure::Service { code, .. } if code == "SlowDown" || code == "Throttling")
    }

    fn status(&self) -> Option<u16> {
        match self {
            Failure::Service { status, .. } => Some(*status),
            _ => None,
        }
    }

    fn code(&self) -> &str {
        match self {
            Failure::Service { code, .. } => code,
            _ => "",
        }
    }
}

/// What a request was for, to name it in a message.
struct Ctx<'a> {
    endpoint: &'a str,
    bucket: &'a str,
    region: &'a str,
    /// "read", "write", "list", "delete", "check", "create"…
    action: &'a str,
    /// `s3://bucket/key` of the object (or prefix) concerned.
    target: String,
}

/// Turns a failure into one clear line with a meaningful kind.
fn describe(f: &Failure, c: &Ctx) -> Error {
    let Ctx {
        endpoint,
        bucket,
        region,
        action,
        target,
    } = c;
    let msg = match f {
        Failure::Local {
            credentials: true, ..
        } => format!(
            "No usable S3 credentials to {action} {target}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
        ),
        Failure::Local { cause, .. } => {
            format!("Cannot send the request to {action} {target} to S3 endpoint {endpoint}: {cause}")
        }
        Failure::Transport {
            timeout: true,
            cause,
        } => format!("S3 endpoint {endpoint} did not answer to {action} {target}: {cause}"),
        Failure::Transport { cause, .. } => format!(
            "Cannot reach S3 endpoint {endpoint} to {action} {target}: {cause} (gave up after retrying)"
        ),
        Failure::Service {
            status,
            code,
            message,
            bucket_region,
        } => {
            let code = code.as_str();
            let region_hint = bucket_region
                .as_deref()
                .filter(|r| !r.is_empty() && r != region);
            if let Some(real) = region_hint.filter(|_| {
                matches!(*status, 301 | 307 | 400)
                    || matches!(
                        code,
                        "PermanentRedirect" | "AuthorizationHeaderMalformed" | "IllegalLocationConstraintException"
                    )
            }) {
                format!(
                    "Bucket {bucket} is in region {real}, not {region}: set AWS_REGION={real} (S3 endpoint {endpoint})"
                )
            } else if matches!(*status, 301 | 307)
                || matches!(code, "PermanentRedirect" | "AuthorizationHeaderMalformed")
            {
                format!(
                    "Bucket {bucket} is not in region {region} (S3 endpoint {endpoint} answered {status} {code}): set AWS_REGION to the bucket's region"
                )
            } else if code == "NoSuchBucket" {
                format!(
                    "Bucket {bucket} does not exist at S3 endpoint {endpoint}: check the repository location, or run `pgvault init` to create it"
                )
            } else if code == "InvalidAccessKeyId" {
                format!(
                    "S3 endpoint {endpoint} does not know the access key id used to {action} {target}: check AWS_ACCESS_KEY_ID or AWS_PROFILE"
                )
            } else if code == "SignatureDoesNotMatch" {
                format!(
                    "S3 endpoint {endpoint} rejected the request signature to {action} {target}: the secret key is wrong (check AWS_SECRET_ACCESS_KEY or AWS_PROFILE)"
                )
            } else if *status == 403 {
                format!(
                    "S3 endpoint {endpoint} denied access to {action} {target}: the credentials are wrong or lack permission"
                )
            } else if *status == 404 && code.is_empty() {
                format!(
                    "S3 endpoint {endpoint} answered a bare 404, not an S3 error, to {action} {target}: check that it is the S3 endpoint"
                )
            } else if f.is_throttling() {
                format!(
                    "S3 endpoint {endpoint} kept throttling requests (503 {code}) to {action} {target} (gave up after retrying)"
                )
            } else {
                let detail = match (code.is_empty(), message.is_empty()) {
                    (true, _) => String::new(),
                    (false, true) => format!(" {code}"),
                    (false, false) => format!(" {code}: {message}"),
                };
                let retried = if f.is_transient() {
                    " (gave up after retrying)"
                } else {
                    ""
                };
                format!(
                    "S3 endpoint {endpoint} failed to {action} {target}: {status}{detail}{retried}"
                )
            }
        }
    };
    Error::Unavailable(msg)
}

/// A retry delay with full jitter, as the SDK's standard mode computes it: up to
/// `initial * 2^(attempt-1)`, capped at `max`.
fn backoff(t: &IoTimeouts, attempt: u32) -> Duration {
    let cap = t
        .initial_backoff()
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(t.max_backoff());
    let r = u64::from_le_bytes(crate::crypto::random_bytes::<8>());
    cap.mul_f64((r >> 11) as f64 / (1u64 << 53) as f64)
}

/// Sends a request built by `$req`, with fewer attempts while the endpoint has not
/// answered yet, and notes when it has.
macro_rules! send {
    ($self:expr, $req:expr) => {{
        let res = if $self.reached.load(Ordering::Relaxed) {
            $req.send().await
        } else {
            $req.customize()
                .config_override($self.first_contact_config())
                .send()
                .await
        };
        if matches!(
            &res,
            Ok(_) | Err(SdkError::ServiceError(_)) | Err(SdkError::ResponseError(_))
        ) {
            $self.answered();
        }
        res
    }};
}

impl S3Backend {
    /// A client for `location` (`s3://bucket/prefix`) configured from the AWS chain.
    /// Sends no request: an unreachable endpoint shows up on first use.
    ///
    /// Errors: `InvalidInput` when the location is not an `s3://` URL, or when no
    /// region is configured for AWS proper.
    pub async fn connect(location: &str, opts: &S3Options) -> Result<Self> {
        let (bucket, prefix) = parse_location(location)?;
        let http = aws_smithy_http_client::Builder::new()
            .pool_max_idle_per_host(IDLE_CONNECTIONS_KEPT)
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::AwsLc,
            ))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http);
        if let Some(r) = &opts.region {
            loader = loader.region(Region::new(r.clone()));
        }
        if let Some((id, secret)) = &opts.static_credentials {
            loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                id.clone(),
                secret.clone(),
                None,
                None,
                "pgvault-options",
            ));
        }
        let sdk = loader.load().await;
        let endpoint_url = opts.endpoint_url.clone().or_else(|| {
            std::env::var("AWS_ENDPOINT_URL_S3")
                .ok()
                .filter(|s| !s.is_empty())
                .or_else(|| sdk.endpoint_url().map(str::to_string))
        });
        let region = match (sdk.region(), &endpoint_url) {
            (Some(r), _) => r.to_string(),
            // S3-compatible stores mostly ignore the region, but SigV4 signs one.
            (None, Some(_)) => "us-east-1".to_string(),
            (None, None) => {
                return Err(Error::InvalidInput(format!(
                    "No AWS region for repository {location}: set AWS_REGION (or a region in the AWS_PROFILE)"
                )))
            }
        };
        let path_style = opts.path_style || endpoint_url.as_deref().is_some_and(needs_path_style);
        let t = opts.timeouts;
        let mut retry = sdk
            .retry_config()
            .cloned()
            .unwrap_or_else(RetryConfig::standard)
            .with_initial_backoff(t.initial_backoff())
            .with_max_backoff(t.max_backoff())
            .with_reconnect_mode(ReconnectMode::ReconnectOnTransientError);
        if std::env::var_os("AWS_MAX_ATTEMPTS").is_none() {
            retry = retry.with_max_attempts(MAX_ATTEMPTS);
        }
        let max_attempts = retry.max_attempts().max(1);
        // Connect covers DNS, TCP and TLS; read, the request going out and the first
        // byte of the answer; stalled-stream protection, silence inside a download
        // (which no other SDK timeout covers once send() has returned).
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(t.connect())
            .read_timeout(t.first_byte())
            .operation_attempt_timeout(t.attempt())
            .operation_timeout(t.operation())
            .build();
        let mut conf = aws_sdk_s3::config::Builder::from(&sdk)
            .region(Region::new(region.clone()))
            .force_path_style(path_style)
            .retry_config(retry)
            .retry_partition(
                RetryPartition::custom("pgvault")
                    .token_bucket(TokenBucket::builder().capacity(RETRY_TOKENS).build())
                    .build(),
            )
            .timeout_config(timeouts)
            .stalled_stream_protection(
                StalledStreamProtectionConfig::enabled()
                    .grace_period(t.stall())
                    .build(),
            );
        if let Some(url) = &endpoint_url {
            conf = conf.endpoint_url(url);
        }
        let endpoint = endpoint_url.unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        Ok(S3Backend {
            client: Client::from_conf(conf.build()),
            bucket,
            prefix,
            endpoint,
            region,
            max_attempts,
            reached: Arc::new(AtomicBool::new(false)),
            timeouts: t,
            breaker: Breaker::new(t.down_for()),
        })
    }

    /// The endpoint answered (if only with an error): it is reachable.
    fn answered(&self) {
        self.reached.store(true, Ordering::Relaxed);
        self.breaker.close();
    }

    /// Runs one call under the call deadline, refusing it at once while the endpoint
    /// counts as down.
    async fn bounded<T>(
        &self,
        action: &str,
        key: &str,
        call: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        self.breaker
            .check(&format!("to {action} {}", self.target(key)))?;
        match tokio::time::timeout(self.timeouts.call(), call).await {
            Ok(r) => r,
            Err(_) => Err(self.describe(
                action,
                key,
                &Failure::Transport {
                    timeout: true,
                    cause: format!(
                        "no complete answer within {:?} (--io-timeout {:?})",
                        self.timeouts.call(),
                        self.timeouts.first_byte()
                    ),
                },
            )),
        }
    }

    /// The retry settings for requests before the endpoint has first answered.
    fn first_contact_config(&self) -> aws_sdk_s3::config::Builder {
        aws_sdk_s3::config::Builder::default().retry_config(
            RetryConfig::standard()
                .with_max_attempts(FIRST_CONTACT_ATTEMPTS.min(self.max_attempts))
                .with_initial_backoff(self.timeouts.initial_backoff())
                .with_max_backoff(self.timeouts.max_backoff()),
        )
    }

    /// How many times pgvault's own retry loops try a request.
    fn attempts_allowed(&self) -> u32 {
        if self.reached.load(Ordering::Relaxed) {
            self.max_attempts
        } else {
            FIRST_CONTACT_ATTEMPTS.min(self.max_attempts)
        }
    }

    /// The bucket name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The endpoint URL requests go to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn target(&self, key: &str) -> String {
        format!("s3://{}/{}{key}", self.bucket, self.prefix)
    }

    fn fail<E>(
        &self,
        action: &str,
        key: &str,
        err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        self.describe(action, key, &classify(err))
    }

    fn describe(&self, action: &str, key: &str, f: &Failure) -> Error {
        // Silence is reported with the deadline that ended it, so the operator can
        // tell a dead store from a tight --io-timeout.
        let with_deadline;
        let f = match f {
            Failure::Transport {
                timeout: true,
                cause,
            } if !cause.contains("--io-timeout") => {
                with_deadline = Failure::Transport {
                    timeout: true,
                    cause: format!(
                        "no answer within {:?} (--io-timeout {:?}): {cause}",
                        self.timeouts.operation(),
                        self.timeouts.first_byte()
                    ),
                };
                &with_deadline
            }
            other => other,
        };
        let e = describe(
            f,
            &Ctx {
                endpoint: &self.endpoint,
                bucket: &self.bucket,
                region: &self.region,
                action,
                target: self.target(key),
            },
        );
        if matches!(f, Failure::Transport { .. }) {
            self.breaker.trip(&e.to_string());
        }
        e
    }

    fn not_found(&self, key: &str) -> Error {
        Error::NotFound {
            what: format!("Object {key}"),
            location: self.location(),
        }
    }

    /// Reads an object, or `None` when it does not exist.
    async fn get_opt(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let resp = match send!(
            self,
            self.client
                .get_object()
                .bucket(&self.bucket)
                .key(self.full_key(key))
        ) {
            Ok(r) => r,
            Err(e) => {
                let f = classify(&e);
                // Only S3's own "no such key" means "not there". A missing bucket, or
                // a bare 404 from something that is not an S3 endpoint (a proxy, a
                // wrong URL), must not pass for a missing object: wal-fetch would
                // tell PostgreSQL that a segment is not archived when it could not look.
                return match (f.status(), f.code()) {
                    (Some(404), "NoSuchKey") => Ok(None),
                    _ => Err(self.describe("read", key, &f)),
                };
            }
        };
        let body = resp.body.collect().await.map_err(|e| {
            self.describe(
                "read",
                key,
                &Failure::Transport {
                    timeout: false,
                    cause: format!("the download broke off: {}", root_cause(&e)),
                },
            )
        })?;
        Ok(Some(body.into_bytes().to_vec()))
    }
}

impl S3Backend {
    /// Creates the bucket when it does not exist yet (no deadline of its own).
    async fn prepare_root_now(&self) -> Result<()> {
        let head = send!(self, self.client.head_bucket().bucket(&self.bucket));
        let f = match head {
            Ok(_) => return Ok(()),
            Err(e) => classify(&e),
        };
        if f.status() != Some(404) {
            return Err(self.describe("check bucket", "", &f));
        }
        let mut create = self.client.create_bucket().bucket(&self.bucket);
        if self.region != "us-east-1" {
            // AWS wants the region spelled out everywhere except in us-east-1.
            create = create.create_bucket_configuration(
                aws_sdk_s3::types::CreateBucketConfiguration::builder()
                    .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(
                        self.region.as_str(),
                    ))
                    .build(),
            );
        }
        match send!(self, create) {
            Ok(_) => {
                tracing::info!("Created bucket {} at {}", self.bucket, self.endpoint);
                Ok(())
            }
            Err(e) => {
                let f = classify(&e);
                match f.code() {
                    // Someone (maybe a concurrent init) created it meanwhile.
                    "BucketAlreadyOwnedByYou" => Ok(()),
                    "BucketAlreadyExists" => Err(Error::Unavailable(format!(
                        "Bucket {} already exists and belongs to another account (S3 endpoint {}): choose another bucket name",
                        self.bucket, self.endpoint
                    ))),
                    _ => Err(self.describe("create bucket", "", &f)),
                }
            }
        }
    }

    async fn put_now(&self, key: &str, data: Vec<u8>) -> Result<()> {
        send!(
            self,
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(self.full_key(key))
                .body(ByteStream::from(data))
        )
        .map(|_| ())
        .map_err(|e| self.fail("write", key, &e))
    }

    /// A conditional put (`If-None-Match: *`). pgvault retries it by itself rather
    /// than letting the SDK do so, because a retry is ambiguous: when an attempt
    /// stored the object but its answer was lost, the retry is refused with 412 as if
    /// someone else had been first. So after an ambiguous failure a refusal is checked
    /// against the stored bytes, which are unique per caller (they carry random ids,
    /// salts or nonces).
    async fn put_if_absent_now(&self, key: &str, data: Vec<u8>) -> Result<bool> {
        let single_attempt =
            aws_sdk_s3::config::Builder::default().retry_config(RetryConfig::disabled());
        let mut maybe_stored = false;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let res = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(self.full_key(key))
                .if_none_match("*")
                .body(ByteStream::from(data.clone()))
                .customize()
                .config_override(single_attempt.clone())
                .send()
                .await;
            let f = match res {
                Ok(_) => {
                    self.reached.store(true, Ordering::Relaxed);
                    return Ok(true);
                }
                Err(e) => classify(&e),
            };
            if matches!(f, Failure::Service { .. }) {
                self.reached.store(true, Ordering::Relaxed);
            }
            match (f.status(), f.code()) {
                (Some(412), _) => {
                    if maybe_stored && self.get_opt(key).await?.as_deref() == Some(&data[..]) {
                        return Ok(true);
                    }
                    return Ok(false);
                }
                // AWS: another conditional write to this key is in progress; ours did
                // not happen, and asking again gets a definite answer.
                (Some(409), "ConditionalRequestConflict") if attempt < self.attempts_allowed() => {
                    tokio::time::sleep(backoff(&self.timeouts, attempt)).await;
                    continue;
                }
                (Some(501), _) | (_, "NotImplemented") => {
                    return Err(Error::InvalidInput(format!(
                        "S3 endpoint {} does not support conditional writes (If-None-Match: *), which {} needs to be created safely",
                        self.endpoint,
                        self.target(key)
                    )))
                }
                _ => {}
            }
            if f.is_transient() && attempt < self.attempts_allowed() {
                // Only a failure after the request went out can have stored it.
                maybe_stored |= !matches!(
                    &f,
                    Failure::Transport { cause, .. } if cause.contains("refused")
                );
                tokio::time::sleep(backoff(&self.timeouts, attempt)).await;
                continue;
            }
            return Err(self.describe("create", key, &f));
        }
    }

    async fn exists_now(&self, key: &str) -> Result<bool> {
        match send!(
            self,
            self.client
                .head_object()
                .bucket(&self.bucket)
                .key(self.full_key(key))
        ) {
            Ok(_) => Ok(true),
            Err(e) => {
                let f = classify(&e);
                // HEAD answers carry no body, so a missing bucket also looks like a
                // plain 404 here; the write that follows names the bucket instead.
                if f.status() == Some(404) && f.code() != "NoSuchBucket" {
                    Ok(false)
                } else {
                    Err(self.describe("check", key, &f))
                }
            }
        }
    }

    async fn delete_now(&self, key: &str) -> Result<()> {
        send!(
            self,
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(self.full_key(key))
        )
        .map(|_| ())
        .map_err(|e| self.fail("delete", key, &e))
    }
}

#[async_trait]
impl Backend for S3Backend {
    fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix.trim_end_matches('/'))
            .trim_end_matches('/')
            .to_string()
    }

    /// Creates the bucket when it does not exist yet.
    async fn prepare_root(&self) -> Result<()> {
        self.bounded("check bucket", "", self.prepare_root_now())
            .await
    }

    async fn put(&self, key: &str, data: Vec<u8>) -> Result<()> {
        self.bounded("write", key, self.put_now(key, data)).await
    }

    async fn put_if_absent(&self, key: &str, data: Vec<u8>) -> Result<bool> {
        self.bounded("create", key, self.put_if_absent_now(key, data))
            .await
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>> {
        self.bounded("read", key, self.get_opt(key))
            .await?
            .ok_or_else(|| self.not_found(key))
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        self.bounded("check", key, self.exists_now(key)).await
    }
    async fn list_stat(&self, prefix: &str) -> Result<Vec<ObjectStat>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        let mut seen_tokens = std::collections::HashSet::new();
        loop {
            // One page holds up to 1000 keys; the token continues where it ended.
            // Each page under its own deadline: a listing of a million keys takes
            // minutes on a healthy store, and one page is all a frozen one gets.
            let what = format!("{prefix}*");
            let page = self
                .bounded("list", &what, async {
                    send!(
                        self,
                        self.client
                            .list_objects_v2()
                            .bucket(&self.bucket)
                            .prefix(self.full_key(prefix))
                            .set_continuation_token(token.clone())
                    )
                    .map_err(|e| self.fail("list", &what, &e))
                })
                .await?;
            for obj in page.contents() {
                let Some(key) = obj.key().and_then(|k| k.strip_prefix(&self.prefix)) else {
                    continue;
                };
                out.push(ObjectStat {
                    key: key.to_string(),
                    size_bytes: obj.size().unwrap_or(0).max(0) as u64,
                    modified: obj
                        .last_modified()
                        .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos())),
                });
            }
            if page.is_truncated() != Some(true) {
                return Ok(out);
            }
            match page.next_continuation_token().filter(|t| !t.is_empty()) {
                // A token handed back twice would page through the same keys for ever.
                Some(t) if seen_tokens.contains(t) => {
                    return Err(Error::Corrupt(format!(
                        "S3 endpoint {} repeated a continuation token while listing {} after {} keys: refusing an endless listing",
                        self.endpoint,
                        self.target(&format!("{prefix}*")),
                        out.len()
                    )))
                }
                Some(t) => {
                    seen_tokens.insert(t.to_string());
                    token = Some(t.to_string());
                }
                // A store that says "there is more" but not where it continues: a
                // short list here would let prune delete chunks it never saw.
                None => {
                    return Err(Error::Corrupt(format!(
                        "S3 endpoint {} answered a listing of {} as truncated without a continuation token after {} keys: refusing a partial listing",
                        self.endpoint,
                        self.target(&format!("{prefix}*")),
                        out.len()
                    )))
                }
            }
        }
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.bounded("delete", key, self.delete_now(key)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse() {
        assert_eq!(
            parse_location("s3://bk").unwrap(),
            ("bk".to_string(), String::new())
        );
        assert_eq!(
            parse_location("s3://bk/").unwrap(),
            ("bk".to_string(), String::new())
        );
        assert_eq!(
            parse_location("s3://bk/a//b/").unwrap(),
            ("bk".to_string(), "a/b/".to_string())
        );
        assert!(parse_location("s3://").is_err());
        assert!(parse_location("s3://Upper/x").is_err());
        assert!(parse_location("/local/dir").is_err());
    }

    #[test]
    fn path_style_for_ips_and_localhost() {
        assert!(needs_path_style("http://127.0.0.1:8333"));
        assert!(needs_path_style("http://[::1]:8333/"));
        assert!(needs_path_style("http://localhost:9000"));
        assert!(needs_path_style("https://LOCALHOST"));
        assert!(needs_path_style("http://10.0.0.5"));
        assert!(!needs_path_style("https://s3.eu-west-1.amazonaws.com"));
        assert!(!needs_path_style("https://minio.example.com:9000"));
    }

    fn ctx() -> Ctx<'static> {
        Ctx {
            endpoint: "https://s3.us-east-1.amazonaws.com",
            bucket: "bk",
            region: "us-east-1",
            action: "read",
            target: "s3://bk/p/config".into(),
        }
    }

    fn service(status: u16, code: &str, region: Option<&str>) -> Failure {
        Failure::Service {
            status,
            code: code.into(),
            message: "Some message.".into(),
            bucket_region: region.map(str::to_string),
        }
    }

    #[test]
    fn wrong_region_is_named_with_the_right_one() {
        // AWS answers a request signed for the wrong region with a redirect (HEAD,
        // virtual-host style) or AuthorizationHeaderMalformed, plus the real region.
        for f in [
            service(301, "", Some("eu-west-3")),
            service(301, "PermanentRedirect", Some("eu-west-3")),
            service(400, "AuthorizationHeaderMalformed", Some("eu-west-3")),
        ] {
            let e = describe(&f, &ctx()).to_string();
            assert_eq!(
                e,
                "Bucket bk is in region eu-west-3, not us-east-1: set AWS_REGION=eu-west-3 (S3 endpoint https://s3.us-east-1.amazonaws.com)"
            );
        }
        let e = describe(&service(301, "", None), &ctx()).to_string();
        assert!(e.contains("not in region us-east-1"), "{e}");
    }

    #[test]
    fn messages_are_one_line_and_keep_kinds() {
        let cases = [
            (service(404, "NoSuchBucket", None), "Bucket bk does not exist"),
            (service(403, "SignatureDoesNotMatch", None), "secret key is wrong"),
            (service(403, "InvalidAccessKeyId", None), "access key id"),
            (service(403, "", None), "denied access to read s3://bk/p/config"),
            (service(503, "SlowDown", None), "kept throttling"),
            (service(404, "", None), "bare 404"),
            (service(500, "InternalError", None), "500 InternalError: Some message. (gave up after retrying)"),
            (
                Failure::Transport {
                    timeout: false,
                    cause: "Connection refused (os error 111)".into(),
                },
                "Cannot reach S3 endpoint https://s3.us-east-1.amazonaws.com to read s3://bk/p/config: Connection refused",
            ),
            (
                Failure::Local {
                    credentials: true,
                    cause: "x".into(),
                },
                "No usable S3 credentials",
            ),
            (
                Failure::Transport {
                    timeout: true,
                    cause: "HTTP read timeout occurred after 30s (gave up after retrying)".into(),
                },
                "S3 endpoint https://s3.us-east-1.amazonaws.com did not answer to read s3://bk/p/config: HTTP read timeout occurred after 30s",
            ),
        ];
        for (f, want) in cases {
            let e = describe(&f, &ctx());
            let s = e.to_string();
            assert!(s.contains(want), "{s}");
            assert!(!s.contains('\n') && !s.ends_with('.'), "{s}");
            assert!(s.chars().next().unwrap().is_uppercase(), "{s}");
            assert_eq!(e.kind(), crate::error::ErrorKind::Unavailable);
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let t = IoTimeouts::default();
        for a in 1..40 {
            let d = backoff(&t, a);
            assert!(d <= t.max_backoff(), "{d:?}");
        }
        assert!(backoff(&t, 1) <= t.initial_backoff());
        assert!(backoff(&t, 2) <= t.initial_backoff() * 2);
    }
}
