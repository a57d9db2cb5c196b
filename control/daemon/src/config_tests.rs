use super::*;

const KEY_A: &str = "YFVnNSsOhfOq/mL8U9UxWNjbSy4yl39zJCTNu7Qtp3s=";
const KEY_B: &str = "aPxGwq8zERHQ3Q1cOZFdJ+cvJX5Ba4iXoqD5ZPRxzQ4=";

fn base(peers: &str) -> String {
    format!("name: alpha\naddress: 100.64.0.1/10\ndata_dir: /tmp/x\npeers:\n{peers}")
}

fn peer(name: &str, key: &str, ips: &str) -> String {
    format!("  - name: {name}\n    public_key: \"{key}\"\n    allowed_ips: [{ips}]\n")
}

fn e(text: &str) -> String {
    NodeConfig::parse(text).unwrap_err().to_string()
}

#[test]
fn valid_config_parses_with_defaults() {
    let c = NodeConfig::parse(&base(
        &(peer("beta", KEY_A, "100.64.0.2/32")
            + "    endpoint: 192.0.2.2:51820\n    persistent_keepalive: 25\n"),
    ))
    .unwrap();
    assert_eq!(c.interface, DEFAULT_INTERFACE);
    assert_eq!(c.listen_port, 51820);
    assert_eq!(c.mtu, 1420);
    assert_eq!(
        c.peers[0].endpoint,
        Some("192.0.2.2:51820".parse().unwrap())
    );
    assert_eq!(c.peers[0].persistent_keepalive, 25);
    assert_eq!(c.key, KeySource::Default);
    assert!(c.routes().is_empty(), "100.64.0.2 is inside the /10");
}

#[test]
fn routes_for_prefixes_outside_own_subnet() {
    let c = NodeConfig::parse(&base(&peer("beta", KEY_A, "100.64.0.2/32, 10.9.0.0/16"))).unwrap();
    assert_eq!(c.routes(), vec![Cidr::parse("10.9.0.0/16").unwrap()]);
}

#[test]
fn errors_name_the_field() {
    assert!(e("name: a\naddress: 1.2.3.4/8\nbogus: 1\n").contains("unknown field `bogus`"));
    assert!(e("name: a\naddress: 100.64.0.300/10\n").starts_with("address: invalid CIDR"));
    assert!(e("name: a\naddress: 100.64.0.1/33\n").starts_with("address: invalid CIDR"));
    assert!(e(&base(&peer("beta", KEY_A, "100.64.0.2/40")))
        .starts_with("peers[0].allowed_ips[0]: invalid CIDR"));
    let two = peer("beta", KEY_A, "100.64.0.0/24") + &peer("gamma", KEY_B, "100.64.0.7/32");
    let m = e(&base(&two));
    assert!(
        m.starts_with(
            "peers[1].allowed_ips[0]: 100.64.0.7/32 overlaps 100.64.0.0/24 of peer 'beta'"
        ),
        "{m}"
    );
    let dup = peer("beta", KEY_A, "100.64.0.2/32") + &peer("gamma", KEY_A, "100.64.0.3/32");
    assert!(e(&base(&dup)).starts_with("peers[1].public_key: same key as peer 'beta'"));
    assert!(e(&base(&peer("beta", "nope", "100.64.0.2/32"))).starts_with("peers[0].public_key:"));
    let m = e("name: a\naddress: 100.64.0.1/10\nprivate_key_file: /nonexistent/k\n");
    assert!(
        m.starts_with("private_key_file: cannot read /nonexistent/k"),
        "{m}"
    );
    assert!(e("name: a b\naddress: 100.64.0.1/10\n").starts_with("name:"));
    assert!(e("name: a\naddress: 100.64.0.1/10\nmtu: 100\n").starts_with("mtu:"));
    assert!(e("name: a\naddress: 100.64.0.1/10\nworkers: 0\n").starts_with("workers:"));
    assert!(e("name: a\naddress: 100.64.0.1/10\nworkers: 65\n").starts_with("workers:"));
    assert!(
        e("name: a\naddress: 100.64.0.1/10\ninterface: waytoolonginterfacename\n")
            .starts_with("interface:")
    );
    for m in [
        e("name: a\naddress: 100.64.0.1/10\nbogus: 1\n"),
        e(&base(&two)),
    ] {
        assert!(!m.contains('\n'), "one line: {m}");
    }
}

#[test]
fn s3_section() {
    let c =
        NodeConfig::parse("name: a\naddress: 100.64.0.1/10\ndata_dir: /d\ns3: {max_size: 10GB}\n")
            .unwrap();
    let s = c.s3.unwrap();
    assert_eq!(s.listen, None, "resolved to <address>:8080 at start");
    assert_eq!(s.data_dir, PathBuf::from("/d/s3"));
    assert_eq!(s.max_size, Some(10_000_000_000));
    assert_eq!(s.region, "us-east-1");
    assert!(!s.encrypt_at_rest);
    assert_eq!(s.master_key_file, PathBuf::from("/d/s3-master.key"));
    let c = NodeConfig::parse(
        "name: a\naddress: 100.64.0.1/10\ns3: {encrypt_at_rest: true, master_key_file: /k}\n",
    )
    .unwrap()
    .s3
    .unwrap();
    assert!(c.encrypt_at_rest);
    assert_eq!(c.master_key_file, PathBuf::from("/k"));
    let c = NodeConfig::parse("name: a\naddress: 100.64.0.1/10\ns3: {region: eu-west-1}\n");
    assert_eq!(c.unwrap().s3.unwrap().region, "eu-west-1");
    assert!(e("name: a\naddress: 100.64.0.1/10\ns3: {region: EU}\n").starts_with("s3.region:"));
    assert!(e("name: a\naddress: 100.64.0.1/10\ns3: {listen: nope}\n").starts_with("s3.listen:"));
    assert!(e("name: a\naddress: 100.64.0.1/10\ns3: {max_size: 3XB}\n").starts_with("s3.max_size:"));
}

