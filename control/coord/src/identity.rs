//! Identity administration on the coordinator: join tokens (create, list, revoke, rotate),
//! node tags, node removal, the identity lookups the S3 server asks on every request, and the
//! audit log of every such change.
//!
//! Every change is a [`Coordinator::commit`] of the persisted state (durable before it is
//! answered) followed by one audit entry appended to the [`StateStore`]. `actor` is the
//! principal that asked (today always `local root`: the admin commands come from the
//! coordinator's control socket).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tm_noise::PublicKey;
use zeroize::Zeroizing;

use crate::server::{NodeRecord, PersistedState};
use crate::store::write_atomic;
use crate::token::{self, TokenRecord, TokenStatus, MAX_TAGS};
use crate::{Coordinator, Error, JoinToken};

/// File (in `data_dir/coordinator`) with the default token's secret, base64.
const SECRET_FILE: &str = "join_secret";
/// The next default secret while `token rotate` commits.
const NEXT_SECRET_FILE: &str = "join_secret.next";

/// What `token create` asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenSpec {
    /// Tags every node joining with it gets.
    pub tags: Vec<String>,
    /// Lifetime from now; `None`: no expiry.
    pub expires_in: Option<Duration>,
    /// Usable for any number of joins (default: one node).
    pub reusable: bool,
    /// Admits a coordinator instead of a member.
    pub coordinator: bool,
}

/// A node as admins see it (no secrets).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSummary {
    /// Name.
    pub name: String,
    /// Static public key.
    #[serde(with = "crate::wire::b64_key")]
    pub public_key: PublicKey,
    /// Mesh address.
    pub mesh_ip: Ipv4Addr,
    /// Tags.
    pub tags: Vec<String>,
    /// Whether it is the coordinator.
    pub is_coordinator: bool,
    /// Published endpoints.
    pub endpoints: Vec<SocketAddr>,
    /// Its S3 access key (not secret; the secret is never returned).
    pub s3_access_key: String,
}

/// One node's S3 credential, for installing in the object store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeCredential {
    /// Name.
    pub name: String,
    /// Static public key (the identity the credential acts as).
    pub public_key: PublicKey,
    /// Access key.
    pub access_key: String,
    /// Secret.
    pub secret: String,
}

/// One audit-log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When (Unix seconds).
    pub unix: u64,
    /// Who (the principal that asked).
    pub who: String,
    /// What: `token.create`, `token.revoke`, `token.rotate`, `node.tag`, `node.untag`,
    /// `node.remove`.
    pub action: String,
    /// The token id or node name acted on.
    pub target: String,
    /// Details (tags, expiry, ...).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// The hash of the policy artifact in force after the change.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub policy_hash: String,
}

/// The current time in Unix seconds.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn parse_secret(text: &str, what: &str) -> Result<Zeroizing<[u8; 32]>, Error> {
    let v = Zeroizing::new(
        STANDARD
            .decode(text.trim())
            .map_err(|_| Error::Config(format!("{what} is not base64")))?,
    );
    let a: [u8; 32] = v
        .as_slice()
        .try_into()
        .map_err(|_| Error::Config(format!("{what} must be 32 bytes")))?;
    Ok(Zeroizing::new(a))
}

fn read_secret(path: &Path) -> Result<Option<Zeroizing<[u8; 32]>>, Error> {
    match std::fs::read_to_string(path) {
        Ok(t) => parse_secret(&t, &path.display().to_string()).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
    }
}

fn default_record(secret: &[u8; 32], created_by: &str, now: u64) -> TokenRecord {
    TokenRecord {
        id: token::new_token_id(&mut OsRng),
        secret_sha256: token::secret_sha256(secret),
        tags: Vec::new(),
        created_unix: now,
        expires_unix: None,
        reusable: true,
        used_by: None,
        created_by: created_by.to_owned(),
        revoked_unix: None,
        default: true,
        coordinator: false,
    }
}

/// Loads (or creates) the default token's secret from `dir/join_secret` and makes the state's
/// tokens agree with it. A state without tokens (a fresh mesh, or one from before tokens) gets
/// the file's secret as its default token: existing meshes keep their join token. A rotation
/// interrupted after its state commit is finished here (`join_secret.next`).
/// The record of the default join secret (base64), written by `token rotate`.
pub(crate) const DEFAULT_SECRET_RECORD: &str = "secret/default";

