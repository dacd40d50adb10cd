//! The rules of chat entries about an earlier message (edit, delete, react, unreact), as
//! one function both engines call: the gateway's memory engine with what it keeps in
//! memory, the backend with what it reads from the database. No I/O.

use crate::limits::MAX_REACTIONS_PER_USER;
use crate::{ChatId, EntryKind, ErrorCode, Seq, UserId};

/// The message an event names, as the engine found it.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// Who wrote it.
    pub sender: UserId,
    /// Whether the entry at that seq is a message (not itself an event).
    pub is_message: bool,
    /// Whether a delete of it was stored.
    pub deleted: bool,
    /// The reactions the acting user holds on it.
    pub reactions_of_user: &'a [&'a str],
}

/// Why an event is refused: the error frame's code and reason.
pub type Refusal = (ErrorCode, String);

/// Decides whether `user` may add an entry of `kind` about the message at `target_seq` of
/// `chat_id` (`target` is `None` when there is no entry at that seq, or none the engine
/// keeps). `body` is a reaction's emoji. A plain message is always allowed here.
pub fn check_event(
    kind: EntryKind,
    user: UserId,
    chat_id: ChatId,
    target_seq: Seq,
    body: &str,
    target: Option<Target<'_>>,
) -> Result<(), Refusal> {
    if kind == EntryKind::Message {
        return Ok(());
    }
    let invalid = |reason: String| Err((ErrorCode::InvalidRequest, reason));
    let target = match target {
        Some(target) if target.is_message => target,
        _ => return invalid(format!("chat {chat_id} has no message at seq {target_seq}")),
    };
    if target.deleted {
        return invalid(format!("message {target_seq} of chat {chat_id} is deleted"));
    }
    let held = target.reactions_of_user.contains(&body);
    match kind {
        EntryKind::Edit | EntryKind::Delete if target.sender != user => Err((
            ErrorCode::Forbidden,
            format!(
                "message {target_seq} of chat {chat_id} is not user {user}'s: only its sender changes it"
            ),
        )),
        EntryKind::React if held => invalid(format!("user {user} already reacted with {body}")),
        EntryKind::React if target.reactions_of_user.len() >= MAX_REACTIONS_PER_USER => Err((
            ErrorCode::LimitExceeded,
            format!(
                "user {user} holds {MAX_REACTIONS_PER_USER} reactions on message {target_seq}, the most one user may"
            ),
        )),
        EntryKind::Unreact if !held => invalid(format!("user {user} holds no reaction {body}")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target<'a>(sender: UserId, reactions: &'a [&'a str]) -> Option<Target<'a>> {
        Some(Target {
            sender,
            is_message: true,
            deleted: false,
            reactions_of_user: reactions,
        })
    }

    fn code(result: Result<(), Refusal>) -> Option<ErrorCode> {
        result.err().map(|(code, _)| code)
    }

    #[test]
    fn only_the_sender_edits_or_deletes_and_only_a_live_message() {
        for kind in [EntryKind::Edit, EntryKind::Delete] {
            assert_eq!(code(check_event(kind, 1, 7, 3, "", target(1, &[]))), None);
            let theirs = check_event(kind, 2, 7, 3, "", target(1, &[]));
            assert_eq!(code(theirs), Some(ErrorCode::Forbidden));
            let missing = check_event(kind, 1, 7, 3, "", None);
            assert_eq!(code(missing), Some(ErrorCode::InvalidRequest));
            let deleted = Target {
                deleted: true,
                ..target(1, &[]).unwrap()
            };
            let gone = check_event(kind, 1, 7, 3, "", Some(deleted));
            assert_eq!(code(gone), Some(ErrorCode::InvalidRequest));
            let event = Target {
                is_message: false,
                ..target(1, &[]).unwrap()
            };
            let not_a_message = check_event(kind, 1, 7, 3, "", Some(event));
            assert_eq!(code(not_a_message), Some(ErrorCode::InvalidRequest));
        }
    }

    #[test]
    fn anyone_reacts_once_per_emoji_up_to_the_bound() {
        let react = |held: &[&str], emoji| {
            code(check_event(
                EntryKind::React,
                2,
                7,
                3,
                emoji,
                target(1, held),
            ))
        };
        assert_eq!(react(&[], "👍"), None);
        assert_eq!(react(&["👍"], "👍"), Some(ErrorCode::InvalidRequest));
        let full = ["a", "b", "c", "d", "e", "f", "g", "h"];
        assert_eq!(full.len(), MAX_REACTIONS_PER_USER);
        assert_eq!(react(&full, "👍"), Some(ErrorCode::LimitExceeded));
        assert_eq!(react(&full[1..], "👍"), None);
        let unreact = |held: &[&str]| {
            code(check_event(
                EntryKind::Unreact,
                2,
                7,
                3,
                "👍",
                target(1, held),
            ))
        };
        assert_eq!(unreact(&["👍"]), None);
        assert_eq!(unreact(&["a"]), Some(ErrorCode::InvalidRequest));
    }
}
