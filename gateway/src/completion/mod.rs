//! A core on the completion loop ([`ringio`]): one multishot receive per connection into a
//! provided-buffer ring the core's connections share, so an idle connection holds no
//! buffer, no task and no future, only its slot: [`Slot`] beside the loop's own few dozen
//! bytes. What a connection says is decided by [`OpenSession`], as on the monoio driver;
//! this module moves bytes and keeps time.
//!
//! - Reads arrive as completions ([`Handler::on_data`]); the upgrade is parsed from them,
//!   then the session's frames, in place in the ring's buffer when nothing was pending.
//! - Writes: one batch of the session's outbox at a time is handed to the loop, which
//!   writes it with one vectored write; the next batch is taken when it is written
//!   ([`Handler::on_sent`]), so the outbox's slow-consumer rules see what the client takes.
//! - The core's other work wakes a connection through its outbox, bound to the loop's
//!   connection at open ([`crate::session_wakers`], [`ringio::conn_waker`]): a delivery, a
//!   close, the end of backpressure. The loop then serves it once per turn.
//! - Time: the driver's turn waits at most until the next housekeeping tick, sweep slot or
//!   upgrade or close deadline. Deadlines of upgrades and closing handshakes are constant
//!   after their start, so each list is in deadline order and only its front is checked.
//! - Other cores and the bridge wake the loop through its eventfd ([`EventLoop::waker`]).

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Context;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use ringio::{ConnId, EventLoop, Handler, Outbox as LoopOutbox};
use smallvec::SmallVec;
use telemetry::descriptors::DescriptorReserve;
use wsproto::handshake::HandshakeLimits;

use crate::clock::Millis;
use crate::core::{Core, SweepState, UpgradeGuard};
use crate::handshake;
use crate::open_session::{self, Accepted, CLOSE_LINGER, CloseProgress, OpenSession};
use crate::router::Delivery;
use tls::TlsSession;

mod tls;

/// Buffers in each core's provided-buffer ring, and their size: at most 512 KiB per core,
/// which every connection shares. They bound the reads completed between two turns, not the
/// connections: a receive that finds the ring empty waits for the next turn's buffers.
/// The kernel holds only as many as recent turns needed (32 KiB on a quiet core) and the
/// loop gives idle ones' pages back, since every buffer the kernel holds is written sooner
/// or later: held all the time, 512 KiB was about 52 bytes per connection at 10,000 (at
/// 4 KiB a buffer, 2 MiB and 200 bytes). A message larger than a buffer arrives in several
/// completions, as it would from several reads; the echo and broadcast loads measured no
/// cost for it (bench/RESULTS.md).
const RING_BUFFERS: u16 = 512;
const RING_BUFFER_SIZE: u32 = 1024;

/// Deadline entries a queue keeps room for once empty: a few KiB.
const DEADLINES_KEPT: usize = 256;

/// What one connection holds in the loop's slab.
pub enum Slot {
    /// Reading the HTTP upgrade: its head so far, boxed, since few connections are here.
    Upgrading(Box<Upgrade>),
    /// An open WebSocket session, in the slot itself: most connections are here.
    Open(Served),
    /// Refused or ended: waiting for the loop to close it.
    Done,
}

/// A connection whose upgrade is under way.
pub struct Upgrade {
    /// Its TLS session, on a wss:// listener.
    tls: Option<TlsSession>,
    head: Vec<u8>,
    deadline: Millis,
    /// Counts the connection as upgrading for a stopping core.
    _upgrading: UpgradeGuard,
}

/// An open session and where its I/O stands: 64 bytes.
pub struct Served {
    /// The protocol's state, which also keeps whether the loop was asked to stop reading
    /// ([`OpenSession::reading_paused`]), in bytes its layout leaves over.
    session: OpenSession,
    /// What only some sessions hold, behind one pointer that an idle plain session leaves
    /// empty.
    extra: Option<Box<Extra>>,
}

