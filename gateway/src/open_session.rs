//! An upgraded connection's protocol state and what it decides, whichever I/O driver reads
//! and writes its socket: the upgrade's answer, the session's registration and welcome,
//! decoding what the client sent, the rate limits, every reply, and the closing handshake.
//! The drivers ([`crate::connection`] on monoio, [`crate::completion`] on the completion
//! loop) only move bytes and say when.

use std::borrow::Cow;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use wire::server::{Pong, Welcome};
use wire::{ClientFrameRef, CloseCode, ErrorCode, Refusal, ServerFrame, limits::MAX_FRAME_BYTES};

use crate::auth::Claims;
use crate::core::Core;
use crate::handshake::UpgradeRequest;
use crate::outbox::{Outbox, Outgoing};
use crate::router::{Delivery, Origin};
use crate::session::{self, RateDecision, TokenBucket};
use crate::user_limit::{UserBudgetHandle, UserBudgets};
use wsproto::handshake::HandshakeLimits;

/// How long the server waits for the peer's close frame after sending its own before it
/// closes TCP (RFC 6455 section 7.1.1). Closing at once would meet the peer's reply with a
/// reset, and a reset can cost the peer the close frame it has not read yet (browsers then
/// report 1006 instead of the server's code).
pub const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Most frames handed to the kernel in one write.
pub const MAX_FRAMES_PER_WRITE: usize = 32;

/// Frame bytes taken from the outbox for one write; past them, the rest waits in the outbox
/// (where the slow-consumer bounds count it).
pub const MAX_BYTES_PER_WRITE: usize = 64 * 1024;

/// Whether the gateway is shutting down: refuse upgrades rather than welcome and close them.
fn shutting_down(core: &Core) -> bool {
    core.is_shutting_down() || core.node.stopping.load(Ordering::Acquire)
}

/// An upgrade the core accepted.
pub struct Accepted {
    /// The request.
    pub request: UpgradeRequest,
    /// The length of its head: what follows is the WebSocket stream.
    pub head_len: usize,
    /// The token's claims.
    pub claims: Claims,
}

/// Reads the upgrade head received so far: `Ok(None)` while it is incomplete; once whole,
/// the accepted upgrade, or the refusal to write before closing (a malformed request,
/// shutting down, an origin not allowed, a missing or bad token). Every refusal is counted
/// in the refusal metrics.
pub fn read_upgrade(
    core: &Core,
    head: &[u8],
    limits: &HandshakeLimits,
) -> Result<Option<Accepted>, Vec<u8>> {
    let (request, head_len) = match crate::handshake::parse_upgrade(head, limits) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Ok(None),
        Err(error) => {
            core.metrics.refuse(error.label());
            return Err(error.refusal());
        }
    };
    let claims = answer_upgrade(core, &request)?;
    Ok(Some(Accepted {
        request,
        head_len,
        claims,
    }))
}

/// The answer to a parsed upgrade request: the token's claims, or the refusal (counted).
fn answer_upgrade(core: &Core, request: &UpgradeRequest) -> Result<Claims, Vec<u8>> {
    let refuse = |status: u16, label: &'static str, reason: &str| {
        core.metrics.refuse(label);
        wsproto::handshake::refusal(status, reason)
    };
    if shutting_down(core) {
        return Err(refuse(503, "shutting_down", "the gateway is shutting down"));
    }
    if !crate::handshake::origin_allowed(
        request.origin.as_deref(),
        &core.node.config.allowed_origins,
    ) {
        return Err(refuse(403, "origin", "origin not allowed"));
    }
    match request.token.as_deref() {
        None => Err(refuse(401, "missing", "no token")),
        Some(token) => core
            .node
            .verifier
            .verify(token)
            .map_err(|error| refuse(401, error.label(), &error.to_string())),
    }
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

