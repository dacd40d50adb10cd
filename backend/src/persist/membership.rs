//! The frames that make chats and change who is in them: create, join, leave, add and
//! remove members. Each runs on its own, in queue order, and locks the chat it changes.
//!
//! The rules are PROTOCOL.md's ("Chats and who may do what"), checked in the same order as
//! the gateway's memory engine checks them, so that both engines refuse a request with the
//! same code: the chat exists, then the sender's membership (a join needs none), then the
//! chat's kind, then the sender's role, then the bounds.

use tokio_postgres::{Error, Row};
use wire::client::{CreateChat, MemberChange, Membership};
use wire::limits::MAX_MEMBERS_PER_CHAT;
use wire::server::{ChatCreated, ChatEvent, MembersChanged};
use wire::{ChatId, ChatKind, ClientFrame, ClientMsgId, ErrorCode, ServerFrame, UserId};

use super::{Run, db, ids, kind_name, parse_kind, refusal, wire_id};
use crate::outcome::{Output, Recipients};
use crate::request::Request;

/// A membership frame's outputs, and whether it was refused.
type Answer = Result<(Vec<Output>, bool), Error>;

/// A chat as `lock_chat_for_change` reads it, for one user.
struct Locked {
    kind: ChatKind,
    title: String,
    creator: UserId,
    /// Sorted.
    members: Vec<UserId>,
    /// The user's role, if a member.
    role: Option<String>,
    /// The client message id of the user's latest leave.
    departure: Option<ClientMsgId>,
}

impl Locked {
    fn read(row: &Row) -> Result<Locked, Error> {
        let kind: String = row.try_get(0)?;
        // In u64 order, as the protocol's member lists are (the table sorts by bigint).
        let mut members = ids(row, 3)?;
        members.sort_unstable();
        Ok(Locked {
            kind: parse_kind(&kind),
            title: row.try_get(1)?,
            creator: wire_id(row.try_get(2)?),
            members,
            role: row.try_get(4)?,
            departure: row.try_get::<_, Option<i64>>(5)?.map(wire_id),
        })
    }
}

impl Run<'_, '_> {
    pub(super) async fn membership_change(&mut self, request: &Request) -> Result<(), Error> {
        let (outputs, refused) = match &request.frame {
            ClientFrame::CreateChat(create) => self.create_chat(request, create).await?,
            ClientFrame::Join(join) => self.join(request, join).await?,
            ClientFrame::Leave(leave) => self.leave(request, leave).await?,
            ClientFrame::AddMembers(change) => self.add_members(request, change).await?,
            ClientFrame::RemoveMembers(change) => self.remove_members(request, change).await?,
            _ => (Vec::new(), false),
        };
        self.outcome.refused += u64::from(refused);
        self.outcome.outputs.extend(outputs);
        Ok(())
    }

    async fn create_chat(&self, request: &Request, create: &CreateChat) -> Answer {
        let creator = request.origin.user_id;
        let client_msg_id = create.client_msg_id;
        let refuse = |code, reason: String| refused(request, code, reason, client_msg_id);
        let mut members = create.members.clone();
        members.push(creator);
        members.sort_unstable();
        members.dedup();
        if create.kind == ChatKind::Direct && members.len() != 2 {
            return refuse(
                ErrorCode::InvalidRequest,
                "a direct chat has exactly two members: the creator and one other user".into(),
            );
        }
        if members.len() > MAX_MEMBERS_PER_CHAT {
            return refuse(
                ErrorCode::LimitExceeded,
                format!("a chat has at most {MAX_MEMBERS_PER_CHAT} members, counting the creator"),
            );
        }
        // A resend, or a redelivery, finds the chat its create made; a direct chat, the pair's.
        let pair = match (create.kind, members.as_slice()) {
            (ChatKind::Direct, &[a, b]) => Some((db(a).min(db(b)), db(a).max(db(b)))),
            _ => None,
        };
        if let Some(chat_id) = self.existing_chat(creator, client_msg_id, pair).await? {
            return self.announce(chat_id, client_msg_id).await;
        }
        let created: i64 = self
            .tx
            .query_one(&self.st.count_created_chats, &[&db(creator)])
            .await?
            .try_get(0)?;
        if usize::try_from(created).unwrap_or(usize::MAX) >= self.max_chats_per_user {
            return refuse(
                ErrorCode::LimitExceeded,
                format!(
                    "user {creator} has created {} chats that exist, the most one user may have",
                    self.max_chats_per_user
                ),
            );
        }
        let inserted = self
            .tx
            .query_opt(
                &self.st.create_chat,
                &[
                    &kind_name(create.kind),
                    &create.title,
                    &db(creator),
                    &db(client_msg_id),
                    &pair.map(|p| p.0),
                    &pair.map(|p| p.1),
                ],
            )
            .await?;
        let Some(row) = inserted else {
            // The pair's chat was made meanwhile, by the other user's create on another shard.
            return match self.existing_chat(creator, client_msg_id, pair).await? {
                Some(chat_id) => self.announce(chat_id, client_msg_id).await,
                None => refuse(
                    ErrorCode::Internal,
                    "the chat could not be created; retry".into(),
                ),
            };
        };
        let chat_id: i64 = row.try_get(0)?;
        let member_ids: Vec<i64> = members.iter().map(|&u| db(u)).collect();
        self.tx
            .execute(
                &self.st.add_members,
                &[&chat_id, &member_ids, &Some(db(creator))],
            )
            .await?;
        let frame = ServerFrame::ChatCreated(ChatCreated {
            client_msg_id,
            chat_id: wire_id(chat_id),
            kind: create.kind,
            title: create.title.clone(),
            creator,
            members: members.clone(),
        });
        Ok((vec![Output::new(frame, Recipients::Users(members))], false))
    }

