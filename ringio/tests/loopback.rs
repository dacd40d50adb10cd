//! The loop over real loopback sockets: echo, buffer exhaustion, writes larger than the
//! socket buffer, refusal past the connection limit, and frames to other connections.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use ringio::{Config, ConnId, EventLoop, Handler, Outbox};

/// Sends every byte back; a connection that sends `q` is closed after its echo.
struct Echo {
    opened: usize,
    closed: usize,
}

impl Handler for Echo {
    type Session = ();

    fn on_open(&mut self, _: ConnId, _: SocketAddr, _: &mut Outbox) {
        self.opened += 1;
    }

    fn on_data(&mut self, conn: ConnId, _: &mut (), data: &mut [u8], out: &mut Outbox) {
        out.send(conn, Bytes::copy_from_slice(data));
        if data.contains(&b'q') {
            out.close(conn);
        }
    }

    fn on_close(&mut self, _: ConnId, _: &mut ()) {
        self.closed += 1;
    }
}

/// Echoes like [`Echo`], but its first receive holds the loop's thread for `stall`, so that
/// whatever arrives meanwhile completes in the next turn at once.
struct StallOnce {
    stall: Option<Duration>,
}

impl Handler for StallOnce {
    type Session = ();

    fn on_open(&mut self, _: ConnId, _: SocketAddr, _: &mut Outbox) {}

    fn on_data(&mut self, conn: ConnId, _: &mut (), data: &mut [u8], out: &mut Outbox) {
        if let Some(stall) = self.stall.take() {
            thread::sleep(stall);
        }
        out.send(conn, Bytes::copy_from_slice(data));
    }

    fn on_close(&mut self, _: ConnId, _: &mut ()) {}
}

/// Answers any bytes with `reply_len` bytes counting up from 0 (mod 251), in frames of at
/// most 64 KiB.
struct Flood {
    reply_len: usize,
}

impl Handler for Flood {
    type Session = ();

    fn on_open(&mut self, _: ConnId, _: SocketAddr, _: &mut Outbox) {}

    fn on_data(&mut self, conn: ConnId, _: &mut (), _: &mut [u8], out: &mut Outbox) {
        let pattern: Vec<u8> = (0..self.reply_len).map(|i| (i % 251) as u8).collect();
        for chunk in pattern.chunks(64 * 1024) {
            out.send(conn, Bytes::copy_from_slice(chunk));
        }
    }

    fn on_close(&mut self, _: ConnId, _: &mut ()) {}
}

/// Sends every message to every open connection, the sender included.
#[derive(Default)]
struct Fanout {
    members: Vec<ConnId>,
}

impl Handler for Fanout {
    type Session = ();

    fn on_open(&mut self, conn: ConnId, _: SocketAddr, _: &mut Outbox) {
        self.members.push(conn);
    }

    fn on_data(&mut self, _: ConnId, _: &mut (), data: &mut [u8], out: &mut Outbox) {
        let frame = Bytes::copy_from_slice(data);
        for &member in &self.members {
            out.send(member, frame.clone());
        }
    }

    fn on_close(&mut self, conn: ConnId, _: &mut ()) {
        self.members.retain(|&member| member != conn);
    }
}

/// A loop on its own thread until the guard drops; `inspect` runs on the loop's last turn
/// and its answer comes back from `stop`.
struct Running<T> {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    done: Option<thread::JoinHandle<T>>,
}

impl<T: Send + 'static> Running<T> {
    fn start<H: Handler + 'static>(
        config: impl FnOnce(SocketAddr) -> Config + Send + 'static,
        handler: impl FnOnce() -> H + Send + 'static,
        inspect: impl FnOnce(&EventLoop<H>) -> T + Send + 'static,
    ) -> Running<T> {
        let stop = Arc::new(AtomicBool::new(false));
        let (addr_tx, addr_rx) = mpsc::channel();
        let stopping = Arc::clone(&stop);
        let done = thread::spawn(move || {
            let config = config("127.0.0.1:0".parse().unwrap());
            let mut event_loop = EventLoop::new(config, handler()).unwrap();
            addr_tx.send(event_loop.local_addr().unwrap()).unwrap();
            while !stopping.load(Ordering::Relaxed) {
                event_loop.turn(Some(Duration::from_millis(5))).unwrap();
            }
            inspect(&event_loop)
        });
        Running {
            addr: addr_rx.recv().unwrap(),
            stop,
            done: Some(done),
        }
    }

    fn stop(mut self) -> T {
        self.stop.store(true, Ordering::Relaxed);
        self.done.take().unwrap().join().unwrap()
    }
}

