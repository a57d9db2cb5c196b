//! The control <-> dataplane IPC codec: decoding arbitrary bytes never panics, and whatever
//! decodes re-encodes to a message that decodes to the same value (both directions).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tm_wire::ipc::{CtlMsg, DpMsg};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = CtlMsg::decode(data) {
        let mut out = Vec::new();
        m.encode(&mut out);
        assert_eq!(
            CtlMsg::decode(&out),
            Ok(m.clone()),
            "CtlMsg re-encode of {m:?}"
        );
    }
    if let Ok(m) = DpMsg::decode(data) {
        let mut out = Vec::new();
        m.encode(&mut out);
        assert_eq!(
            DpMsg::decode(&out),
            Ok(m.clone()),
            "DpMsg re-encode of {m:?}"
        );
    }
});
