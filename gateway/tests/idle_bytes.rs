//! What an idle session holds on the heap (issue #15, item 2). dhat's allocator counts every
//! live block of this test binary; the gateway runs in process on one core, the clients are
//! blocking sockets on the test thread that keep nothing on the heap. The live bytes and
//! blocks before and after the sessions open, divided by their number, are what each idle
//! session costs, as requested from the allocator (before it rounds them to its size
//! classes). With `DHAT_OUT=FILE` the run also writes dhat's profile of where the blocks
//! still live at its end were allocated (open it in dhat's viewer, `dh_view.html`).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use common::Endpoint;
use gateway::config::IoDriver;

#[global_allocator]
static HEAP: dhat::Alloc = dhat::Alloc;

/// Sessions opened for the measure: enough that the maps' growth steps average out.
const SESSIONS: u64 = 2000;

/// Heap bytes (as requested, before the allocator rounds them to its size classes) one idle
/// session may hold on the completion driver, everything on its core included: its slot in
/// the loop's slab, its outbox, its entries in the core's maps and the user budgets
/// (measured: 213).
const MAX_HEAP_BYTES_PER_SESSION: usize = 250;

/// The same on monoio's driver (`GATEWAY_IO_DRIVER=io-uring` or `epoll`), where a session
/// is a task and the runtime keeps a readiness entry for its socket (measured: 520).
const MAX_HEAP_BYTES_PER_MONOIO_SESSION: usize = 560;

/// Upgrades a blocking socket by hand and reads the welcome, so that the session is open
/// and has written all it had queued.
fn open_session(gateway: &impl Endpoint, user_id: u64) -> TcpStream {
    let mut stream = TcpStream::connect(gateway.local_addr()).expect("connect");
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer {}\r\n\r\n",
        common::token(user_id)
    );
    stream.write_all(request.as_bytes()).expect("write head");
    let mut head = [0u8; 4096];
    let mut filled = 0;
    while !head[..filled].ends_with(b"\r\n\r\n") {
        let read = stream
            .read(&mut head[filled..filled + 1])
            .expect("read head");
        assert_eq!(read, 1, "the gateway hung up during the upgrade");
        filled += 1;
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    let mut frame_head = [0u8; 2];
    stream.read_exact(&mut frame_head).expect("welcome header");
    let len = match frame_head[1] & 0x7f {
        126 => {
            let mut extended = [0u8; 2];
            stream.read_exact(&mut extended).expect("welcome length");
            usize::from(u16::from_be_bytes(extended))
        }
        len => usize::from(len),
    };
    let mut welcome = [0u8; 1024];
    stream
        .read_exact(&mut welcome[..len])
        .expect("welcome payload");
    stream
}

/// Waits until the gateway counts `expected` sessions.
fn await_sessions(gateway: &gateway::Gateway, expected: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while gateway.node().metrics[0].connections.load(Relaxed) != expected {
        assert!(
            Instant::now() < deadline,
            "the gateway never counted {expected} sessions"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn an_idle_session_holds_few_heap_bytes_and_leaves_no_block_behind() {
    let profiler = match std::env::var_os("DHAT_OUT") {
        Some(file) => dhat::Profiler::builder().file_name(file).build(),
        None => dhat::Profiler::builder().testing().build(),
    };
    let gateway = common::start(1, &[]);
    // Warm up what a core allocates once, for its first session.
    let mut clients: Vec<TcpStream> = Vec::with_capacity(SESSIONS as usize);
    for user in 0..4 {
        clients.push(open_session(&gateway, 1_000_000 + user));
    }
    clients.clear();
    await_sessions(&gateway, 0);

    let before = dhat::HeapStats::get();
    for user in 0..SESSIONS {
        clients.push(open_session(&gateway, user + 1));
    }
    await_sessions(&gateway, SESSIONS as i64);
    let open = dhat::HeapStats::get();

    let per_session = (open.curr_bytes - before.curr_bytes) / SESSIONS as usize;
    let blocks = (open.curr_blocks - before.curr_blocks) as f64 / SESSIONS as f64;
    println!("{SESSIONS} idle sessions: {per_session} heap bytes in {blocks:.2} blocks each");
    if std::env::var_os("DHAT_OUT").is_some() {
        // The profile's "at t-end" figures are the open sessions' blocks.
        drop(profiler);
        return;
    }
    // The driver the cores run, which may be a fallback from the one configured.
    let bound = match gateway.io_driver() {
        IoDriver::Completion => MAX_HEAP_BYTES_PER_SESSION,
        IoDriver::IoUring | IoDriver::Epoll => MAX_HEAP_BYTES_PER_MONOIO_SESSION,
    };
    assert!(
        per_session <= bound,
        "an idle session holds {per_session} heap bytes (at most {bound})"
    );

    clients.clear();
    await_sessions(&gateway, 0);
    let closed = dhat::HeapStats::get();
    // The maps and the runtime's slab keep their grown tables (a few dozen blocks); no
    // block of a session's own may stay.
    let kept = closed.curr_blocks.saturating_sub(before.curr_blocks);
    assert!(
        kept < SESSIONS as usize / 20,
        "{kept} blocks stayed after {SESSIONS} sessions closed"
    );
}
