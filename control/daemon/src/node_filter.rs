//! The node's packet-filter hooks (a child of `node`, to keep node.rs small): the members the
//! policy is compiled against, sending `SetFilter` when the policy or the peers change, and
//! the `filter` API commands.

use super::Node;
use crate::filter::Member;
use tm_api::{Command, Response};

impl Node {
    /// This node and every peer (static and mesh), as policy principals.
    fn filter_members(&self) -> Vec<Member> {
        let mut v = vec![Member {
            id: None,
            key: self.public,
            name: self.cfg.name.clone(),
            addrs: vec![self.cfg.address().addr],
        }];
        for (id, p) in &self.peers {
            v.push(Member {
                id: Some(*id),
                key: p.cfg.public_key,
                name: p.cfg.name.clone(),
                addrs: p
                    .cfg
                    .allowed_ips
                    .iter()
                    .filter(|c| c.len == if c.addr.is_ipv4() { 32 } else { 128 })
                    .map(|c| c.addr)
                    .collect(),
            });
        }
        v
    }

    /// Brings the dataplane's filter up to date (`force`: a fresh dataplane).
    pub(super) fn refresh_filter(&mut self, force: bool) {
        let members = self.filter_members();
        for m in self.filter.update(&self.public, &members, force) {
            self.send(m);
        }
    }

    /// The `filter` commands.
    pub(super) fn filter_api(&mut self, c: &Command) -> Response {
        match c {
            Command::FilterLoad { file, text } => {
                let members = self.filter_members();
                if let Err(e) = self.filter.load(file, text, &members) {
                    return Response::err(e);
                }
                tracing::info!(file = %file, "local policy loaded into the packet filter");
                self.refresh_filter(false);
            }
            Command::FilterClear => {
                self.filter.clear();
                self.refresh_filter(false);
            }
            Command::FilterTest { src, dst } => {
                return match self.filter.test(src, dst) {
                    Ok(d) => Response::ok(&d),
                    Err(e) => Response::err(e),
                }
            }
            _ => {}
        }
        Response::ok(&self.filter.info().unwrap_or_default())
    }
}
