//! Registration and the node records it writes: challenges, `POST /v1/register`, the
//! caller of a client certificate, declared and observed endpoints, node removal.

use std::net::SocketAddr;
use std::time::Instant;

use rand_core::{CryptoRng, RngCore};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateSigningRequestDer;
use tm_noise::PublicKey;

use crate::server::{
    s3_credentials, validate_api_addr, validate_endpoints, validate_name, NodeRecord,
};
use crate::wire::{hex, Challenge, Netmap, RegisterRequest, Registration};
use crate::{address, proof, Coordinator, Error};

impl Coordinator {
    /// Issues a single-use challenge valid for `challenge_ttl`. Costs no memory (see
    /// `challenge.rs`); the I/O driver rate-limits it per source.
    pub fn handle_challenge<R: RngCore + CryptoRng + ?Sized>(
        &self,
        now: Instant,
        rng: &mut R,
    ) -> Result<Challenge, Error> {
        let nonce = self
            .shared
            .challenges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .issue(now, rng);
        Ok(Challenge {
            nonce,
            coordinator_static: self.public_key(),
        })
    }

    /// Registers (or idempotently re-registers) a node. Checks, in order: the challenge
    /// (consumed even if a later check fails), the join-secret MAC, the CSR, the proof of
    /// possession, the name, and key/name conflicts.
    pub fn handle_register<R: RngCore + CryptoRng + ?Sized>(
        &self,
        now: Instant,
        req: RegisterRequest,
        rng: &mut R,
    ) -> Result<Registration, Error> {
        // The nonce is consumed whether or not the token is good (a wrong token is remembered
        // apart, so guessing cannot crowd out token holders); the token is checked again
        // inside the change, where a single-use token is used up atomically.
        self.shared
            .challenges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .consume(now, &req.nonce, || {
                crate::identity::check_join_token(&self.lock().state, &req.token_secret, &req.name)
                    .map(drop)
            })?;
        let csr_der = CertificateSigningRequestDer::from_pem_slice(req.csr.as_bytes())
            .map_err(|e| Error::Malformed(format!("csr is not a PEM certificate request: {e}")))?;
        proof::verify_proof(
            &self.shared.node_static,
            &req.public_key,
            &req.nonce,
            &req.name,
            csr_der.as_ref(),
            &req.proof,
        )?;
        validate_name(&req.name)?;
        validate_endpoints(&req.endpoints)?;

        let creds = s3_credentials(rng);
        let cidr = self.shared.cfg.mesh_cidr;
        if let Some(api) = &req.api {
            validate_api_addr(api)?;
        }
        let (rec, cert_pem) = self.commit(|s| {
            let token_id = crate::identity::check_join_token(s, &req.token_secret, &req.name)?;
            let for_coordinators = s.tokens.get(&token_id).is_some_and(|t| t.coordinator);
            if req.coordinator && !for_coordinators {
                return Err(Error::NotAllowed(
                    "this token admits members, not coordinators: an admin makes one with `tunnelmesh token create --coordinator`".into(),
                ));
            }
            if !req.coordinator && for_coordinators {
                return Err(Error::NotAllowed(
                    "this token admits coordinators only: join a member with a member token, or start this node with `coordinator: {enabled: true}`".into(),
                ));
            }
            let existing = s.by_key(&req.public_key).cloned();
            match &existing {
                Some(n) if n.name != req.name => return Err(Error::KeyTaken(n.name.clone())),
                Some(n) if n.is_coordinator => return Err(Error::KeyTaken(n.name.clone())),
                Some(_) => {}
                None if s.nodes.contains_key(&req.name) => {
                    return Err(Error::NameTaken(req.name.clone()))
                }
                None => {}
            }
            let (cert_pem, fp) =
                self.shared
                    .ca
                    .sign_node(csr_der.as_ref(), &req.name, &req.public_key)?;
            let bump = match &existing {
                None => true,
                Some(n) => !req.endpoints.is_empty() && n.endpoints != req.endpoints,
            } || crate::identity::token_has_tags(s, &token_id);
            let rec = match existing {
                Some(mut n) => {
                    if !req.endpoints.is_empty() {
                        n.endpoints = req.endpoints.clone();
                    }
                    n.cert_sha256 = Some(hex(&fp));
                    n
                }
                None => NodeRecord {
                    name: req.name.clone(),
                    public_key: req.public_key,
                    mesh_ip: address::allocate(cidr, &req.public_key, |ip| s.ip_taken(ip))?,
                    endpoints: req.endpoints.clone(),
                    is_coordinator: false,
                    cert_sha256: Some(hex(&fp)),
                    s3_access_key: creds.0,
                    s3_secret: creds.1,
                    observed: None,
                    tags: Vec::new(),
                    api: None,
                    services: Vec::new(),
                },
            };
            let rec = NodeRecord {
                is_coordinator: req.coordinator,
                api: req.api.clone(),
                ..rec
            };
            let rec = crate::identity::consume_join_token(s, &token_id, rec);
            s.nodes.insert(rec.name.clone(), rec.clone());
            Ok(((rec, cert_pem), bump))
        })?;
        tracing::info!(name = %rec.name, ip = %rec.mesh_ip, "node registered");
        Ok(Registration {
            mesh_ip: rec.mesh_ip,
            mesh_cidr: cidr,
            node_cert: cert_pem,
            ca_cert: self.shared.ca.ca_pem().to_owned(),
            s3_access_key: rec.s3_access_key,
            s3_secret: rec.s3_secret.clone(),
            netmap: self.netmap_for(&rec.public_key),
            cluster: rec.is_coordinator.then(|| self.cluster_seed()),
        })
    }

