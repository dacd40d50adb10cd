//! The frames' semantics, run inside one transaction per batch.
//!
//! A batch is cut into segments at the frames that change membership (create, join, leave,
//! add and remove members; see `membership`).
//! Within a segment the sends go first, all together in a fixed number of statements (see
//! `sends`), then the acks, folded into watermarks and applied in one statement (see
//! `acks`), then the other frames, each one statement, pipelined on the connection. Moving
//! acks, syncs and typing after the sends of their segment changes nothing they answer
//! except to include those sends, and keeps a busy chat's sends and acks in a few
//! statements per batch instead of a few per frame. The membership change that ends a
//! segment runs last, so every frame sees the memberships in queue order.

mod acks;
mod entries;
mod membership;
mod sends;

use std::collections::{HashMap, HashSet};

use futures_util::future::try_join_all;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Error, Row, Transaction};
use wire::client::{ListChats, PresenceQuery, SyncRequest, Typing};
use wire::limits::{MAX_CHAT_LIST_PAGE, MAX_SYNC_PAGE, sync_page_admits};
use wire::server::{ChatList, ChatSummary, ErrorFrame, Message, Receipt, SyncBatch, TypingEvent};
use wire::{
    ChatId, ChatKind, ClientFrame, ClientMsgId, ErrorCode, ReceiptKind, Seq, ServerFrame, UserId,
};

use crate::db::Statements;
use crate::outcome::{Body, Outcome, Output, Recipients};
use crate::request::{Origin, Request};

pub(crate) use acks::APPLY_ACKS;
pub(crate) use entries::EntryStatements;

