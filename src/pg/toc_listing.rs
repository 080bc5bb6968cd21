//! What `pg_restore -l` prints for a custom-format archive, made from its table of
//! contents alone: the archive summary, then one line per entry a plain
//! `pg_restore` would restore, in archive order.
//!
//! The rules follow pg_restore 15 (`PrintTOCSummary` and `_tocEntryRequired` in
//! `src/bin/pg_dump/pg_backup_archiver.c`) with no selection options: the entries
//! that set up the session (ENCODING, STDSTRINGS, SEARCHPATH) and those about the
//! database itself (DATABASE, DATABASE PROPERTIES, and comments, ACLs and security
//! labels on it) are left out, as are entries with neither SQL nor data. Names have
//! line breaks turned into spaces, so a crafted name cannot add a line that `pg_restore
//! -L` would obey.

use super::custom_format::{Toc, TocEntry};

/// Archive minor version from which the header names a compression algorithm.
const MINOR_COMPRESSION_ALGORITHM: u8 = 15;

/// The listing of `toc`; `zone` is the time zone abbreviation the creation time is
/// shown in (pg_restore shows pg_dump's wall-clock time with its own zone's name).
pub fn toc_listing(toc: &Toc, zone: &str) -> Vec<u8> {
    let h = &toc.header;
    let mut out = Vec::new();
    let [sec, min, hour, mday, mon, year, _dst] = h.created;
    out.extend_from_slice(
        format!(
            ";\n; Archive created at {:04}-{:02}-{:02} {:02}:{:02}:{:02} {zone}\n",
            year + 1900,
            mon + 1,
            mday,
            hour,
            min,
            sec
        )
        .as_bytes(),
    );
    out.extend_from_slice(b";     dbname: ");
    out.extend_from_slice(&sanitize(h.dbname.as_deref(), false));
    out.extend_from_slice(format!("\n;     TOC Entries: {}\n", h.toc_entries).as_bytes());
    if h.version.1 >= MINOR_COMPRESSION_ALGORITHM {
        let name = match h.compression {
            0 => "none",
            1 => "gzip",
            2 => "lz4",
            3 => "zstd",
            _ => "unknown",
        };
        out.extend_from_slice(format!(";     Compression: {name}\n").as_bytes());
    } else {
        out.extend_from_slice(format!(";     Compression: {}\n", h.compression).as_bytes());
    }
    out.extend_from_slice(
        format!(
            ";     Dump Version: {}.{}-{}\n;     Format: CUSTOM\n;     Integer: {} bytes\n;     Offset: {} bytes\n",
            h.version.0, h.version.1, h.version.2, h.int_size, h.off_size
        )
        .as_bytes(),
    );
    if let Some(v) = &h.server_version {
        out.extend_from_slice(b";     Dumped from database version: ");
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    if let Some(v) = &h.dump_version {
        out.extend_from_slice(b";     Dumped by pg_dump version: ");
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    out.extend_from_slice(b";\n;\n; Selected TOC Entries:\n;\n");
    for e in toc.entries.iter().filter(|e| restored_by_default(e)) {
        out.extend_from_slice(
            format!(
                "{}; {} {} ",
                e.dump_id,
                catalog_oid(e.table_oid.as_deref()),
                catalog_oid(e.oid.as_deref())
            )
            .as_bytes(),
        );
        out.extend_from_slice(e.desc.as_deref().unwrap_or_default());
        out.push(b' ');
        out.extend_from_slice(&sanitize(e.namespace.as_deref(), true));
        out.push(b' ');
        out.extend_from_slice(&sanitize(e.tag.as_deref(), false));
        out.push(b' ');
        out.extend_from_slice(&sanitize(e.owner.as_deref(), false));
        out.push(b'\n');
    }
    out
}

/// What a plain `pg_restore` (no selection options) restores of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Required {
    /// Its SQL.
    pub schema: bool,
    /// Its data, or the SQL that stands for data (sequence values, large objects).
    pub data: bool,
}

/// Whether a plain `pg_restore` (no selection options) restores the entry.
fn restored_by_default(e: &TocEntry) -> bool {
    let r = required(e);
    r.schema || r.data
}

/// What a plain `pg_restore` (no selection options) restores of the entry.
pub(crate) fn required(e: &TocEntry) -> Required {
    const NOTHING: Required = Required {
        schema: false,
        data: false,
    };
    let desc = e.desc.as_deref().unwrap_or_default();
    let tag = e.tag.as_deref().unwrap_or_default();
    if matches!(
        desc,
        b"ENCODING" | b"STDSTRINGS" | b"SEARCHPATH" | b"DATABASE" | b"DATABASE PROPERTIES"
    ) {
        return NOTHING;
    }
    let dependent = matches!(desc, b"ACL" | b"COMMENT" | b"SECURITY LABEL");
    if dependent && tag.starts_with(b"DATABASE ") {
        return NOTHING;
    }
    if desc == b"<Init>" && tag == b"Max OID" {
        return NOTHING;
    }
    // Data: what a dumper wrote, sequence values and everything about large objects;
    // schema: any SQL, but the comment pg_dump leaves for data loaded via the
    // partition root.
    let data = e.had_dumper
        || desc == b"SEQUENCE SET"
        || desc == b"BLOB"
        || (dependent && tag.starts_with(b"LARGE OBJECT "));
    let defn = e.defn.as_deref().unwrap_or_default();
    let has_sql = !defn.is_empty() && !defn.starts_with(b"-- load via partition root ");
    Required {
        // An entry with a dumper is both; one without is data or schema by kind.
        schema: has_sql && (e.had_dumper || !data),
        data,
    }
}

/// A catalog OID as pg_restore prints it: the stored decimal read as unsigned.
fn catalog_oid(s: Option<&[u8]>) -> u32 {
    s.and_then(|b| std::str::from_utf8(b).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// A name on one line: line breaks become spaces; NULL or empty is `-` where a
/// hyphen stands for "none", else empty.
pub(crate) fn sanitize(s: Option<&[u8]>, want_hyphen: bool) -> Vec<u8> {
    match s.filter(|s| !s.is_empty()) {
        None => {
            if want_hyphen {
                b"-".to_vec()
            } else {
                Vec::new()
            }
        }
        Some(b) => b
            .iter()
            .map(|&c| if c == b'\n' || c == b'\r' { b' ' } else { c })
            .collect(),
    }
}
