//! The WebSocket codec's hot path: a server decoding (and unmasking) client frames, and
//! building the frames it sends. Run with `cargo bench -p wsproto --bench codec`.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use wsproto::{Decoded, Decoder, OpCode, Role, binary_frame, encode_frame};

/// `count` masked client binary frames of `payload` bytes each, back to back, as one read
/// from a socket would bring them.
fn client_frames(payload: usize, count: usize) -> Vec<u8> {
    let body: Vec<u8> = (0..payload).map(|i| (i % 251) as u8).collect();
    let mut out = Vec::new();
    for _ in 0..count {
        encode_frame(Role::Client, OpCode::Binary, true, &body, &mut out);
    }
    out
}

/// Decodes every frame in `buf` the way the gateway's read loop does.
fn decode_all(decoder: &mut Decoder, buf: &mut [u8]) -> usize {
    let (mut messages, mut at) = (0, 0);
    loop {
        let Decoded { message, consumed } = decoder.decode(&mut buf[at..]).expect("valid frames");
        if message.is_none() {
            return messages;
        }
        messages += 1;
        at += consumed;
    }
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("server_decode");
    for (name, payload, count) in [("64B_x64", 64, 64), ("16KiB_x4", 16 * 1024, 4)] {
        let frames = client_frames(payload, count);
        group.throughput(Throughput::Bytes((payload * count) as u64));
        group.bench_function(name, |b| {
            let mut decoder = Decoder::new(Role::Server, 1 << 20);
            b.iter_batched_ref(
                || frames.clone(),
                |buf| black_box(decode_all(&mut decoder, buf)),
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("server_encode");
    for (name, payload) in [("64B", 64), ("16KiB", 16 * 1024)] {
        let body = vec![7u8; payload];
        group.throughput(Throughput::Bytes(payload as u64));
        group.bench_function(name, |b| b.iter(|| binary_frame(black_box(&body))));
    }
    group.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
