//! Docker management through the mesh, the node's side: the agent listening on the node's mesh
//! address (bound to the tunnel interface, so only packets that came through the tunnel, whose
//! source address cryptokey routing ties to a peer's key, reach it), and `DockerDial` on the
//! control socket, which connects an operator command to any node's agent.
//!
//! The agent decides every call on the node's projection of the policy ([`NodePolicy`]);
//! audit entries go to the coordinator's audit log (directly on a coordinator, over
//! `POST /v1/admin` as `DockerAudit` from a member).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use tm_api::{Command, Response};
use tm_docker::agent::{Agent, AuditRecord, AuditSink, Caller};
use tm_docker::proto::{AGENT_PORT, NO_AGENT};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use crate::config::DockerSettings;
use crate::policy::NodePolicy;

/// How long a dial to another node's agent may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);

/// The node's Docker state, shared by the node task and the control socket.
pub struct DockerHub {
    name: String,
    mesh_ip: RwLock<Option<IpAddr>>,
    /// Each other node's mesh address and whether it declares a Docker agent.
    peers: RwLock<BTreeMap<String, (IpAddr, bool)>>,
    agent: RwLock<Option<Arc<Agent>>>,
}

impl DockerHub {
    /// A hub for node `name` (no agent, no peers, no policy yet).
    pub fn new(name: &str) -> Arc<DockerHub> {
        Arc::new(DockerHub {
            name: name.to_owned(),
            mesh_ip: RwLock::new(None),
            peers: RwLock::new(BTreeMap::new()),
            agent: RwLock::new(None),
        })
    }

    /// Replaces the names, mesh addresses and Docker flags of the other nodes (from the
    /// netmap).
    pub fn set_peers(&self, peers: impl IntoIterator<Item = (String, IpAddr, bool)>) {
        let mut p = self.peers.write().unwrap_or_else(|e| e.into_inner());
        *p = peers
            .into_iter()
            .filter(|(n, _, _)| *n != self.name)
            .map(|(n, ip, d)| (n, (ip, d)))
            .collect();
    }

    /// Whether the node `name` declares a Docker agent (so `docker ps` asks it).
    pub fn runs_docker(&self, name: &str) -> bool {
        self.peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .is_some_and(|(_, d)| *d)
    }

    /// Starts the agent on `mesh_ip`, accepting only connections that arrive on `interface`
    /// (the tunnel), deciding every call on `policy` (the node's projection of the mesh
    /// policy, from its netmaps; live streams re-decide on each change).
    pub fn start(
        &self,
        settings: &DockerSettings,
        (mesh_ip, interface): (IpAddr, &str),
        policy: NodePolicy,
        audit: AuditSink,
    ) -> Result<SocketAddr> {
        *self.mesh_ip.write().unwrap_or_else(|e| e.into_inner()) = Some(mesh_ip);
        let addr = SocketAddr::new(mesh_ip, AGENT_PORT);
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )?;
        sock.set_reuse_address(true)?;
        sock.bind_device(Some(interface.as_bytes()))
            .with_context(|| format!("docker agent: binding to interface {interface}"))?;
        sock.bind(&addr.into())
            .with_context(|| format!("docker agent: cannot bind {addr}"))?;
        sock.listen(128)?;
        sock.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(sock.into())?;
        let agent = Arc::new(Agent::new(
            self.name.clone(),
            settings.socket.clone(),
            policy.0,
            audit,
        ));
        *self.agent.write().unwrap_or_else(|e| e.into_inner()) = Some(agent.clone());
        tokio::spawn(async move {
            loop {
                let (s, peer) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!("docker agent accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = s.set_nodelay(true);
                tokio::spawn(agent.clone().serve_conn(s, Caller::Mesh(peer.ip())));
            }
        });
        Ok(addr)
    }