    /// The registered node a verified client certificate (SHA-256 of its DER) belongs to.
    pub fn caller(&self, client_cert_sha256: Option<&[u8; 32]>) -> Result<String, Error> {
        self.cert_identity(client_cert_sha256).map(|(name, _)| name)
    }

    /// The name and key of the registered node a verified client certificate belongs to.
    pub(crate) fn cert_identity(
        &self,
        client_cert_sha256: Option<&[u8; 32]>,
    ) -> Result<(String, PublicKey), Error> {
        let fp = client_cert_sha256.ok_or(Error::ClientCertRequired)?;
        self.index()
            .by_cert(&hex(fp))
            .cloned()
            .ok_or(Error::UnknownClient)
    }

    /// Replaces the endpoints of the node `name` (already authenticated).
    pub fn handle_endpoints(
        &self,
        name: &str,
        endpoints: Vec<SocketAddr>,
    ) -> Result<Netmap, Error> {
        validate_endpoints(&endpoints)?;
        self.commit(|s| {
            let n = s.nodes.get_mut(name).ok_or(Error::UnknownClient)?;
            n.endpoints = endpoints;
            Ok(((), true))
        })?;
        Ok(self.netmap_for_name(name))
    }

    /// Records the address an AUTHENTICATED WireGuard packet from the node with `key` came
    /// from (as the coordinator node's dataplane saw it: the NAT-mapped address and port).
    /// It is published first in that node's netmap `endpoints`. Returns whether the netmap
    /// changed (then the version is bumped and long polls wake). Unknown keys, the
    /// coordinator's own key, and unusable addresses (unspecified, port 0, multicast,
    /// loopback — relayed traffic arrives from loopback) are ignored. IPv4-mapped IPv6
    /// addresses are stored as IPv4. Never call it for unauthenticated packets.
    pub fn observe_endpoint(&self, key: &PublicKey, addr: SocketAddr) -> bool {
        let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
        if addr.port() == 0
            || addr.ip().is_unspecified()
            || addr.ip().is_multicast()
            || addr.ip().is_loopback()
            || *key == self.public_key()
        {
            return false;
        }
        let Some(name) = self.index().name_of(key).map(str::to_owned) else {
            return false;
        };
        let known = self
            .lock()
            .state
            .nodes
            .get(&name)
            .is_some_and(|n| n.observed == Some(addr));
        if known {
            return false;
        }
        let r = self.commit(|s| match s.nodes.get_mut(&name) {
            Some(n) if n.observed != Some(addr) => {
                n.observed = Some(addr);
                Ok((true, true))
            }
            _ => Ok((false, false)),
        });
        match r {
            Ok(changed) => {
                if changed {
                    tracing::debug!(%name, %addr, "observed endpoint");
                }
                changed
            }
            Err(e) => {
                tracing::warn!(%name, %addr, "cannot record observed endpoint: {e}");
                false
            }
        }
    }

    /// Removes a node (its address is freed, its certificate stops working). The
    /// coordinator's own record cannot be removed. Returns whether it existed.
    pub fn remove_node(&self, name: &str) -> Result<bool, Error> {
        if name == self.shared.cfg.name {
            return Err(Error::Config("the coordinator cannot remove itself".into()));
        }
        let Some(key) = self.commit(|s| Ok((s.nodes.remove(name).map(|n| n.public_key), true)))?
        else {
            return Ok(false);
        };
        if self.shared.relay.close(&key) {
            tracing::info!(name, "relay connection of removed node closed");
        }
        tracing::info!(name, "node removed");
        Ok(true)
    }
}