impl<T> Drop for Running<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

fn read_exactly(stream: &mut TcpStream, len: usize) -> Vec<u8> {
    let mut got = vec![0; len];
    stream.read_exact(&mut got).unwrap();
    got
}

#[test]
fn echoes_on_many_connections_and_closes_when_asked() {
    let running = Running::start(
        Config::new,
        || Echo {
            opened: 0,
            closed: 0,
        },
        |event_loop| {
            (
                event_loop.handler().opened,
                event_loop.handler().closed,
                event_loop.connections(),
            )
        },
    );
    let mut clients: Vec<TcpStream> = (0..50).map(|_| connect(running.addr)).collect();
    for round in 0..20u8 {
        for (i, client) in clients.iter_mut().enumerate() {
            client.write_all(&[round, i as u8, b'x']).unwrap();
        }
        for (i, client) in clients.iter_mut().enumerate() {
            assert_eq!(read_exactly(client, 3), [round, i as u8, b'x']);
        }
    }
    for client in &mut clients {
        client.write_all(b"q").unwrap();
        assert_eq!(read_exactly(client, 1), b"q");
        // The server closes after the echo: end of stream.
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }
    let (opened, closed, open_now) = running.stop();
    assert_eq!((opened, closed, open_now), (50, 50, 0));
}

#[test]
fn a_dry_buffer_ring_pauses_receives_without_losing_bytes() {
    // Two 64-byte buffers for 20 clients sending 4 KiB each at once: the kernel runs out of
    // buffers again and again, and every receive must be re-armed after they come back.
    let running = Running::start(
        |listen| Config {
            buffers: 2,
            buffer_size: 64,
            ..Config::new(listen)
        },
        || Echo {
            opened: 0,
            closed: 0,
        },
        EventLoop::buffer_ring_dry,
    );
    let payloads: Vec<Vec<u8>> = (0..20u8)
        .map(|client| {
            (0..4096)
                .map(|i| (i as u8).wrapping_mul(7) ^ client)
                .filter(|&b| b != b'q')
                .collect()
        })
        .collect();
    let mut clients: Vec<TcpStream> = (0..20).map(|_| connect(running.addr)).collect();
    for (client, payload) in clients.iter_mut().zip(&payloads) {
        client.write_all(payload).unwrap();
    }
    for (client, payload) in clients.iter_mut().zip(&payloads) {
        assert_eq!(&read_exactly(client, payload.len()), payload);
    }
    assert!(
        running.stop() > 0,
        "the ring never ran dry: the test proves nothing"
    );
}

#[test]
fn the_kernel_holds_a_few_buffers_for_quiet_connections_and_more_under_a_burst() {
    // 512 buffers of 1 KiB. One client at a time takes one buffer per turn: the kernel
    // keeps its minimum of 32.
    let config = |listen| Config {
        buffers: 512,
        buffer_size: 1024,
        ..Config::new(listen)
    };
    let quiet = Running::start(
        config,
        || StallOnce { stall: None },
        EventLoop::buffers_posted,
    );
    let mut client = connect(quiet.addr);
    for round in 0..50u8 {
        client.write_all(&[round; 100]).unwrap();
        assert_eq!(read_exactly(&mut client, 100), [round; 100]);
    }
    assert_eq!(quiet.stop(), 32);

    // While the loop is held, 100 clients send 8 KiB each: the next turn finds the ring
    // dry, the kernel is given more, and no byte is lost.
    let busy = Running::start(
        config,
        || StallOnce {
            stall: Some(Duration::from_millis(300)),
        },
        EventLoop::buffers_posted,
    );
    let mut first = connect(busy.addr);
    first.write_all(b"!").unwrap();
    let payloads: Vec<Vec<u8>> = (0..100u8)
        .map(|client| (0..8192).map(|i| (i as u8) ^ client).collect())
        .collect();
    let mut clients: Vec<TcpStream> = (0..100).map(|_| connect(busy.addr)).collect();
    for (client, payload) in clients.iter_mut().zip(&payloads) {
        client.write_all(payload).unwrap();
    }
    assert_eq!(read_exactly(&mut first, 1), b"!");
    for (client, payload) in clients.iter_mut().zip(&payloads) {
        assert_eq!(&read_exactly(client, payload.len()), payload);
    }
    let posted = busy.stop();
    assert!(posted > 32, "the kernel still holds {posted} buffers");
}

