//! The coordinator's request handling on raw bytes (what arrives after the TLS handshake,
//! without a client certificate): HTTP head and body parsing, routing, and the JSON bodies
//! of every endpoint (register with its proof check, endpoints), against a real
//! coordinator with in-memory state. Also the client's response parser on the same bytes.
//! Nothing panics; an unauthenticated request never changes membership.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use tm_coord::{Coordinator, CoordinatorConfig, MemStore};
use tm_noise::keys::PrivateKey;

fn coordinator() -> &'static Coordinator {
    static C: OnceLock<(Coordinator, std::path::PathBuf)> = OnceLock::new();
    &C.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tm-fuzz-coord-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let c = Coordinator::open(
            &dir,
            CoordinatorConfig::new("coord"),
            PrivateKey::from_bytes([0x33; 32]),
            Arc::new(MemStore::new()),
        )
        .expect("open coordinator");
        (c, dir)
    })
    .0
}

fuzz_target!(|data: &[u8]| {
    let c = coordinator();
    let before = c.netmap();
    if let Some((status, body)) = tm_coord::fuzzing::serve_request(c, data) {
        assert!((200..600).contains(&status), "status {status}");
        if status == 200 {
            assert!(!body.is_empty());
        }
    }
    let after = c.netmap();
    assert_eq!(before.peers.len(), after.peers.len(), "membership changed");
    let _ = tm_coord::fuzzing::read_response(data, false);
    let _ = tm_coord::fuzzing::read_response(data, true);
});
