//! How results look: tables and sentences for people, JSON for scripts, a progress bar.

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::error::Error;
use crate::store::keys::KeyInfo;
use crate::store::writer::Progress;
use crate::store::SnapshotManifest;

/// A progress bar on stderr, drawn only when stderr is a terminal.
pub struct Bar(ProgressBar);

impl Bar {
    /// A bar for `total` bytes, or a byte counter when the total is unknown (0).
    pub fn new(total: u64, label: &str) -> Self {
        let bar = if total > 0 {
            ProgressBar::new(total).with_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:40}] {bytes}/{total_bytes} {msg} {bytes_per_sec} eta {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            )
        } else {
            ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{prefix} {spinner} {bytes} {bytes_per_sec}")
                    .expect("valid template"),
            )
        };
        bar.set_prefix(label.to_string());
        Bar(bar)
    }
}

impl Progress for Bar {
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }

    fn files(&self, done: u64, total: u64) {
        self.0.set_message(format!("{done}/{total} files"));
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// Prints an error and its causes on stderr.
pub fn print_error(e: &Error) {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    eprintln!("pgvault: {msg}");
}

/// Prints pretty JSON on stdout.
pub fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("JSON values serialise")
    );
}

fn snapshot_json(m: &SnapshotManifest) -> Value {
    let mut v = json!({
        "id": m.id,
        "short_id": m.short_id(),
        "time": m.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "db": m.db,
        "kind": m.kind.as_str(),
        "hostname": m.hostname,
        "file_name": m.file_name,
        "size": m.size_bytes,
        "size_bytes": m.size_bytes,
        "bytes_stored_new": m.stats.bytes_stored_new,
        "chunks": m.chunks.len(),
        "dump_offsets_filled": m.dump_offsets_filled,
    });
    if m.base.is_some() {
        v["files_referenced"] = json!(m.stats.files_referenced);
        v["bytes_referenced"] = json!(m.stats.bytes_referenced);
    }
    if let Some(b) = &m.base {
        v["base"] = base_json(m, b);
    }
    if m.recreation.is_some() {
        v["recreated"] = recreated_json(m);
    }
    v
}

/// How much of a dump's compressed data is stored as text and re-created on read,
/// and how much was kept as it came.
fn recreated_json(m: &SnapshotManifest) -> Value {
    json!({
        "bytes_recreated": m.stats.bytes_recreated,
        "bytes_kept_compressed": m.stats.bytes_kept_compressed,
        "bytes_stored_as_text": m.stats.bytes_stored_as_text,
        "spans": m.recreation.as_ref().map_or(0, |r| r.spans.len()),
    })
}

/// The note `snapshots` shows for a dump stored with its compressed data as text.
fn recreated_note(m: &SnapshotManifest) -> Option<String> {
    m.recreation.as_ref()?;
    Some(format!(
        "compressed data: {} re-created, {} kept as it came",
        HumanBytes(m.stats.bytes_recreated),
        HumanBytes(m.stats.bytes_kept_compressed)
    ))
}

fn base_json(m: &SnapshotManifest, b: &crate::store::manifest::BaseBackupInfo) -> Value {
    json!({
        "timeline": b.timeline,
        "start_lsn": b.start_lsn.to_string(),
        "stop_lsn": b.stop_lsn.to_string(),
        "start_time": b.start_time.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        "stop_time": m.finished.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "pg_version": b.pg_version,
        "system_identifier": b.system_identifier.to_string(),
    })
}

/// The JSON array `snapshots --json` prints.
pub fn snapshots_json(snaps: &[SnapshotManifest]) -> Value {
    Value::Array(snaps.iter().map(snapshot_json).collect())
}