    /// Whether the agent runs.
    pub fn running(&self) -> bool {
        self.agent
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Serves a control connection that asked for `DockerDial { node }`: one response line,
    /// then the agent protocol, spliced to the node's agent.
    pub async fn dial(self: Arc<Self>, node: String, mut s: UnixStream) {
        let line = |r: Response| {
            let mut v = serde_json::to_vec(&r).unwrap_or_default();
            v.push(b'\n');
            v
        };
        if node == self.name {
            let agent = self.agent.read().unwrap_or_else(|e| e.into_inner()).clone();
            match agent {
                Some(a) => {
                    if s.write_all(&line(Response::ok(&"local"))).await.is_ok() {
                        a.serve_conn(s, Caller::Local).await;
                    }
                }
                None => {
                    let _ = s
                        .write_all(&line(Response::err(format!(
                            "node {node} {NO_AGENT} (no engine socket, or docker: {{enabled: \
                             false}})"
                        ))))
                        .await;
                }
            }
            return;
        }
        let ip = self
            .peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&node)
            .map(|(ip, _)| *ip);
        let Some(ip) = ip else {
            let _ = s
                .write_all(&line(Response::err(format!(
                    "unknown node {node:?} (see `tunnelmesh peers`)"
                ))))
                .await;
            return;
        };
        let own = *self.mesh_ip.read().unwrap_or_else(|e| e.into_inner());
        match connect(own, SocketAddr::new(ip, AGENT_PORT)).await {
            Ok(mut t) => {
                if s.write_all(&line(Response::ok(&"mesh"))).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut s, &mut t).await;
                }
            }
            Err(e) => {
                let msg = match e.kind() {
                    std::io::ErrorKind::ConnectionRefused => {
                        format!("node {node} {NO_AGENT} (Docker not installed or disabled there)")
                    }
                    std::io::ErrorKind::TimedOut => {
                        format!(
                            "node {node} did not answer within {}s",
                            DIAL_TIMEOUT.as_secs()
                        )
                    }
                    _ => format!("node {node}: {e}"),
                };
                let _ = s.write_all(&line(Response::err(msg))).await;
            }
        }
    }
}

/// Connects from this node's mesh address (so the peer sees our mesh identity).
async fn connect(own: Option<IpAddr>, to: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let sock = if to.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    if let Some(ip) = own {
        sock.bind(SocketAddr::new(ip, 0))?;
    }
    let t = tokio::time::timeout(DIAL_TIMEOUT, sock.connect(to))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "timeout"))??;
    t.set_nodelay(true)?;
    Ok(t)
}

/// Audit entries of a coordinator's own agent: straight into its log.
pub fn local_audit(c: tm_coord::Coordinator) -> AuditSink {
    Arc::new(move |r: AuditRecord| {
        let c = c.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = c.audit(&r.who, &r.action, &r.target, r.detail()) {
                tracing::error!("docker audit: {e}");
            }
        });
    })
}

/// Audit entries of a member's agent: sent to the coordinator (`DockerAudit` over mTLS).
pub fn member_audit(link: crate::mesh::CoordLink) -> AuditSink {
    Arc::new(move |r: AuditRecord| {
        let client = link.current();
        tokio::spawn(async move {
            let cmd = Command::DockerAudit {
                who: r.who.clone(),
                action: r.action.clone(),
                target: r.target.clone(),
                detail: r.detail(),
            };
            let resp = crate::policy::forward_admin(&client, &cmd).await;
            if !resp.ok {
                tracing::error!(
                    action = %r.action,
                    target = %r.target,
                    "docker audit entry not recorded by the coordinator: {}",
                    resp.error.unwrap_or_default()
                );
            }
        });
    })
}

/// On a coordinator: a member's `DockerAudit` report. `actor` is `node NAME` (its client
/// certificate); a member may report only about its own containers.
pub fn record_report(c: &tm_coord::Coordinator, actor: &str, cmd: &Command) -> Response {
    let Command::DockerAudit {
        who,
        action,
        target,
        detail,
    } = cmd
    else {
        return Response::err("not an audit report");
    };
    let Some(name) = actor.strip_prefix("node ") else {
        return Response::err("only members report Docker audit entries");
    };
    if !action.starts_with("docker.") || !target.starts_with(&format!("{name}/")) {
        return Response::err(format!(
            "node {name} may report Docker entries only about its own containers ({name}/...)"
        ));
    }
    match c.audit(who, action, target, format!("{detail} reported_by={name}")) {
        Ok(()) => Response::ok(&()),
        Err(e) => Response::err(e.to_string()),
    }
}
