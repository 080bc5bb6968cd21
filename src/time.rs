//! Times and durations as people type and read them: one parser for every time
//! argument (`--time`, `--target-time`, `at/<time>`), one for durations, and the
//! formats every listing prints.
//!
//! A restore is often typed at 3 a.m. from what psql or a server log printed, so the
//! parser takes what PostgreSQL prints and accepts for `timestamptz`:
//! `2026-11-29 20:38:42.421088+00` (`SELECT now()`), `2026-11-29 20:38:42 UTC` (the
//! log's `%t`), RFC 3339 (`2026-11-29T20:38:42Z`), offsets as `+05:30`, `+0530` or
//! `+05`, `T` or a space between date and time, seconds optional, fractions kept to
//! the microsecond. A time without a zone is refused rather than guessed: the server,
//! the shell and the person may each be in a different one.

use std::time::Duration;

use chrono::{DateTime, FixedOffset, NaiveDateTime, SecondsFormat, Utc};

use crate::error::{Error, Result};

/// Parses a point in time; see the module documentation for what is accepted.
///
/// Errors: `InvalidInput` naming the text and saying what to type instead.
pub fn parse_time(s: &str) -> Result<DateTime<Utc>> {
    let text = s.trim();
    let bad = |why: &str| {
        Error::InvalidInput(format!(
            "{text:?} is not a time{why}: write it as PostgreSQL prints it, e.g. '2026-11-29 20:38:42.421088+00' or '2026-11-29 20:38:42 UTC', or as 2026-11-29T20:38:42Z"
        ))
    };
    let Some((date, rest)) = split_date(text) else {
        return Err(bad(""));
    };
    if rest.is_empty() {
        return Err(bad(" of day (a date alone)"));
    }
    let (clock, zone) = split_zone(rest);
    let offset = match zone {
        Some(z) => parse_offset(z).ok_or_else(|| bad(&format!(" in a zone pgvault knows ({z:?})")))?,
        None => {
            return Err(Error::InvalidInput(format!(
                "{text:?} has no time zone: add one, e.g. '{text}+00' for UTC or '{text}+05:30' for your offset"
            )))
        }
    };
    let naive = ["%H:%M:%S%.f", "%H:%M"]
        .iter()
        .find_map(|f| {
            NaiveDateTime::parse_from_str(&format!("{date} {clock}"), &format!("%Y-%m-%d {f}")).ok()
        })
        .ok_or_else(|| bad(""))?;
    let local = naive
        .and_local_timezone(offset)
        .single()
        .ok_or_else(|| bad(""))?;
    Ok(local.with_timezone(&Utc))
}

/// `2026-11-29` and what follows the `T` or space after it.
fn split_date(text: &str) -> Option<(&str, &str)> {
    let date = text.get(..10)?;
    let ok = date.bytes().enumerate().all(|(i, b)| match i {
        4 | 7 => b == b'-',
        _ => b.is_ascii_digit(),
    });
    if !ok {
        return None;
    }
    let rest = &text[10..];
    match rest.as_bytes().first() {
        None => Some((date, "")),
        Some(b'T' | b't' | b' ') => Some((date, rest[1..].trim_start())),
        Some(_) => None,
    }
}

/// The clock part and the zone part of `20:38:42.5+05:30` or `20:38:42 UTC`.
fn split_zone(rest: &str) -> (&str, Option<&str>) {
    if let Some(i) = rest.find(['+', '-']) {
        return (rest[..i].trim_end(), Some(&rest[i..]));
    }
    if let Some(i) = rest.find(|c: char| c.is_ascii_alphabetic()) {
        return (rest[..i].trim_end(), Some(rest[i..].trim()));
    }
    (rest, None)
}

