//! One connection's runtime glue: the connect and upgrade, then a poll loop that reads
//! (into the thread's shared buffer, so an idle connection holds none), feeds whole
//! messages to the scenario's [`Behavior`], fires its timers, and writes what it queued.
//! Scenario logic stays free of I/O: a behavior sees messages, phases and deadlines, and
//! answers by queueing frames.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use monoio::io::IntoPollIo;
use monoio::net::tcp::stream_poll::TcpStreamPoll;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use wire::ClientFrame;
use wsproto::{Decoded, Decoder, OpCode, Role};

use crate::thread::{Phase, ThreadCtx};
use crate::upgrade::{self, UpgradeError};

/// Bytes queued for one connection before the tester gives it up: the server stopped
/// reading, and an open-loop schedule would otherwise grow the queue without bound.
const MAX_QUEUED: usize = 4 * 1024 * 1024;

/// An emptied write buffer larger than this is released, so connections that once sent a
/// burst do not keep its memory while idle.
const KEEP_QUEUE_CAPACITY: usize = 16 * 1024;

/// Reads per poll before the connection yields to the thread's others.
const READS_PER_POLL: usize = 16;

/// Timer firings per poll before yielding (an open loop far behind catches up in steps).
const TIMERS_PER_POLL: usize = 1024;

/// Time the server gets to answer the tester's close frame at the end of the run.
const CLOSE_WAIT_US: u64 = 1_000_000;

