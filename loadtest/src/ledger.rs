//! The accounting: every message sent is expected at a known set of recipients, and every
//! reception is checked against what was sent.
//!
//! A message is named by `(chat, sender, number)`: the sender numbers its messages 1, 2, 3
//! (the client message id on our gateway, the stamp's number for raw peers). Senders log
//! how many they sent and which got a sent receipt; recipients log, per chat and sender,
//! the numbers they received. Nothing crosses threads during the run: each thread keeps its
//! own [`Ledger`], and the ledgers are merged once at the end, when the expected set is
//! known. The expected recipients of a message are the chat's participants (the members
//! that connected and joined) chosen by the [`Audience`].
//!
//! Live checks happen at the recipient, per order stream (the chat on our gateway, whose
//! seq is gap-free; each sender's numbers for raw peers):
//! - a duplicate is an order key (chat, seq) seen twice;
//! - out of order is a key lower than the last one seen (a hole being filled late);
//! - a gap is a key past the last one seen + 1: what a real client would answer with a
//!   sync. A swap of two messages makes one gap and one out-of-order reception; a drop
//!   makes one gap (unless nothing follows it) and one loss.
//!
//! Losses are computed at the end (after the drain time): expected pairs (message,
//! recipient) never received.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use serde::Serialize;

/// Numbers and seqs above this are not tracked in bitsets (a corrupt or foreign frame must
/// not make the tester allocate gigabytes); they count as `untracked`.
const MAX_TRACKED: u64 = 1 << 26;

/// A growable set of small numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BitSet(Vec<u64>);

impl BitSet {
    /// Adds `n`; false if it was already there.
    pub fn insert(&mut self, n: u64) -> bool {
        let (word, bit) = ((n / 64) as usize, n % 64);
        if word >= self.0.len() {
            self.0.resize(word + 1, 0);
        }
        let had = self.0[word] & (1 << bit) != 0;
        self.0[word] |= 1 << bit;
        !had
    }

    /// Whether `n` is in the set.
    pub fn contains(&self, n: u64) -> bool {
        self.0
            .get((n / 64) as usize)
            .is_some_and(|w| w & (1 << (n % 64)) != 0)
    }

    /// Members in `1..=max`.
    pub fn count_up_to(&self, max: u64) -> u64 {
        self.count_common_up_to(None, max)
    }

    /// Members of both sets in `1..=max` (both sets alike when `other` is `None`).
    fn count_common_up_to(&self, other: Option<&BitSet>, max: u64) -> u64 {
        let mut count = 0;
        for (i, &word) in self.0.iter().enumerate() {
            let low = i as u64 * 64;
            if low > max {
                break;
            }
            let mut word = word & other.map_or(u64::MAX, |o| o.0.get(i).copied().unwrap_or(0));
            if i == 0 {
                word &= !1;
            }
            if max - low < 63 {
                word &= (1u64 << (max - low + 1)) - 1;
            }
            count += u64::from(word.count_ones());
        }
        count
    }

    /// Members.
    pub fn len(&self) -> u64 {
        self.0.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&w| w == 0)
    }

    fn union(&mut self, other: &BitSet) {
        if other.0.len() > self.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        for (mine, theirs) in self.0.iter_mut().zip(&other.0) {
            *mine |= theirs;
        }
    }
}

/// Who is expected to receive a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// Every participant of the chat but the sender (our gateway's chats).
    Others,
    /// Every participant, the sender included (raw broadcast).
    Everyone,
    /// The sender alone (echo).
    SenderOnly,
}

/// What a recipient made of one reception.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reception {
    /// The next key, or the first one.
    InOrder,
    /// New, but past the last key + 1.
    Gap,
    /// New, but lower than the last key.
    OutOfOrder,
    /// Seen before.
    Duplicate,
}

impl Reception {
    /// Whether this was the first reception (its latency counts).
    pub fn is_first(self) -> bool {
        self != Reception::Duplicate
    }
}

#[derive(Debug, Clone, Default)]
struct SentLog {
    /// Messages 1..=count were sent.
    count: u64,
    /// Numbers a sent receipt answered.
    receipted: BitSet,
    /// Sends answered by an error frame.
    refused: u64,
}

#[derive(Debug, Clone, Default)]
struct OrderTrack {
    seen: BitSet,
    last: u64,
}