/// The JSON object `backup --json` prints.
pub fn backup_json(m: &SnapshotManifest) -> Value {
    let s = &m.stats;
    let mut v = json!({
        "snapshot_id": m.id,
        "time": m.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "db": m.db,
        "kind": m.kind.as_str(),
        "file_name": m.file_name,
        "bytes_read": s.bytes_read,
        "bytes_stored_new": s.bytes_stored_new,
        "chunks_total": s.chunks_total,
        "chunks_new": s.chunks_new,
        "chunks_new_delta": s.chunks_new_delta,
        "chunks_reused": s.chunks_reused,
        "duration_ms": s.duration_ms,
        "dump_offsets_filled": m.dump_offsets_filled,
    });
    if m.base.is_some() {
        v["files_referenced"] = json!(m.stats.files_referenced);
        v["bytes_referenced"] = json!(m.stats.bytes_referenced);
    }
    if let Some(b) = &m.base {
        v["base"] = base_json(m, b);
    }
    if m.recreation.is_some() {
        v["recreated"] = recreated_json(m);
    }
    v
}

/// The sentence `backup` prints.
pub fn print_backup(m: &SnapshotManifest) {
    let s = &m.stats;
    println!(
        "Snapshot {} saved: {} {} at {}",
        m.short_id(),
        m.db,
        m.kind,
        m.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    let deltas = if s.chunks_new_delta > 0 {
        format!(", {} of them as deltas", s.chunks_new_delta)
    } else {
        String::new()
    };
    println!(
        "  read {}, stored {} new ({} of {} chunks new{deltas}, {} reused) in {:.1} s",
        HumanBytes(s.bytes_read),
        HumanBytes(s.bytes_stored_new),
        s.chunks_new,
        s.chunks_total,
        s.chunks_reused,
        s.duration_ms as f64 / 1000.0
    );
    if s.files_referenced > 0 {
        println!(
            "  {} unchanged files ({}) taken from the previous base backup, not read",
            s.files_referenced,
            HumanBytes(s.bytes_referenced)
        );
    }
    if let Some(note) = recreated_note(m) {
        println!("  {note}");
    }
}

/// The table `snapshots` prints.
pub fn print_snapshot_table(snaps: &[SnapshotManifest]) {
    println!(
        "{:<8}  {:<20}  {:<16}  {:<4}  {:>10}  {:>10}  WAL",
        "ID", "TIME", "DB", "KIND", "SIZE", "NEW STORED"
    );
    for m in snaps {
        let wal = m
            .base
            .as_ref()
            .map(|b| {
                format!(
                    "tl {} {}..{} until {}",
                    b.timeline,
                    b.start_lsn,
                    b.stop_lsn,
                    m.finished.format("%H:%M:%SZ")
                )
            })
            .or_else(|| recreated_note(m))
            .unwrap_or_default();
        println!(
            "{:<8}  {:<20}  {:<16}  {:<4}  {:>10}  {:>10}  {wal}",
            m.short_id(),
            m.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            m.db,
            m.kind.as_str(),
            HumanBytes(m.size_bytes).to_string(),
            HumanBytes(m.stats.bytes_stored_new).to_string()
        );
    }
    println!("{} snapshots", snaps.len());
}

/// The JSON array `key list --json` prints.
pub fn keys_json(keys: &[KeyInfo]) -> Value {
    Value::Array(
        keys.iter()
            .map(|k| {
                json!({
                    "id": k.id,
                    "created": k.created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    "hostname": k.hostname,
                    "current": k.current,
                    "kdf_memory_kib": k.kdf_params.memory_kib,
                    "kdf_iterations": k.kdf_params.iterations,
                })
            })
            .collect(),
    )
}

/// The table `key list` prints; the key in use is marked with `*`.
pub fn print_key_table(keys: &[KeyInfo]) {
    println!("  {:<32}  {:<20}  HOST", "ID", "CREATED");
    for k in keys {
        println!(
            "{} {:<32}  {:<20}  {}",
            if k.current { "*" } else { " " },
            k.id,
            k.created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            k.hostname
        );
    }
    println!("{} keys (* is the one in use)", keys.len());
}
