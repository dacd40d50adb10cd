//! Group chats on our gateway. Connection i belongs to group i / G; the group's first
//! member creates the chat with the others as members at Setup, and everyone is ready once
//! its chat_created arrives. From the run start each sender sends on its open-loop
//! schedule; recipients ack delivered for every message and ack read in batches.
//!
//! Measured here: send to sent receipt (the sender), send to delivery (every recipient,
//! from the stamp in the body), and send to delivered and read receipt (back at the sender,
//! once per message and reader, since receipts are watermarks).

use std::collections::{HashMap, VecDeque};

use wire::client::{Ack, CreateChat, SendMessage};
use wire::{ArchivedReceiptKind, ChatKind, ClientFrame, ReceiptKind, ServerFrameRef};

use super::{error_frame_label, server_frame};
use crate::body::Stamp;
use crate::cli::Metric;
use crate::conn::{Behavior, Cx, Data};
use crate::plan::{Plan, Work};
use crate::schedule::OpenLoop;
use crate::thread::Phase;

/// The client message id of the create-chat frame; messages count from 1.
const CREATE_CHAT_ID: u64 = 0;

/// One member of a group chat.
#[derive(Debug)]
pub struct Chat {
    user: u64,
    /// User ids of the group's members, the creator first.
    group: Vec<u64>,
    sends: bool,
    size: usize,
    rate: f64,
    duration_us: u64,
    read_ack_interval_us: Option<u64>,
    delivered_acks: bool,
    welcomed: bool,
    chat: Option<u64>,
    /// Other members, per chat_created.
    readers: usize,
    schedule: Option<OpenLoop>,
    /// Index of the next message in the schedule.
    next: u64,
    own: OwnMessages,
    /// Highest seq received, and the highest acked read.
    max_seq: u64,
    read_acked: u64,
    /// This reader's read-ack cadence: flushes happen at `base + k * interval`, and only
    /// while something is unacked, so an idle reader costs no wake-ups.
    read_ack_base: Option<u64>,
    next_read_ack: Option<u64>,
}

impl Chat {
    /// Member `index` of its group.
    pub fn new(plan: &Plan, index: usize) -> Chat {
        let Work::Chat {
            group_size,
            all_send,
            rate,
            size,
            read_ack_interval,
            delivered_acks,
        } = plan.work
        else {
            unreachable!("a chat behavior is only made for the chat work");
        };
        let first = index / group_size * group_size;
        let last = (first + group_size).min(plan.connections);
        Chat {
            user: plan.user_id(index),
            group: (first..last).map(|i| plan.user_id(i)).collect(),
            sends: all_send || index == first,
            size,
            rate,
            duration_us: plan.duration.as_micros() as u64,
            read_ack_interval_us: read_ack_interval.map(|d| d.as_micros() as u64),
            delivered_acks,
            welcomed: false,
            chat: None,
            readers: 0,
            schedule: None,
            next: 0,
            own: OwnMessages::default(),
            max_seq: 0,
            read_acked: 0,
            read_ack_base: None,
            next_read_ack: None,
        }
    }

    /// Something is unread: the read ack goes out at the cadence's next tick.
    fn schedule_read_ack(&mut self, now_us: u64) {
        let (Some(base), Some(interval)) = (self.read_ack_base, self.read_ack_interval_us) else {
            return;
        };
        if self.next_read_ack.is_none() && interval > 0 {
            let ticks = now_us.saturating_sub(base).div_ceil(interval);
            self.next_read_ack = Some((base + ticks * interval).max(now_us + 1));
        }
    }

    fn is_creator(&self) -> bool {
        self.group.first() == Some(&self.user)
    }

    fn send_next(&mut self, chat: u64, schedule: OpenLoop, cx: &mut Cx<'_>) {
        let due = schedule.due(self.next);
        self.next += 1;
        let number = self.next;
        let body = Stamp {
            scheduled_us: due,
            number,
            sender: self.user,
        }
        .body(self.size);
        cx.send_frame(&ClientFrame::Send(SendMessage {
            chat_id: chat,
            client_msg_id: number,
            body,
        }));
        let mut stats = cx.thread.stats_mut();
        stats.sent(Some(cx.now_us.saturating_sub(due)));
        stats.ledger.sent(chat, self.user, number);
    }

