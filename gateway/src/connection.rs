//! The runtime glue of one connection: the upgrade (with its time and size bounds), then a
//! poll loop that reads only when the socket is readable, into the core's shared buffer,
//! and writes the session's queue in order, then the closing handshake.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use monoio::io::IntoPollIo;
use monoio::net::TcpStream;
use monoio::net::tcp::stream_poll::TcpStreamPoll;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use wire::server::{Pong, Welcome};
use wire::{ClientFrameRef, CloseCode, ErrorCode, Refusal, ServerFrame, limits::MAX_FRAME_BYTES};

use crate::core::{Core, UpgradeGuard};
use crate::handshake::{self, UpgradeRequest};
use crate::outbox::{Outbox, Outgoing};
use crate::router::{Delivery, Origin};
use crate::session::{self, RateDecision, TokenBucket};
use crate::user_limit::UserBudgetHandle;

/// Reads one session may do per poll before it yields to the core's other sessions.
const READS_PER_POLL: usize = 16;

/// A pending partial frame above this size is not kept in a grown buffer once consumed.
const PENDING_KEEP_BYTES: usize = 1024;

/// How long the server waits for the peer's close frame after sending its own before it
/// closes TCP (RFC 6455 section 7.1.1). Closing at once would meet the peer's reply with a
/// reset, and a reset can cost the peer the close frame it has not read yet (browsers then
/// report 1006 instead of the server's code).
pub const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Most frames handed to the kernel in one write.
const MAX_FRAMES_PER_WRITE: usize = 32;

/// Frame bytes taken from the outbox for one write; past them, the rest waits in the outbox
/// (where the slow-consumer bounds count it).
const MAX_BYTES_PER_WRITE: usize = 64 * 1024;

