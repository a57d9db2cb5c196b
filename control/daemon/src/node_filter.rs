//! The node's packet-filter hooks (a child of `node`, to keep node.rs small): the members the
//! policy is compiled against, sending `SetFilter` when the policy or the peers change, and
//! the `filter` API commands.

use super::Node;
use crate::filter::Member;
use tm_api::{Command, Response};
use tm_wire::ipc::DpMsg;

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

    /// A sampled drop from the dataplane becomes a `filter log` line.
    pub(super) fn filter_drop(&mut self, m: DpMsg) {
        let DpMsg::FilterDrop {
            peer,
            reason,
            inbound,
            proto,
            src,
            dst,
            sport,
            dport,
        } = m
        else {
            return;
        };
        let name = self
            .peers
            .get(&peer)
            .map_or_else(|| format!("peer{peer}"), |p| p.cfg.name.clone());
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let proto = match proto {
            1 => "icmp".to_string(),
            6 => "tcp".to_string(),
            17 => "udp".to_string(),
            58 => "icmpv6".to_string(),
            n => n.to_string(),
        };
        let dir = if inbound { "in" } else { "out" };
        let at = |a: std::net::IpAddr, p: u16| match a {
            std::net::IpAddr::V6(_) => format!("[{a}]:{p}"),
            _ => format!("{a}:{p}"),
        };
        let line = format!(
            "{secs} {name} {dir} {proto} {} -> {} {}",
            at(src, sport),
            at(dst, dport),
            reason.name()
        );
        let log = &mut self.filter.log;
        if log.len() >= crate::filter::LOG_LINES {
            log.pop_front();
        }
        log.push_back((name, line));
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
                if let Err(e) = self.filter.clear() {
                    return Response::err(e);
                }
                self.refresh_filter(false);
            }
            Command::FilterLog { peer } => {
                let lines: Vec<&String> = self
                    .filter
                    .log
                    .iter()
                    .filter(|(n, _)| peer.as_ref().is_none_or(|p| p == n))
                    .map(|(_, l)| l)
                    .collect();
                return Response::ok(&lines);
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
