//! What `pg_restore -f -` (the whole dump as a SQL script for psql) and `pg_restore
//! -s -f -` (its schema) print for a custom-format archive, as a list of pieces: text
//! made from the table of contents, and the places where each table's data or the
//! large objects go, which the reader fills from the dump itself.
//!
//! The rules follow pg_restore 15.18 (`RestoreArchive`, `restore_toc_entry`,
//! `_printTocEntry`, `_getObjectDescription` and `_doSetFixedOutputState` in
//! `src/bin/pg_dump/pg_backup_archiver.c`) with no options but `-s`: the session
//! settings the ENCODING, STDSTRINGS and SEARCHPATH entries call for; each entry
//! with its comment header, its SQL and an `ALTER … OWNER TO` where it has an owner;
//! `SET default_tablespace` and `SET default_table_access_method` when they change;
//! ACLs after everything else, then event triggers and materialized view data;
//! `\restrict` and `\unrestrict` lines around it all, with a key of our own.
//! An archive these rules do not cover (no SEARCHPATH entry, as before PostgreSQL
//! 10.3; a data entry of an unknown kind) gives no script rather than a wrong one.

use super::custom_format::{Toc, TocEntry};
use super::toc_listing::{required, sanitize};

/// The keywords `fmtId` quotes: every PostgreSQL 15 keyword that is not unreserved
/// (`SELECT word FROM pg_get_keywords() WHERE catcode <> 'U'`), sorted.
const QUOTED_KEYWORDS: [&str; 151] = [
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "between",
    "bigint",
    "binary",
    "bit",
    "boolean",
    "both",
    "case",
    "cast",
    "char",
    "character",
    "check",
    "coalesce",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "dec",
    "decimal",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "exists",
    "extract",
    "false",
    "fetch",
    "float",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "greatest",
    "group",
    "grouping",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "inout",
    "int",
    "integer",
    "intersect",
    "interval",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "least",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "national",
    "natural",
    "nchar",
    "none",
    "normalize",
    "not",
    "notnull",
    "null",
    "nullif",
    "numeric",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "out",
    "outer",
    "overlaps",
    "overlay",
    "placing",
    "position",
    "precision",
    "primary",
    "real",
    "references",
    "returning",
    "right",
    "row",
    "select",
    "session_user",
    "setof",
    "similar",
    "smallint",
    "some",
    "substring",
    "symmetric",
    "table",
    "tablesample",
    "then",
    "time",
    "timestamp",
    "to",
    "trailing",
    "treat",
    "trim",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "values",
    "varchar",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
    "xmlattributes",
    "xmlconcat",
    "xmlelement",
    "xmlexists",
    "xmlforest",
    "xmlnamespaces",
    "xmlparse",
    "xmlpi",
    "xmlroot",
    "xmlserialize",
    "xmltable",
];

/// pg_restore's `INV_WRITE` flag to `lo_open`.
const INV_WRITE: u32 = 0x0002_0000;

/// How many bytes of a large object pg_restore writes per `lowrite` (LOBBUFSIZE).
pub const LO_WRITE_BYTES: usize = 16384;

/// The characters of a `\restrict` key (pg_dump's own choice).
const KEY_CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// The length of a `\restrict` key, as pg_dump makes them.
pub const RESTRICT_KEY_LEN: usize = 63;

/// One piece of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(Vec<u8>),
    /// The COPY data of the table whose `TABLE DATA` entry has this dump ID, every
    /// byte of its data block's frames (pg_dump's end-of-data line included).
    TableData(i32),
    /// The large objects of the `BLOBS` entry with this dump ID, as `lo_open`,
    /// `lowrite` and `lo_close` calls inside `BEGIN` and `COMMIT`.
    LargeObjects(i32),
}

/// Which script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScriptKind {
    /// `pg_restore -f -`.
    Whole,
    /// `pg_restore -s -f -`.
    SchemaOnly,
}

/// A new random `\restrict` key.
pub fn restrict_key() -> String {
    crate::crypto::random_bytes::<RESTRICT_KEY_LEN>()
        .iter()
        .map(|b| KEY_CHARS[usize::from(*b) % KEY_CHARS.len()] as char)
        .collect()
}