/// A data message from the server.
#[derive(Debug, Clone, Copy)]
pub enum Data<'a> {
    /// A binary message.
    Binary(&'a [u8]),
    /// A text message.
    Text(&'a str),
}

/// What one connection does, without I/O. The driver calls it with the time and a queue
/// to write into.
pub trait Behavior {
    /// The thread entered `phase` (each phase before [`Phase::Stop`] once, in order; the
    /// driver itself closes the connection at Stop).
    fn on_phase(&mut self, phase: Phase, cx: &mut Cx<'_>);
    /// A whole data message arrived.
    fn on_message(&mut self, data: Data<'_>, cx: &mut Cx<'_>);
    /// A WebSocket pong arrived.
    fn on_pong(&mut self, _payload: &[u8], _cx: &mut Cx<'_>) {}
    /// The deadline passed; the behavior must move it (or clear it).
    fn on_timer(&mut self, cx: &mut Cx<'_>);
    /// When `on_timer` is next due, microseconds since the epoch.
    fn deadline(&self) -> Option<u64>;
    /// Whether setup is done (welcome seen, chat joined): the run may start.
    fn is_ready(&self) -> bool;
}

/// What a behavior may touch while handling an event.
pub struct Cx<'a> {
    /// Now, microseconds since the run's epoch.
    pub now_us: u64,
    /// The thread: stats, plan, shared state.
    pub thread: &'a ThreadCtx,
    out: &'a mut Vec<u8>,
}

impl Cx<'_> {
    /// Queues a binary frame carrying our protocol's `frame`.
    pub fn send_frame(&mut self, frame: &ClientFrame) {
        match frame.encode() {
            Ok(bytes) => self.send_binary(&bytes),
            Err(error) => self.thread.stats_mut().error(format!("encode: {error}")),
        }
    }

    /// Queues a binary message.
    pub fn send_binary(&mut self, payload: &[u8]) {
        wsproto::encode_frame(Role::Client, OpCode::Binary, true, payload, self.out);
    }

    /// Queues a WebSocket ping (payload at most 125 bytes).
    pub fn send_ping(&mut self, payload: &[u8]) {
        wsproto::encode_frame(Role::Client, OpCode::Ping, true, payload, self.out);
    }
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The tester closed it at the end of the run.
    ClientClose,
    /// The server sent a close frame (with its code, if any).
    ServerClose(Option<u16>),
    /// The server closed the TCP stream without a close frame.
    Eof,
    /// A socket error.
    Io(io::ErrorKind),
    /// The server broke the WebSocket protocol; the code is the one we close with.
    Protocol(u16),
    /// The server stopped reading and the queue passed its bound.
    Overflow,
}

impl End {
    /// A label for the close counts.
    pub fn label(&self) -> String {
        match self {
            End::ClientClose => "client_close_at_end".to_owned(),
            End::ServerClose(None) => "server_close_without_code".to_owned(),
            End::ServerClose(Some(code)) => match close_name(*code) {
                Some(name) => format!("server_close_{code}_{name}"),
                None => format!("server_close_{code}"),
            },
            End::Eof => "eof_without_close_frame".to_owned(),
            End::Io(kind) => format!("io_error: {kind}"),
            End::Protocol(code) => format!("protocol_error_{code}"),
            End::Overflow => "send_queue_overflow".to_owned(),
        }
    }

    /// Whether the end counts as an error (anything but the end of the run or a normal
    /// close by the server).
    pub fn is_error(&self) -> bool {
        !matches!(self, End::ClientClose | End::ServerClose(Some(1000)))
    }
}

/// Names of the close codes the gateway uses (RFC 6455 and `wire::CloseCode`).
fn close_name(code: u16) -> Option<&'static str> {
    Some(match code {
        1000 => "normal",
        1001 => "going_away",
        1002 => "protocol_error",
        1007 => "invalid_payload",
        1008 => "policy_violation",
        1009 => "message_too_big",
        1011 => "internal_error",
        4000 => "slow_consumer",
        4001 => "idle_timeout",
        4002 => "token_expired",
        _ => return None,
    })
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Creating or binding the socket.
    #[error("socket: {0}")]
    Socket(io::Error),
    /// The TCP connect (or the first write, which waits for it).
    #[error("connect: {0}")]
    Connect(io::Error),
    /// Reading the upgrade response.
    #[error("upgrade read: {0}")]
    Read(io::Error),
    /// The server closed during the upgrade.
    #[error("closed during the upgrade")]
    Closed,
    /// The server refused or garbled the upgrade.
    #[error("upgrade: {0}")]
    Upgrade(#[from] UpgradeError),
}

impl OpenError {
    /// A short label for the error counts.
    pub fn label(&self) -> String {
        match self {
            OpenError::Socket(e) => format!("socket: {}", e.kind()),
            OpenError::Connect(e) => format!("connect: {}", e.kind()),
            OpenError::Read(e) => format!("upgrade read: {}", e.kind()),
            OpenError::Closed => "closed_during_upgrade".to_owned(),
            OpenError::Upgrade(e) => format!("upgrade: {}", e.label()),
        }
    }
}

/// Connects (from `source` when given) and upgrades; returns the stream and the bytes the
/// server sent after its 101 (its first frames).
pub async fn open(
    addr: SocketAddr,
    source: Option<std::net::IpAddr>,
    request: &[u8],
    key: &str,
) -> Result<(TcpStreamPoll, Vec<u8>), OpenError> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(OpenError::Socket)?;
    socket.set_nonblocking(true).map_err(OpenError::Socket)?;
    socket.set_tcp_nodelay(true).map_err(OpenError::Socket)?;
    if let Some(ip) = source {
        socket
            .bind(&SocketAddr::new(ip, 0).into())
            .map_err(OpenError::Socket)?;
    }
    // monoio's own connect cannot bind a source address first, so the connect is started
    // here and the first write waits for it (a non-blocking socket answers EAGAIN until it
    // is established, then the error if it failed).
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(OpenError::Connect(e)),
    }
    let stream = monoio::net::TcpStream::from_std(socket.into()).map_err(OpenError::Socket)?;
    let mut io = stream.into_poll_io().map_err(OpenError::Socket)?;
    io.write_all(request).await.map_err(OpenError::Connect)?;
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = io.read(&mut chunk).await.map_err(OpenError::Read)?;
        if n == 0 {
            return Err(OpenError::Closed);
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(len) = upgrade::response(&head, key)? {
            head.drain(..len);
            head.shrink_to_fit();
            return Ok((io, head));
        }
    }
}

/// Runs `behavior` on an upgraded connection until the run stops or the connection ends.
pub async fn drive<B: Behavior>(
    thread: &ThreadCtx,
    io: TcpStreamPoll,
    leftover: Vec<u8>,
    behavior: B,
) -> End {
    let max_message = thread.plan().work.max_message();
    let mut driver = Driver {
        io,
        decoder: Decoder::new(Role::Client, max_message),
        pending: leftover,
        session: Session {
            behavior,
            out: Vec::new(),
            end: None,
            closing: false,
        },
        written: 0,
        armed: None,
        phase_seen: Phase::Connecting,
        registered_for: None,
        ready_reported: false,
        started: false,
        close_by: None,
    };
    let end = poll_fn(|cx| driver.poll(thread, cx)).await;
    if !driver.ready_reported {
        thread.settled();
    }
    end
}

