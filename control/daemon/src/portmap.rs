//! The portmapper next to the node's NFS server (port 111 where NFS listens), so stock clients
//! find MOUNT and NFS without `port=`/`mountport=`. A portmapper that cannot bind (another one,
//! e.g. rpcbind, holds the port) is a warning, not a failure: NFS still works with the ports
//! given explicitly.

use std::net::SocketAddr;
use tm_nfs::portmap::{Portmap, PMAP_PORT};

/// Serves the portmapper for the NFS server at `nfs` (access as for NFS: loopback + `allow`):
/// where it listens, or why it does not.
pub async fn start(nfs: SocketAddr, allow: &[tm_nfs::Cidr]) -> Result<SocketAddr, String> {
    let access = tm_nfs::Access {
        allow: allow.to_vec(),
        loopback: true,
    };
    let at = SocketAddr::new(nfs.ip(), PMAP_PORT);
    match Portmap::for_nfs(nfs.port(), PMAP_PORT, access)
        .bind(&[at])
        .await
    {
        Ok(pm) => {
            tracing::info!(listen = %at, "portmapper: MOUNT and NFS at port {}", nfs.port());
            tokio::spawn(pm.run(std::future::pending()));
            Ok(at)
        }
        Err(e) => {
            let why = format!(
                "{e} (another portmapper, e.g. rpcbind?); stock NFS clients then need \
                 -o port={p},mountport={p}",
                p = nfs.port()
            );
            tracing::warn!("portmapper: {why}");
            Err(why)
        }
    }
}