/// The script pg_restore prints for `toc`, with `key` on its `\restrict` lines.
///
/// Errors: why pg_restore's rules as implemented here do not cover this archive.
pub fn restore_script(toc: &Toc, kind: ScriptKind, key: &str) -> Result<Vec<Piece>, String> {
    let find = |desc: &[u8]| {
        toc.entries
            .iter()
            .find(|e| e.desc.as_deref() == Some(desc))
            .and_then(|e| e.defn.as_deref())
    };
    let encoding = find(b"ENCODING")
        .and_then(|d| {
            let start = d.iter().position(|&c| c == b'\'')? + 1;
            let len = d[start..].iter().position(|&c| c == b'\'')?;
            Some(d[start..start + len].to_vec())
        })
        .ok_or("it has no ENCODING entry")?;
    let std_strings = match find(b"STDSTRINGS").and_then(|d| {
        let at = d.iter().position(|&c| c == b'\'')?;
        Some(&d[at..])
    }) {
        Some(v) if v.starts_with(b"'on'") => true,
        Some(v) if v.starts_with(b"'off'") => false,
        _ => return Err("it has no STDSTRINGS entry".into()),
    };
    let search_path = find(b"SEARCHPATH").ok_or("it has no SEARCHPATH entry")?;

    let mut s = Script {
        pieces: Vec::new(),
        text: Vec::new(),
        tablespace: None,
        table_am: None,
    };
    s.put(b"--\n-- PostgreSQL database dump\n--\n\n");
    s.put(format!("\\restrict {key}\n\n").as_bytes());
    if let Some(v) = &toc.header.server_version {
        s.put(b"-- Dumped from database version ");
        s.put(v);
        s.put(b"\n");
    }
    if let Some(v) = &toc.header.dump_version {
        s.put(b"-- Dumped by pg_dump version ");
        s.put(v);
        s.put(b"\n");
    }
    s.put(b"\n");
    s.put(b"SET statement_timeout = 0;\nSET lock_timeout = 0;\nSET idle_in_transaction_session_timeout = 0;\n");
    s.put(b"SET client_encoding = '");
    s.put(&encoding);
    s.put(b"';\n");
    s.put(
        format!(
            "SET standard_conforming_strings = {};\n",
            if std_strings { "on" } else { "off" }
        )
        .as_bytes(),
    );
    s.put(search_path);
    s.put(b"SET check_function_bodies = false;\nSET xmloption = content;\nSET client_min_messages = warning;\n");
    if !std_strings {
        s.put(b"SET escape_string_warning = off;\n");
    }
    s.put(b"SET row_security = off;\n\n");

    for pass in [Pass::Main, Pass::Acl, Pass::PostAcl] {
        for e in toc.entries.iter().filter(|e| restore_pass(e) == pass) {
            let mut r = required(e);
            if kind == ScriptKind::SchemaOnly {
                r.data = false;
            }
            if r.schema {
                s.entry(e, false);
            }
            if r.data && e.had_dumper {
                s.entry(e, true);
                match e.desc.as_deref().unwrap_or_default() {
                    b"TABLE DATA" => {
                        if let Some(copy) = e.copy_stmt.as_deref().filter(|c| !c.is_empty()) {
                            s.put(copy);
                        }
                        s.piece(Piece::TableData(e.dump_id));
                    }
                    b"BLOBS" => s.piece(Piece::LargeObjects(e.dump_id)),
                    other => {
                        return Err(format!(
                            "it has data of a kind not handled here ({})",
                            String::from_utf8_lossy(other)
                        ))
                    }
                }
            } else if r.data && !r.schema {
                s.entry(e, false);
            }
        }
    }
    s.put(b"--\n-- PostgreSQL database dump complete\n--\n\n");
    s.put(format!("\\unrestrict {key}\n\n").as_bytes());
    Ok(s.finish())
}

/// The large objects of a `BLOBS` block as pg_restore prints them: `objects` gives
/// each object's OID and bytes, in archive order.
pub fn large_objects_text<'a>(
    objects: impl IntoIterator<Item = (u32, &'a [u8])>,
    std_strings: bool,
) -> Vec<u8> {
    let mut out = b"BEGIN;\n\n".to_vec();
    for (oid, data) in objects {
        out.extend_from_slice(
            format!("SELECT pg_catalog.lo_open('{oid}', {INV_WRITE});\n").as_bytes(),
        );
        for part in data.chunks(LO_WRITE_BYTES) {
            out.extend_from_slice(b"SELECT pg_catalog.lowrite(0, ");
            out.extend_from_slice(if std_strings { b"'\\x" } else { b"E'\\\\x" });
            out.extend_from_slice(hex::encode(part).as_bytes());
            out.extend_from_slice(b"');\n");
        }
        out.extend_from_slice(b"SELECT pg_catalog.lo_close(0);\n\n");
    }
    out.extend_from_slice(b"COMMIT;\n\n");
    out
}

