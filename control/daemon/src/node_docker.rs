//! The node's Docker agent: started with the node's services on a mesh node, deciding on the
//! node's policy projection ([`Node::node_policy`]); the peers' addresses from every netmap.

use super::Node;
use crate::mesh::Role;
use anyhow::Result;
use tm_coord::wire;

impl Node {
    /// Starts the agent on the mesh address (mesh nodes with `docker` enabled), then declares
    /// to the coordinators whether it runs (netmaps list it, `docker ps` asks only such nodes).
    pub(super) fn start_docker(&mut self) -> Result<()> {
        let started = self.start_agent();
        self.declare_services(matches!(started, Ok(true)));
        started.map(|_| ())
    }

    /// Declares the node's services (`docker` or none) to the coordinators, in the background
    /// (a member retries every 5 s until a coordinator takes it).
    fn declare_services(&self, docker: bool) {
        let Some(mesh) = &self.mesh else { return };
        let services: Vec<String> = if docker {
            vec!["docker".into()]
        } else {
            Vec::new()
        };
        match &mesh.role {
            Role::Coordinator(c) => {
                let (c, name) = (c.clone(), self.cfg.name.clone());
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = c.set_services(&name, services) {
                        tracing::warn!("declaring this node's services: {e}");
                    }
                });
            }
            Role::Member { client, .. } => {
                let link = client.clone();
                tokio::spawn(async move {
                    loop {
                        match link.current().update_services(&services).await {
                            Ok(()) => return,
                            Err(e) => tracing::debug!("declaring this node's services: {e}"),
                        }
                        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                    }
                });
            }
        }
    }

    /// Starts the agent if this node has one; `Ok(true)` once it serves.
    fn start_agent(&mut self) -> Result<bool> {
        let (Some(hub), Some(settings), Some(mesh)) = (&self.docker, &self.cfg.docker, &self.mesh)
        else {
            return Ok(false);
        };
        let audit = match &mesh.role {
            Role::Coordinator(c) => crate::docker::local_audit(c.clone()),
            Role::Member { client, .. } => crate::docker::member_audit(client.clone()),
        };
        let on = (self.cfg.address().addr, self.cfg.interface.as_str());
        let addr = hub.start(settings, on, self.node_policy(), audit)?;
        tracing::info!(%addr, engine = %settings.socket.display(), "docker agent serving");
        Ok(true)
    }

    /// The peers' names and addresses (where `DockerDial` connects).
    pub(super) fn docker_netmap(&self, nm: &wire::Netmap) {
        let Some(hub) = &self.docker else { return };
        hub.set_peers(nm.peers.iter().map(|p| {
            let docker = p.services.iter().any(|s| s == "docker");
            (p.name.clone(), p.mesh_ip.into(), docker)
        }));
    }
}
