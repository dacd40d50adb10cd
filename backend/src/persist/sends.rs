//! The sends of one segment, in four steps with a fixed number of statements however many
//! sends there are:
//!
//! 1. **plan**: look up, for every send at once, whether (sender, client message id) is
//!    stored already and whether the sender is a member, and decide each send in queue order;
//! 2. **allocate**: take every chat's seqs at once (row-locking the chats until commit) and
//!    read the member lists of the chats that get a message;
//! 3. **insert**: every new message in one statement;
//! 4. **answer**: the message to the other members and the sent receipt to the sender, in
//!    queue order (so each node receives a chat's messages in seq order).

use std::collections::{HashMap, HashSet};

use tokio_postgres::Error;
use tokio_postgres::types::ToSql;
use wire::client::SendMessage;
use wire::server::Message;
use wire::{ChatId, ClientMsgId, EntryKind, ErrorCode, Seq, UserId};

use super::{Run, db, refusal, sent_receipt, wire_id};
use crate::request::Request;

/// A send and its frame, borrowed from the batch.
pub(super) type Send<'r> = (&'r Request, &'r SendMessage);

/// A message as stored.
struct Stored {
    chat_id: ChatId,
    seq: Seq,
    server_time_us: u64,
    body: String,
}

/// What to do with one send.
enum Plan {
    /// Already stored and published (or handled earlier in this batch): receipt only.
    Receipt { chat_id: ChatId, seq: Seq },
    /// Stored by a worker that may have died before publishing it: publish it in full again.
    Republish(Stored),
    /// A repeat, within this segment, of the send at this index.
    SameAs(usize),
    /// Store it; `ordinal` is its place among this segment's new messages of its chat.
    New { ordinal: i64 },
    /// Answer with an error.
    Refuse(ErrorCode, String),
}

/// The plans of a segment's sends, and how many new messages each chat gets.
struct Plans {
    plans: Vec<Plan>,
    new_per_chat: HashMap<ChatId, i64>,
}

/// Where the new messages go and who receives them.
struct Allocation {
    /// The seq before this segment's first new message, per chat.
    base: HashMap<ChatId, Seq>,
    members: HashMap<ChatId, Vec<UserId>>,
}

