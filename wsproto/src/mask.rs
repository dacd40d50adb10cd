//! The XOR masking of client payloads (RFC 6455 section 5.3), in place.

/// XORs `payload` with the 4-byte `mask` key repeated; applying it twice restores the bytes.
///
/// The bulk goes 16 bytes at a time as one `u128` (the key four times over), which the
/// compiler turns into vector instructions; a chunk starts at a multiple of 4 from the
/// payload's start, so every chunk sees the key in the same phase, and the tail goes byte
/// by byte.
pub fn apply_mask(payload: &mut [u8], mask: [u8; 4]) {
    let key = u128::from(u32::from_ne_bytes(mask));
    let wide = key | key << 32 | key << 64 | key << 96;
    let mut chunks = payload.chunks_exact_mut(16);
    for chunk in &mut chunks {
        let bytes: &mut [u8; 16] = chunk.try_into().expect("chunks_exact_mut yields 16 bytes");
        *bytes = (u128::from_ne_bytes(*bytes) ^ wide).to_ne_bytes();
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::apply_mask;

    #[test]
    fn matches_the_bytewise_definition_at_every_length() {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        for len in 0..70 {
            let original: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let mut payload = original.clone();
            apply_mask(&mut payload, mask);
            let expected: Vec<u8> = original
                .iter()
                .enumerate()
                .map(|(i, byte)| byte ^ mask[i % 4])
                .collect();
            assert_eq!(payload, expected, "length {len}");
            apply_mask(&mut payload, mask);
            assert_eq!(payload, original, "length {len}");
        }
    }
}