/// A plain or TLS socket in readiness mode: no buffer is held while it waits.
pub enum Transport {
    /// ws://
    Plain(TcpStreamPoll),
    /// wss:// (rustls keeps its own record buffers, so TLS sessions cost more memory).
    Tls(Box<tokio_rustls::server::TlsStream<TcpStreamPoll>>),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(s) => s.is_write_vectored(),
            Transport::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Serves one accepted connection to its end. `upgrading` was taken when the connection
/// was accepted, before this task was spawned: a core that stops right after accepting
/// must still see it and wait for it.
///
/// This future is what an open session costs for its whole life, so it holds only the
/// [`Session`]: the upgrade (its buffers, its timer, its TLS handshake) runs in a boxed
/// future that is freed before the session starts.
pub fn serve(
    core: Rc<Core>,
    stream: TcpStream,
    peer: SocketAddr,
    upgrading: UpgradeGuard,
) -> impl Future<Output = ()> {
    // Built outside the async block, so the block captures only the box, not the
    // arguments (an async fn would keep their slots for its whole life).
    let opened = Box::pin(open(core, stream, peer, upgrading));
    async move {
        let Some(mut session) = opened.await else {
            return;
        };
        let code = match poll_fn(|cx| session.poll(cx)).await {
            Ended::CloseWritten(code) => {
                // Boxed: the wait's timer is part of a closing session only.
                Box::pin(session.finish_closing_handshake()).await;
                code
            }
            Ended::Gone(code) => code,
        };
        session.finish(code);
    }
}

/// The upgrade within its time limit, then the session's registration and welcome.
async fn open(
    core: Rc<Core>,
    stream: TcpStream,
    peer: SocketAddr,
    upgrading: UpgradeGuard,
) -> Option<Session> {
    let _ = stream.set_nodelay(true);
    // An upgrade still under way when a shutdown has drained long enough is dropped: the
    // stopping process must not wait out a slow client's handshake timeout.
    let accepted = {
        let cut = async {
            core.shutdown_started().await;
            monoio::time::sleep(crate::core::SHUTDOWN_DRAIN).await;
        };
        let upgrade = std::pin::pin!(upgrade(&core, stream));
        let cut = std::pin::pin!(cut);
        monoio::time::timeout(
            core.node.config.handshake_timeout,
            futures_util::future::select(upgrade, cut),
        )
        .await
        .map(|raced| match raced {
            futures_util::future::Either::Left((accepted, _)) => accepted,
            futures_util::future::Either::Right(((), _)) => None,
        })
    };
    drop(upgrading);
    let (io, request, claims, mut leftover) = match accepted {
        Ok(Some(accepted)) => accepted,
        Ok(None) => return None,
        Err(_) => {
            core.metrics.refuse("handshake_timeout");
            tracing::debug!(%peer, "handshake timed out");
            return None;
        }
    };
    let user_id = claims.user_id;
    let outbox = core.open_session(user_id, claims.exp, request.wants_json);
    let origin = Origin {
        user_id,
        connection_id: outbox.connection_id,
    };
    let welcome = ServerFrame::Welcome(Welcome {
        user_id,
        connection_id: outbox.connection_id,
        node_id: core.node.config.node_id,
        server_time_us: core.now_us(),
        heartbeat_ms: core.node.config.ping_interval.as_millis() as u32,
        max_frame_bytes: MAX_FRAME_BYTES as u32,
    });
    push_own(&core, &outbox, &welcome);
    if core.is_shutting_down() {
        // The shutdown began while the 101 was being written, after the core closed its
        // other sessions: greet, then send away like them.
        outbox.close(CloseCode::GOING_AWAY);
    }
    core.with_engine(|engine| engine.connected(&core, origin));
    let mut session = Session {
        bucket: TokenBucket::new(core.node.config.frame_burst, Instant::now()),
        user_budget: core.node.user_budgets.as_ref().map(|b| b.join(user_id)),
        core,
        io,
        decoder: wsproto::Decoder::new(wsproto::Role::Server, MAX_FRAME_BYTES),
        pending: Vec::new(),
        paused_mid_read: false,
        writing: None,
        outbox,
        close_sent: None,
        closing: Closing::AwaitPeerClose,
    };
    // Frames the client pipelined behind its request head: act on them now, since no read
    // may ever come to trigger it.
    if !leftover.is_empty() {
        let now = Instant::now();
        session.outbox.touch(now);
        session.consume(&mut leftover, now);
    }
    Some(session)
}

/// Whether the gateway is shutting down: refuse upgrades rather than welcome and close them.
fn shutting_down(core: &Core) -> bool {
    core.is_shutting_down() || core.node.stopping.load(Ordering::Acquire)
}

/// Answers a connection refused before its upgrade is even read (the per-IP limit).
pub async fn refuse(stream: TcpStream, status: u16, reason: &'static str) {
    use monoio::io::AsyncWriteRentExt;
    let mut stream = stream;
    let (_, _) = stream
        .write_all(wsproto::handshake::refusal(status, reason))
        .await;
}

/// Reads and answers the HTTP upgrade. `None` when the client was refused or went away.
async fn upgrade(
    core: &Core,
    stream: TcpStream,
) -> Option<(Transport, UpgradeRequest, crate::auth::Claims, Vec<u8>)> {
    let poll = match stream.into_poll_io() {
        Ok(poll) => poll,
        Err(error) => {
            tracing::warn!(%error, "could not switch a socket to readiness mode");
            return None;
        }
    };
    let mut io = match &core.node.tls {
        Some(acceptor) => match acceptor.accept(poll).await {
            Ok(tls) => Transport::Tls(Box::new(tls)),
            Err(error) => {
                core.metrics.refuse("tls");
                tracing::debug!(%error, "TLS handshake failed");
                return None;
            }
        },
        None => Transport::Plain(poll),
    };
    let limits = wsproto::handshake::HandshakeLimits {
        max_header_bytes: core.node.config.max_header_bytes,
        ..Default::default()
    };
    let mut head = Vec::with_capacity(1024);
    let (request, consumed) = loop {
        if head.len() == head.capacity() {
            head.reserve(head.capacity());
        }
        match io.read_buf(&mut head).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        match handshake::parse_upgrade(&head, &limits) {
            Ok(Some(parsed)) => break parsed,
            Ok(None) => continue,
            Err(error) => {
                core.metrics.refuse(error.label());
                let _ = io.write_all(&error.refusal()).await;
                let _ = io.shutdown().await;
                return None;
            }
        }
    };
    let refuse = |status: u16, label: &'static str, reason: String| {
        core.metrics.refuse(label);
        wsproto::handshake::refusal(status, &reason)
    };
    if shutting_down(core) {
        let refusal = refuse(
            503,
            "shutting_down",
            "the gateway is shutting down".to_owned(),
        );
        let _ = io.write_all(&refusal).await;
        let _ = io.shutdown().await;
        return None;
    }
    let origin_ok =
        handshake::origin_allowed(request.origin.as_deref(), &core.node.config.allowed_origins);
    let refusal = (!origin_ok).then(|| refuse(403, "origin", "origin not allowed".to_owned()));
    let claims = match (&refusal, request.token.as_deref()) {
        (Some(_), _) => None,
        (None, None) => {
            let _ = io
                .write_all(&refuse(401, "missing", "no token".to_owned()))
                .await;
            None
        }
        (None, Some(token)) => match core.node.verifier.verify(token) {
            Ok(claims) => Some(claims),
            Err(error) => {
                let _ = io
                    .write_all(&refuse(401, error.label(), error.to_string()))
                    .await;
                None
            }
        },
    };
    if let Some(refusal) = &refusal {
        let _ = io.write_all(refusal).await;
    }
    let Some(claims) = claims else {
        let _ = io.shutdown().await;
        return None;
    };
    if io
        .write_all(&handshake::switching_protocols(&request))
        .await
        .is_err()
    {
        return None;
    }
    // What the client sent after its head is the start of the WebSocket stream.
    let leftover = head.split_off(consumed);
    Some((io, request, claims, leftover))
}

