//! `mount`: the backup history as a read-only filesystem, served until unmounted.

use std::path::PathBuf;

use clap::Args;

use super::{args, open_repo, GlobalArgs};
use crate::error::Result;
use crate::fuse::MountOptions;
use crate::vfs::{Vfs, VfsOptions};

/// `pgvault mount`.
#[derive(Debug, Args)]
pub struct MountArgs {
    /// An existing directory to mount on
    pub mountpoint: PathBuf,
    /// Memory for decoded chunks shared by all readers, e.g. 512MiB or 2GiB
    #[arg(long, default_value = "256MiB", value_name = "SIZE", value_parser = args::size)]
    pub cache_size: u64,
    /// The owner of every file and directory (a name or uid, e.g. postgres); files are
    /// 0440 and directories 0550 for the owner and group. Default: the mounting user
    #[arg(long, value_name = "USER", value_parser = args::user)]
    pub uid: Option<(u32, u32)>,
    /// The group of every file and directory (a name or gid); default: the --uid
    /// user's group, else the mounting user's
    #[arg(long, value_name = "GROUP", value_parser = args::group)]
    pub gid: Option<u32>,
    /// Let users other than the mounting one in at all; the --uid/--gid owner and the
    /// modes still decide who reads (a non-root user needs user_allow_other in
    /// /etc/fuse.conf)
    #[arg(long)]
    pub allow_other: bool,
}

/// `mount`: mounts, serves until unmounted or signalled, then unmounts.
///
/// Errors: `InvalidInput` for a bad mountpoint (before a passphrase is asked for);
/// as [`crate::fuse::mount`].
pub async fn run(g: &GlobalArgs, a: &MountArgs) -> Result<()> {
    crate::fuse::check_mountpoint(&a.mountpoint)?;
    let repo = open_repo(g).await?;
    let location = repo.location();
    let opts = VfsOptions {
        cache_bytes: usize::try_from(a.cache_size).unwrap_or(usize::MAX),
        ..VfsOptions::default()
    };
    let vfs = Vfs::open(repo, opts).await?;
    let points = vfs.point_count();
    let mounted = crate::fuse::mount(
        vfs,
        &a.mountpoint,
        &MountOptions {
            allow_other: a.allow_other,
            fsname: format!("pgvault:{location}"),
            uid: a.uid.map(|(uid, _)| uid),
            gid: a.gid.or(a.uid.map(|(_, gid)| gid)),
        },
    )
    .await?;
    let mp = mounted.mountpoint().display().to_string();
    println!(
        "Mounted {location} on {mp} ({points} backup points); Ctrl-C or `umount {mp}` unmounts"
    );
    mounted.serve_until_signal().await?;
    println!("Unmounted {mp}");
    Ok(())
}
