//! Parsers for option values: sizes, durations, times, on/off. Each refuses with one
//! line saying what to type instead, which clap prints with exit code 2.

use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::Args;

use crate::backend::deadline::IoTimeouts;
use crate::backend::Location;
use crate::pg::ConnectOptions;

/// Where the PostgreSQL server is, as pg_dump takes it; what is not given comes from
/// libpq's environment (PGHOST, PGPORT, PGUSER).
#[derive(Debug, Args, Clone)]
pub struct ConnArgs {
    /// Database server host or socket directory (as pg_dump -h)
    #[arg(short = 'h', long, value_name = "HOST")]
    pub host: Option<String>,
    /// Database server port (as pg_dump -p)
    #[arg(short = 'p', long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Database user (as pg_dump -U)
    #[arg(short = 'U', long, value_name = "USER")]
    pub username: Option<String>,
}

impl ConnArgs {
    /// The settings as `pg` takes them.
    pub fn options(&self) -> ConnectOptions {
        ConnectOptions {
            host: self.host.clone(),
            port: self.port,
            user: self.username.clone(),
            conninfo: None,
        }
    }
}

/// A byte count such as `256MiB`, `1GiB`, `64M`, `4096` (binary units; `B` optional).
pub fn size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as 256MiB or 1GiB"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => {
            return Err(format!(
                "{s:?} has an unknown unit; use KiB, MiB, GiB or TiB"
            ))
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// A duration such as `30d` or `10m` (see [`crate::time::parse_duration`]).
pub fn duration(s: &str) -> Result<Duration, String> {
    crate::time::parse_duration(s).map_err(|e| e.to_string())
}

/// The `--io-timeout` setting: a duration in range.
pub fn io_timeout(s: &str) -> Result<IoTimeouts, String> {
    let d = crate::time::parse_duration(s).map_err(|e| e.to_string())?;
    IoTimeouts::new(d).map_err(|e| e.to_string())
}

/// A percentage: a finite number, at least 0.
pub fn percent(s: &str) -> Result<f64, String> {
    match s.trim().trim_end_matches('%').parse::<f64>() {
        Ok(p) if p.is_finite() && p >= 0.0 => Ok(p),
        _ => Err(format!("{s:?} is not a percentage such as 50")),
    }
}

/// A repository location (see [`Location::parse`]).
pub fn location(s: &str) -> Result<Location, String> {
    Location::parse(s).map_err(|e| e.to_string())
}

/// A user by name or uid: its uid and primary gid.
pub fn user(s: &str) -> Result<(u32, u32), String> {
    crate::host::user_ids(s).map_err(|e| e.to_string())
}

/// A group by name or gid.
pub fn group(s: &str) -> Result<u32, String> {
    crate::host::group_id(s).map_err(|e| e.to_string())
}

/// A point in time (see [`crate::time::parse_time`]).
pub fn time(s: &str) -> Result<DateTime<Utc>, String> {
    crate::time::parse_time(s).map_err(|e| e.to_string())
}

/// `on` or `off`.
pub fn on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{s:?} is neither \"on\" nor \"off\"")),
    }
}

/// A `--jobs` value, or the number of cores when it is not given.
pub fn jobs_or_cores(jobs: Option<u16>) -> usize {
    jobs.map_or_else(
        || std::thread::available_parallelism().map_or(2, |n| n.get()),
        usize::from,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(size("256MiB"), Ok(256 << 20));
        assert_eq!(size("1GiB"), Ok(1 << 30));
        assert_eq!(size("64M"), Ok(64 << 20));
        assert_eq!(size("4096"), Ok(4096));
        assert_eq!(size("2 gb"), Ok(2 << 30));
        assert!(size("lots").unwrap_err().contains("256MiB"));
        assert!(size("5XB").unwrap_err().contains("unit"));
        assert!(size("99999999999TiB").unwrap_err().contains("too large"));
    }
}
