//! The policy on a coordinator node: the `policy set|get|check|explain` admin commands, and the
//! NFS server's [`tm_nfs::Gate`] over the coordinator's compiled policy (S3 asks the same
//! artifact through [`crate::identity::MeshAuthority`]).
//!
//! Every enforcer here decides with [`tm_policy::decide()`] on [`Coordinator::policy`], keyed by
//! an authenticated identity: S3 by its credential or token, NFS by the mesh address the client
//! connects from (cryptokey routing makes it the member's), admin commands by the control
//! socket (local root).

use std::net::IpAddr;

use tm_api::{Command, PolicyExplanation, PolicyInfo, Response};
use tm_coord::Coordinator;
use tm_nfs::{Gate, ShareGrant};
use tm_policy::golden::OwnedRequest;
use tm_policy::{Artifact, Identity, NfsOp, NodeInfo, NodeKey, Request, TokenId};

/// A node's view of the policy: its projection of the coordinator's compiled policy, from the
/// last netmap (`None` until one carried it). Enforcers on every node (the Docker agent) decide
/// from [`NodePolicy::current`] on each call, or wait for changes on [`NodePolicy::changed`] to
/// cut what the new policy no longer allows.
#[derive(Debug, Clone)]
pub struct NodePolicy(pub tokio::sync::watch::Receiver<Option<std::sync::Arc<Artifact>>>);

#[allow(dead_code)]
impl NodePolicy {
    /// The artifact in force now.
    pub fn current(&self) -> Option<std::sync::Arc<Artifact>> {
        self.0.borrow().clone()
    }

    /// Waits until the artifact changes; `Err` when the node is gone.
    pub async fn changed(&mut self) -> Result<(), tokio::sync::watch::error::RecvError> {
        self.0.changed().await
    }
}

/// The NFS gate of a coordinator: a client is the member whose mesh address it connects from.
#[derive(Debug, Clone)]
pub struct MeshGate(pub Coordinator);

/// The member with mesh address `ip` in the artifact's inventory.
pub fn member_at(art: &Artifact, ip: IpAddr) -> Option<Identity> {
    let ip = ip.to_canonical();
    art.nodes
        .iter()
        .find(|(_, n)| n.addrs.contains(&ip))
        .map(|(k, _)| Identity::Node(k.clone()))
}

/// What the client at `ip` may do on `share` under `art` (loopback: the coordinator's own host,
/// which the NFS source check admits only when configured to, may do everything).
pub fn nfs_grant(art: &Artifact, ip: IpAddr, share: &str) -> ShareGrant {
    if ip.to_canonical().is_loopback() {
        return ShareGrant::all();
    }
    let Some(who) = member_at(art, ip) else {
        let no = Err(format!("{ip} is not a mesh member"));
        return ShareGrant {
            mount: no.clone(),
            read: no.clone(),
            write: no,
        };
    };
    let one = |op| {
        let d = tm_policy::decide(art, &who, &Request::Nfs { share, op });
        if d.allow {
            Ok(())
        } else {
            Err(d.message())
        }
    };
    ShareGrant {
        mount: one(NfsOp::Mount),
        read: one(NfsOp::Read),
        write: one(NfsOp::Write),
    }
}

impl Gate for MeshGate {
    fn generation(&self) -> u64 {
        self.0.policy_generation()
    }

    fn grant(&self, client: IpAddr, share: &str) -> ShareGrant {
        nfs_grant(&self.0.policy(), client, share)
    }
}

fn info(c: &Coordinator, with_text: bool) -> PolicyInfo {
    let art = c.policy();
    let file = c.policy_file();
    PolicyInfo {
        file: file.as_ref().map(|f| f.file.clone()),
        hash: art.hash().to_string(),
        status: c.policy_status(),
        text: file.as_ref().filter(|_| with_text).map(|f| f.text.clone()),
        set_by: file.as_ref().map(|f| f.set_by.clone()),
        set_unix: file.as_ref().map(|f| f.set_unix),
        tests: 0,
        warnings: Vec::new(),
    }
}

/// The identity `policy explain --src` names: a node name (or `node:NAME`), `tag:x` (a node
/// carrying only that tag, added to a copy of the artifact), `token:ID`, `root`,
/// `coordinator` or `anonymous`.
pub fn explain_subject(art: &Artifact, src: &str) -> Result<(Artifact, Identity), String> {
    let mut art = art.clone();
    if let Some(name) = src.strip_prefix("node:") {
        // Explicitly a node (`root` and `coordinator` are reserved at join, but a policy's
        // inventory may still have a node of that name).
        let who = art
            .node_identity(name)
            .ok_or_else(|| format!("no node named {name:?} (see `tunnelmesh node list`)"))?;
        return Ok((art, who));
    }
    let who = match src {
        "root" => Identity::LocalRoot,
        "coordinator" => Identity::Coordinator,
        "anonymous" => Identity::Anonymous,
        _ if src.starts_with("tag:") => {
            let key = NodeKey(format!("explain:{src}"));
            art.nodes.insert(
                key.clone(),
                NodeInfo {
                    name: "explain-tag".into(),
                    tags: [src.to_owned()].into_iter().collect(),
                    addrs: Default::default(),
                },
            );
            Identity::Node(key)
        }
        _ => match src.strip_prefix("token:") {
            Some(id) => Identity::Token(TokenId(id.to_owned())),
            None => art
                .node_identity(src)
                .ok_or_else(|| format!("no node named {src:?} (see `tunnelmesh node list`)"))?,
        },
    };
    Ok((art, who))
}

