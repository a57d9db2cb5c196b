//! Spawning and talking to `tm-dataplane`.
//!
//! The control plane creates the shared-memory rings (memfd + two eventfds), hands them to the
//! child as fds 3, 4, 5, and waits for `DpMsg::Ready`. Messages are queued when the ring is full
//! and flushed later; nothing blocks the tokio loop.

use crate::config::NodeConfig;
use anyhow::{anyhow, bail, Context, Result};
use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tm_wire::ipc::{CtlMsg, DpMsg, IPC_VERSION};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running dataplane process and our end of its rings.
pub struct Dataplane {
    pub child: Child,
    pub pid: Option<u32>,
    pub workers: u16,
    tx: tm_ring::Producer,
    pub rx: RingRx,
    backlog: VecDeque<Vec<u8>>,
}

/// The receiving half: dataplane -> control messages.
pub struct RingRx {
    rx: tm_ring::Consumer,
    wake: AsyncFd<OwnedFd>,
}

/// Path of the dataplane binary: `$TM_DATAPLANE`, else next to our own executable, else
/// `tm-dataplane` on `PATH`.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("TM_DATAPLANE") {
        return p.into();
    }
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("tm-dataplane")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("tm-dataplane"))
}

/// Dataplane worker threads: `$TM_DP_WORKERS` if set (a positive number), else the
/// config's `workers:`, else one per available core; clamped to 1..=64.
pub fn default_workers(configured: Option<u16>) -> u16 {
    let n = std::env::var("TM_DP_WORKERS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .or(configured.map(usize::from))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    n.clamp(1, 64) as u16
}

impl Dataplane {
    /// Starts the process and waits until it reports `Ready` (or fails).
    pub async fn spawn(cfg: &NodeConfig) -> Result<Self> {
        let (end, fds) = tm_ring::create(tm_ring::RingConfig::default(), IPC_VERSION)
            .context("creating the dataplane ring")?;
        let bin = binary();
        let mut cmd = std::process::Command::new(&bin);
        cmd.arg("--ring-fds")
            .arg("3,4,5")
            .arg("--tun")
            .arg(&cfg.interface)
            .arg("--address")
            .arg(cfg.address().to_string())
            .arg("--mtu")
            .arg(cfg.mtu.to_string())
            .arg("--listen-port")
            .arg(cfg.listen_port.to_string());
        for r in cfg.routes() {
            cmd.arg("--route").arg(r.to_string());
        }
        cmd.arg("--workers")
            .arg(default_workers(cfg.workers).to_string());
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        tm_ring::pass_fds(
            &mut cmd,
            &[
                (fds.memfd.as_fd(), 3),
                (fds.to_child_event.as_fd(), 4),
                (fds.to_parent_event.as_fd(), 5),
            ],
        );
        let mut child = Command::from(cmd)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        drop(fds);
        let pid = child.id();
        let (last_tx, mut last_rx) = tokio::sync::watch::channel(String::new());
        if let Some(err) = child.stderr.take() {
            tokio::spawn(async move {
                let mut lines = BufReader::new(err).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    eprintln!("{l}");
                    let _ = last_tx.send(l);
                }
            });
        }
        let tm_ring::Endpoint { tx, rx } = end;
        // We own this dup of the eventfd for the AsyncFd's whole life, which is the I/O-safety
        // condition the deprecation is about (the replacement is an unsafe fn).
        #[allow(deprecated)]
        let wake = AsyncFd::with_interest(
            rx.event_fd().try_clone_to_owned()?,
            tokio::io::Interest::READABLE,
        )?;
        let rx = RingRx { rx, wake };
        let mut dp = Dataplane {
            child,
            pid,
            workers: 1,
            tx,
            rx,
            backlog: VecDeque::new(),
        };
        let ready = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                tokio::select! {
                    st = dp.child.wait() => {
                        // Let the stderr forwarder catch up so the child's own message is known.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        let why = last_rx.borrow_and_update().clone();
                        let st = st.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                        if why.is_empty() { bail!("tm-dataplane exited during start-up ({st})") }
                        bail!("{why}")
                    }
                    r = dp.rx.recv() => {
                        for m in r? {
                            if let DpMsg::Ready { workers, .. } = m {
                                return Ok(workers);
                            }
                        }
                    }
                }
            }
        })
        .await
        .map_err(|_| anyhow!("tm-dataplane did not become ready within 15 s"))??;
        dp.workers = ready;
        Ok(dp)
    }

    /// Queues a message; flushes as much of the backlog as the ring takes and wakes the child.
    pub fn send(&mut self, msg: &CtlMsg) {
        let mut buf = Vec::with_capacity(64);
        msg.encode(&mut buf);
        self.backlog.push_back(buf);
        self.flush();
    }

    /// Returns true when everything queued has been handed to the ring.
    pub fn flush(&mut self) -> bool {
        let mut pushed = false;
        while let Some(m) = self.backlog.front() {
            match self.tx.try_push(m) {
                Ok(()) => {
                    self.backlog.pop_front();
                    pushed = true;
                }
                Err(tm_ring::PushError::Full) => break,
                Err(e) => {
                    tracing::error!("dropping an IPC message the ring refuses: {e}");
                    self.backlog.pop_front();
                }
            }
        }
        if pushed {
            let _ = self.tx.notify();
        }
        self.backlog.is_empty()
    }

    /// Asks the child to exit (SIGTERM), then kills it after a grace period.
    pub async fn stop(mut self) {
        if let Some(pid) = self
            .pid
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        if tokio::time::timeout(Duration::from_secs(3), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

impl RingRx {
    /// Waits until the child has messages for us and returns all of them.
    pub async fn recv(&mut self) -> Result<Vec<DpMsg>> {
        loop {
            let mut guard = self.wake.readable().await?;
            self.rx.clear_event();
            let mut out = Vec::new();
            while let Some(r) = self.rx.try_pop(DpMsg::decode) {
                match r {
                    Ok(m) => out.push(m),
                    Err(e) => tracing::warn!("undecodable message from the dataplane: {e}"),
                }
            }
            guard.clear_ready();
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }
}