/// Where a session's close stands, for its driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseProgress {
    /// No close asked for: serve.
    Open,
    /// The session must end now, unwritten (a shutdown's drain is over, or a close took
    /// too long): nothing more can be said on it.
    Aborted(CloseCode),
    /// Our close frame was just queued, behind what was queued before it.
    Queued,
    /// Our close frame waits to be written: write on.
    Writing,
    /// Our close frame is written: the closing handshake ([`OpenSession::awaits_peer`])
    /// goes on.
    Written(CloseCode),
}

/// One upgraded connection's state, without its socket or its core (which the driver has,
/// and passes to each call that needs it: one pointer less in every session).
pub struct OpenSession {
    decoder: wsproto::Decoder,
    /// The start of a frame whose rest has not arrived, boxed; `None` (no allocation)
    /// otherwise, so a session that once read a frame in pieces keeps nothing. While the
    /// session is behind, also the whole messages of its last read not acted on yet (at
    /// most one read, [`crate::core::SCRATCH_BYTES`]). A `Box<[u8]>` would be two words in
    /// every session; this is one.
    #[expect(
        clippy::box_collection,
        reason = "one pointer in every session; a boxed slice would take two"
    )]
    pending: Option<Box<Vec<u8>>>,
    /// Whether `pending` may hold whole messages, left when the session fell behind.
    paused_mid_read: bool,
    /// Whether the driver asked its I/O to stop reading: the completion driver's flag,
    /// kept here in a byte the session's layout leaves over.
    reading_paused: bool,
    bucket: TokenBucket,
    /// The user's budget, shared with its other connections; `None` without a user limit.
    user_budget: Option<UserBudgetHandle>,
    /// The session's queue and flags, as the rest of its core sees them.
    pub outbox: Rc<Outbox>,
    /// The close code once our close frame is queued.
    close_sent: Option<CloseCode>,
    /// What the closing handshake waits for once our close frame is written.
    closing: Closing,
}

impl OpenSession {
    /// Registers the session of an upgrade the core accepted, queues its welcome, tells the
    /// engine, and acts on `leftover`, the frames the client pipelined behind its request
    /// head (no read may ever come to trigger them).
    pub fn open(
        core: &Core,
        request: &UpgradeRequest,
        claims: &Claims,
        mut leftover: Vec<u8>,
    ) -> OpenSession {
        let user_id = claims.user_id;
        let outbox = core.open_session(user_id, claims.exp, request.wants_json);
        let welcome = ServerFrame::Welcome(Welcome {
            user_id,
            connection_id: outbox.connection_id,
            node_id: core.node.config.node_id,
            server_time_us: core.now_us(),
            heartbeat_ms: core.node.config.ping_interval.as_millis() as u32,
            max_frame_bytes: MAX_FRAME_BYTES as u32,
        });
        push_own(core, &outbox, &welcome);
        if core.is_shutting_down() {
            // The shutdown began while the 101 was being written, after the core closed its
            // other sessions: greet, then send away like them.
            outbox.close(CloseCode::GOING_AWAY);
        }
        let mut session = OpenSession {
            bucket: TokenBucket::new(core.node.config.frame_burst, Instant::now()),
            user_budget: core
                .node
                .user_budgets
                .as_ref()
                .and_then(|b| b.join(user_id)),
            decoder: wsproto::Decoder::new(wsproto::Role::Server, MAX_FRAME_BYTES),
            pending: None,
            paused_mid_read: false,
            reading_paused: false,
            outbox,
            close_sent: None,
            closing: Closing::AwaitPeerClose,
        };
        let origin = session.origin();
        core.with_engine(|engine| engine.connected(core, origin));
        if !leftover.is_empty() {
            let now = Instant::now();
            session.outbox.touch(now);
            session.consume(core, &mut leftover, now);
        }
        session
    }

