//! The mounted tree without the kernel: which paths exist, their attributes, directory
//! listings, `at/<time>` resolution, and reads from backup files.
//!
//! The FUSE adapter (`crate::fuse`) turns kernel requests into calls here and knows
//! nothing of storage; this module knows nothing of FUSE, so the tree can be tested
//! and reasoned about on its own.
//!
//! ```text
//! /latest                                   -> by-date/…/<newest backup point>
//! /by-date/YYYY/MM/DD/HHMMSSZ-<db>-<kind>/  <file_name>, manifest.json, and for a dump
//!                                           tables/<schema>.<table>.copy, toc.txt,
//!                                           <db>.sql, schema.sql
//! /by-db/<db>/<RFC3339>-<kind>/             the same; by-db/<db>/latest -> its newest
//! /at/<time>/<file_name>                    per file name (one per database and kind),
//!                                           the newest backup point at or before the time
//! /at/<time>/<db>.tables/, <db>.toc.txt,    that dump's tables/, toc.txt, <db>.sql and
//!   <db>.sql, <db>.schema.sql               schema.sql
//! /snapshots/<id>/                          every backup point by id
//! ```
//!
//! Choices worth knowing:
//! - `at/<time>/` holds the files themselves, one per database (more exactly, per
//!   `file_name`: `footdash.dump`, later `base.tar`), each from that database's newest
//!   backup point at or before the time; a time before every backup point of every
//!   database does not exist (ENOENT). Listing `at/` shows the times at which backup
//!   points were taken, so `ls at/` says which times are worth asking for.
//! - Every directory has its own inode, even when two paths show the same backup point:
//!   the kernel's dentry cache does not allow a directory to have two parents. Files
//!   share one inode per snapshot whatever the path, so the kernel page cache holds a
//!   dump once however it is reached.
//! - Inode numbers are handed out on first sight of a path and never reused or
//!   forgotten while mounted; the table grows by a few hundred bytes per path seen.
//! - The list of backup points is reloaded when a directory is looked up or listed and
//!   the last reload is older than [`VfsOptions::refresh_after`]; a reload first lists
//!   the snapshot ids, which is one cheap listing, and fetches only new manifests.
//! - `/wal/<system>/` shows every WAL file archived for one database system, and a
//!   directory per timeline; `/wal/` itself shows the same for the names that only
//!   one system archived (all of them in a single-cluster repository), so that
//!   `cp …/wal/%f %p` works there.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Datelike, SecondsFormat, Utc};

use crate::error::{Error, ErrorKind, Result};
use crate::ops::dump_files::{DumpFiles, ScriptFile};
use crate::pg::restore_script::ScriptKind;
use crate::store::manifest::BaseFileKind;
use crate::store::reader::{ChunkCache, FileReader};
use crate::store::table_reader::TableCopyReader;
use crate::store::wal::{SystemWalName, WalManifest};
use crate::store::{Repository, SnapshotManifest};
use crate::time::rfc3339;
use crate::wal_name::WalFileKind;

/// An inode number; [`ROOT`] is the mount's root directory.
pub type Ino = u64;

/// The root directory's inode number (FUSE fixes it at 1).
pub const ROOT: Ino = 1;

/// How long the kernel may trust what it learned about things that change when a
/// backup arrives (the top directories, `latest`, `at/<time>`): short, so new
/// backups show up at once.
pub const SHORT_TTL: Duration = Duration::from_secs(1);

/// How long the kernel may trust what never changes (a backup point's files and
/// their attributes): backups are immutable.
pub const LONG_TTL: Duration = Duration::from_secs(3600);

/// How far ahead of a sequential reader chunks are loaded.
const PREFETCH_BYTES: u64 = 8 << 20;

/// Reads that land within this distance of where the last one ended count as
/// sequential: the kernel's async readahead sends several requests at once, and
/// they may arrive slightly out of order.
const SEQUENTIAL_SLACK: u64 = 2 << 20;

/// Every file's permission bits: read for the owner and group the mount gives
/// (`--uid`, `--gid`, e.g. postgres), nothing for anyone else. Backups hold every row
/// of every table.
pub const FILE_MODE: u16 = 0o440;

/// Every directory's permission bits; see [`FILE_MODE`].
pub const DIR_MODE: u16 = 0o550;

/// The name of every backup point's manifest file.
pub const MANIFEST_FILE: &str = "manifest.json";

/// A dump's `pg_restore -l` listing in its backup point's directory.
pub const TOC_FILE: &str = "toc.txt";

/// A dump's schema as a SQL script (`pg_restore -s`) in its backup point's directory.
pub const SCHEMA_FILE: &str = "schema.sql";

/// The directory of a dump's tables in its backup point's directory.
pub const TABLES_DIR: &str = "tables";

/// What kind of thing a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Dir,
    File,
    Symlink,
}

/// What `stat` shows for a node (owner and group are the mount's business).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub kind: NodeKind,
    pub size_bytes: u64,
    pub mtime: SystemTime,
    /// Permission bits: [`DIR_MODE`], [`FILE_MODE`], 0777 for symlinks.
    pub perm: u16,
    /// How long the kernel may cache these attributes.
    pub ttl: Duration,
}

/// The answer to a lookup: the node's attributes and how long the name may be cached.
#[derive(Debug, Clone)]
pub struct Entry {
    pub attr: Attr,
    pub entry_ttl: Duration,
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: Ino,
    pub kind: NodeKind,
    pub name: String,
}

/// Totals for `statfs`.
#[derive(Debug, Clone, Copy)]
pub struct FsStats {
    pub total_bytes: u64,
    pub nodes: u64,
}

/// Settings of a mounted tree.
#[derive(Debug, Clone)]
pub struct VfsOptions {
    /// Memory for decoded chunks shared by every open file.
    pub cache_bytes: usize,
    /// A lookup or listing reloads the list of backup points when the last reload is
    /// older than this.
    pub refresh_after: Duration,
}

impl Default for VfsOptions {
    fn default() -> Self {
        VfsOptions {
            cache_bytes: 256 << 20,
            refresh_after: Duration::from_secs(2),
        }
    }
}

/// Which family of paths a backup point directory was reached through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum View {
    ByDate,
    ByDb,
    Snapshots,
}

/// What a path is, independent of its inode number.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Node {
    Root,
    Latest,
    ByDate,
    Year(i32),
    Month(i32, u32),
    Day(i32, u32, u32),
    ByDb,
    Db(String),
    DbLatest(String),
    At,
    /// `at/<name>`, keyed by the name as given: two spellings of one time are two
    /// directories (a directory may not have two names, see the module doc).
    AtTime(String),
    Snapshots,
    Point(View, String),
    /// The backup file of a snapshot.
    Data(String),
    /// The manifest.json of a snapshot.
    Manifest(String),
    /// `tables/` in a dump's directory: one file per table with its COPY text.
    Tables(View, String),
    /// `at/<name>/<db>.tables/`: the same beside a dump chosen by time.
    AtTables(String, String),
    /// The COPY text of a dump's table, by its place in the dump's table list.
    TableCopy(String, usize),
    /// `toc.txt`: what `pg_restore -l` prints for a dump.
    TocText(String),
    /// `<db>.sql` and `schema.sql`: what `pg_restore -f -` and `-s -f -` print.
    Script(String, ScriptKind),
    /// `<db>.sql` beside a gzipped SQL dump: its text, as stored.
    GzipText(String),
    /// `base/` beside a base backup's `base.tar` ([`BASE_ROOT`]), and each entry of
    /// its file list below, by place in the list.
    BaseEntry(String, usize),
    /// `wal/`: the archived WAL files whose name only one system archived (so
    /// `cp …/wal/%f %p` works), a directory per timeline, and one per system.
    Wal,
    /// `wal/<system>/`: one database system's archive.
    WalSystem(u64),
    /// A timeline's directory, in `wal/` or in a system's.
    WalTimeline(Option<u64>, u32),
    /// An archived file, of the system named (`None`: the only one holding the name,
    /// found when its manifest is read).
    WalFile(Option<u64>, String),
}

/// The `base/` directory itself, among [`Node::BaseEntry`]'s places.
const BASE_ROOT: usize = usize::MAX;