#[derive(Debug, Clone, Default)]
struct Inbox {
    /// Numbers received, per sender.
    from: HashMap<u64, BitSet>,
    /// Order keys seen, per order stream.
    order: HashMap<u64, OrderTrack>,
}

/// One thread's log of what was sent and received; merged across threads at the end.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    sent: HashMap<(u64, u64), SentLog>,
    inboxes: HashMap<(u64, u64), Inbox>,
    participants: HashMap<u64, Vec<u64>>,
    duplicates: u64,
    out_of_order: u64,
    gaps: u64,
    untracked: u64,
    duplicate_sent_receipts: u64,
    delivered_receipts: u64,
    read_receipts: u64,
}

impl Ledger {
    /// `member` takes part in `chat`: it is expected to receive what the audience says.
    pub fn join(&mut self, chat: u64, member: u64) {
        self.participants.entry(chat).or_default().push(member);
    }

    /// `sender` sent its message `number` in `chat`.
    pub fn sent(&mut self, chat: u64, sender: u64, number: u64) {
        let log = self.sent.entry((chat, sender)).or_default();
        log.count = log.count.max(number);
    }

    /// A sent receipt answered message `number`; false (and counted) if one already had.
    pub fn receipted(&mut self, chat: u64, sender: u64, number: u64) -> bool {
        if number > MAX_TRACKED {
            self.untracked += 1;
            return false;
        }
        let first = self
            .sent
            .entry((chat, sender))
            .or_default()
            .receipted
            .insert(number);
        if !first {
            self.duplicate_sent_receipts += 1;
        }
        first
    }

    /// An error frame answered a send.
    pub fn refused(&mut self, chat: u64, sender: u64) {
        self.sent.entry((chat, sender)).or_default().refused += 1;
    }

    /// `recipient` received `sender`'s message `number` in `chat`, with order key `key` in
    /// the order stream `stream`.
    pub fn received(
        &mut self,
        chat: u64,
        recipient: u64,
        sender: u64,
        number: u64,
        (stream, key): (u64, u64),
    ) -> Reception {
        if number > MAX_TRACKED || key > MAX_TRACKED {
            self.untracked += 1;
            return Reception::Duplicate;
        }
        let inbox = self.inboxes.entry((chat, recipient)).or_default();
        inbox.from.entry(sender).or_default().insert(number);
        let track = inbox.order.entry(stream).or_default();
        let reception = if !track.seen.insert(key) {
            Reception::Duplicate
        } else if key < track.last {
            Reception::OutOfOrder
        } else if key > track.last + 1 {
            Reception::Gap
        } else {
            Reception::InOrder
        };
        match reception {
            Reception::Duplicate => self.duplicates += 1,
            Reception::OutOfOrder => self.out_of_order += 1,
            Reception::Gap => self.gaps += 1,
            Reception::InOrder => {}
        }
        track.last = track.last.max(key);
        reception
    }

    /// `recipient`'s own message took order key `key` in `stream` (its sent receipt said
    /// so): the server never sends it back, so the key is marked seen for the order checks,
    /// and a jump to it is a gap like any other. This assumes, as the gateway guarantees per
    /// chat, that the sent receipt arrives before later deliveries.
    pub fn own_key(&mut self, chat: u64, recipient: u64, (stream, key): (u64, u64)) {
        if key > MAX_TRACKED {
            self.untracked += 1;
            return;
        }
        let track = self
            .inboxes
            .entry((chat, recipient))
            .or_default()
            .order
            .entry(stream)
            .or_default();
        if track.seen.insert(key) && key > track.last + 1 {
            self.gaps += 1;
        }
        track.last = track.last.max(key);
    }

    /// A delivered receipt covered one more (message, reader) pair for the first time.
    pub fn delivered_receipt(&mut self) {
        self.delivered_receipts += 1;
    }

    /// A read receipt covered one more (message, reader) pair for the first time.
    pub fn read_receipt(&mut self) {
        self.read_receipts += 1;
    }

