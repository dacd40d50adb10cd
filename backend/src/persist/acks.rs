//! Delivered and read acks of one segment as watermarks: folded per (chat, member) to the
//! highest seq of each kind, applied in one statement, and answered with at most one receipt
//! per (chat, member, kind), addressed to every sender whose messages the watermark passed.
//!
//! A receipt stays per member: it is that member's watermark (PROTOCOL.md), so folding two
//! members' acks into one receipt would tell a sender that someone read a message without
//! saying who. What folds is everything one member acked in the batch, from any session.

use std::collections::BTreeMap;

use tokio_postgres::Error;
use wire::server::Receipt;
use wire::{ChatId, ReceiptKind, Seq, ServerFrame, UserId};

use super::{Run, db, ids, membership_refusal, seq_param, wire_id};
use crate::outcome::{Output, Recipients};
use crate::request::Request;

/// One member's acks of one chat in a segment.
#[derive(Debug, Clone, Copy)]
pub(super) struct Watermarks<'r> {
    /// Highest delivered ack, 0 for none (watermarks start at 0, so 0 moves nothing).
    pub delivered: Seq,
    /// Highest read ack, 0 for none.
    pub read: Seq,
    /// The last ack of the pair: a refusal (not a member) answers its connection.
    pub last: &'r Request,
}

/// A segment's acks, folded per (chat, member). Ordered, so the statement locks members'
/// rows in key order (as `take_seqs` locks chats) and two workers do not deadlock.
#[derive(Debug, Default)]
pub(super) struct Acks<'r> {
    folded: BTreeMap<(ChatId, UserId), Watermarks<'r>>,
}

impl<'r> Acks<'r> {
    /// Folds one ack in.
    pub(super) fn add(&mut self, request: &'r Request, chat_id: ChatId, seq: Seq, read: bool) {
        let entry = self
            .folded
            .entry((chat_id, request.origin.user_id))
            .or_insert(Watermarks {
                delivered: 0,
                read: 0,
                last: request,
            });
        let mark = if read {
            &mut entry.read
        } else {
            &mut entry.delivered
        };
        *mark = (*mark).max(seq);
        entry.last = request;
    }

    pub(super) fn is_empty(&self) -> bool {
        self.folded.is_empty()
    }

    #[cfg(test)]
    pub(super) fn get(&self, chat_id: ChatId, user_id: UserId) -> Option<&Watermarks<'r>> {
        self.folded.get(&(chat_id, user_id))
    }
}

impl Run<'_, '_> {
    /// Applies a segment's folded acks in one statement and returns their receipts and
    /// refusals, with how many were refused.
    pub(super) async fn acks(&self, acks: &Acks<'_>) -> Result<(Vec<Output>, u64), Error> {
        let n = acks.folded.len();
        let (mut chats, mut users, mut delivered, mut read) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for (&(chat_id, user_id), marks) in &acks.folded {
            chats.push(db(chat_id));
            users.push(db(user_id));
            delivered.push(seq_param(marks.delivered));
            read.push(seq_param(marks.read));
        }
        let rows = self
            .tx
            .query(&self.st.apply_acks, &[&chats, &users, &delivered, &read])
            .await?;
        let mut outputs = Vec::new();
        let mut refused = 0;
        for row in rows {
            let key = (wire_id(row.try_get(0)?), wire_id(row.try_get(1)?));
            let Some(marks) = acks.folded.get(&key) else {
                continue;
            };
            let (chat_id, reader) = key;
            let exists: bool = row.try_get(2)?;
            let old_delivered: Option<i64> = row.try_get(3)?;
            let (Some(old_delivered), Some(new_delivered), Some(old_read), Some(new_read)) = (
                old_delivered,
                row.try_get::<_, Option<i64>>(4)?,
                row.try_get::<_, Option<i64>>(5)?,
                row.try_get::<_, Option<i64>>(6)?,
            ) else {
                outputs.push(membership_refusal(marks.last, chat_id, exists, None));
                refused += 1;
                continue;
            };
            let moves = [
                (ReceiptKind::Delivered, old_delivered, new_delivered, 7),
                (ReceiptKind::Read, old_read, new_read, 8),
            ];
            for (kind, old, new, senders_column) in moves {
                let senders = ids(&row, senders_column)?;
                if new > old && !senders.is_empty() {
                    outputs.push(receipt(chat_id, kind, wire_id(new), reader, senders));
                }
            }
            if new_read > old_read {
                outputs.push(own_read(chat_id, wire_id(new_read), reader, marks.last));
            }
        }
        Ok((outputs, refused))
    }
}

fn receipt(
    chat_id: ChatId,
    kind: ReceiptKind,
    seq: Seq,
    reader: UserId,
    senders: Vec<UserId>,
) -> Output {
    let frame = ServerFrame::Receipt(Receipt {
        chat_id,
        kind,
        seq,
        user_id: reader,
        client_msg_id: None,
    });
    Output::new(frame, Recipients::Users(senders))
}

