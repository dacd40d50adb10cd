//! The frames' semantics, run inside one transaction per batch.
//!
//! A batch is cut into segments at the frames that change membership (create, join, leave).
//! Within a segment the sends go first, all together in a fixed number of statements (see
//! `sends`), then the acks, folded into watermarks and applied in one statement (see
//! `acks`), then the other frames, each one statement, pipelined on the connection. Moving
//! acks, syncs and typing after the sends of their segment changes nothing they answer
//! except to include those sends, and keeps a busy chat's sends and acks in a few
//! statements per batch instead of a few per frame. The membership change that ends a
//! segment runs last, so every frame sees the memberships in queue order.

mod acks;
mod sends;

use std::collections::HashMap;

use futures_util::future::try_join_all;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Error, Row, Transaction};
use wire::client::{CreateChat, Membership, PresenceQuery, SyncRequest, Typing};
use wire::limits::{MAX_MEMBERS_PER_CHAT, MAX_SYNC_PAGE};
use wire::server::{ChatCreated, ChatEvent, ErrorFrame, Message, Receipt, SyncBatch, TypingEvent};
use wire::{
    ChatId, ChatKind, ClientFrame, ClientMsgId, ErrorCode, ReceiptKind, Seq, ServerFrame, UserId,
};

use crate::db::Statements;
use crate::outcome::{Body, Outcome, Output, Recipients};
use crate::request::{Origin, Request};

pub(crate) use acks::APPLY_ACKS;

/// Runs `requests` (in queue order) in `tx`.
pub(crate) async fn apply(
    tx: &Transaction<'_>,
    st: &Statements,
    requests: &[&Request],
    now_us: u64,
) -> Result<Outcome, Error> {
    let mut run = Run {
        tx,
        st,
        now_us,
        outcome: Outcome::default(),
        handled: HashMap::new(),
    };
    let mut segment = Segment::default();
    for &request in requests {
        match &request.frame {
            ClientFrame::Send(send) => segment.sends.push((request, send)),
            ClientFrame::AckDelivered(ack) => {
                segment.acks.add(request, ack.chat_id, ack.seq, false)
            }
            ClientFrame::AckRead(ack) => segment.acks.add(request, ack.chat_id, ack.seq, true),
            ClientFrame::CreateChat(_) | ClientFrame::Join(_) | ClientFrame::Leave(_) => {
                run.segment(std::mem::take(&mut segment)).await?;
                run.membership_change(request).await?;
            }
            ClientFrame::Sync(_) | ClientFrame::Typing(_) | ClientFrame::PresenceQuery(_) => {
                segment.others.push(request)
            }
            // The gateway answers pings itself; one that reaches us needs nothing.
            ClientFrame::Ping(_) => {}
        }
    }
    run.segment(segment).await?;
    Ok(run.outcome)
}

#[derive(Default)]
struct Segment<'r> {
    sends: Vec<sends::Send<'r>>,
    acks: acks::Acks<'r>,
    others: Vec<&'r Request>,
}

/// The state of one batch's transaction.
struct Run<'a, 't> {
    tx: &'a Transaction<'t>,
    st: &'a Statements,
    now_us: u64,
    outcome: Outcome,
    /// Sends (sender, client message id) stored or republished earlier in this transaction,
    /// with their chat and seq: a repeat later in the batch only gets its receipt again.
    handled: HashMap<(UserId, ClientMsgId), (ChatId, Seq)>,
}

impl Run<'_, '_> {
    async fn segment(&mut self, segment: Segment<'_>) -> Result<(), Error> {
        if !segment.sends.is_empty() {
            self.sends(&segment.sends).await?;
        }
        let (tx, st) = (self.tx, self.st);
        let (acked, answers) = tokio::try_join!(
            async {
                if segment.acks.is_empty() {
                    Ok((Vec::new(), 0))
                } else {
                    self.acks(&segment.acks).await
                }
            },
            try_join_all(segment.others.iter().map(|&request| other(tx, st, request))),
        )?;
        self.outcome.refused += acked.1;
        self.outcome.outputs.extend(acked.0);
        for (outputs, refused) in answers {
            self.outcome.refused += u64::from(refused);
            self.outcome.outputs.extend(outputs);
        }
        Ok(())
    }

