//! WireGuard v1 message layouts (whitepaper section 5.4), little-endian header fields.
//!
//! ```text
//! type(1) reserved(3) | rest...
//! 1 initiation: sender(4) ephemeral(32) static(32+16) timestamp(12+16) mac1(16) mac2(16) = 148
//! 2 response:   sender(4) receiver(4) ephemeral(32) empty(0+16) mac1(16) mac2(16)       = 92
//! 3 cookie:     receiver(4) nonce(24) cookie(16+16)                                     = 64
//! 4 data:       receiver(4) counter(8) encrypted(n+16)                                  >= 32
//! ```

use core::ops::Range;

pub const MSG_INITIATION: u8 = 1;
pub const MSG_RESPONSE: u8 = 2;
pub const MSG_COOKIE_REPLY: u8 = 3;
pub const MSG_DATA: u8 = 4;

pub const INITIATION_LEN: usize = 148;
pub const RESPONSE_LEN: usize = 92;
pub const COOKIE_REPLY_LEN: usize = 64;
/// Header of a transport data message (type, receiver, counter).
pub const DATA_HEADER_LEN: usize = 16;
/// Poly1305 tag length.
pub const TAG_LEN: usize = 16;
/// Smallest valid data message: header + tag (a keepalive).
pub const DATA_MIN_LEN: usize = DATA_HEADER_LEN + TAG_LEN;
/// Bytes a data message adds around the (padded) inner packet.
pub const DATA_OVERHEAD: usize = DATA_HEADER_LEN + TAG_LEN;

/// Protocol timers and limits (whitepaper section 6.1).
pub mod timers {
    use core::time::Duration;
    pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
    pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);
    pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
    pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
    pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
    pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
    pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
    pub const COOKIE_REFRESH_TIME: Duration = Duration::from_secs(120);
}

/// Why a buffer could not be viewed as a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Shorter than the message type requires, or the wrong fixed length.
    #[error("truncated or wrongly sized message")]
    BadLength,
    /// Type byte is not 1-4, or reserved bytes are not zero.
    #[error("unknown message type")]
    UnknownType,
}

/// Classifies a datagram by its first four bytes and checks its length.
pub fn classify(buf: &[u8]) -> Result<u8, WireError> {
    if buf.len() < 4 {
        return Err(WireError::BadLength);
    }
    if buf[1..4] != [0, 0, 0] {
        return Err(WireError::UnknownType);
    }
    let t = buf[0];
    let ok = match t {
        MSG_INITIATION => buf.len() == INITIATION_LEN,
        MSG_RESPONSE => buf.len() == RESPONSE_LEN,
        MSG_COOKIE_REPLY => buf.len() == COOKIE_REPLY_LEN,
        MSG_DATA => buf.len() >= DATA_MIN_LEN,
        _ => return Err(WireError::UnknownType),
    };
    if ok {
        Ok(t)
    } else {
        Err(WireError::BadLength)
    }
}

mod field {
    use super::Range;
    pub const RECEIVER: Range<usize> = 4..8;
    pub const COUNTER: Range<usize> = 8..16;
}

/// View of a transport data message (type 4).
#[derive(Debug)]
pub struct DataPacket<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> DataPacket<T> {
    /// Checks type and minimum length; afterwards no accessor panics.
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        if classify(buf.as_ref())? != MSG_DATA {
            return Err(WireError::UnknownType);
        }
        Ok(Self { buf })
    }
    pub fn receiver(&self) -> u32 {
        let b = &self.buf.as_ref()[field::RECEIVER];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
    pub fn counter(&self) -> u64 {
        let b = &self.buf.as_ref()[field::COUNTER];
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        u64::from_le_bytes(a)
    }
    /// Ciphertext including the 16-byte tag.
    pub fn ciphertext(&self) -> &[u8] {
        &self.buf.as_ref()[DATA_HEADER_LEN..]
    }
    pub fn into_inner(self) -> T {
        self.buf
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> DataPacket<T> {
    pub fn ciphertext_mut(&mut self) -> &mut [u8] {
        &mut self.buf.as_mut()[DATA_HEADER_LEN..]
    }
}

/// Writes a data header (type 4, receiver, counter) into `out[..16]`.
pub fn write_data_header(out: &mut [u8], receiver: u32, counter: u64) {
    out[0] = MSG_DATA;
    out[1..4].fill(0);
    out[field::RECEIVER].copy_from_slice(&receiver.to_le_bytes());
    out[field::COUNTER].copy_from_slice(&counter.to_le_bytes());
}

/// Receiver index of a response (type 2: offset 8) or cookie reply (type 3: offset 4),
/// used by the control plane to find the handshake the message answers.
pub fn handshake_receiver(buf: &[u8]) -> Option<u32> {
    let off = match classify(buf).ok()? {
        MSG_RESPONSE => 8,
        MSG_COOKIE_REPLY => 4,
        _ => return None,
    };
    let b = &buf[off..off + 4];
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_checks_lengths_and_reserved() {
        let mut init = [0u8; INITIATION_LEN];
        init[0] = 1;
        assert_eq!(classify(&init), Ok(MSG_INITIATION));
        assert_eq!(classify(&init[..147]), Err(WireError::BadLength));
        init[2] = 1;
        assert_eq!(classify(&init), Err(WireError::UnknownType));
        assert_eq!(classify(&[4, 0, 0]), Err(WireError::BadLength));
        assert_eq!(classify(&[9, 0, 0, 0, 0]), Err(WireError::UnknownType));
        let data = [
            4u8, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0,
        ];
        assert_eq!(classify(&data[..31]), Err(WireError::BadLength));
        let p = DataPacket::new_checked(&data[..]).unwrap();
        assert_eq!(p.receiver(), 1);
        assert_eq!(p.counter(), 2);
        assert_eq!(p.ciphertext().len(), TAG_LEN);
    }

    #[test]
    fn header_roundtrip() {
        let mut b = [0xffu8; 32];
        write_data_header(&mut b, 0xdead_beef, 0x0102_0304_0506_0708);
        let p = DataPacket::new_checked(&b[..]).unwrap();
        assert_eq!(p.receiver(), 0xdead_beef);
        assert_eq!(p.counter(), 0x0102_0304_0506_0708);
    }
}