    /// The chat a create names already: the one it made, or the pair's direct chat.
    async fn existing_chat(
        &self,
        creator: UserId,
        client_msg_id: ClientMsgId,
        pair: Option<(i64, i64)>,
    ) -> Result<Option<i64>, Error> {
        let made = self
            .tx
            .query_opt(
                &self.st.find_created_chat,
                &[&db(creator), &db(client_msg_id)],
            )
            .await?;
        if let Some(row) = made {
            return row.try_get(0).map(Some);
        }
        let Some((low, high)) = pair else {
            return Ok(None);
        };
        match self
            .tx
            .query_opt(&self.st.find_direct_chat, &[&low, &high])
            .await?
        {
            Some(row) => row.try_get(0).map(Some),
            None => Ok(None),
        }
    }

    /// `chat_created` with the chat as it is now, to its members.
    async fn announce(&self, chat_id: i64, client_msg_id: ClientMsgId) -> Answer {
        let row = self
            .tx
            .query_one(&self.st.chat_snapshot, &[&chat_id])
            .await?;
        let kind: String = row.try_get(0)?;
        let members = ids(&row, 3)?;
        let frame = ServerFrame::ChatCreated(ChatCreated {
            client_msg_id,
            chat_id: wire_id(chat_id),
            kind: parse_kind(&kind),
            title: row.try_get(1)?,
            creator: wire_id(row.try_get(2)?),
            members: members.clone(),
        });
        Ok((vec![Output::new(frame, Recipients::Users(members))], false))
    }

    /// Locks the chat and reads it for `user`; `None` if it does not exist.
    async fn lock(&self, chat_id: ChatId, user: UserId) -> Result<Option<Locked>, Error> {
        match self
            .tx
            .query_opt(&self.st.lock_chat_for_change, &[&db(chat_id), &db(user)])
            .await?
        {
            Some(row) => Locked::read(&row).map(Some),
            None => Ok(None),
        }
    }

    async fn join(&self, request: &Request, join: &Membership) -> Answer {
        let user = request.origin.user_id;
        let refuse = |code, reason: String| refused(request, code, reason, join.client_msg_id);
        let Some(chat) = self.lock(join.chat_id, user).await? else {
            return refuse(ErrorCode::UnknownChat, unknown(join.chat_id));
        };
        if chat.kind == ChatKind::Direct {
            return refuse(ErrorCode::InvalidRequest, direct("joined"));
        }
        let mut members = chat.members;
        if chat.role.is_none() {
            if chat.kind != ChatKind::PublicGroup {
                return refuse(
                    ErrorCode::NotMember,
                    format!(
                        "chat {} is invite-only: a member must add user {user}",
                        join.chat_id
                    ),
                );
            }
            if members.len() >= MAX_MEMBERS_PER_CHAT {
                return refuse(ErrorCode::LimitExceeded, full(join.chat_id));
            }
            self.tx
                .execute(
                    &self.st.add_members,
                    &[&db(join.chat_id), &vec![db(user)], &None::<i64>],
                )
                .await?;
            members.push(user);
            members.sort_unstable();
        }
        let frame = ServerFrame::Joined(ChatEvent {
            client_msg_id: join.client_msg_id,
            chat_id: join.chat_id,
            user_id: user,
        });
        Ok((vec![Output::new(frame, Recipients::Users(members))], false))
    }

    async fn leave(&self, request: &Request, leave: &Membership) -> Answer {
        let user = request.origin.user_id;
        let refuse = |code, reason: String| refused(request, code, reason, leave.client_msg_id);
        let Some(chat) = self.lock(leave.chat_id, user).await? else {
            return refuse(ErrorCode::UnknownChat, unknown(leave.chat_id));
        };
        let frame = ServerFrame::Left(ChatEvent {
            client_msg_id: leave.client_msg_id,
            chat_id: leave.chat_id,
            user_id: user,
        });
        if chat.role.is_none() {
            if chat.departure != Some(leave.client_msg_id) {
                return refuse(ErrorCode::NotMember, not_member(leave.chat_id, user));
            }
            // A resend of this leave. A redelivered one may never have reached the members:
            // they hear it again (the leave itself committed before).
            let mut recipients = vec![user];
            if request.redelivered {
                recipients.extend(chat.members);
            }
            return Ok((
                vec![Output::new(frame, Recipients::Users(recipients))],
                false,
            ));
        }
        if chat.kind == ChatKind::Direct {
            return refuse(ErrorCode::InvalidRequest, direct("left"));
        }
        let chat_id = db(leave.chat_id);
        self.tx
            .execute(&self.st.remove_members, &[&chat_id, &vec![db(user)]])
            .await?;
        self.tx
            .execute(
                &self.st.record_departure,
                &[&chat_id, &db(user), &db(leave.client_msg_id)],
            )
            .await?;
        self.tx
            .execute(&self.st.free_chat_if_empty, &[&chat_id])
            .await?;
        // The leaver hears its own leave, with the members it leaves.
        Ok((
            vec![Output::new(frame, Recipients::Users(chat.members))],
            false,
        ))
    }

