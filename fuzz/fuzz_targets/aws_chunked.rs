//! aws-chunked body decoding (the S3 front's `STREAMING-*` bodies).
//!
//! Input: a flag byte (signed, trailer, expected length given), a split byte, then the body.
//! The body is fed in pieces split at fuzzer-chosen points and, again, in one piece:
//! the outcome must not depend on how the bytes arrived, and a decoded body is never longer
//! than its encoding.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [flags, split, body @ ..] = data else {
        return;
    };
    let signed = flags & 1 != 0;
    let trailer = flags & 2 != 0;
    let expected = (flags & 4 != 0).then(|| u64::from(flags >> 3));
    let step = usize::from(*split).max(1);
    let parts: Vec<Vec<u8>> = body.chunks(step).map(<[u8]>::to_vec).collect();
    let pieces = tm_s3::fuzzing::aws_chunked(parts, signed, trailer, expected);
    let whole = tm_s3::fuzzing::aws_chunked(vec![body.to_vec()], signed, trailer, expected);
    match (&pieces, &whole) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b, "output depends on how the body was split");
            assert!(a.len() <= body.len());
            if let Some(n) = expected {
                assert_eq!(a.len() as u64, n);
            }
        }
        (Err(_), Err(_)) => {}
        _ => panic!("split {step}: {pieces:?} vs whole {whole:?}"),
    }
});