/// The directory a base backup's files show in, beside its tar stream.
const BASE_DIR: &str = "base";

/// A base backup's file list as a tree: each directory's entries, and each
/// entry's directory ([`BASE_ROOT`] for the top).
#[derive(Debug, Default)]
struct BaseIndex {
    children: HashMap<usize, Vec<usize>>,
    parent: Vec<usize>,
}

impl BaseIndex {
    fn new(files: &[crate::store::manifest::BaseFile]) -> Self {
        let by_path: HashMap<&str, usize> = files
            .iter()
            .enumerate()
            .map(|(i, f)| (f.path.as_str(), i))
            .collect();
        let mut me = BaseIndex::default();
        for (i, f) in files.iter().enumerate() {
            // An entry whose directory the stream lacks shows at the top.
            let parent = f
                .path
                .rsplit_once('/')
                .and_then(|(dir, _)| by_path.get(dir).copied())
                .filter(|&p| files[p].kind == crate::store::manifest::BaseFileKind::Dir)
                .unwrap_or(BASE_ROOT);
            me.parent.push(parent);
            me.children.entry(parent).or_default().push(i);
        }
        me
    }
}

/// One backup point and its names in the tree.
#[derive(Debug)]
struct Point {
    m: Arc<SnapshotManifest>,
    date_name: String,
    db_name: String,
    file_name: String,
}

/// The backup points as of one reload, indexed the ways the tree shows them.
#[derive(Debug, Default)]
struct Tree {
    points: HashMap<String, Point>,
    /// Ids, oldest first (time, then start, then id).
    order: Vec<String>,
    by_date: BTreeMap<(i32, u32, u32), BTreeMap<String, String>>,
    by_db: BTreeMap<String, BTreeMap<String, String>>,
    /// Snapshots whose manifest cannot be read; listed ids, kept so that a reload
    /// does not try them again and again.
    broken: HashSet<String>,
}

/// Makes a string usable as one path component.
fn safe_name(s: &str) -> String {
    match s {
        "" => "_".into(),
        "." | ".." => s.replace('.', "_"),
        _ => s.replace(['/', '\0'], "_"),
    }
}

impl Tree {
    fn build(manifests: Vec<Arc<SnapshotManifest>>, broken: HashSet<String>) -> Tree {
        let mut ms = manifests;
        ms.sort_by(|a, b| (a.time, a.started, &a.id).cmp(&(b.time, b.started, &b.id)));
        let mut t = Tree {
            broken,
            ..Tree::default()
        };
        for m in ms {
            let day = (m.time.year(), m.time.month(), m.time.day());
            let db = safe_name(&m.db);
            // Two backups of one database in the same second would share a name: the
            // later one (in time, then start) gets its short id appended, so names
            // already shown do not change when another backup arrives.
            let mut date_name = format!("{}-{}-{}", m.time.format("%H%M%SZ"), db, m.kind);
            let day_map = t.by_date.entry(day).or_default();
            if day_map.contains_key(&date_name) {
                date_name = format!("{date_name}-{}", m.short_id());
            }
            day_map.insert(date_name.clone(), m.id.clone());
            let mut db_name = format!("{}-{}", rfc3339(&m.time), m.kind);
            let db_map = t.by_db.entry(db).or_default();
            if db_map.contains_key(&db_name) {
                db_name = format!("{db_name}-{}", m.short_id());
            }
            db_map.insert(db_name.clone(), m.id.clone());
            t.order.push(m.id.clone());
            t.points.insert(
                m.id.clone(),
                Point {
                    file_name: safe_name(&m.file_name),
                    m,
                    date_name,
                    db_name,
                },
            );
        }
        t
    }

    fn point(&self, id: &str) -> Option<&Point> {
        self.points.get(id)
    }

    fn newest(&self) -> Option<&Point> {
        self.order.last().and_then(|id| self.point(id))
    }

    fn newest_time(&self) -> Option<DateTime<Utc>> {
        self.newest().map(|p| p.m.time)
    }

    fn newest_of_db(&self, db: &str) -> Option<&Point> {
        self.by_db
            .get(db)?
            .values()
            .filter_map(|id| self.point(id))
            .max_by(|a, b| (a.m.time, a.m.started, &a.m.id).cmp(&(b.m.time, b.m.started, &b.m.id)))
    }

    /// Per file name, the newest backup point at or before `t`.
    fn at(&self, t: DateTime<Utc>) -> BTreeMap<String, &Point> {
        let mut out = BTreeMap::new();
        for id in &self.order {
            let p = &self.points[id];
            if p.m.time > t {
                break;
            }
            out.insert(p.file_name.clone(), p);
        }
        out
    }

    /// Where `latest` points, relative to the root.
    fn latest_target(&self) -> Option<String> {
        self.newest().map(|p| {
            let t = p.m.time;
            format!(
                "by-date/{:04}/{:02}/{:02}/{}",
                t.year(),
                t.month(),
                t.day(),
                p.date_name
            )
        })
    }
}

/// The system identifier a `wal/` entry names, spelled as pgvault spells it.
fn layout_system(name: &str) -> Option<u64> {
    name.parse::<u64>()
        .ok()
        .filter(|s| *s != 0 && s.to_string() == name)
}

/// A node as a person would name it, for messages.
fn describe(node: &Node) -> String {
    match node {
        Node::Root => "The mount's root".into(),
        Node::Latest => "The symlink latest".into(),
        Node::DbLatest(db) => format!("The symlink by-db/{db}/latest"),
        Node::AtTime(name) => format!("Directory at/{name}"),
        Node::Data(id) => format!("The backup file of snapshot {id}"),
        Node::Manifest(id) => format!("The manifest.json of snapshot {id}"),
        Node::Point(_, id) => format!("The directory of snapshot {id}"),
        Node::Tables(_, id) | Node::AtTables(_, id) => {
            format!("The tables directory of snapshot {id}")
        }
        Node::TableCopy(id, i) => format!("Table file {i} of snapshot {id}"),
        Node::TocText(id) => format!("The {TOC_FILE} of snapshot {id}"),
        Node::Script(id, ScriptKind::Whole) | Node::GzipText(id) => {
            format!("The SQL script of snapshot {id}")
        }
        Node::Script(id, ScriptKind::SchemaOnly) => format!("The {SCHEMA_FILE} of snapshot {id}"),
        Node::BaseEntry(id, BASE_ROOT) => format!("The base directory of snapshot {id}"),
        Node::BaseEntry(id, i) => format!("Entry {i} of base backup {id}'s file list"),
        Node::Wal => "Directory wal".into(),
        Node::WalSystem(s) => format!("Directory wal/{s}"),
        Node::WalTimeline(None, tl) => format!("Directory wal/{tl:08X}"),
        Node::WalTimeline(Some(s), tl) => format!("Directory wal/{s}/{tl:08X}"),
        Node::WalFile(None, name) => format!("WAL file {name}"),
        Node::WalFile(Some(s), name) => format!("WAL file {name} of database system {s}"),
        other => format!("Node {other:?}"),
    }
}

/// Entry `i` of base backup `m`'s file list.
fn base_file(m: &SnapshotManifest, i: usize) -> Result<&crate::store::manifest::BaseFile> {
    m.base
        .as_ref()
        .and_then(|b| b.files.get(i))
        .ok_or_else(|| not_found(format!("Entry {i} of base backup {}'s file list", m.id)))
}