    async fn add_members(&self, request: &Request, change: &MemberChange) -> Answer {
        let by = request.origin.user_id;
        let refuse = |code, reason: String| refused(request, code, reason, change.client_msg_id);
        let Some(chat) = self.lock(change.chat_id, by).await? else {
            return refuse(ErrorCode::UnknownChat, unknown(change.chat_id));
        };
        if chat.role.is_none() {
            return refuse(ErrorCode::NotMember, not_member(change.chat_id, by));
        }
        if chat.kind == ChatKind::Direct {
            return refuse(ErrorCode::InvalidRequest, direct("added to"));
        }
        let named = sorted(&change.users);
        let new: Vec<UserId> = named
            .iter()
            .copied()
            .filter(|u| chat.members.binary_search(u).is_err())
            .collect();
        if chat.members.len() + new.len() > MAX_MEMBERS_PER_CHAT {
            return refuse(ErrorCode::LimitExceeded, full(change.chat_id));
        }
        let frame = ServerFrame::MembersAdded(MembersChanged {
            client_msg_id: change.client_msg_id,
            chat_id: change.chat_id,
            by,
            users: named,
        });
        let mut outputs = vec![Output::new(frame, Recipients::Users(chat.members.clone()))];
        if !new.is_empty() {
            let new_ids: Vec<i64> = new.iter().map(|&u| db(u)).collect();
            self.tx
                .execute(
                    &self.st.add_members,
                    &[&db(change.chat_id), &new_ids, &None::<i64>],
                )
                .await?;
            let mut members = chat.members;
            members.extend_from_slice(&new);
            members.sort_unstable();
            // The users who became members learn what the chat is, as at its creation.
            let snapshot = ServerFrame::ChatCreated(ChatCreated {
                client_msg_id: change.client_msg_id,
                chat_id: change.chat_id,
                kind: chat.kind,
                title: chat.title,
                creator: chat.creator,
                members,
            });
            outputs.push(Output::new(snapshot, Recipients::Users(new)));
        }
        Ok((outputs, false))
    }

    async fn remove_members(&self, request: &Request, change: &MemberChange) -> Answer {
        let by = request.origin.user_id;
        let refuse = |code, reason: String| refused(request, code, reason, change.client_msg_id);
        let Some(chat) = self.lock(change.chat_id, by).await? else {
            return refuse(ErrorCode::UnknownChat, unknown(change.chat_id));
        };
        let Some(role) = chat.role else {
            return refuse(ErrorCode::NotMember, not_member(change.chat_id, by));
        };
        if chat.kind == ChatKind::Direct {
            return refuse(ErrorCode::InvalidRequest, direct("removed from"));
        }
        if role != "admin" {
            return refuse(
                ErrorCode::Forbidden,
                format!(
                    "user {by} is not an admin of chat {}: only admins remove members",
                    change.chat_id
                ),
            );
        }
        let named = sorted(&change.users);
        let chat_id = db(change.chat_id);
        let named_ids: Vec<i64> = named.iter().map(|&u| db(u)).collect();
        self.tx
            .execute(&self.st.remove_members, &[&chat_id, &named_ids])
            .await?;
        self.tx
            .execute(&self.st.free_chat_if_empty, &[&chat_id])
            .await?;
        // Everyone who was a member hears it, the removed included.
        let frame = ServerFrame::MembersRemoved(MembersChanged {
            client_msg_id: change.client_msg_id,
            chat_id: change.chat_id,
            by,
            users: named,
        });
        Ok((
            vec![Output::new(frame, Recipients::Users(chat.members))],
            false,
        ))
    }
}

fn refused(
    request: &Request,
    code: ErrorCode,
    reason: String,
    client_msg_id: ClientMsgId,
) -> Answer {
    Ok((
        vec![refusal(&request.origin, code, reason, Some(client_msg_id))],
        true,
    ))
}

fn unknown(chat_id: ChatId) -> String {
    format!("chat {chat_id} does not exist")
}

fn not_member(chat_id: ChatId, user: UserId) -> String {
    format!("user {user} is not a member of chat {chat_id}")
}

fn direct(action: &str) -> String {
    format!("the members of a direct chat cannot change: it cannot be {action}")
}

fn full(chat_id: ChatId) -> String {
    format!("chat {chat_id} would have more than {MAX_MEMBERS_PER_CHAT} members")
}

/// A request's user list as every answer names it: sorted, without repeats.
fn sorted(users: &[UserId]) -> Vec<UserId> {
    let mut users = users.to_vec();
    users.sort_unstable();
    users.dedup();
    users
}
