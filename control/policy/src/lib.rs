//! `tm-policy`: the policy language and its compiler. Sans-IO: bytes in, decisions out; no
//! files, sockets or clocks.
//!
//! One policy file (HuJSON, a Tailscale-compatible subset plus a `deny` list and our
//! `tunnelmesh.io/cap/*` application capabilities) is compiled once into an [`Artifact`]; S3,
//! NFS, the coordinator's admin API, the Docker agent, `policy explain` and `filter test` all
//! call [`decide()`] on it, and the dataplane packet filter uses [`Artifact::filter_for`], which
//! agrees with `decide` by construction and by test. Precedence: **deny beats allow beats the
//! default**.
//!
//! Call order (the coordinator):
//! 1. [`load`] on `policy set`/`check`: parse ([`parse_policy`]), compile against the current
//!    [`Inventory`] ([`compile()`]), run the file's tests ([`check()`]); any error or failed test
//!    refuses the whole file.
//! 2. Ship [`Artifact`] (or [`Artifact::project`] per node) with [`Artifact::hash`] in the
//!    netmap; recompile with the stored policy on every node/tag/token change.
//! 3. Enforcers: authenticate, build an [`Identity`], call [`decide()`] per request.
//!
//! This crate never authenticates anyone, never reads the policy file, and never decides who
//! may *change* the policy beyond answering `Request::Admin`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod caps;
pub mod check;
pub mod compile;
pub mod decide;
pub mod filter;
pub mod golden;
pub mod hujson;
pub mod identity;
pub mod model;
pub mod selector;

pub use caps::{Access, Verb, CAP_ADMIN, CAP_DOCKER, CAP_NFS, CAP_S3, SYSTEM_BUCKET};
pub use check::{check, TestFailure};
pub use compile::{compile, lint, Artifact, PolicyHash};
pub use decide::{decide, explain, Decision, Explanation, NfsOp, Request, S3Op, Target};
pub use filter::{filter_test, FilterTable, PolicyClass};
pub use identity::{
    validate_node_name, Identity, Inventory, NodeInfo, NodeKey, ServiceNeed, ServicePort, TokenId,
    TokenInfo, DOCKER_AGENT_PORT,
};
pub use model::{parse_policy, DefaultAction, Policy};
pub use selector::SourceRef;

/// Everything that can be wrong with a policy file or an inventory. Each displays as one line
/// naming the place (`file:line:col: message`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file is not HuJSON (or too large, or not UTF-8).
    #[error("{file}:{line}:{col}: {msg}")]
    Syntax {
        /// File name.
        file: String,
        /// Line.
        line: u32,
        /// Column.
        col: u32,
        /// What.
        msg: String,
    },
    /// The file is HuJSON but not a valid policy (unknown field, tag, group, capability, ...).
    #[error("{file}:{line}:{col}: {msg}")]
    Invalid {
        /// File name.
        file: String,
        /// Line.
        line: u32,
        /// Column.
        col: u32,
        /// What.
        msg: String,
    },
    /// The inventory cannot be compiled against (duplicate or malformed names or tags).
    #[error("inventory: {0}")]
    Inventory(String),
    /// An artifact could not be decoded.
    #[error("policy artifact: {0}")]
    Artifact(String),
}

/// Why [`load`] refused a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Syntax, validation or inventory error.
    Error(Error),
    /// The file's own tests failed (each with its assertion and the decision it got).
    TestsFailed(Vec<TestFailure>),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Error(e) => write!(f, "{e}"),
            Refusal::TestsFailed(v) => {
                for (i, t) in v.iter().enumerate() {
                    if i > 0 {
                        writeln!(f)?;
                    }
                    write!(f, "{t}")?;
                }
                Ok(())
            }
        }
    }
}

/// A policy file that passed: the parsed policy, its artifact, its hash and lint warnings.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The parsed policy (tests included).
    pub policy: Policy,
    /// The compiled artifact.
    pub artifact: Artifact,
    /// `artifact.hash()`.
    pub hash: PolicyHash,
    /// Legal but suspicious things (see [`lint()`]).
    pub warnings: Vec<String>,
}

/// Parses, checks node names against the inventory ([`Policy::check_names`]), compiles and
/// tests a policy file: what `policy set` and `policy check` do. (At coordinator start, a
/// stored policy is loaded with [`parse_policy`] + [`compile()`] even if its tests now fail, and
/// [`check()`]'s failures are logged loudly.)
/// Pass the file's base name as `file` so that rule references and the hash do not depend on
/// the directory it was set from.
pub fn load(file: &str, src: &[u8], inv: &Inventory) -> Result<Loaded, Refusal> {
    let policy = parse_policy(file, src).map_err(Refusal::Error)?;
    policy.check_names(inv).map_err(Refusal::Error)?;
    let artifact = compile(&policy, inv).map_err(Refusal::Error)?;
    let failures = check(&policy, inv).map_err(Refusal::Error)?;
    if !failures.is_empty() {
        return Err(Refusal::TestsFailed(failures));
    }
    let warnings = lint(&policy, inv);
    Ok(Loaded {
        hash: artifact.hash(),
        policy,
        artifact,
        warnings,
    })
}