/// The default join secret the records carry, if it is the secret of the default token in
/// force in `state` (a secret whose token record has not arrived yet is not adopted).
pub(crate) fn replicated_default_secret(
    store: &tm_cluster::Store,
    state: &PersistedState,
) -> Option<Zeroizing<[u8; 32]>> {
    let text = store.value(DEFAULT_SECRET_RECORD)?.as_str()?;
    let s = parse_secret(text, DEFAULT_SECRET_RECORD).ok()?;
    let h = token::secret_sha256(&s);
    state
        .tokens
        .values()
        .any(|t| t.default && t.revoked_unix.is_none() && t.secret_sha256 == h)
        .then_some(s)
}

impl Coordinator {
    /// After a merge: if another coordinator rotated the default token, take its secret
    /// (written to `join_secret` first, so a restart finds the same).
    pub(crate) fn adopt_default_secret(&self, rep: &tm_cluster::Replica) {
        let Some(s) = replicated_default_secret(rep.store(), &self.lock().state) else {
            return;
        };
        if *s == *self.lock().default_secret {
            return;
        }
        let path = self.shared.dir.join(SECRET_FILE);
        match write_atomic(&path, STANDARD.encode(&s[..]).as_bytes(), 0o600) {
            Ok(()) => {
                tracing::info!("the default join token was rotated on another coordinator");
                self.lock().default_secret = s;
            }
            Err(e) => tracing::error!("keeping the rotated default join secret: {e}"),
        }
    }
}

pub(crate) fn open_default_secret(
    dir: &Path,
    state: &mut PersistedState,
    fresh: bool,
) -> Result<Zeroizing<[u8; 32]>, Error> {
    let path = dir.join(SECRET_FILE);
    let next = dir.join(NEXT_SECRET_FILE);
    // A damaged `.next` was never committed (the state names a secret only once it is whole).
    if let Some(n) = read_secret(&next).unwrap_or(None) {
        let committed = state
            .tokens
            .values()
            .any(|t| t.default && t.secret_sha256 == token::secret_sha256(&n));
        if committed {
            std::fs::rename(&next, &path)
                .map_err(|e| Error::io(format!("rename {}", next.display()), e))?;
        } else {
            let _ = std::fs::remove_file(&next);
        }
    } else {
        let _ = std::fs::remove_file(&next);
    }
    let secret = match read_secret(&path)? {
        Some(s) => s,
        None if state.tokens.is_empty() => {
            let mut s = Zeroizing::new([0u8; 32]);
            OsRng.fill_bytes(&mut s[..]);
            write_atomic(&path, STANDARD.encode(&s[..]).as_bytes(), 0o600)?;
            s
        }
        None => {
            return Err(Error::State(format!(
                "{} is missing but the state has tokens; restore it from a backup",
                path.display()
            )))
        }
    };
    if state.tokens.is_empty() {
        let by = if fresh { "coordinator" } else { "upgrade" };
        let rec = default_record(&secret, by, now_unix());
        state.tokens.insert(rec.id.clone(), rec);
        return Ok(secret);
    }
    let h = token::secret_sha256(&secret);
    let ok = state
        .tokens
        .values()
        .any(|t| t.default && t.revoked_unix.is_none() && t.secret_sha256 == h);
    if !ok {
        return Err(Error::State(format!(
            "{} does not match the default token in the coordinator state; restore the file \
             from a backup",
            path.display()
        )));
    }
    Ok(secret)
}

/// Finds the token a registration presents and checks it may be used by node `name`.
/// Returns its id.
pub(crate) fn check_join_token(
    state: &PersistedState,
    secret: &[u8; 32],
    name: &str,
) -> Result<String, Error> {
    let t = token::find_by_secret(state.tokens.values(), secret).ok_or(Error::WrongToken)?;
    t.check(now_unix(), Some(name))?;
    Ok(t.id.clone())
}

/// Whether the token gives tags (a registration with it changes the netmap).
pub(crate) fn token_has_tags(state: &PersistedState, id: &str) -> bool {
    state.tokens.get(id).is_some_and(|t| !t.tags.is_empty())
}

/// Marks a single-use token used by `rec` and gives `rec` the token's tags.
pub(crate) fn consume_join_token(
    state: &mut PersistedState,
    id: &str,
    mut rec: NodeRecord,
) -> NodeRecord {
    if let Some(t) = state.tokens.get_mut(id) {
        if !t.reusable {
            t.used_by = Some(rec.name.clone());
        }
        for tag in &t.tags {
            if !rec.tags.contains(tag) {
                rec.tags.push(tag.clone());
            }
        }
        rec.tags.sort();
    }
    rec
}