/// The part of a session's I/O state that few sessions hold at once.
#[derive(Default)]
struct Extra {
    /// Its TLS session, on a wss:// listener, for the connection's life (rustls keeps its
    /// own buffers: TLS sessions cost more memory).
    tls: Option<Box<TlsSession>>,
    /// The batch handed to the loop and not yet written, if any.
    in_flight: Option<InFlight>,
    /// Once our close frame is written: waiting for the peer's close until then.
    linger_until: Option<Millis>,
}

/// A batch with the loop: its bytes, and the deliveries in it for the latency histogram
/// (a few, in the same allocation).
pub struct InFlight {
    bytes: usize,
    deliveries: SmallVec<[Arc<Delivery>; 4]>,
}

impl Served {
    /// Its TLS session, on wss://.
    fn tls(&mut self) -> Option<&mut TlsSession> {
        self.extra.as_mut()?.tls.as_deref_mut()
    }

    /// Whether a batch is with the loop.
    fn writing(&self) -> bool {
        self.extra
            .as_ref()
            .is_some_and(|extra| extra.in_flight.is_some())
    }

    /// Takes the batch the loop has written; the box goes with it unless it holds more.
    fn take_in_flight(&mut self) -> Option<InFlight> {
        let extra = self.extra.as_mut()?;
        let batch = extra.in_flight.take();
        if extra.tls.is_none() && extra.linger_until.is_none() {
            self.extra = None;
        }
        batch
    }

    /// Until when it waits for the peer's close, once our close frame is written.
    fn linger_until(&self) -> Option<Millis> {
        self.extra.as_ref()?.linger_until
    }
}

/// The core's connections, as the loop's [`Handler`].
pub struct Sessions {
    core: Rc<Core>,
    limits: HandshakeLimits,
    /// Upgrades in start order, hence in deadline order. Eight bytes an entry: a burst of
    /// connections holds one each until its handshake timeout has passed.
    upgrade_deadlines: VecDeque<(Millis, ConnId)>,
    /// Closing handshakes in the order their close frame went out, hence in deadline order.
    linger_deadlines: VecDeque<(Millis, ConnId)>,
    /// Duplicates of the listeners, for answering clients at the descriptor limit.
    spare_listeners: Vec<StdListener>,
    reserve: DescriptorReserve,
    /// Whether the upgrades were all woken to be cut once the shutdown's drain was over.
    upgrades_cut: bool,
}

impl Sessions {
    fn new(core: Rc<Core>, spare_listeners: Vec<StdListener>) -> Sessions {
        let limits = HandshakeLimits {
            max_header_bytes: core.node.config.max_header_bytes,
            ..Default::default()
        };
        Sessions {
            core,
            limits,
            upgrade_deadlines: VecDeque::new(),
            linger_deadlines: VecDeque::new(),
            spare_listeners,
            reserve: DescriptorReserve::new(),
            upgrades_cut: false,
        }
    }

