//! The remote chunk backend's HTTP/1.x response parser on arbitrary bytes (what a plain-HTTP
//! object store, or anyone on the path, can send): nothing panics or aborts (no allocation
//! sized by a header, no unbounded recursion), a body is never longer than the input, and
//! a reusable connection only follows a response that ended where its framing says.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, raw)) = data.split_first() else {
        return;
    };
    let (responses, _err) = tm_storage::remote::fuzz_read_responses(raw, flags & 1 != 0);
    let total: usize = responses.iter().map(|r| r.1).sum();
    assert!(total <= raw.len(), "bodies longer than the input");
    for (status, _, _) in &responses {
        assert!(!(100..200).contains(status), "1xx returned as the answer");
    }
});
