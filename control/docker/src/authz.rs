//! Who is calling and what they may do (sans-IO): every decision is [`tm_policy::decide()`] on
//! the node's compiled artifact, per call, on the node that owns the container.

use std::net::IpAddr;

use tm_policy::{Artifact, Identity, Request, Verb};

use crate::proto::Container;

/// The caller at mesh address `ip`: the member whose mesh address it is. The agent accepts
/// connections only through the tunnel, where cryptokey routing guarantees that a packet's
/// source address belongs to the peer whose key decrypted it. `None`: not a member.
pub fn identity_of(art: &Artifact, ip: IpAddr) -> Option<Identity> {
    let ip = ip.to_canonical();
    art.nodes
        .iter()
        .find(|(_, n)| n.addrs.contains(&ip))
        .map(|(k, _)| Identity::Node(k.clone()))
}

/// How the audit log names a caller: `node gamma`, `local root`.
pub fn caller_name(art: &Artifact, who: &Identity) -> String {
    match who {
        Identity::Node(k) => match art.nodes.get(k) {
            Some(n) => format!("node {}", n.name),
            None => who.to_string(),
        },
        _ => who.to_string(),
    }
}

/// `Ok` if `who` may do `verb` on `node/container`; else the decision's one line, which names
/// the capability and verb (`not allowed: tunnelmesh.io/cap/docker restart on beta/web ...`).
pub fn check(
    art: &Artifact,
    who: &Identity,
    node: &str,
    container: &str,
    verb: Verb,
) -> Result<(), String> {
    let d = tm_policy::decide(
        art,
        who,
        &Request::Docker {
            node,
            container,
            verb,
        },
    );
    if d.allow {
        Ok(())
    } else {
        Err(d.message())
    }
}

/// Finds the container `q` names: its exact name, else an ID prefix that only one container
/// has.
pub fn resolve<'a>(list: &'a [Container], node: &str, q: &str) -> Result<&'a Container, String> {
    if let Some(c) = list.iter().find(|c| c.name == q) {
        return Ok(c);
    }
    let by_id: Vec<&Container> = if q.len() >= 3 && q.bytes().all(|b| b.is_ascii_hexdigit()) {
        list.iter().filter(|c| c.id.starts_with(q)).collect()
    } else {
        Vec::new()
    };
    match by_id.as_slice() {
        [one] => Ok(one),
        [] => Err(format!("no container {q:?} on node {node}")),
        many => {
            let names: Vec<&str> = many.iter().map(|c| c.name.as_str()).collect();
            Err(format!(
                "{q:?} matches several containers on node {node}: {} (give a name)",
                names.join(", ")
            ))
        }
    }
}

/// Resolves `q` and decides `verb` on the container's name. A caller that may not do `verb`
/// on a container named `q` learns nothing about which containers exist.
pub fn authorize<'a>(
    art: &Artifact,
    who: &Identity,
    node: &str,
    list: &'a [Container],
    q: &str,
    verb: Verb,
) -> Result<&'a Container, String> {
    match resolve(list, node, q) {
        Ok(c) => check(art, who, node, &c.name, verb).map(|()| c),
        Err(e) => {
            check(art, who, node, q, verb)?;
            Err(e)
        }
    }
}

