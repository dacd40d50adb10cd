-- The initial schema. Ids and seqs are u64 on the wire and bigint here: the backend stores a
-- u64 by its two's-complement bit pattern, so every value round-trips exactly; only equality
-- is used on user ids and client message ids, and chat ids and seqs stay far below 2^63.

-- `last_seq` is the seq of the chat's newest message. A send takes the next one with
-- `UPDATE chats SET last_seq = last_seq + n ... RETURNING last_seq`, which row-locks the chat
-- until commit: seqs stay gap-free and in commit order even if two workers write one chat
-- (as they can for a moment while a consumer fails over).
CREATE TABLE chats (
    id bigserial PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('direct', 'group')),
    title text NOT NULL,
    creator bigint NOT NULL,
    creator_client_msg_id bigint NOT NULL,
    last_seq bigint NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    -- A redelivered or resent create finds its chat instead of making a second one.
    UNIQUE (creator, creator_client_msg_id)
);

-- Per member: the delivered and read watermarks (everything up to the seq), which only grow.
-- The primary key serves the membership check of every frame and the member list of a chat.
CREATE TABLE chat_members (
    chat_id bigint NOT NULL REFERENCES chats (id),
    user_id bigint NOT NULL,
    delivered_seq bigint NOT NULL DEFAULT 0,
    read_seq bigint NOT NULL DEFAULT 0,
    joined_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chat_id, user_id)
);

-- `published` is false from the insert until the worker has the broker's confirms for every
-- delivery of the message: a redelivered send that finds it still false republishes the
-- message in full (the worker died in between); one that finds it true only repeats the
-- sent receipt.
CREATE TABLE messages (
    chat_id bigint NOT NULL REFERENCES chats (id),
    seq bigint NOT NULL,
    sender bigint NOT NULL,
    client_msg_id bigint NOT NULL,
    body text NOT NULL,
    server_time_us bigint NOT NULL,
    published boolean NOT NULL DEFAULT false,
    -- Also the index of the sync query (chat_id = $1 AND seq > $2 ORDER BY seq LIMIT n) and of
    -- the receipts query (the distinct senders of chat_id = $1 AND seq in (old, new]): both
    -- are range scans of one chat in seq order.
    PRIMARY KEY (chat_id, seq),
    -- What makes a resend or a redelivery idempotent.
    UNIQUE (sender, client_msg_id)
);
