//! End-to-end: the server in-process on 127.0.0.1:<free port>, queried with `dig` over UDP and
//! TCP (`+tcp`).

mod common;

use common::*;
use tm_dns::Zone;

/// Runs the same dig query over UDP and over TCP.
fn both(fx: &Fixture, args: &[&str], check: impl Fn(&Dig)) {
    check(&fx.dig(args));
    let mut tcp = args.to_vec();
    tcp.push("+tcp");
    check(&fx.dig(&tcp));
}

#[test]
fn a_record_for_a_peer() {
    let fx = Fixture::start(test_zone());
    both(&fx, &["beta.mesh", "A"], |d| {
        assert_eq!(d.status, "NOERROR", "{}", d.raw);
        assert!(d.has_flag("aa"), "{}", d.raw);
        assert!(!d.has_flag("ra"), "{}", d.raw);
        assert_eq!(d.answers("A"), vec![BETA.to_owned()], "{}", d.raw);
        assert_eq!(d.answer[0].name, "beta.mesh.");
        assert_eq!(d.answer[0].class, "IN");
        d.assert_ttls();
    });
    // v4 + v6 peer: each type gets only its own family.
    both(&fx, &["alpha.mesh", "AAAA"], |d| {
        assert_eq!(d.answers("AAAA"), vec![ALPHA6.to_owned()], "{}", d.raw);
        assert!(d.answers("A").is_empty());
        d.assert_ttls();
    });
}

#[test]
fn names_are_case_insensitive() {
    let fx = Fixture::start(test_zone());
    both(&fx, &["BeTa.MeSh", "A"], |d| {
        assert_eq!(d.status, "NOERROR", "{}", d.raw);
        assert_eq!(d.answers("A"), vec![BETA.to_owned()], "{}", d.raw);
        d.assert_ttls();
    });
    // Peer names given in upper case by the daemon are folded too.
    let fx = Fixture::start(Zone::default().with_peer("GaMMa", [ip(GAMMA)]));
    let d = fx.dig(&["gamma.mesh", "A"]);
    assert_eq!(d.answers("A"), vec![GAMMA.to_owned()], "{}", d.raw);
}

#[test]
fn coordinator_has_all_coordinators() {
    let fx = Fixture::start(test_zone());
    both(&fx, &["coordinator.mesh", "A"], |d| {
        assert_eq!(d.status, "NOERROR", "{}", d.raw);
        assert_eq!(
            d.answers("A"),
            vec![COORD1.to_owned(), COORD2.to_owned()],
            "{}",
            d.raw
        );
        d.assert_ttls();
    });
}

#[test]
fn alias_is_cname_plus_target_records() {
    let fx = Fixture::start(test_zone());
    both(&fx, &["www.mesh", "A"], |d| {
        assert_eq!(d.status, "NOERROR", "{}", d.raw);
        assert_eq!(
            d.answers("CNAME"),
            vec!["beta.mesh.".to_owned()],
            "{}",
            d.raw
        );
        assert_eq!(d.answer[0].rtype, "CNAME", "CNAME comes first: {}", d.raw);
        assert_eq!(d.answer[0].name, "www.mesh.");
        let a: Vec<_> = d.answer.iter().filter(|r| r.rtype == "A").collect();
        assert_eq!(a.len(), 1, "{}", d.raw);
        assert_eq!(a[0].name, "beta.mesh.");
        assert_eq!(a[0].rdata, BETA);
        d.assert_ttls();
    });
    // Asking for the CNAME itself does not chase it.
    let d = fx.dig(&["www.mesh", "CNAME"]);
    assert_eq!(d.answer.len(), 1, "{}", d.raw);
    assert_eq!(d.answers("CNAME"), vec!["beta.mesh.".to_owned()]);
}

#[test]
fn unknown_name_is_nxdomain_with_soa() {
    let fx = Fixture::start(test_zone());
    both(&fx, &["nobody.mesh", "A"], |d| {
        assert_eq!(d.status, "NXDOMAIN", "{}", d.raw);
        assert!(d.has_flag("aa"), "{}", d.raw);
        assert!(d.answer.is_empty(), "{}", d.raw);
        assert_eq!(d.authority.len(), 1, "{}", d.raw);
        let soa = &d.authority[0];
        assert_eq!(
            (soa.name.as_str(), soa.rtype.as_str()),
            ("mesh.", "SOA"),
            "{}",
            d.raw
        );
        // mname rname serial refresh retry expire minimum; minimum (negative TTL) = 5.
        let fields: Vec<&str> = soa.rdata.split_whitespace().collect();
        assert_eq!(fields.len(), 7, "{}", d.raw);
        assert_eq!(fields[0], "coordinator.mesh.");
        assert_eq!(fields[6], "5", "SOA minimum: {}", d.raw);
        d.assert_ttls();
    });
    // Below an existing host: still NXDOMAIN.
    let d = fx.dig(&["x.beta.mesh", "A"]);
    assert_eq!(d.status, "NXDOMAIN", "{}", d.raw);
}

