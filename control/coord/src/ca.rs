//! The mesh CA (ECDSA P-256, rcgen): created at a coordinator's first start and kept in
//! `data_dir` (`ca.crt`, `ca.key` mode 0600). It signs the coordinator's TLS server
//! certificate (re-issued at every start: only the CA is pinned) and node certificates from
//! CSRs (the node's TLS private key never leaves the node).

use std::fs;
use std::net::IpAddr;
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand_core::{OsRng, RngCore as _};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tm_noise::PublicKey;

use crate::store::write_atomic;
use crate::{Error, COORDINATOR_SERVER_NAME};

fn cert_err(what: &str) -> impl FnOnce(rcgen::Error) -> Error + '_ {
    move |e| Error::Cert(format!("{what}: {e}"))
}

/// The URI SAN carrying a node's public key: `tunnelmesh:nodekey:<base64url>`.
pub fn node_key_uri(key: &PublicKey) -> String {
    format!(
        "tunnelmesh:nodekey:{}",
        URL_SAFE_NO_PAD.encode(key.as_bytes())
    )
}

fn random_serial() -> SerialNumber {
    let mut b = [0u8; 16];
    OsRng.fill_bytes(&mut b);
    b[0] &= 0x7f;
    SerialNumber::from_slice(&b)
}

/// The CA's parameters. Deterministic, so a reloaded CA key issues certificates whose issuer
/// name is byte-identical to the stored CA certificate's subject.
fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "tunnelmesh");
    dn.push(DnType::CommonName, "TunnelMesh mesh CA");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

/// The mesh certificate authority plus the coordinator's current TLS server certificate.
pub struct MeshCa {
    ca_key: KeyPair,
    ca_der: CertificateDer<'static>,
    ca_pem: String,
    server_der: CertificateDer<'static>,
    server_key_der: Vec<u8>,
}

impl core::fmt::Debug for MeshCa {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MeshCa")
            .field("ca_sha256", &crate::wire::hex(&self.ca_sha256()))
            .finish_non_exhaustive()
    }
}

