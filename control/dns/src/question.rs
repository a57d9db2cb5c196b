//! The question section our answers repeat.
//!
//! hickory-server copies the request's question section byte for byte into the response. A
//! question name compressed with a pointer (legal: a pointer back into the 12-byte header
//! decodes) then points into the *response's* header, whose flag bytes differ, and the answer
//! does not decode (found by the `dns_handler` fuzz target, docs/fuzzing.md). For such a request
//! the question is encoded again, without compression, and that is what the answer carries.

use hickory_server::proto::serialize::binary::{
    BinDecoder, BinEncodable, BinEncoder, NameEncoding,
};
use hickory_server::zone_handler::Queries;

/// Whether a name in the wire-format question section `raw` (`count` questions) uses a
/// compression pointer.
fn has_pointer(raw: &[u8], count: usize) -> bool {
    let mut i = 0;
    for _ in 0..count {
        loop {
            let Some(&l) = raw.get(i) else { return false };
            if l & 0xc0 != 0 {
                return true;
            }
            i += 1 + usize::from(l);
            if l == 0 {
                break;
            }
        }
        i += 4;
    }
    false
}

/// The questions to repeat in the answer to `q`: `None` to repeat the request's bytes (no
/// pointer in them), else the same questions encoded without compression.
pub(crate) fn rewritten(q: &Queries) -> Option<Queries> {
    if !has_pointer(q.as_bytes(), q.len()) {
        return None;
    }
    let mut buf = Vec::new();
    {
        let mut enc = BinEncoder::new(&mut buf);
        enc.set_name_encoding(NameEncoding::Uncompressed);
        for lq in q.queries() {
            lq.original().emit(&mut enc).ok()?;
        }
    }
    Queries::read(&mut BinDecoder::new(&buf), q.len()).ok()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use hickory_server::proto::op::{Message, MessageType, ResponseCode};

    use super::*;
    use crate::{MeshDns, Zone};

    /// The fuzz target's input `fuzz/corpus/dns_handler/known-pointer-into-header` (without
    /// its first byte, the target's UDP/TCP flag): a question whose name is a pointer into the
    /// header. Its answer used to repeat that pointer and not decode.
    const POINTER_INTO_HEADER: &[u8] = &[
        0x01, 0x00, 0x01, 0x00, 0x00, 0x09, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0xeb, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc0, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x83, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x6c, 0x00,
    ];

    #[test]
    fn an_answer_to_a_compressed_question_decodes() {
        let zone = Zone::default().with_peer("alpha", ["100.64.0.1".parse().expect("ip")]);
        let dns = Arc::new(MeshDns::new(&zone).expect("valid zone"));
        // The fuzz input, and a well-formed query for alpha.mesh. whose name ends in a pointer
        // to "mesh" inside the question itself (offset 18) after a first question.
        let mut two = vec![0x12, 0x34, 0x01, 0x00, 0x00, 0x02, 0, 0, 0, 0, 0, 0];
        two.extend_from_slice(b"\x04mesh\x00\x00\x06\x00\x01");
        two.extend_from_slice(b"\x05alpha\xc0\x0c\x00\x01\x00\x01");
        let mut one = vec![0x56, 0x78, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
        one.extend_from_slice(b"\x05alpha\x04mesh\x00\x00\x01\x00\x01");
        // "alpha" then a pointer to offset 2 (the header's flags), like the fuzz input.
        let mut pointer_one = vec![0x9a, 0xbc, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
        pointer_one.extend_from_slice(b"\x05alpha\xc0\x02\x00\x01\x00\x01");
        for (raw, tcp) in [
            (POINTER_INTO_HEADER, false),
            (POINTER_INTO_HEADER, true),
            (&two[..], false),
            (&one[..], false),
            (&pointer_one[..], false),
        ] {
            let Some(out) = crate::fuzzing::answer(&dns, raw, tcp) else {
                continue;
            };
            let resp = Message::from_vec(&out)
                .unwrap_or_else(|e| panic!("answer to {raw:02x?} does not decode ({e})"));
            assert_eq!(resp.metadata.id, u16::from_be_bytes([raw[0], raw[1]]));
            assert_eq!(resp.metadata.message_type, MessageType::Response);
        }
        // The plain query still gets its address, and its question back as sent.
        let out = crate::fuzzing::answer(&dns, &one, false).expect("decodes");
        let resp = Message::from_vec(&out).expect("answer");
        assert_eq!(resp.metadata.response_code, ResponseCode::NoError);
        assert_eq!(resp.answers.len(), 1);
        assert_eq!(&out[12..12 + 16], &one[12..]);
    }

    #[test]
    fn pointers_are_found() {
        // "a" + pointer, type, class
        assert!(has_pointer(&[1, b'a', 0xc0, 0x0c, 0, 1, 0, 1], 1));
        assert!(!has_pointer(&[1, b'a', 0, 0, 1, 0, 1], 1));
        assert!(has_pointer(
            &[1, b'a', 0, 0, 1, 0, 1, 0xc0, 0, 0, 1, 0, 1],
            2
        ));
        assert!(!has_pointer(&[5, b'a'], 1), "truncated: no pointer seen");
    }
}