    /// Adds another thread's ledger.
    pub fn merge(&mut self, other: Ledger) {
        for (key, log) in other.sent {
            match self.sent.entry(key) {
                Entry::Vacant(slot) => {
                    slot.insert(log);
                }
                Entry::Occupied(mut slot) => {
                    let mine = slot.get_mut();
                    mine.count = mine.count.max(log.count);
                    mine.receipted.union(&log.receipted);
                    mine.refused += log.refused;
                }
            }
        }
        for (key, inbox) in other.inboxes {
            let mine = self.inboxes.entry(key).or_default();
            for (sender, numbers) in inbox.from {
                mine.from.entry(sender).or_default().union(&numbers);
            }
            // Order is judged per recipient, which lives on one thread: keep either track.
            for (stream, track) in inbox.order {
                mine.order.entry(stream).or_insert(track);
            }
        }
        for (chat, members) in other.participants {
            self.participants.entry(chat).or_default().extend(members);
        }
        self.duplicates += other.duplicates;
        self.out_of_order += other.out_of_order;
        self.gaps += other.gaps;
        self.untracked += other.untracked;
        self.duplicate_sent_receipts += other.duplicate_sent_receipts;
        self.delivered_receipts += other.delivered_receipts;
        self.read_receipts += other.read_receipts;
    }

    /// The final accounting, once every thread's ledger is merged.
    pub fn account(&self, audience: Audience) -> Accounting {
        let mut a = Accounting::default();
        let nobody = Vec::new();
        for (&(chat, sender), log) in &self.sent {
            let receipted = log.receipted.count_up_to(log.count);
            a.messages_sent += log.count;
            a.sent_receipts += receipted;
            a.refused += log.refused;
            let members = self.participants.get(&chat).unwrap_or(&nobody);
            let recipients: Vec<u64> = match audience {
                Audience::Others => members.iter().copied().filter(|&m| m != sender).collect(),
                Audience::Everyone => members.clone(),
                Audience::SenderOnly => vec![sender],
            };
            if audience == Audience::Others {
                let readers = recipients.len() as u64;
                a.delivered_receipts_expected += receipted * readers;
                a.read_receipts_expected += receipted * readers;
            }
            for recipient in recipients {
                let got = self
                    .inboxes
                    .get(&(chat, recipient))
                    .and_then(|inbox| inbox.from.get(&sender));
                let (all, of_receipted) = got.map_or((0, 0), |got| {
                    (
                        got.count_up_to(log.count),
                        got.count_common_up_to(Some(&log.receipted), log.count),
                    )
                });
                a.deliveries_expected += log.count;
                a.expected_of_receipted += receipted;
                a.deliveries_received += all;
                a.losses += log.count - all;
                a.losses_of_receipted += receipted - of_receipted;
            }
        }
        a.unanswered = a.messages_sent.saturating_sub(a.sent_receipts + a.refused);
        a.expected_of_unreceipted = a.deliveries_expected - a.expected_of_receipted;
        a.losses_of_unreceipted = a.losses - a.losses_of_receipted;
        let unique_received: u64 = self
            .inboxes
            .values()
            .flat_map(|inbox| inbox.from.values())
            .map(BitSet::len)
            .sum();
        a.unexpected = unique_received - a.deliveries_received;
        a.duplicates = self.duplicates;
        a.out_of_order = self.out_of_order;
        a.gaps = self.gaps;
        a.untracked = self.untracked;
        a.duplicate_sent_receipts = self.duplicate_sent_receipts;
        a.delivered_receipts = self.delivered_receipts;
        a.read_receipts = self.read_receipts;
        a
    }
}

