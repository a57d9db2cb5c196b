//! Power-loss test harness: a FUSE file system that keeps everything in memory in two layers,
//! what programs see and what a disk would hold after a power cut, and can cut the power.
//!
//! The approach of LazyFS, extended to the namespace: writes, truncates, creates, renames,
//! links, unlinks and mkdirs stay volatile until `fsync`/`fdatasync` (of the file for its
//! bytes, of the directory for its entries) or an `O_SYNC`/`O_DSYNC` write makes them durable;
//! [`LazyFs::cut_power`] throws the volatile layer away (a torn cut keeps a seeded random part
//! of it, page by page and entry by entry) and makes every later operation fail with `EIO`
//! until [`LazyFs::remount`] mounts the durable state afresh (no page cache of the old mount
//! survives). The full model is in [`model`].
//!
//! Use: mount, run the program under test on the mount point (in a child process that the
//! test kills right after the cut, as the power would), cut, remount, reopen, check. Needs
//! root (or `fusermount3`) and `/dev/fuse`. `tm-lazyfs` (the binary) serves a mount point
//! from the command line for trying a program by hand.
#![forbid(unsafe_code)]

mod fuse;
pub mod model;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use fuser::{BackgroundSession, Config, MountOption};

pub use model::{Rng, State, Stats};

/// A mounted power-loss file system.
pub struct LazyFs {
    state: Arc<Mutex<State>>,
    mountpoint: PathBuf,
    session: Option<BackgroundSession>,
}

impl std::fmt::Debug for LazyFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyFs")
            .field("mountpoint", &self.mountpoint)
            .field("mounted", &self.session.is_some())
            .finish()
    }
}

/// Why a mount cannot run here (for an `#[ignore]`-style skip with a reason).
pub fn unavailable() -> Option<String> {
    // The effective uid, from /proc (no libc call needed).
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        == Some("0");
    if !root {
        return Some("needs root to mount FUSE".into());
    }
    if std::fs::metadata("/dev/fuse").is_err() {
        return Some("needs /dev/fuse".into());
    }
    None
}

impl LazyFs {
    /// Mount an empty file system at `mountpoint` (an existing directory).
    pub fn mount(mountpoint: impl AsRef<Path>) -> io::Result<LazyFs> {
        let mut fs = LazyFs {
            state: Arc::new(Mutex::new(State::new())),
            mountpoint: mountpoint.as_ref().to_path_buf(),
            session: None,
        };
        fs.mount_now()?;
        Ok(fs)
    }

    fn mount_now(&mut self) -> io::Result<()> {
        let mut cfg = Config::default();
        cfg.mount_options = vec![
            MountOption::FSName("tm-lazyfs".into()),
            MountOption::Subtype("tm-lazyfs".into()),
            MountOption::RW,
        ];
        cfg.acl = fuser::SessionACL::All;
        cfg.n_threads = Some(2);
        let fs = fuse::Fs {
            state: self.state.clone(),
        };
        self.session = Some(fuser::spawn_mount(fs, &self.mountpoint, &cfg)?);
        Ok(())
    }

    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The state (for counters; holding the lock stalls every file operation).
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.state().stats()
    }

    /// Cut the power: only the durable layer remains (`torn`: plus a random part of the
    /// unsynced changes) and every operation fails with `EIO` until [`LazyFs::remount`].
    /// Processes using the mount should be killed now, as the power would.
    pub fn cut_power(&self, torn: Option<&mut Rng>) {
        self.state().cut(torn);
    }

    /// Unmount (every process using it must be gone), power on, and mount the durable state
    /// again.
    pub fn remount(&mut self) -> io::Result<()> {
        self.unmount()?;
        self.state().revive();
        self.mount_now()
    }

    /// Unmount (no-op when not mounted).
    pub fn unmount(&mut self) -> io::Result<()> {
        if let Some(s) = self.session.take() {
            s.umount_and_join()?;
        }
        Ok(())
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            // Still in use (a test failed with its writer alive): detach it, so no dead
            // mount is left behind; it goes away with its last user.
            eprintln!(
                "tm-lazyfs: unmount {}: {e}; detaching",
                self.mountpoint.display()
            );
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .status();
        }
    }
}
