//! The mesh policy on the coordinator: the stored file (in the persisted state, so it is as
//! durable as membership), its compiled [`Artifact`], and `policy set|get|check`.
//!
//! The artifact is recompiled after every state change (join, removal, tag, token, policy
//! set), from the stored file and the current inventory, and published behind one lock that
//! is only held to clone an `Arc`: every enforcer (S3, NFS, the admin API, `policy explain`)
//! asks [`Coordinator::policy`] per request, so a change takes effect at the next request,
//! established sessions included. Without a file the built-in "no policy" artifact applies
//! (members use S3 and NFS; nobody but local root and the coordinator is admin).
//!
//! What it never does: keep the old artifact after a state change it could compile, or accept
//! a file that does not parse, names unknown nodes, or fails its own tests.

use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tm_noise::PublicKey;
use tm_policy::{Artifact, Identity, Inventory, NodeInfo, NodeKey, TokenId, TokenInfo};

use crate::server::PersistedState;
use crate::{Coordinator, Error};

/// Runs a command a member forwarded (`POST /v1/admin`): the actor (`node NAME`), its
/// authenticated identity (from its client certificate) and the command as the daemon encodes
/// it; returns the answer's bytes. The handler authorises each command by the policy (admin
/// commands need the admin capability, bucket commands the S3 level they need). Set by the
/// daemon ([`Coordinator::set_admin_handler`]); blocking (commits are durable).
pub type AdminHandler = Arc<dyn Fn(&str, &Identity, &[u8]) -> Vec<u8> + Send + Sync>;

/// Largest policy file accepted (the HuJSON parser refuses more, too).
pub const MAX_POLICY_BYTES: usize = 1 << 20;

/// The policy file as set (kept verbatim, with its base name for `file:line` references).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredPolicy {
    /// Base name of the file it was set from (`policy.hujson`).
    pub file: String,
    /// The file's text.
    pub text: String,
    /// Who set it.
    pub set_by: String,
    /// When (Unix seconds).
    pub set_unix: u64,
}

/// What `policy set` / `policy check` report for a file that passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyOutcome {
    /// The hash of the compiled artifact (the one in the netmap and the audit log).
    pub hash: String,
    /// Legal but suspicious things (undeclared tags in use, ...).
    pub warnings: Vec<String>,
    /// Number of the file's tests that ran (all passed).
    pub tests: usize,
}

/// The policy identity of a node: its public key's text form (the same everywhere: S3, NFS,
/// the admin API and the packet filter).
pub fn node_key(pk: &PublicKey) -> NodeKey {
    NodeKey(pk.to_string())
}

/// The inventory of a state: every node (name, tags, mesh address), every unrevoked token
/// (expiry and single use are checked when the token is presented), and the service ports:
/// the coordinator node's (`services`, from [`crate::CoordinatorConfig::service_ports`]) and
/// every node's Docker agent port.
pub(crate) fn inventory(s: &PersistedState, services: &[tm_policy::ServicePort]) -> Inventory {
    let mut inv = Inventory::default();
    for n in s.nodes.values() {
        // Every node may run a Docker agent: its port is open to Docker grants on it (a node
        // without an agent refuses the connection).
        let mut svc = if n.is_coordinator {
            services.to_vec()
        } else {
            Vec::new()
        };
        svc.push(tm_policy::ServicePort {
            name: "docker".into(),
            proto: 6,
            port: tm_policy::DOCKER_AGENT_PORT,
            needs: tm_policy::ServiceNeed::Docker,
        });
        inv.services.insert(node_key(&n.public_key), svc);
        inv.nodes.insert(
            node_key(&n.public_key),
            NodeInfo {
                name: n.name.clone(),
                tags: n.tags.iter().cloned().collect(),
                addrs: [IpAddr::V4(n.mesh_ip)].into_iter().collect(),
            },
        );
    }
    for t in s.tokens.values().filter(|t| t.revoked_unix.is_none()) {
        inv.tokens.insert(
            TokenId(t.id.clone()),
            TokenInfo {
                tags: t.tags.iter().cloned().collect(),
            },
        );
    }
    inv
}

/// Compiles the state's policy (or the built-in one) against its inventory. A stored file
/// whose tests now fail is still used (it passed when it was set; the inventory moved), with a
/// loud warning; one that no longer compiles at all (it cannot happen through `policy set`)
/// is an error, and the caller keeps the previous artifact.
pub(crate) fn compile_state(
    s: &PersistedState,
    services: &[tm_policy::ServicePort],
) -> Result<Artifact, String> {
    let inv = inventory(s, services);
    let Some(p) = &s.policy else {
        return Artifact::no_policy(&inv).map_err(|e| e.to_string());
    };
    let policy = tm_policy::parse_policy(&p.file, p.text.as_bytes()).map_err(|e| e.to_string())?;
    let art = tm_policy::compile(&policy, &inv).map_err(|e| e.to_string())?;
    match tm_policy::check(&policy, &inv) {
        Ok(f) if f.is_empty() => {}
        Ok(failures) => {
            for f in failures {
                tracing::warn!(
                    "POLICY TEST FAILS with the current mesh (policy still in force): {f}"
                );
            }
        }
        Err(e) => tracing::warn!("policy tests could not run: {e}"),
    }
    Ok(art)
}

/// Checks a file as `policy set` would, against `inv`; nothing changes.
fn load(file: &str, text: &str, inv: &Inventory) -> Result<(tm_policy::Loaded, usize), Error> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(Error::PolicyRefused(format!(
            "{file}: {} bytes; a policy file is at most {MAX_POLICY_BYTES} bytes",
            text.len()
        )));
    }
    let loaded = tm_policy::load(file, text.as_bytes(), inv)
        .map_err(|r| Error::PolicyRefused(r.to_string()))?;
    let tests = loaded.policy.tests.len();
    Ok((loaded, tests))
}

