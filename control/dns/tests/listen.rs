//! Listening: several addresses at once (127.0.0.53 as on a node, ::1), and bind errors.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use tm_dns::{serve, DnsError, DnsServer, MeshDns, DEFAULT_ADDR};

#[test]
fn default_address_is_127_0_0_53_port_5353() {
    assert_eq!(
        DEFAULT_ADDR,
        "127.0.0.53:5353".parse::<SocketAddr>().expect("literal")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_every_address_over_udp_and_tcp() {
    let dns = Arc::new(MeshDns::new(&test_zone()).expect("valid"));
    let want: Vec<SocketAddr> = vec![
        "127.0.0.53:0".parse().expect("literal"),
        "[::1]:0".parse().expect("literal"),
    ];
    let server = DnsServer::bind(dns, &want).await.expect("bind");
    let addrs = server.local_addrs().to_vec();
    assert_eq!(addrs.len(), 2);
    assert_eq!(addrs[0].ip(), want[0].ip());
    assert_eq!(addrs[1].ip(), want[1].ip());
    assert!(addrs.iter().all(|a| a.port() != 0));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));

    let results = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for addr in &addrs {
            out.push(dig(*addr, &["beta.mesh", "A"]));
            out.push(dig(*addr, &["beta.mesh", "A", "+tcp"]));
        }
        out
    })
    .await
    .expect("dig thread");
    for d in &results {
        assert_eq!(d.status, "NOERROR", "{}", d.raw);
        assert_eq!(d.answers("A"), vec![BETA.to_owned()], "{}", d.raw);
    }
    stop.send(()).expect("server running");
    task.await.expect("join").expect("clean stop");
}

#[tokio::test]
async fn bind_errors_are_reported() {
    let dns = Arc::new(MeshDns::new(&test_zone()).expect("valid"));
    let r = serve(dns.clone(), &[], std::future::pending()).await;
    assert!(matches!(r, Err(DnsError::NoAddresses)), "{r:?}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let r = serve(dns, &[addr], std::future::pending()).await;
    match r {
        Err(DnsError::Bind { addr: a, source }) => {
            assert_eq!(a, addr);
            assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse);
        }
        other => panic!("expected a bind error, got {other:?}"),
    }
}
