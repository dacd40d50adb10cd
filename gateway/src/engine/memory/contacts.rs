//! Which users share a chat, for presence: a copy on every core of every chat's
//! membership, so that a presence query is answered on the core where it arrives, as the
//! presence states themselves are. The core that owns a chat changes its own copy and sends
//! the change to the others before it delivers anything about it, so a client that has
//! heard of a chat finds it here on its own core. No I/O.

use std::collections::{HashMap, HashSet};

use wire::{ChatId, UserId};

/// Each user's chats.
#[derive(Debug, Default)]
pub(super) struct Contacts {
    chats_of: HashMap<UserId, HashSet<ChatId>>,
}

impl Contacts {
    /// Records that `added` joined chat `chat_id` and `removed` left it.
    pub(super) fn changed(&mut self, chat_id: ChatId, added: &[UserId], removed: &[UserId]) {
        for &user in added {
            self.chats_of.entry(user).or_default().insert(chat_id);
        }
        for user in removed {
            if let Some(chats) = self.chats_of.get_mut(user) {
                chats.remove(&chat_id);
                if chats.is_empty() {
                    self.chats_of.remove(user);
                }
            }
        }
    }

    /// The chats `user` is a member of.
    pub(super) fn chats_of(&self, user: UserId) -> impl Iterator<Item = ChatId> + '_ {
        self.chats_of.get(&user).into_iter().flatten().copied()
    }

    /// Whether `a` may see `b`: the same user, or members of one chat.
    pub(super) fn may_see(&self, a: UserId, b: UserId) -> bool {
        if a == b {
            return true;
        }
        let (Some(of_a), Some(of_b)) = (self.chats_of.get(&a), self.chats_of.get(&b)) else {
            return false;
        };
        let (small, large) = if of_a.len() <= of_b.len() {
            (of_a, of_b)
        } else {
            (of_b, of_a)
        };
        small.iter().any(|chat| large.contains(chat))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_see_each_other_while_they_share_a_chat() {
        let mut contacts = Contacts::default();
        assert!(contacts.may_see(1, 1));
        assert!(!contacts.may_see(1, 2));
        contacts.changed(7, &[1, 2], &[]);
        contacts.changed(8, &[2, 3], &[]);
        assert!(contacts.may_see(1, 2) && contacts.may_see(2, 1) && contacts.may_see(3, 2));
        assert!(!contacts.may_see(1, 3));
        contacts.changed(7, &[], &[2]);
        assert!(!contacts.may_see(1, 2));
        contacts.changed(7, &[], &[1]);
        assert!(!contacts.chats_of.contains_key(&1));
    }
}
