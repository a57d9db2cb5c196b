//! The netmap long poll (`GET /v1/netmap?since=V&base=T`): what a member asks for and how
//! long it waits.

use crate::server::json;
use crate::{Coordinator, Error};

impl Coordinator {
    /// The netmap as the registered node `name` receives it, as JSON; with `base` (the
    /// delta token (`delta.token`) of the netmap the member holds) a delta from it when this coordinator can
    /// make one (`delta.rs`), else the full netmap. The common part is serialised once per
    /// generation (and per base), the node's policy projection per node only when a policy
    /// file is set.
    pub(crate) fn netmap_json_for_name(&self, name: &str, base: Option<&str>) -> Vec<u8> {
        let epoch = self.shared.epoch.load(std::sync::atomic::Ordering::Acquire);
        let art = self.policy();
        let (g, delta) = {
            let mut feed = self
                .shared
                .netmap_cache
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let g = match feed.current(epoch, &art) {
                Some(g) => g,
                None => {
                    let nm = self.netmap();
                    feed.advance(epoch, art, nm)
                }
            };
            let delta = base.and_then(|b| feed.delta(b));
            (g, delta)
        };
        let me = || {
            self.lock()
                .state
                .nodes
                .get(name)
                .map(|n| crate::policy::node_key(&n.public_key))
        };
        let (open, shared_policy) = match &delta {
            Some(d) => (d.open.clone(), d.shared_policy.clone()),
            None => (g.open.clone(), g.shared_policy.clone()),
        };
        let own;
        let policy: &[u8] = match &shared_policy {
            Some(p) => p,
            None => {
                own = match (me(), &delta) {
                    (Some(k), Some(d)) => json(&d.policy_for(&g.art, &k)),
                    (Some(k), None) => json(&g.art.project(&k)),
                    (None, _) => b"null".to_vec(),
                };
                &own
            }
        };
        let mut out = Vec::with_capacity(open.len() + policy.len() + 12);
        out.extend_from_slice(&open);
        out.extend_from_slice(b",\"policy\":");
        out.extend_from_slice(policy);
        out.push(b'}');
        out
    }

    /// Waits until the netmap version exceeds `since` (or `long_poll` passes), then returns
    /// the current netmap as the registered node `name` receives it (JSON; a delta from `base`
    /// when possible, see `Coordinator::netmap_json_for_name`). `None` answers at once, in
    /// full.
    pub async fn netmap_wait(&self, name: &str, since: Option<u64>, base: Option<&str>) -> Vec<u8> {
        if let Some(since) = since {
            struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);
            impl Drop for Waiting<'_> {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            self.shared
                .long_polls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _waiting = Waiting(&self.shared.long_polls);
            let mut rx = self.shared.version.subscribe();
            let deadline = tokio::time::sleep(self.shared.cfg.long_poll);
            tokio::pin!(deadline);
            loop {
                if *rx.borrow_and_update() > since {
                    break;
                }
                tokio::select! {
                    r = rx.changed() => if r.is_err() { break },
                    _ = &mut deadline => break,
                }
            }
        }
        self.netmap_json_for_name(name, since.and(base))
    }

    /// Netmap long polls waiting for a change now (load tools wait for every member's).
    pub fn long_polls(&self) -> usize {
        self.shared
            .long_polls
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

pub(crate) fn parse_since(query: &str) -> Result<Option<u64>, Error> {
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        if let Some(v) = kv.strip_prefix("since=") {
            return v
                .parse()
                .map(Some)
                .map_err(|_| Error::Malformed(format!("bad since={v:?}")));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_parsing() {
        assert_eq!(parse_since("").expect("ok"), None);
        assert_eq!(parse_since("a=1&since=7").expect("ok"), Some(7));
        assert!(parse_since("since=x").is_err());
    }
}
