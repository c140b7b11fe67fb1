//! Arbitrary chunkings of a peer's bytes, shared by the connection targets: each read hands
//! out the next chunk, so that every split of a frame across reads is tried.

use std::collections::VecDeque;

/// Splits `data` into chunks of 1 to 64 bytes, sized by a generator seeded with `seed`.
pub fn chunks(seed: u8, data: &[u8]) -> VecDeque<Vec<u8>> {
    let mut state = u32::from(seed) | 1;
    let mut rest = data;
    let mut chunks = VecDeque::new();
    while !rest.is_empty() {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let size = (1 + (state >> 16) as usize % 64).min(rest.len());
        let (chunk, tail) = rest.split_at(size);
        chunks.push_back(chunk.to_vec());
        rest = tail;
    }
    chunks
}