/// The containers `who` may see with `verb` (`list` for ps, `stats` for stats of all). A
/// caller who may see none of several is refused with the first decision's line.
pub fn visible(
    art: &Artifact,
    who: &Identity,
    node: &str,
    list: &[Container],
    verb: Verb,
) -> Result<Vec<Container>, String> {
    let mut first_denial = None;
    let mut out = Vec::new();
    for c in list {
        match check(art, who, node, &c.name, verb) {
            Ok(()) => out.push(c.clone()),
            Err(e) => {
                first_denial.get_or_insert(e);
            }
        }
    }
    match first_denial {
        Some(e) if out.is_empty() => Err(e),
        _ => Ok(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use tm_policy::{compile, parse_policy, Inventory};

    const POLICY: &str = r#"{
      "default": "deny",
      "groups": {"group:ops": ["oper"]},
      "tagOwners": {"tag:web": [], "tag:help": [], "tag:admin": []},
      "grants": [
        {"src": ["tag:help"], "dst": ["tag:web"],
         "app": {"tunnelmesh.io/cap/docker": [{"containers": ["*"], "verbs": ["helpdesk"]}]}},
        {"src": ["group:ops"], "dst": ["tag:web"],
         "app": {"tunnelmesh.io/cap/docker": [{"containers": ["web*"], "verbs": ["operator"]}]}},
        {"src": ["tag:admin"], "dst": ["tag:web"],
         "app": {"tunnelmesh.io/cap/docker": [{"containers": ["*"], "verbs": ["admin"]}]}}
      ]
    }"#;

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 99, 0, n))
    }

    fn art() -> Artifact {
        let inv = Inventory::default()
            .with_node("k-beta", "beta", &["tag:web"], &[ip(2)])
            .with_node("k-help", "help", &["tag:help"], &[ip(3)])
            .with_node("k-oper", "oper", &[], &[ip(4)])
            .with_node("k-adm", "adm", &["tag:admin"], &[ip(5)]);
        let p = parse_policy("policy.hujson", POLICY.as_bytes()).unwrap();
        compile(&p, &inv).unwrap()
    }

    fn ctr(name: &str, id: &str) -> Container {
        Container {
            name: name.into(),
            id: id.into(),
            image: "busybox".into(),
            state: "running".into(),
            status: "Up".into(),
        }
    }

    #[test]
    fn callers_are_members_by_mesh_address() {
        let a = art();
        let who = identity_of(&a, ip(3)).unwrap();
        assert_eq!(caller_name(&a, &who), "node help");
        // An IPv4-mapped form is the same address.
        assert_eq!(
            identity_of(&a, "::ffff:10.99.0.3".parse().unwrap()),
            Some(who)
        );
        assert_eq!(identity_of(&a, ip(77)), None);
        assert_eq!(identity_of(&a, "192.168.1.3".parse().unwrap()), None);
        assert_eq!(caller_name(&a, &Identity::LocalRoot), "local root");
    }

    #[test]
    fn role_matrix() {
        let a = art();
        let help = identity_of(&a, ip(3)).unwrap();
        let oper = identity_of(&a, ip(4)).unwrap();
        let adm = identity_of(&a, ip(5)).unwrap();
        assert!(check(&a, &help, "beta", "web", Verb::Logs).is_ok());
        let e = check(&a, &help, "beta", "web", Verb::Restart).unwrap_err();
        assert!(
            e.contains("not allowed: tunnelmesh.io/cap/docker restart on beta/web"),
            "{e}"
        );
        assert!(check(&a, &oper, "beta", "web", Verb::Restart).is_ok());
        assert!(check(&a, &oper, "beta", "db", Verb::Restart).is_err());
        let e = check(&a, &oper, "beta", "web", Verb::Exec).unwrap_err();
        assert!(e.contains("tunnelmesh.io/cap/docker exec"), "{e}");
        assert!(check(&a, &adm, "beta", "db", Verb::Exec).is_ok());
        // Only nodes the grant's dst selects.
        assert!(check(&a, &adm, "help", "db", Verb::List).is_err());
        // Local root (the node's own control socket) may do anything.
        assert!(check(&a, &Identity::LocalRoot, "beta", "x", Verb::Exec).is_ok());
    }

    #[test]
    fn a_removed_node_is_refused() {
        let a = art();
        let help = identity_of(&a, ip(3)).unwrap();
        let inv = Inventory::default().with_node("k-beta", "beta", &["tag:web"], &[ip(2)]);
        let p = parse_policy("policy.hujson", POLICY.as_bytes()).unwrap();
        let after = compile(&p, &inv).unwrap();
        let e = check(&after, &help, "beta", "web", Verb::Logs).unwrap_err();
        assert!(e.contains("not in the mesh"), "{e}");
    }

    #[test]
    fn resolving_names_and_ids() {
        let l = vec![
            ctr("web", "abc123"),
            ctr("web2", "abd456"),
            ctr("db", "ffff00"),
        ];
        assert_eq!(resolve(&l, "beta", "web").unwrap().id, "abc123");
        assert_eq!(resolve(&l, "beta", "abc").unwrap().name, "web");
        let e = resolve(&l, "beta", "ab").unwrap_err();
        assert!(e.contains("no container"), "{e}");
        let l2 = vec![ctr("x", "abc1"), ctr("y", "abc2")];
        let e = resolve(&l2, "beta", "abc").unwrap_err();
        assert!(e.contains("matches several") && e.contains("x, y"), "{e}");
        assert!(resolve(&l, "beta", "nope")
            .unwrap_err()
            .contains("no container \"nope\" on node beta"));
    }

    #[test]
    fn authorization_hides_what_is_not_granted() {
        let a = art();
        let oper = identity_of(&a, ip(4)).unwrap();
        let l = vec![ctr("web", "abc123"), ctr("db", "ffff00")];
        // By ID prefix: decided on the resolved name.
        assert!(authorize(&a, &oper, "beta", &l, "ffff", Verb::Stop).is_err());
        assert_eq!(
            authorize(&a, &oper, "beta", &l, "abc1", Verb::Stop)
                .unwrap()
                .name,
            "web"
        );
        // Not granted and absent: the denial, not "no container".
        let e = authorize(&a, &oper, "beta", &l, "dbx", Verb::Stop).unwrap_err();
        assert!(e.starts_with("not allowed"), "{e}");
        let e = authorize(&a, &oper, "beta", &l, "webx", Verb::Stop).unwrap_err();
        assert!(e.contains("no container"), "{e}");
        // ps shows what may be listed; none of several: refused.
        let v = visible(&a, &oper, "beta", &l, Verb::List).unwrap();
        assert_eq!(v.len(), 1);
        let stranger = identity_of(&a, ip(2)).unwrap();
        let e = visible(&a, &stranger, "beta", &l, Verb::List).unwrap_err();
        assert!(e.contains("tunnelmesh.io/cap/docker list"), "{e}");
        assert!(visible(&a, &stranger, "beta", &[], Verb::List)
            .unwrap()
            .is_empty());
    }
}