    /// Unregisters the ended session.
    pub fn finish(self, core: &Core, code: CloseCode) {
        let origin = self.origin();
        let OpenSession {
            outbox,
            user_budget,
            ..
        } = self;
        // Gone from the gauge before its close is counted: whoever sees the count sees both.
        core.close_session(&outbox);
        core.metrics.close(code.0);
        core.with_engine(|engine| engine.disconnected(core, origin));
        if let (Some(budgets), Some(handle)) = (&core.node.user_budgets, user_budget) {
            budgets.leave(outbox.user_id, handle);
        }
    }

    /// Who this session is, for the engine: kept in the outbox alone.
    pub fn origin(&self) -> Origin {
        Origin {
            user_id: self.outbox.user_id,
            connection_id: self.outbox.connection_id,
        }
    }

    /// The code the session ends with: the close it sent, or 1006 (abnormal) if it sent
    /// none.
    pub fn end_code(&self) -> CloseCode {
        self.close_sent.unwrap_or(CloseCode(1006))
    }

    /// Our close frame is written: whether the closing handshake waits (for at most
    /// [`CLOSE_LINGER`]) for the peer's close or hang-up, or is over. It is over when the
    /// peer closed first, or when its close is already among what was read before ours
    /// went out; a peer that broke the protocol is waited on to hang up.
    pub fn awaits_peer(&mut self) -> bool {
        match self.closing {
            Closing::PeerClosed => false,
            Closing::Discard => true,
            Closing::AwaitPeerClose => {
                let mut pending = self.take_pending();
                !self.skip_to_peer_close(&mut pending)
            }
        }
    }

    /// Where the session's close stands. Queues our close frame the first time a close is
    /// found asked for. `writing` says whether frames taken from the outbox are still with
    /// the driver.
    pub fn close_progress(&mut self, core: &Core, writing: bool) -> CloseProgress {
        let Some(code) = self.outbox.close_requested() else {
            return CloseProgress::Open;
        };
        if self.outbox.is_aborted() {
            return CloseProgress::Aborted(code);
        }
        if self.close_sent.is_none() {
            self.close_sent = Some(code);
            let frame = Bytes::from(wsproto::close_frame(code.0, ""));
            self.outbox.push_final(frame, &core.metrics);
            return CloseProgress::Queued;
        }
        if !writing && self.outbox.is_empty() {
            CloseProgress::Written(code)
        } else {
            CloseProgress::Writing
        }
    }

    /// Whether the session may read now: a client behind on what it was sent is not read
    /// until it catches up (it cannot have replies queued faster than it takes them), and
    /// nothing is read while the core is backpressured.
    pub fn may_read(&self, core: &Core) -> bool {
        !self.outbox.is_behind() && !core.is_backpressured()
    }

    /// Whether the driver asked its I/O to stop reading (the driver's own note).
    pub fn reading_paused(&self) -> bool {
        self.reading_paused
    }

    /// Notes whether the driver asked its I/O to stop reading.
    pub fn set_reading_paused(&mut self, paused: bool) {
        self.reading_paused = paused;
    }

    /// Acts on the whole messages kept when the session fell behind, if any and if it may
    /// read again. Returns whether there were any.
    pub fn resume_if_paused_mid_read(&mut self, core: &Core) -> bool {
        if !self.paused_mid_read || self.outbox.is_behind() {
            return false;
        }
        self.paused_mid_read = false;
        let mut scratch = core.scratch.borrow_mut();
        let have = self.pending().len();
        scratch[..have].copy_from_slice(self.pending());
        self.consume(core, &mut scratch[..have], Instant::now());
        true
    }

