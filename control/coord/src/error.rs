//! The crate's error type and its mapping to HTTP status codes.

/// Everything that can go wrong in `tm-coord`, on either side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A join token is not `tm1_` + base64url of 65 bytes with version 1.
    #[error("invalid join token: {0}")]
    InvalidToken(&'static str),
    /// The coordinator's TLS certificate chain does not contain the CA the token pins, or the
    /// leaf does not verify against it.
    #[error("coordinator certificate does not match the join token")]
    CoordinatorCertMismatch,
    /// A request was syntactically wrong (bad JSON, bad field, bad HTTP).
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The join secret MAC in a registration is wrong.
    #[error("wrong join token")]
    WrongToken,
    /// The registration nonce was already used (replay refused).
    #[error("challenge already used")]
    ChallengeUsed,
    /// The registration nonce was never issued or has expired.
    #[error("unknown or expired challenge")]
    ChallengeUnknown,
    /// The proof of possession of the static key does not verify.
    #[error("proof of key possession does not verify")]
    BadProof,
    /// The public key is already registered under another name (renaming is refused).
    #[error("public key already registered as {0:?}; renaming is not supported")]
    KeyTaken(String),
    /// The name is already registered with another key.
    #[error("name {0:?} is already registered with another key")]
    NameTaken(String),
    /// The name is not a valid DNS label or is reserved.
    #[error("invalid node name {0:?}: {1}")]
    BadName(String, &'static str),
    /// The join token is known but may not be used (revoked, expired, single-use and used).
    #[error("{0}")]
    TokenRefused(String),
    /// A tag is not `tag:<dns label>`.
    #[error("invalid tag {0:?}: {1}")]
    BadTag(String, &'static str),
    /// No node of that name.
    #[error("no node named {0:?} (see `tunnelmesh node list`)")]
    NoSuchNode(String),
    /// No token with that id.
    #[error("no token with id {0:?} (see `tunnelmesh token list`)")]
    NoSuchToken(String),
    /// A policy file refused by `policy set`/`check` (syntax, validation, or failed tests; the
    /// message names each place).
    #[error("{0}")]
    PolicyRefused(String),
    /// The authenticated caller may not do this (the policy's one-line reason).
    #[error("{0}")]
    NotAllowed(String),
    /// An admin request that cannot be done (the message says why and what to do instead).
    #[error("{0}")]
    AdminRefused(String),
    /// A replication message another coordinator sent was refused whole (clock skew, a
    /// malformed record, a sender that is not a coordinator of this mesh).
    #[error("replication refused: {0}")]
    ClusterRefused(String),
    /// An authenticated endpoint was called without a client certificate.
    #[error("client certificate required")]
    ClientCertRequired,
    /// The client certificate is valid but maps to no registered node (left or removed).
    #[error("client certificate does not belong to a registered node")]
    UnknownClient,
    /// Too many registrations in one challenge lifetime (try again later).
    #[error("too many registrations at once, try again later")]
    Busy,
    /// A netmap poll carried a version vector this coordinator did not catch up with within
    /// the long-poll limit (the member asks another coordinator).
    #[error("lagging: {0}")]
    Lagging(String),
    /// This source asked for too many challenges (try again later).
    #[error("too many requests from this address, try again later")]
    RateLimited,
    /// The request handler failed unexpectedly (a panic, contained to this request).
    #[error("internal error")]
    Internal,
    /// Unknown path.
    #[error("not found: {0}")]
    NotFound(String),
    /// Known path, wrong method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Request body larger than the limit.
    #[error("request body too large")]
    TooLarge,
    /// No free address left in the mesh CIDR.
    #[error("no free address left in {0}")]
    AddressPoolExhausted(String),
    /// The mesh CIDR is not an IPv4 prefix with room for hosts.
    #[error("invalid mesh CIDR {0:?}: {1}")]
    BadCidr(String, &'static str),
    /// A Diffie-Hellman result was all zero (small-order public key).
    #[error("small-order public key")]
    SmallOrderKey,
    /// The coordinator refused a request (status and its message).
    #[error("coordinator refused the request ({status}): {message}")]
    Refused {
        /// HTTP status code.
        status: u16,
        /// The server's `error` message.
        message: String,
    },
    /// The coordinator's answer could not be understood.
    #[error("bad response from coordinator: {0}")]
    BadResponse(String),
    /// An operation needs a registered client identity and there is none.
    #[error("not registered: no client identity")]
    NotRegistered,
    /// Configuration or persisted state is inconsistent.
    #[error("configuration: {0}")]
    Config(String),
    /// Certificate generation, signing or parsing failed.
    #[error("certificate: {0}")]
    Cert(String),
    /// TLS setup or handshake failure.
    #[error("tls: {0}")]
    Tls(String),
    /// Persisted state could not be (de)serialized.
    #[error("state: {0}")]
    State(String),
    /// Network or file I/O.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A relay frame's payload exceeds the limit (its size); the connection is closed.
    #[error("relay frame payload of {0} bytes exceeds the 2048-byte limit")]
    RelayFrameTooLarge(usize),
    /// The relay peer broke the frame protocol or refused the upgrade.
    #[error("relay protocol: {0}")]
    RelayProtocol(String),
    /// The relay connection is closed.
    #[error("relay connection closed")]
    RelayClosed,
    /// A network operation took too long.
    #[error("timed out: {0}")]
    Timeout(&'static str),
}

impl Error {
    /// Whether a coordinator answered that it has not caught up with the version vector a
    /// netmap poll carried ([`Error::Lagging`], received as 503): ask another one.
    pub fn is_lagging(&self) -> bool {
        match self {
            Error::Lagging(_) => true,
            Error::Refused { status, message } => *status == 503 && message.starts_with("lagging"),
            _ => false,
        }
    }

    /// The HTTP status the server answers with for this error (the one place this is decided).
    pub fn http_status(&self) -> u16 {
        match self {
            Error::Malformed(_)
            | Error::BadName(..)
            | Error::InvalidToken(_)
            | Error::BadTag(..)
            | Error::AdminRefused(_)
            | Error::PolicyRefused(_) => 400,
            Error::NotAllowed(_) | Error::ClusterRefused(_) => 403,
            Error::ClientCertRequired | Error::UnknownClient => 401,
            Error::WrongToken
            | Error::TokenRefused(_)
            | Error::ChallengeUsed
            | Error::ChallengeUnknown
            | Error::BadProof
            | Error::SmallOrderKey => 403,
            Error::NotFound(_) | Error::NoSuchNode(_) | Error::NoSuchToken(_) => 404,
            Error::MethodNotAllowed => 405,
            Error::KeyTaken(_) | Error::NameTaken(_) => 409,
            Error::TooLarge => 413,
            Error::RateLimited => 429,
            Error::Busy | Error::AddressPoolExhausted(_) | Error::Lagging(_) => 503,
            _ => 500,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
