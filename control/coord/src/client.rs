//! The joining node's side: TLS pinned to the CA named by the join token, registration, and
//! mTLS calls with the issued certificate afterwards.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore,
    SignatureScheme,
};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use tm_noise::PrivateKey;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::relay::RelayConn;
use crate::wire::{Challenge, EndpointsUpdate, ErrorBody, Netmap, RegisterRequest, Registration};
use crate::{http, make_csr, proof, Error, JoinToken, NodeIdentity, COORDINATOR_SERVER_NAME};

/// Why the pinned verifier refused a coordinator certificate.
#[derive(Debug)]
struct PinMismatch(String);

impl core::fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "coordinator certificate does not match the join token: {}",
            self.0
        )
    }
}

impl std::error::Error for PinMismatch {}

fn mismatch(why: impl Into<String>) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(PinMismatch(
        why.into(),
    )))))
}

/// Accepts a server chain only if it contains the CA whose SHA-256 the token pins and the
/// leaf verifies (WebPKI, name `coordinator.mesh`) with that CA as the only trust anchor.
#[derive(Debug)]
struct PinnedVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| <[u8; 32]>::from(Sha256::digest(c.as_ref())) == self.pin)
            .ok_or_else(|| mismatch("the pinned CA is not in the chain"))?;
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| mismatch(format!("pinned CA unusable: {e}")))?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| mismatch(format!("pinned CA unusable: {e}")))?;
        inner
            .verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
            .map_err(|e| mismatch(format!("leaf does not verify against the pinned CA: {e}")))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn map_connect_error(e: std::io::Error) -> Error {
    if let Some(rustls::Error::InvalidCertificate(CertificateError::Other(o))) =
        e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
    {
        if o.0.downcast_ref::<PinMismatch>().is_some() {
            return Error::CoordinatorCertMismatch;
        }
    }
    Error::Tls(format!("handshake with coordinator: {e}"))
}

/// Builds the registration body (pure: the caller supplies the challenge and the CSR).
pub fn build_register_request(
    challenge: &Challenge,
    node_key: &PrivateKey,
    name: &str,
    csr_pem: String,
    csr_der: &[u8],
    endpoints: &[SocketAddr],
    token: &JoinToken,
) -> Result<RegisterRequest, Error> {
    let public_key = node_key.public_key();
    Ok(RegisterRequest {
        name: name.to_owned(),
        public_key,
        nonce: challenge.nonce,
        proof: proof::node_proof(
            node_key,
            &challenge.coordinator_static,
            &challenge.nonce,
            name,
            csr_der,
        )?,
        token_secret: token.secret,
        csr: csr_pem,
        endpoints: endpoints.to_vec(),
        coordinator: false,
        api: None,
    })
}

/// Longest wait for a TCP connection to a coordinator.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// TCP keepalive on every connection to a coordinator: a probe after this long without
/// traffic, then every [`KEEPALIVE_INTERVAL`], [`KEEPALIVE_PROBES`] unanswered ones end the
/// connection. An open long poll to a coordinator cut off by a partition (packets dropped, no
/// reset) thus fails after [`DEAD_CONNECTION_AFTER`], not at the request timeout, and the
/// member moves on.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(2);
/// See [`KEEPALIVE_IDLE`].
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// See [`KEEPALIVE_IDLE`].
pub const KEEPALIVE_PROBES: u32 = 2;
/// How long an idle connection to an unreachable coordinator stays open at most.
pub const DEAD_CONNECTION_AFTER: Duration = Duration::from_secs(
    KEEPALIVE_IDLE.as_secs() + KEEPALIVE_PROBES as u64 * KEEPALIVE_INTERVAL.as_secs(),
);

/// A client of one coordinator. Cheap to clone (configs are shared).
#[derive(Debug, Clone)]
pub struct JoinClient {
    addr: String,
    token: JoinToken,
    anon: Arc<ClientConfig>,
    authed: Option<Arc<ClientConfig>>,
    identity: Option<NodeIdentity>,
    timeout: Duration,
    relay_keepalive: Duration,
    /// `Some(api)`: [`JoinClient::register`] joins as a coordinator reachable at `api`.
    as_coordinator: Option<Option<String>>,
}

