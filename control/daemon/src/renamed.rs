//! When the coordinators rename or re-address this node (issue 17): after a partition in
//! which two nodes joined with the same name, or were given the same mesh address, the
//! earlier registration keeps it and the other node is renamed (`web-2`) or given a free
//! address. Every other node learns that from its netmap; this module makes the node itself
//! follow: it takes the new name at once (status, logs) and keeps the new address for its
//! next start (the tunnel address of a running node is not changed under its connections),
//! saying so in the log.

use std::net::Ipv4Addr;

use tm_coord::wire;
use tm_noise::PublicKey;

use crate::mesh::JoinState;

/// What changed for this node, as a log line (`None`: nothing new). `noted` is the new
/// address already reported (so it is said once).
pub(crate) fn follow(
    nm: &wire::Netmap,
    me: &PublicKey,
    name: &mut String,
    address: Ipv4Addr,
    noted: &mut Option<Ipv4Addr>,
    saved: Option<&mut JoinState>,
) -> Option<String> {
    let own = nm.peers.iter().find(|p| p.public_key == *me)?;
    let mut said = Vec::new();
    if own.name != *name {
        said.push(format!(
            "the mesh renamed this node from {name:?} to {:?} (another node registered the \
             name earlier)",
            own.name
        ));
        name.clone_from(&own.name);
    }
    if let Some(s) = saved {
        if s.mesh_ip != own.mesh_ip {
            s.mesh_ip = own.mesh_ip;
        }
    }
    if own.mesh_ip != address && *noted != Some(own.mesh_ip) {
        *noted = Some(own.mesh_ip);
        said.push(format!(
            "the mesh gave this node the address {} ({address} was given earlier to another \
             node); restart the node to use it",
            own.mesh_ip
        ));
    }
    (!said.is_empty()).then(|| said.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn netmap(name: &str, ip: &str) -> wire::Netmap {
        serde_json::from_value(serde_json::json!({
            "version": 3,
            "peers": [
                {"name": name, "public_key": "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                 "mesh_ip": ip, "endpoints": [], "is_coordinator": false},
                {"name": "web", "public_key": "AgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                 "mesh_ip": "100.64.0.9", "endpoints": [], "is_coordinator": false}
            ],
            "dns": {"domain": "mesh", "aliases": {}}
        }))
        .unwrap()
    }

    #[test]
    fn a_renamed_or_readdressed_node_follows_its_netmap_entry() {
        let mut k = [0; 32];
        k[0] = 1; // "AQAA...": the first peer of `netmap`
        let me = PublicKey(k);
        let mut name = "web".to_owned();
        let ip: Ipv4Addr = "100.64.0.9".parse().unwrap();
        let mut noted = None;
        // Unchanged: nothing to say.
        assert_eq!(
            follow(
                &netmap("web", "100.64.0.9"),
                &me,
                &mut name,
                ip,
                &mut noted,
                None
            ),
            None
        );
        // Renamed: taken at once, said once.
        let line = follow(
            &netmap("web-2", "100.64.0.9"),
            &me,
            &mut name,
            ip,
            &mut noted,
            None,
        )
        .unwrap();
        assert_eq!(name, "web-2");
        assert!(
            line.contains("renamed this node from \"web\" to \"web-2\""),
            "{line}"
        );
        assert_eq!(
            follow(
                &netmap("web-2", "100.64.0.9"),
                &me,
                &mut name,
                ip,
                &mut noted,
                None
            ),
            None
        );
        // Re-addressed: kept for the next start, and the log says to restart.
        let line = follow(
            &netmap("web-2", "100.64.0.77"),
            &me,
            &mut name,
            ip,
            &mut noted,
            None,
        )
        .unwrap();
        assert!(line.contains("address 100.64.0.77"), "{line}");
        assert!(line.contains("restart"), "{line}");
        assert_eq!(
            follow(
                &netmap("web-2", "100.64.0.77"),
                &me,
                &mut name,
                ip,
                &mut noted,
                None
            ),
            None,
            "said once"
        );
        // A netmap without this node (it was removed) changes nothing here.
        let other = PublicKey([7; 32]);
        assert_eq!(
            follow(
                &netmap("x", "100.64.0.1"),
                &other,
                &mut name,
                ip,
                &mut noted,
                None
            ),
            None
        );
        assert_eq!(name, "web-2");
    }
}