fn push_own(core: &Core, outbox: &Outbox, frame: &ServerFrame) {
    match session::own_frame(frame, outbox.is_text()) {
        Ok(bytes) => {
            core.metrics.frame_out(frame.kind() as u8);
            outbox.push(Outgoing::Own(bytes), &core.metrics);
        }
        Err(error) => {
            tracing::error!(%error, kind = frame.kind().name(), "could not encode a reply")
        }
    }
}

struct Session {
    core: Rc<Core>,
    io: Transport,
    decoder: wsproto::Decoder,
    /// The start of a frame whose rest has not arrived; empty (no allocation) when idle.
    /// While the session is behind, also the whole messages of its last read not acted on
    /// yet (at most one read, [`crate::core::SCRATCH_BYTES`]).
    pending: Vec<u8>,
    /// Whether `pending` may hold whole messages, left when the session fell behind.
    paused_mid_read: bool,
    /// The write under way; allocated only while one is.
    writing: Option<Box<Writing>>,
    bucket: TokenBucket,
    /// The user's budget, shared with its other connections; `None` without a user limit.
    user_budget: Option<UserBudgetHandle>,
    outbox: Rc<Outbox>,
    /// The close code once our close frame is queued.
    close_sent: Option<CloseCode>,
    /// What the closing handshake waits for once our close frame is written.
    closing: Closing,
}

/// Frames taken from the outbox for one write, and how much of the first went out.
struct Writing {
    frames: VecDeque<(Bytes, Option<Arc<Delivery>>)>,
    written: usize,
}

/// Why the poll loop stops: the session is over with this code.
type Closed = CloseCode;

/// How the poll loop ended.
enum Ended {
    /// Our close frame is written; the closing handshake goes on.
    CloseWritten(CloseCode),
    /// The connection failed or was dropped: nothing more can be said on it.
    Gone(CloseCode),
}

/// What the closing handshake waits for once our close frame is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    /// The peer's close, for at most [`CLOSE_LINGER`], reading and dropping its other
    /// frames meanwhile.
    AwaitPeerClose,
    /// Nothing: the peer closed first, and our close answered it.
    PeerClosed,
    /// The peer to hang up, for at most [`CLOSE_LINGER`]: its stream broke the protocol
    /// and cannot be decoded any further, so what arrives is dropped unread.
    Discard,
}

impl Session {
    /// Unregisters the ended session.
    fn finish(self, code: CloseCode) {
        let origin = self.origin();
        let Session { core, outbox, .. } = self;
        core.metrics.close(code.0);
        core.close_session(&outbox);
        core.with_engine(|engine| engine.disconnected(&core, origin));
    }

