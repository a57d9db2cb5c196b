//! `tmctl status`: the node's services with their endpoints, and the coordinators it talks to.
//! Only what actually listens is given an endpoint; the rest is `running: false` with the
//! reason. A child module of `node` (it reads the node's state).

use super::*;
use tm_api::{CoordinatorInfo, ServiceInfo};

fn running(name: &str, endpoints: Vec<String>, detail: &str) -> ServiceInfo {
    ServiceInfo {
        name: name.into(),
        running: true,
        endpoints,
        detail: Some(detail.into()),
    }
}

fn stopped(name: &str, why: impl Into<String>) -> ServiceInfo {
    ServiceInfo {
        name: name.into(),
        running: false,
        endpoints: Vec::new(),
        detail: Some(why.into()),
    }
}

impl Node {
    pub(super) fn services(&self) -> Vec<ServiceInfo> {
        let member = matches!(
            self.mesh.as_ref().map(|m| &m.role),
            Some(Role::Member { .. })
        );
        let ep = self.storage.as_ref().map(|s| {
            s.endpoints
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        });
        let mut out = Vec::new();
        let no_store = if member {
            "not on this node: members use the coordinator's (http://coordinator.mesh:8080/s3)"
        } else {
            "no s3: section in the config"
        };
        match ep.as_ref().and_then(|e| e.s3) {
            Some(a) => out.push(running(
                "s3",
                vec![format!("http://{a}/s3")],
                "S3 API (SigV4, Basic, Bearer)",
            )),
            None if ep.is_some() => out.push(stopped("s3", "not started")),
            None => out.push(stopped("s3", no_store)),
        }
        match (ep.as_ref().and_then(|e| e.nfs), &self.cfg.nfs) {
            (Some(a), _) => out.push(running(
                "nfs",
                vec![a.to_string()],
                "NFSv3 and MOUNT, exports /shares/<name>",
            )),
            (None, Some(_)) if ep.is_some() => out.push(stopped("nfs", "not started")),
            (None, Some(_)) => out.push(stopped("nfs", no_store)),
            (None, None) => out.push(stopped("nfs", "no nfs: section in the config")),
        }
        match ep.as_ref().and_then(|e| e.portmap.clone()) {
            Some(Ok(a)) => out.push(running(
                "portmapper",
                vec![format!("{a} (udp, tcp)")],
                "RPC program 100000: MOUNT and NFS v3",
            )),
            Some(Err(e)) => out.push(stopped("portmapper", e)),
            None => out.push(stopped("portmapper", "runs with NFS")),
        }
        if self.dns_addrs.is_empty() {
            let why = if self.mesh.is_none() {
                "mesh DNS runs on mesh nodes (tunnelmesh join)"
            } else {
                "no dns: section in the config"
            };
            out.push(stopped("dns", why));
        } else {
            let domain = self.cfg.dns.as_ref().map_or("mesh", |d| d.domain.as_str());
            let system = if self.sysdns.is_some() {
                ", system resolver pointed at it"
            } else {
                ""
            };
            out.push(running(
                "dns",
                self.dns_addrs.iter().map(|a| a.to_string()).collect(),
                &format!("zone .{domain}{system}"),
            ));
        }
        match (&self.cfg.coordinator, self.mesh.as_ref().map(|m| &m.role)) {
            (Some(c), Some(Role::Coordinator(_))) => out.push(running(
                "coordinator",
                vec![format!("https://{}", c.listen)],
                "mesh API: joins, netmap, relay",
            )),
            _ => out.push(stopped("coordinator", "this node is not a coordinator")),
        }
        match (&self.docker, &self.cfg.docker) {
            (Some(h), Some(d)) if h.running() => out.push(running(
                "docker",
                vec![format!(
                    "{}:{} (tunnel only)",
                    self.cfg.address().addr,
                    tm_docker::proto::AGENT_PORT
                )],
                &format!("Docker agent, engine {}", d.socket.display()),
            )),
            (_, None) => out.push(stopped(
                "docker",
                "no engine socket (/var/run/docker.sock), or docker: {enabled: false}",
            )),
            _ if self.mesh.is_none() => {
                out.push(stopped("docker", "the Docker agent runs on mesh nodes"))
            }
            _ => out.push(stopped("docker", "not started")),
        }
        out
    }

    pub(super) fn coordinators(&self) -> Vec<CoordinatorInfo> {
        let Some(m) = self.mesh.as_ref() else {
            return Vec::new();
        };
        let reachable = m.reachable.load(Ordering::Relaxed);
        match &m.role {
            Role::Coordinator(_) => vec![CoordinatorInfo {
                name: Some(self.cfg.name.clone()),
                mesh_ip: Some(self.cfg.address().addr.to_string()),
                api: self
                    .cfg
                    .coordinator
                    .as_ref()
                    .map_or_else(String::new, |c| c.listen.to_string()),
                this_node: true,
                reachable: true,
            }],
            Role::Member { client, .. } => {
                let addr = &client.addr();
                let known: Vec<&Peer> = self.peers.values().filter(|p| p.is_coordinator).collect();
                let one = |p: Option<&Peer>| CoordinatorInfo {
                    name: p.map(|p| p.cfg.name.clone()),
                    mesh_ip: p.and_then(|p| p.cfg.allowed_ips.first().map(|c| c.addr.to_string())),
                    api: addr.clone(),
                    this_node: false,
                    reachable,
                };
                if known.is_empty() {
                    vec![one(None)]
                } else {
                    known.into_iter().map(|p| one(Some(p))).collect()
                }
            }
        }
    }
}
