//! The `tm-dataplane` process: the packet path of a TunnelMesh node.
//!
//! Spawned by the control plane (`tunnelmesh`) as
//! `tm-dataplane --ring-fds M,A,B --tun NAME --address ADDR/LEN --mtu N --listen-port P
//! [--route PREFIX]... [--workers N]`, with the shared-memory ring's memfd and eventfds
//! inherited on fds M, A, B (`tm_ring::ChildFds` order).
//!
//! Does: attach the ring, create and configure the TUN (netlink, no `ip`), bind the UDP
//! socket, send `DpMsg::Ready`, then run the io_uring loop gluing `tm_dp::Dataplane` to
//! the TUN, the socket and the ring until SIGTERM/SIGINT (or the parent's death, via
//! `PR_SET_PDEATHSIG`). Never does: handshakes, logging per packet, spawning processes.
//!
//! Setup failures print one line `tm-dataplane: <what failed>: <error>` on stderr and exit
//! with code 1. A clean signal exit is code 0; the TUN device disappears with the process.
//!
//! Workers (`--workers N`, overridden by `TM_DP_WORKERS`, clamped to 1..=64; `Ready` reports
//! the number running): the main thread is worker 0, the owner of `tm_dp::Dataplane` (ring,
//! timers, handshakes, staging). With N > 1 the TUN is multi-queue and workers 1..N each run
//! in their own thread with their own TUN queue, `SO_REUSEPORT` socket on the same port and
//! io_uring loop, driving a `tm_dp::FastPath` (see `worker`); they punt the slow cases to
//! worker 0 and wake it through a dup of the control ring's eventfd. On SIGTERM worker 0
//! stops them (flag + a byte on each one's pipe) and joins them.
//!
//! Fast path (default): the TUN is opened with `IFF_VNET_HDR` and TSO/USO/checksum offloads
//! (negotiated down if the kernel refuses one), the socket with `UDP_GRO`, and sends use UDP
//! GSO (see `glue`). Environment knobs (inherited from `tunnelmesh`): `TM_DP_OFFLOAD=0`
//! (plain TUN, one datagram per send/receive), `TM_DP_SOCKBUF` (UDP buffer bytes),
//! `TM_DP_TUN_READS` / `TM_DP_UDP_RECVS` (receives kept in flight), `TM_DP_MULTISHOT=0` (one
//! `recvmsg` op per buffer instead of a multishot receive), `TM_DP_WAIT_NR` /
//! `TM_DP_MIN_WAIT_US` (batched waits: wake for N completions or after the minimum wait).
#![forbid(unsafe_code)]

mod args;
mod glue;
mod worker;

use std::fmt::Display;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tm_dp::{Dataplane, DpConfig, FastPath, MAX_WORKERS};
use tm_dp_io::netlink::Netlink;
use tm_dp_io::signals::SignalFd;
use tm_dp_io::tun::{Tun, TunOptions, OFFLOAD_ALL};
use tm_dp_io::uring::{EventLoop, Exit, LoopConfig, LoopFds};
use tm_dp_io::{fds, udp};
use tm_wire::ipc::{DpMsg, IPC_VERSION};

/// A setup step that failed: printed as `tm-dataplane: {what}: {err}`.
struct Fail {
    what: String,
    err: String,
}

fn fail<E: Display>(what: impl Into<String>) -> impl FnOnce(E) -> Fail {
    let what = what.into();
    move |e| Fail {
        what,
        err: e.to_string(),
    }
}

fn main() -> ExitCode {
    abort_on_panic();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("tm-dataplane: {}: {}", f.what, f.err);
            ExitCode::from(1)
        }
    }
}