    /// The earliest deadline waiting after `now`, if any (`now` once one has passed).
    fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let now_ms = Millis::at(now);
        [&self.upgrade_deadlines, &self.linger_deadlines]
            .into_iter()
            .filter_map(|deadlines| deadlines.front())
            .map(|(at, _)| now + now_ms.elapsed(*at))
            .min()
    }

    /// Hands `wake` the connections whose deadline has passed; each checks its own
    /// deadline when served, so a slot reused since is not cut early. Once a shutdown's
    /// drain is over, every upgrade still under way is handed over to be cut.
    fn expired(&mut self, now: Instant, mut wake: impl FnMut(ConnId)) {
        let now = Millis::at(now);
        if self.core.drain_is_over() && !self.upgrades_cut {
            self.upgrades_cut = true;
            self.upgrade_deadlines
                .drain(..)
                .for_each(|(_, conn)| wake(conn));
        }
        for deadlines in [&mut self.upgrade_deadlines, &mut self.linger_deadlines] {
            while let Some(&(at, conn)) = deadlines.front() {
                if !at.reached(now) {
                    break;
                }
                deadlines.pop_front();
                wake(conn);
            }
            // A burst (clients reconnecting at once) grows a queue to its size; once the
            // burst is past, that buffer goes back rather than stay for the process's life.
            if deadlines.is_empty() && deadlines.capacity() > DEADLINES_KEPT {
                deadlines.shrink_to(DEADLINES_KEPT);
            }
        }
    }

    /// Reads the upgrade from `data` (decrypted first on wss://); answers it once whole.
    fn upgrade(&mut self, conn: ConnId, slot: &mut Slot, data: &[u8], out: &mut LoopOutbox) {
        let Slot::Upgrading(upgrade) = slot else {
            return;
        };
        match upgrade.tls.as_mut() {
            None => upgrade.head.extend_from_slice(data),
            Some(tls) => {
                let received = tls.receive(data, &mut upgrade.head);
                flush(conn, Some(tls), out);
                match received {
                    Ok(received) if !received.peer_closed => {}
                    Ok(_) => {
                        *slot = Slot::Done;
                        out.close(conn);
                        return;
                    }
                    Err(error) => {
                        self.core.metrics.refuse("tls");
                        tracing::debug!(%error, "TLS handshake failed");
                        *slot = Slot::Done;
                        out.close(conn);
                        return;
                    }
                }
            }
        }
        let Accepted {
            request,
            head_len,
            claims,
        } = match open_session::read_upgrade(&self.core, &upgrade.head, &self.limits) {
            Ok(Some(accepted)) => accepted,
            Ok(None) => return,
            Err(refusal) => {
                refuse(conn, slot, Bytes::from(refusal), out);
                return;
            }
        };
        let mut tls = upgrade.tls.take().map(Box::new);
        send(
            conn,
            tls.as_deref_mut(),
            Bytes::from(handshake::switching_protocols(&request)),
            out,
        );
        let extra = tls.map(|tls| {
            Box::new(Extra {
                tls: Some(tls),
                ..Extra::default()
            })
        });
        // What the client sent after its head is the start of the WebSocket stream.
        let leftover = upgrade.head.split_off(head_len);
        let session = OpenSession::open(&self.core, &request, &claims, leftover);
        // Pushes and closes wake the connection from here on; what the open queued is
        // served just below.
        session.outbox.bind_connection(conn.index());
        let mut served = Served { session, extra };
        self.serve(conn, &mut served, out);
        *slot = Slot::Open(served);
    }

    /// Moves an open session on: hands the loop its next batch if none is with it, sends
    /// its close and ends it once written, and pauses or resumes its reads.
    fn serve(&mut self, conn: ConnId, served: &mut Served, out: &mut LoopOutbox) {
        loop {
            if !served.writing() {
                let mut batch: Option<InFlight> = None;
                let mut tls = served
                    .extra
                    .as_deref_mut()
                    .and_then(|extra| extra.tls.as_deref_mut());
                served.session.take_frames(&self.core, |frame, delivery| {
                    let batch = batch.get_or_insert_with(|| InFlight {
                        bytes: 0,
                        deliveries: SmallVec::new(),
                    });
                    batch.bytes += frame.len();
                    batch.deliveries.extend(delivery);
                    match tls.as_deref_mut() {
                        None => out.send(conn, frame),
                        // Sealed one by one, written as one record run below.
                        Some(tls) => seal(tls, &frame),
                    }
                });
                if let Some(batch) = batch {
                    flush(conn, tls, out);
                    served.extra.get_or_insert_default().in_flight = Some(batch);
                }
            }
            if served.linger_until().is_some() {
                return;
            }
            match served.session.close_progress(&self.core, served.writing()) {
                CloseProgress::Open => {}
                CloseProgress::Aborted(_) => {
                    out.abort(conn);
                    return;
                }
                CloseProgress::Queued => continue,
                CloseProgress::Writing => return,
                CloseProgress::Written(_) => {
                    self.linger(conn, served, out);
                    return;
                }
            }
            if !served.session.may_read(&self.core) {
                if self.core.is_backpressured() {
                    self.core.wait_for_room(&ringio::conn_waker(conn));
                }
                if !served.session.reading_paused() {
                    served.session.set_reading_paused(true);
                    out.pause_reading(conn);
                }
                return;
            }
            if served.session.reading_paused() {
                served.session.set_reading_paused(false);
                out.resume_reading(conn);
            }
            if !served.session.resume_if_paused_mid_read(&self.core) {
                return;
            }
        }
    }

    /// Our close frame is written: closes at once if the peer closed first, else reads on
    /// for its close until [`CLOSE_LINGER`] is over.
    fn linger(&mut self, conn: ConnId, served: &mut Served, out: &mut LoopOutbox) {
        if !served.session.awaits_peer() {
            close(conn, served, out);
            return;
        }
        let until = Millis::at(Instant::now() + CLOSE_LINGER);
        served.extra.get_or_insert_default().linger_until = Some(until);
        self.linger_deadlines.push_back((until, conn));
        if served.session.reading_paused() {
            served.session.set_reading_paused(false);
            out.resume_reading(conn);
        }
    }
}

