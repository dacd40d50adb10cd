-- Edits, deletes and reactions are chat entries (wire/PROTOCOL.md, "Chat entries"): rows of
-- `messages` like a message, with the chat's next seq and the same (sender, client_msg_id)
-- uniqueness. `kind` is the wire's EntryKind number (0 message, 1 edit, 2 delete, 3 react,
-- 4 unreact); `target_seq` is the message an event is about, 0 for a message. A constant
-- default adds the columns without rewriting the table.
ALTER TABLE messages
    ADD COLUMN kind smallint NOT NULL DEFAULT 0 CHECK (kind BETWEEN 0 AND 4),
    ADD COLUMN target_seq bigint NOT NULL DEFAULT 0;

-- Whether a message was deleted: the delete entries of a chat, by target.
CREATE INDEX messages_deletes ON messages (chat_id, target_seq) WHERE kind = 2;

-- The reactions each user holds now on each message (reacts minus unreacts), which bound
-- them (MAX_REACTIONS_PER_USER per user and message) and refuse a second identical one.
CREATE TABLE message_reactions (
    chat_id bigint NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    seq bigint NOT NULL,
    user_id bigint NOT NULL,
    emoji text NOT NULL,
    PRIMARY KEY (chat_id, seq, user_id, emoji)
);
