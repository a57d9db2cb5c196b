//! Root-only tests in throw-away network namespaces: TUN + netlink configuration, and the
//! io_uring loop moving packets TUN <-> handler <-> UDP. They are `#[ignore]`d (reported as
//! ignored, never as passed, when not run); as root, `scripts/test.sh` runs them with
//! `--include-ignored` (by hand: `sudo cargo test -p tm-dp-io --test netns -- --include-ignored`).
//! Run and not root, or without `ip netns`, they fail.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tm_dp_io::netlink::Netlink;
use tm_dp_io::signals::SignalFd;
use tm_dp_io::tun::Tun;
use tm_dp_io::uring::{EventLoop, Exit, Handler, Io, LoopConfig, LoopFds};
use tm_dp_io::{udp, IoError};

/// A network namespace deleted on drop (even when the test panics).
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Netns {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert!(
            euid == 0,
            "needs root (run as root, or leave this ignored test out)"
        );
        let name = format!("tmdpio-test-{}-{tag}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "ip netns add {name} failed");
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NS ARGS...`, returning stdout (panics on failure).
    fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .expect("run ip");
        assert!(out.status.success(), "ip {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn link_exists(&self, dev: &str) -> bool {
        Command::new("ip")
            .args(["-n", &self.name, "link", "show", dev])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// Runs `f` on a new thread that has entered this namespace.
    fn spawn<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> std::thread::JoinHandle<R> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open netns");
            // SAFETY: setns on a valid namespace fd affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[test]
#[ignore = "needs root and ip netns: sudo scripts/test.sh runs it (--include-ignored)"]
fn tun_configured_and_removed_on_drop() {
    let ns = Netns::new("tun");
    let tun = ns
        .spawn(|| {
            let tun = Tun::create("tmtest0").expect("create tun");
            assert!(matches!(Tun::create("tmtest0"), Err(IoError::TunBusy(_))));
            let mut nl = Netlink::open().unwrap();
            let i = tun.ifindex();
            nl.set_mtu(i, 1380).unwrap();
            nl.add_address(i, "10.77.0.1".parse().unwrap(), 24).unwrap();
            nl.add_address(i, "fd77::1".parse().unwrap(), 64).unwrap();
            nl.set_up(i).unwrap();
            nl.add_route(i, "10.99.1.2".parse().unwrap(), 16).unwrap();
            nl.add_route(i, "fd99::".parse().unwrap(), 48).unwrap();
            // Same route again: the kernel's EEXIST comes back as a clear error.
            let e = nl
                .add_route(i, "10.99.0.0".parse().unwrap(), 16)
                .unwrap_err();
            assert!(e.to_string().contains("add route 10.99.0.0/16"), "{e}");
            // Out-of-range prefix is refused locally.
            assert!(matches!(
                nl.add_route(i, "10.0.0.0".parse().unwrap(), 33),
                Err(IoError::InvalidPrefix(33))
            ));
            tun
        })
        .join()
        .unwrap();

    let link = ns.ip(&["-o", "link", "show", "tmtest0"]);
    assert!(link.contains("mtu 1380"), "{link}");
    assert!(link.contains(",UP"), "{link}");
    let addr = ns.ip(&["addr", "show", "dev", "tmtest0"]);
    assert!(addr.contains("inet 10.77.0.1/24"), "{addr}");
    assert!(addr.contains("inet6 fd77::1/64"), "{addr}");
    let r4 = ns.ip(&["route"]);
    assert!(r4.contains("10.99.0.0/16 dev tmtest0"), "{r4}");
    let r6 = ns.ip(&["-6", "route"]);
    assert!(r6.contains("fd99::/48 dev tmtest0"), "{r6}");
    // The host namespace did not get the device.
    assert!(tm_dp_io::tun::ifindex("tmtest0").is_err());

    drop(tun);
    let until = Instant::now() + Duration::from_secs(5);
    while ns.link_exists("tmtest0") && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!ns.link_exists("tmtest0"), "device must vanish with its fd");
}

#[test]
fn invalid_name_is_rejected() {
    assert!(matches!(
        Tun::create("this-name-is-too-long"),
        Err(IoError::InvalidName(_))
    ));
}

/// Echoes UDP datagrams back to their sender, and turns IPv4/UDP packets read from the TUN
/// around (swap addresses and ports; both checksums stay valid) and writes them back.
#[derive(Default)]
struct Echo {
    udp_seen: Vec<(SocketAddr, Vec<u8>)>,
    tun_echoed: usize,
    ctl: usize,
    timeouts: usize,
    batches: usize,
    ctl_fd: Option<i32>,
    /// "stop" arrived: the loop stops once the control event and the timer were both seen.
    stop_asked: bool,
}

impl Echo {
    fn maybe_stop(&self, io: &mut Io<'_>) {
        if self.stop_asked && self.ctl >= 1 && self.timeouts >= 1 {
            io.stop();
        }
    }
}

impl Handler for Echo {
    fn on_tun(&mut self, io: &mut Io<'_>, pkt: &mut [u8]) {
        if pkt.len() >= 28 && pkt[0] >> 4 == 4 && pkt[9] == 17 {
            let ihl = usize::from(pkt[0] & 0xf) * 4;
            let (s, d) = (pkt[12..16].to_vec(), pkt[16..20].to_vec());
            pkt[12..16].copy_from_slice(&d);
            pkt[16..20].copy_from_slice(&s);
            let (sp, dp) = (pkt[ihl..ihl + 2].to_vec(), pkt[ihl + 2..ihl + 4].to_vec());
            pkt[ihl..ihl + 2].copy_from_slice(&dp);
            pkt[ihl + 2..ihl + 4].copy_from_slice(&sp);
            if io.write_tun(pkt) {
                self.tun_echoed += 1;
            }
        }
    }
    fn on_udp(&mut self, io: &mut Io<'_>, from: SocketAddr, dgram: &mut [u8], _seg: usize) {
        self.udp_seen.push((from, dgram.to_vec()));
        if dgram == b"stop" {
            self.stop_asked = true;
            self.maybe_stop(io);
        } else {
            assert!(io.send_udp(dgram, from));
        }
    }
    fn on_ctl_ready(&mut self, io: &mut Io<'_>) {
        self.ctl += 1;
        let mut b = [0u8; 8];
        let fd = self.ctl_fd.expect("ctl fd set");
        // SAFETY: reading 8 bytes from an eventfd into an 8-byte buffer.
        unsafe { libc::read(fd, b.as_mut_ptr().cast(), 8) };
        self.maybe_stop(io);
    }
    fn on_timeout(&mut self, io: &mut Io<'_>) {
        self.timeouts += 1;
        self.maybe_stop(io);
    }
    fn on_batch_end(&mut self, io: &mut Io<'_>) -> Option<Instant> {
        self.batches += 1;
        Some(io.now() + Duration::from_millis(5))
    }
}

fn eventfd() -> OwnedFd {
    // SAFETY: plain eventfd(2) call.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: fresh fd owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[test]
#[ignore = "needs root and ip netns: sudo scripts/test.sh runs it (--include-ignored)"]
fn loop_moves_packets_tun_and_udp() {
    loop_moves_packets(true);
}

/// The same with one `recvmsg` op per buffer (the fallback for kernels without multishot)
/// and plain waits.
#[test]
#[ignore = "needs root and ip netns: sudo scripts/test.sh runs it (--include-ignored)"]
fn loop_moves_packets_single_receives() {
    loop_moves_packets(false);
}

fn loop_moves_packets(multishot: bool) {
    let ns = Netns::new(if multishot { "loop" } else { "loop1" });
    // The test keeps `ctl`; the loop gets a duplicate (so writes never hit a closed fd).
    let ctl = eventfd();
    let efd = ctl.try_clone().expect("dup eventfd");
    let efd_raw = ctl.as_raw_fd();
    let (port_tx, port_rx) = mpsc::channel();
    let server = ns.spawn(move || {
        let tun = Tun::create("tmecho0").expect("create tun");
        let mut nl = Netlink::open().unwrap();
        nl.set_mtu(tun.ifindex(), 1400).unwrap();
        nl.add_address(tun.ifindex(), "10.78.0.1".parse().unwrap(), 24)
            .unwrap();
        nl.set_up(tun.ifindex()).unwrap();
        let sock = udp::bind_dual(0).unwrap();
        assert!(sock.is_v6());
        port_tx.send(sock.local_addr().unwrap().port()).unwrap();
        let fds = LoopFds {
            tun: &tun,
            udp: &sock,
            ctl_event: Some(efd.as_fd()),
            signals: None,
        };
        // The multishot variant also waits in batches (up to 8 completions or 50 us).
        let (wait_nr, min_wait_us) = if multishot { (8, 50) } else { (1, 0) };
        let cfg = LoopConfig {
            multishot,
            wait_nr,
            min_wait_us,
            ..LoopConfig::for_mtu(1400)
        };
        let mut lp = EventLoop::new(cfg, fds).unwrap();
        let mut h = Echo {
            ctl_fd: Some(efd.as_raw_fd()),
            ..Echo::default()
        };
        let exit = lp.run(&mut h).unwrap();
        let stats = lp.stats();
        drop(lp);
        (exit, h, stats)
    });
    let port: u16 = port_rx.recv().unwrap();

    let client = ns.spawn(move || {
        let t = Some(Duration::from_secs(5));
        let mut b = [0u8; 2048];
        // UDP over IPv4 loopback: the handler sees a plain IPv4 source.
        let c4 = UdpSocket::bind("127.0.0.1:0").unwrap();
        c4.set_read_timeout(t).unwrap();
        c4.send_to(b"hello4", ("127.0.0.1", port)).unwrap();
        let (n, from) = c4.recv_from(&mut b).unwrap();
        assert_eq!(&b[..n], b"hello4");
        assert_eq!(from.port(), port);
        // UDP over IPv6 loopback.
        let c6 = UdpSocket::bind("[::1]:0").unwrap();
        c6.set_read_timeout(t).unwrap();
        c6.send_to(b"hello6", ("::1", port)).unwrap();
        let (n, _) = c6.recv_from(&mut b).unwrap();
        assert_eq!(&b[..n], b"hello6");
        // Through the TUN: 10.78.0.2 is routed to the device; the handler answers as it.
        let ct = UdpSocket::bind("10.78.0.1:0").unwrap();
        ct.set_read_timeout(t).unwrap();
        for i in 0..20u8 {
            let msg = [b't', b'u', b'n', i];
            ct.send_to(&msg, "10.78.0.2:7").unwrap();
            let (n, from) = ct.recv_from(&mut b).unwrap();
            assert_eq!(&b[..n], &msg);
            assert_eq!(from, "10.78.0.2:7".parse::<SocketAddr>().unwrap());
        }
        // Ask to stop: the loop stops once it has seen the control event (written below)
        // and its 5 ms timer.
        c4.send_to(b"stop", ("127.0.0.1", port)).unwrap();
        (c4.local_addr().unwrap(), c6.local_addr().unwrap())
    });
    let (c4, c6) = client.join().unwrap();
    // Wake the control poll until the loop has stopped (bounded: fails instead of hanging).
    let until = Instant::now() + Duration::from_secs(10);
    while !server.is_finished() {
        assert!(Instant::now() < until, "the loop did not stop within 10 s");
        // SAFETY: writing 8 bytes from an 8-byte buffer to the eventfd this test owns.
        unsafe { libc::write(efd_raw, 1u64.to_ne_bytes().as_ptr().cast(), 8) };
        std::thread::sleep(Duration::from_millis(20));
    }
    let (exit, h, stats) = server.join().unwrap();
    assert_eq!(exit, Exit::Stopped);
    assert!(
        h.udp_seen.contains(&(c4, b"hello4".to_vec())),
        "{:?}",
        h.udp_seen
    );
    assert!(h
        .udp_seen
        .iter()
        .any(|(a, d)| d == b"hello6" && a.port() == c6.port() && a.is_ipv6()));
    assert_eq!(h.tun_echoed, 20);
    assert!(h.ctl >= 1);
    assert!(h.timeouts >= 1);
    assert!(h.batches >= 3);
    assert_eq!(stats.udp_rx, 3);
    assert_eq!(stats.udp_tx, 2);
    assert!(stats.tun_rx >= 20);
    assert_eq!(stats.tun_tx, 20);
    assert_eq!(stats.udp_send_errors + stats.tun_write_errors, 0);
    // This kernel (6.18) has multishot recvmsg and provided-buffer rings.
    assert_eq!(stats.multishot, multishot);
    assert_eq!(stats.batched_wait, multishot);
}

/// Collects datagrams; "stop" stops.
#[derive(Default)]
struct Collect {
    seen: Vec<Vec<u8>>,
}

impl Handler for Collect {
    fn on_tun(&mut self, _io: &mut Io<'_>, _pkt: &mut [u8]) {}
    fn on_udp(&mut self, io: &mut Io<'_>, _from: SocketAddr, dgram: &mut [u8], _seg: usize) {
        if dgram == b"stop" {
            io.stop();
        } else {
            self.seen.push(dgram.to_vec());
        }
    }
    fn on_ctl_ready(&mut self, _io: &mut Io<'_>) {}
    fn on_timeout(&mut self, _io: &mut Io<'_>) {}
    fn on_batch_end(&mut self, _io: &mut Io<'_>) -> Option<Instant> {
        None
    }
}

/// More datagrams queued than the multishot receive has buffers: it ends with ENOBUFS, is
/// re-armed, and every datagram still arrives once, in order.
#[test]
#[ignore = "needs root and ip netns: sudo scripts/test.sh runs it (--include-ignored)"]
fn multishot_rearms_when_buffers_run_out() {
    let ns = Netns::new("nobufs");
    let (port_tx, port_rx) = mpsc::channel();
    let (sent_tx, sent_rx) = mpsc::channel::<()>();
    let server = ns.spawn(move || {
        let tun = Tun::create("tmnobuf0").expect("create tun");
        let sock = udp::bind_dual(0).unwrap();
        port_tx.send(sock.local_addr().unwrap().port()).unwrap();
        sent_rx.recv().unwrap();
        let fds = LoopFds {
            tun: &tun,
            udp: &sock,
            ctl_event: None,
            signals: None,
        };
        // 4 receives -> a ring of 8 buffers for 120 queued datagrams.
        let cfg = LoopConfig {
            udp_recvs: 4,
            ..LoopConfig::for_mtu(1400)
        };
        let mut lp = EventLoop::new(cfg, fds).unwrap();
        let mut h = Collect::default();
        assert_eq!(lp.run(&mut h).unwrap(), Exit::Stopped);
        let stats = lp.stats();
        (h, stats)
    });
    let port: u16 = port_rx.recv().unwrap();
    let client = ns.spawn(move || {
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..120u32 {
            let mut d = [0u8; 100];
            d[..4].copy_from_slice(&i.to_be_bytes());
            c.send_to(&d, ("127.0.0.1", port)).unwrap();
        }
        c.send_to(b"stop", ("127.0.0.1", port)).unwrap();
    });
    client.join().unwrap();
    sent_tx.send(()).unwrap();
    let (h, stats) = server.join().unwrap();
    assert!(stats.multishot);
    assert!(stats.udp_no_bufs >= 1, "{stats:?}");
    let got: Vec<u32> = h
        .seen
        .iter()
        .map(|d| u32::from_be_bytes(d[..4].try_into().unwrap()))
        .collect();
    assert_eq!(got, (0..120).collect::<Vec<_>>());
    assert_eq!(stats.udp_recv_errors, 0);
}

#[test]
#[ignore = "needs root and ip netns: sudo scripts/test.sh runs it (--include-ignored)"]
fn sigterm_stops_the_loop() {
    // Runs in a child process so blocking SIGTERM does not leak into the test harness. The
    // harness's own threads do not block SIGTERM, so the signal is sent to the loop's thread.
    if std::env::var_os("TMDPIO_SIGCHILD").is_some() {
        let sig = SignalFd::new(&[libc::SIGTERM, libc::SIGINT]).unwrap();
        let ns = Netns::new("sig");
        let (tx, rx) = mpsc::channel();
        let t = ns.spawn(move || {
            let tun = Tun::create("tmsig0").unwrap();
            let sock = udp::bind_dual(0).unwrap();
            let fds = LoopFds {
                tun: &tun,
                udp: &sock,
                ctl_event: None,
                signals: Some(&sig),
            };
            let mut lp = EventLoop::new(LoopConfig::default(), fds).unwrap();
            // SAFETY: gettid has no preconditions.
            tx.send(unsafe { libc::gettid() }).unwrap();
            lp.run(&mut Echo::default()).unwrap()
        });
        let tid = rx.recv().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        // SAFETY: tgkill(2) to a thread of our own process.
        unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, libc::SIGTERM) };
        assert_eq!(t.join().unwrap(), Exit::Signal(libc::SIGTERM));
        println!("SIGNAL-EXIT-OK");
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sigterm_stops_the_loop",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TMDPIO_SIGCHILD", "1")
        .output()
        .unwrap();
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(so.contains("SIGNAL-EXIT-OK"), "{so}");
}

/// Answers "go" with three 1400-byte datagrams and "many" with 130 100-byte datagrams, each
/// as one GSO batch; "stop" stops.
#[derive(Default)]
struct GsoProbe {
    stats: Vec<tm_dp_io::uring::IoStats>,
}

impl Handler for GsoProbe {
    fn on_tun(&mut self, _io: &mut Io<'_>, _pkt: &mut [u8]) {}
    fn on_udp(&mut self, io: &mut Io<'_>, from: SocketAddr, dgram: &mut [u8], _seg: usize) {
        let (n, size) = match &dgram[..] {
            b"go" => (3, 1400),
            b"many" => (130, 100),
            b"stop" => return io.stop(),
            _ => return,
        };
        let mut buf = vec![0u8; n * size];
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (i / size) as u8 + 1;
        }
        assert!(io.send_udp_gso(&buf, size, from));
        self.stats.push(io.stats());
    }
    fn on_ctl_ready(&mut self, _io: &mut Io<'_>) {}
    fn on_timeout(&mut self, _io: &mut Io<'_>) {}
    fn on_batch_end(&mut self, _io: &mut Io<'_>) -> Option<Instant> {
        None
    }
}

/// UDP GSO sends work; when the kernel refuses one (more segments than `UDP_MAX_SEGMENTS`:
/// EINVAL) the loop switches GSO off for good and sends the datagrams one by one, in order.
#[test]
#[ignore = "needs root and ip netns: sudo scripts/test.sh runs it (--include-ignored)"]
fn gso_send_falls_back_when_the_kernel_refuses() {
    let ns = Netns::new("gso");
    let (port_tx, port_rx) = mpsc::channel();
    let server = ns.spawn(move || {
        let tun = Tun::create("tmgso0").expect("create tun");
        let sock = udp::bind_dual(0).unwrap();
        port_tx.send(sock.local_addr().unwrap().port()).unwrap();
        let fds = LoopFds {
            tun: &tun,
            udp: &sock,
            ctl_event: None,
            signals: None,
        };
        let cfg = LoopConfig {
            udp_gso: true,
            ..LoopConfig::for_mtu(1400)
        };
        let mut lp = EventLoop::new(cfg, fds).unwrap();
        let mut h = GsoProbe::default();
        assert_eq!(lp.run(&mut h).unwrap(), Exit::Stopped);
        h
    });
    let port: u16 = port_rx.recv().unwrap();
    let client = ns.spawn(move || {
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 4096];
        for (msg, n, size) in [(&b"go"[..], 3, 1400), (b"many", 130, 100), (b"go", 3, 1400)] {
            c.send_to(msg, ("127.0.0.1", port)).unwrap();
            for tag in 1..=n {
                let (len, _) = c.recv_from(&mut b).unwrap();
                assert_eq!(len, size);
                assert!(
                    b[..len].iter().all(|&x| x == tag as u8),
                    "datagram {tag} in order"
                );
            }
        }
        c.send_to(b"stop", ("127.0.0.1", port)).unwrap();
    });
    client.join().unwrap();
    let h = server.join().unwrap();
    assert_eq!(h.stats.len(), 3);
    assert!(h.stats[0].udp_gso_sends == 1 && h.stats[0].gso_enabled);
    assert_eq!(h.stats[0].udp_tx, 3);
    assert!(!h.stats[1].gso_enabled, "GSO switched off after EINVAL");
    assert_eq!(h.stats[1].udp_tx, 133);
    assert_eq!(h.stats[2].udp_gso_sends, 1, "no further GSO attempts");
    assert_eq!(h.stats[2].udp_tx, 136);
    assert_eq!(h.stats[2].udp_send_errors, 0);
}