#[test]
fn aaaa_for_v4_only_peer_is_nodata() {
    let fx = Fixture::start(test_zone());
    both(&fx, &["beta.mesh", "AAAA"], |d| {
        assert_eq!(d.status, "NOERROR", "{}", d.raw);
        assert!(d.has_flag("aa"), "{}", d.raw);
        assert!(d.answer.is_empty(), "{}", d.raw);
        assert_eq!(d.authority.len(), 1, "{}", d.raw);
        assert_eq!(d.authority[0].rtype, "SOA", "{}", d.raw);
        d.assert_ttls();
    });
    // Other types at a host: NODATA as well.
    let d = fx.dig(&["beta.mesh", "TXT"]);
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert!(d.answer.is_empty());
    assert_eq!(d.authority[0].rtype, "SOA");
}

#[test]
fn outside_the_zone_is_refused() {
    let fx = Fixture::start(test_zone());
    both(&fx, &["example.com", "A"], |d| {
        assert_eq!(d.status, "REFUSED", "{}", d.raw);
        assert!(!d.has_flag("aa"), "{}", d.raw);
        assert!(d.answer.is_empty() && d.authority.is_empty(), "{}", d.raw);
    });
    // A suffix match that is not a subdomain is outside too.
    let d = fx.dig(&["beta.notmesh", "A"]);
    assert_eq!(d.status, "REFUSED", "{}", d.raw);
    // Root.
    let d = fx.dig(&[".", "NS"]);
    assert_eq!(d.status, "REFUSED", "{}", d.raw);
}

#[test]
fn apex_has_soa_and_ns() {
    let fx = Fixture::start(test_zone());
    both(&fx, &["mesh", "SOA"], |d| {
        assert_eq!(d.status, "NOERROR", "{}", d.raw);
        assert_eq!(d.answer.len(), 1, "{}", d.raw);
        assert_eq!(d.answer[0].rtype, "SOA");
        d.assert_ttls();
    });
    both(&fx, &["mesh", "NS"], |d| {
        assert_eq!(
            d.answers("NS"),
            vec!["coordinator.mesh.".to_owned()],
            "{}",
            d.raw
        );
        let mut glue: Vec<&str> = d
            .additional
            .iter()
            .filter(|r| r.rtype == "A")
            .map(|r| r.rdata.as_str())
            .collect();
        glue.sort();
        assert_eq!(glue, vec![COORD1, COORD2], "{}", d.raw);
        d.assert_ttls();
    });
    let d = fx.dig(&["mesh", "A"]);
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert!(d.answer.is_empty());
    assert_eq!(d.authority[0].rtype, "SOA");
}

#[test]
fn update_adds_and_removes_names_at_once() {
    let fx = Fixture::start(test_zone());
    let before = fx.dig(&["beta.mesh", "A"]);
    assert_eq!(before.answers("A"), vec![BETA.to_owned()]);
    let serial_before = fx.dns.serial();
    let absent = fx.dig(&["gamma.mesh", "A"]);
    assert_eq!(absent.status, "NXDOMAIN", "{}", absent.raw);

    // beta departs, gamma joins; the alias to beta departs with it.
    let next = Zone::default()
        .with_peer("alpha", [ip(ALPHA4)])
        .with_peer("gamma", [ip(GAMMA)])
        .with_coordinators([ip(COORD1)])
        .with_alias("www", "beta");
    let report = fx.dns.update(&next).expect("valid zone");
    assert!(report.serial > serial_before);
    assert_eq!(
        report.skipped.len(),
        1,
        "dangling alias reported: {:?}",
        report.skipped
    );

    both(&fx, &["gamma.mesh", "A"], |d| {
        assert_eq!(d.status, "NOERROR", "{}", d.raw);
        assert_eq!(d.answers("A"), vec![GAMMA.to_owned()], "{}", d.raw);
        d.assert_ttls();
    });
    both(&fx, &["beta.mesh", "A"], |d| {
        assert_eq!(d.status, "NXDOMAIN", "{}", d.raw);
    });
    both(&fx, &["www.mesh", "A"], |d| {
        assert_eq!(d.status, "NXDOMAIN", "{}", d.raw);
    });
    let d = fx.dig(&["coordinator.mesh", "A"]);
    assert_eq!(d.answers("A"), vec![COORD1.to_owned()], "{}", d.raw);
    // The new serial is what the SOA says.
    let d = fx.dig(&["mesh", "SOA"]);
    let serial: u32 = d.answer[0]
        .rdata
        .split_whitespace()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .expect("serial");
    assert_eq!(serial, report.serial);
}

#[test]
fn edns_version_above_zero_is_badvers() {
    let fx = Fixture::start(test_zone());
    let d = fx.dig(&["+edns=1", "+noednsneg", "beta.mesh", "A"]);
    assert_eq!(d.status, "BADVERS", "{}", d.raw);
    assert!(d.answer.is_empty());
}

#[test]
fn server_stops_cleanly() {
    let fx = Fixture::start(test_zone());
    let addr = fx.addr;
    assert_eq!(fx.dig(&["beta.mesh", "A"]).status, "NOERROR");
    fx.stop().expect("clean shutdown");
    // The listener is gone: TCP connects are refused. (Re-binding the port to prove it is free
    // would race with other processes' ephemeral ports, e.g. dig's own UDP source ports.)
    let err = std::net::TcpStream::connect(addr).expect_err("listener closed");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}
