//! The kernel adapter: serves a [`Vfs`] through /dev/fuse with the `fuser` crate, and
//! owns the mount's life (checking the mountpoint, mounting, unmounting on a signal).
//!
//! It knows nothing of storage. Every request that may wait on storage (lookup and
//! readdir may reload the list of backup points; reads fetch chunks) is handed to the
//! tokio runtime and answered from there, so the FUSE threads only ever dispatch.
//! Answers that need nothing but memory (getattr, readlink, open) are given at once.

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, MountOption, OpenAccMode, OpenFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    SessionACL, SessionUnmounter, WriteFlags,
};
use tokio::runtime::Handle as Runtime;

use crate::blocking::blocking;
use crate::error::{Error, Result};
use crate::vfs::{Attr, NodeKind, Vfs};

/// Largest read the kernel is asked to send at once (it may cap it lower).
const MAX_READ_BYTES: u32 = 1 << 20;

/// How many background requests (readahead) the kernel may have outstanding: reads are
/// answered concurrently, so more in flight means more chunks decoded in parallel.
const MAX_BACKGROUND: u16 = 64;

/// `st_blksize`: tools such as cp and cat size their reads by it.
const BLOCK_SIZE: u32 = 128 * 1024;

/// How a mount is set up.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Let users other than the one mounting (including root) in. Off by default:
    /// backups hold every row of every table.
    pub allow_other: bool,
    /// What `mount` and /proc/mounts show as the source, e.g. the repository location.
    pub fsname: String,
    /// The owner of every node; `None` is the mounting user.
    pub uid: Option<u32>,
    /// The group of every node; `None` is the mounting user's group.
    pub gid: Option<u32>,
}

/// The uid and gid that own every node: the mounting user's. Read from /proc/self,
/// which belongs to the process's effective ids, to stay free of unsafe code.
fn owner() -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata("/proc/self") {
        Ok(m) => (m.uid(), m.gid()),
        Err(_) => (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        ),
    }
}

struct PgvaultFs {
    vfs: Vfs,
    rt: Runtime,
    uid: u32,
    gid: u32,
}

fn errno(e: &Error) -> Errno {
    Errno::from_i32(e.errno())
}

fn file_attr(a: &Attr, uid: u32, gid: u32) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size_bytes,
        blocks: a.size_bytes.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: if a.kind == NodeKind::Dir { 2 } else { 1 },
        uid,
        gid,
        rdev: 0,
        flags: 0,
        blksize: BLOCK_SIZE,
    }
}

fn file_type(k: NodeKind) -> FileType {
    match k {
        NodeKind::Dir => FileType::Directory,
        NodeKind::File => FileType::RegularFile,
        NodeKind::Symlink => FileType::Symlink,
    }
}