fn summary(n: &NodeRecord) -> NodeSummary {
    NodeSummary {
        name: n.name.clone(),
        public_key: n.public_key,
        mesh_ip: n.mesh_ip,
        tags: n.tags.clone(),
        is_coordinator: n.is_coordinator,
        endpoints: n.endpoints.clone(),
        s3_access_key: n.s3_access_key.clone(),
    }
}

fn fmt_tags(tags: &[String]) -> String {
    if tags.is_empty() {
        "-".into()
    } else {
        tags.join(",")
    }
}

impl Coordinator {
    /// An audit entry made now (with the hash of the policy in force).
    pub(crate) fn audit_entry(
        &self,
        who: &str,
        action: &str,
        target: &str,
        detail: String,
    ) -> AuditEntry {
        AuditEntry {
            unix: now_unix(),
            who: who.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            detail,
            policy_hash: self.policy().hash().to_string(),
        }
    }

    /// Appends an entry to the audit log (with the hash of the policy in force): a record
    /// written once, durable here before this returns and replicated to every coordinator.
    pub fn audit(
        &self,
        who: &str,
        action: &str,
        target: &str,
        detail: String,
    ) -> Result<(), Error> {
        let e = self.audit_entry(who, action, target, detail);
        let origin = crate::replicate::origin_of(&self.public_key()).0;
        let key = format!(
            "{}{origin:016x}/{:013}-{:08x}",
            crate::replicate::AUDIT_PREFIX,
            crate::replicate::now_ms(),
            rand_core::RngCore::next_u32(&mut rand_core::OsRng)
        );
        let value = serde_json::to_value(&e).expect("audit entries serialize");
        self.write_records(vec![(key, Some(value))]).map_err(|err| {
            tracing::error!(action, target, "audit log write failed: {err}");
            Error::State(format!(
                "{action} {target} was done, but the audit log could not be written: {err}"
            ))
        })
    }

    /// Every audit entry of the mesh (written on any coordinator), oldest first (entries
    /// written before replication are read as they were kept).
    pub fn audit_log(&self) -> Result<Vec<AuditEntry>, Error> {
        // Ordered by time, then by stamp (the order each coordinator wrote them in); entries
        // from before replication have no stamp and keep their order among themselves.
        let mut out: Vec<(u64, tm_cluster::Stamp, usize, AuditEntry)> = Vec::new();
        for (i, raw) in self.shared.store.load_audit()?.into_iter().enumerate() {
            // Records are in the replica (read below); plain entries are from before.
            if serde_json::from_slice::<tm_cluster::Record>(&raw).is_ok() {
                continue;
            }
            let e: AuditEntry = serde_json::from_slice(&raw)
                .map_err(|e| Error::State(format!("audit entry: {e}")))?;
            out.push((e.unix, tm_cluster::Stamp::ZERO, i, e));
        }
        let rep = self.replica();
        for r in rep.store().live_with_prefix(crate::replicate::AUDIT_PREFIX) {
            match serde_json::from_value::<AuditEntry>(r.value.clone().expect("live")) {
                Ok(e) => out.push((e.unix, r.stamp, 0, e)),
                Err(err) => {
                    tracing::warn!(key = %r.key, "skipping a malformed audit record: {err}")
                }
            }
        }
        drop(rep);
        out.sort_by_key(|a| (a.0, a.1, a.2));
        Ok(out.into_iter().map(|x| x.3).collect())
    }

    /// Every token (no secrets), by id.
    pub fn tokens(&self) -> Vec<TokenRecord> {
        self.lock().state.tokens.values().cloned().collect()
    }

