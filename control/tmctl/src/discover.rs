//! Finding the running node's control socket without `--socket`.
//!
//! Each running node links its socket as `/run/tunnelmesh/<pid>.sock` ([`register`]; the link
//! goes when the node stops, and a stale one from a crash is skipped because nothing answers
//! there). Order: `--socket` / `$TUNNELMESH_SOCKET`, then the default data dir's socket, then
//! the only running node's. Several running nodes and no choice is an error naming them.

use anyhow::{bail, Result};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// Where running nodes link their control sockets.
pub const RUN_DIR: &str = "/run/tunnelmesh";

/// The control socket to use when none was given.
pub fn find_socket(default: &Path) -> Result<PathBuf> {
    if default.exists() {
        return Ok(default.to_path_buf());
    }
    let running = running_sockets(Path::new(RUN_DIR));
    match running.as_slice() {
        [] => Ok(default.to_path_buf()),
        [one] => Ok(one.clone()),
        many => bail!(
            "several nodes run here ({}): choose one with --socket",
            many.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Sockets linked in `dir` that answer a connection, sorted.
pub fn running_sockets(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".sock"))
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|t| UnixStream::connect(t).is_ok())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Links `socket` as `<dir>/<pid>.sock` while the returned guard lives.
#[derive(Debug)]
pub struct Registration(Option<PathBuf>);

/// Registers this process's control socket in [`RUN_DIR`] (best effort: without a writable
/// `/run`, `tmctl` needs `--socket` for a node outside the default data dir).
pub fn register(socket: &Path) -> Registration {
    register_in(Path::new(RUN_DIR), socket)
}

/// [`register`] in another directory (tests).
pub fn register_in(dir: &Path, socket: &Path) -> Registration {
    // Links of nodes that died without cleaning up (kill -9) go first.
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name
            .strip_suffix(".sock")
            .and_then(|p| p.parse::<u32>().ok())
        {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let socket = std::fs::canonicalize(socket).unwrap_or_else(|_| socket.to_path_buf());
    let link = dir.join(format!("{}.sock", std::process::id()));
    let ok = std::fs::create_dir_all(dir).is_ok() && {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&socket, &link).is_ok()
    };
    Registration(ok.then_some(link))
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(l) = self.0.take() {
            let _ = std::fs::remove_file(l);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn finds_the_one_running_node_and_refuses_to_guess_between_two() {
        let base = std::env::temp_dir().join(format!("tmctl-disc-{}", std::process::id()));
        let run = base.join("run");
        std::fs::create_dir_all(&base).unwrap();
        let a = base.join("a.sock");
        let _la = UnixListener::bind(&a).unwrap();
        let reg = register_in(&run, &a);
        assert_eq!(
            running_sockets(&run),
            vec![std::fs::canonicalize(&a).unwrap()]
        );
        // A stale link (nothing listening) is skipped, and pruned at the next registration
        // when its process is gone (pid 0x7ffffffe does not exist).
        std::os::unix::fs::symlink(base.join("gone.sock"), run.join("2147483646.sock")).unwrap();
        assert_eq!(running_sockets(&run).len(), 1);
        let again = register_in(&run, &a);
        assert!(!run.join("2147483646.sock").exists());
        drop(again);
        drop(reg);
        assert!(
            running_sockets(&run).is_empty(),
            "the link goes with the guard"
        );
        std::fs::remove_dir_all(&base).unwrap();
    }
}