fn run() -> Result<(), Fail> {
    // Before anything else: block the termination signals (inherited by every thread)
    // and claim the inherited ring fds before any other fd is opened.
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = args::parse(&argv).map_err(fail("arguments"))?;
    let signals = SignalFd::new(&[libc::SIGTERM, libc::SIGINT]).map_err(fail("signals"))?;
    let [memfd, to_child, to_parent]: [_; 3] = fds::claim_inherited(&args.ring_fds)
        .map_err(fail("ring fds"))?
        .try_into()
        .map_err(|_| Fail {
            what: "ring fds".into(),
            err: "expected three fds".into(),
        })?;
    let ring = tm_ring::attach(
        tm_ring::ChildFds {
            memfd,
            to_child_event: to_child,
            to_parent_event: to_parent,
        },
        IPC_VERSION,
    )
    .map_err(fail("attach ring"))?;

    // Offloads: TM_DP_OFFLOAD=0 turns them off (plain TUN, one datagram per send/receive).
    let want_offload = std::env::var("TM_DP_OFFLOAD").map_or(true, |v| v != "0");
    let workers = std::env::var("TM_DP_WORKERS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(usize::from(args.workers))
        .clamp(1, MAX_WORKERS);
    let opts = TunOptions {
        multi_queue: workers > 1,
        vnet_hdr: want_offload,
    };
    let tun = Tun::create_with(&args.tun, opts).map_err(fail("create tun"))?;
    let offload = if want_offload {
        tun.negotiate_offload(OFFLOAD_ALL)
    } else {
        0
    };
    let mut nl = Netlink::open().map_err(fail("netlink"))?;
    let idx = tun.ifindex();
    nl.set_mtu(idx, u32::from(args.mtu))
        .map_err(fail(format!("configure {}", args.tun)))?;
    nl.add_address(idx, args.address.0, args.address.1)
        .map_err(fail(format!("configure {}", args.tun)))?;
    nl.set_up(idx)
        .map_err(fail(format!("configure {}", args.tun)))?;
    for &(dst, len) in &args.routes {
        nl.add_route(idx, dst, len)
            .map_err(fail(format!("configure {}", args.tun)))?;
    }
    drop(nl);
    let sock = udp::bind_dual_with(args.listen_port, workers > 1).map_err(fail("bind udp"))?;
    let listen_port = sock.local_addr().map_err(fail("bind udp"))?.port();
    // Workers 1..N: one more TUN queue (offloads are per device, negotiated above) and one
    // more socket in the same SO_REUSEPORT group each.
    let mut extra = Vec::with_capacity(workers - 1);
    for i in 1..workers {
        let q = tun
            .attach_queue(opts)
            .map_err(fail(format!("tun queue {i}")))?;
        let s = udp::bind_dual_with(listen_port, true).map_err(fail(format!("bind udp {i}")))?;
        extra.push((q, s));
    }
    let sockbuf = std::env::var("TM_DP_SOCKBUF")
        .ok()
        .and_then(|v| v.parse().ok());
    for s in std::iter::once(&sock).chain(extra.iter().map(|(_, s)| s)) {
        if let Some(b) = sockbuf {
            s.set_buffers(b);
        }
        if want_offload {
            // Without GRO every receive is one datagram (seg == 0): nothing else changes.
            let _ = s.set_gro(true);
        }
    }
    let mut cfg = if want_offload {
        LoopConfig::for_offload()
    } else {
        LoopConfig::for_mtu(args.mtu)
    };
    let env_num = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok());
    if let Some(n) = env_num("TM_DP_TUN_READS").filter(|&n| n > 0) {
        cfg.tun_reads = n;
    }
    if let Some(n) = env_num("TM_DP_UDP_RECVS").filter(|&n| n > 0) {
        cfg.udp_recvs = n;
    }
    if std::env::var("TM_DP_MULTISHOT").is_ok_and(|v| v == "0") {
        cfg.multishot = false;
    }
    if let Some(n) = env_num("TM_DP_WAIT_NR").filter(|&n| n > 0) {
        cfg.wait_nr = u32::try_from(n).unwrap_or(u32::MAX);
    }
    if let Some(n) = env_num("TM_DP_MIN_WAIT_US") {
        cfg.min_wait_us = u32::try_from(n).unwrap_or(u32::MAX);
    }
    let dp = Dataplane::with_workers(DpConfig { mtu: args.mtu }, Instant::now(), workers);
    let shared = dp.shared();
    let coalesce = offload & libc::TUN_F_TSO4 != 0;
    let mut glue = glue::Glue::new(dp, ring, cfg.buf_size, want_offload, coalesce);
    let ctl_fd = glue.ctl_event_fd().map_err(fail("control ring eventfd"))?;

    // Start workers 1..N; each reports whether its loop came up before we say Ready.
    let stop = Arc::new(AtomicBool::new(false));
    let (up_tx, up_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let mut threads = Vec::with_capacity(extra.len());
    for (i, (q, s)) in extra.into_iter().enumerate() {
        let i = i + 1;
        let wake = File::from(ctl_fd.try_clone().map_err(fail("control ring eventfd"))?);
        let (stop_rx, stop_tx) = std::io::pipe().map_err(fail("worker pipe"))?;
        let glue_rx = stop_rx.try_clone().map_err(fail("worker pipe"))?;
        let fp = FastPath::new(Arc::clone(&shared), i);
        let (stop, up) = (Arc::clone(&stop), up_tx.clone());
        let h = std::thread::Builder::new()
            .name(format!("tm-dp-{i}"))
            .spawn(move || {
                let mut g =
                    worker::WorkerGlue::new(fp, want_offload, coalesce, wake, glue_rx, stop);
                let fds = LoopFds {
                    tun: &q,
                    udp: &s,
                    ctl_event: Some(stop_rx.as_fd()),
                    signals: None,
                };
                let mut lp = match EventLoop::new(cfg, fds) {
                    Ok(lp) => lp,
                    Err(e) => {
                        let _ = up.send(Err(format!("worker {i} io_uring: {e}")));
                        return;
                    }
                };
                let _ = up.send(Ok(()));
                if let Err(e) = lp.run(&mut g) {
                    // The process cannot carry on with a dead worker: its TUN queue and
                    // socket would black-hole traffic.
                    panic!("worker {i} event loop: {e}");
                }
            })
            .map_err(fail(format!("spawn worker {i}")))?;
        threads.push((h, stop_tx));
    }
    drop(up_tx);
    for _ in 0..threads.len() {
        match up_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(Fail {
                    what: "workers".into(),
                    err: e,
                })
            }
            Err(e) => return Err(fail("workers")(e)),
        }
    }
    glue.push_event(&DpMsg::Ready {
        workers: u16::try_from(workers).unwrap_or(u16::MAX),
        listen_port,
    });
    glue.flush_events().map_err(fail("notify control plane"))?;

    let fds = LoopFds {
        tun: &tun,
        udp: &sock,
        ctl_event: Some(ctl_fd.as_fd()),
        signals: Some(&signals),
    };
    let mut lp = EventLoop::new(cfg, fds).map_err(fail("io_uring"))?;
    let exit = lp.run(&mut glue);
    drop(lp);
    stop.store(true, Ordering::Release);
    for (_, tx) in &mut threads {
        let _ = tx.write(&[1]);
    }
    for (h, _) in threads {
        let _ = h.join();
    }
    let exit = exit.map_err(fail("event loop"))?;
    if let Some(e) = glue.fatal() {
        return Err(Fail {
            what: "control ring".into(),
            err: e.to_owned(),
        });
    }
    match exit {
        Exit::Signal(_) | Exit::Stopped => Ok(()),
    }
}

/// A panic on any thread (a worker included) ends the process, as `panic = "abort"` would:
/// the control plane restarts the dataplane. The release profile unwinds so that tests can share
/// its build; this hook keeps the process-wide semantics.
fn abort_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        std::process::abort();
    }));
}