/// Whether the archive's strings use standard conforming strings (its STDSTRINGS
/// entry), which decides how large objects are written.
pub fn standard_conforming_strings(toc: &Toc) -> bool {
    toc.entries
        .iter()
        .find(|e| e.desc.as_deref() == Some(b"STDSTRINGS"))
        .and_then(|e| e.defn.as_deref())
        .is_some_and(|d| d.windows(4).any(|w| w == b"'on'"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    Main,
    Acl,
    PostAcl,
}

/// When pg_restore restores an entry: privileges after every object exists, and
/// what must come after them last.
fn restore_pass(e: &TocEntry) -> Pass {
    let desc = e.desc.as_deref().unwrap_or_default();
    let tag = e.tag.as_deref().unwrap_or_default();
    match desc {
        b"ACL" | b"ACL LANGUAGE" | b"DEFAULT ACL" => Pass::Acl,
        b"EVENT TRIGGER" | b"MATERIALIZED VIEW DATA" => Pass::PostAcl,
        b"COMMENT" if tag.starts_with(b"EVENT TRIGGER ") => Pass::PostAcl,
        _ => Pass::Main,
    }
}

/// A script being made: finished pieces, and text not yet closed into one.
struct Script {
    pieces: Vec<Piece>,
    text: Vec<u8>,
    tablespace: Option<Vec<u8>>,
    table_am: Option<Vec<u8>>,
}

impl Script {
    fn put(&mut self, bytes: &[u8]) {
        self.text.extend_from_slice(bytes);
    }

    fn piece(&mut self, piece: Piece) {
        if !self.text.is_empty() {
            self.pieces
                .push(Piece::Text(std::mem::take(&mut self.text)));
        }
        self.pieces.push(piece);
    }

    fn finish(mut self) -> Vec<Piece> {
        if !self.text.is_empty() {
            self.pieces.push(Piece::Text(self.text));
        }
        self.pieces
    }

    /// One entry as `_printTocEntry` prints it.
    fn entry(&mut self, e: &TocEntry, data: bool) {
        if let Some(want) = &e.tablespace {
            if self.tablespace.as_ref() != Some(want) {
                if want.is_empty() {
                    self.put(b"SET default_tablespace = '';\n\n");
                } else {
                    self.put(b"SET default_tablespace = ");
                    self.put(&quote_ident(want));
                    self.put(b";\n\n");
                }
                self.tablespace = Some(want.clone());
            }
        }
        if let Some(want) = &e.table_am {
            if self.table_am.as_ref() != Some(want) {
                self.put(b"SET default_table_access_method = ");
                self.put(&quote_ident(want));
                self.put(b";\n\n");
                self.table_am = Some(want.clone());
            }
        }
        self.put(if data {
            b"--\n-- Data for Name: "
        } else {
            b"--\n-- Name: "
        });
        self.put(&sanitize(e.tag.as_deref(), false));
        self.put(b"; Type: ");
        self.put(e.desc.as_deref().unwrap_or_default());
        self.put(b"; Schema: ");
        self.put(&sanitize(e.namespace.as_deref(), true));
        self.put(b"; Owner: ");
        self.put(&sanitize(e.owner.as_deref(), true));
        if let Some(ts) = e.tablespace.as_deref().filter(|t| !t.is_empty()) {
            self.put(b"; Tablespace: ");
            self.put(&sanitize(Some(ts), false));
        }
        self.put(b"\n--\n\n");
        if let Some(defn) = e.defn.as_deref().filter(|d| !d.is_empty()) {
            self.put(defn);
            self.put(b"\n\n");
        }
        let owner = e.owner.as_deref().filter(|o| !o.is_empty());
        let droppable = e.drop_stmt.as_deref().is_some_and(|d| !d.is_empty());
        if let (Some(owner), true) = (owner, droppable) {
            if let Some(object) = object_description(e) {
                self.put(b"ALTER ");
                self.put(&object);
                self.put(b" OWNER TO ");
                self.put(&quote_ident(owner));
                self.put(b";\n\n");
            }
        }
    }
}

/// How `ALTER … OWNER TO` names the entry's object (`_getObjectDescription`);
/// `None` for kinds without an owner of their own, or unknown ones.
fn object_description(e: &TocEntry) -> Option<Vec<u8>> {
    let desc = e.desc.as_deref().unwrap_or_default();
    let kind: &[u8] = match desc {
        b"VIEW" | b"SEQUENCE" | b"MATERIALIZED VIEW" => b"TABLE",
        other => other,
    };
    let plain: &[&[u8]] = &[
        b"COLLATION",
        b"CONVERSION",
        b"DOMAIN",
        b"TABLE",
        b"TYPE",
        b"FOREIGN TABLE",
        b"TEXT SEARCH DICTIONARY",
        b"TEXT SEARCH CONFIGURATION",
        b"STATISTICS",
        b"DATABASE",
        b"PROCEDURAL LANGUAGE",
        b"SCHEMA",
        b"EVENT TRIGGER",
        b"FOREIGN DATA WRAPPER",
        b"SERVER",
        b"PUBLICATION",
        b"SUBSCRIPTION",
    ];
    if plain.contains(&kind) {
        let mut out = kind.to_vec();
        out.push(b' ');
        if let Some(ns) = e.namespace.as_deref().filter(|n| !n.is_empty()) {
            out.extend_from_slice(&quote_ident(ns));
            out.push(b'.');
        }
        out.extend_from_slice(&quote_ident(e.tag.as_deref().unwrap_or_default()));
        return Some(out);
    }
    if kind == b"BLOB" {
        let mut out = b"LARGE OBJECT ".to_vec();
        out.extend_from_slice(e.tag.as_deref().unwrap_or_default());
        return Some(out);
    }
    let from_drop: &[&[u8]] = &[
        b"AGGREGATE",
        b"FUNCTION",
        b"OPERATOR",
        b"OPERATOR CLASS",
        b"OPERATOR FAMILY",
        b"PROCEDURE",
    ];
    if from_drop.contains(&kind) {
        let drop = e.drop_stmt.as_deref().unwrap_or_default();
        let rest = drop.get(5..).unwrap_or_default();
        let end = rest
            .iter()
            .rposition(|&c| c != b'\n' && c != b';')
            .map_or(0, |i| i + 1);
        return Some(rest[..end].to_vec());
    }
    None
}

/// An identifier as pg_dump's `fmtId` writes it: bare when it is lower-case
/// letters, digits and underscores, not starting with a digit, and not a keyword
/// that needs quoting; else in double quotes, with quotes doubled.
pub fn quote_ident(name: &[u8]) -> Vec<u8> {
    let plain = name
        .first()
        .is_some_and(|&c| c.is_ascii_lowercase() || c == b'_')
        && name
            .iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
        && std::str::from_utf8(name).is_ok_and(|s| QUOTED_KEYWORDS.binary_search(&s).is_err());
    if plain {
        return name.to_vec();
    }
    let mut out = vec![b'"'];
    for &c in name {
        if c == b'"' {
            out.push(b'"');
        }
        out.push(c);
    }
    out.push(b'"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_as_pg_dump_quotes_them() {
        assert!(QUOTED_KEYWORDS.windows(2).all(|w| w[0] < w[1]), "sorted");
        assert_eq!(quote_ident(b"users"), b"users");
        assert_eq!(quote_ident(b"_x1"), b"_x1");
        assert_eq!(quote_ident(b"user"), b"\"user\"");
        assert_eq!(quote_ident(b"Users"), b"\"Users\"");
        assert_eq!(quote_ident(b"1x"), b"\"1x\"");
        assert_eq!(quote_ident("équipes".as_bytes()), "\"équipes\"".as_bytes());
        assert_eq!(quote_ident(b"a\"b"), b"\"a\"\"b\"");
        // Unreserved keywords stay bare.
        assert_eq!(quote_ident(b"name"), b"name");
    }

    #[test]
    fn large_objects_are_written_in_pieces_of_lobbufsize() {
        let big = vec![0xabu8; LO_WRITE_BYTES + 1];
        let text = String::from_utf8(large_objects_text(
            [(16419, &b"a large object"[..]), (7, &[][..]), (8, &big[..])],
            true,
        ))
        .unwrap();
        assert!(text.starts_with(
            "BEGIN;\n\nSELECT pg_catalog.lo_open('16419', 131072);\n\
             SELECT pg_catalog.lowrite(0, '\\x61206c61726765206f626a656374');\n\
             SELECT pg_catalog.lo_close(0);\n\n\
             SELECT pg_catalog.lo_open('7', 131072);\nSELECT pg_catalog.lo_close(0);\n\n"
        ));
        assert_eq!(text.matches("lowrite").count(), 3);
        assert!(text.ends_with("'\\xab');\nSELECT pg_catalog.lo_close(0);\n\nCOMMIT;\n\n"));
        let key = restrict_key();
        assert_eq!(key.len(), RESTRICT_KEY_LEN);
        assert!(key.bytes().all(|c| c.is_ascii_alphanumeric()));
    }
}