/// `Z`, `UTC`, `GMT`, `+05`, `+0530`, `+05:30`, `-08`.
fn parse_offset(z: &str) -> Option<FixedOffset> {
    if ["z", "utc", "gmt", "+00", "-00"].contains(&z.to_ascii_lowercase().as_str()) {
        return FixedOffset::east_opt(0);
    }
    let sign = match z.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits: String = z[1..].chars().filter(|c| *c != ':').collect();
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m) = match digits.len() {
        2 => (digits.parse::<i32>().ok()?, 0),
        4 => (
            digits[..2].parse::<i32>().ok()?,
            digits[2..].parse::<i32>().ok()?,
        ),
        _ => return None,
    };
    if h > 15 || m > 59 {
        return None;
    }
    FixedOffset::east_opt(sign * (h * 3600 + m * 60))
}

/// A time as listings and directory names show it: RFC 3339 in UTC, whole seconds.
pub fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A time for PostgreSQL's `recovery_target_time`: UTC, to the microsecond.
pub fn pg_timestamptz(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string()
}

/// The time `d` before `t`, or the earliest time there is when that is out of range:
/// "keep everything newer than a very long time ago" must keep everything, not panic.
pub fn before(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Parses a duration such as `30d`, `12h`, `2w`, `90m`, `45s` or `1d12h`.
///
/// Errors: `InvalidInput` naming the text when it is not such a duration or is
/// longer than a hundred years (no retention or wait means that; a typo does).
pub fn parse_duration(s: &str) -> Result<Duration> {
    const LONGEST_SECS: u64 = 100 * 366 * 86_400;
    let bad = |why: &str| {
        Error::InvalidInput(format!(
            "Duration {s:?} {why}: write a number and a unit (s, m, h, d, w), e.g. 30d, 12h, 2w, 1d12h"
        ))
    };
    let text = s.trim();
    if text.is_empty() {
        return Err(bad("is empty"));
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return Err(bad(&format!("has unknown unit {c:?}"))),
        };
        let n: u64 = digits.parse().map_err(|_| bad("lacks a number"))?;
        digits.clear();
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .filter(|t| *t <= LONGEST_SECS)
            .ok_or_else(|| bad("is longer than 100 years"))?;
    }
    if !digits.is_empty() {
        return Err(bad("lacks a unit"));
    }
    Ok(Duration::from_secs(total))
}

