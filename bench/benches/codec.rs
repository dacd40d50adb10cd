//! rkyv (wire's binary frames) against serde_json (wire's text frames) against protobuf
//! (prost, as the Go peers speak it), on the same send frame and the same delivery frame.
//!
//! For each encoding and frame: `encode` (owned frame to a fresh buffer), `access`
//! (validate and read chat id and body: in place for rkyv; a full parse for JSON and a full
//! decode for protobuf, which have no in-place access) and `decode` (bytes to the owned
//! frame). Run: `cargo bench -p bench --bench codec`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use prost::Message as _;
use wire::{ClientFrame, ServerFrame};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn send(c: &mut Criterion) {
    let frame = bench::send_frame();
    let proto = bench::send_proto();
    let bin = frame.encode().expect("the sample is within limits");
    let json = frame.to_json();
    let pb = proto.encode_to_vec();

    let mut g = c.benchmark_group("send/encode");
    g.bench_function("rkyv", |b| b.iter(|| black_box(&frame).encode()));
    g.bench_function("json", |b| b.iter(|| black_box(&frame).to_json()));
    g.bench_function("prost", |b| b.iter(|| black_box(&proto).encode_to_vec()));
    g.finish();

    let mut g = c.benchmark_group("send/access");
    g.bench_function("rkyv", |b| {
        b.iter(|| bench::rkyv_send_fields(black_box(&bin)))
    });
    g.bench_function("json", |b| {
        b.iter(|| bench::json_send_fields(black_box(&json)))
    });
    g.bench_function("prost", |b| {
        b.iter(|| bench::prost_send_fields(black_box(&pb)))
    });
    g.finish();

    let mut g = c.benchmark_group("send/decode");
    g.bench_function("rkyv", |b| b.iter(|| ClientFrame::decode(black_box(&bin))));
    g.bench_function("json", |b| {
        b.iter(|| ClientFrame::from_json(black_box(&json)))
    });
    g.bench_function("prost", |b| {
        b.iter(|| bench::proto::decode_client(black_box(&pb)))
    });
    g.finish();
}

fn delivery(c: &mut Criterion) {
    let frame = bench::delivery_frame();
    let proto = bench::delivery_proto();
    let bin = frame.encode().expect("the sample is within limits");
    let json = frame.to_json();
    let pb = proto.encode_to_vec();

    let mut g = c.benchmark_group("delivery/encode");
    g.bench_function("rkyv", |b| b.iter(|| black_box(&frame).encode()));
    g.bench_function("json", |b| b.iter(|| black_box(&frame).to_json()));
    g.bench_function("prost", |b| b.iter(|| black_box(&proto).encode_to_vec()));
    g.finish();

    let mut g = c.benchmark_group("delivery/access");
    g.bench_function("rkyv", |b| {
        b.iter(|| bench::rkyv_delivery_fields(black_box(&bin)))
    });
    g.bench_function("json", |b| {
        b.iter(|| bench::json_delivery_fields(black_box(&json)))
    });
    g.bench_function("prost", |b| {
        b.iter(|| bench::prost_delivery_fields(black_box(&pb)))
    });
    g.finish();

    let mut g = c.benchmark_group("delivery/decode");
    g.bench_function("rkyv", |b| b.iter(|| ServerFrame::decode(black_box(&bin))));
    g.bench_function("json", |b| {
        b.iter(|| ServerFrame::from_json(black_box(&json)))
    });
    g.bench_function("prost", |b| {
        b.iter(|| bench::proto::decode_server(black_box(&pb)))
    });
    g.finish();
}

/// What JSON's `type` tag costs: wire's frames are internally tagged, which makes serde
/// buffer the whole object before it can pick the variant. The same delivery parsed as the
/// bare `Message` body (no tag, no limit check) shows the difference.
fn json_tagging(c: &mut Criterion) {
    let ServerFrame::Message(message) = bench::delivery_frame() else {
        unreachable!("the delivery fixture is a message")
    };
    let tagged = bench::delivery_frame().to_json();
    let bare = serde_json::to_string(&message).expect("a plain struct serialises");

    let mut g = c.benchmark_group("delivery/json_tagging");
    g.bench_function("tagged_frame", |b| {
        b.iter(|| ServerFrame::from_json(black_box(&tagged)))
    });
    g.bench_function("bare_message", |b| {
        b.iter(|| serde_json::from_str::<wire::server::Message>(black_box(&bare)))
    });
    g.finish();
}

criterion_group!(benches, send, delivery, json_tagging);
criterion_main!(benches);
