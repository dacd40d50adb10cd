//! Edits, deletes and reactions: chat entries about an earlier message (PROTOCOL.md, "Chat
//! entries"). Each is stored as a `messages` row with its kind and target, so it takes the
//! chat's next seq, shares the sends' (sender, client message id) uniqueness and comes back
//! in sync pages. An entry is decided and stored on its own, between the segments around
//! it (like a membership change), so that it sees every message queued before it; they are
//! rare next to sends, and a few statements each cost the sends nothing.

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Error, Row, Statement};
use wire::client::EntryRequest;
use wire::entries::{self, Target};
use wire::server::Message;
use wire::{ChatId, ClientMsgId, EntryKind, Seq};

use super::{Run, db, membership_refusal, refusal, sent_receipt, wire_id};
use crate::request::Request;

/// The statements of entries, prepared once per connection with the others.
pub(crate) struct EntryStatements {
    /// (sender, client_msg_id) -> (chat_id, seq, server_time_us, body, kind, target_seq).
    find: Statement,
    /// (chat_id, seq, user_id) -> (sender, kind, deleted, the user's reactions[]) of the
    /// entry at that seq.
    target: Statement,
    /// (chat_id) -> the chat's next seq, taken; row-locks the chat until commit.
    take_seq: Statement,
    /// (chat_id, seq, sender, client_msg_id, body, server_time_us, kind, target_seq).
    insert: Statement,
    /// (chat_id, seq, user_id, emoji).
    add_reaction: Statement,
    /// (chat_id, seq, user_id, emoji).
    remove_reaction: Statement,
}