/// Whether a name is a whole snapshot id (64 hex digits).
fn is_full_id(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Parses an `at/` name: any time `pgvault restore --target-time` takes.
fn parse_at(name: &str) -> Option<DateTime<Utc>> {
    crate::time::parse_time(name).ok()
}

/// Inode numbers for nodes, stable for the life of the mount.
#[derive(Debug)]
struct Inodes {
    by_node: HashMap<Node, Ino>,
    nodes: Vec<Node>,
}

impl Inodes {
    fn new() -> Self {
        let mut i = Inodes {
            by_node: HashMap::new(),
            nodes: Vec::new(),
        };
        i.ino(Node::Root);
        i
    }

    fn ino(&mut self, node: Node) -> Ino {
        if let Some(&ino) = self.by_node.get(&node) {
            return ino;
        }
        self.nodes.push(node.clone());
        let ino = self.nodes.len() as Ino;
        self.by_node.insert(node, ino);
        ino
    }

    fn node(&self, ino: Ino) -> Option<&Node> {
        ino.checked_sub(1).and_then(|i| self.nodes.get(i as usize))
    }
}

/// Where the files made from a dump are shown: its backup point's own directory
/// (reached through a view), or `at/<name>/` beside other databases' dumps.
#[derive(Debug, Clone, Copy)]
enum Beside<'a> {
    Point(View),
    At(&'a str),
}

/// What an open file reads from.
#[derive(Debug)]
enum Content {
    Data(Arc<FileReader>),
    /// Ranges of a file's stored stream read one after another, as `(start,
    /// length)`.
    Stored(Arc<FileReader>, Arc<[(u64, u64)]>),
    Table(Arc<TableCopyReader>),
    Script(Arc<ScriptFile>),
    Bytes(Arc<Vec<u8>>),
}

/// One open file.
#[derive(Debug)]
struct Handle {
    content: Content,
    /// Where the last read ended, to tell sequential readers from random ones.
    read_end: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    repo: Repository,
    opts: VfsOptions,
    cache: Arc<ChunkCache>,
    tree: RwLock<Arc<Tree>>,
    /// When the list of backup points was last reloaded or a reload last failed.
    last_refresh: Mutex<Instant>,
    /// One reload at a time; others wait for its result instead of listing again.
    refresh_lock: tokio::sync::Mutex<()>,
    /// Every manifest seen while mounted, so that files already looked up stay
    /// readable (and their attributes stable) even if their snapshot goes away.
    known: Mutex<HashMap<String, Arc<SnapshotManifest>>>,
    /// Archived WAL file names and the systems that archived each, as of the last
    /// reload.
    wal: RwLock<Arc<BTreeMap<String, BTreeSet<Option<u64>>>>>,
    /// WAL manifests fetched by lookups; archived files never change.
    wal_manifests: Mutex<HashMap<SystemWalName, Arc<WalManifest>>>,
    readers: Mutex<HashMap<String, Arc<FileReader>>>,
    /// What is made from each dump's table of contents.
    files: DumpFiles,
    /// Base backups' file lists as trees, built on first use.
    base_trees: Mutex<HashMap<String, Arc<BaseIndex>>>,
    inodes: Mutex<Inodes>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_handle: AtomicU64,
    started: SystemTime,
}

/// The mounted tree of one repository. Cheap to clone; clones share everything.
#[derive(Debug, Clone)]
pub struct Vfs {
    inner: Arc<Inner>,
}

fn not_found(what: String) -> Error {
    Error::NotFound {
        what,
        location: "the mounted tree".into(),
    }
}

fn dir_attr(ino: Ino, mtime: SystemTime, ttl: Duration) -> Attr {
    Attr {
        ino,
        kind: NodeKind::Dir,
        size_bytes: 0,
        mtime,
        perm: DIR_MODE,
        ttl,
    }
}

/// A file of a backup point or the WAL archive: never changes once there.
fn file_attr(ino: Ino, size_bytes: u64, mtime: SystemTime) -> Attr {
    Attr {
        ino,
        kind: NodeKind::File,
        size_bytes,
        mtime,
        perm: FILE_MODE,
        ttl: LONG_TTL,
    }
}

/// What manifest.json shows, in this order.
#[derive(serde::Serialize)]
struct ManifestView<'a> {
    id: &'a str,
    short_id: &'a str,
    db: &'a str,
    kind: &'a str,
    time: String,
    started: String,
    finished: String,
    hostname: &'a str,
    file_name: &'a str,
    size_bytes: u64,
    chunk_count: usize,
    dump_offsets_filled: bool,
    stats: &'a crate::store::BackupStats,
    /// Base backups: timeline, start and stop LSN, PostgreSQL version, system id.
    #[serde(skip_serializing_if = "Option::is_none")]
    base: Option<&'a crate::store::manifest::BaseBackupInfo>,
}

/// The manifest.json of a snapshot: what the backup point is, for people and scripts.
/// The chunk list is left out: it is long and says nothing to a person.
pub fn manifest_json(m: &SnapshotManifest) -> Vec<u8> {
    let v = ManifestView {
        id: &m.id,
        short_id: m.short_id(),
        db: &m.db,
        kind: m.kind.as_str(),
        time: rfc3339(&m.time),
        started: m.started.to_rfc3339_opts(SecondsFormat::Millis, true),
        finished: m.finished.to_rfc3339_opts(SecondsFormat::Millis, true),
        hostname: &m.hostname,
        file_name: &m.file_name,
        size_bytes: m.size_bytes,
        chunk_count: m.chunks.len(),
        dump_offsets_filled: m.dump_offsets_filled,
        stats: &m.stats,
        base: m.base.as_ref(),
    };
    let mut out = serde_json::to_vec_pretty(&v).expect("manifest view serialises");
    out.push(b'\n');
    out
}

impl Vfs {
    /// The tree of `repo`, with its list of backup points loaded.
    ///
    /// Errors: backend errors when the snapshots cannot be listed; `Corrupt` only for
    /// the listing itself (a single unreadable manifest is logged and left out).
    pub async fn open(repo: Repository, opts: VfsOptions) -> Result<Vfs> {
        let cache = Arc::new(ChunkCache::new(opts.cache_bytes));
        let vfs = Vfs {
            inner: Arc::new(Inner {
                repo,
                opts,
                cache,
                tree: RwLock::new(Arc::new(Tree::default())),
                last_refresh: Mutex::new(Instant::now()),
                refresh_lock: tokio::sync::Mutex::new(()),
                known: Mutex::new(HashMap::new()),
                wal: RwLock::new(Arc::new(BTreeMap::new())),
                wal_manifests: Mutex::new(HashMap::new()),
                readers: Mutex::new(HashMap::new()),
                files: DumpFiles::default(),
                base_trees: Mutex::default(),
                inodes: Mutex::new(Inodes::new()),
                handles: Mutex::new(HashMap::new()),
                next_handle: AtomicU64::new(1),
                started: SystemTime::now(),
            }),
        };
        vfs.reload_wal().await?;
        // The first load goes through the index cache, which spares fetching every
        // manifest of a large repository again; an unreadable manifest is left out
        // (with a warning) and tried again by the next reload.
        let ms: Vec<Arc<SnapshotManifest>> = vfs
            .inner
            .repo
            .snapshots()
            .await?
            .into_iter()
            .map(Arc::new)
            .collect();
        vfs.remember(&ms);
        vfs.set_tree(Tree::build(ms, HashSet::new()));
        Ok(vfs)
    }

    /// The repository shown.
    pub fn repo(&self) -> &Repository {
        &self.inner.repo
    }

    /// How many backup points the tree shows now.
    pub fn point_count(&self) -> usize {
        self.tree().points.len()
    }

    fn tree(&self) -> Arc<Tree> {
        self.inner.tree.read().expect("tree lock").clone()
    }

    fn set_tree(&self, t: Tree) {
        *self.inner.tree.write().expect("tree lock") = Arc::new(t);
        *self.inner.last_refresh.lock().expect("refresh lock") = Instant::now();
    }

    fn remember(&self, ms: &[Arc<SnapshotManifest>]) {
        let mut known = self.inner.known.lock().expect("known lock");
        for m in ms {
            known.insert(m.id.clone(), m.clone());
        }
    }

    fn known(&self, id: &str) -> Option<Arc<SnapshotManifest>> {
        self.inner
            .known
            .lock()
            .expect("known lock")
            .get(id)
            .cloned()
    }

    fn is_stale(&self) -> bool {
        self.inner
            .last_refresh
            .lock()
            .expect("refresh lock")
            .elapsed()
            >= self.inner.opts.refresh_after
    }

    /// The tree, reloaded first if the last reload is old. A failed reload is logged
    /// and the previous list is shown: an unreachable store should not make `ls` fail.
    async fn fresh_tree(&self) -> Arc<Tree> {
        if !self.is_stale() {
            return self.tree();
        }
        let _one_at_a_time = self.inner.refresh_lock.lock().await;
        if !self.is_stale() {
            return self.tree();
        }
        if let Err(e) = self.reload().await {
            tracing::warn!(
                "Cannot reload the list of backup points from {}: {e}; showing the previous list",
                self.inner.repo.location()
            );
            *self.inner.last_refresh.lock().expect("refresh lock") = Instant::now();
        }
        self.tree()
    }