/// A duration for people: `3d 4h`, `2h 3m`, `31m`, `5s`.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, mins, secs) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (days, hours, mins) {
        (0, 0, 0) => format!("{secs}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, 0) => format!("{h}h"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, 0, _) => format!("{d}d"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

/// The abbreviation of this machine's time zone (`TZ`, else `/etc/localtime`) at the
/// local wall-clock time `local` (year, month 1-12, day, hour, minute, second), as
/// C's `strftime("%Z")` prints it after `mktime`: `UTC`, `CET`, `EST`. `None` when
/// the zone cannot be read or the time is out of range.
pub fn local_zone_abbreviation(local: (i64, i64, i64, i64, i64, i64)) -> Option<String> {
    let (y, mo, d, h, mi, s) = local;
    let naive = chrono::NaiveDate::from_ymd_opt(
        i32::try_from(y).ok()?,
        u32::try_from(mo).ok()?,
        u32::try_from(d).ok()?,
    )?
    .and_hms_opt(
        u32::try_from(h).ok()?,
        u32::try_from(mi).ok()?,
        u32::try_from(s).ok()?,
    )?;
    let as_utc = naive.and_utc().timestamp();
    let zone = tz::TimeZone::local().ok()?;
    // The wall-clock time read as UTC is off by the zone's offset: one correction
    // finds the instant, except within an hour of a change of offset.
    let guess = zone.find_local_time_type(as_utc).ok()?;
    let instant = as_utc - i64::from(guess.ut_offset());
    let found = zone.find_local_time_type(instant).ok()?;
    Some(found.time_zone_designation().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_very_long_time_before_saturates() {
        let t = utc("2026-11-29T20:38:42Z");
        assert_eq!(
            before(t, Duration::from_secs(3600)),
            utc("2026-11-29T19:38:42Z")
        );
        assert_eq!(before(t, Duration::MAX), DateTime::<Utc>::MIN_UTC);
        assert_eq!(
            before(t, Duration::from_secs(u64::MAX / 4_000)),
            DateTime::<Utc>::MIN_UTC
        );
    }

    #[test]
    fn what_postgresql_prints_is_accepted() {
        let cases = [
            (
                "2026-11-29 20:38:42.421088+00",
                "2026-11-29T20:38:42.421088Z",
            ),
            ("2026-11-29 20:38:42.5 UTC", "2026-11-29T20:38:42.5Z"),
            ("2026-11-29 20:38:42 UTC", "2026-11-29T20:38:42Z"),
            ("2026-11-29 20:38:42 GMT", "2026-11-29T20:38:42Z"),
            ("2026-11-29T20:38:42Z", "2026-11-29T20:38:42Z"),
            ("2026-11-29t20:38:42z", "2026-11-29T20:38:42Z"),
            ("2026-11-29 20:38:42+05:30", "2026-11-29T15:08:42Z"),
            ("2026-11-29 20:38:42+0530", "2026-11-29T15:08:42Z"),
            ("2026-11-29 20:38:42-08", "2026-11-30T04:38:42Z"),
            (
                "2026-11-29T20:38:42.000001-00:00",
                "2026-11-29T20:38:42.000001Z",
            ),
            ("2026-11-29 20:38+01", "2026-11-29T19:38:00Z"),
            ("  2026-11-29 20:38:42 +00  ", "2026-11-29T20:38:42Z"),
        ];
        for (text, want) in cases {
            assert_eq!(parse_time(text).unwrap(), utc(want), "{text}");
        }
    }

    #[test]
    fn a_time_without_a_zone_or_with_an_unknown_one_is_refused_with_advice() {
        let e = parse_time("2026-11-29 20:38:42").unwrap_err().to_string();
        assert!(e.contains("has no time zone") && e.contains("+00"), "{e}");
        for bad in [
            "",
            "yesterday",
            "2026-11-29",
            "2026-13-29 20:38:42Z",
            "2026-11-29 25:38:42Z",
            "2026-11-29 20:38:42 CET",
            "2026-11-29 20:38:42+5",
            "2026-11-29 20:38:42+99",
            "29.11.2026 20:38:42Z",
        ] {
            let e = parse_time(bad).unwrap_err();
            assert_eq!(e.kind(), crate::error::ErrorKind::InvalidInput, "{bad}");
            assert!(e.to_string().contains("e.g."), "{bad}: {e}");
        }
    }

    #[test]
    fn recovery_targets_keep_the_microseconds() {
        let t = parse_time("2026-11-29 20:38:42.421088+00").unwrap();
        assert_eq!(pg_timestamptz(&t), "2026-11-29 20:38:42.421088+00");
        assert_eq!(rfc3339(&t), "2026-11-29T20:38:42Z");
    }

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(parse_duration("30d").unwrap().as_secs(), 30 * 86_400);
        assert_eq!(parse_duration("12h").unwrap().as_secs(), 12 * 3600);
        assert_eq!(parse_duration("2w").unwrap().as_secs(), 14 * 86_400);
        assert_eq!(parse_duration("1d12h").unwrap().as_secs(), 36 * 3600);
        assert_eq!(parse_duration("0s").unwrap().as_secs(), 0);
        for bad in [
            "",
            "30",
            "d",
            "3y",
            "1.5h",
            "-1d",
            "99999999999999w",
            "5300w",
        ] {
            let e = parse_duration(bad).unwrap_err().to_string();
            assert!(e.starts_with("Duration"), "{e}");
        }
        assert_eq!(format_duration(Duration::from_secs(7380)), "2h 3m");
        assert_eq!(
            format_duration(Duration::from_secs(3 * 86_400 + 4 * 3600)),
            "3d 4h"
        );
        assert_eq!(format_duration(Duration::from_secs(31 * 60)), "31m");
        assert_eq!(format_duration(Duration::from_secs(5)), "5s");
    }
}