impl EntryStatements {
    pub(crate) async fn prepare(client: &Client) -> Result<EntryStatements, Error> {
        let p = |sql: &'static str| client.prepare(sql);
        Ok(EntryStatements {
            find: p(
                "SELECT chat_id, seq, server_time_us, body, kind, target_seq FROM messages
                 WHERE sender = $1 AND client_msg_id = $2",
            )
            .await?,
            target: p("SELECT m.sender, m.kind,
                        EXISTS (SELECT 1 FROM messages d
                                WHERE d.chat_id = $1 AND d.target_seq = $2 AND d.kind = 2),
                        ARRAY (SELECT emoji FROM message_reactions r
                               WHERE r.chat_id = $1 AND r.seq = $2 AND r.user_id = $3)
                 FROM messages m WHERE m.chat_id = $1 AND m.seq = $2")
            .await?,
            take_seq: p("UPDATE chats SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq")
                .await?,
            insert: p("INSERT INTO messages
                        (chat_id, seq, sender, client_msg_id, body, server_time_us, kind, target_seq)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
            .await?,
            add_reaction: p(
                "INSERT INTO message_reactions (chat_id, seq, user_id, emoji) VALUES ($1, $2, $3, $4)",
            )
            .await?,
            remove_reaction: p("DELETE FROM message_reactions
                 WHERE chat_id = $1 AND seq = $2 AND user_id = $3 AND emoji = $4")
            .await?,
        })
    }
}

/// The stored number of an entry kind (the migration's `kind` column).
pub(super) fn kind_number(kind: EntryKind) -> i16 {
    match kind {
        EntryKind::Message => 0,
        EntryKind::Edit => 1,
        EntryKind::Delete => 2,
        EntryKind::React => 3,
        EntryKind::Unreact => 4,
    }
}

/// An entry kind from its stored number; the column's CHECK allows only these.
pub(super) fn kind_of(number: i16) -> EntryKind {
    match number {
        1 => EntryKind::Edit,
        2 => EntryKind::Delete,
        3 => EntryKind::React,
        4 => EntryKind::Unreact,
        _ => EntryKind::Message,
    }
}

impl Run<'_, '_> {
    /// Decides, stores and answers one edit, delete, react or unreact.
    pub(super) async fn entry(&mut self, request: &Request) -> Result<(), Error> {
        let Some(ask) = request.frame.entry_request() else {
            return Ok(());
        };
        let user = request.origin.user_id;
        let key = (user, ask.client_msg_id);
        if let Some(&(chat_id, seq)) = self.handled.get(&key) {
            self.receipt_again(chat_id, seq, user, ask.client_msg_id);
            return Ok(());
        }
        let st = &self.st.entries;
        let find_params: [&(dyn ToSql + Sync); 2] = [&db(user), &db(ask.client_msg_id)];
        if let Some(row) = self.tx.query_opt(&st.find, &find_params).await? {
            let stored = stored_entry(&row, user, ask.client_msg_id)?;
            return self.stored_again(request, stored).await;
        }
        let (chat, target_seq, member) = (db(ask.chat_id), db(ask.target_seq), db(user));
        let membership_params: [&(dyn ToSql + Sync); 2] = [&chat, &member];
        let target_params: [&(dyn ToSql + Sync); 3] = [&chat, &target_seq, &member];
        let (membership, target) = tokio::try_join!(
            self.tx.query_one(&self.st.membership, &membership_params),
            self.tx.query_opt(&st.target, &target_params),
        )?;
        let (exists, is_member): (bool, bool) = (membership.try_get(0)?, membership.try_get(1)?);
        if !is_member {
            let out = membership_refusal(request, ask.chat_id, exists, Some(ask.client_msg_id));
            self.outcome.outputs.push(out);
            self.outcome.refused += 1;
            return Ok(());
        }
        let held: Vec<String> = match &target {
            Some(row) => row.try_get(3)?,
            None => Vec::new(),
        };
        let held: Vec<&str> = held.iter().map(String::as_str).collect();
        let target = match &target {
            Some(row) => Some(Target {
                sender: wire_id(row.try_get(0)?),
                is_message: kind_of(row.try_get(1)?) == EntryKind::Message,
                deleted: row.try_get(2)?,
                reactions_of_user: &held,
            }),
            None => None,
        };
        let decision = entries::check_event(
            ask.kind,
            user,
            ask.chat_id,
            ask.target_seq,
            ask.body,
            target,
        );
        if let Err((code, reason)) = decision {
            let out = refusal(&request.origin, code, reason, Some(ask.client_msg_id));
            self.outcome.outputs.push(out);
            self.outcome.refused += 1;
            return Ok(());
        }
        self.store(request, &ask).await
    }

    /// Takes the chat's next seq, stores the entry and what it does to its target, and
    /// delivers it.
    async fn store(&mut self, request: &Request, ask: &EntryRequest<'_>) -> Result<(), Error> {
        let st = &self.st.entries;
        let user = request.origin.user_id;
        let chat = db(ask.chat_id);
        let seq: i64 = self
            .tx
            .query_one(&st.take_seq, &[&chat])
            .await?
            .try_get(0)?;
        let (target_seq, member, now) = (db(ask.target_seq), db(user), db(self.now_us));
        let insert_params: [&(dyn ToSql + Sync); 8] = [
            &chat,
            &seq,
            &member,
            &db(ask.client_msg_id),
            &ask.body,
            &now,
            &kind_number(ask.kind),
            &target_seq,
        ];
        let reaction_params: [&(dyn ToSql + Sync); 4] = [&chat, &target_seq, &member, &ask.body];
        let reaction = async {
            match ask.kind {
                EntryKind::React => self.tx.execute(&st.add_reaction, &reaction_params).await,
                EntryKind::Unreact => self.tx.execute(&st.remove_reaction, &reaction_params).await,
                _ => Ok(0),
            }
        };
        let (_, _, members) = tokio::try_join!(
            self.tx.execute(&st.insert, &insert_params),
            reaction,
            self.members_of(ask.chat_id),
        )?;
        let message = Message {
            chat_id: ask.chat_id,
            seq: wire_id(seq),
            sender: user,
            client_msg_id: ask.client_msg_id,
            server_time_us: self.now_us,
            body: ask.body.to_owned(),
            kind: ask.kind,
            target_seq: ask.target_seq,
        };
        self.deliver(message, &members, false, &request.origin);
        self.outcome.stored += 1;
        Ok(())
    }

    /// An entry found stored: a frame the broker hands out again is published in full (its
    /// first worker may have died before publishing); a client's resend gets its receipt.
    async fn stored_again(&mut self, request: &Request, stored: Message) -> Result<(), Error> {
        if request.redelivered {
            let members = self.members_of(stored.chat_id).await?;
            self.deliver(stored, &members, true, &request.origin);
            self.outcome.republished += 1;
        } else {
            let (chat_id, seq) = (stored.chat_id, stored.seq);
            self.handled
                .insert((stored.sender, stored.client_msg_id), (chat_id, seq));
            self.receipt_again(chat_id, seq, stored.sender, stored.client_msg_id);
        }
        Ok(())
    }

    fn receipt_again(&mut self, chat_id: ChatId, seq: Seq, user: u64, client_msg_id: ClientMsgId) {
        let receipt = sent_receipt(chat_id, seq, user, client_msg_id, false);
        self.outcome.outputs.push(receipt);
        self.outcome.duplicates += 1;
    }

    async fn members_of(&self, chat_id: ChatId) -> Result<Vec<u64>, Error> {
        let chats = [db(chat_id)];
        let rows = self
            .tx
            .query(&self.st.members_of_chats, &[&&chats[..]])
            .await?;
        rows.iter()
            .map(|row| Ok(wire_id(row.try_get(1)?)))
            .collect()
    }
}

fn stored_entry(row: &Row, sender: u64, client_msg_id: ClientMsgId) -> Result<Message, Error> {
    Ok(Message {
        chat_id: wire_id(row.try_get(0)?),
        seq: wire_id(row.try_get(1)?),
        sender,
        client_msg_id,
        server_time_us: wire_id(row.try_get(2)?),
        body: row.try_get(3)?,
        kind: kind_of(row.try_get(4)?),
        target_seq: wire_id(row.try_get(5)?),
    })
}
