//! Broadcast against a raw peer server. The contract, since such a server has no chats:
//! a client names its group with `group=` in the upgrade request's query, and every binary
//! message a client sends is written by the server to every client of that group, the
//! sender included. The first `senders` connections of each group send on their schedules;
//! every member that was up at Setup is expected to receive every message of its group, and
//! order is checked per sender.

use crate::body::Stamp;
use crate::cli::Metric;
use crate::conn::{Behavior, Cx, Data};
use crate::plan::{Plan, Work};
use crate::schedule::OpenLoop;
use crate::thread::Phase;

/// One client of a raw broadcast server.
#[derive(Debug)]
pub struct RawBroadcast {
    id: u64,
    /// The group, which the ledger treats as a chat.
    group: u64,
    sends: bool,
    rate: f64,
    size: usize,
    duration_us: u64,
    schedule: Option<OpenLoop>,
    next: u64,
}

impl RawBroadcast {
    /// Connection `index`.
    pub fn new(plan: &Plan, index: usize) -> RawBroadcast {
        let Work::RawBroadcast {
            group_size,
            senders,
            rate,
            size,
        } = plan.work
        else {
            unreachable!("a raw broadcast behavior is only made for the raw broadcast work");
        };
        RawBroadcast {
            id: plan.user_id(index),
            group: (index / group_size) as u64,
            sends: index % group_size < senders,
            rate,
            size,
            duration_us: plan.duration.as_micros() as u64,
            schedule: None,
            next: 0,
        }
    }
}

impl Behavior for RawBroadcast {
    fn on_phase(&mut self, phase: Phase, cx: &mut Cx<'_>) {
        match phase {
            Phase::Setup => cx.thread.stats_mut().ledger.join(self.group, self.id),
            Phase::Run if self.sends => {
                let start = cx.thread.shared.run_start_us();
                let phase = cx.thread.random_fraction();
                self.schedule = Some(OpenLoop::new(start, self.rate, self.duration_us, phase));
            }
            _ => {}
        }
    }

    fn on_message(&mut self, data: Data<'_>, cx: &mut Cx<'_>) {
        let stamp = match data {
            Data::Binary(bytes) => {
                Stamp::read(bytes).filter(|s| bytes == s.body(self.size).as_bytes())
            }
            Data::Text(_) => None,
        };
        let Some(stamp) = stamp else {
            cx.thread.stats_mut().error("foreign_broadcast".to_owned());
            return;
        };
        let mut stats = cx.thread.stats_mut();
        stats.received();
        let reception = stats.ledger.received(
            self.group,
            self.id,
            stamp.sender,
            stamp.number,
            (stamp.sender, stamp.number),
        );
        drop(stats);
        if reception.is_first() {
            cx.thread.record(
                Metric::Delivery,
                cx.now_us.saturating_sub(stamp.scheduled_us),
            );
        }
    }

    fn on_timer(&mut self, cx: &mut Cx<'_>) {
        let Some(schedule) = self.schedule.filter(|s| self.next < s.count()) else {
            return;
        };
        let due = schedule.due(self.next);
        self.next += 1;
        let body = Stamp {
            scheduled_us: due,
            number: self.next,
            sender: self.id,
        }
        .body(self.size);
        cx.send_binary(body.as_bytes());
        let mut stats = cx.thread.stats_mut();
        stats.sent(Some(cx.now_us.saturating_sub(due)));
        stats.ledger.sent(self.group, self.id, self.next);
    }

    fn deadline(&self) -> Option<u64> {
        self.schedule
            .filter(|s| self.next < s.count())
            .map(|s| s.due(self.next))
    }

    fn is_ready(&self) -> bool {
        true
    }
}