    /// The message to every member but its sender, and the sent receipt to the sender;
    /// records it as handled.
    fn deliver(&mut self, message: Message, members: &[UserId], republish: bool) {
        let (chat_id, seq, sender, client_msg_id) = (
            message.chat_id,
            message.seq,
            message.sender,
            message.client_msg_id,
        );
        self.handled.insert((sender, client_msg_id), (chat_id, seq));
        let others: Vec<UserId> = members.iter().copied().filter(|&u| u != sender).collect();
        if !others.is_empty() {
            self.outcome.outputs.push(Output {
                body: Body::Frame(ServerFrame::Message(message)),
                to: Recipients::Users(others),
                republish,
            });
        }
        self.outcome
            .outputs
            .push(sent_receipt(chat_id, seq, sender, client_msg_id, republish));
    }

    async fn membership_change(&mut self, request: &Request) -> Result<(), Error> {
        let (outputs, refused) = match &request.frame {
            ClientFrame::CreateChat(create) => self.create_chat(request, create).await?,
            ClientFrame::Join(join) => self.join(request, join).await?,
            ClientFrame::Leave(leave) => self.leave(request, leave).await?,
            _ => (Vec::new(), false),
        };
        self.outcome.refused += u64::from(refused);
        self.outcome.outputs.extend(outputs);
        Ok(())
    }

    async fn create_chat(
        &self,
        request: &Request,
        create: &CreateChat,
    ) -> Result<(Vec<Output>, bool), Error> {
        let creator = request.origin.user_id;
        let refuse = |code, reason: &str| {
            Ok((
                vec![refusal(
                    &request.origin,
                    code,
                    reason.to_owned(),
                    Some(create.client_msg_id),
                )],
                true,
            ))
        };
        let mut members = create.members.clone();
        members.push(creator);
        members.sort_unstable();
        members.dedup();
        match create.kind {
            ChatKind::Direct if members.len() != 2 => {
                return refuse(
                    ErrorCode::InvalidRequest,
                    "a direct chat has exactly two members: the creator and one other user",
                );
            }
            ChatKind::Group if members.len() > MAX_MEMBERS_PER_CHAT => {
                return refuse(
                    ErrorCode::LimitExceeded,
                    "too many members, counting the creator",
                );
            }
            _ => {}
        }
        let created = self
            .tx
            .query_opt(
                &self.st.create_chat,
                &[
                    &kind_name(create.kind),
                    &create.title,
                    &db(creator),
                    &db(create.client_msg_id),
                ],
            )
            .await?;
        let (chat_id, kind, title, members) = match created {
            Some(row) => {
                let chat_id: i64 = row.try_get(0)?;
                let ids: Vec<i64> = members.iter().map(|&u| db(u)).collect();
                self.tx
                    .execute(&self.st.add_members, &[&chat_id, &ids])
                    .await?;
                (wire_id(chat_id), create.kind, create.title.clone(), members)
            }
            None => {
                // A resend or a redelivery: answer with the chat as it is now.
                let row = self
                    .tx
                    .query_one(
                        &self.st.find_created_chat,
                        &[&db(creator), &db(create.client_msg_id)],
                    )
                    .await?;
                let kind: String = row.try_get(1)?;
                (
                    wire_id(row.try_get(0)?),
                    parse_kind(&kind),
                    row.try_get(2)?,
                    ids(&row, 3)?,
                )
            }
        };
        let frame = ServerFrame::ChatCreated(ChatCreated {
            client_msg_id: create.client_msg_id,
            chat_id,
            kind,
            title,
            creator,
            members: members.clone(),
        });
        Ok((vec![Output::new(frame, Recipients::Users(members))], false))
    }

    async fn join(
        &self,
        request: &Request,
        join: &Membership,
    ) -> Result<(Vec<Output>, bool), Error> {
        let user = request.origin.user_id;
        let refuse = |code, reason: String| {
            Ok((
                vec![refusal(
                    &request.origin,
                    code,
                    reason,
                    Some(join.client_msg_id),
                )],
                true,
            ))
        };
        let Some(row) = self
            .tx
            .query_opt(&self.st.lock_chat_for_join, &[&db(join.chat_id), &db(user)])
            .await?
        else {
            return refuse(
                ErrorCode::UnknownChat,
                format!("chat {} does not exist", join.chat_id),
            );
        };
        let kind: String = row.try_get(0)?;
        let count: i64 = row.try_get(1)?;
        let member: bool = row.try_get(2)?;
        if parse_kind(&kind) == ChatKind::Direct {
            return refuse(
                ErrorCode::InvalidRequest,
                "direct chats cannot be joined".to_owned(),
            );
        }
        if !member && usize::try_from(count).unwrap_or(usize::MAX) >= MAX_MEMBERS_PER_CHAT {
            return refuse(ErrorCode::LimitExceeded, "the chat is full".to_owned());
        }
        self.tx
            .execute(&self.st.add_members, &[&db(join.chat_id), &vec![db(user)]])
            .await?;
        let members = self.members(join.chat_id).await?;
        let frame = ServerFrame::Joined(ChatEvent {
            client_msg_id: join.client_msg_id,
            chat_id: join.chat_id,
            user_id: user,
        });
        Ok((vec![Output::new(frame, Recipients::Users(members))], false))
    }

