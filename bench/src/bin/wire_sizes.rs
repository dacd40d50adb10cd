//! Prints the bytes on the wire of the codec benchmarks' frames, in each encoding, as a
//! markdown table: `cargo run -p bench --bin wire_sizes`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let rows = [
        ("send (client → server)", bench::send_sizes()),
        ("delivery (server → client)", bench::delivery_sizes()),
    ];
    println!(
        "Body: {} bytes of UTF-8 ({} chars).",
        bench::BODY.len(),
        bench::BODY.chars().count()
    );
    println!();
    println!("| frame | rkyv (2-byte header + archive) | JSON | protobuf (prost) |");
    println!("| --- | ---: | ---: | ---: |");
    for (name, s) in rows {
        println!("| {name} | {} | {} | {} |", s.rkyv, s.json, s.protobuf);
    }
}
