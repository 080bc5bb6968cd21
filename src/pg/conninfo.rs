//! `--db` as a DBA types it: a database name, or a libpq connection string
//! (`postgresql://alice:secret@db.example/footdash`, `host=db dbname=footdash
//! password=secret`). The connection string goes to pg_dump or pg_basebackup and
//! nowhere else; what pgvault records (manifests, paths in the mount, attempt
//! records, metrics, spool files) is the database name alone, so a password never
//! lands in a backup's metadata.

use crate::error::{Error, Result};

/// What `--db` named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbTarget {
    /// The database name, recorded everywhere.
    pub name: String,
    /// The whole connection string when one was given, for pg_dump only.
    pub conninfo: Option<String>,
}

/// Whether `s` is a connection string rather than a plain name (libpq's own rule:
/// a URI prefix, or an `=` sign).
pub fn is_conninfo(s: &str) -> bool {
    s.starts_with("postgresql://") || s.starts_with("postgres://") || s.contains('=')
}

/// Splits `--db` into the name to record and the connection string to use.
///
/// Errors: `InvalidInput` when a connection string names no database or does not
/// parse (the message never repeats the string, which may hold a password).
pub fn parse(db: &str) -> Result<DbTarget> {
    if !is_conninfo(db) {
        if db.is_empty() {
            return Err(Error::InvalidInput("The database name is empty".into()));
        }
        return Ok(DbTarget {
            name: db.to_string(),
            conninfo: None,
        });
    }
    let name = if db.contains("://") {
        uri_dbname(db)?
    } else {
        keyword_dbname(db)?
    };
    match name.filter(|n| !n.is_empty()) {
        Some(name) if !is_conninfo(&name) => Ok(DbTarget {
            name,
            conninfo: Some(db.to_string()),
        }),
        _ => Err(Error::InvalidInput(
            "The connection string given with --db names no database: add dbname=NAME (or /NAME after the host in a URI)".into(),
        )),
    }
}

/// The database of a `postgresql://[user[:password]@][host][:port][/dbname][?k=v&...]`
/// URI; a `dbname` parameter wins over the path, as in libpq.
fn uri_dbname(uri: &str) -> Result<Option<String>> {
    let rest = uri.split_once("://").map_or(uri, |(_, r)| r);
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut name = before_query
        .split_once('/')
        .map(|(_, path)| percent_decode(path))
        .transpose()?;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        if let Some(v) = pair.strip_prefix("dbname=") {
            name = Some(percent_decode(v)?);
        }
    }
    Ok(name)
}

fn percent_decode(s: &str) -> Result<String> {
    let bad =
        || Error::InvalidInput("The connection URI given with --db has a bad %-escape".into());
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or_else(bad)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// The `dbname` of `key=value key='quoted value' ...`.
fn keyword_dbname(s: &str) -> Result<Option<String>> {
    let bad = || {
        Error::InvalidInput(
            "The connection string given with --db does not parse: write key=value pairs, quoting values with spaces in single quotes".into(),
        )
    };
    let mut chars = s.chars().peekable();
    let mut name = None;
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(name);
        }
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && !c.is_whitespace())).collect();
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') || key.is_empty() {
            return Err(bad());
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(bad()),
                    Some('\'') => break,
                    Some('\\') => value.push(chars.next().ok_or_else(bad)?),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.push(chars.next().ok_or_else(bad)?);
                } else {
                    value.push(c);
                }
            }
        }
        if key == "dbname" {
            name = Some(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> String {
        let t = parse(s).unwrap();
        assert_eq!(t.conninfo.as_deref(), Some(s));
        t.name
    }

    #[test]
    fn only_the_database_name_is_kept() {
        assert_eq!(parse("footdash").unwrap().conninfo, None);
        assert_eq!(
            name("postgresql://alice:s3cr3tPW@db.example/footdash"),
            "footdash"
        );
        assert_eq!(
            name("postgres://db.example:5433/foot%20dash?sslmode=require"),
            "foot dash"
        );
        assert_eq!(
            name("postgresql:///footdash?host=/var/run/postgresql"),
            "footdash"
        );
        assert_eq!(
            name("postgresql://h/ignored?dbname=footdash&password=x"),
            "footdash"
        );
        assert_eq!(name("host=db dbname=footdash password=s3cr3t"), "footdash");
        assert_eq!(name("dbname = 'foot dash' password='a b\\'c'"), "foot dash");
    }

    #[test]
    fn a_connection_string_without_a_database_is_refused_without_repeating_it() {
        for bad in [
            "postgresql://alice:s3cr3tPW@db.example",
            "postgresql://alice:s3cr3tPW@db.example/",
            "host=db password=s3cr3tPW",
            "dbname='unterminated password=s3cr3tPW",
            "postgresql://alice:s3cr3tPW@db.example/%zz",
            "=oops",
            "",
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.kind(), crate::error::ErrorKind::InvalidInput, "{bad}");
            assert!(!e.to_string().contains("s3cr3tPW"), "{e}");
        }
    }
}