impl JoinClient {
    /// A client for the coordinator at `addr` (`HOST:PORT`), authenticated by `token`.
    /// No network traffic until the first call.
    pub fn new(addr: impl Into<String>, token: JoinToken) -> Result<Self, Error> {
        let anon = Self::config(&token, None)?;
        Ok(Self {
            addr: addr.into(),
            token,
            anon,
            authed: None,
            identity: None,
            timeout: Duration::from_secs(40),
            relay_keepalive: crate::relay::RELAY_KEEPALIVE,
            as_coordinator: None,
        })
    }

    /// A client that already holds a registered identity (after a restart).
    pub fn with_identity(
        addr: impl Into<String>,
        token: JoinToken,
        identity: NodeIdentity,
    ) -> Result<Self, Error> {
        let mut c = Self::new(addr, token)?;
        c.set_identity(identity)?;
        Ok(c)
    }

    /// A TCP connection to the coordinator, within [`CONNECT_TIMEOUT`] (a dead coordinator
    /// whose address swallows packets is noticed in seconds, not at the request timeout).
    async fn connect(&self) -> Result<TcpStream, Error> {
        let t = CONNECT_TIMEOUT.min(self.timeout);
        match tokio::time::timeout(t, TcpStream::connect(&self.addr)).await {
            Ok(r) => {
                let tcp = r.map_err(|e| Error::io(format!("connect to {}", self.addr), e))?;
                let ka = socket2::TcpKeepalive::new()
                    .with_time(KEEPALIVE_IDLE)
                    .with_interval(KEEPALIVE_INTERVAL)
                    .with_retries(KEEPALIVE_PROBES);
                socket2::SockRef::from(&tcp)
                    .set_tcp_keepalive(&ka)
                    .map_err(|e| Error::io("TCP keepalive", e))?;
                Ok(tcp)
            }
            Err(_) => Err(Error::io(
                format!("connect to {}", self.addr),
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {} s", t.as_secs()),
                ),
            )),
        }
    }

    /// The coordinator address this client talks to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The same client (token, identity, settings) for another coordinator of the mesh.
    pub fn for_addr(&self, addr: impl Into<String>) -> JoinClient {
        JoinClient {
            addr: addr.into(),
            ..self.clone()
        }
    }

    /// Makes [`JoinClient::register`] join as a coordinator (with a coordinator token) whose
    /// API other coordinators reach at `api` (`None`: its mesh address, port 8443).
    pub fn join_as_coordinator(&mut self, api: Option<String>) {
        self.as_coordinator = Some(api);
    }

    /// Per-request time limit (default 40 s: longer than the server's 25 s long poll).
    pub fn set_timeout(&mut self, t: Duration) {
        self.timeout = t;
    }

    /// Keepalive interval of relay connections opened later (default 20 s).
    pub fn set_relay_keepalive(&mut self, t: Duration) {
        self.relay_keepalive = t;
    }

    /// The mTLS identity, once registered.
    pub fn identity(&self) -> Option<&NodeIdentity> {
        self.identity.as_ref()
    }

    /// Installs an mTLS identity for the authenticated calls.
    pub fn set_identity(&mut self, identity: NodeIdentity) -> Result<(), Error> {
        self.authed = Some(Self::config(&self.token, Some(&identity))?);
        self.identity = Some(identity);
        Ok(())
    }

    fn config(token: &JoinToken, id: Option<&NodeIdentity>) -> Result<Arc<ClientConfig>, Error> {
        let provider = crate::provider();
        let b = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                pin: token.ca_sha256,
                provider,
            }));
        let cfg = match id {
            None => b.with_no_client_auth(),
            Some(id) => {
                let cert = CertificateDer::from_pem_slice(id.cert_pem.as_bytes())
                    .map_err(|e| Error::Cert(format!("node certificate PEM: {e}")))?;
                let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes())
                    .map_err(|e| Error::Cert(format!("node key PEM: {e}")))?;
                b.with_client_auth_cert(vec![cert], key)
                    .map_err(|e| Error::Tls(format!("client certificate: {e}")))?
            }
        };
        Ok(Arc::new(cfg))
    }

    /// Low-level: one HTTPS request; `authenticated` presents the client certificate.
    /// Returns the status and body whatever the status.
    pub async fn request_raw(
        &self,
        method: &str,
        target: &str,
        body: &[u8],
        authenticated: bool,
    ) -> Result<(u16, Vec<u8>), Error> {
        let cfg = if authenticated {
            self.authed.clone().ok_or(Error::NotRegistered)?
        } else {
            self.anon.clone()
        };
        let fut = async {
            let tcp = self.connect().await?;
            let name = ServerName::try_from(COORDINATOR_SERVER_NAME)
                .expect("the constant server name is valid");
            let mut tls = TlsConnector::from(cfg)
                .connect(name, tcp)
                .await
                .map_err(map_connect_error)?;
            http::roundtrip(&mut tls, method, target, body).await
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| Error::Timeout("coordinator request"))?
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        target: &str,
        body: &[u8],
        authenticated: bool,
    ) -> Result<T, Error> {
        let (status, body) = self
            .request_raw(method, target, body, authenticated)
            .await?;
        if status != 200 {
            let message = serde_json::from_slice::<ErrorBody>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            return Err(Error::Refused { status, message });
        }
        serde_json::from_slice(&body).map_err(|e| Error::BadResponse(e.to_string()))
    }

    /// `GET /v1/challenge`.
    pub async fn challenge(&self) -> Result<Challenge, Error> {
        self.call("GET", "/v1/challenge", b"", false).await
    }

    /// `POST /v1/register` with a prepared body.
    pub async fn register_request(&self, req: &RegisterRequest) -> Result<Registration, Error> {
        let body = serde_json::to_vec(req).expect("wire types always serialize");
        self.call("POST", "/v1/register", &body, false).await
    }

    /// Registers `node_key` as `name`: fetches a challenge, makes a TLS key and CSR, proves
    /// possession of the static key, and installs the returned client identity.
    pub async fn register(
        &mut self,
        node_key: &PrivateKey,
        name: &str,
        endpoints: &[SocketAddr],
    ) -> Result<Registration, Error> {
        let ch = self.challenge().await?;
        let (key_pem, csr_pem, csr_der) = make_csr(name)?;
        let req = build_register_request(
            &ch,
            node_key,
            name,
            csr_pem,
            &csr_der,
            endpoints,
            &self.token,
        )?;
        let req = match &self.as_coordinator {
            Some(api) => RegisterRequest {
                coordinator: true,
                api: api.clone(),
                ..req
            },
            None => req,
        };
        let reg = self.register_request(&req).await?;
        let ca = CertificateDer::from_pem_slice(reg.ca_cert.as_bytes())
            .map_err(|e| Error::BadResponse(format!("ca_cert: {e}")))?;
        if <[u8; 32]>::from(Sha256::digest(ca.as_ref())) != self.token.ca_sha256 {
            return Err(Error::CoordinatorCertMismatch);
        }
        self.set_identity(NodeIdentity {
            key_pem,
            cert_pem: reg.node_cert.clone(),
            ca_pem: reg.ca_cert.clone(),
        })?;
        Ok(reg)
    }

    /// `GET /v1/netmap[?since=V]` (mTLS): with `Some(v)` waits until the version exceeds
    /// `v` or the server's long-poll limit passes.
    pub async fn netmap(&self, since: Option<u64>) -> Result<Netmap, Error> {
        let target = match since {
            Some(v) => format!("/v1/netmap?since={v}"),
            None => "/v1/netmap".to_owned(),
        };
        self.call("GET", &target, b"", true).await
    }

    /// `GET /v1/netmap?since=V&base=T` (mTLS): [`JoinClient::netmap`] asking for a delta
    /// from the netmap whose delta token (`delta.token`) is `base` (answered with a full netmap when the
    /// coordinator cannot make one). The answer is returned as received: see
    /// [`JoinClient::netmap_after`] for the resolved netmap.
    pub async fn netmap_delta(
        &self,
        since: Option<u64>,
        base: Option<&str>,
    ) -> Result<Netmap, Error> {
        self.netmap_query(since, base, None).await
    }

    /// `GET /v1/netmap?since=V&base=T&vv=...`: with `held` (the version vector of the netmap
    /// the member last applied) the coordinator first waits until it has seen as much
    /// ([`Error::Refused`] 503 `lagging` if it does not within its long-poll limit).
    async fn netmap_query(
        &self,
        since: Option<u64>,
        base: Option<&str>,
        held: Option<&tm_cluster::VersionVector>,
    ) -> Result<Netmap, Error> {
        let mut q = Vec::new();
        if let Some(v) = since {
            q.push(format!("since={v}"));
            if let Some(b) = base {
                q.push(format!("base={b}"));
            }
        }
        if let Some(vv) = held.filter(|v| v.0.len() <= crate::poll::MAX_VV_ENTRIES) {
            q.push(format!("vv={}", crate::poll::vv_param(vv)));
        }
        let target = if q.is_empty() {
            "/v1/netmap".to_owned()
        } else {
            format!("/v1/netmap?{}", q.join("&"))
        };
        self.call("GET", &target, b"", true).await
    }

    /// The netmap long poll of a member that holds `last` (the full netmap this coordinator
    /// served last, with its delta token (`delta.token`)): asks for only what changed since and applies it
    /// to `last` in place ([`crate::apply_delta`]), so `last` is always the full netmap.
    /// Without `since` or a token the answer is full; a delta that does not apply to `last`
    /// (never from a correct coordinator) is followed by a full fetch.
    pub async fn netmap_after<'a>(
        &self,
        since: Option<u64>,
        last: &'a mut Option<Netmap>,
    ) -> Result<&'a Netmap, Error> {
        self.netmap_held(since, None, last).await
    }

    /// [`JoinClient::netmap_after`] carrying `held`, the version vector of the netmap the
    /// member last applied (from whichever coordinator): a coordinator that has not seen as
    /// much holds the poll until it has (or answers 503 `lagging`, see
    /// [`Error::is_lagging`]), so a member's netmap never goes back when it changes
    /// coordinator.
    pub async fn netmap_held<'a>(
        &self,
        since: Option<u64>,
        held: Option<&tm_cluster::VersionVector>,
        last: &'a mut Option<Netmap>,
    ) -> Result<&'a Netmap, Error> {
        let base = last
            .as_ref()
            .and_then(|l| l.delta_token().map(str::to_owned));
        let nm = self.netmap_query(since, base.as_deref(), held).await?;
        let applied = if nm.delta_from().is_none() {
            *last = Some(nm);
            true
        } else {
            last.as_mut().is_some_and(|l| crate::apply_delta(l, nm))
        };
        if !applied {
            *last = Some(self.netmap_query(None, None, held).await?);
        }
        Ok(last.as_ref().expect("set above"))
    }

    /// `POST /v1/admin` (mTLS): an admin command for the coordinator's daemon to run as this
    /// node, if the policy gives it the admin capability; returns the answer's bytes.
    /// Refusals are [`Error::Refused`] (403 with the policy's reason).
    pub async fn admin(&self, command: &[u8]) -> Result<Vec<u8>, Error> {
        let (status, body) = self.request_raw("POST", "/v1/admin", command, true).await?;
        if status != 200 {
            let message = serde_json::from_slice::<ErrorBody>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            return Err(Error::Refused { status, message });
        }
        Ok(body)
    }

    /// `POST /v1/cluster` (mTLS, coordinators only): one replication message; returns the
    /// messages the other coordinator answers with.
    pub async fn cluster(&self, msg: &tm_cluster::Msg) -> Result<Vec<tm_cluster::Msg>, Error> {
        let body = serde_json::to_vec(msg).expect("replication messages serialize");
        let (status, body) = self.request_raw("POST", "/v1/cluster", &body, true).await?;
        if status != 200 {
            let message = serde_json::from_slice::<ErrorBody>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            return Err(Error::Refused { status, message });
        }
        serde_json::from_slice(&body)
            .map_err(|e| Error::Malformed(format!("replication answer: {e}")))
    }

    /// `POST /v1/endpoints` (mTLS): replaces this node's endpoints.
    pub async fn update_endpoints(&self, endpoints: &[SocketAddr]) -> Result<Netmap, Error> {
        let body = serde_json::to_vec(&EndpointsUpdate {
            endpoints: endpoints.to_vec(),
        })
        .expect("wire types always serialize");
        self.call("POST", "/v1/endpoints", &body, true).await
    }

    /// `POST /v1/services` (mTLS): replaces the services this node declares.
    pub async fn update_services(&self, services: &[String]) -> Result<(), Error> {
        let body = serde_json::to_vec(&crate::wire::ServicesUpdate {
            services: services.to_vec(),
        })
        .expect("wire types always serialize");
        self.call::<serde_json::Value>("POST", "/v1/services", &body, true)
            .await
            .map(|_| ())
    }

    /// `GET /v1/relay` (mTLS) upgraded to `tm-relay/1`: a relay connection through the
    /// coordinator (connecting and upgrading are bounded by the request timeout; the
    /// connection itself lasts until closed). Refusals are [`Error::Refused`] (401 for an
    /// unknown or missing client certificate).
    pub async fn relay(&self) -> Result<RelayConn, Error> {
        self.upgrade_relay(crate::relay::RELAY_PROTOCOL).await
    }

    /// Low-level, for protocol tests: [`JoinClient::relay`] asking for another upgrade
    /// `protocol` (coordinators link to each other with `tm-relay-peer/1`).
    pub async fn relay_with_protocol(&self, protocol: &str) -> Result<RelayConn, Error> {
        self.upgrade_relay(protocol).await
    }

    /// `GET /v1/relay` (mTLS) upgraded to `protocol`.
    pub(crate) async fn upgrade_relay(&self, protocol: &str) -> Result<RelayConn, Error> {
        let (tls, rest) = self.upgrade_raw(protocol).await?;
        Ok(RelayConn::start(
            tls,
            rest,
            self.relay_keepalive,
            crate::relay::RELAY_QUEUE,
        ))
    }

    /// `GET /v1/relay` (mTLS) upgraded to `protocol`: the stream and the bytes that came
    /// after the `101` answer.
    pub(crate) async fn upgrade_raw(
        &self,
        protocol: &str,
    ) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, Vec<u8>), Error> {
        let cfg = self.authed.clone().ok_or(Error::NotRegistered)?;
        let fut = async {
            let tcp = self.connect().await?;
            let _ = tcp.set_nodelay(true);
            let name = ServerName::try_from(COORDINATOR_SERVER_NAME)
                .expect("the constant server name is valid");
            let mut tls = TlsConnector::from(cfg)
                .connect(name, tcp)
                .await
                .map_err(map_connect_error)?;
            let (status, rest) = http::upgrade(&mut tls, "/v1/relay", protocol).await?;
            Ok::<_, Error>((tls, status, rest))
        };
        let (tls, status, rest) = tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| Error::Timeout("relay upgrade"))??;
        if status != 101 {
            let message = serde_json::from_slice::<ErrorBody>(&rest)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&rest).into_owned());
            return Err(Error::Refused { status, message });
        }
        Ok((tls, rest))
    }

    /// `DELETE /v1/nodes/self` (mTLS): leaves the mesh.
    pub async fn leave(&self) -> Result<(), Error> {
        self.call::<serde_json::Value>("DELETE", "/v1/nodes/self", b"", true)
            .await
            .map(|_| ())
    }
}
