//! Serves a small demo zone until Ctrl-C:
//! `cargo run -p tm-dns --example serve -- [ADDR ...]` (default 127.0.0.53:5353), then
//! `dig @127.0.0.53 -p 5353 beta.mesh`.

use std::net::SocketAddr;
use std::sync::Arc;

use tm_dns::{serve, MeshDns, Zone, DEFAULT_ADDR};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for a in std::env::args().skip(1) {
        addrs.push(a.parse()?);
    }
    if addrs.is_empty() {
        addrs.push(DEFAULT_ADDR);
    }
    let zone = Zone::default()
        .with_peer(
            "alpha",
            ["100.64.0.1".parse()?, "fd7a:115c:a1e0::1".parse()?],
        )
        .with_peer("beta", ["100.64.0.2".parse()?])
        .with_coordinators(["100.64.0.10".parse()?, "100.64.0.11".parse()?])
        .with_alias("www", "beta");
    let dns = Arc::new(MeshDns::new(&zone)?);
    eprintln!("serving {addrs:?}");
    serve(dns, &addrs, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