/// `policy explain` on an artifact.
pub fn explain(art: &Artifact, src: &str, words: &[String]) -> Result<PolicyExplanation, String> {
    let (art2, who) = explain_subject(art, src)?;
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    let req = OwnedRequest::parse(&w)?;
    let ex = tm_policy::explain(&art2, &who, &req.as_request());
    Ok(PolicyExplanation {
        decision: if ex.decision.allow { "allow" } else { "deny" }.into(),
        rule: ex.decision.rule.as_ref().map(ToString::to_string),
        reason: ex.decision.reason.clone(),
        matched: ex
            .matched
            .iter()
            .map(|(e, at)| format!("{} {at}", if e.is_allow() { "allow" } else { "deny" }))
            .collect(),
        request: req.as_request().to_string(),
        principal: src.to_owned(),
        hash: art.hash().to_string(),
    })
}

/// What a command forwarded by a member needs from the policy (`None`: not forwardable, e.g.
/// `s3 credentials`, which is each node's own). Admin commands need the admin capability;
/// bucket commands the S3 level on that bucket (create, delete and quotas: `admin`; usage:
/// `list`); share commands the admin capability (they export buckets over NFS).
pub fn forwarded_needs(cmd: &Command) -> Option<OwnedRequest> {
    let s3 = |bucket: &str, op| OwnedRequest::S3 {
        bucket: bucket.to_owned(),
        key: String::new(),
        op,
    };
    Some(match cmd {
        c if c.is_admin() => OwnedRequest::Admin,
        Command::BucketCreate { name }
        | Command::BucketDelete { name }
        | Command::BucketQuotaSet { name, .. } => s3(name, tm_policy::S3Op::Admin),
        Command::BucketUsage { name } => s3(name, tm_policy::S3Op::List),
        Command::BucketList | Command::ShareList => OwnedRequest::Admin,
        Command::ShareCreate { .. } | Command::ShareDelete { .. } | Command::ShareSquash { .. } => {
            OwnedRequest::Admin
        }
        _ => return None,
    })
}

/// The coordinator's decision on a command a member forwarded (`POST /v1/admin`), as the
/// identity its client certificate authenticated: `Err` with the refusal to send back.
pub fn forwarded_decision(art: &Artifact, who: &Identity, cmd: &Command) -> Result<(), String> {
    let req = forwarded_needs(cmd).ok_or("this command is not run for other nodes")?;
    let d = tm_policy::decide(art, who, &req.as_request());
    if d.allow {
        Ok(())
    } else {
        Err(d.message())
    }
}

/// An admin command on a member: forwarded to the coordinator over mTLS, which runs it as this
/// node if the policy gives the node the admin capability.
pub async fn forward_admin(client: &tm_coord::JoinClient, cmd: &Command) -> Response {
    let body = match serde_json::to_vec(cmd) {
        Ok(b) => b,
        Err(e) => return Response::err(format!("internal: {e}")),
    };
    match client.admin(&body).await {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
            Response::err(format!("the coordinator's answer is not valid JSON: {e}"))
        }),
        Err(tm_coord::Error::Refused { message, .. }) => Response::err(message),
        Err(e) => Response::err(format!("forwarding to the coordinator: {e}")),
    }
}

/// Runs a `policy` admin command on the coordinator (blocking: `set` commits durably).
pub fn handle(c: &Coordinator, who: &str, cmd: &Command) -> Option<Response> {
    let now = tm_coord::now_unix();
    Some(match cmd {
        Command::PolicyGet => Response::ok(&info(c, true)),
        Command::PolicyCheck { file, text } => {
            let file = tm_coord::policy::base_name(file);
            match c.check_policy(&file, text) {
                Ok(o) => Response::ok(&PolicyInfo {
                    file: Some(file),
                    hash: o.hash,
                    status: format!("{} tests passed; nothing changed", o.tests),
                    tests: o.tests,
                    warnings: o.warnings,
                    ..Default::default()
                }),
                Err(e) => Response::err(e.to_string()),
            }
        }
        Command::PolicySet { file, text } => {
            let file = tm_coord::policy::base_name(file);
            match c.set_policy(&file, text, who, now) {
                Ok(o) => {
                    let mut i = info(c, false);
                    i.tests = o.tests;
                    i.warnings = o.warnings;
                    Response::ok(&i)
                }
                Err(e) => Response::err(e.to_string()),
            }
        }
        Command::PolicyExplain { src, request } => match explain(&c.policy(), src, request) {
            Ok(e) => Response::ok(&e),
            Err(e) => Response::err(e),
        },
        _ => return None,
    })
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