    /// Who this session is, for the engine: kept in the outbox alone.
    fn origin(&self) -> Origin {
        Origin {
            user_id: self.outbox.user_id,
            connection_id: self.outbox.connection_id,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Ended> {
        self.outbox.register(cx.waker());
        for _ in 0..READS_PER_POLL {
            if let Err(code) = ready_or_pending(self.poll_write(cx)) {
                return Poll::Ready(Ended::Gone(code));
            }
            if let Some(code) = self.outbox.close_requested() {
                if self.outbox.is_aborted() {
                    return Poll::Ready(Ended::Gone(code));
                }
                if self.close_sent.is_none() {
                    self.close_sent = Some(code);
                    let frame = Bytes::from(wsproto::close_frame(code.0, ""));
                    self.outbox.push_final(frame, &self.core.metrics);
                    continue;
                }
                if self.writing.is_none() && self.outbox.is_empty() {
                    return Poll::Ready(Ended::CloseWritten(code));
                }
                return Poll::Pending;
            }
            // A client behind on what it was sent is not read until it catches up (the
            // socket's writability wakes this task): it cannot have replies queued faster
            // than it takes them.
            if self.outbox.is_behind() {
                return Poll::Pending;
            }
            if self.paused_mid_read {
                self.paused_mid_read = false;
                self.resume_pending();
                continue;
            }
            match self.poll_read(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(code)) => return Poll::Ready(Ended::Gone(code)),
                Poll::Pending => return Poll::Pending,
            }
        }
        // Fairness: let the core's other sessions run, then come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Our close frame is out: waits (bounded) for what [`Closing`] says, then closes TCP.
    async fn finish_closing_handshake(&mut self) {
        let waiting = match self.closing {
            Closing::PeerClosed => false,
            Closing::Discard => true,
            // The peer's close may already be among the bytes read before ours went out.
            Closing::AwaitPeerClose => {
                let mut pending = std::mem::take(&mut self.pending);
                !self.skip_to_peer_close(&mut pending)
            }
        };
        if waiting {
            let wait = poll_fn(|cx| self.poll_peer_close(cx));
            let _ = monoio::time::timeout(CLOSE_LINGER, wait).await;
        }
        // One attempt: a TLS close_notify that does not fit the socket is not waited for.
        poll_fn(|cx| {
            let _ = Pin::new(&mut self.io).poll_shutdown(cx);
            Poll::Ready(())
        })
        .await;
    }

    /// Reads until the peer's close arrives or the peer hangs up, dropping what comes
    /// before it.
    fn poll_peer_close(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        // A shutdown that has waited long enough cuts the wait short.
        self.outbox.register(cx.waker());
        if self.outbox.is_aborted() {
            return Poll::Ready(());
        }
        let core = self.core.clone();
        let mut scratch = core.scratch.borrow_mut();
        for _ in 0..READS_PER_POLL {
            let have = self.pending.len();
            scratch[..have].copy_from_slice(&self.pending);
            let mut read_buf = ReadBuf::new(&mut scratch[have..]);
            let read = match Pin::new(&mut self.io).poll_read(cx, &mut read_buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(())) => read_buf.filled().len(),
            };
            if read == 0 {
                return Poll::Ready(());
            }
            if self.closing == Closing::AwaitPeerClose
                && self.skip_to_peer_close(&mut scratch[..have + read])
            {
                return Poll::Ready(());
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Decodes `bytes` past every message but the peer's close. True once that close has
    /// come, or anything that breaks the protocol (which ends the wait as well); otherwise
    /// the unfinished frame at the end is kept for the next read.
    fn skip_to_peer_close(&mut self, bytes: &mut [u8]) -> bool {
        let mut start = 0;
        loop {
            let Ok(decoded) = self.decoder.decode(&mut bytes[start..]) else {
                return true;
            };
            start += decoded.consumed;
            match decoded.message {
                Some(wsproto::Message::Close { .. }) => return true,
                Some(_) => {}
                None => break,
            }
        }
        self.keep_pending(&bytes[start..]);
        false
    }

    /// Keeps `rest`, the start of a frame whose end has not arrived, for the next read.
    fn keep_pending(&mut self, rest: &[u8]) {
        self.pending.clear();
        if self.pending.capacity() > PENDING_KEEP_BYTES {
            self.pending = Vec::new();
        }
        self.pending.extend_from_slice(rest);
    }

    /// Writes queued frames until the queue is empty or the socket is full. What is queued
    /// goes out in one vectored write (up to [`MAX_FRAMES_PER_WRITE`] frames): a burst of
    /// receipts costs the core one system call and the kernel one send, not one per frame.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Closed>> {
        loop {
            self.take_frames();
            let Some(writing) = self.writing.as_deref() else {
                return match Pin::new(&mut self.io).poll_flush(cx) {
                    Poll::Ready(Err(_)) => Poll::Ready(Err(CloseCode(1006))),
                    _ => Poll::Ready(Ok(())),
                };
            };
            let mut slices = [io::IoSlice::new(&[]); MAX_FRAMES_PER_WRITE];
            let count = writing.frames.len().min(MAX_FRAMES_PER_WRITE);
            for (i, (slice, (bytes, _))) in slices.iter_mut().zip(&writing.frames).enumerate() {
                let from = if i == 0 { writing.written } else { 0 };
                *slice = io::IoSlice::new(&bytes[from..]);
            }
            let sent = match Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..count]) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) | Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(CloseCode(1006)));
                }
                Poll::Ready(Ok(n)) => n,
            };
            self.outbox.wrote();
            self.core
                .metrics
                .bytes_out
                .fetch_add(sent as u64, std::sync::atomic::Ordering::Relaxed);
            self.advance(sent);
        }
    }

    /// Starts a write of frames from the outbox, up to a write's worth, unless one is under
    /// way.
    fn take_frames(&mut self) {
        if self.writing.is_none() {
            let mut frames = VecDeque::new();
            let mut bytes = 0;
            while frames.len() < MAX_FRAMES_PER_WRITE && bytes < MAX_BYTES_PER_WRITE {
                let Some(frame) = self.outbox.pop(&self.core.metrics) else {
                    break;
                };
                bytes += frame.0.len();
                frames.push_back(frame);
            }
            if !frames.is_empty() {
                self.writing = Some(Box::new(Writing { frames, written: 0 }));
            }
        }
    }

    /// Accounts for `sent` bytes of the write under way having gone out, and frees it once
    /// all of it has: an idle session holds no write.
    fn advance(&mut self, mut sent: usize) {
        let Some(writing) = self.writing.as_mut() else {
            return;
        };
        while let Some((bytes, _)) = writing.frames.front() {
            let left = bytes.len() - writing.written;
            if sent < left {
                writing.written += sent;
                return;
            }
            sent -= left;
            writing.written = 0;
            if let Some((_, Some(delivery))) = writing.frames.pop_front() {
                self.core
                    .metrics
                    .delivery_latency
                    .observe(delivery.received_at.elapsed());
            }
        }
        self.writing = None;
    }

    /// One read, when the socket has something, and everything it completes.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Closed>> {
        if self.core.is_backpressured() {
            self.core.wait_for_room(cx.waker());
            return Poll::Pending;
        }
        let core = self.core.clone();
        let mut scratch = core.scratch.borrow_mut();
        let have = self.pending.len();
        scratch[..have].copy_from_slice(&self.pending);
        let mut read_buf = ReadBuf::new(&mut scratch[have..]);
        let read = match Pin::new(&mut self.io).poll_read(cx, &mut read_buf) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(_)) => return Poll::Ready(Err(CloseCode(1006))),
            Poll::Ready(Ok(())) => read_buf.filled().len(),
        };
        if read == 0 {
            return Poll::Ready(Err(CloseCode(1006)));
        }
        let now = Instant::now();
        self.outbox.touch(now);
        self.consume(&mut scratch[..have + read], now);
        Poll::Ready(Ok(()))
    }

    /// Acts on the messages a read brought that were kept when the session fell behind.
    fn resume_pending(&mut self) {
        let core = self.core.clone();
        let mut scratch = core.scratch.borrow_mut();
        let have = self.pending.len();
        scratch[..have].copy_from_slice(&self.pending);
        self.consume(&mut scratch[..have], Instant::now());
    }

    /// Acts on every whole message in `bytes` (what was pending, then what was read) and
    /// keeps the unfinished frame at the end. A close from the peer, a protocol error or a
    /// message that ends the session asks the session to close. Once the session falls
    /// behind, the rest is kept for when it has caught up: one read of many requests cannot
    /// queue many replies.
    fn consume(&mut self, bytes: &mut [u8], now: Instant) {
        let origin = self.origin();
        let mut start = 0;
        let result = loop {
            if self.outbox.is_behind() {
                self.paused_mid_read = true;
                break Ok(());
            }
            let decoded = match self.decoder.decode(&mut bytes[start..]) {
                Ok(decoded) => decoded,
                Err(error) => {
                    tracing::debug!(%error, user = self.outbox.user_id, "WebSocket protocol error");
                    self.closing = Closing::Discard;
                    break Err(CloseCode(error.close_code()));
                }
            };
            start += decoded.consumed;
            let Some(message) = decoded.message else {
                break Ok(());
            };
            if let wsproto::Message::Close { code, .. } = message {
                self.closing = Closing::PeerClosed;
                break Err(code.map_or(CloseCode::NORMAL, CloseCode));
            }
            if let Err(code) = on_message(
                &self.core,
                &self.outbox,
                Limits {
                    bucket: &mut self.bucket,
                    user: self.user_budget.as_ref(),
                },
                origin,
                message,
                now,
            ) {
                break Err(code);
            }
        };
        match result {
            Ok(()) => self.keep_pending(&bytes[start..]),
            // What follows the last message is still in step: the closing handshake reads on
            // from there.
            Err(code) if self.closing == Closing::AwaitPeerClose => {
                self.keep_pending(&bytes[start..]);
                self.outbox.close(code);
            }
            Err(code) => {
                self.pending = Vec::new();
                self.outbox.close(code);
            }
        }
    }
}