/// The base name of a path as given on the command line (`./x/policy.hujson` -> `policy.hujson`).
pub fn base_name(path: &str) -> String {
    let b = path.rsplit('/').next().unwrap_or(path);
    if b.is_empty() {
        "policy.hujson".into()
    } else {
        b.to_owned()
    }
}

impl Coordinator {
    /// The compiled policy every enforcer decides from (cheap: an `Arc` clone).
    pub fn policy(&self) -> Arc<Artifact> {
        self.shared
            .policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Recompiles and publishes the artifact of `s` (after every committed change).
    pub(crate) fn publish_policy(&self, s: &PersistedState) {
        match compile_state(s, &self.shared.cfg.service_ports) {
            Ok(a) => {
                *self
                    .shared
                    .policy
                    .write()
                    .unwrap_or_else(|p| p.into_inner()) = Arc::new(a);
                self.shared
                    .policy_generation
                    .fetch_add(1, std::sync::atomic::Ordering::Release);
            }
            Err(e) => tracing::error!("policy no longer compiles, keeping the previous one: {e}"),
        }
    }

    /// Changes whenever [`Coordinator::policy`] may answer differently.
    pub fn policy_generation(&self) -> u64 {
        self.shared
            .policy_generation
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// The stored policy file, if one was set.
    pub fn policy_file(&self) -> Option<StoredPolicy> {
        self.lock().state.policy.clone()
    }

    /// One line for `tmctl status`: `no policy: all members allowed` or the file and hash.
    pub fn policy_status(&self) -> String {
        let art = self.policy();
        match self.policy_file() {
            None => "no policy: all members allowed".into(),
            Some(p) => format!("{} ({}, set by {})", p.file, art.hash(), p.set_by),
        }
    }

    /// `policy check`: validates the file and runs its tests against the current mesh.
    /// Nothing changes.
    pub fn check_policy(&self, file: &str, text: &str) -> Result<PolicyOutcome, Error> {
        let inv = inventory(&self.lock().state, &self.shared.cfg.service_ports);
        let (l, tests) = load(file, text, &inv)?;
        Ok(PolicyOutcome {
            hash: l.hash.to_string(),
            warnings: l.warnings,
            tests,
        })
    }

    /// `policy set`: validates, runs the file's tests, and only if everything passes stores it
    /// (durably, before answering) and publishes the new artifact; audited with its hash.
    pub fn set_policy(
        &self,
        file: &str,
        text: &str,
        actor: &str,
        now: u64,
    ) -> Result<PolicyOutcome, Error> {
        let stored = StoredPolicy {
            file: file.to_owned(),
            text: text.to_owned(),
            set_by: actor.to_owned(),
            set_unix: now,
        };
        let out = self.commit(|s| {
            // Checked inside the change, against the inventory it will be stored with.
            let (l, tests) = load(file, text, &inventory(s, &self.shared.cfg.service_ports))?;
            s.policy = Some(stored.clone());
            Ok((
                PolicyOutcome {
                    hash: l.hash.to_string(),
                    warnings: l.warnings,
                    tests,
                },
                true,
            ))
        })?;
        self.audit(actor, "policy.set", file, format!("tests={}", out.tests))?;
        Ok(out)
    }

    /// The identity of the member with mesh address `ip` (NFS clients, whose source address
    /// cryptokey routing authenticates), or `None`.
    pub fn identity_of_ip(&self, ip: IpAddr) -> Option<Identity> {
        let IpAddr::V4(v4) = ip else { return None };
        let g = self.lock();
        g.state
            .nodes
            .values()
            .find(|n| n.mesh_ip == v4)
            .map(|n| Identity::Node(node_key(&n.public_key)))
    }

    /// The identity of the member with this key.
    pub fn identity_of_key(&self, key: &PublicKey) -> Option<Identity> {
        self.is_member(key).then(|| Identity::Node(node_key(key)))
    }

    /// Installs what runs forwarded admin commands (the coordinator node's daemon).
    pub fn set_admin_handler(&self, h: AdminHandler) {
        *self.shared.admin.write().unwrap_or_else(|p| p.into_inner()) = Some(h);
    }

    /// `POST /v1/admin` from the member `name` (its client certificate): the daemon's handler
    /// decides each command by the policy, like every other surface.
    pub(crate) async fn handle_admin(&self, name: &str, body: Vec<u8>) -> Result<Vec<u8>, Error> {
        let key = self
            .node_by_name(name)
            .ok_or(Error::UnknownClient)?
            .public_key;
        let who = Identity::Node(node_key(&key));
        let h = self
            .shared
            .admin
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| Error::NotFound("/v1/admin (no admin handler)".into()))?;
        let actor = format!("node {name}");
        tokio::task::spawn_blocking(move || h(&actor, &who, &body))
            .await
            .map_err(|_| Error::Internal)
    }

    /// Refuses a tag the stored policy does not declare (with a policy set, tags are owned).
    pub(crate) fn check_tag_declared(&self, tag: &str) -> Result<(), Error> {
        let art = self.policy();
        if art.has_policy && !art.tag_owners.contains_key(tag) {
            return Err(Error::AdminRefused(format!(
                "{tag} is not declared in the policy's tagOwners; add it there first"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_names() {
        assert_eq!(base_name("policy.hujson"), "policy.hujson");
        assert_eq!(base_name("/etc/tm/p.hujson"), "p.hujson");
        assert_eq!(base_name("dir/"), "policy.hujson");
    }
}
