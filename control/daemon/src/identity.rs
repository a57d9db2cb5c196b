//! Identity on a coordinator node: the S3 server's [`tm_s3::Authority`] over the coordinator's
//! live state (tokens, nodes, the seed login), and the admin commands of the control socket
//! (`token`, `node`, `audit`), whose caller is local root.
//!
//! What it never does: hand out a secret other than a token created or rotated by this very
//! command (printed once), or decide anything from a node's name.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tm_api::{AuditInfo, Command, NewToken, NodeInfo, Response, TokenInfo};
use tm_coord::{Coordinator, NodeSummary, TokenRecord, TokenSpec, TokenStatus};
use tm_noise::PublicKey;
use tm_s3::{Authority, NodeKey, Principal, SeedLogin, TokenRefusal};

use crate::storage::Storage;

/// The principal of control-socket commands (the socket is root's, mode 0600).
pub const LOCAL_ROOT: Principal = Principal::LocalRoot;

/// The S3 server's view of the mesh's identities, answered from the coordinator's state.
#[derive(Debug, Clone)]
pub struct MeshAuthority(pub Coordinator);

fn node_principal(n: &NodeSummary) -> Principal {
    Principal::Node {
        key: NodeKey(n.public_key.0),
        name: n.name.clone(),
        tags: n.tags.clone(),
    }
}

impl Authority for MeshAuthority {
    fn token(&self, token: &str) -> Result<Principal, TokenRefusal> {
        match self.0.token_status(token, tm_coord::now_unix()) {
            None => Err(TokenRefusal::Unknown),
            Some((t, TokenStatus::Valid)) => Ok(Principal::Token {
                id: t.id,
                tags: t.tags,
            }),
            Some((t, TokenStatus::Revoked)) => Err(TokenRefusal::Revoked(t.id)),
            // A used single-use token is spent, like an expired one.
            Some((t, TokenStatus::Expired | TokenStatus::Used(_))) => {
                Err(TokenRefusal::Expired(t.id))
            }
        }
    }

    fn seed_login(&self, name: &str) -> Option<SeedLogin> {
        let n = self.0.node_by_name(name)?;
        Some(SeedLogin {
            principal: node_principal(&n),
            mesh_ip: IpAddr::V4(n.mesh_ip),
            secret: Some(self.0.token()),
        })
    }

    fn node(&self, key: &NodeKey) -> Option<Principal> {
        self.0
            .node_by_key(&PublicKey(key.0))
            .map(|n| node_principal(&n))
    }

    fn policy(&self) -> Option<Arc<tm_policy::Artifact>> {
        Some(self.0.policy())
    }

    fn bucket_changed(
        &self,
        bucket: &str,
        now: Option<&tm_s3::BucketSettings>,
        who: &Principal,
    ) -> Result<(), String> {
        // Buckets are replicated control state (`storage_sync.rs`); a deleted one takes its
        // share with it.
        let who = who.to_string();
        let r = match now {
            Some(s) => self.0.put_bucket(
                bucket,
                Some(crate::storage_sync::bucket_spec(s.quota, s.versioning)),
                &who,
            ),
            None => self
                .0
                .put_share(bucket, None, &who)
                .and_then(|()| self.0.put_bucket(bucket, None, &who)),
        };
        r.map_err(|e| e.to_string())
    }
}

/// The authority as the S3 server takes it.
pub fn authority(c: &Coordinator) -> Arc<dyn Authority> {
    Arc::new(MeshAuthority(c.clone()))
}

fn token_info(t: TokenRecord) -> TokenInfo {
    TokenInfo {
        id: t.id,
        tags: t.tags,
        created_unix: t.created_unix,
        expires_unix: t.expires_unix,
        reusable: t.reusable,
        used_by: t.used_by,
        created_by: t.created_by,
        revoked_unix: t.revoked_unix,
        default: t.default,
        coordinator: t.coordinator,
    }
}

fn cluster_info(c: &Coordinator, storage: Option<&Storage>) -> tm_api::ClusterInfo {
    let now = tm_coord::now_unix() * 1000;
    let ago = |ms: Option<u64>| ms.map(|t| now.saturating_sub(t) / 1000);
    let (digest, records) = c.state_digest();
    let figures = storage
        .and_then(|s| s.objrep.get())
        .map(|r| r.figures())
        .unwrap_or_default();
    let objects_of = |name: &str| {
        let key = c.node_by_name(name)?.public_key;
        figures
            .iter()
            .find(|f| f.key == key)
            .map(|f| tm_api::ObjectFigures {
                bytes: f.figures.bytes,
                objects: f.figures.objects,
                capacity: f.figures.capacity,
                under_replicated: f.figures.under_replicated,
                age_secs: f.age.as_secs(),
            })
    };
    let coordinators = c
        .cluster_status()
        .into_iter()
        .map(|p| tm_api::ClusterMember {
            objects: objects_of(&p.name),
            api: p.api,
            name: p.name,
            mesh_ip: p.mesh_ip.to_string(),
            this: p.this,
            heard_secs_ago: ago(p.last_heard_ms),
            synced_secs_ago: ago(p.last_sync_ms),
            error: p.error,
        })
        .collect();
    tm_api::ClusterInfo {
        this: c.name().to_owned(),
        digest,
        records,
        version: c.netmap().version,
        coordinators,
    }
}

