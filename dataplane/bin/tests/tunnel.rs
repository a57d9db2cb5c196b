//! End to end without the control plane: two `tm-dataplane` processes in two network
//! namespaces joined by a veth pair, each driven through its shared-memory ring by this
//! test (SetTimers, AddPeer, InstallSession with swapped keys/indices), then pings across
//! the tunnel. Also: the setup-failure contract and clean exit on SIGTERM/SIGINT.
//! Needs root and `ip`/`ping`; skipped (with a message) otherwise.

use std::io::Read;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tm_ring::{Endpoint, RingConfig};
use tm_wire::ipc::{CtlMsg, DpMsg, Prefix, Timers, IPC_VERSION};

const BIN: &str = env!("CARGO_BIN_EXE_tm-dataplane");

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("spawn command")
}

/// A network namespace deleted on drop (also when the test panics).
struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        let ns = Ns(format!("tmdpio-test-{}-{tag}", std::process::id()));
        assert!(run(Command::new("ip").args(["netns", "add", &ns.0]))
            .status
            .success());
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }
    fn ip(&self, args: &[&str]) -> String {
        let o = run(Command::new("ip").arg("-n").arg(&self.0).args(args));
        assert!(o.status.success(), "ip {args:?}: {o:?}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
    fn exec(&self, args: &[&str]) -> Output {
        run(Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args))
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// One dataplane process and the control side of its ring.
struct Node {
    child: Child,
    ep: Endpoint,
}

impl Node {
    fn spawn(ns: &Ns, ipc_version: u32, args: &[&str]) -> Node {
        let (ep, fds) = tm_ring::create(RingConfig::default(), ipc_version).expect("ring");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns.0, BIN, "--ring-fds", "3,4,5"])
            .args(args)
            .stdin(Stdio::null())
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
        let child = cmd.spawn().expect("spawn tm-dataplane");
        drop(fds);
        Node { child, ep }
    }

    fn send(&mut self, msgs: &[CtlMsg]) {
        for m in msgs {
            let mut b = Vec::new();
            m.encode(&mut b);
            self.ep.tx.try_push(&b).expect("ring has room");
        }
        self.ep.tx.notify().expect("notify");
    }

    /// Pops events until `pick` returns `Some` (panics after 10 s or if the child exits).
    fn wait_for<T>(&mut self, what: &str, mut pick: impl FnMut(&DpMsg) -> Option<T>) -> T {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            while let Some(m) = self.ep.rx.try_pop(DpMsg::decode) {
                let m = m.expect("dataplane sends valid messages");
                if let Some(t) = pick(&m) {
                    return t;
                }
            }
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "dataplane exited ({st}) while waiting for {what}: {}",
                    self.stderr()
                );
            }
            assert!(Instant::now() < until, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn stderr(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }

    fn signal(&mut self, sig: &str) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(run(Command::new("kill").args([sig, &pid])).status.success());
        self.child.wait().expect("wait")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pfx(s: &str) -> Prefix {
    let (a, l) = s.split_once('/').unwrap();
    Prefix {
        addr: a.parse().unwrap(),
        len: l.parse().unwrap(),
    }
}

/// Runs a dataplane that must fail during setup; returns its stderr.
fn expect_setup_failure(ns: &Ns, ipc_version: u32, args: &[&str]) -> String {
    let mut n = Node::spawn(ns, ipc_version, args);
    let st = n.child.wait().unwrap();
    let err = n.stderr();
    assert_eq!(st.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(err.starts_with("tm-dataplane: "), "{err}");
    err
}

#[test]
#[ignore = "needs root and ip netns: sudo scripts/test.sh runs it (--include-ignored)"]
fn two_dataplanes_ping_across_the_tunnel() {
    assert!(
        is_root(),
        "needs root (run as root, or leave this ignored test out)"
    );
    let a = Ns::new("a");
    let b = Ns::new("b");
    a.ip(&[
        "link", "add", "tmv0", "type", "veth", "peer", "name", "tmv1", "netns", &b.0,
    ]);
    a.ip(&["addr", "add", "192.168.177.1/24", "dev", "tmv0"]);
    b.ip(&["addr", "add", "192.168.177.2/24", "dev", "tmv1"]);
    a.ip(&["link", "set", "tmv0", "up"]);
    b.ip(&["link", "set", "tmv1", "up"]);

    let common = ["--tun", "tm0", "--mtu", "1420"];
    let mut na = Node::spawn(
        &a,
        IPC_VERSION,
        &[
            &common[..],
            &["--address", "100.64.0.1/10", "--listen-port", "51820"],
            &["--route", "10.202.0.0/16"],
        ]
        .concat(),
    );
    let mut nb = Node::spawn(
        &b,
        IPC_VERSION,
        &[
            &common[..],
            &["--address", "100.64.0.2/10", "--listen-port", "51821"],
        ]
        .concat(),
    );
    let ready = |m: &DpMsg| match m {
        DpMsg::Ready {
            workers,
            listen_port,
        } => Some((*workers, *listen_port)),
        _ => None,
    };
    assert_eq!(na.wait_for("Ready A", ready), (1, 51820));
    assert_eq!(nb.wait_for("Ready B", ready), (1, 51821));

    // Device state as configured by the dataplane (netlink, not `ip`).
    let link = a.ip(&["-o", "link", "show", "tm0"]);
    assert!(link.contains("mtu 1420") && link.contains(",UP"), "{link}");
    assert!(a
        .ip(&["addr", "show", "tm0"])
        .contains("inet 100.64.0.1/10"));
    assert!(a.ip(&["route"]).contains("10.202.0.0/16 dev tm0"));

    // Setup failures: TUN name taken, IPC version mismatch.
    let e = expect_setup_failure(
        &a,
        IPC_VERSION,
        &[
            &common[..],
            &["--address", "100.64.0.9/10", "--listen-port", "0"],
        ]
        .concat(),
    );
    assert!(e.contains("create tun") && e.contains("tm0"), "{e}");
    let e = expect_setup_failure(
        &a,
        IPC_VERSION + 1,
        &[
            "--tun",
            "tm9",
            "--mtu",
            "1420",
            "--address",
            "100.64.0.9/10",
            "--listen-port",
            "0",
        ],
    );
    assert!(e.contains("attach ring"), "{e}");

    // Control plane's part, done by hand: B is the responder, A the initiator.
    let k_ab = [0xab; 32];
    let k_ba = [0xba; 32];
    nb.send(&[
        CtlMsg::SetTimers(Timers::default()),
        CtlMsg::AddPeer {
            peer: 1,
            public_key: [1; 32],
            allowed_ips: vec![pfx("100.64.0.1/32")],
            endpoint: Some("192.168.177.1:51820".parse().unwrap()),
            persistent_keepalive: 0,
        },
        CtlMsg::InstallSession {
            peer: 1,
            local_index: 0x2222,
            remote_index: 0x1111,
            send_key: k_ba,
            recv_key: k_ab,
            initiator: false,
        },
    ]);
    na.send(&[
        CtlMsg::SetTimers(Timers::default()),
        CtlMsg::AddPeer {
            peer: 7,
            public_key: [2; 32],
            allowed_ips: vec![pfx("100.64.0.2/32"), pfx("10.202.0.0/16")],
            endpoint: Some("192.168.177.2:51821".parse().unwrap()),
            persistent_keepalive: 0,
        },
    ]);
    // Give B time to install before A's keepalive arrives: wait until B's counters show
    // it processed its messages.
    nb.send(&[CtlMsg::RequestCounters]);
    nb.wait_for("B counters", |m| {
        matches!(m, DpMsg::PeerCounters { peer: 1, .. }).then_some(())
    });
    na.send(&[CtlMsg::InstallSession {
        peer: 7,
        local_index: 0x1111,
        remote_index: 0x2222,
        send_key: k_ab,
        recv_key: k_ba,
        initiator: true,
    }]);
    // A's keepalive confirms B's responder session.
    nb.wait_for("SessionConfirmed on B", |m| {
        matches!(
            m,
            DpMsg::SessionConfirmed {
                peer: 1,
                local_index: 0x2222
            }
        )
        .then_some(())
    });

    for (ns, dst) in [(&a, "100.64.0.2"), (&b, "100.64.0.1")] {
        let o = ns.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", dst]);
        assert!(o.status.success(), "ping {dst} from {}: {o:?}", ns.0);
    }
    // Full-MTU inner packets (1420 - 20 IPv4 - 8 ICMP = 1392 bytes of payload, DF set) fit
    // the loop's buffers in both directions; one byte more does not leave the host.
    let o = a.exec(&[
        "ping",
        "-c",
        "2",
        "-i",
        "0.2",
        "-W",
        "2",
        "-M",
        "do",
        "-s",
        "1392",
        "100.64.0.2",
    ]);
    assert!(o.status.success(), "full-size ping: {o:?}");
    let o = a.exec(&[
        "ping",
        "-c",
        "1",
        "-W",
        "1",
        "-M",
        "do",
        "-s",
        "1393",
        "100.64.0.2",
    ]);
    assert!(
        !o.status.success(),
        "oversized ping must fail locally: {o:?}"
    );

    // Handshake-class datagrams from the control plane go out of A's socket and come up
    // B's ring with a plain IPv4 source.
    let mut hs = vec![0u8; 148];
    hs[0] = 1;
    hs[4] = 0x5a;
    na.send(&[CtlMsg::SendDatagram {
        to: "192.168.177.2:51821".parse().unwrap(),
        data: hs.clone(),
    }]);
    let (from, data) = nb.wait_for("HandshakeDatagram on B", |m| match m {
        DpMsg::HandshakeDatagram { from, data } => Some((*from, data.clone())),
        _ => None,
    });
    assert_eq!(from, "192.168.177.1:51820".parse::<SocketAddr>().unwrap());
    assert_eq!(data, hs);

    // Counters reflect the pings: A sent 3 + 2 requests and 3 replies, and received as
    // many. Periodic (1 s) counter events queued earlier are stale: drop them first.
    while na.ep.rx.try_pop(|_| ()).is_some() {}
    na.send(&[CtlMsg::RequestCounters]);
    let stats = na.wait_for("PeerCounters on A", |m| match m {
        DpMsg::PeerCounters { peer: 7, stats } => Some(*stats),
        _ => None,
    });
    assert!(stats.tx_packets >= 8 && stats.rx_packets >= 8, "{stats:?}");

    // Clean exits; the TUN disappears with the process.
    assert!(na.signal("-TERM").success());
    assert!(nb.signal("-INT").success());
    for ns in [&a, &b] {
        let o = run(Command::new("ip").args(["-n", &ns.0, "link", "show", "tm0"]));
        assert!(!o.status.success(), "tm0 still exists in {}", ns.0);
    }
}

#[test]
#[ignore = "needs root and ip netns: sudo scripts/test.sh runs it (--include-ignored)"]
fn dataplane_dies_with_its_parent_thread_and_removes_the_tun() {
    assert!(
        is_root(),
        "needs root (run as root, or leave this ignored test out)"
    );
    let ns = Ns::new("pd");
    // The spawning thread plays the control plane and then goes away: PR_SET_PDEATHSIG
    // (set by tm_ring::pass_fds) sends SIGTERM, which the dataplane handles as a clean exit.
    let spawner = {
        let name = ns.0.clone();
        std::thread::spawn(move || {
            let ns = Ns(name);
            let mut n = Node::spawn(
                &ns,
                IPC_VERSION,
                &[
                    "--tun",
                    "tmpd0",
                    "--mtu",
                    "1280",
                    "--address",
                    "fd7a::1/64",
                    "--listen-port",
                    "0",
                ],
            );
            let port = n.wait_for("Ready", |m| match m {
                DpMsg::Ready { listen_port, .. } => Some(*listen_port),
                _ => None,
            });
            assert_ne!(port, 0, "Ready reports the real port when 0 was asked for");
            let addr = ns.ip(&["-6", "addr", "show", "tmpd0"]);
            assert!(addr.contains("fd7a::1/64"), "{addr}");
            // Leave the child running (no kill, no wait) and keep the namespace.
            std::mem::forget(n);
            std::mem::forget(ns);
        })
    };
    spawner.join().expect("spawner thread");
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let o = run(Command::new("ip").args(["-n", &ns.0, "link", "show", "tmpd0"]));
        if !o.status.success() {
            break;
        }
        assert!(
            Instant::now() < until,
            "dataplane survived its parent thread"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
