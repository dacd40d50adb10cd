//! The stamp at the front of every message body: when the message was scheduled to leave,
//! its number, and its sender, as fixed-width hex digits (the gateway's body is a UTF-8
//! string), padded with filler to the requested size.
//!
//! ```text
//! 0               16              32              48        size
//! | scheduled µs  | number        | sender        | filler... |
//! ```
//!
//! The recipient reads the scheduled time back from the body, so a delivery's latency is
//! measured on the recipient's own clock against the sender's schedule (one process, one
//! monotonic clock) without any message between the tester's threads.

/// Bytes of the stamp; a body is at least this long.
pub const STAMP_LEN: usize = 48;

const FILLER: u8 = b'.';

/// What a body carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// When the message was scheduled to leave, microseconds since the run's epoch.
    pub scheduled_us: u64,
    /// The sender's message number (client message id, echo sequence), from 1.
    pub number: u64,
    /// The sending connection's id.
    pub sender: u64,
}

impl Stamp {
    /// The body of `size` bytes (at least [`STAMP_LEN`]) carrying this stamp.
    pub fn body(&self, size: usize) -> String {
        let mut bytes = Vec::with_capacity(size.max(STAMP_LEN));
        for value in [self.scheduled_us, self.number, self.sender] {
            push_hex(&mut bytes, value);
        }
        bytes.resize(size.max(STAMP_LEN), FILLER);
        // Hex digits and the filler are ASCII.
        String::from_utf8(bytes).unwrap_or_default()
    }

    /// Reads the stamp at the front of `body`; `None` if it is not one of ours.
    pub fn read(body: &[u8]) -> Option<Stamp> {
        let field = |i: usize| parse_hex(body.get(i * 16..(i + 1) * 16)?);
        Some(Stamp {
            scheduled_us: field(0)?,
            number: field(1)?,
            sender: field(2)?,
        })
    }
}

fn push_hex(out: &mut Vec<u8>, value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..16).rev() {
        out.push(DIGITS[((value >> (shift * 4)) & 0xf) as usize]);
    }
}

fn parse_hex(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |acc, &d| {
        let nibble = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | u64::from(nibble))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_at_any_size() {
        let stamp = Stamp {
            scheduled_us: 123_456_789,
            number: 42,
            sender: u64::MAX,
        };
        for size in [0, STAMP_LEN, 64, 4096] {
            let body = stamp.body(size);
            assert_eq!(body.len(), size.max(STAMP_LEN));
            assert_eq!(Stamp::read(body.as_bytes()), Some(stamp));
        }
    }

    #[test]
    fn foreign_bodies_are_not_stamps() {
        assert_eq!(Stamp::read(b"hello"), None);
        assert_eq!(Stamp::read(&[b'g'; 64]), None);
        assert_eq!(Stamp::read("é".repeat(40).as_bytes()), None);
    }
}