    fn on_frame(&mut self, frame: ServerFrameRef<'_>, cx: &mut Cx<'_>) {
        match frame {
            ServerFrameRef::Welcome(welcome) => {
                self.welcomed = true;
                if welcome.user_id.to_native() != self.user {
                    cx.thread
                        .stats_mut()
                        .error("welcome_for_another_user".to_owned());
                }
            }
            ServerFrameRef::ChatCreated(created) => {
                let creator = created.creator.to_native();
                if self.chat.is_none() && self.group.first() == Some(&creator) {
                    let chat = created.chat_id.to_native();
                    self.chat = Some(chat);
                    self.readers = created.members.len().saturating_sub(1);
                    cx.thread.stats_mut().ledger.join(chat, self.user);
                }
            }
            ServerFrameRef::Message(message) => {
                let chat = message.chat_id.to_native();
                let seq = message.seq.to_native();
                let mut stats = cx.thread.stats_mut();
                stats.received();
                let reception = stats.ledger.received(
                    chat,
                    self.user,
                    message.sender.to_native(),
                    message.client_msg_id.to_native(),
                    (0, seq),
                );
                drop(stats);
                if reception.is_first() {
                    match Stamp::read(message.body.as_str().as_bytes()) {
                        Some(stamp) => cx.thread.record(
                            Metric::Delivery,
                            cx.now_us.saturating_sub(stamp.scheduled_us),
                        ),
                        None => cx.thread.stats_mut().error("unstamped_body".to_owned()),
                    }
                }
                if self.delivered_acks {
                    cx.send_frame(&ClientFrame::AckDelivered(Ack { chat_id: chat, seq }));
                }
                if Some(chat) == self.chat {
                    self.max_seq = self.max_seq.max(seq);
                    self.schedule_read_ack(cx.now_us);
                }
            }
            ServerFrameRef::Receipt(receipt) => {
                let chat = receipt.chat_id.to_native();
                if Some(chat) != self.chat {
                    return;
                }
                let seq = receipt.seq.to_native();
                let reader = receipt.user_id.to_native();
                match receipt.kind {
                    ArchivedReceiptKind::Sent => {
                        let Some(number) = receipt.client_msg_id.as_ref().map(|n| n.to_native())
                        else {
                            return;
                        };
                        let first = {
                            let mut stats = cx.thread.stats_mut();
                            stats.ledger.own_key(chat, self.user, (0, seq));
                            stats.ledger.receipted(chat, self.user, number)
                        };
                        if let (true, Some(schedule)) = (first, self.schedule)
                            && (1..=self.next).contains(&number)
                        {
                            let due = schedule.due(number - 1);
                            cx.thread
                                .record(Metric::SentReceipt, cx.now_us.saturating_sub(due));
                            self.own.stored(seq, due, cx);
                        }
                    }
                    ArchivedReceiptKind::Delivered | ArchivedReceiptKind::Read => {
                        let kind = if receipt.kind == ArchivedReceiptKind::Read {
                            ReceiptKind::Read
                        } else {
                            ReceiptKind::Delivered
                        };
                        self.own.covered(kind, reader, seq, cx);
                        self.own.prune(self.readers);
                    }
                }
            }
            ServerFrameRef::Error(error) => {
                let code = error.code.to_native();
                let mut stats = cx.thread.stats_mut();
                stats.error(error_frame_label(code));
                let number = error.client_msg_id.as_ref().map(|n| n.to_native());
                if let (Some(chat), Some(n)) = (self.chat, number)
                    && n != CREATE_CHAT_ID
                {
                    stats.ledger.refused(chat, self.user);
                }
            }
            _ => {}
        }
    }
}

impl Behavior for Chat {
    fn on_phase(&mut self, phase: Phase, cx: &mut Cx<'_>) {
        match phase {
            Phase::Setup if self.is_creator() => {
                cx.send_frame(&ClientFrame::CreateChat(CreateChat {
                    client_msg_id: CREATE_CHAT_ID,
                    kind: ChatKind::Group,
                    title: format!("loadtest {}", self.user),
                    members: self.group[1..].to_vec(),
                }));
            }
            Phase::Run => {
                let start = cx.thread.shared.run_start_us();
                if self.sends && self.chat.is_some() {
                    let phase = cx.thread.random_fraction();
                    self.schedule = Some(OpenLoop::new(start, self.rate, self.duration_us, phase));
                }
                if let (Some(interval), Some(_)) = (self.read_ack_interval_us, self.chat) {
                    let offset = (cx.thread.random_fraction() * interval as f64) as u64;
                    self.read_ack_base = Some(start + offset);
                }
            }
            _ => {}
        }
    }