#[test]
fn s3_replication() {
    use tm_storage::replication::Mode;
    let r = |y: &str| {
        NodeConfig::parse(&format!("name: a\naddress: 100.64.0.1/10\ns3: {y}\n"))
            .unwrap()
            .s3
            .unwrap()
            .replication
    };
    assert_eq!((r("{}").factor, r("{}").mode), (2, Mode::Available));
    let c = r("{replication: {factor: 3, mode: consistent}}");
    assert_eq!((c.factor, c.mode), (3, Mode::Consistent));
    let bad = |y: &str| e(&format!("name: a\naddress: 100.64.0.1/10\ns3: {y}\n"));
    assert!(bad("{replication: {factor: 0}}").starts_with("s3.replication.factor:"));
    assert!(bad("{replication: {mode: eventual}}").starts_with("s3.replication.mode:"));
    assert!(bad("{replication: {copies: 2}}").contains("copies"));
}

#[test]
fn shipped_examples_parse() {
    let c = NodeConfig::parse(include_str!("../../../examples/coordinator.yaml")).unwrap();
    assert!(c.coordinator.is_some() && c.s3.is_some() && c.nfs.is_some());
    let p = NodeConfig::parse(include_str!("../../../examples/peer.yaml")).unwrap();
    assert!(p.coordinator.is_none() && p.address.is_none() && p.s3.is_none());
    let n = NodeConfig::parse(include_str!("../../../examples/node.yaml")).unwrap();
    assert!(n.address.is_some());
    assert_eq!(n.workers, Some(2));
    assert_eq!(p.workers, None);
}

#[test]
fn coordinator_and_dns_sections() {
    let c = NodeConfig::parse(
        "name: seed\ndata_dir: /d\ncoordinator: {enabled: true, listen: \":9443\"}\n\
         dns: {domain: corp, aliases: {db: seed}}\n",
    )
    .unwrap();
    let co = c.coordinator.as_ref().unwrap();
    assert_eq!(co.listen, "0.0.0.0:9443".parse().unwrap());
    assert!(c.address.is_none());
    assert!(c.s3.is_some(), "a coordinator stores by default");
    let d = c.dns.unwrap();
    assert_eq!(d.listen, DEFAULT_DNS_LISTEN.parse().unwrap());
    assert_eq!(d.domain, "corp");
    assert_eq!(d.aliases.get("db").map(String::as_str), Some("seed"));
    assert_eq!(c.mesh_cidr, "100.64.0.0/10");
    assert!(d.manage_system, "on by default");
    let c = NodeConfig::parse("name: p\ndns: {manage_system: false}\n").unwrap();
    assert!(!c.dns.unwrap().manage_system);
    let c = NodeConfig::parse("name: p\ndns: {enabled: false}\n").unwrap();
    assert!(c.dns.is_none() && c.s3.is_none() && c.coordinator.is_none());
    let c = NodeConfig::parse("name: s\ncoordinator: {}\ns3: {enabled: false}\n").unwrap();
    assert!(c.coordinator.is_some() && c.s3.is_none());
    assert!(e("name: a\ncoordinator: {listen: x}\n").starts_with("coordinator.listen:"));
    assert!(e("name: a\nmesh_cidr: 10.0.0.0/33\n").starts_with("mesh_cidr:"));
    assert!(e("name: a\ndns: {aliases: {\"a b\": x}}\n").starts_with("dns.aliases"));
    assert!(e("name: a\ndns: {listen: 5353}\n").starts_with("dns.listen:"));
}

#[test]
fn cidr_math() {
    let a = Cidr::parse("10.0.0.0/8").unwrap();
    assert!(a.covers(Cidr::parse("10.1.0.0/16").unwrap()));
    assert!(!Cidr::parse("10.1.0.0/16").unwrap().covers(a));
    assert!(a.overlaps(Cidr::parse("10.1.2.3/32").unwrap()));
    assert!(!a.overlaps(Cidr::parse("11.0.0.0/8").unwrap()));
    assert!(!a.overlaps(Cidr::parse("::/0").unwrap()));
    assert_eq!(
        Cidr::parse("10.1.2.3/8").unwrap().network().to_string(),
        "10.0.0.0/8"
    );
    assert_eq!(
        Cidr::parse("fd00::1/64").unwrap().network().to_string(),
        "fd00::/64"
    );
    assert!(Cidr::parse("0.0.0.0/0")
        .unwrap()
        .contains("1.2.3.4".parse().unwrap()));
}

#[test]
fn docker_section() {
    let c = NodeConfig::parse("docker: {enabled: false}\n").unwrap();
    assert!(c.docker.is_none());
    let c =
        NodeConfig::parse("docker: {enabled: true, socket: /nonexistent/docker.sock}\n").unwrap();
    assert_eq!(
        c.docker.unwrap().socket,
        PathBuf::from("/nonexistent/docker.sock")
    );
    // Not enabled explicitly: only where the socket exists.
    let c = NodeConfig::parse("docker: {socket: /nonexistent/docker.sock}\n").unwrap();
    assert!(c.docker.is_none());
    let e = NodeConfig::parse("docker: {enabled: true, socket: docker.sock}\n").unwrap_err();
    assert!(e.to_string().contains("docker.socket"), "{e}");
    assert!(NodeConfig::parse("docker: {enable: true}\n").is_err());
}
