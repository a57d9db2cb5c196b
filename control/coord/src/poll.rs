//! The netmap long poll (`GET /v1/netmap?since=V&base=T`): what a member asks for and how
//! long it waits.

use tm_cluster::{Origin, Stamp, VersionVector};

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

    /// Waits until this coordinator has seen everything `held` names (the version vector of
    /// the netmap the member last applied, from any coordinator), then until the netmap
    /// version exceeds `since`, both within one `long_poll`; then returns the current netmap
    /// as the registered node `name` receives it (JSON; a delta from `base` when possible,
    /// see `Coordinator::netmap_json_for_name`). Without `since` and with nothing to catch up
    /// it answers at once, in full. If `long_poll` passes before it has caught up with
    /// `held`: [`Error::Lagging`] (503), so the member asks another coordinator.
    pub async fn netmap_wait(
        &self,
        name: &str,
        since: Option<u64>,
        base: Option<&str>,
        held: Option<&VersionVector>,
    ) -> Result<Vec<u8>, Error> {
        struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let deadline = tokio::time::sleep(self.shared.cfg.long_poll);
        tokio::pin!(deadline);
        let behind = |me: &Self, want: &VersionVector| {
            !me.replica().store().version_vector().dominates(want)
        };
        if let Some(want) = held.filter(|w| behind(self, w)) {
            self.shared
                .long_polls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _waiting = Waiting(&self.shared.long_polls);
            // Subscribed before each check, so no advance between check and wait is missed.
            let mut rx = self.shared.seen.subscribe();
            tracing::debug!(
                node = name,
                "holding a netmap poll until this coordinator catches up"
            );
            loop {
                rx.borrow_and_update();
                if !behind(self, want) {
                    break;
                }
                tokio::select! {
                    r = rx.changed() => if r.is_err() { return Err(Error::Internal) },
                    _ = &mut deadline => {
                        return Err(Error::Lagging(format!(
                            "this coordinator has not caught up within {} s with the netmap \
                             {name} holds: ask another coordinator",
                            self.shared.cfg.long_poll.as_secs()
                        )))
                    }
                }
            }
        }
        if let Some(since) = since {
            self.shared
                .long_polls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _waiting = Waiting(&self.shared.long_polls);
            let mut rx = self.shared.version.subscribe();
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
        Ok(self.netmap_json_for_name(name, since.and(base)))
    }

    /// Netmap long polls waiting for a change now (load tools wait for every member's).
    pub fn long_polls(&self) -> usize {
        self.shared
            .long_polls
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Most coordinators a `vv=` query parameter may name (about 9 KiB, inside the 16 KiB request
/// head; a member whose vector is longer does not send it and relies on its own check).
pub const MAX_VV_ENTRIES: usize = 256;

/// The `vv=` query parameter of version vector `vv`: per coordinator `ORIGIN-WALL-LOGICAL`
/// (hex), joined by `.` (about 35 bytes per coordinator).
pub fn vv_param(vv: &VersionVector) -> String {
    let mut out = String::new();
    for s in vv.0.values() {
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(&format!("{:x}-{:x}-{:x}", s.origin.0, s.wall_ms, s.logical));
    }
    out
}

/// The version vector of a query's `vv=` parameter (`None` without one).
pub(crate) fn parse_vv(query: &str) -> Result<Option<VersionVector>, Error> {
    let Some(v) = query.split('&').find_map(|kv| kv.strip_prefix("vv=")) else {
        return Ok(None);
    };
    let bad = || Error::Malformed(format!("bad vv={:?}", &v[..v.len().min(64)]));
    let mut vv = VersionVector::default();
    if v.is_empty() {
        return Ok(Some(vv));
    }
    for (i, e) in v.split('.').enumerate() {
        if i >= MAX_VV_ENTRIES {
            return Err(bad());
        }
        let mut f = e.split('-');
        let mut next = || f.next().ok_or_else(bad);
        let origin = u64::from_str_radix(next()?, 16).map_err(|_| bad())?;
        let wall_ms = u64::from_str_radix(next()?, 16).map_err(|_| bad())?;
        let logical = u32::from_str_radix(next()?, 16).map_err(|_| bad())?;
        if f.next().is_some() {
            return Err(bad());
        }
        vv.observe(Stamp {
            wall_ms,
            logical,
            origin: Origin(origin),
        });
    }
    Ok(Some(vv))
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

    #[test]
    fn vv_parameter_round_trips_and_bad_ones_are_refused() {
        let mut vv = VersionVector::default();
        for (o, w, l) in [(1u64, 1_700_000_000_000u64, 0u32), (u64::MAX, 5, 7)] {
            vv.observe(Stamp {
                wall_ms: w,
                logical: l,
                origin: Origin(o),
            });
        }
        let q = format!("since=3&vv={}&base=x", vv_param(&vv));
        assert_eq!(parse_vv(&q).expect("parses"), Some(vv));
        assert_eq!(parse_vv("since=3").expect("none"), None);
        assert_eq!(
            parse_vv("vv=").expect("empty"),
            Some(VersionVector::default())
        );
        for bad in [
            "vv=1-2",
            "vv=1-2-3-4",
            "vv=x-1-1",
            "vv=1-1-1ffffffff",
            "vv=1-1-1.",
        ] {
            assert!(matches!(parse_vv(bad), Err(Error::Malformed(_))), "{bad}");
        }
        let many = vec!["1-1-1"; MAX_VV_ENTRIES + 1].join(".");
        assert!(parse_vv(&format!("vv={many}")).is_err());
    }
}