    /// Creates a token. Returns its record and its text (`tm1_...`), which exists only here:
    /// the state keeps its hash.
    pub fn create_token(
        &self,
        spec: &TokenSpec,
        actor: &str,
        now: u64,
    ) -> Result<(TokenRecord, String), Error> {
        if spec.tags.len() > MAX_TAGS {
            return Err(Error::Malformed(format!("at most {MAX_TAGS} tags")));
        }
        for t in &spec.tags {
            token::validate_tag(t)?;
            self.check_tag_declared(t)?;
        }
        let expires_unix = match spec.expires_in {
            Some(d) if d.is_zero() => {
                return Err(Error::Malformed("--expires must be longer than 0".into()))
            }
            Some(d) => Some(now.saturating_add(d.as_secs().max(1))),
            None => None,
        };
        let mut secret = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(&mut secret[..]);
        let mut tags = spec.tags.clone();
        tags.sort();
        tags.dedup();
        let rec = TokenRecord {
            id: token::new_token_id(&mut OsRng),
            secret_sha256: token::secret_sha256(&secret),
            tags,
            created_unix: now,
            expires_unix,
            reusable: spec.reusable,
            used_by: None,
            created_by: actor.to_owned(),
            revoked_unix: None,
            default: false,
            coordinator: spec.coordinator,
        };
        self.commit(|s| {
            s.tokens.insert(rec.id.clone(), rec.clone());
            Ok(((), false))
        })?;
        let text = JoinToken::new(self.shared.ca.ca_der().as_ref(), *secret).format();
        let detail = format!(
            "tags={} expires={} reusable={}",
            fmt_tags(&rec.tags),
            rec.expires_unix
                .map_or_else(|| "never".into(), |e| e.to_string()),
            rec.reusable
        );
        self.audit(actor, "token.create", &rec.id, detail)?;
        Ok((rec, text))
    }

    /// Revokes a token: joins and S3 requests with it are refused from now on. The default
    /// token is replaced with [`Coordinator::rotate_token`] instead.
    pub fn revoke_token(&self, id: &str, actor: &str, now: u64) -> Result<TokenRecord, Error> {
        let rec = self.commit(|s| {
            let t = s
                .tokens
                .get_mut(id)
                .ok_or_else(|| Error::NoSuchToken(id.to_owned()))?;
            if t.default {
                return Err(Error::AdminRefused(format!(
                    "{id} is the default join token: replace it with `tunnelmesh token rotate`"
                )));
            }
            if t.revoked_unix.is_some() {
                return Err(Error::AdminRefused(format!(
                    "token {id} is already revoked"
                )));
            }
            t.revoked_unix = Some(now);
            Ok((t.clone(), false))
        })?;
        self.audit(actor, "token.revoke", id, String::new())?;
        Ok(rec)
    }