impl MeshCa {
    /// Loads the CA from `dir` or creates it, then issues a fresh server certificate for
    /// `tls_names` (host names or IP addresses) plus `coordinator.mesh`.
    pub fn load_or_create(dir: &Path, tls_names: &[String]) -> Result<Self, Error> {
        let crt_path = dir.join("ca.crt");
        let key_path = dir.join("ca.key");
        let (ca_key, ca_pem) = if crt_path.exists() {
            let pem = fs::read_to_string(&crt_path)
                .map_err(|e| Error::io(format!("read {}", crt_path.display()), e))?;
            let key_pem = fs::read_to_string(&key_path)
                .map_err(|e| Error::io(format!("read {}", key_path.display()), e))?;
            let key = KeyPair::from_pem(&key_pem).map_err(cert_err("CA key"))?;
            (key, pem)
        } else {
            let key = KeyPair::generate().map_err(cert_err("generate CA key"))?;
            let mut params = ca_params();
            params.serial_number = Some(random_serial());
            let cert = params.self_signed(&key).map_err(cert_err("self-sign CA"))?;
            write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
            write_atomic(&crt_path, cert.pem().as_bytes(), 0o644)?;
            (key, cert.pem())
        };
        let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .map_err(|e| Error::Cert(format!("CA certificate PEM: {e}")))?
            .into_owned();

        let server_key = KeyPair::generate().map_err(cert_err("generate server key"))?;
        let mut names: Vec<String> = tls_names.to_vec();
        names.push(COORDINATOR_SERVER_NAME.to_owned());
        let mut p = CertificateParams::default();
        p.serial_number = Some(random_serial());
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, COORDINATOR_SERVER_NAME);
        p.distinguished_name = dn;
        for n in names {
            let san = match n.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    n.clone()
                        .try_into()
                        .map_err(|_| Error::Config(format!("bad TLS name {n:?}")))?,
                ),
            };
            p.subject_alt_names.push(san);
        }
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.use_authority_key_identifier_extension = true;
        let issuer = Issuer::new(ca_params(), &ca_key);
        let server = p
            .signed_by(&server_key, &issuer)
            .map_err(cert_err("sign server certificate"))?;
        write_atomic(
            &dir.join("server.key"),
            server_key.serialize_pem().as_bytes(),
            0o600,
        )?;
        write_atomic(&dir.join("server.crt"), server.pem().as_bytes(), 0o644)?;
        Ok(Self {
            server_der: server.der().clone(),
            server_key_der: server_key.serialize_der(),
            ca_key,
            ca_der,
            ca_pem,
        })
    }

    /// The CA private key (PEM), for a coordinator joining this mesh.
    pub fn ca_key_pem(&self) -> String {
        self.ca_key.serialize_pem()
    }

    /// SHA-256 of the CA certificate DER (what join tokens pin).
    pub fn ca_sha256(&self) -> [u8; 32] {
        Sha256::digest(self.ca_der.as_ref()).into()
    }

    /// The CA certificate (DER).
    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// The CA certificate (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The server certificate chain to present: leaf, then the CA.
    pub fn server_chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.server_der.clone(), self.ca_der.clone()]
    }

    /// The server certificate's private key.
    pub fn server_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.server_key_der.clone().into())
    }

    /// Verifies a CSR's signature and issues a node certificate for its public key with
    /// CN = `name`, DNS SANs `name` and `name.mesh`, and a URI SAN with `key`. Everything else
    /// the CSR asks for is ignored. Returns the PEM and the SHA-256 of the DER.
    pub fn sign_node(
        &self,
        csr_der: &[u8],
        name: &str,
        key: &PublicKey,
    ) -> Result<(String, [u8; 32]), Error> {
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(|e| Error::Malformed(format!("csr: {e}")))?;
        let mut p = CertificateParams::default();
        p.serial_number = Some(random_serial());
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        p.distinguished_name = dn;
        let dns = |s: String| -> Result<SanType, Error> {
            Ok(SanType::DnsName(s.try_into().map_err(|_| {
                Error::BadName(name.to_owned(), "not a valid DNS name")
            })?))
        };
        p.subject_alt_names = vec![
            dns(name.to_owned())?,
            dns(format!("{name}.mesh"))?,
            SanType::URI(
                node_key_uri(key)
                    .try_into()
                    .map_err(|_| Error::Cert("URI SAN".into()))?,
            ),
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.use_authority_key_identifier_extension = true;
        let issuer = Issuer::new(ca_params(), &self.ca_key);
        let signed = CertificateSigningRequestParams {
            params: p,
            public_key: csr.public_key,
        }
        .signed_by(&issuer)
        .map_err(cert_err("sign node certificate"))?;
        Ok((signed.pem(), Sha256::digest(signed.der().as_ref()).into()))
    }
}

/// A node's mTLS identity after registration: its TLS key (generated on the node), the
/// certificate the mesh CA issued, and the CA. Persist it in the node's data_dir (0600).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// PKCS#8 PEM private key.
    pub key_pem: String,
    /// PEM node certificate.
    pub cert_pem: String,
    /// PEM mesh CA certificate.
    pub ca_pem: String,
}

impl core::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("key_pem", &"<redacted>")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// Generates a TLS key pair on the node and a CSR for it. Returns `(key_pem, csr_pem,
/// csr_der)`.
pub fn make_csr(name: &str) -> Result<(String, String, Vec<u8>), Error> {
    let key = KeyPair::generate().map_err(cert_err("generate node key"))?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    p.distinguished_name = dn;
    let csr = p.serialize_request(&key).map_err(cert_err("csr"))?;
    let pem = csr.pem().map_err(cert_err("csr pem"))?;
    Ok((key.serialize_pem(), pem, csr.der().to_vec()))
}