    async fn leave(
        &self,
        request: &Request,
        leave: &Membership,
    ) -> Result<(Vec<Output>, bool), Error> {
        let user = request.origin.user_id;
        let row = self
            .tx
            .query_one(&self.st.chat_and_members, &[&db(leave.chat_id)])
            .await?;
        let exists: bool = row.try_get(0)?;
        let kind: Option<String> = row.try_get(1)?;
        if !exists {
            let reason = format!("chat {} does not exist", leave.chat_id);
            let out = refusal(
                &request.origin,
                ErrorCode::UnknownChat,
                reason,
                Some(leave.client_msg_id),
            );
            return Ok((vec![out], true));
        }
        if kind.as_deref().map(parse_kind) == Some(ChatKind::Direct) {
            let out = refusal(
                &request.origin,
                ErrorCode::InvalidRequest,
                "direct chats cannot be left".to_owned(),
                Some(leave.client_msg_id),
            );
            return Ok((vec![out], true));
        }
        let removed = self
            .tx
            .query_opt(&self.st.remove_member, &[&db(leave.chat_id), &db(user)])
            .await?
            .is_some();
        // The remaining members hear of it, and so does the leaver. Leaving a chat one is not
        // in succeeds quietly (only the leaver hears): that is what a redelivered leave finds.
        let mut recipients = if removed { ids(&row, 2)? } else { Vec::new() };
        if !recipients.contains(&user) {
            recipients.push(user);
        }
        let frame = ServerFrame::Left(ChatEvent {
            client_msg_id: leave.client_msg_id,
            chat_id: leave.chat_id,
            user_id: user,
        });
        Ok((
            vec![Output::new(frame, Recipients::Users(recipients))],
            false,
        ))
    }

    async fn members(&self, chat_id: ChatId) -> Result<Vec<UserId>, Error> {
        let row = self
            .tx
            .query_one(&self.st.chat_and_members, &[&db(chat_id)])
            .await?;
        ids(&row, 2)
    }
}

/// A frame other than a send or a membership change: its outputs, and whether it was
/// refused. One statement (or two independent ones), so that they pipeline.
async fn other(
    tx: &Transaction<'_>,
    st: &Statements,
    request: &Request,
) -> Result<(Vec<Output>, bool), Error> {
    match &request.frame {
        ClientFrame::Sync(sync) => history(tx, st, request, sync).await,
        ClientFrame::Typing(typing) => typing_event(tx, st, request, typing).await,
        ClientFrame::PresenceQuery(query) => Ok((vec![presence(request, query)], false)),
        _ => Ok((Vec::new(), false)),
    }
}

async fn history(
    tx: &Transaction<'_>,
    st: &Statements,
    request: &Request,
    sync: &SyncRequest,
) -> Result<(Vec<Output>, bool), Error> {
    let limit = sync.limit.clamp(1, MAX_SYNC_PAGE);
    // One row more than the page tells whether another page follows.
    let fetch = i64::from(limit) + 1;
    let (chat, user, after) = (
        db(sync.chat_id),
        db(request.origin.user_id),
        seq_param(sync.after_seq),
    );
    let membership_params: [&(dyn ToSql + Sync); 2] = [&chat, &user];
    let page_params: [&(dyn ToSql + Sync); 3] = [&chat, &after, &fetch];
    let (membership, rows) = tokio::try_join!(
        tx.query_one(&st.membership, &membership_params),
        tx.query(&st.sync_page, &page_params),
    )?;
    let (exists, member): (bool, bool) = (membership.try_get(0)?, membership.try_get(1)?);
    if !member {
        let out = membership_refusal(request, sync.chat_id, exists, Some(sync.client_msg_id));
        return Ok((vec![out], true));
    }
    let has_more = rows.len() > limit as usize;
    let mut messages = Vec::with_capacity(rows.len().min(limit as usize));
    for row in rows.iter().take(limit as usize) {
        messages.push(Message {
            chat_id: sync.chat_id,
            seq: wire_id(row.try_get(0)?),
            sender: wire_id(row.try_get(1)?),
            client_msg_id: wire_id(row.try_get(2)?),
            server_time_us: wire_id(row.try_get(3)?),
            body: row.try_get(4)?,
        });
    }
    let frame = ServerFrame::SyncBatch(SyncBatch {
        client_msg_id: sync.client_msg_id,
        chat_id: sync.chat_id,
        messages,
        has_more,
    });
    Ok((vec![Output::new(frame, to_origin(&request.origin))], false))
}

