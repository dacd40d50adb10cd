//! Echo: on our gateway a ping frame answered by a pong with the same nonce; with a raw
//! peer an opaque binary payload answered by the same bytes. Open loop sends on the
//! schedule and counts each round trip from the scheduled time; closed loop keeps one
//! message outstanding and sends the next as soon as the answer arrives (the shape of
//! uWebSockets' benchmark client), so its latency is service time only.

use wire::client::Ping;
use wire::{ClientFrame, ServerFrameRef};

use super::{error_frame_label, server_frame};
use crate::body::Stamp;
use crate::cli::Metric;
use crate::conn::{Behavior, Cx, Data};
use crate::plan::{Plan, Work};
use crate::schedule::OpenLoop;
use crate::thread::Phase;

/// Closed-loop connections start within this window, not all in the same microsecond.
const CLOSED_LOOP_SPREAD_US: f64 = 100_000.0;

/// One echoing connection.
#[derive(Debug)]
pub struct Echo {
    id: u64,
    raw: bool,
    size: usize,
    rate: f64,
    closed_loop: bool,
    duration_us: u64,
    welcomed: bool,
    schedule: Option<OpenLoop>,
    /// Messages sent so far; the next one is number `sent + 1`.
    sent: u64,
    /// Closed loop: when the next message is due, and when the outstanding one left.
    closed_due: Option<u64>,
    outstanding_since: Option<u64>,
    end_us: u64,
}

impl Echo {
    /// Connection `index`.
    pub fn new(plan: &Plan, index: usize) -> Echo {
        let Work::Echo {
            rate,
            size,
            raw,
            closed_loop,
        } = plan.work
        else {
            unreachable!("an echo behavior is only made for the echo work");
        };
        Echo {
            id: plan.user_id(index),
            raw,
            size,
            rate,
            closed_loop,
            duration_us: plan.duration.as_micros() as u64,
            welcomed: false,
            schedule: None,
            sent: 0,
            closed_due: None,
            outstanding_since: None,
            end_us: u64::MAX,
        }
    }

    fn send(&mut self, scheduled_us: u64, cx: &mut Cx<'_>) {
        self.sent += 1;
        let number = self.sent;
        if self.raw {
            let body = Stamp {
                scheduled_us,
                number,
                sender: self.id,
            }
            .body(self.size);
            cx.send_binary(body.as_bytes());
        } else {
            cx.send_frame(&ClientFrame::Ping(Ping { nonce: number }));
        }
        let mut stats = cx.thread.stats_mut();
        // Closed loop has no schedule to be late against.
        let lag = (!self.closed_loop).then(|| cx.now_us.saturating_sub(scheduled_us));
        stats.sent(lag);
        stats.ledger.sent(self.id, self.id, number);
    }

    /// The answer to message `number`, sent at `scheduled_us`.
    fn answered(&mut self, number: u64, scheduled_us: u64, cx: &mut Cx<'_>) {
        let mut stats = cx.thread.stats_mut();
        stats.received();
        let reception = stats
            .ledger
            .received(self.id, self.id, self.id, number, (0, number));
        drop(stats);
        if reception.is_first() {
            cx.thread
                .record(Metric::Rtt, cx.now_us.saturating_sub(scheduled_us));
        }
        if self.closed_loop && number == self.sent {
            self.outstanding_since = None;
            self.next_closed(cx);
        }
    }

    /// Closed loop: the next message, right away, until the run's end.
    fn next_closed(&mut self, cx: &mut Cx<'_>) {
        if cx.now_us < self.end_us {
            self.outstanding_since = Some(cx.now_us);
            self.send(cx.now_us, cx);
        }
    }

    /// When message `number` was scheduled (or, closed loop, sent).
    fn scheduled(&self, number: u64) -> Option<u64> {
        match (self.closed_loop, self.schedule) {
            (true, _) => self.outstanding_since.filter(|_| number == self.sent),
            (false, Some(schedule)) if (1..=self.sent).contains(&number) => {
                Some(schedule.due(number - 1))
            }
            (false, _) => None,
        }
    }
}

impl Behavior for Echo {
    fn on_phase(&mut self, phase: Phase, cx: &mut Cx<'_>) {
        if phase != Phase::Run {
            return;
        }
        let start = cx.thread.shared.run_start_us();
        self.end_us = start + self.duration_us;
        let phase = cx.thread.random_fraction();
        if self.closed_loop {
            self.closed_due = Some(start + (phase * CLOSED_LOOP_SPREAD_US) as u64);
        } else {
            self.schedule = Some(OpenLoop::new(start, self.rate, self.duration_us, phase));
        }
    }

    fn on_message(&mut self, data: Data<'_>, cx: &mut Cx<'_>) {
        if self.raw {
            let Data::Binary(bytes) = data else {
                cx.thread
                    .stats_mut()
                    .error("unexpected_text_frame".to_owned());
                return;
            };
            let Some(stamp) = Stamp::read(bytes).filter(|s| s.sender == self.id) else {
                cx.thread.stats_mut().error("foreign_echo".to_owned());
                return;
            };
            if bytes != stamp.body(self.size).as_bytes() {
                cx.thread.stats_mut().error("echo_mismatch".to_owned());
            }
            self.answered(stamp.number, stamp.scheduled_us, cx);
            return;
        }
        match server_frame(data, cx) {
            Some(ServerFrameRef::Welcome(_)) => self.welcomed = true,
            Some(ServerFrameRef::Pong(pong)) => {
                let number = pong.nonce.to_native();
                match self.scheduled(number) {
                    Some(at) => self.answered(number, at, cx),
                    None => cx.thread.stats_mut().error("unexpected_pong".to_owned()),
                }
            }
            Some(ServerFrameRef::Error(error)) => {
                {
                    let mut stats = cx.thread.stats_mut();
                    stats.error(error_frame_label(error.code.to_native()));
                    stats.ledger.refused(self.id, self.id);
                }
                // A refused ping is answered too: closed loop goes on (the refusal stays
                // a loss in the accounting).
                if self.closed_loop && self.outstanding_since.take().is_some() {
                    self.next_closed(cx);
                }
            }
            _ => {}
        }
    }

    fn on_timer(&mut self, cx: &mut Cx<'_>) {
        if self.closed_due.take().is_some() {
            self.next_closed(cx);
        } else if let Some(schedule) = self.schedule
            && self.sent < schedule.count()
        {
            self.send(schedule.due(self.sent), cx);
        }
    }

    fn deadline(&self) -> Option<u64> {
        self.closed_due.or_else(|| {
            self.schedule
                .filter(|s| self.sent < s.count())
                .map(|s| s.due(self.sent))
        })
    }

    fn is_ready(&self) -> bool {
        self.raw || self.welcomed
    }
}