fn node_info(n: NodeSummary) -> NodeInfo {
    NodeInfo {
        name: n.name,
        public_key: n.public_key.to_string(),
        mesh_ip: n.mesh_ip.to_string(),
        tags: n.tags,
        is_coordinator: n.is_coordinator,
        endpoints: n.endpoints.iter().map(ToString::to_string).collect(),
    }
}

/// Runs an admin command on the coordinator (blocking: state commits are durable; call from
/// `spawn_blocking`). `storage` is the node's object store: a removed node's S3 key is
/// deleted from it before the answer, so it stops working at once.
pub fn handle(c: &Coordinator, storage: Option<&Storage>, cmd: &Command) -> Response {
    handle_as(c, storage, cmd, &LOCAL_ROOT.to_string())
}

/// What runs admin commands members forward over mTLS (`POST /v1/admin`; the coordinator has
/// checked the caller's admin capability): the command as JSON in, a [`Response`] as JSON out,
/// audited as done by `node NAME`.
pub fn admin_handler(c: &Coordinator, storage: Option<Storage>) -> tm_coord::AdminHandler {
    let c = c.clone();
    Arc::new(move |actor: &str, who: &tm_policy::Identity, body: &[u8]| {
        let resp = match serde_json::from_slice::<Command>(body) {
            Ok(cmd @ Command::DockerAudit { .. }) => crate::docker::record_report(&c, actor, &cmd),
            Ok(cmd) => match crate::policy::forwarded_decision(&c.policy(), who, &cmd) {
                Err(why) => {
                    tracing::info!(actor, "forwarded command refused: {why}");
                    Response::err(why)
                }
                Ok(()) if cmd.is_admin() => handle_as(&c, storage.as_ref(), &cmd, actor),
                Ok(()) => match &storage {
                    Some(st) => st.handle_replicated(&c, &cmd, actor),
                    None => Response::err("the coordinator has no object store"),
                },
            },
            Err(e) => Response::err(format!("undecodable command: {e}")),
        };
        serde_json::to_vec(&resp).unwrap_or_default()
    })
}

/// [`handle`] on behalf of `who` (audited as such).
pub fn handle_as(c: &Coordinator, storage: Option<&Storage>, cmd: &Command, who: &str) -> Response {
    let who = who.to_owned();
    if let Some(r) = crate::policy::handle(c, &who, cmd) {
        return r;
    }
    let now = tm_coord::now_unix();
    let r: Result<Response, tm_coord::Error> = (|| {
        Ok(match cmd {
            Command::TokenCreate {
                tags,
                expires_secs,
                reusable,
                coordinator,
            } => {
                let spec = TokenSpec {
                    tags: tags.clone(),
                    expires_in: expires_secs.map(Duration::from_secs),
                    reusable: *reusable,
                    coordinator: *coordinator,
                };
                let (rec, token) = c.create_token(&spec, &who, now)?;
                Response::ok(&NewToken {
                    token,
                    info: token_info(rec),
                })
            }
            Command::TokenList => {
                Response::ok(&c.tokens().into_iter().map(token_info).collect::<Vec<_>>())
            }
            Command::TokenRevoke { id } => {
                Response::ok(&token_info(c.revoke_token(id, &who, now)?))
            }
            Command::TokenRotate => {
                let (rec, token) = c.rotate_token(&who, now)?;
                Response::ok(&NewToken {
                    token,
                    info: token_info(rec),
                })
            }
            Command::NodeList => {
                Response::ok(&c.nodes().into_iter().map(node_info).collect::<Vec<_>>())
            }
            Command::NodeTag { name, tag } => {
                Response::ok(&node_info(c.tag_node(name, tag, &who)?))
            }
            Command::NodeUntag { name, tag } => {
                Response::ok(&node_info(c.untag_node(name, tag, &who)?))
            }
            Command::NodeRemove { name } => {
                let n = c.remove_node_as(name, &who)?;
                if let Some(st) = storage {
                    if let Err(e) = st.store.delete_credential(&n.s3_access_key) {
                        tracing::warn!(node = %name, "revoking the S3 key of a removed node: {e}");
                    }
                }
                Response::ok(&node_info(n))
            }
            Command::ClusterStatus => Response::ok(&cluster_info(c, storage)),
            Command::Audit => Response::ok(
                &c.audit_log()?
                    .into_iter()
                    .map(|e| AuditInfo {
                        unix: e.unix,
                        who: e.who,
                        action: e.action,
                        target: e.target,
                        detail: e.detail,
                        policy_hash: e.policy_hash,
                    })
                    .collect::<Vec<_>>(),
            ),
            _ => Response::err("not an admin command"),
        })
    })();
    r.unwrap_or_else(|e| Response::err(e.to_string()))
}