impl Run<'_, '_> {
    /// Runs a segment's sends: plan, allocate, insert, answer.
    pub(super) async fn sends(&mut self, sends: &[Send<'_>]) -> Result<(), Error> {
        let plans = self.plan(sends).await?;
        let allocation = self.allocate(&plans).await?;
        let placed = self.insert(sends, &plans.plans, &allocation).await?;
        self.answer(sends, plans.plans, placed, &allocation.members);
        Ok(())
    }

    /// Decides each send in queue order from what is stored and who is a member.
    async fn plan(&self, sends: &[Send<'_>]) -> Result<Plans, Error> {
        // Duplicates and memberships of the sends this transaction has not seen yet.
        let fresh: Vec<_> = sends
            .iter()
            .filter(|(r, m)| {
                !self
                    .handled
                    .contains_key(&(r.origin.user_id, m.client_msg_id))
            })
            .collect();
        let senders: Vec<i64> = fresh.iter().map(|(r, _)| db(r.origin.user_id)).collect();
        let client_msg_ids: Vec<i64> = fresh.iter().map(|(_, m)| db(m.client_msg_id)).collect();
        let chats: Vec<i64> = fresh.iter().map(|(_, m)| db(m.chat_id)).collect();
        let (find_params, membership_params) = (
            [&senders as &(dyn ToSql + Sync), &client_msg_ids],
            [&chats as &(dyn ToSql + Sync), &senders],
        );
        let (stored_rows, membership_rows) = tokio::try_join!(
            self.tx.query(&self.st.find_messages, &find_params),
            self.tx.query(&self.st.membership_pairs, &membership_params),
        )?;
        let mut stored: HashMap<(UserId, ClientMsgId), Stored> = HashMap::new();
        for row in stored_rows {
            let key = (wire_id(row.try_get(0)?), wire_id(row.try_get(1)?));
            stored.insert(
                key,
                Stored {
                    chat_id: wire_id(row.try_get(2)?),
                    seq: wire_id(row.try_get(3)?),
                    server_time_us: wire_id(row.try_get(4)?),
                    body: row.try_get(5)?,
                },
            );
        }
        let mut membership: HashMap<(ChatId, UserId), (bool, bool)> = HashMap::new();
        for row in membership_rows {
            membership.insert(
                (wire_id(row.try_get(0)?), wire_id(row.try_get(1)?)),
                (row.try_get(2)?, row.try_get(3)?),
            );
        }

        let mut plans = Vec::with_capacity(sends.len());
        let mut first_index: HashMap<(UserId, ClientMsgId), usize> = HashMap::new();
        let mut new_per_chat: HashMap<ChatId, i64> = HashMap::new();
        for (index, (request, send)) in sends.iter().enumerate() {
            let sender = request.origin.user_id;
            let key = (sender, send.client_msg_id);
            let plan = if let Some(&(chat_id, seq)) = self.handled.get(&key) {
                Plan::Receipt { chat_id, seq }
            } else if let Some(&first) = first_index.get(&key) {
                Plan::SameAs(first)
            } else if let Some(message) = stored.remove(&key) {
                first_index.insert(key, index);
                // A message is stored in the same transaction that takes its frame, and the
                // frame is acknowledged only once its deliveries are confirmed. So a frame
                // the broker hands out again may be one whose deliveries never went out;
                // a fresh frame that finds its message stored is a client's resend of a
                // message whose deliveries did go out (its first frame was acknowledged).
                if request.redelivered {
                    Plan::Republish(message)
                } else {
                    Plan::Receipt {
                        chat_id: message.chat_id,
                        seq: message.seq,
                    }
                }
            } else {
                match membership.get(&(send.chat_id, sender)) {
                    Some((true, true)) => {
                        first_index.insert(key, index);
                        let count = new_per_chat.entry(send.chat_id).or_insert(0);
                        *count += 1;
                        Plan::New { ordinal: *count }
                    }
                    Some((true, false)) => Plan::Refuse(
                        ErrorCode::NotMember,
                        format!("not a member of chat {}", send.chat_id),
                    ),
                    _ => Plan::Refuse(
                        ErrorCode::UnknownChat,
                        format!("chat {} does not exist", send.chat_id),
                    ),
                }
            };
            plans.push(plan);
        }
        Ok(Plans {
            plans,
            new_per_chat,
        })
    }

    /// Takes every chat's seqs at once and reads the member lists of every chat that gets a
    /// message, in two pipelined statements.
    async fn allocate(&self, plans: &Plans) -> Result<Allocation, Error> {
        // In chat order, so that two transactions locking the same chats (only while a
        // consumer fails over) tend to lock them in the same order instead of deadlocking.
        let mut per_chat: Vec<(i64, i64)> = plans
            .new_per_chat
            .iter()
            .map(|(&c, &n)| (db(c), n))
            .collect();
        per_chat.sort_unstable();
        let (take_chats, take_counts): (Vec<i64>, Vec<i64>) = per_chat.into_iter().unzip();
        let mut fan_out_chats: HashSet<i64> = take_chats.iter().copied().collect();
        fan_out_chats.extend(plans.plans.iter().filter_map(|p| match p {
            Plan::Republish(m) => Some(db(m.chat_id)),
            _ => None,
        }));
        let fan_out_chats: Vec<i64> = fan_out_chats.into_iter().collect();
        let (seq_rows, member_rows) = tokio::try_join!(
            async {
                if take_chats.is_empty() {
                    Ok(Vec::new())
                } else {
                    self.tx
                        .query(&self.st.take_seqs, &[&take_chats, &take_counts])
                        .await
                }
            },
            async {
                if fan_out_chats.is_empty() {
                    Ok(Vec::new())
                } else {
                    self.tx
                        .query(&self.st.members_of_chats, &[&fan_out_chats])
                        .await
                }
            },
        )?;
        let mut base = HashMap::new();
        for row in seq_rows {
            let chat_id: ChatId = wire_id(row.try_get(0)?);
            let last: i64 = row.try_get(1)?;
            let count = plans.new_per_chat.get(&chat_id).copied().unwrap_or(0);
            base.insert(chat_id, wire_id(last - count));
        }
        let mut members: HashMap<ChatId, Vec<UserId>> = HashMap::new();
        for row in member_rows {
            members
                .entry(wire_id(row.try_get(0)?))
                .or_default()
                .push(wire_id(row.try_get(1)?));
        }
        Ok(Allocation { base, members })
    }

    /// Inserts the new messages in one statement; returns where each send landed (none for
    /// a refused one).
    async fn insert(
        &self,
        sends: &[Send<'_>],
        plans: &[Plan],
        allocation: &Allocation,
    ) -> Result<Vec<Option<(ChatId, Seq)>>, Error> {
        let mut rows = NewRows::default();
        let mut placed: Vec<Option<(ChatId, Seq)>> = Vec::with_capacity(sends.len());
        for ((request, send), plan) in sends.iter().zip(plans) {
            let at = match plan {
                Plan::New { ordinal } => {
                    let first = allocation.base.get(&send.chat_id).copied().unwrap_or(0);
                    let seq = first + wire_id(*ordinal);
                    rows.push(request.origin.user_id, send, seq, self.now_us);
                    Some((send.chat_id, seq))
                }
                Plan::Republish(m) => Some((m.chat_id, m.seq)),
                Plan::Receipt { chat_id, seq } => Some((*chat_id, *seq)),
                Plan::SameAs(first) => placed.get(*first).copied().flatten(),
                Plan::Refuse(..) => None,
            };
            placed.push(at);
        }
        if !rows.chats.is_empty() {
            self.tx
                .execute(
                    &self.st.insert_messages,
                    &[
                        &rows.chats,
                        &rows.seqs,
                        &rows.senders,
                        &rows.client_msg_ids,
                        &rows.bodies,
                        &rows.times,
                    ],
                )
                .await?;
        }
        Ok(placed)
    }

    /// Answers every send in queue order.
    fn answer(
        &mut self,
        sends: &[Send<'_>],
        plans: Vec<Plan>,
        placed: Vec<Option<(ChatId, Seq)>>,
        members: &HashMap<ChatId, Vec<UserId>>,
    ) {
        let members_of = |chat_id: ChatId| members.get(&chat_id).map_or(&[][..], Vec::as_slice);
        for (((request, send), plan), placed) in sends.iter().zip(plans).zip(placed) {
            let sender = request.origin.user_id;
            match plan {
                Plan::New { .. } => {
                    let Some((chat_id, seq)) = placed else {
                        continue;
                    };
                    let message = Message {
                        chat_id,
                        seq,
                        sender,
                        client_msg_id: send.client_msg_id,
                        server_time_us: self.now_us,
                        body: send.body.clone(),
                        kind: EntryKind::Message,
                        target_seq: 0,
                    };
                    self.deliver(message, members_of(chat_id), false, &request.origin);
                    self.outcome.stored += 1;
                }
                Plan::Republish(m) => {
                    let message = Message {
                        chat_id: m.chat_id,
                        seq: m.seq,
                        sender,
                        client_msg_id: send.client_msg_id,
                        server_time_us: m.server_time_us,
                        body: m.body,
                        kind: EntryKind::Message,
                        target_seq: 0,
                    };
                    self.deliver(message, members_of(m.chat_id), true, &request.origin);
                    self.outcome.republished += 1;
                }
                Plan::Receipt { .. } | Plan::SameAs(_) => {
                    if let Some((chat_id, seq)) = placed {
                        self.outcome.outputs.push(sent_receipt(
                            chat_id,
                            seq,
                            sender,
                            send.client_msg_id,
                            false,
                        ));
                    }
                    self.outcome.duplicates += 1;
                }
                Plan::Refuse(code, reason) => {
                    self.outcome.outputs.push(refusal(
                        &request.origin,
                        code,
                        reason,
                        Some(send.client_msg_id),
                    ));
                    self.outcome.refused += 1;
                }
            }
        }
    }
}

/// The rows of one segment's new messages, as the insert's column arrays.
#[derive(Default)]
struct NewRows<'a> {
    chats: Vec<i64>,
    seqs: Vec<i64>,
    senders: Vec<i64>,
    client_msg_ids: Vec<i64>,
    bodies: Vec<&'a str>,
    times: Vec<i64>,
}

impl<'a> NewRows<'a> {
    fn push(&mut self, sender: UserId, send: &'a SendMessage, seq: Seq, now_us: u64) {
        self.chats.push(db(send.chat_id));
        self.seqs.push(db(seq));
        self.senders.push(db(sender));
        self.client_msg_ids.push(db(send.client_msg_id));
        self.bodies.push(&send.body);
        self.times.push(db(now_us));
    }
}