    /// The tree reloaded now, whatever its age (a failed reload keeps the old one).
    async fn reloaded_tree(&self) -> Arc<Tree> {
        let _one_at_a_time = self.inner.refresh_lock.lock().await;
        if let Err(e) = self.reload().await {
            tracing::warn!(
                "Cannot reload the list of backup points from {}: {e}",
                self.inner.repo.location()
            );
        }
        self.tree()
    }

    async fn reload_wal(&self) -> Result<()> {
        let mut names: BTreeMap<String, BTreeSet<Option<u64>>> = BTreeMap::new();
        for e in self.inner.repo.wal_entries().await? {
            names.entry(e.name).or_default().insert(e.system);
        }
        *self.inner.wal.write().expect("wal lock") = Arc::new(names);
        Ok(())
    }

    fn wal(&self) -> Arc<BTreeMap<String, BTreeSet<Option<u64>>>> {
        self.inner.wal.read().expect("wal lock").clone()
    }

    /// The files `wal/` (`None`) or `wal/<system>/` shows: name, system and timeline.
    fn wal_files(&self, scope: Option<u64>) -> Vec<(String, Option<u64>, u32)> {
        self.wal()
            .iter()
            .filter_map(|(name, systems)| {
                let system = match scope {
                    Some(s) => systems.contains(&Some(s)).then_some(Some(s))?,
                    None if systems.len() == 1 => *systems.first().expect("one"),
                    None => return None,
                };
                let tl = WalFileKind::parse(name).ok()?.timeline();
                Some((name.clone(), system, tl))
            })
            .collect()
    }

    /// The manifest of an archived WAL file, fetched once.
    async fn wal_manifest(&self, system: Option<u64>, name: &str) -> Result<Arc<WalManifest>> {
        if let Some(m) = self.cached_wal_manifest(system, name) {
            return Ok(m);
        }
        let m = Arc::new(self.inner.repo.wal_manifest(system, name).await?);
        self.inner
            .wal_manifests
            .lock()
            .expect("wal manifests lock")
            .insert((system, name.to_string()), m.clone());
        Ok(m)
    }

    fn cached_wal_manifest(&self, system: Option<u64>, name: &str) -> Option<Arc<WalManifest>> {
        self.inner
            .wal_manifests
            .lock()
            .expect("wal manifests lock")
            .get(&(system, name.to_string()))
            .cloned()
    }

