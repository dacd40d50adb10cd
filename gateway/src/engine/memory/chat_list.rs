//! Listing a user's chats. The chats live on the cores that own them, so the core where the
//! request arrives asks each of those cores for its part (which chats of the user it holds
//! comes from the replicated [`super::contacts`]), and answers once every part is in. Each
//! part is already cut to the page, so a gather holds at most `cores * (limit + 1)`
//! summaries. No I/O.

use std::time::Instant;

use wire::client::ArchivedListChats;
use wire::server::{ChatList, ChatSummary};
use wire::{ChatId, ClientMsgId};

use crate::router::Origin;

/// Where a page starts: chats strictly older, by (last activity, chat id), than this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    activity_us: u64,
    chat_id: ChatId,
}

impl Cursor {
    /// The request's cursor; a part left out does not bound the page.
    pub(super) fn of(request: &ArchivedListChats) -> Cursor {
        Cursor {
            activity_us: request
                .before_activity_us
                .as_ref()
                .map_or(u64::MAX, |a| a.to_native()),
            chat_id: request
                .before_chat_id
                .as_ref()
                .map_or(ChatId::MAX, |c| c.to_native()),
        }
    }
}

/// The order of a chat list: most recent activity first, then the higher chat id.
fn key(chat: &ChatSummary) -> (u64, ChatId) {
    (chat.last_activity_us, chat.chat_id)
}

/// The first `limit + 1` of `chats` after `cursor`, in list order: one more than the page
/// tells whether another page follows.
pub(super) fn select(
    mut chats: Vec<ChatSummary>,
    cursor: Cursor,
    limit: usize,
) -> Vec<ChatSummary> {
    chats.retain(|chat| key(chat) < (cursor.activity_us, cursor.chat_id));
    chats.sort_unstable_by_key(|chat| std::cmp::Reverse(key(chat)));
    chats.truncate(limit + 1);
    chats
}

/// A list request waiting for the parts of the cores that own the user's chats.
#[derive(Debug)]
pub(super) struct Gather {
    pub origin: Origin,
    pub client_msg_id: ClientMsgId,
    pub cursor: Cursor,
    pub limit: usize,
    pub received_at: Instant,
    /// Parts still to come.
    pub waiting: usize,
    pub found: Vec<ChatSummary>,
}

impl Gather {
    /// Adds one core's part; true once every part is in.
    pub(super) fn add(&mut self, part: Vec<ChatSummary>) -> bool {
        self.found.extend(part);
        self.waiting = self.waiting.saturating_sub(1);
        self.waiting == 0
    }

    /// The page the gathered parts make.
    pub(super) fn page(self) -> ChatList {
        let mut chats = select(self.found, self.cursor, self.limit);
        let has_more = chats.len() > self.limit;
        chats.truncate(self.limit);
        ChatList {
            client_msg_id: self.client_msg_id,
            chats,
            has_more,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::ChatKind;

    fn chat(chat_id: ChatId, last_activity_us: u64) -> ChatSummary {
        ChatSummary {
            chat_id,
            kind: ChatKind::Group,
            title: String::new(),
            member_count: 1,
            last_seq: 0,
            last_activity_us,
            delivered_seq: 0,
            read_seq: 0,
            unread: 0,
        }
    }

    fn gather(cursor: Cursor, limit: usize, waiting: usize) -> Gather {
        Gather {
            origin: Origin {
                user_id: 1,
                connection_id: 1,
            },
            client_msg_id: 9,
            cursor,
            limit,
            received_at: Instant::now(),
            waiting,
            found: Vec::new(),
        }
    }

    const START: Cursor = Cursor {
        activity_us: u64::MAX,
        chat_id: ChatId::MAX,
    };

    #[test]
    fn parts_merge_into_pages_most_recent_first_and_the_cursor_pages_on() {
        let mut first = gather(START, 2, 2);
        assert!(!first.add(select(vec![chat(1, 10), chat(3, 30)], START, 2)));
        assert!(first.add(select(vec![chat(2, 30), chat(4, 5)], START, 2)));
        let page = first.page();
        let ids: Vec<ChatId> = page.chats.iter().map(|c| c.chat_id).collect();
        assert_eq!(ids, [3, 2], "ties go to the higher chat id");
        assert!(page.has_more);

        let cursor = Cursor {
            activity_us: 30,
            chat_id: 2,
        };
        let mut second = gather(cursor, 2, 1);
        assert!(second.add(select(
            vec![chat(1, 10), chat(3, 30), chat(2, 30), chat(4, 5)],
            cursor,
            2
        )));
        let page = second.page();
        let ids: Vec<ChatId> = page.chats.iter().map(|c| c.chat_id).collect();
        assert_eq!(ids, [1, 4]);
        assert!(!page.has_more);
    }
}
