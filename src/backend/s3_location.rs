//! Where an S3 repository is and how its client is set up: what the command line
//! knows of S3 even in a build without the S3 backend (feature `s3`).

use super::deadline::IoTimeouts;
use crate::error::{Error, Result};

/// How the S3 client is set up beyond what the AWS chain says. The overrides let a
/// program talk to several stores at once, which process-wide variables cannot.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// Address buckets as `endpoint/bucket/key` instead of `bucket.endpoint/key`.
    /// Path style is used anyway when the endpoint is an IP address or localhost,
    /// where virtual-host names cannot resolve.
    pub path_style: bool,
    /// The endpoint URL, instead of AWS_ENDPOINT_URL or the profile's.
    pub endpoint_url: Option<String>,
    /// The region, instead of AWS_REGION or the profile's.
    pub region: Option<String>,
    /// An access key id and secret key, instead of the credential chain.
    pub static_credentials: Option<(String, String)>,
    /// The deadlines of every request.
    pub timeouts: IoTimeouts,
}

/// Splits `s3://bucket/optional/prefix` into the bucket and the prefix (empty, or
/// ending in `/`).
///
/// Errors: `InvalidInput` when the location is not an `s3://` URL with a bucket name.
pub fn parse_location(location: &str) -> Result<(String, String)> {
    let rest = location.strip_prefix("s3://").ok_or_else(|| {
        Error::InvalidInput(format!(
            "Repository location {location:?} is not an s3://bucket/prefix URL"
        ))
    })?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let valid_bucket = !bucket.is_empty()
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-._".contains(c));
    if !valid_bucket {
        return Err(Error::InvalidInput(format!(
            "Repository location {location:?} has no valid bucket name: expected s3://bucket/prefix with a bucket of lowercase letters, digits, '.' and '-'"
        )));
    }
    let parts: Vec<&str> = prefix.split('/').filter(|p| !p.is_empty()).collect();
    let prefix = if parts.is_empty() {
        String::new()
    } else {
        format!("{}/", parts.join("/"))
    };
    Ok((bucket.to_string(), prefix))
}