    /// Lists the snapshot ids and rebuilds the tree if they changed, fetching only
    /// manifests not seen before; lists the WAL archive too.
    async fn reload(&self) -> Result<()> {
        self.reload_wal().await?;
        let ids: BTreeSet<String> = self.inner.repo.snapshot_ids().await?.into_iter().collect();
        let current = self.tree();
        let shown: BTreeSet<&String> = current.points.keys().chain(current.broken.iter()).collect();
        if shown.len() == ids.len() && ids.iter().all(|id| shown.contains(id)) {
            *self.inner.last_refresh.lock().expect("refresh lock") = Instant::now();
            return Ok(());
        }
        let mut manifests = Vec::with_capacity(ids.len());
        let mut broken = HashSet::new();
        let mut fresh = Vec::new();
        for id in &ids {
            if let Some(m) = self.known(id) {
                manifests.push(m);
                continue;
            }
            if current.broken.contains(id) {
                broken.insert(id.clone());
                continue;
            }
            match self.inner.repo.snapshot(id).await {
                Ok(m) => {
                    let m = Arc::new(m);
                    fresh.push(m.clone());
                    manifests.push(m);
                }
                // Deleted between the listing and the fetch.
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) if e.kind() == ErrorKind::Corrupt => {
                    tracing::error!("Snapshot {id} is left out of the mounted tree: {e}");
                    broken.insert(id.clone());
                }
                Err(e) => return Err(e),
            }
        }
        self.remember(&fresh);
        self.set_tree(Tree::build(manifests, broken));
        Ok(())
    }

    fn ino(&self, node: Node) -> Ino {
        self.inner.inodes.lock().expect("inode lock").ino(node)
    }

    fn node(&self, ino: Ino) -> Result<Node> {
        self.inner
            .inodes
            .lock()
            .expect("inode lock")
            .node(ino)
            .cloned()
            .ok_or_else(|| not_found(format!("Inode {ino}")))
    }

    fn snapshot_of(&self, tree: &Tree, id: &str) -> Result<Arc<SnapshotManifest>> {
        tree.point(id)
            .map(|p| p.m.clone())
            .or_else(|| self.known(id))
            .ok_or_else(|| not_found(format!("Snapshot {id}")))
    }

    /// The attributes of `node` as of `tree`.
    fn attr_of(&self, tree: &Tree, node: &Node, ino: Ino) -> Result<Attr> {
        let newest = tree
            .newest_time()
            .map(SystemTime::from)
            .unwrap_or(self.inner.started);
        Ok(match node {
            Node::Root | Node::ByDate | Node::ByDb | Node::At | Node::Snapshots => {
                dir_attr(ino, newest, SHORT_TTL)
            }
            Node::Year(..) | Node::Month(..) | Node::Day(..) => {
                let in_range = |k: &(i32, u32, u32)| match node {
                    Node::Year(y) => k.0 == *y,
                    Node::Month(y, m) => (k.0, k.1) == (*y, *m),
                    Node::Day(y, m, d) => *k == (*y, *m, *d),
                    _ => false,
                };
                let mtime = tree
                    .by_date
                    .iter()
                    .filter(|(k, _)| in_range(k))
                    .flat_map(|(_, names)| names.values())
                    .filter_map(|id| tree.point(id))
                    .map(|p| p.m.time)
                    .max()
                    .map(SystemTime::from)
                    .unwrap_or(newest);
                dir_attr(ino, mtime, SHORT_TTL)
            }
            Node::Db(db) => {
                let mtime = tree
                    .newest_of_db(db)
                    .map(|p| SystemTime::from(p.m.time))
                    .unwrap_or(newest);
                dir_attr(ino, mtime, SHORT_TTL)
            }
            Node::Latest | Node::DbLatest(_) => {
                let (target, time) = self.link_target(tree, node)?;
                Attr {
                    ino,
                    kind: NodeKind::Symlink,
                    size_bytes: target.len() as u64,
                    mtime: SystemTime::from(time),
                    perm: 0o777,
                    ttl: SHORT_TTL,
                }
            }
            Node::AtTime(name) => {
                let t = parse_at(name).ok_or_else(|| not_found(format!("at/{name}")))?;
                let mtime = tree
                    .at(t)
                    .values()
                    .map(|p| p.m.time)
                    .max()
                    .map(SystemTime::from)
                    .unwrap_or(newest);
                dir_attr(ino, mtime, SHORT_TTL)
            }
            Node::Point(_, id) => {
                let m = self.snapshot_of(tree, id)?;
                dir_attr(ino, SystemTime::from(m.time), LONG_TTL)
            }
            Node::Data(id) => {
                let m = self.snapshot_of(tree, id)?;
                file_attr(ino, m.size_bytes, SystemTime::from(m.time))
            }
            Node::Tables(_, id) | Node::AtTables(_, id) => {
                let m = self.snapshot_of(tree, id)?;
                dir_attr(ino, SystemTime::from(m.time), LONG_TTL)
            }
            Node::TocText(id) => {
                let m = self.snapshot_of(tree, id)?;
                let text = self.inner.files.cached_toc_text(id);
                let text = text.ok_or_else(|| not_found(describe(node)))?;
                file_attr(ino, text.len() as u64, SystemTime::from(m.time))
            }
            Node::Script(id, kind) => {
                let m = self.snapshot_of(tree, id)?;
                let script = self.inner.files.cached_script(id, *kind);
                let script = script.ok_or_else(|| not_found(describe(node)))?;
                file_attr(ino, script.len(), SystemTime::from(m.time))
            }
            Node::TableCopy(id, i) => {
                let m = self.snapshot_of(tree, id)?;
                let size = table_of(&m, *i)?.0.copy_len_bytes;
                file_attr(ino, size, SystemTime::from(m.time))
            }
            Node::GzipText(id) => {
                let m = self.snapshot_of(tree, id)?;
                let len = gzip_text_of(&m)?.iter().map(|(_, len)| len).sum();
                file_attr(ino, len, SystemTime::from(m.time))
            }
            Node::Manifest(id) => {
                let m = self.snapshot_of(tree, id)?;
                file_attr(
                    ino,
                    manifest_json(&m).len() as u64,
                    SystemTime::from(m.time),
                )
            }
            Node::BaseEntry(id, i) => {
                let m = self.snapshot_of(tree, id)?;
                let time = SystemTime::from(m.time);
                if *i == BASE_ROOT {
                    return Ok(dir_attr(ino, time, LONG_TTL));
                }
                let f = base_file(&m, *i)?;
                let mtime = std::time::UNIX_EPOCH + Duration::from_secs(f.mtime);
                match f.kind {
                    BaseFileKind::Dir => dir_attr(ino, mtime, LONG_TTL),
                    BaseFileKind::File => file_attr(ino, f.size, mtime),
                    BaseFileKind::Symlink => Attr {
                        ino,
                        kind: NodeKind::Symlink,
                        size_bytes: f.link.as_deref().unwrap_or("").len() as u64,
                        mtime,
                        perm: 0o777,
                        ttl: LONG_TTL,
                    },
                }
            }
            Node::Wal | Node::WalSystem(_) | Node::WalTimeline(..) => {
                dir_attr(ino, newest, SHORT_TTL)
            }
            Node::WalFile(system, name) => {
                let m = self
                    .cached_wal_manifest(*system, name)
                    .ok_or_else(|| not_found(format!("WAL file {name}")))?;
                file_attr(ino, m.size_bytes, SystemTime::from(m.pushed))
            }
        })
    }

    fn link_target(&self, tree: &Tree, node: &Node) -> Result<(String, DateTime<Utc>)> {
        match node {
            Node::Latest => tree
                .latest_target()
                .zip(tree.newest_time())
                .ok_or_else(|| not_found("latest (the repository has no backup points)".into())),
            Node::DbLatest(db) => tree
                .newest_of_db(db)
                .map(|p| (p.db_name.clone(), p.m.time))
                .ok_or_else(|| not_found(format!("by-db/{db}/latest"))),
            Node::BaseEntry(id, i) if *i != BASE_ROOT => {
                let m = self.snapshot_of(tree, id)?;
                let f = base_file(&m, *i)?;
                match (&f.kind, &f.link) {
                    (BaseFileKind::Symlink, Some(l)) => Ok((l.clone(), m.time)),
                    _ => Err(Error::InvalidInput(format!(
                        "{} is not a symbolic link",
                        describe(node)
                    ))),
                }
            }
            _ => Err(Error::InvalidInput(format!(
                "{} is not a symbolic link",
                describe(node)
            ))),
        }
    }

    /// The children of a directory node, without `.` and `..`.
    fn children(&self, tree: &Tree, node: &Node) -> Result<Vec<(String, Node)>> {
        let points = |view: View, names: &BTreeMap<String, String>| {
            names
                .iter()
                .map(|(name, id)| (name.clone(), Node::Point(view, id.clone())))
                .collect::<Vec<_>>()
        };
        Ok(match node {
            Node::Root => {
                let mut v = Vec::new();
                if tree.newest().is_some() {
                    v.push(("latest".to_string(), Node::Latest));
                }
                v.push(("by-date".into(), Node::ByDate));
                v.push(("by-db".into(), Node::ByDb));
                v.push(("at".into(), Node::At));
                v.push(("snapshots".into(), Node::Snapshots));
                v.push(("wal".into(), Node::Wal));
                v
            }
            Node::Wal | Node::WalSystem(_) => {
                let scope = match node {
                    Node::WalSystem(s) => Some(*s),
                    _ => None,
                };
                let files = self.wal_files(scope);
                let timelines: BTreeSet<u32> = files.iter().map(|(_, _, tl)| *tl).collect();
                let mut v: Vec<(String, Node)> = timelines
                    .into_iter()
                    .map(|tl| (format!("{tl:08X}"), Node::WalTimeline(scope, tl)))
                    .collect();
                if scope.is_none() {
                    let systems: BTreeSet<u64> =
                        self.wal().values().flatten().flatten().copied().collect();
                    v.extend(
                        systems
                            .into_iter()
                            .map(|s| (s.to_string(), Node::WalSystem(s))),
                    );
                }
                v.extend(
                    files
                        .into_iter()
                        .map(|(n, s, _)| (n.clone(), Node::WalFile(s, n))),
                );
                v
            }
            Node::WalTimeline(scope, tl) => self
                .wal_files(*scope)
                .into_iter()
                .filter(|(_, _, t)| t == tl)
                .map(|(n, s, _)| (n.clone(), Node::WalFile(s, n)))
                .collect(),
            Node::ByDate => {
                let years: BTreeSet<i32> = tree.by_date.keys().map(|k| k.0).collect();
                years
                    .into_iter()
                    .map(|y| (format!("{y:04}"), Node::Year(y)))
                    .collect()
            }
            Node::Year(y) => {
                let months: BTreeSet<u32> = tree
                    .by_date
                    .keys()
                    .filter(|k| k.0 == *y)
                    .map(|k| k.1)
                    .collect();
                months
                    .into_iter()
                    .map(|m| (format!("{m:02}"), Node::Month(*y, m)))
                    .collect()
            }
            Node::Month(y, m) => tree
                .by_date
                .keys()
                .filter(|k| (k.0, k.1) == (*y, *m))
                .map(|k| (format!("{:02}", k.2), Node::Day(k.0, k.1, k.2)))
                .collect(),
            Node::Day(y, m, d) => tree
                .by_date
                .get(&(*y, *m, *d))
                .map(|names| points(View::ByDate, names))
                .unwrap_or_default(),
            Node::ByDb => tree
                .by_db
                .keys()
                .map(|db| (db.clone(), Node::Db(db.clone())))
                .collect(),
            Node::Db(db) => match tree.by_db.get(db) {
                Some(names) => {
                    let mut v = vec![("latest".to_string(), Node::DbLatest(db.clone()))];
                    v.extend(points(View::ByDb, names));
                    v
                }
                None => Vec::new(),
            },
            Node::At => {
                let times: BTreeSet<DateTime<Utc>> =
                    tree.points.values().map(|p| p.m.time).collect();
                times
                    .into_iter()
                    .map(|t| {
                        let name = rfc3339(&t);
                        (name.clone(), Node::AtTime(name))
                    })
                    .collect()
            }
            Node::AtTime(name) => {
                let t = parse_at(name).ok_or_else(|| not_found(format!("at/{name}")))?;
                let mut v = Vec::new();
                for (file, p) in tree.at(t) {
                    v.extend(self.derived_files(&p.m, Beside::At(name)));
                    v.push((file, Node::Data(p.m.id.clone())));
                }
                v
            }
            Node::Snapshots => tree
                .order
                .iter()
                .map(|id| (id.clone(), Node::Point(View::Snapshots, id.clone())))
                .collect(),
            Node::Point(view, id) => {
                let m = self.snapshot_of(tree, id)?;
                let mut v = vec![
                    (safe_name(&m.file_name), Node::Data(id.clone())),
                    (MANIFEST_FILE.to_string(), Node::Manifest(id.clone())),
                ];
                v.extend(self.derived_files(&m, Beside::Point(*view)));
                if m.has_file_list() {
                    v.push((BASE_DIR.to_string(), Node::BaseEntry(id.clone(), BASE_ROOT)));
                }
                v
            }
            Node::BaseEntry(id, dir) => {
                let m = self.snapshot_of(tree, id)?;
                if *dir != BASE_ROOT && base_file(&m, *dir)?.kind != BaseFileKind::Dir {
                    return Err(Error::InvalidInput(format!(
                        "{} is not a directory",
                        describe(node)
                    )));
                }
                let index = self.base_index(&m);
                let files = &m.base.as_ref().expect("a base backup").files;
                index
                    .children
                    .get(dir)
                    .into_iter()
                    .flatten()
                    .map(|&i| {
                        let name = files[i].path.rsplit('/').next().unwrap_or("").to_string();
                        (name, Node::BaseEntry(id.clone(), i))
                    })
                    .collect()
            }
            Node::Tables(_, id) | Node::AtTables(_, id) => {
                let m = self.snapshot_of(tree, id)?;
                m.dump_contents
                    .iter()
                    .flat_map(|c| c.tables.iter().enumerate())
                    .map(|(i, t)| (t.file_name(), Node::TableCopy(id.clone(), i)))
                    .collect()
            }
            Node::Latest
            | Node::DbLatest(_)
            | Node::Data(_)
            | Node::Manifest(_)
            | Node::TableCopy(..)
            | Node::TocText(_)
            | Node::Script(..)
            | Node::GzipText(_)
            | Node::WalFile(..) => {
                return Err(Error::InvalidInput(format!(
                    "{} is not a directory",
                    describe(node)
                )))
            }
        })
    }

    /// The parent of a directory node, for `..`.
    fn parent_of(&self, tree: &Tree, node: &Node) -> Node {
        match node {
            Node::Year(_) => Node::ByDate,
            Node::Month(y, _) => Node::Year(*y),
            Node::Day(y, m, _) => Node::Month(*y, *m),
            Node::Db(_) => Node::ByDb,
            Node::AtTime(_) => Node::At,
            Node::WalSystem(_) | Node::WalTimeline(None, _) => Node::Wal,
            Node::WalTimeline(Some(s), _) => Node::WalSystem(*s),
            Node::Point(View::Snapshots, _) => Node::Snapshots,
            Node::Tables(view, id) => Node::Point(*view, id.clone()),
            Node::BaseEntry(id, i) => {
                let up = self
                    .snapshot_of(tree, id)
                    .ok()
                    .and_then(|m| self.base_index(&m).parent.get(*i).copied());
                match up {
                    Some(p) => Node::BaseEntry(id.clone(), p),
                    None => Node::Point(View::Snapshots, id.clone()),
                }
            }
            Node::AtTables(name, _) => Node::AtTime(name.clone()),
            Node::Point(View::ByDate, id) => match self.snapshot_of(tree, id) {
                Ok(m) => Node::Day(m.time.year(), m.time.month(), m.time.day()),
                Err(_) => Node::ByDate,
            },
            Node::Point(View::ByDb, id) => match self.snapshot_of(tree, id) {
                Ok(m) => Node::Db(safe_name(&m.db)),
                Err(_) => Node::ByDb,
            },
            _ => Node::Root,
        }
    }

    /// Looks `name` up in directory `parent`, reloading the list of backup points
    /// first if it is old.
    ///
    /// Errors: `NotFound` when there is no such name (or, under `at/`, no backup
    /// point at or before the time); `InvalidInput` when `parent` is not a directory.
    pub async fn lookup(&self, parent: Ino, name: &str) -> Result<Entry> {
        let parent_node = self.node(parent)?;
        let tree = self.fresh_tree().await;
        let child = match &parent_node {
            Node::At => {
                let t = parse_at(name).ok_or_else(|| {
                    not_found(format!(
                        "at/{name} (not a time with its zone, such as 2026-11-05T10:00:00Z)"
                    ))
                })?;
                if tree.at(t).is_empty() {
                    return Err(not_found(format!(
                        "at/{name} (no backup point at or before it)"
                    )));
                }
                Node::AtTime(name.to_string())
            }
            // A WAL file is looked up by its manifest, not in the last listing: it
            // may have been archived since, and the listing may be stale because the
            // store did not answer. The manifest is the definitive answer: not there
            // is ENOENT, a store that cannot say is EIO, never a stale ENOENT that a
            // restore_command would take for the end of the archive.
            Node::Wal | Node::WalSystem(_) | Node::WalTimeline(..)
                if WalFileKind::parse(name).is_ok() =>
            {
                let timeline = WalFileKind::parse(name)?.timeline();
                let scope = match parent_node {
                    Node::WalSystem(s) => Some(s),
                    Node::WalTimeline(_, t) if t != timeline => {
                        return Err(not_found(format!("WAL file {name} on this timeline")))
                    }
                    Node::WalTimeline(s, _) => s,
                    _ => None,
                };
                // In `wal/`, the system the listing names, else the one the
                // manifest read finds (which refuses a name several archived).
                let system = scope.or_else(|| {
                    self.wal()
                        .get(name)
                        .filter(|s| s.len() == 1)
                        .and_then(|s| *s.first().expect("one"))
                });
                Node::WalFile(system, name.to_string())
            }
            // Any system's directory exists, empty or not: a restore_command reading
            // `wal/<system>/%f` must get the manifest's answer, never a stale ENOENT
            // from a listing made before the system's first file was archived.
            Node::Wal if layout_system(name).is_some() => {
                Node::WalSystem(layout_system(name).expect("checked"))
            }
            _ => {
                let find = |tree: &Tree| -> Result<Option<Node>> {
                    Ok(self
                        .children(tree, &parent_node)?
                        .into_iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, node)| node))
                };
                match find(&tree)? {
                    Some(node) => node,
                    // A backup point asked for by its full id may have been committed
                    // since the last reload: look again now rather than in a moment.
                    None if parent_node == Node::Snapshots && is_full_id(name) => {
                        let tree = self.reloaded_tree().await;
                        find(&tree)?.ok_or_else(|| not_found(name.to_string()))?
                    }
                    None => return Err(not_found(name.to_string())),
                }
            }
        };
        if let Node::WalFile(system, name) = &child {
            self.wal_manifest(*system, name).await?;
        }
        match &child {
            Node::TocText(id) => {
                let reader = self.snapshot_reader(&tree, id)?;
                if self.inner.files.toc_text(&reader, id).await?.is_none() {
                    return Err(not_found(describe(&child)));
                }
            }
            Node::Script(id, kind) => {
                let reader = self.snapshot_reader(&tree, id)?;
                let m = self.snapshot_of(&tree, id)?;
                if self.inner.files.script(&reader, &m, *kind).await?.is_none() {
                    return Err(not_found(describe(&child)));
                }
            }
            _ => {}
        }
        let ino = self.ino(child.clone());
        let attr = self.attr_of(&tree, &child, ino)?;
        // Inside a backup point nothing ever changes; elsewhere a name may come to
        // mean another node (latest, at/<time>/…) or appear when a backup arrives.
        let entry_ttl = match parent_node {
            Node::Point(..) | Node::Tables(..) | Node::AtTables(..) | Node::BaseEntry(..) => {
                LONG_TTL
            }
            _ => SHORT_TTL,
        };
        Ok(Entry { attr, entry_ttl })
    }

    /// The attributes of an inode, from what is loaded (never waits on storage).
    ///
    /// Errors: `NotFound` for an unknown inode or a symlink that points nowhere now.
    pub fn getattr(&self, ino: Ino) -> Result<Attr> {
        let node = self.node(ino)?;
        self.attr_of(&self.tree(), &node, ino)
    }

    /// The entries of a directory, `.` and `..` first, reloading the list of backup
    /// points first if it is old.
    ///
    /// Errors: `NotFound` for an unknown inode; `InvalidInput` when it is not a directory.
    pub async fn readdir(&self, ino: Ino) -> Result<Vec<DirEntry>> {
        let node = self.node(ino)?;
        let tree = self.fresh_tree().await;
        let children = self.children(&tree, &node)?;
        let parent = self.parent_of(&tree, &node);
        let mut out = Vec::with_capacity(children.len() + 2);
        out.push(DirEntry {
            ino,
            kind: NodeKind::Dir,
            name: ".".into(),
        });
        out.push(DirEntry {
            ino: if node == Node::Root {
                ROOT
            } else {
                self.ino(parent)
            },
            kind: NodeKind::Dir,
            name: "..".into(),
        });
        for (name, child) in children {
            let kind = match &child {
                Node::BaseEntry(id, i) if *i != BASE_ROOT => {
                    let m = self.snapshot_of(&tree, id)?;
                    match base_file(&m, *i)?.kind {
                        BaseFileKind::Dir => NodeKind::Dir,
                        BaseFileKind::File => NodeKind::File,
                        BaseFileKind::Symlink => NodeKind::Symlink,
                    }
                }
                Node::Latest | Node::DbLatest(_) => NodeKind::Symlink,
                Node::Data(_)
                | Node::Manifest(_)
                | Node::TableCopy(..)
                | Node::TocText(_)
                | Node::Script(..)
                | Node::GzipText(_)
                | Node::WalFile(..) => NodeKind::File,
                _ => NodeKind::Dir,
            };
            out.push(DirEntry {
                ino: self.ino(child),
                kind,
                name,
            });
        }
        Ok(out)
    }

    /// The target of a symbolic link (`latest`, `by-db/<db>/latest`), relative.
    ///
    /// Errors: `NotFound` when it points nowhere (no backup points); `InvalidInput`
    /// when the inode is not a symlink.
    pub fn readlink(&self, ino: Ino) -> Result<String> {
        let node = self.node(ino)?;
        self.link_target(&self.tree(), &node).map(|(t, _)| t)
    }

    /// Opens a file for reading and returns its handle.
    ///
    /// Errors: `NotFound` for an unknown inode; `InvalidInput` when it is not a file.
    pub fn open_file(&self, ino: Ino) -> Result<u64> {
        let node = self.node(ino)?;
        let tree = self.tree();
        let content = match &node {
            Node::Data(id) => Content::Data(self.snapshot_reader(&tree, id)?),
            Node::GzipText(id) => {
                let pieces = gzip_text_of(&*self.snapshot_of(&tree, id)?)?;
                Content::Stored(self.snapshot_reader(&tree, id)?, pieces.into())
            }
            Node::BaseEntry(id, i) if *i != BASE_ROOT => {
                let m = self.snapshot_of(&tree, id)?;
                let f = base_file(&m, *i)?;
                if f.kind != BaseFileKind::File {
                    return Err(Error::InvalidInput(format!(
                        "{} is not a file",
                        describe(&node)
                    )));
                }
                Content::Stored(
                    self.snapshot_reader(&tree, id)?,
                    [(f.offset, f.size)].into(),
                )
            }
            Node::TableCopy(id, i) => {
                let m = self.snapshot_of(&tree, id)?;
                let (table, contents) = table_of(&m, *i)?;
                // One per open file: each keeps where its own reader stopped.
                Content::Table(Arc::new(TableCopyReader::new(
                    self.snapshot_reader(&tree, id)?,
                    table.clone(),
                    contents,
                )))
            }
            Node::TocText(id) => Content::Bytes(
                self.inner
                    .files
                    .cached_toc_text(id)
                    .ok_or_else(|| not_found(describe(&node)))?,
            ),
            Node::Script(id, kind) => {
                let layout = self
                    .inner
                    .files
                    .cached_script(id, *kind)
                    .ok_or_else(|| not_found(describe(&node)))?;
                Content::Script(Arc::new(ScriptFile::open(
                    layout,
                    self.snapshot_reader(&tree, id)?,
                    describe(&node),
                )))
            }
            Node::Manifest(id) => Content::Bytes(Arc::new(manifest_json(
                self.snapshot_of(&tree, id)?.as_ref(),
            ))),
            Node::WalFile(system, name) => {
                let m = self
                    .cached_wal_manifest(*system, name)
                    .ok_or_else(|| not_found(format!("WAL file {name}")))?;
                Content::Data(Arc::new(FileReader::for_chunks(
                    self.inner.repo.clone(),
                    format!("WAL file {name}"),
                    m.chunks.clone(),
                    self.inner.cache.clone(),
                )))
            }
            _ => {
                return Err(Error::InvalidInput(format!(
                    "{} is not a regular file",
                    describe(&node)
                )))
            }
        };
        let fh = self.inner.next_handle.fetch_add(1, Ordering::Relaxed);
        self.inner.handles.lock().expect("handles lock").insert(
            fh,
            Arc::new(Handle {
                content,
                read_end: AtomicU64::new(0),
            }),
        );
        Ok(fh)
    }

    /// The reader of snapshot `id`'s backup file, shared by all its open files.
    fn snapshot_reader(&self, tree: &Tree, id: &str) -> Result<Arc<FileReader>> {
        let m = self.snapshot_of(tree, id)?;
        Ok(self
            .inner
            .readers
            .lock()
            .expect("readers lock")
            .entry(id.to_string())
            .or_insert_with(|| {
                Arc::new(FileReader::new(
                    self.inner.repo.clone(),
                    m,
                    self.inner.cache.clone(),
                ))
            })
            .clone())
    }

    /// The files made from dump `m` that a directory shows beside it: in a backup
    /// point's own directory `tables/`, `toc.txt`, `schema.sql` and `<stem>.sql`
    /// (`footdash.sql`); in `at/<time>/`, beside other databases' dumps, each with
    /// the stem in front (`footdash.tables/`, `footdash.toc.txt`, ...).
    fn derived_files(&self, m: &SnapshotManifest, beside: Beside<'_>) -> Vec<(String, Node)> {
        let file = safe_name(&m.file_name);
        let stem = file.strip_suffix(".dump").unwrap_or(&file);
        if let Some(gz_stem) = file.strip_suffix(".sql.gz") {
            // A gzipped SQL dump's own script, when its text is stored whole.
            return match m.recreation.as_ref().and_then(|r| r.text_pieces()) {
                Some(_) => vec![(format!("{gz_stem}.sql"), Node::GzipText(m.id.clone()))],
                None => Vec::new(),
            };
        }
        let named = |base: &str| match beside {
            Beside::Point(_) => base.to_string(),
            Beside::At(_) => format!("{stem}.{base}"),
        };
        let mut v = Vec::new();
        if m.dump_contents.is_some() {
            let tables = match beside {
                Beside::Point(view) => Node::Tables(view, m.id.clone()),
                Beside::At(name) => Node::AtTables(name.to_string(), m.id.clone()),
            };
            v.push((named(TABLES_DIR), tables));
        }
        let files = &self.inner.files;
        if !m.is_custom_archive() || files.toc_failed(&m.id) {
            return v;
        }
        v.push((named(TOC_FILE), Node::TocText(m.id.clone())));
        if !files.script_failed(&m.id, ScriptKind::SchemaOnly) {
            v.push((
                named(SCHEMA_FILE),
                Node::Script(m.id.clone(), ScriptKind::SchemaOnly),
            ));
        }
        // The whole script needs the data's places, which older dumps lack.
        if m.dump_contents.is_some() && !files.script_failed(&m.id, ScriptKind::Whole) {
            v.push((
                format!("{stem}.sql"),
                Node::Script(m.id.clone(), ScriptKind::Whole),
            ));
        }
        v
    }

    /// `m`'s file list as a tree, built once per snapshot.
    fn base_index(&self, m: &SnapshotManifest) -> Arc<BaseIndex> {
        let mut trees = self.inner.base_trees.lock().expect("base trees lock");
        trees
            .entry(m.id.clone())
            .or_insert_with(|| {
                Arc::new(BaseIndex::new(
                    m.base.as_ref().map(|b| b.files.as_slice()).unwrap_or(&[]),
                ))
            })
            .clone()
    }

    /// Forgets an open file.
    pub fn release(&self, fh: u64) {
        self.inner.handles.lock().expect("handles lock").remove(&fh);
    }

    /// Up to `size` bytes at `offset` of an open file; fewer only at its end.
    /// Sequential readers get the following chunks loaded ahead of them.
    ///
    /// Errors: `InvalidInput` for an unknown handle; `NotFound` or `Corrupt` naming the
    /// snapshot and chunk when a chunk is missing or fails authentication (also logged,
    /// since the reader only sees EIO); backend errors. Never returns unverified bytes.
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let handle = self
            .inner
            .handles
            .lock()
            .expect("handles lock")
            .get(&fh)
            .cloned()
            .ok_or_else(|| Error::InvalidInput(format!("No open file with handle {fh}")))?;
        let reader = match &handle.content {
            Content::Bytes(b) => {
                let start = (offset as usize).min(b.len());
                let end = (start + size as usize).min(b.len());
                return Ok(b[start..end].to_vec());
            }
            Content::Script(script) => {
                return script
                    .read_at(offset, size as usize)
                    .await
                    .map_err(|e| read_failed(script.what(), offset, size, e))
            }
            Content::Table(t) => {
                let before = handle
                    .read_end
                    .swap(offset + u64::from(size), Ordering::Relaxed);
                let data = t
                    .read_at(offset, size as usize)
                    .await
                    .map_err(|e| read_failed(&t.what(), offset, size, e))?;
                // Ahead only as far as the table goes (its dump bytes are its text and
                // a few bytes of framing per row): a small table's file must not load
                // megabytes of the tables after it.
                let left = t.len().saturating_sub(offset + data.len() as u64);
                if offset.abs_diff(before) <= SEQUENTIAL_SLACK && left > 0 {
                    if let Some(reached) = t.dump_offset_reached() {
                        let budget = (left + left / 4 + (64 << 10)).min(PREFETCH_BYTES);
                        prefetch_ahead_within(t.dump(), reached + 1, budget);
                    }
                }
                return Ok(data);
            }
            Content::Stored(r, pieces) => {
                let before = handle
                    .read_end
                    .swap(offset + u64::from(size), Ordering::Relaxed);
                let sequential = offset.abs_diff(before) <= SEQUENTIAL_SLACK;
                let mut out = Vec::new();
                let mut piece_start = 0u64;
                for &(start, len) in pieces.iter() {
                    let at = offset + out.len() as u64;
                    let wanted = u64::from(size) - out.len() as u64;
                    if wanted == 0 {
                        break;
                    }
                    if at < piece_start + len {
                        let from = at - piece_start;
                        let n = wanted.min(len - from);
                        if sequential {
                            r.prefetch_stored(start + from + n, PREFETCH_BYTES.min(len - from - n));
                        }
                        let data = r
                            .read_stored_at(start + from, n as usize)
                            .await
                            .map_err(|e| read_failed(r.what(), offset, size, e))?;
                        let short = (data.len() as u64) < n;
                        out.extend_from_slice(&data);
                        if short {
                            break;
                        }
                    }
                    piece_start += len;
                }
                return Ok(out);
            }
            Content::Data(r) => r,
        };
        let end = offset.saturating_add(u64::from(size)).min(reader.len());
        let before = handle.read_end.swap(end, Ordering::Relaxed);
        let sequential = offset.abs_diff(before) <= SEQUENTIAL_SLACK;
        if sequential && end > offset {
            prefetch_ahead(reader, end);
        }
        reader
            .read_at(offset, size as usize)
            .await
            .map_err(|e| read_failed(reader.what(), offset, size, e))
    }

    /// Totals for `df`.
    pub fn statfs(&self) -> FsStats {
        let tree = self.tree();
        FsStats {
            total_bytes: tree.points.values().map(|p| p.m.size_bytes).sum(),
            nodes: self.inner.inodes.lock().expect("inode lock").nodes.len() as u64,
        }
    }
}