struct Driver<B> {
    io: TcpStreamPoll,
    decoder: Decoder,
    /// Received bytes short of a whole frame.
    pending: Vec<u8>,
    session: Session<B>,
    /// Bytes of `session.out` already written.
    written: usize,
    /// The deadline the pacer will wake this connection for.
    armed: Option<u64>,
    phase_seen: Phase,
    /// The phase whose change this connection's waker is registered for.
    registered_for: Option<Phase>,
    ready_reported: bool,
    started: bool,
    /// At Stop: the close frame went out, and the server must answer by then.
    close_by: Option<u64>,
}

/// The parts of the driver a decoded message may touch while it borrows the decoder.
struct Session<B> {
    behavior: B,
    out: Vec<u8>,
    end: Option<End>,
    /// The tester sent its close frame: the accounting is closed, data is ignored, and
    /// the server's close (or EOF) ends the connection normally.
    closing: bool,
}

impl<B: Behavior> Session<B> {
    fn cx<'a>(&'a mut self, thread: &'a ThreadCtx, now_us: u64) -> (&'a mut B, Cx<'a>) {
        (
            &mut self.behavior,
            Cx {
                now_us,
                thread,
                out: &mut self.out,
            },
        )
    }

    fn handle(&mut self, thread: &ThreadCtx, message: wsproto::Message<'_>) {
        let now_us = thread.now_us();
        match message {
            wsproto::Message::Binary(_) | wsproto::Message::Text(_) | wsproto::Message::Pong(_)
                if self.closing => {}
            wsproto::Message::Close { .. } if self.closing => self.end = Some(End::ClientClose),
            wsproto::Message::Binary(bytes) => {
                let (behavior, mut cx) = self.cx(thread, now_us);
                behavior.on_message(Data::Binary(bytes), &mut cx);
            }
            wsproto::Message::Text(text) => {
                let (behavior, mut cx) = self.cx(thread, now_us);
                behavior.on_message(Data::Text(text), &mut cx);
            }
            wsproto::Message::Ping(payload) => {
                wsproto::encode_frame(Role::Client, OpCode::Pong, true, payload, &mut self.out);
            }
            wsproto::Message::Pong(payload) => {
                let (behavior, mut cx) = self.cx(thread, now_us);
                behavior.on_pong(payload, &mut cx);
            }
            wsproto::Message::Close { code, .. } => {
                // Answer with the same code, as RFC 6455 asks, then end.
                let reply = code.unwrap_or(1000).to_be_bytes();
                wsproto::encode_frame(Role::Client, OpCode::Close, true, &reply, &mut self.out);
                self.end = Some(End::ServerClose(code));
            }
        }
    }

    /// Decodes and handles every whole message at the front of `buf`; returns the bytes
    /// consumed.
    fn decode_all(&mut self, thread: &ThreadCtx, decoder: &mut Decoder, buf: &mut [u8]) -> usize {
        let mut pos = 0;
        while self.end.is_none() {
            match decoder.decode(&mut buf[pos..]) {
                Ok(Decoded {
                    message: Some(message),
                    consumed,
                }) => {
                    self.handle(thread, message);
                    pos += consumed;
                }
                Ok(Decoded {
                    message: None,
                    consumed,
                }) => return pos + consumed,
                Err(error) => {
                    let code = error.close_code();
                    wsproto::encode_frame(
                        Role::Client,
                        OpCode::Close,
                        true,
                        &code.to_be_bytes(),
                        &mut self.out,
                    );
                    self.end = Some(End::Protocol(code));
                }
            }
        }
        pos
    }
}

impl<B: Behavior> Driver<B> {
    fn poll(&mut self, thread: &ThreadCtx, cx: &mut Context<'_>) -> Poll<End> {
        if !self.started {
            self.started = true;
            let mut leftover = std::mem::take(&mut self.pending);
            let used = self
                .session
                .decode_all(thread, &mut self.decoder, &mut leftover);
            leftover.drain(..used);
            self.pending = leftover;
        }
        self.phases(thread, cx);
        if self.session.end.is_none() {
            self.read(thread, cx);
        }
        if self.session.end.is_none() && !self.session.closing {
            self.timers(thread, cx);
        }
        if !self.ready_reported && self.session.behavior.is_ready() {
            self.ready_reported = true;
            thread.settled();
        }
        self.write(cx);
        if let Some(end) = &self.session.end {
            // Ending: whatever the kernel took is sent after the socket closes; a server
            // that stopped reading does not get to hold the run.
            return Poll::Ready(end.clone());
        }
        if self.session.out.len() - self.written > MAX_QUEUED {
            return Poll::Ready(End::Overflow);
        }
        match self.arm(thread, cx) {
            Some(end) => Poll::Ready(end),
            None => Poll::Pending,
        }
    }

