//! Relay frames (`u16 BE length | 32-byte key | payload`) as read from a relay connection:
//! nothing panics, no frame exceeds the payload limit, and the frames read re-encode to
//! exactly the bytes they were read from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tm_coord::MAX_RELAY_PAYLOAD;

fuzz_target!(|data: &[u8]| {
    let (frames, err) = tm_coord::fuzzing::relay_frames(data);
    let mut again = Vec::new();
    for (key, payload) in &frames {
        assert!(payload.len() <= MAX_RELAY_PAYLOAD);
        again.extend(tm_coord::fuzzing::frame_bytes(key, payload).expect("within the limit"));
    }
    assert_eq!(
        &data[..again.len()],
        &again[..],
        "frames do not re-encode to their input"
    );
    if err.is_none() {
        assert_eq!(again.len(), data.len(), "clean end with bytes left over");
    }
});