/// Where the text of gzipped SQL dump `m` lies in its stored stream, in pieces.
///
/// Errors: `NotFound` when it is not stored whole (the name was listed for an
/// older view of the snapshot).
fn gzip_text_of(m: &SnapshotManifest) -> Result<Vec<(u64, u64)>> {
    m.recreation
        .as_ref()
        .and_then(|r| r.text_pieces())
        .ok_or_else(|| not_found(format!("The SQL script of snapshot {}", m.id)))
}

/// Starts loading the chunks after byte `end` up to [`PREFETCH_BYTES`] ahead.
/// A failed read of an open file, logged (the reader only sees EIO).
fn read_failed(what: &str, offset: u64, size: u32, e: Error) -> Error {
    tracing::error!("Read of {what} at offset {offset}, {size} bytes, failed: {e}");
    // A missing chunk of a file that is open is damage: "no such file" would tell
    // `cp` or a restore_command the file was never there.
    match e {
        Error::NotFound {
            what: chunk,
            location,
        } => Error::Corrupt(format!("{chunk} of {what} is missing from {location}")),
        e => e,
    }
}

/// Table `i` of dump `m`, and the dump's contents that say how it is written.
fn table_of(
    m: &SnapshotManifest,
    i: usize,
) -> Result<(
    &crate::dump_data::TableData,
    &crate::dump_data::DumpContents,
)> {
    m.dump_contents
        .as_ref()
        .and_then(|c| c.tables.get(i).map(|t| (t, c)))
        .ok_or_else(|| not_found(format!("Table file {i} of snapshot {}", m.id)))
}