impl Filesystem for PgvaultFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Each setter answers with the nearest allowed value when ours is out of range.
        if let Err(max) = config.set_max_readahead(MAX_READ_BYTES) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_background(MAX_BACKGROUND);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(name) = name.to_str().map(str::to_string) else {
            reply.error(Errno::ENOENT);
            return;
        };
        let (vfs, uid, gid) = (self.vfs.clone(), self.uid, self.gid);
        self.rt.spawn(async move {
            match vfs.lookup(parent.0, &name).await {
                Ok(e) => reply.entry_with_ttls(
                    &e.attr.ttl,
                    &e.entry_ttl,
                    &file_attr(&e.attr, uid, gid),
                    Generation(0),
                ),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.vfs.getattr(ino.0) {
            Ok(a) => reply.attr(&a.ttl, &file_attr(&a, self.uid, self.gid)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.vfs.readlink(ino.0) {
            Ok(target) => reply.data(target.as_bytes()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0 {
            reply.error(Errno::EROFS);
            return;
        }
        match self.vfs.open_file(ino.0) {
            // Backup files never change, so whatever the kernel cached stays valid.
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let vfs = self.vfs.clone();
        self.rt.spawn(async move {
            match vfs.read(fh.0, offset, size).await {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.vfs.release(fh.0);
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let vfs = self.vfs.clone();
        self.rt.spawn(async move {
            match vfs.readdir(ino.0).await {
                Ok(entries) => {
                    for (i, e) in entries.iter().enumerate().skip(offset as usize) {
                        // The offset handed out is where the next call resumes.
                        if reply.add(INodeNo(e.ino), (i + 1) as u64, file_type(e.kind), &e.name) {
                            break;
                        }
                    }
                    reply.ok();
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.vfs.statfs();
        let bsize = 4096u64;
        reply.statfs(
            s.total_bytes.div_ceil(bsize),
            0,
            0,
            s.nodes,
            0,
            bsize as u32,
            255,
            bsize as u32,
        );
    }

    // The mount is read-only (MS_RDONLY already makes the kernel refuse these);
    // answering EROFS here as well keeps that true whatever the mount flags.

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }
}

fn stale(path: &Path) -> Error {
    let shown = path.display();
    Error::InvalidInput(format!(
        "Mountpoint {shown} holds a stale FUSE mount left by a process that is gone \
         (Transport endpoint is not connected); clear it with `fusermount3 -uz {shown}` \
         and mount again"
    ))
}

/// Checks that `path` can be mounted on and returns it made absolute.
///
/// Errors: `InvalidInput` naming the mountpoint when it does not exist, is not a
/// directory, already has something mounted on it, or holds a stale FUSE mount whose
/// process is gone ("Transport endpoint is not connected"; the message gives the
/// `fusermount3 -uz` command that clears it); `Io` for other failures to stat it.
pub fn check_mountpoint(path: &Path) -> Result<PathBuf> {
    let shown = path.display();
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(Error::InvalidInput(format!(
                "Mountpoint {shown} is not a directory"
            )))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => return Err(stale(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(Error::InvalidInput(format!(
                "Mountpoint {shown} does not exist; create it first (mkdir -p {shown})"
            )))
        }
        Err(e) => return Err(Error::io_path("stat mountpoint", path, e)),
    }
    let abs = path
        .canonicalize()
        .map_err(|e| Error::io_path("resolve mountpoint", path, e))?;
    if let Some((fstype, source)) = crate::host::mounted_at(&abs) {
        // stat may still be answered from attributes the kernel cached before the
        // FUSE process died; listing the directory has to ask it.
        if fstype.starts_with("fuse") {
            if let Err(e) = std::fs::read_dir(&abs) {
                if e.raw_os_error() == Some(libc::ENOTCONN) {
                    return Err(stale(&abs));
                }
            }
        }
        return Err(Error::InvalidInput(format!(
            "Mountpoint {} is busy: {source} ({fstype}) is already mounted there; \
             unmount it first (umount {} or fusermount3 -u {})",
            abs.display(),
            abs.display(),
            abs.display()
        )));
    }
    Ok(abs)
}

/// A live mount, served by a background thread until it is unmounted.
pub struct Mounted {
    mountpoint: PathBuf,
    unmounter: SessionUnmounter,
    thread: Option<std::thread::JoinHandle<io::Result<()>>>,
    ended: tokio::sync::oneshot::Receiver<()>,
}

impl std::fmt::Debug for Mounted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mounted")
            .field("mountpoint", &self.mountpoint)
            .finish_non_exhaustive()
    }
}

/// Mounts `vfs` read-only at `mountpoint` and starts serving it; call
/// [`Mounted::serve_until_signal`] to keep serving. Must be called on the runtime
/// that will answer requests.
///
/// Errors: as [`check_mountpoint`]; `Io` naming the mountpoint when the kernel or
/// fusermount3 refuses the mount (for example allow_other for a non-root user without
/// `user_allow_other` in /etc/fuse.conf).
pub async fn mount(vfs: Vfs, mountpoint: &Path, opts: &MountOptions) -> Result<Mounted> {
    let mountpoint = check_mountpoint(mountpoint)?;
    let (own_uid, own_gid) = owner();
    let (uid, gid) = (opts.uid.unwrap_or(own_uid), opts.gid.unwrap_or(own_gid));
    let fs = PgvaultFs {
        vfs,
        rt: Runtime::current(),
        uid,
        gid,
    };
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::NoExec,
        MountOption::NoAtime,
        MountOption::FSName(opts.fsname.replace([',', ' '], "_")),
        MountOption::Subtype("pgvault".into()),
        // Let the kernel enforce the modes: with allow_other, 0440/0550 for the
        // --uid/--gid owner is what keeps everyone else out.
        MountOption::DefaultPermissions,
        MountOption::CUSTOM(format!("max_read={MAX_READ_BYTES}")),
    ];
    config.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    // Requests are only dispatched on these threads; the work happens on the runtime.
    config.n_threads = Some(2);
    let mp = mountpoint.clone();
    let mut session = blocking("mount", move || fuser::Session::new(fs, &mp, &config))
        .await?
        .map_err(|e| {
            let hint = if e.kind() == io::ErrorKind::PermissionDenied && own_uid != 0 {
                // fuser opens /dev/fuse itself before falling back to fusermount3.
                " (as a non-root user this needs read-write access to /dev/fuse, and \
                 --allow-other needs user_allow_other in /etc/fuse.conf)"
            } else {
                ""
            };
            Error::io(
                format!(
                    "Cannot mount the repository on {}{hint}",
                    mountpoint.display()
                ),
                e,
            )
        })?;
    let unmounter = session.unmount_callable();
    let (tx, ended) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("pgvault-fuse".into())
        .spawn(move || {
            let r = session.run();
            let _ = tx.send(());
            r
        })
        .map_err(|e| Error::io("Cannot start the FUSE thread", e))?;
    Ok(Mounted {
        mountpoint,
        unmounter,
        thread: Some(thread),
        ended,
    })
}

impl Mounted {
    /// Where the tree is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Serves until the mount goes away: unmounted from outside (umount, fusermount3
    /// -u), or on SIGINT/SIGTERM, which unmount it. If files are still open then, the
    /// mount is detached (it disappears from the tree, open files keep working) and
    /// served until they are closed; a second signal stops at once.
    ///
    /// Errors: `Io` when signal handlers cannot be installed or the FUSE session
    /// ends with an error.
    pub async fn serve_until_signal(mut self) -> Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term =
            signal(SignalKind::terminate()).map_err(|e| Error::io("Cannot handle SIGTERM", e))?;
        let mut int =
            signal(SignalKind::interrupt()).map_err(|e| Error::io("Cannot handle SIGINT", e))?;
        let mut asked = false;
        loop {
            tokio::select! {
                _ = &mut self.ended => break,
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            // Unmounted from outside just as the signal came: nothing left to do.
            if self.ended.try_recv().is_ok() {
                break;
            }
            if asked {
                tracing::warn!(
                    "Stopping now: files still open on {} will fail",
                    self.mountpoint.display()
                );
                return Ok(());
            }
            asked = true;
            self.unmount();
        }
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(Err(e))) => Err(Error::io("The FUSE session failed", e)),
            Some(Err(_)) => Err(Error::io(
                "The FUSE session failed",
                io::Error::other("its thread panicked"),
            )),
            _ => Ok(()),
        }
    }

    /// Unmounts; when files are open, detaches instead (a lazy unmount).
    fn unmount(&mut self) {
        let mp = self.mountpoint.display().to_string();
        match self.unmounter.unmount() {
            Ok(()) => tracing::info!("Unmounted {mp}"),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                tracing::warn!(
                    "Mountpoint {mp} is busy: detaching it; open files are served until \
                     they are closed (send the signal again to stop now)"
                );
                if let Err(e) =
                    nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH)
                {
                    // Not root: fusermount3 is setuid and may detach for us.
                    let ok = std::process::Command::new("fusermount3")
                        .args(["-u", "-z", "--"])
                        .arg(&self.mountpoint)
                        .status()
                        .is_ok_and(|s| s.success());
                    if !ok {
                        tracing::error!("Cannot detach {mp}: {e}");
                    }
                }
            }
            // Someone unmounted it between our check and our call: done already.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::info!("{mp} was unmounted already")
            }
            Err(e) => tracing::error!("Cannot unmount {mp}: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_non_directory_mountpoints_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("nope");
        let e = check_mountpoint(&missing).unwrap_err().to_string();
        assert!(e.contains("does not exist") && e.contains("nope"), "{e}");
        let file = tmp.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let e = check_mountpoint(&file).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
        assert_eq!(
            check_mountpoint(tmp.path()).unwrap(),
            tmp.path().canonicalize().unwrap()
        );
    }
}
