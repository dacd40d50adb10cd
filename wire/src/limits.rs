//! Every limit of the protocol, in one place. Both encodings enforce the same numbers, the
//! gateway enforces them before anything acts on a frame, and PROTOCOL.md quotes them.

/// Largest WebSocket message (binary or text) the gateway accepts from a client, in bytes.
/// A larger message closes the connection with [`crate::CloseCode::MESSAGE_TOO_BIG`].
pub const MAX_FRAME_BYTES: usize = 16 * 1024;

/// Largest message body, in UTF-8 bytes.
pub const MAX_BODY_BYTES: usize = 4096;

/// Longest reaction (`emoji` of `react` and `unreact`), in UTF-8 bytes: room for one emoji
/// sequence (a family with skin tones is 25 bytes) or a short name such as `:thumbsup:`.
pub const MAX_EMOJI_BYTES: usize = 32;

/// Most different reactions one user keeps on one message; one more `react` gets
/// `limit_exceeded`. It bounds what a member can make the server hold per message.
pub const MAX_REACTIONS_PER_USER: usize = 8;

/// Largest chat title, in UTF-8 bytes.
pub const MAX_TITLE_BYTES: usize = 256;

/// Most members a chat can have, and most user ids in one create-chat frame.
pub const MAX_MEMBERS_PER_CHAT: usize = 1000;

/// Most messages in one sync page; a sync frame asks for `1..=MAX_SYNC_PAGE`.
pub const MAX_SYNC_PAGE: u32 = 200;

/// Most body bytes in one sync page: a page stops early, with `has_more`, before the
/// message that would pass this (a page always carries at least one message). It keeps a
/// page of maximal bodies near 256 KiB rather than 1 MiB, which is what a client that asks
/// for pages faster than it reads can make the server queue per request.
pub const MAX_SYNC_PAGE_BYTES: usize = 256 * 1024;

/// Whether a sync page that holds `messages` messages whose bodies add up to `body_bytes`
/// takes one more message with a body of `next_body` bytes under [`MAX_SYNC_PAGE_BYTES`].
/// The page's `limit` is the caller's to apply.
pub fn sync_page_admits(messages: usize, body_bytes: usize, next_body: usize) -> bool {
    messages == 0 || body_bytes + next_body <= MAX_SYNC_PAGE_BYTES
}
/// Most chats in one `chat_list` page; a `list_chats` asks for `1..=MAX_CHAT_LIST_PAGE`. With
/// titles of at most [`MAX_TITLE_BYTES`] a full page stays under 40 KiB.
pub const MAX_CHAT_LIST_PAGE: u32 = 100;

/// Most users in one presence query.
pub const MAX_PRESENCE_QUERY: usize = 200;

/// Longest reason text in an error frame, in UTF-8 bytes.
pub const MAX_REASON_BYTES: usize = 256;

/// How many chats one user may have created that still exist, unless the operator sets
/// another bound (the memory engine's and the backend's `--max-chats-per-user`). A chat is
/// gone once its last member leaves, which frees its place.
pub const DEFAULT_MAX_CHATS_PER_USER: usize = 500;

/// Largest server frame the backend may produce (a full sync page of maximal bodies fits).
pub const MAX_SERVER_FRAME_BYTES: usize = 1024 * 1024;

/// A limit that a frame broke: which field, how large it was, and the bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{field} is {actual}, the limit is {limit}")]
pub struct LimitExceeded {
    /// The field, as named in PROTOCOL.md.
    pub field: &'static str,
    /// What the frame carried.
    pub actual: usize,
    /// The bound it broke.
    pub limit: usize,
}

/// Checks that `actual` is at most `limit`.
pub(crate) fn at_most(
    field: &'static str,
    actual: usize,
    limit: usize,
) -> Result<(), LimitExceeded> {
    if actual <= limit {
        Ok(())
    } else {
        Err(LimitExceeded {
            field,
            actual,
            limit,
        })
    }
}

/// Checks that a text field holds no U+0000.
pub(crate) fn no_nul(field: &'static str, text: &[u8]) -> Result<(), crate::WireError> {
    match text.iter().position(|&b| b == 0) {
        None => Ok(()),
        Some(offset) => Err(crate::WireError::NulInText { field, offset }),
    }
}

/// Checks a text field that must not be empty: an empty one is as wrong as a long one.
pub(crate) fn not_empty(field: &'static str, len: usize, max: usize) -> Result<(), LimitExceeded> {
    if len == 0 {
        Err(LimitExceeded {
            field,
            actual: 0,
            limit: max,
        })
    } else {
        Ok(())
    }
}

/// Checks a sync page size: zero is as wrong as too many.
pub(crate) fn sync_page(limit: u32) -> Result<(), LimitExceeded> {
    page_size(limit, MAX_SYNC_PAGE)
}

/// Checks a chat list page size: zero is as wrong as too many.
pub(crate) fn chat_list_page(limit: u32) -> Result<(), LimitExceeded> {
    page_size(limit, MAX_CHAT_LIST_PAGE)
}

fn page_size(limit: u32, max: u32) -> Result<(), LimitExceeded> {
    if (1..=max).contains(&limit) {
        Ok(())
    } else {
        Err(LimitExceeded {
            field: "limit",
            actual: limit as usize,
            limit: max as usize,
        })
    }
}

/// Checks that a sync page goes one way: `after_seq` (non-zero) and `before_seq` together
/// would ask for two pages at once.
pub(crate) fn one_direction(after_seq: u64, backward: bool) -> Result<(), crate::WireError> {
    if backward && after_seq != 0 {
        Err(crate::WireError::BothDirections { after_seq })
    } else {
        Ok(())
    }
}