fn ready_or_pending(poll: Poll<Result<(), Closed>>) -> Result<(), Closed> {
    match poll {
        Poll::Ready(result) => result,
        Poll::Pending => Ok(()),
    }
}

/// The rate limits one session's frames go through.
struct Limits<'s> {
    bucket: &'s mut TokenBucket,
    user: Option<&'s UserBudgetHandle>,
}

/// Which limit refused a frame.
#[derive(Clone, Copy)]
enum Limit {
    Connection,
    User,
}

impl Limits<'_> {
    /// The connection's bucket first, then the user's shared budget.
    fn take(&mut self, now: Instant, config: &crate::Config) -> (RateDecision, Limit) {
        match self
            .bucket
            .take(now, config.frames_per_second, config.frame_burst)
        {
            RateDecision::Accept => {}
            refused => return (refused, Limit::Connection),
        }
        match self.user {
            Some(user) if !user.take(now) => (
                self.bucket.refused_elsewhere(config.frame_burst),
                Limit::User,
            ),
            _ => (RateDecision::Accept, Limit::User),
        }
    }
}

/// Acts on one WebSocket message. `Err` closes the session with that code.
fn on_message(
    core: &Core,
    outbox: &Outbox,
    mut limits: Limits<'_>,
    origin: Origin,
    message: wsproto::Message<'_>,
    now: Instant,
) -> Result<(), Closed> {
    match message {
        wsproto::Message::Ping(payload) => {
            outbox.push(
                Outgoing::Own(Bytes::from(wsproto::pong_frame(payload))),
                &core.metrics,
            );
            return Ok(());
        }
        wsproto::Message::Pong(_) | wsproto::Message::Close { .. } => return Ok(()),
        wsproto::Message::Text(_) => outbox.set_text(true),
        wsproto::Message::Binary(_) => {}
    }
    let config = &core.node.config;
    match limits.take(now, config) {
        (RateDecision::Accept, _) => {}
        (RateDecision::Refuse, by) => {
            core.metrics.error(ErrorCode::RateLimited);
            let reason = match by {
                Limit::User => format!(
                    "more than {} frames per second from this user",
                    config.user_frame_limits().0
                ),
                Limit::Connection => {
                    format!("more than {} frames per second", config.frames_per_second)
                }
            };
            let id = session::client_msg_id_of(&message);
            push_own(
                core,
                outbox,
                &session::error_reply(ErrorCode::RateLimited, reason, id),
            );
            return Ok(());
        }
        (RateDecision::Disconnect, _) => return Err(CloseCode::POLICY_VIOLATION),
    }
    let refused = |refusal: Refusal| {
        let code = refusal.error.code();
        core.metrics.error(code);
        let reply = session::error_reply(code, refusal.error.to_string(), refusal.client_msg_id);
        push_own(core, outbox, &reply);
        Ok(())
    };
    let raw: Cow<'_, [u8]> = match session::binary_form(&message) {
        Ok(raw) => raw,
        Err(refusal) => return refused(refusal),
    };
    let frame = match ClientFrameRef::check(&raw) {
        Ok(frame) => frame,
        Err(refusal) => return refused(refusal),
    };
    core.metrics.frame_in(frame.kind(), raw.len());
    if let ClientFrameRef::Ping(ping) = frame {
        let pong = ServerFrame::Pong(Pong {
            nonce: ping.nonce.to_native(),
            server_time_us: core.now_us(),
        });
        push_own(core, outbox, &pong);
        return Ok(());
    }
    core.with_engine(|engine| engine.client_frame(core, origin, frame, &raw, now));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `f` returns, without calling it.
    fn size_of_output<A, B, C, D, F>(_: fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn an_idle_sessions_task_stays_small() {
        // What every open session's task holds for its whole life (bench/RESULTS.md,
        // "Bytes per idle socket"): the socket alone is 80 bytes of it.
        let session = std::mem::size_of::<Session>();
        assert!(session <= 216, "a session is {session} bytes");
        let task = size_of_output(serve);
        assert!(task <= 248, "a session's future is {task} bytes");
    }
}
