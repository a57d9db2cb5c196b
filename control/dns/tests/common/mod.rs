//! Shared fixture: a `tm-dns` server on 127.0.0.1:<free port> in a background runtime.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::{mpsc, Arc};
use std::thread;

use tm_dns::{DnsServer, MeshDns, Zone};

pub const BETA: &str = "100.64.0.2";
pub const GAMMA: &str = "100.64.0.3";
pub const ALPHA4: &str = "100.64.0.1";
pub const ALPHA6: &str = "fd7a:115c:a1e0::1";
pub const COORD1: &str = "100.64.0.10";
pub const COORD2: &str = "100.64.0.11";

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("test constant is an IP")
}

/// alpha (v4 + v6), beta (v4 only), coordinators x2, alias www -> beta.
pub fn test_zone() -> Zone {
    Zone::default()
        .with_peer("alpha", [ip(ALPHA4), ip(ALPHA6)])
        .with_peer("beta", [ip(BETA)])
        .with_coordinators([ip(COORD1), ip(COORD2)])
        .with_alias("www", "beta")
}

pub struct Fixture {
    pub dns: Arc<MeshDns>,
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<Result<(), tm_dns::DnsError>>>,
}

impl Fixture {
    pub fn start(zone: Zone) -> Self {
        let dns = Arc::new(MeshDns::new(&zone).expect("test zone is valid"));
        let (addr_tx, addr_rx) = mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let served = dns.clone();
        let thread = thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(async move {
                let bind: SocketAddr = "127.0.0.1:0".parse().expect("literal");
                let server = DnsServer::bind(served, &[bind]).await?;
                addr_tx
                    .send(server.local_addrs()[0])
                    .expect("test thread waits for the address");
                server
                    .run(async move {
                        let _ = stop_rx.await;
                    })
                    .await
            })
        });
        let addr = addr_rx.recv().expect("server bound");
        Self {
            dns,
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Stops the server and returns what `run` returned.
    pub fn stop(mut self) -> Result<(), tm_dns::DnsError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), tm_dns::DnsError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(t) => t.join().expect("server thread panicked"),
            None => Ok(()),
        }
    }

    /// Runs `dig @127.0.0.1 -p <port> <args>` and parses its output.
    pub fn dig(&self, args: &[&str]) -> Dig {
        dig(self.addr, args)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// One parsed resource record line of dig output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rr {
    pub name: String,
    pub ttl: u32,
    pub class: String,
    pub rtype: String,
    pub rdata: String,
}

#[derive(Debug, Default)]
pub struct Dig {
    pub raw: String,
    pub status: String,
    pub flags: Vec<String>,
    pub answer: Vec<Rr>,
    pub authority: Vec<Rr>,
    pub additional: Vec<Rr>,
}

impl Dig {
    pub fn has_flag(&self, f: &str) -> bool {
        self.flags.iter().any(|x| x == f)
    }

    /// rdata of answer records of type `rtype`, sorted.
    pub fn answers(&self, rtype: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .answer
            .iter()
            .filter(|r| r.rtype == rtype)
            .map(|r| r.rdata.clone())
            .collect();
        v.sort();
        v
    }

    /// Every record in every section carries TTL 5.
    pub fn assert_ttls(&self) {
        for r in self
            .answer
            .iter()
            .chain(&self.authority)
            .chain(&self.additional)
        {
            assert_eq!(r.ttl, 5, "TTL of {r:?}\n{}", self.raw);
        }
    }
}

pub fn dig(addr: SocketAddr, args: &[&str]) -> Dig {
    let out = Command::new("dig")
        .arg(format!("@{}", addr.ip()))
        .arg("-p")
        .arg(addr.port().to_string())
        .args(["+time=3", "+tries=2", "+norecurse"])
        .args(args)
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`dig` not found: install it with \
             `apt-get install -y --no-install-recommends bind9-dnsutils`"
        ),
        Err(e) => panic!("running dig: {e}"),
    };
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "dig {args:?} failed: {raw}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_dig(raw)
}

fn parse_dig(raw: String) -> Dig {
    let mut d = Dig::default();
    let mut section = "";
    for line in raw.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            d.status = rest.split(',').next().unwrap_or("").trim().to_owned();
        }
        if let Some(rest) = line.strip_prefix(";; flags: ") {
            let flags = rest.split(';').next().unwrap_or("");
            d.flags = flags.split_whitespace().map(str::to_owned).collect();
        }
        if line.starts_with(";; ") && line.ends_with(" SECTION:") {
            section = if line.contains("ANSWER") {
                "answer"
            } else if line.contains("AUTHORITY") {
                "authority"
            } else if line.contains("ADDITIONAL") {
                "additional"
            } else {
                ""
            };
            continue;
        }
        if line.trim().is_empty() {
            section = "";
            continue;
        }
        if line.starts_with(';') || section.is_empty() {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(name), Some(ttl), Some(class), Some(rtype)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let rr = Rr {
            name: name.to_owned(),
            ttl: ttl.parse().unwrap_or(u32::MAX),
            class: class.to_owned(),
            rtype: rtype.to_owned(),
            rdata: parts.collect::<Vec<_>>().join(" "),
        };
        match section {
            "answer" => d.answer.push(rr),
            "authority" => d.authority.push(rr),
            _ => d.additional.push(rr),
        }
    }
    d.raw = raw;
    d
}