    fn phases(&mut self, thread: &ThreadCtx, cx: &mut Context<'_>) {
        let phase = thread.phase();
        while self.phase_seen < phase && self.session.end.is_none() {
            self.phase_seen = self.phase_seen.next();
            if self.phase_seen == Phase::Stop {
                wsproto::encode_frame(
                    Role::Client,
                    OpCode::Close,
                    true,
                    &1000u16.to_be_bytes(),
                    &mut self.session.out,
                );
                self.session.closing = true;
                self.close_by = Some(thread.now_us() + CLOSE_WAIT_US);
            } else {
                let (behavior, mut bcx) = self.session.cx(thread, thread.now_us());
                behavior.on_phase(self.phase_seen, &mut bcx);
            }
        }
        if phase < Phase::Stop && self.registered_for != Some(phase) {
            thread.wake_on_phase_change(cx.waker().clone());
            self.registered_for = Some(phase);
        }
    }

    fn read(&mut self, thread: &ThreadCtx, cx: &mut Context<'_>) {
        for _ in 0..READS_PER_POLL {
            let mut scratch = thread.scratch();
            let mut buf = ReadBuf::new(&mut scratch[..]);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Pending => return,
                Poll::Ready(Err(error)) => {
                    self.session.end = Some(if self.session.closing {
                        End::ClientClose
                    } else {
                        End::Io(error.kind())
                    });
                    return;
                }
                Poll::Ready(Ok(())) => {
                    let n = buf.filled().len();
                    if n == 0 {
                        self.session.end = Some(if self.session.closing {
                            End::ClientClose
                        } else {
                            End::Eof
                        });
                        return;
                    }
                    self.consume(thread, &mut scratch[..n]);
                    if self.session.end.is_some() {
                        return;
                    }
                }
            }
        }
        // More may be waiting: come back after the thread's other connections had a turn.
        cx.waker().wake_by_ref();
    }

    fn consume(&mut self, thread: &ThreadCtx, fresh: &mut [u8]) {
        if self.pending.is_empty() {
            let used = self.session.decode_all(thread, &mut self.decoder, fresh);
            self.pending.extend_from_slice(&fresh[used..]);
        } else {
            self.pending.extend_from_slice(fresh);
            let mut pending = std::mem::take(&mut self.pending);
            let used = self
                .session
                .decode_all(thread, &mut self.decoder, &mut pending);
            pending.drain(..used);
            if pending.is_empty() {
                pending = Vec::new();
            }
            self.pending = pending;
        }
    }

    fn timers(&mut self, thread: &ThreadCtx, cx: &mut Context<'_>) {
        let now_us = thread.now_us();
        for _ in 0..TIMERS_PER_POLL {
            match self.session.behavior.deadline() {
                Some(due) if due <= now_us => {
                    let (behavior, mut bcx) = self.session.cx(thread, now_us);
                    behavior.on_timer(&mut bcx);
                }
                _ => return,
            }
        }
        cx.waker().wake_by_ref();
    }

    fn write(&mut self, cx: &mut Context<'_>) {
        let out = &mut self.session.out;
        while self.written < out.len() {
            match Pin::new(&mut self.io).poll_write(cx, &out[self.written..]) {
                Poll::Ready(Ok(0)) => {
                    self.session.end = Some(End::Io(io::ErrorKind::WriteZero));
                    return;
                }
                Poll::Ready(Ok(n)) => self.written += n,
                Poll::Ready(Err(error)) => {
                    self.session.end.get_or_insert(End::Io(error.kind()));
                    return;
                }
                Poll::Pending => return,
            }
        }
        out.clear();
        self.written = 0;
        if out.capacity() > KEEP_QUEUE_CAPACITY {
            *out = Vec::new();
        }
    }

    fn arm(&mut self, thread: &ThreadCtx, cx: &mut Context<'_>) -> Option<End> {
        let now_us = thread.now_us();
        if self.armed.is_some_and(|armed| armed <= now_us) {
            // That wake-up was spent.
            self.armed = None;
        }
        let due = match self.close_by {
            Some(by) if by <= now_us => return Some(End::ClientClose),
            Some(by) => by,
            None => self.session.behavior.deadline()?,
        };
        if due <= now_us {
            // Due already (time moved on while handling): run the timers on the next poll.
            cx.waker().wake_by_ref();
        } else if self.armed != Some(due) {
            thread.pacer.wake_at(due, cx.waker().clone());
            self.armed = Some(due);
        }
        None
    }
}