/// Answers `conn` with `refusal` (sealed on wss://) and closes it once written.
fn refuse(conn: ConnId, slot: &mut Slot, refusal: Bytes, out: &mut LoopOutbox) {
    let tls = match slot {
        Slot::Upgrading(upgrade) => upgrade.tls.as_mut(),
        _ => None,
    };
    match tls {
        Some(tls) => {
            seal(tls, &refusal);
            tls.close_notify();
            flush(conn, Some(tls), out);
        }
        None => out.send(conn, refusal),
    }
    out.close(conn);
    *slot = Slot::Done;
}

/// Queues `bytes` to `conn`, sealed first on wss://.
fn send(conn: ConnId, tls: Option<&mut TlsSession>, bytes: Bytes, out: &mut LoopOutbox) {
    match tls {
        None => out.send(conn, bytes),
        Some(tls) => {
            seal(tls, &bytes);
            flush(conn, Some(tls), out);
        }
    }
}

/// Encrypts `plaintext` into the TLS session's pending records. rustls refuses only past
/// its buffer limit, which it does not have here: the batch it seals is bounded.
fn seal(tls: &mut TlsSession, plaintext: &[u8]) {
    if let Err(error) = tls.seal(plaintext) {
        tracing::warn!(%error, "could not seal a frame");
    }
}

/// Queues what the TLS session has to write, if anything.
fn flush(conn: ConnId, tls: Option<&mut TlsSession>, out: &mut LoopOutbox) {
    if let Some(ciphertext) = tls.and_then(TlsSession::ciphertext) {
        out.send(conn, ciphertext);
    }
}

/// Closes an open session's connection once written, after a close_notify on wss://.
fn close(conn: ConnId, served: &mut Served, out: &mut LoopOutbox) {
    if let Some(tls) = served.tls() {
        tls.close_notify();
        flush(conn, Some(tls), out);
    }
    out.close(conn);
}

impl Handler for Sessions {
    type Session = Slot;

    fn on_open(&mut self, conn: ConnId, peer: SocketAddr, out: &mut LoopOutbox) -> Slot {
        if let Err(refusal) = self.core.admit_connection(peer) {
            let mut slot = Slot::Done;
            refuse(conn, &mut slot, Bytes::from(refusal), out);
            return slot;
        }
        let tls = match self
            .core
            .node
            .tls
            .as_ref()
            .map(|tls| TlsSession::new(tls.config().clone()))
        {
            None => None,
            Some(Ok(tls)) => Some(tls),
            Some(Err(error)) => {
                tracing::warn!(%error, "could not start a TLS session");
                out.close(conn);
                return Slot::Done;
            }
        };
        let deadline = Millis::at(Instant::now() + self.core.node.config.handshake_timeout);
        self.upgrade_deadlines.push_back((deadline, conn));
        Slot::Upgrading(Box::new(Upgrade {
            tls,
            head: Vec::new(),
            deadline,
            _upgrading: self.core.upgrade_started(),
        }))
    }

