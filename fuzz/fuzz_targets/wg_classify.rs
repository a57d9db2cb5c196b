//! WireGuard message classification: `classify`, the data-packet view and the handshake
//! receiver lookup never panic, and agree with each other and with the fixed sizes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tm_wire::wg::{self, DataPacket};

fuzz_target!(|data: &[u8]| {
    let class = wg::classify(data);
    if let Ok(t) = class {
        assert_eq!(&data[1..4], &[0, 0, 0]);
        match t {
            wg::MSG_INITIATION => assert_eq!(data.len(), wg::INITIATION_LEN),
            wg::MSG_RESPONSE => assert_eq!(data.len(), wg::RESPONSE_LEN),
            wg::MSG_COOKIE_REPLY => assert_eq!(data.len(), wg::COOKIE_REPLY_LEN),
            wg::MSG_DATA => assert!(data.len() >= wg::DATA_MIN_LEN),
            other => panic!("classify accepted type {other}"),
        }
    }
    match DataPacket::new_checked(data) {
        Ok(p) => {
            assert_eq!(class, Ok(wg::MSG_DATA));
            let _ = (p.receiver(), p.counter());
            assert_eq!(p.ciphertext().len(), data.len() - wg::DATA_HEADER_LEN);
            // Rewriting the header with what was read gives the same bytes back.
            let mut copy = data.to_vec();
            wg::write_data_header(&mut copy, p.receiver(), p.counter());
            assert_eq!(copy, data);
        }
        Err(_) => assert_ne!(class, Ok(wg::MSG_DATA)),
    }
    let recv = wg::handshake_receiver(data);
    assert_eq!(
        recv.is_some(),
        matches!(class, Ok(wg::MSG_RESPONSE | wg::MSG_COOKIE_REPLY))
    );
});