    /// Makes a new default token and revokes the old one (for joins and for S3 at once).
    /// Returns the new record and its text.
    pub fn rotate_token(&self, actor: &str, now: u64) -> Result<(TokenRecord, String), Error> {
        let mut secret = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(&mut secret[..]);
        let rec = default_record(&secret, actor, now);
        let dir = &self.shared.dir;
        let next = dir.join(NEXT_SECRET_FILE);
        let old = {
            // The new secret is on disk before the state names it: a crash in between is
            // finished (or discarded) by the next open.
            write_atomic(&next, STANDARD.encode(&secret[..]).as_bytes(), 0o600)?;
            // The secret itself is a record too, so that every coordinator serves the new
            // default token (coordinators share everything a join needs, the CA key included).
            let extra = vec![(
                DEFAULT_SECRET_RECORD.to_owned(),
                Some(serde_json::Value::String(STANDARD.encode(&secret[..]))),
            )];
            let old = self.commit_with(
                |s| {
                    let mut old = Vec::new();
                    for t in s.tokens.values_mut().filter(|t| t.default) {
                        t.default = false;
                        if t.revoked_unix.is_none() {
                            t.revoked_unix = Some(now);
                            old.push(t.id.clone());
                        }
                    }
                    s.tokens.insert(rec.id.clone(), rec.clone());
                    Ok((old, false))
                },
                extra,
            );
            let old = match old {
                Ok(o) => o,
                Err(e) => {
                    let _ = std::fs::remove_file(&next);
                    return Err(e);
                }
            };
            let path = dir.join(SECRET_FILE);
            std::fs::rename(&next, &path)
                .map_err(|e| Error::io(format!("rename {}", next.display()), e))?;
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| Error::io(format!("fsync {}", dir.display()), e))?;
            self.lock().default_secret = secret.clone();
            old
        };
        let text = JoinToken::new(self.shared.ca.ca_der().as_ref(), *secret).format();
        let detail = format!("new default {}; revoked {}", rec.id, old.join(","));
        self.audit(actor, "token.rotate", &rec.id, detail)?;
        Ok((rec, text))
    }

    /// Checks a token presented to another service (S3 Bearer or Basic password): it must
    /// pin this mesh's CA, be known, and be neither revoked, expired nor a used single-use
    /// token. Nothing is consumed.
    pub fn check_token(&self, text: &str, now: u64) -> Result<TokenRecord, Error> {
        let (rec, _) = self.token_status(text, now).ok_or(Error::WrongToken)?;
        rec.check(now, None)?;
        Ok(rec)
    }

    /// The record and status of a token text of this mesh; `None` if it is not one.
    pub fn token_status(&self, text: &str, now: u64) -> Option<(TokenRecord, TokenStatus)> {
        let t = JoinToken::parse(text).ok()?;
        let ca: [u8; 32] = Sha256::digest(self.shared.ca.ca_der().as_ref()).into();
        if ca != t.ca_sha256 {
            return None;
        }
        let g = self.lock();
        let rec = token::find_by_secret(g.state.tokens.values(), &t.secret)?;
        Some((rec.clone(), rec.status(now, None)))
    }

    /// Every node (no secrets), by name.
    pub fn nodes(&self) -> Vec<NodeSummary> {
        self.lock().state.nodes.values().map(summary).collect()
    }

    /// The node with this key.
    pub fn node_by_key(&self, key: &PublicKey) -> Option<NodeSummary> {
        self.lock().state.by_key(key).map(summary)
    }

    /// The node with this name.
    pub fn node_by_name(&self, name: &str) -> Option<NodeSummary> {
        self.lock().state.nodes.get(name).map(summary)
    }

    /// Every node's S3 credential (the coordinator node installs them in its object store).
    pub fn node_credentials(&self) -> Vec<NodeCredential> {
        self.lock()
            .state
            .nodes
            .values()
            .map(|n| NodeCredential {
                name: n.name.clone(),
                public_key: n.public_key,
                access_key: n.s3_access_key.clone(),
                secret: n.s3_secret.clone(),
            })
            .collect()
    }

    fn change_tag(
        &self,
        name: &str,
        tag: &str,
        add: bool,
        actor: &str,
    ) -> Result<NodeSummary, Error> {
        token::validate_tag(tag)?;
        if add {
            self.check_tag_declared(tag)?;
        }
        let n = self.commit(|s| {
            let n = s
                .nodes
                .get_mut(name)
                .ok_or_else(|| Error::NoSuchNode(name.to_owned()))?;
            let has = n.tags.iter().any(|t| t == tag);
            if add && has {
                return Err(Error::AdminRefused(format!(
                    "node {name} already has {tag}"
                )));
            }
            if !add && !has {
                return Err(Error::AdminRefused(format!(
                    "node {name} does not have {tag}"
                )));
            }
            if add && n.tags.len() >= MAX_TAGS {
                return Err(Error::AdminRefused(format!(
                    "node {name} already has {MAX_TAGS} tags"
                )));
            }
            if add {
                n.tags.push(tag.to_owned());
                n.tags.sort();
            } else {
                n.tags.retain(|t| t != tag);
            }
            Ok((summary(n), true))
        })?;
        let action = if add { "node.tag" } else { "node.untag" };
        self.audit(actor, action, name, tag.to_owned())?;
        Ok(n)
    }

    /// Adds `tag` to node `name` (the netmap version is bumped).
    pub fn tag_node(&self, name: &str, tag: &str, actor: &str) -> Result<NodeSummary, Error> {
        self.change_tag(name, tag, true, actor)
    }

    /// Removes `tag` from node `name`.
    pub fn untag_node(&self, name: &str, tag: &str, actor: &str) -> Result<NodeSummary, Error> {
        self.change_tag(name, tag, false, actor)
    }

    /// Removes node `name` on an admin's request ([`Coordinator::remove_node`], audited).
    /// Returns what it was (its S3 access key, so the caller can revoke it at once).
    pub fn remove_node_as(&self, name: &str, actor: &str) -> Result<NodeSummary, Error> {
        let n = self
            .node_by_name(name)
            .ok_or_else(|| Error::NoSuchNode(name.to_owned()))?;
        if n.is_coordinator {
            return Err(Error::AdminRefused(format!(
                "{name} is the coordinator; it cannot remove itself"
            )));
        }
        if !self.remove_node(name)? {
            return Err(Error::NoSuchNode(name.to_owned()));
        }
        self.audit(actor, "node.remove", name, n.public_key.to_string())?;
        Ok(n)
    }
}