    fn on_data(&mut self, conn: ConnId, slot: &mut Slot, data: &mut [u8], out: &mut LoopOutbox) {
        match slot {
            Slot::Upgrading(_) => self.upgrade(conn, slot, data, out),
            Slot::Open(served) => {
                let mut plaintext = Vec::new();
                let mut peer_ended = false;
                let data = match served.tls() {
                    None => data,
                    Some(tls) => {
                        let received = tls.receive(data, &mut plaintext);
                        flush(conn, Some(tls), out);
                        match received {
                            Ok(received) => peer_ended = received.peer_closed,
                            Err(error) => {
                                tracing::debug!(%error, "TLS error");
                                out.abort(conn);
                                return;
                            }
                        }
                        &mut plaintext[..]
                    }
                };
                if served.linger_until().is_some() {
                    if served.session.peer_close_received(data) || peer_ended {
                        close(conn, served, out);
                    }
                    return;
                }
                if !data.is_empty() {
                    served.session.received(&self.core, data, Instant::now());
                }
                if peer_ended {
                    // The client's close_notify: it sends nothing more, as at an end of
                    // stream.
                    out.abort(conn);
                    return;
                }
                self.serve(conn, served, out);
            }
            Slot::Done => {}
        }
    }

    fn on_wake(&mut self, conn: ConnId, slot: &mut Slot, out: &mut LoopOutbox) {
        match slot {
            Slot::Upgrading(upgrade) => {
                if upgrade.deadline.reached(Millis::at(Instant::now())) {
                    self.core.metrics.refuse("handshake_timeout");
                    tracing::debug!(conn = conn.index(), "handshake timed out");
                } else if !self.core.drain_is_over() {
                    return;
                }
                *slot = Slot::Done;
                out.abort(conn);
            }
            Slot::Open(served) => match served.linger_until() {
                Some(until)
                    if until.reached(Millis::at(Instant::now()))
                        || served.session.outbox.is_aborted() =>
                {
                    close(conn, served, out);
                }
                // Not over yet: a shutdown that has waited long enough wakes it again.
                Some(_) => {}
                None => self.serve(conn, served, out),
            },
            Slot::Done => {}
        }
    }

    fn on_sent(&mut self, conn: ConnId, slot: &mut Slot, out: &mut LoopOutbox) {
        let Slot::Open(served) = slot else {
            return;
        };
        if let Some(batch) = served.take_in_flight() {
            served.session.wrote(&self.core, batch.bytes);
            for delivery in &batch.deliveries {
                served.session.delivered(&self.core, delivery);
            }
        }
        self.serve(conn, served, out);
    }

    fn on_close(&mut self, _conn: ConnId, slot: &mut Slot) {
        if let Slot::Open(served) = std::mem::replace(slot, Slot::Done) {
            let code = match served.session.outbox.close_requested() {
                Some(code) if served.session.outbox.is_aborted() => code,
                _ => served.session.end_code(),
            };
            served.session.finish(&self.core, code);
        }
    }

    fn on_accept_error(&mut self, error: &io::Error) {
        if !telemetry::descriptors::is_exhaustion(error) {
            tracing::warn!(%error, "accept failed");
            return;
        }
        self.core
            .refuse_at_descriptor_limit(&mut self.reserve, &self.spare_listeners);
    }
}

/// Whether this host can run the completion loop (io_uring with provided-buffer rings and
/// multishot receives); the node falls back to monoio otherwise.
pub fn supported() -> Result<(), ringio::Error> {
    ringio::probe()
}