async fn typing_event(
    tx: &Transaction<'_>,
    st: &Statements,
    request: &Request,
    typing: &Typing,
) -> Result<(Vec<Output>, bool), Error> {
    let user = request.origin.user_id;
    let row = tx
        .query_one(&st.chat_and_members, &[&db(typing.chat_id)])
        .await?;
    let exists: bool = row.try_get(0)?;
    let members = ids(&row, 2)?;
    if !members.contains(&user) {
        return Ok((
            vec![membership_refusal(request, typing.chat_id, exists, None)],
            true,
        ));
    }
    let others: Vec<UserId> = members.into_iter().filter(|&u| u != user).collect();
    if others.is_empty() {
        return Ok((Vec::new(), false));
    }
    let frame = ServerFrame::Typing(TypingEvent {
        chat_id: typing.chat_id,
        user_id: user,
    });
    Ok((vec![Output::new(frame, Recipients::Users(others))], false))
}

fn presence(request: &Request, query: &PresenceQuery) -> Output {
    Output {
        body: Body::Presence {
            client_msg_id: query.client_msg_id,
            users: query.users.clone(),
        },
        to: to_origin(&request.origin),
        republish: false,
    }
}

fn sent_receipt(
    chat_id: ChatId,
    seq: Seq,
    sender: UserId,
    client_msg_id: ClientMsgId,
    republish: bool,
) -> Output {
    Output {
        body: Body::Frame(ServerFrame::Receipt(Receipt {
            chat_id,
            kind: ReceiptKind::Sent,
            seq,
            user_id: sender,
            client_msg_id: Some(client_msg_id),
        })),
        to: Recipients::Users(vec![sender]),
        republish,
    }
}

fn to_origin(origin: &Origin) -> Recipients {
    Recipients::Connection {
        node_id: origin.node_id,
        connection_id: origin.connection_id,
    }
}

fn refusal(
    origin: &Origin,
    code: ErrorCode,
    reason: String,
    client_msg_id: Option<ClientMsgId>,
) -> Output {
    Output::new(
        ServerFrame::Error(ErrorFrame::new(code, reason, client_msg_id)),
        to_origin(origin),
    )
}

fn membership_refusal(
    request: &Request,
    chat_id: ChatId,
    exists: bool,
    client_msg_id: Option<ClientMsgId>,
) -> Output {
    let (code, reason) = if exists {
        (
            ErrorCode::NotMember,
            format!("not a member of chat {chat_id}"),
        )
    } else {
        (
            ErrorCode::UnknownChat,
            format!("chat {chat_id} does not exist"),
        )
    };
    refusal(&request.origin, code, reason, client_msg_id)
}

fn kind_name(kind: ChatKind) -> &'static str {
    match kind {
        ChatKind::Direct => "direct",
        ChatKind::Group => "group",
    }
}

/// The table's CHECK constraint allows only the two names.
fn parse_kind(name: &str) -> ChatKind {
    if name == "direct" {
        ChatKind::Direct
    } else {
        ChatKind::Group
    }
}

/// A u64 id as stored: its two's-complement bit pattern (see the migration).
fn db(value: u64) -> i64 {
    value as i64
}

/// A stored id back as the u64 it was.
fn wire_id(value: i64) -> u64 {
    value as u64
}

/// A seq bound from a client: past i64::MAX means "everything", never a negative number.
fn seq_param(seq: Seq) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

fn ids(row: &Row, column: usize) -> Result<Vec<UserId>, Error> {
    let ids: Vec<i64> = row.try_get(column)?;
    Ok(ids.into_iter().map(wire_id).collect())
}