    /// Acts on bytes one read brought, after what was pending. Without anything pending
    /// they are decoded where they lie (unmasked in place); otherwise both are put together
    /// in the core's scratch buffer first.
    pub fn received(&mut self, core: &Core, data: &mut [u8], now: Instant) {
        self.outbox.touch(now);
        if self.pending.is_none() {
            self.consume(core, data, now);
            return;
        }
        let mut scratch = core.scratch.borrow_mut();
        let have = self.pending().len();
        let total = have + data.len();
        if total > scratch.len() {
            // A frame in pieces larger than the scratch: join them on the heap, bounded by
            // the frame limit the decoder enforces.
            let mut joined = self.take_pending();
            joined.extend_from_slice(data);
            drop(scratch);
            self.consume(core, &mut joined, now);
            return;
        }
        scratch[..have].copy_from_slice(self.pending());
        scratch[have..total].copy_from_slice(data);
        self.consume(core, &mut scratch[..total], now);
    }

    /// The pending bytes a read must be put after.
    pub fn pending(&self) -> &[u8] {
        self.pending.as_deref().map_or(&[], Vec::as_slice)
    }

    /// Takes the pending bytes, leaving none.
    fn take_pending(&mut self) -> Vec<u8> {
        self.pending
            .take()
            .map_or_else(Vec::new, |pending| *pending)
    }

    /// Acts on every whole message in `bytes` (what was pending, then what was read) and
    /// keeps the unfinished frame at the end. A close from the peer, a protocol error or a
    /// message that ends the session asks the session to close. Once the session falls
    /// behind, the rest is kept for when it has caught up: one read of many requests cannot
    /// queue many replies.
    pub fn consume(&mut self, core: &Core, bytes: &mut [u8], now: Instant) {
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
                core,
                &self.outbox,
                Limits {
                    bucket: &mut self.bucket,
                    user: core
                        .node
                        .user_budgets
                        .as_deref()
                        .zip(self.user_budget.as_ref()),
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
                self.pending = None;
                self.outbox.close(code);
            }
        }
    }

    /// During the closing handshake: whether the peer's close has come (or the peer broke
    /// the protocol, which ends the wait as well) among what was pending and `data`.
    /// Messages before it are dropped unread; an unfinished frame is kept.
    pub fn peer_close_received(&mut self, data: &mut [u8]) -> bool {
        if self.closing == Closing::Discard {
            return false;
        }
        if self.pending.is_none() {
            return self.skip_to_peer_close(data);
        }
        let mut joined = self.take_pending();
        joined.extend_from_slice(data);
        self.skip_to_peer_close(&mut joined)
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
        self.pending = (!rest.is_empty()).then(|| Box::new(rest.to_vec()));
    }

    /// Frames for one write from the outbox, up to [`MAX_FRAMES_PER_WRITE`] frames and
    /// [`MAX_BYTES_PER_WRITE`] bytes, with the deliveries among them (for the latency
    /// histogram once they are written).
    pub fn take_frames(&self, core: &Core, mut each: impl FnMut(Bytes, Option<Arc<Delivery>>)) {
        let mut frames = 0;
        let mut bytes = 0;
        while frames < MAX_FRAMES_PER_WRITE && bytes < MAX_BYTES_PER_WRITE {
            let Some((frame, delivery)) = self.outbox.pop(&core.metrics) else {
                break;
            };
            frames += 1;
            bytes += frame.len();
            each(frame, delivery);
        }
    }

    /// Accounts for `bytes` having gone out to the socket.
    pub fn wrote(&self, core: &Core, bytes: usize) {
        self.outbox.wrote();
        core.metrics
            .bytes_out
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Notes that `delivery` is written whole, for the latency histogram.
    pub fn delivered(&self, core: &Core, delivery: &Delivery) {
        core.metrics
            .delivery_latency
            .observe(delivery.received_at.elapsed());
    }
}

/// Queues one of the session's own frames (a reply) in its encoding.
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

/// The rate limits one session's frames go through.
struct Limits<'s> {
    bucket: &'s mut TokenBucket,
    /// The user's budget, and the table that holds it.
    user: Option<(&'s UserBudgets, &'s UserBudgetHandle)>,
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
            Some((budgets, handle)) if !budgets.take(handle, now) => (
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
) -> Result<(), CloseCode> {
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
