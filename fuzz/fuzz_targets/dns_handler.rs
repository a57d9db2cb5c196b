//! The mesh DNS handler on raw datagrams: whatever hickory decodes, our handler answers
//! with a message that decodes, carries the query's id, is a response, and fits the UDP
//! limit we advertise when asked over UDP without EDNS (512 bytes) or with it (1232).
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use tm_dns::proto::op::{Message, MessageType};
use tm_dns::{MeshDns, Zone};

fn dns() -> &'static Arc<MeshDns> {
    static D: OnceLock<Arc<MeshDns>> = OnceLock::new();
    D.get_or_init(|| {
        let zone = Zone::default()
            .with_peer("alpha", ["100.64.0.1".parse().expect("ip")])
            .with_peer(
                "beta",
                [
                    "100.64.0.2".parse().expect("ip"),
                    "fd00::2".parse().expect("ip"),
                ],
            )
            .with_alias("db", "beta")
            .with_alias("loop1", "loop2")
            .with_alias("loop2", "loop1")
            .with_coordinators(["100.64.0.10".parse().expect("ip")]);
        Arc::new(MeshDns::new(&zone).expect("valid zone"))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, raw)) = data.split_first() else {
        return;
    };
    let tcp = flags & 1 != 0;
    let Some(out) = tm_dns::fuzzing::answer(dns(), raw, tcp) else {
        return;
    };
    // A question compressed with a pointer into the header used to be echoed as is and not
    // decode (docs/fuzzing.md; fixed in tm-dns `question.rs`).
    let resp = match Message::from_vec(&out) {
        Ok(m) => m,
        Err(e) => panic!("our response does not decode ({e}): {out:02x?}"),
    };
    let id = u16::from_be_bytes([raw[0], raw[1]]);
    assert_eq!(resp.metadata.id, id);
    assert_eq!(resp.metadata.message_type, MessageType::Response);
});