/// Where every message went. On our gateway's chats, "receipted" means a sent receipt
/// came back; scenarios without sent receipts (echo, raw peers) have none, so all their
/// expectations count as unreceipted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Accounting {
    /// Messages the tester sent.
    pub messages_sent: u64,
    /// Of those, answered by a sent receipt.
    pub sent_receipts: u64,
    /// Of those, answered by an error frame.
    pub refused: u64,
    /// Of those, answered by neither (by the end of the drain).
    pub unanswered: u64,
    /// (message, recipient) pairs expected: one per participant the audience names.
    pub deliveries_expected: u64,
    /// Of those, for messages that got a sent receipt.
    pub expected_of_receipted: u64,
    /// Of those, for messages that did not.
    pub expected_of_unreceipted: u64,
    /// Expected pairs received (once or more).
    pub deliveries_received: u64,
    /// Expected pairs never received by the end of the drain.
    pub losses: u64,
    /// Losses of messages the server had confirmed with a sent receipt.
    pub losses_of_receipted: u64,
    /// Losses of messages without a sent receipt.
    pub losses_of_unreceipted: u64,
    /// Receptions of an order key already seen.
    pub duplicates: u64,
    /// Receptions of a key lower than the last one seen.
    pub out_of_order: u64,
    /// Receptions that skipped past the last key + 1.
    pub gaps: u64,
    /// Received messages nobody expected (never sent, or not to this recipient).
    pub unexpected: u64,
    /// Receptions with numbers too large to track.
    pub untracked: u64,
    /// Sent receipts for a message that already had one.
    pub duplicate_sent_receipts: u64,
    /// (message, reader) pairs a delivered receipt should cover: receipted messages times
    /// the other participants (our gateway's chats only).
    pub delivered_receipts_expected: u64,
    /// (message, reader) pairs delivered receipts covered.
    pub delivered_receipts: u64,
    /// (message, reader) pairs a read receipt should cover.
    pub read_receipts_expected: u64,
    /// (message, reader) pairs read receipts covered.
    pub read_receipts: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitsets_count_within_a_range() {
        let mut set = BitSet::default();
        for n in [1, 2, 63, 64, 65, 200] {
            assert!(set.insert(n));
        }
        assert!(!set.insert(64));
        assert!(set.contains(65) && !set.contains(66));
        assert_eq!(set.len(), 6);
        assert_eq!(set.count_up_to(64), 4);
        assert_eq!(set.count_up_to(63), 3);
        assert_eq!(set.count_up_to(1000), 6);
        let mut other = BitSet::default();
        other.insert(2);
        other.insert(200);
        assert_eq!(set.count_common_up_to(Some(&other), 199), 1);
        assert!(BitSet::default().is_empty());
    }

    #[test]
    fn receptions_are_classified_per_stream() {
        let mut ledger = Ledger::default();
        let mut got = |seq| ledger.received(1, 10, 20, seq, (0, seq));
        assert_eq!(got(1), Reception::InOrder);
        assert_eq!(got(3), Reception::Gap);
        assert_eq!(got(2), Reception::OutOfOrder);
        assert_eq!(got(3), Reception::Duplicate);
        assert_eq!(got(4), Reception::InOrder);
        assert_eq!(
            (ledger.duplicates, ledger.out_of_order, ledger.gaps),
            (1, 1, 1)
        );
    }

    #[test]
    fn accounting_names_every_loss_and_stranger() {
        let mut a = Ledger::default();
        let mut b = Ledger::default();
        // Chat 7: users 1 and 2 on one thread, user 3 on another.
        a.join(7, 1);
        a.join(7, 2);
        b.join(7, 3);
        for n in 1..=4 {
            a.sent(7, 1, n);
        }
        for n in [1, 2, 3] {
            a.receipted(7, 1, n);
        }
        a.refused(7, 1);
        for n in [1, 2, 3, 4] {
            a.received(7, 2, 1, n, (0, n));
        }
        for n in [1, 3] {
            b.received(7, 3, 1, n, (0, n));
        }
        // A message from nobody in this chat.
        b.received(7, 3, 99, 1, (0, 9));
        a.merge(b);
        let acc = a.account(Audience::Others);
        assert_eq!(acc.messages_sent, 4);
        assert_eq!((acc.sent_receipts, acc.refused, acc.unanswered), (3, 1, 0));
        assert_eq!(acc.deliveries_expected, 8);
        assert_eq!(
            (acc.expected_of_receipted, acc.expected_of_unreceipted),
            (6, 2)
        );
        assert_eq!(acc.deliveries_received, 6);
        assert_eq!(
            (
                acc.losses,
                acc.losses_of_receipted,
                acc.losses_of_unreceipted
            ),
            (2, 1, 1)
        );
        assert_eq!(acc.unexpected, 1);
        assert_eq!(acc.read_receipts_expected, 6);
    }

    #[test]
    fn echo_and_broadcast_audiences() {
        let mut ledger = Ledger::default();
        ledger.join(0, 1);
        ledger.join(0, 2);
        ledger.sent(0, 1, 1);
        ledger.received(0, 1, 1, 1, (1, 1));
        let everyone = ledger.account(Audience::Everyone);
        assert_eq!((everyone.deliveries_expected, everyone.losses), (2, 1));
        let echo = ledger.account(Audience::SenderOnly);
        assert_eq!((echo.deliveries_expected, echo.losses), (1, 0));
    }
}
