//! Ring slots under a hostile peer: the input is a ring geometry and a sequence of
//! operations, some of which overwrite the shared mapping (indices, slot lengths, bytes, the
//! header) as a misbehaving peer process could. Our halves must stay inside the mapping
//! (ASan), never hand out a message longer than a slot holds, stay broken once broken, and —
//! while the peer wrote nothing behind their backs — deliver messages intact and in order.
//! The first bytes also go through the header validation `attach` does.
#![no_main]

use std::collections::VecDeque;

use libfuzzer_sys::fuzz_target;
use tm_ring::fuzzing::{validate_header, HostileRing, HEADER_BYTES};
use tm_ring::PushError;

fn header_check(data: &[u8]) {
    let mut raw = [0u8; HEADER_BYTES];
    let n = data.len().min(HEADER_BYTES);
    raw[..n].copy_from_slice(&data[..n]);
    let file_len = data
        .get(n..n + 8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    if let Ok((size, count, a, b, total)) = validate_header(&raw, 2, file_len) {
        assert!(count.is_power_of_two() && size % 8 == 0);
        assert!(a < b && b < total && total as u64 == file_len);
    }
}

fuzz_target!(|data: &[u8]| {
    header_check(data);
    if data.len() < 2 {
        return;
    }
    let slot_size = 16 + 8 * u32::from(data[0] % 16);
    let slot_count = 1u32 << (1 + data[1] % 4);
    let Some(mut ring) = HostileRing::new(slot_size, slot_count, 1 << 16) else {
        panic!("valid geometry {slot_size}x{slot_count} refused");
    };
    let max = ring.max_msg_len();
    let mut ops = &data[2..];
    let mut tampered = false;
    let mut seq = 0u8;
    let mut to_us: VecDeque<Vec<u8>> = VecDeque::new();
    let mut to_peer: VecDeque<Vec<u8>> = VecDeque::new();
    while let Some((&op, rest)) = ops.split_first() {
        ops = rest;
        let arg = usize::from(op >> 3);
        let (was_rx, was_tx) = ring.broken();
        match op & 7 {
            0 | 1 => {
                // peer pushes a message of `arg * 3 % (max + 8)` bytes (sometimes too long)
                let len = arg * 3 % (max + 8);
                seq = seq.wrapping_add(1);
                let msg = vec![seq; len];
                match ring.peer_push(&msg) {
                    Ok(()) => to_us.push_back(msg),
                    Err(PushError::TooLarge { .. }) => assert!(len > max),
                    Err(_) => {}
                }
            }
            2 => {
                if let Some(m) = ring.pop() {
                    assert!(m.len() <= max, "popped {} > {max} bytes", m.len());
                    if !tampered {
                        assert_eq!(Some(m), to_us.pop_front(), "ring A lost order");
                    }
                } else if !tampered {
                    assert!(to_us.is_empty(), "ring A lost a message");
                }
            }
            3 => {
                let len = arg * 5 % (max + 8);
                seq = seq.wrapping_add(1);
                let msg = vec![seq; len];
                match ring.push(&msg) {
                    Ok(()) => to_peer.push_back(msg),
                    Err(PushError::TooLarge { .. }) => assert!(len > max),
                    Err(PushError::Full) if !tampered => {
                        assert_eq!(to_peer.len(), slot_count as usize)
                    }
                    Err(_) => {}
                }
            }
            4 => {
                if let Some(m) = ring.peer_pop() {
                    if !tampered {
                        assert_eq!(Some(m), to_peer.pop_front(), "ring B lost order");
                    }
                }
            }
            5 => {
                let waiting = ring.waiting();
                assert!(waiting <= slot_count as usize);
                let _ = ring.free_slots();
            }
            _ => {
                // The peer scribbles: offset (2 bytes) then up to 8 bytes of data.
                if ops.len() < 2 {
                    break;
                }
                let off = usize::from(u16::from_le_bytes([ops[0], ops[1]]));
                let n = (arg % 9).min(ops.len() - 2);
                ring.poke(off, &ops[2..2 + n]);
                ops = &ops[2 + n..];
                tampered = true;
            }
        }
        let (rx, tx) = ring.broken();
        assert!(rx || !was_rx, "consumer recovered from broken");
        assert!(tx || !was_tx, "producer recovered from broken");
        if !tampered {
            assert!(!rx && !tx, "broken without a hostile write");
        }
    }
});