#[test]
fn a_reply_larger_than_the_socket_buffers_arrives_whole_and_in_order() {
    // 16 MiB cannot fit in loopback's socket buffers while the client reads slowly, so the
    // kernel writes part of a batch and the loop resumes from where it stopped.
    const LEN: usize = 16 << 20;
    let running = Running::start(
        |listen| Config {
            max_queued_bytes: LEN,
            ..Config::new(listen)
        },
        || Flood { reply_len: LEN },
        EventLoop::short_writes,
    );
    let mut client = connect(running.addr);
    client.write_all(b"go").unwrap();
    // A slow reader: each pause lets the socket fill again under a 4 MiB vectored write.
    let mut got = Vec::with_capacity(LEN);
    while got.len() < LEN {
        thread::sleep(Duration::from_millis(2));
        let chunk = (LEN - got.len()).min(256 * 1024);
        got.extend(read_exactly(&mut client, chunk));
    }
    assert!(got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    assert!(
        running.stop() > 0,
        "no write was short: the test proves nothing"
    );
}

#[test]
fn a_client_over_the_send_queue_bound_is_closed() {
    let running = Running::start(
        |listen| Config {
            max_queued_bytes: 1 << 20,
            ..Config::new(listen)
        },
        || Flood { reply_len: 4 << 20 },
        |event_loop| event_loop.connections(),
    );
    let mut client = connect(running.addr);
    client.write_all(b"go").unwrap();
    let mut got = Vec::new();
    // Closed before 4 MiB were queued: the stream ends (or is reset) short of it.
    let _ = client.read_to_end(&mut got);
    assert!(got.len() < 4 << 20);
    assert_eq!(running.stop(), 0);
}

#[test]
fn connections_past_the_limit_are_refused() {
    let running = Running::start(
        |listen| Config {
            max_connections: 2,
            ..Config::new(listen)
        },
        || Echo {
            opened: 0,
            closed: 0,
        },
        |event_loop| (event_loop.refused(), event_loop.handler().opened),
    );
    let mut kept: Vec<TcpStream> = (0..2).map(|_| connect(running.addr)).collect();
    for client in &mut kept {
        client.write_all(b"a").unwrap();
        assert_eq!(read_exactly(client, 1), b"a");
    }
    let mut third = connect(running.addr);
    let mut rest = Vec::new();
    let _ = third.read_to_end(&mut rest);
    assert!(rest.is_empty());
    assert_eq!(running.stop(), (1, 2));
}

#[test]
fn frames_reach_other_connections() {
    let running = Running::start(Config::new, Fanout::default, |_| ());
    // One at a time: a client is a member once its own hello comes back, and later
    // clients' hellos reach it too.
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut client = connect(running.addr);
        client.write_all(b"h").unwrap();
        assert_eq!(read_exactly(&mut client, 1), b"h");
        clients.push(client);
    }
    // Earlier hellos also went to later clients; drain those first.
    for (i, client) in clients.iter_mut().enumerate() {
        let _ = read_exactly(client, 4 - i);
    }
    clients[2].write_all(b"m").unwrap();
    for client in &mut clients {
        assert_eq!(read_exactly(client, 1), b"m");
    }
    running.stop();
}