/// Runs `requests` (in queue order) in `tx`, where one user may have created at most
/// `max_chats_per_user` chats that exist.
pub(crate) async fn apply(
    tx: &Transaction<'_>,
    st: &Statements,
    requests: &[&Request],
    now_us: u64,
    max_chats_per_user: usize,
) -> Result<Outcome, Error> {
    let mut run = Run {
        tx,
        st,
        now_us,
        max_chats_per_user,
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
            ClientFrame::CreateChat(_)
            | ClientFrame::Join(_)
            | ClientFrame::Leave(_)
            | ClientFrame::AddMembers(_)
            | ClientFrame::RemoveMembers(_) => {
                run.segment(std::mem::take(&mut segment)).await?;
                run.membership_change(request).await?;
            }
            ClientFrame::Edit(_)
            | ClientFrame::Delete(_)
            | ClientFrame::React(_)
            | ClientFrame::Unreact(_) => {
                run.segment(std::mem::take(&mut segment)).await?;
                run.entry(request).await?;
            }
            ClientFrame::Sync(_)
            | ClientFrame::ListChats(_)
            | ClientFrame::Typing(_)
            | ClientFrame::PresenceQuery(_) => segment.others.push(request),
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
    max_chats_per_user: usize,
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

    /// The entry to every member's sessions but the one that sent it (`origin`), and the
    /// sent receipt to the sender; records it as handled.
    fn deliver(&mut self, message: Message, members: &[UserId], republish: bool, origin: &Origin) {
        let (chat_id, seq, sender, client_msg_id) = (
            message.chat_id,
            message.seq,
            message.sender,
            message.client_msg_id,
        );
        self.handled.insert((sender, client_msg_id), (chat_id, seq));
        if !members.is_empty() {
            self.outcome.outputs.push(Output {
                body: Body::Frame(ServerFrame::Message(message)),
                to: Recipients::UsersBut {
                    users: members.to_vec(),
                    node_id: origin.node_id,
                    connection_id: origin.connection_id,
                },
                republish,
            });
        }
        self.outcome
            .outputs
            .push(sent_receipt(chat_id, seq, sender, client_msg_id, republish));
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
        ClientFrame::ListChats(list) => chat_list(tx, st, request, list).await,
        ClientFrame::Typing(typing) => typing_event(tx, st, request, typing).await,
        ClientFrame::PresenceQuery(query) => presence(tx, st, request, query).await,
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
    // A page goes one way: forward from `after_seq`, or back from `before_seq` (the gateway
    // refused frames that carry both).
    let (statement, from) = match sync.before_seq {
        Some(before) => (&st.sync_page_before, before),
        None => (&st.sync_page, sync.after_seq),
    };
    let (chat, user, from) = (
        db(sync.chat_id),
        db(request.origin.user_id),
        seq_param(from),
    );
    let membership_params: [&(dyn ToSql + Sync); 2] = [&chat, &user];
    let page_params: [&(dyn ToSql + Sync); 3] = [&chat, &from, &fetch];
    let (membership, rows) = tokio::try_join!(
        tx.query_one(&st.membership, &membership_params),
        tx.query(statement, &page_params),
    )?;
    let (exists, member): (bool, bool) = (membership.try_get(0)?, membership.try_get(1)?);
    if !member {
        let out = membership_refusal(request, sync.chat_id, exists, Some(sync.client_msg_id));
        return Ok((vec![out], true));
    }
    let mut messages = Vec::with_capacity(rows.len().min(limit as usize));
    let mut body_bytes = 0;
    for row in rows.iter().take(limit as usize) {
        let body: String = row.try_get(4)?;
        if !sync_page_admits(messages.len(), body_bytes, body.len()) {
            break;
        }
        body_bytes += body.len();
        messages.push(Message {
            chat_id: sync.chat_id,
            seq: wire_id(row.try_get(0)?),
            sender: wire_id(row.try_get(1)?),
            client_msg_id: wire_id(row.try_get(2)?),
            server_time_us: wire_id(row.try_get(3)?),
            body,
            kind: entries::kind_of(row.try_get(5)?),
            target_seq: wire_id(row.try_get(6)?),
        });
    }
    let has_more = rows.len() > messages.len();
    let frame = ServerFrame::SyncBatch(SyncBatch {
        client_msg_id: sync.client_msg_id,
        chat_id: sync.chat_id,
        messages,
        has_more,
    });
    Ok((vec![Output::new(frame, to_origin(&request.origin))], false))
}

/// The asker's chats after the cursor, most recent activity first.
async fn chat_list(
    tx: &Transaction<'_>,
    st: &Statements,
    request: &Request,
    list: &ListChats,
) -> Result<(Vec<Output>, bool), Error> {
    let limit = list.limit.clamp(1, MAX_CHAT_LIST_PAGE);
    // One row more than the page tells whether another page follows.
    let fetch = i64::from(limit) + 1;
    // Times and chat ids stay below 2^63: a cursor above is no bound.
    let activity = seq_param(list.before_activity_us.unwrap_or(u64::MAX));
    let chat = seq_param(list.before_chat_id.unwrap_or(u64::MAX));
    let params: [&(dyn ToSql + Sync); 4] = [&db(request.origin.user_id), &activity, &chat, &fetch];
    let rows = tx.query(&st.list_chats, &params).await?;
    let has_more = rows.len() > limit as usize;
    let mut chats = Vec::with_capacity(rows.len().min(limit as usize));
    for row in rows.iter().take(limit as usize) {
        let last_seq = wire_id(row.try_get(3)?);
        let read_seq = wire_id(row.try_get(7)?);
        let member_count: i64 = row.try_get(5)?;
        chats.push(ChatSummary {
            chat_id: wire_id(row.try_get(0)?),
            kind: parse_kind(row.try_get(1)?),
            title: row.try_get(2)?,
            member_count: u32::try_from(member_count).unwrap_or(u32::MAX),
            last_seq,
            last_activity_us: wire_id(row.try_get(4)?),
            delivered_seq: wire_id(row.try_get(6)?),
            read_seq,
            unread: last_seq.saturating_sub(read_seq),
        });
    }
    let frame = ServerFrame::ChatList(ChatList {
        client_msg_id: list.client_msg_id,
        chats,
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

/// The presence of the users who share a chat with the asker (and the asker's own); the
/// others are answered as never seen, like users who do not exist.
async fn presence(
    tx: &Transaction<'_>,
    st: &Statements,
    request: &Request,
    query: &PresenceQuery,
) -> Result<(Vec<Output>, bool), Error> {
    let asker = request.origin.user_id;
    let asked: Vec<i64> = query.users.iter().map(|&u| db(u)).collect();
    let rows = tx
        .query(&st.shared_chat_users, &[&db(asker), &asked])
        .await?;
    let mut visible = HashSet::with_capacity(rows.len() + 1);
    visible.insert(asker);
    for row in rows {
        visible.insert(wire_id(row.try_get(0)?));
    }
    let output = Output {
        body: Body::Presence {
            client_msg_id: query.client_msg_id,
            users: query
                .users
                .iter()
                .map(|&u| (u, visible.contains(&u)))
                .collect(),
        },
        to: to_origin(&request.origin),
        republish: false,
    };
    Ok((vec![output], false))
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
        ChatKind::PublicGroup => "public_group",
    }
}

/// The table's CHECK constraint allows only the three names.
fn parse_kind(name: &str) -> ChatKind {
    match name {
        "direct" => ChatKind::Direct,
        "public_group" => ChatKind::PublicGroup,
        _ => ChatKind::Group,
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
