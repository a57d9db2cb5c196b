//! The node's Docker agent: started with the node's services on a mesh node, deciding on the
//! node's policy projection ([`Node::node_policy`]); the peers' addresses from every netmap.

use super::Node;
use crate::mesh::Role;
use anyhow::Result;
use tm_coord::wire;

impl Node {
    /// Starts the agent on the mesh address (mesh nodes with `docker` enabled).
    pub(super) fn start_docker(&mut self) -> Result<()> {
        let (Some(hub), Some(settings), Some(mesh)) = (&self.docker, &self.cfg.docker, &self.mesh)
        else {
            return Ok(());
        };
        let audit = match &mesh.role {
            Role::Coordinator(c) => crate::docker::local_audit(c.clone()),
            Role::Member { client, .. } => crate::docker::member_audit(client.clone()),
        };
        let on = (self.cfg.address().addr, self.cfg.interface.as_str());
        let addr = hub.start(settings, on, self.node_policy(), audit)?;
        tracing::info!(%addr, engine = %settings.socket.display(), "docker agent serving");
        Ok(())
    }

    /// The peers' names and addresses (where `DockerDial` connects).
    pub(super) fn docker_netmap(&self, nm: &wire::Netmap) {
        let Some(hub) = &self.docker else { return };
        hub.set_peers(nm.peers.iter().map(|p| (p.name.clone(), p.mesh_ip.into())));
    }
}
