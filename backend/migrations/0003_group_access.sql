-- The access model of groups (wire/PROTOCOL.md, "Chats and who may do what"), one direct
-- chat per pair of users, and chats that go with their last member.

-- Roles: a chat's creator is its admin, everyone else a member. Only admins remove members.
ALTER TABLE chat_members
    ADD COLUMN role text NOT NULL DEFAULT 'member' CHECK (role IN ('admin', 'member'));
UPDATE chat_members cm SET role = 'admin'
    FROM chats c WHERE c.id = cm.chat_id AND cm.user_id = c.creator;

-- A `group` is invite-only (members add members); anyone may also join a `public_group`.
ALTER TABLE chats DROP CONSTRAINT chats_kind_check,
    ADD CONSTRAINT chats_kind_check CHECK (kind IN ('direct', 'group', 'public_group'));

-- One direct chat per pair of users: the two members, the smaller id (as bigint) first. Of
-- several direct chats one pair made before this migration (each create made another), the
-- oldest becomes the pair's chat; the others keep working without a pair.
ALTER TABLE chats
    ADD COLUMN direct_low bigint,
    ADD COLUMN direct_high bigint,
    ADD CONSTRAINT chats_direct_pair CHECK (
        (direct_low IS NULL AND direct_high IS NULL)
        OR (kind = 'direct' AND direct_low < direct_high)),
    ADD CONSTRAINT chats_direct_pair_unique UNIQUE (direct_low, direct_high);
WITH pairs AS (
    SELECT c.id, min(cm.user_id) AS low, max(cm.user_id) AS high,
           row_number() OVER (PARTITION BY min(cm.user_id), max(cm.user_id) ORDER BY c.id) AS nth
    FROM chats c JOIN chat_members cm ON cm.chat_id = c.id
    WHERE c.kind = 'direct'
    GROUP BY c.id
    HAVING count(*) = 2
)
UPDATE chats c SET direct_low = p.low, direct_high = p.high
    FROM pairs p WHERE p.id = c.id AND p.nth = 1;

-- A chat without members is gone, with its members' rows and its messages: nobody can reach
-- it again. Groups emptied before this migration go now (they are invite-only groups now).
ALTER TABLE chat_members DROP CONSTRAINT chat_members_chat_id_fkey,
    ADD CONSTRAINT chat_members_chat_id_fkey
        FOREIGN KEY (chat_id) REFERENCES chats (id) ON DELETE CASCADE;
ALTER TABLE messages DROP CONSTRAINT messages_chat_id_fkey,
    ADD CONSTRAINT messages_chat_id_fkey
        FOREIGN KEY (chat_id) REFERENCES chats (id) ON DELETE CASCADE;
DELETE FROM chats c WHERE NOT EXISTS (SELECT 1 FROM chat_members WHERE chat_id = c.id);

-- The latest leave of each user who left a chat: a resent leave is answered with `left`
-- instead of `not_member`, and a redelivered one tells the members again.
CREATE TABLE chat_departures (
    chat_id bigint NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    user_id bigint NOT NULL,
    client_msg_id bigint NOT NULL,
    PRIMARY KEY (chat_id, user_id)
);

-- A user's chats: whom a presence query may see (the users who share a chat with the asker).
CREATE INDEX chat_members_by_user ON chat_members (user_id, chat_id);