/// Serves one core on the completion loop until its shutdown is over.
pub fn serve_core(core: Rc<Core>, listeners: Vec<StdListener>) -> Result<()> {
    let node = core.node.clone();
    let spare_listeners = listeners
        .iter()
        .map(|listener| listener.try_clone())
        .collect::<io::Result<Vec<_>>>()
        .context("duplicating a listener for refusals")?;
    let config = ringio::Config {
        ring_entries: node.config.ring_entries,
        buffers: RING_BUFFERS,
        buffer_size: RING_BUFFER_SIZE,
        // The descriptor limit bounds connections (see `on_accept_error`).
        max_connections: u32::MAX as usize,
        // The loop holds one batch per connection at most (the outbox bounds the rest).
        max_queued_bytes: usize::MAX,
        // Cores that share sockets take turns at them (see `accept_multishot`).
        accept_multishot: !node.shared_listeners,
        ..ringio::Config::new(listeners[0].local_addr()?)
    };
    let mut event_loop = EventLoop::with_listeners(
        config,
        listeners,
        Sessions::new(core.clone(), spare_listeners),
    )
    .context("starting the completion loop")?;
    let cross_core = event_loop.waker();
    // Before any session opens: outboxes wake their connections through the loop.
    let wakes = event_loop.conn_wakes();
    core.outboxes
        .wakers
        .wake_connections_with(move |conn| wakes.wake(ConnId::from_index(conn)));
    node.cores_ready.fetch_add(1, Ordering::AcqRel);
    let mut timers = Timers::new(&core);
    let mut mailbox_waiting = false;
    let mut accepting = true;
    loop {
        let now = Instant::now();
        let timeout = if mailbox_waiting {
            Duration::ZERO
        } else {
            let due = timers.next(&core).min(
                event_loop
                    .handler()
                    .next_deadline(now)
                    .unwrap_or(timers.sweep),
            );
            due.saturating_duration_since(now)
        };
        event_loop.turn(Some(timeout))?;
        mailbox_waiting = core
            .handle_mailbox(&mut Context::from_waker(&cross_core))
            .is_ready();
        let now = Instant::now();
        timers.run_due(&core, now);
        let mut expired = Vec::new();
        event_loop
            .handler_mut()
            .expired(now, |conn| expired.push(conn));
        for conn in expired {
            event_loop.conn_waker(conn).wake();
        }
        if core.is_shutting_down() {
            if accepting {
                accepting = false;
                event_loop.stop_accepting();
                // Their duplicates would keep the sockets listening, and new clients
                // waiting in a backlog no one accepts from.
                event_loop.handler_mut().spare_listeners.clear();
                tracing::info!(core = core.index(), "stopped accepting");
            }
            if core.is_idle() || now >= node.stop_deadline() {
                return Ok(());
            }
        }
    }
}

/// The core's periodic work on the driver's clock.
struct Timers {
    /// When the housekeeping last ran.
    housekept: Instant,
    /// When the sweep visits its next slot.
    sweep: Instant,
    sweep_state: SweepState,
}

impl Timers {
    fn new(core: &Core) -> Timers {
        let now = Instant::now();
        Timers {
            housekept: now,
            sweep: now + core.sweep_tick(),
            sweep_state: SweepState::default(),
        }
    }

    /// The earliest of the housekeeping's and the sweep's next runs. The housekeeping's
    /// interval shortens as soon as work waits for it.
    fn next(&self, core: &Core) -> Instant {
        (self.housekept + core.housekeeping_interval()).min(self.sweep)
    }

    fn run_due(&mut self, core: &Core, now: Instant) {
        if now >= self.housekept + core.housekeeping_interval() {
            self.housekept = now;
            core.housekeeping_tick();
        }
        if now >= self.sweep {
            core.sweep_next_slot(&mut self.sweep_state);
            // A late turn does not make the sweep hurry to catch up.
            self.sweep = (self.sweep + core.sweep_tick()).max(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_sessions_slot_stays_small() {
        // What every open session holds in the loop's slab beside the loop's own bytes
        // (bench/RESULTS.md, "Bytes per idle socket"): no task, no future, no timer.
        let slot = size_of::<Slot>();
        assert!(slot <= 64, "a slot is {slot} bytes");
        assert_eq!(size_of::<(Millis, ConnId)>(), 8, "a deadline entry");
    }
}
