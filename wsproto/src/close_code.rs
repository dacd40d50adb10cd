//! The close codes this crate answers protocol errors with (RFC 6455 section 7.4.1), and
//! which codes a close frame may carry at all.

/// The peer broke the protocol.
pub const PROTOCOL_ERROR: u16 = 1002;
/// A text message or close reason that is not UTF-8.
pub const INVALID_PAYLOAD: u16 = 1007;
/// A message over the receiver's limit.
pub const MESSAGE_TOO_BIG: u16 = 1009;

/// Whether a close frame may carry `code` (RFC 6455 section 7.4 and the IANA registry).
///
/// 1004 is reserved, 1005, 1006 and 1015 describe closes that had no close frame, and the rest
/// of 1000-2999 is reserved for future revisions; 3000-4999 belong to libraries and
/// applications.
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::is_valid_close_code;

    #[test]
    fn close_codes_follow_rfc_6455_section_7_4() {
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
        ] {
            assert!(is_valid_close_code(code), "{code}");
        }
        for code in [3000, 3999, 4000, 4999] {
            assert!(is_valid_close_code(code), "{code}");
        }
        for code in [
            0,
            999,
            1004,
            1005,
            1006,
            1015,
            1016,
            1100,
            2000,
            2999,
            5000,
            u16::MAX,
        ] {
            assert!(!is_valid_close_code(code), "{code}");
        }
    }
}