/// The reader's read watermark to the reader's other sessions (multi-device unread counts).
fn own_read(chat_id: ChatId, seq: Seq, reader: UserId, last: &Request) -> Output {
    let frame = ServerFrame::Receipt(Receipt {
        chat_id,
        kind: ReceiptKind::Read,
        seq,
        user_id: reader,
        client_msg_id: None,
    });
    let to = Recipients::UsersBut {
        users: vec![reader],
        node_id: last.origin.node_id,
        connection_id: last.origin.connection_id,
    };
    Output::new(frame, to)
}

/// `(chat_ids[], user_ids[], delivered[], read[])`, one row per (chat, member) -> per row:
/// chat id, user id, whether the chat exists, then (null unless a member) the old and new
/// delivered watermark, the old and new read watermark, and the distinct senders (other than
/// the member) of the messages each watermark passed.
///
/// Each watermark moves up to the ack but never past the chat's last seq and never down;
/// reading implies delivery, so the read watermark lifts the delivered one silently (the
/// read receipt tells the senders more than a delivered one would). The member rows are
/// locked in key order, as the input arrives sorted.
///
/// Each chat is looked up through a `LATERAL ... LIMIT 1`, which the planner cannot turn into
/// a join: a prepared statement gets a generic plan that expects ten input rows, and with a
/// plain join it hashed a sequential scan of every chat on each execution (1.5-2.1 ms
/// against 0.65-1.0 ms with 1,000 chats, `EXPLAIN ANALYZE` with
/// `plan_cache_mode = force_generic_plan`; the scan grows with the table).
pub(crate) const APPLY_ACKS: &str = "
WITH input AS (
    SELECT i.chat_id, i.user_id, i.delivered_to, i.read_to, c.last_seq
    FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[])
        AS i(chat_id, user_id, delivered_to, read_to)
    LEFT JOIN LATERAL (SELECT last_seq FROM chats WHERE id = i.chat_id LIMIT 1) c ON true
), target AS (
    SELECT cm.chat_id, cm.user_id,
           cm.delivered_seq AS old_delivered, cm.read_seq AS old_read,
           GREATEST(cm.delivered_seq, LEAST(i.delivered_to, i.last_seq)) AS acked_delivered,
           GREATEST(cm.read_seq, LEAST(i.read_to, i.last_seq)) AS new_read
    FROM input i
    JOIN chat_members cm ON cm.chat_id = i.chat_id AND cm.user_id = i.user_id
    ORDER BY cm.chat_id, cm.user_id
    FOR UPDATE OF cm
), moved AS (
    UPDATE chat_members cm
    SET delivered_seq = GREATEST(t.acked_delivered, t.new_read), read_seq = t.new_read
    FROM target t
    WHERE cm.chat_id = t.chat_id AND cm.user_id = t.user_id
      AND (t.acked_delivered > t.old_delivered OR t.new_read > t.old_read)
)
SELECT i.chat_id, i.user_id, i.last_seq IS NOT NULL,
       t.old_delivered, t.acked_delivered, t.old_read, t.new_read,
       ARRAY (SELECT DISTINCT m.sender FROM messages m
              WHERE m.chat_id = t.chat_id AND m.seq > t.old_delivered
                AND m.seq <= t.acked_delivered AND m.sender <> t.user_id),
       ARRAY (SELECT DISTINCT m.sender FROM messages m
              WHERE m.chat_id = t.chat_id AND m.seq > t.old_read
                AND m.seq <= t.new_read AND m.sender <> t.user_id)
FROM input i LEFT JOIN target t ON t.chat_id = i.chat_id AND t.user_id = i.user_id";

#[cfg(test)]
mod tests {
    use wire::ClientFrame;
    use wire::client::Ping;

    use super::*;
    use crate::request::Origin;

    fn request(user_id: UserId, connection_id: u64) -> Request {
        Request {
            tag: 1,
            redelivered: false,
            origin: Origin {
                user_id,
                node_id: 1,
                connection_id,
            },
            received_at_us: 0,
            frame: ClientFrame::Ping(Ping { nonce: 0 }),
        }
    }

    #[test]
    fn acks_fold_per_chat_and_member_to_the_highest_seq_of_each_kind() {
        let (a1, a2, b) = (request(1, 10), request(1, 11), request(2, 20));
        let mut acks = Acks::default();
        acks.add(&a1, 5, 7, false);
        acks.add(&a2, 5, 3, false);
        acks.add(&a1, 5, 4, true);
        acks.add(&b, 5, 9, true);
        acks.add(&a2, 6, 2, false);
        let one = acks.get(5, 1).expect("folded");
        assert_eq!((one.delivered, one.read), (7, 4));
        // The last ack of the pair answers a refusal: here from connection 10.
        assert_eq!(one.last.origin.connection_id, 10);
        let other = acks.get(5, 2).expect("folded");
        assert_eq!((other.delivered, other.read), (0, 9));
        assert_eq!(acks.folded.len(), 3);
    }
}
