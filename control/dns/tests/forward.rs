//! Forwarding: names outside the zone go to the upstream resolvers (here a second tm-dns
//! serving another zone), over UDP and TCP, while mesh names stay answered locally.

mod common;

use common::*;
use tm_dns::Zone;

#[test]
fn names_outside_the_zone_go_upstream() {
    let upstream = Fixture::start(Zone::new("example").with_peer("www", [ip("192.0.2.77")]));
    let fx = Fixture::start(test_zone());
    // Without upstreams: REFUSED, as before.
    assert_eq!(fx.dig(&["www.example", "A"]).status, "REFUSED");
    fx.dns.set_upstreams(vec![upstream.addr]);
    for tcp in [false, true] {
        let mut args = vec!["www.example", "A"];
        if tcp {
            args.push("+tcp");
        }
        let d = fx.dig(&args);
        assert_eq!(d.status, "NOERROR", "{}", d.raw);
        assert_eq!(d.answers("A"), vec!["192.0.2.77".to_owned()], "{}", d.raw);
        assert!(d.has_flag("ra") && !d.has_flag("aa"), "{}", d.raw);
        // The upstream's negative answers come back as they are.
        assert_eq!(fx.dig(&["nope.example", "A"]).status, "NXDOMAIN");
        // Mesh names never leave the node.
        let d = fx.dig(&["beta.mesh", "A"]);
        assert_eq!(d.answers("A"), vec![BETA.to_owned()], "{}", d.raw);
        assert!(d.has_flag("aa"));
    }
    // No upstream answers: SERVFAIL, not a made-up answer.
    upstream.stop().unwrap();
    assert_eq!(fx.dig(&["www.example", "A"]).status, "SERVFAIL");
}
