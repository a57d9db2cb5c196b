//! Services a node runs for the other nodes (issue 21): a node declares them
//! (`POST /v1/services`, or [`Coordinator::set_services`] on the coordinator node itself) and
//! every netmap lists them per peer, so that clients ask only nodes that run one (`tunnelmesh
//! docker ps` fans out to the nodes whose Docker agent answers on the mesh).

use crate::{Coordinator, Error};

/// The services a node may declare.
pub const SERVICES: &[&str] = &["docker"];

impl Coordinator {
    /// Replaces the services the node `name` (authenticated) declares. Unknown names are
    /// refused (nothing changes).
    pub fn set_services(&self, name: &str, services: Vec<String>) -> Result<(), Error> {
        let mut services = services;
        services.sort();
        services.dedup();
        if let Some(bad) = services.iter().find(|s| !SERVICES.contains(&s.as_str())) {
            return Err(Error::Malformed(format!(
                "unknown service {bad:?}: a node declares only {}",
                SERVICES.join(", ")
            )));
        }
        self.commit(|s| {
            let n = s.nodes.get_mut(name).ok_or(Error::UnknownClient)?;
            n.services = services;
            Ok(((), true))
        })
    }
}