fn prefetch_ahead(reader: &FileReader, end: u64) {
    prefetch_ahead_within(reader, end, PREFETCH_BYTES);
}

/// Starts loading the chunks after the one holding byte `end - 1`, up to `budget`
/// bytes of them.
fn prefetch_ahead_within(reader: &FileReader, end: u64, budget: u64) {
    let chunks = reader.chunks();
    let last = reader.chunk_index_at(end.saturating_sub(1));
    let mut count = 0;
    let mut bytes = 0u64;
    while last + 1 + count < chunks.len() && bytes < budget {
        bytes += u64::from(chunks[last + 1 + count].len);
        count += 1;
    }
    reader.prefetch_after(last, count);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{BackupStats, SnapshotKind};

    fn manifest(id: &str, db: &str, time: &str) -> Arc<SnapshotManifest> {
        let time = DateTime::parse_from_rfc3339(time)
            .unwrap()
            .with_timezone(&Utc);
        Arc::new(SnapshotManifest {
            id: id.into(),
            time,
            started: time,
            finished: time,
            db: db.into(),
            kind: SnapshotKind::Dump,
            hostname: "h".into(),
            file_name: format!("{db}.dump"),
            size_bytes: 10,
            chunks: Vec::new(),
            stats: BackupStats::default(),
            dump_offsets_filled: false,
            base: None,
            dump_contents: None,
            recreation: None,
            sketches: Vec::new(),
        })
    }

    fn tree() -> Tree {
        Tree::build(
            vec![
                manifest("bb", "footdash", "2026-11-05T02:00:00Z"),
                manifest("aa", "footdash", "2026-11-04T02:00:00Z"),
                manifest("cc", "other", "2026-11-04T12:00:00Z"),
                manifest("dd", "footdash", "2026-11-05T02:00:00Z"),
            ],
            HashSet::new(),
        )
    }

    #[test]
    fn names_are_stable_and_unique() {
        let t = tree();
        assert_eq!(t.order, ["aa", "cc", "bb", "dd"]);
        let day = &t.by_date[&(2026, 11, 5)];
        assert_eq!(
            day.keys().collect::<Vec<_>>(),
            ["020000Z-footdash-dump", "020000Z-footdash-dump-dd"]
        );
        assert_eq!(
            t.by_db["footdash"].keys().next().unwrap(),
            "2026-11-04T02:00:00Z-dump"
        );
        assert_eq!(
            t.latest_target().unwrap(),
            "by-date/2026/11/05/020000Z-footdash-dump-dd"
        );
        assert_eq!(t.newest_of_db("other").unwrap().m.id, "cc");
    }

    #[test]
    fn at_picks_the_newest_point_at_or_before_per_file() {
        let t = tree();
        let at = |s: &str| {
            t.at(parse_at(s).unwrap())
                .into_iter()
                .map(|(f, p)| format!("{f}={}", p.m.id))
                .collect::<Vec<_>>()
        };
        assert!(at("2026-11-04T01:59:59Z").is_empty());
        assert_eq!(at("2026-11-04T02:00:00Z"), ["footdash.dump=aa"]);
        assert_eq!(
            at("2026-11-04T13:00:00+01:00"),
            ["footdash.dump=aa", "other.dump=cc"]
        );
        assert_eq!(
            at("2030-01-01T00:00:00Z"),
            ["footdash.dump=dd", "other.dump=cc"]
        );
        assert!(parse_at("yesterday").is_none());
    }

    #[test]
    fn odd_names_stay_one_path_component() {
        assert_eq!(safe_name("a/b"), "a_b");
        assert_eq!(safe_name(".."), "__");
        assert_eq!(safe_name(""), "_");
    }
}
