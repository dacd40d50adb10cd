//! Idle and storm connections: they only hold on. The driver answers the server's pings;
//! with a ping interval, each connection also sends an application ping (our ping frame,
//! or a WebSocket ping to a raw peer) on its own phase and times the answer.

use wire::client::Ping;
use wire::{ClientFrame, ServerFrameRef};

use super::{error_frame_label, server_frame};
use crate::cli::Metric;
use crate::conn::{Behavior, Cx, Data};
use crate::plan::Work;
use crate::thread::{Phase, ThreadCtx};

/// One held connection.
#[derive(Debug)]
pub struct Idle {
    raw: bool,
    welcomed: bool,
    interval_us: Option<u64>,
    next_ping: Option<u64>,
    /// The last ping's nonce and when it left.
    last_ping: Option<(u64, u64)>,
    nonce: u64,
}

impl Idle {
    /// A connection of the idle or storm work, its first ping within one interval.
    pub fn new(ctx: &ThreadCtx) -> Idle {
        let (raw, interval) = match ctx.plan().work {
            Work::Idle {
                raw, ping_interval, ..
            } => (raw, ping_interval),
            Work::Storm { raw, .. } => (raw, None),
            _ => unreachable!("an idle behavior is only made for the idle and storm work"),
        };
        let interval_us = interval.map(|d| d.as_micros() as u64);
        Idle {
            raw,
            welcomed: false,
            interval_us,
            next_ping: interval_us
                .map(|i| ctx.now_us() + (ctx.random_fraction() * i as f64) as u64),
            last_ping: None,
            nonce: 0,
        }
    }

    fn ponged(&mut self, nonce: u64, cx: &mut Cx<'_>) {
        if let Some((sent_nonce, at)) = self.last_ping
            && sent_nonce == nonce
        {
            self.last_ping = None;
            cx.thread.stats_mut().received();
            cx.thread.record(Metric::Rtt, cx.now_us.saturating_sub(at));
        }
    }
}

impl Behavior for Idle {
    fn on_phase(&mut self, _phase: Phase, _cx: &mut Cx<'_>) {}

    fn on_message(&mut self, data: Data<'_>, cx: &mut Cx<'_>) {
        if self.raw {
            return;
        }
        match server_frame(data, cx) {
            Some(ServerFrameRef::Welcome(_)) => self.welcomed = true,
            Some(ServerFrameRef::Pong(pong)) => self.ponged(pong.nonce.to_native(), cx),
            Some(ServerFrameRef::Error(error)) => cx
                .thread
                .stats_mut()
                .error(error_frame_label(error.code.to_native())),
            _ => {}
        }
    }

    fn on_pong(&mut self, payload: &[u8], cx: &mut Cx<'_>) {
        if let Ok(bytes) = <[u8; 8]>::try_from(payload) {
            self.ponged(u64::from_be_bytes(bytes), cx);
        }
    }

    fn on_timer(&mut self, cx: &mut Cx<'_>) {
        let (Some(due), Some(interval)) = (self.next_ping, self.interval_us) else {
            return;
        };
        self.nonce += 1;
        if self.raw {
            cx.send_ping(&self.nonce.to_be_bytes());
        } else {
            cx.send_frame(&ClientFrame::Ping(Ping { nonce: self.nonce }));
        }
        self.last_ping = Some((self.nonce, cx.now_us));
        cx.thread.stats_mut().sent(None);
        // Heartbeats keep their rhythm but never burst to catch up.
        self.next_ping = Some((due + interval).max(cx.now_us + 1));
    }

    fn deadline(&self) -> Option<u64> {
        self.next_ping
    }

    fn is_ready(&self) -> bool {
        self.raw || self.welcomed
    }
}