    fn on_message(&mut self, data: Data<'_>, cx: &mut Cx<'_>) {
        if let Some(frame) = server_frame(data, cx) {
            self.on_frame(frame, cx);
        }
    }

    fn on_timer(&mut self, cx: &mut Cx<'_>) {
        if let (Some(chat), Some(schedule)) = (self.chat, self.schedule)
            && self.next < schedule.count()
            && schedule.due(self.next) <= cx.now_us
        {
            self.send_next(chat, schedule, cx);
        }
        if let (Some(chat), Some(due)) = (self.chat, self.next_read_ack)
            && due <= cx.now_us
        {
            self.next_read_ack = None;
            if self.max_seq > self.read_acked {
                self.read_acked = self.max_seq;
                cx.send_frame(&ClientFrame::AckRead(Ack {
                    chat_id: chat,
                    seq: self.max_seq,
                }));
            }
        }
    }

    fn deadline(&self) -> Option<u64> {
        let send = self
            .schedule
            .filter(|s| self.next < s.count())
            .map(|s| s.due(self.next));
        match (send, self.next_read_ack) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn is_ready(&self) -> bool {
        self.welcomed && self.chat.is_some()
    }
}

/// The sender's messages that receipts may still cover: (seq, scheduled time) in seq
/// order, and each reader's delivered and read watermarks.
#[derive(Debug, Default)]
struct OwnMessages {
    messages: VecDeque<(u64, u64)>,
    marks: HashMap<u64, [u64; 2]>,
}

fn mark_index(kind: ReceiptKind) -> Option<(usize, Metric)> {
    match kind {
        ReceiptKind::Delivered => Some((0, Metric::DeliveredReceipt)),
        ReceiptKind::Read => Some((1, Metric::ReadReceipt)),
        ReceiptKind::Sent => None,
    }
}

fn count_receipt(metric: Metric, due: u64, cx: &mut Cx<'_>) {
    cx.thread.record(metric, cx.now_us.saturating_sub(due));
    let mut stats = cx.thread.stats_mut();
    if metric == Metric::ReadReceipt {
        stats.ledger.read_receipt();
    } else {
        stats.ledger.delivered_receipt();
    }
}

impl OwnMessages {
    /// A sent receipt gave message `due` its `seq`; watermarks that already passed it
    /// (a receipt that overtook the sent receipt) cover it now.
    fn stored(&mut self, seq: u64, due: u64, cx: &mut Cx<'_>) {
        let at = self.messages.partition_point(|&(s, _)| s < seq);
        self.messages.insert(at, (seq, due));
        for marks in self.marks.values() {
            for (index, metric) in [(0, Metric::DeliveredReceipt), (1, Metric::ReadReceipt)] {
                if marks[index] >= seq {
                    count_receipt(metric, due, cx);
                }
            }
        }
    }

    /// `reader`'s watermark of `kind` moved to `seq`: every message of ours it passed is
    /// covered.
    fn covered(&mut self, kind: ReceiptKind, reader: u64, seq: u64, cx: &mut Cx<'_>) {
        let Some((index, metric)) = mark_index(kind) else {
            return;
        };
        let mark = &mut self.marks.entry(reader).or_default()[index];
        if seq <= *mark {
            return;
        }
        let previous = std::mem::replace(mark, seq);
        let from = self.messages.partition_point(|&(s, _)| s <= previous);
        let to = self.messages.partition_point(|&(s, _)| s <= seq);
        for i in from..to {
            count_receipt(metric, self.messages[i].1, cx);
        }
    }

    /// Forgets messages every one of the `readers` has read (and so had delivered).
    fn prune(&mut self, readers: usize) {
        if readers == 0 || self.marks.len() < readers {
            return;
        }
        let Some(low) = self.marks.values().map(|m| m[0].min(m[1])).min() else {
            return;
        };
        while self.messages.front().is_some_and(|&(s, _)| s <= low) {
            self.messages.pop_front();
        }
    }
}
