//! Chat creation for the whole node, decided on one core ([`DIRECTORY_CORE`]): a resent
//! create finds the chat it made, a pair of users has one direct chat, a user has created
//! at most so many chats that still exist, and chat ids are handed out. These decisions need
//! one place that sees every create, whichever core its session is on; creates are rare
//! next to sends, which stay on the core that owns their chat. No I/O.

use std::collections::HashMap;

use wire::limits::MAX_MEMBERS_PER_CHAT;
use wire::{ChatId, ChatKind, ClientMsgId, ErrorCode, UserId};

use super::chat::Refusal;

/// The core that keeps the directory.
pub(super) const DIRECTORY_CORE: usize = 0;

/// What a create does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decision {
    /// Make a new chat with this id.
    Create(ChatId),
    /// The chat exists already (a resend, or the pair's direct chat): announce it again.
    Existing(ChatId),
}

/// The node's record of the chats that exist, by what made them.
#[derive(Debug)]
pub(super) struct Directory {
    last_chat_id: ChatId,
    /// (creator, client message id of the create) of every chat that exists.
    by_request: HashMap<(UserId, ClientMsgId), ChatId>,
    /// The direct chat of each pair of users, the smaller id first. Direct chats never lose
    /// members, so they are never freed.
    direct: HashMap<(UserId, UserId), ChatId>,
    /// How many chats that exist each user created.
    created: HashMap<UserId, usize>,
    max_chats_per_user: usize,
}

impl Directory {
    pub(super) fn new(max_chats_per_user: usize) -> Directory {
        Directory {
            last_chat_id: 0,
            by_request: HashMap::new(),
            direct: HashMap::new(),
            created: HashMap::new(),
            max_chats_per_user,
        }
    }

    /// Decides a create of a chat of `kind` whose `members` (sorted, without repeats)
    /// include the creator.
    pub(super) fn decide(
        &mut self,
        creator: UserId,
        client_msg_id: ClientMsgId,
        kind: ChatKind,
        members: &[UserId],
    ) -> Result<Decision, Refusal> {
        if kind == ChatKind::Direct && members.len() != 2 {
            return Err(Refusal::new(
                ErrorCode::InvalidRequest,
                "a direct chat has exactly two members: the creator and one other user",
            ));
        }
        if members.len() > MAX_MEMBERS_PER_CHAT {
            return Err(Refusal::new(
                ErrorCode::LimitExceeded,
                format!("a chat has at most {MAX_MEMBERS_PER_CHAT} members, counting the creator"),
            ));
        }
        if let Some(&chat_id) = self.by_request.get(&(creator, client_msg_id)) {
            return Ok(Decision::Existing(chat_id));
        }
        let pair = match (kind, members) {
            (ChatKind::Direct, &[low, high]) => Some((low, high)),
            _ => None,
        };
        if let Some(&chat_id) = pair.and_then(|pair| self.direct.get(&pair)) {
            return Ok(Decision::Existing(chat_id));
        }
        let created = self.created.entry(creator).or_default();
        if *created >= self.max_chats_per_user {
            return Err(Refusal::new(
                ErrorCode::LimitExceeded,
                format!(
                    "user {creator} has created {} chats that exist, the most one user may have",
                    self.max_chats_per_user
                ),
            ));
        }
        *created += 1;
        self.last_chat_id += 1;
        let chat_id = self.last_chat_id;
        self.by_request.insert((creator, client_msg_id), chat_id);
        if let Some(pair) = pair {
            self.direct.insert(pair, chat_id);
        }
        Ok(Decision::Create(chat_id))
    }

    /// A chat lost its last member: its creator may create another, and a resend of its
    /// create makes a new chat.
    pub(super) fn freed(&mut self, creator: UserId, client_msg_id: ClientMsgId) {
        self.by_request.remove(&(creator, client_msg_id));
        if let Some(created) = self.created.get_mut(&creator) {
            *created = created.saturating_sub(1);
            if *created == 0 {
                self.created.remove(&creator);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resend_and_the_pair_find_their_chat() {
        let mut directory = Directory::new(10);
        let group = directory.decide(1, 5, ChatKind::Group, &[1, 2, 3]);
        assert_eq!(group, Ok(Decision::Create(1)));
        assert_eq!(
            directory.decide(1, 5, ChatKind::Group, &[1, 2, 3]),
            Ok(Decision::Existing(1))
        );
        let direct = directory.decide(1, 6, ChatKind::Direct, &[1, 2]);
        assert_eq!(direct, Ok(Decision::Create(2)));
        // The other user, with an id of its own, finds the same chat.
        assert_eq!(
            directory.decide(2, 6, ChatKind::Direct, &[1, 2]),
            Ok(Decision::Existing(2))
        );
        assert_eq!(
            directory
                .decide(1, 7, ChatKind::Direct, &[1, 2, 3])
                .map_err(|r| r.code),
            Err(ErrorCode::InvalidRequest)
        );
    }

    #[test]
    fn chats_per_user_are_bounded_and_freed_chats_give_their_place_back() {
        let mut directory = Directory::new(2);
        assert!(directory.decide(1, 1, ChatKind::Group, &[1]).is_ok());
        assert!(directory.decide(1, 2, ChatKind::Group, &[1]).is_ok());
        let refused = directory.decide(1, 3, ChatKind::Group, &[1]);
        assert_eq!(refused.map_err(|r| r.code), Err(ErrorCode::LimitExceeded));
        // A resend of one that exists is still answered.
        assert_eq!(
            directory.decide(1, 2, ChatKind::Group, &[1]),
            Ok(Decision::Existing(2))
        );
        directory.freed(1, 1);
        assert_eq!(
            directory.decide(1, 3, ChatKind::Group, &[1]),
            Ok(Decision::Create(3))
        );
        // Another user has a bound of its own.
        assert!(directory.decide(2, 1, ChatKind::Group, &[2]).is_ok());
    }
}
