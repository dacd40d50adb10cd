// The page's store without a browser: unread counts, ticks, and what a reload keeps.

import assert from "node:assert/strict";
import { test } from "node:test";
import type { MessageBody } from "edge-client";
import { ChatStore } from "../src/page/store.js";

const message = (seq: bigint, sender: bigint): MessageBody => ({
  chat_id: 7n,
  seq,
  sender,
  client_msg_id: seq,
  server_time_us: seq,
  body: `message ${seq}`,
  kind: "message",
  target_seq: 0n,
});

test("unread is the server's count: entries above the read mark, which list_chats and other devices move", () => {
  const store = new ChatStore(1n, undefined);
  store.summary({ chat_id: 7n, kind: "group", title: "Team", member_count: 3, last_seq: 4n, last_activity_us: 9n, delivered_seq: 4n, read_seq: 1n, unread: 3n });
  const chat = store.chat(7n);
  assert.equal(store.unread(chat), 3);
  store.message(message(5n, 2n));
  assert.equal(store.unread(chat), 4);
  store.readElsewhere(7n, 4n);
  assert.equal(store.unread(chat), 1, "read up to 4 on another device");
  assert.equal(store.markRead(chat), 5n);
  assert.equal(store.unread(chat), 0);
  assert.equal(store.markRead(chat), undefined, "nothing new to acknowledge");
});

test("a message shows its edits, its delete and its reactions, whichever came first", () => {
  const store = new ChatStore(1n, undefined);
  const event = (seq: bigint, kind: MessageBody["kind"], body: string, sender: bigint): MessageBody => ({
    ...message(seq, sender),
    kind,
    body,
    target_seq: 1n,
  });
  store.historyPage(7n, [event(3n, "react", "👍", 2n), event(2n, "edit", "lunch at one", 1n)], true);
  const chat = store.chat(7n);
  assert.deepEqual(store.messages(chat), [], "the message itself is older than the page");
  store.historyPage(7n, [message(1n, 1n)], false);
  const [shown] = store.messages(chat);
  assert.deepEqual([shown!.body, shown!.edited, [...shown!.reactions]], ["lunch at one", true, [["👍", [2n]]]]);
  assert.deepEqual([chat.history.oldest, chat.history.more, chat.lastSeq], [1n, false, 3n]);
});

test("ticks turn to delivered and read once every other member has come that far", () => {
  const store = new ChatStore(1n, undefined);
  store.created({ type: "chat_created", client_msg_id: 1n, chat_id: 7n, kind: "group", title: "", creator: 1n, members: [1n, 2n, 3n] });
  const chat = store.chat(7n);
  const mine = message(1n, 1n);
  store.message(mine);
  assert.equal(store.ticks(chat, mine), "sent");
  store.receipt({ type: "receipt", chat_id: 7n, kind: "delivered", seq: 1n, user_id: 2n, client_msg_id: null });
  assert.equal(store.ticks(chat, mine), "sent", "user 3 has not received it");
  store.receipt({ type: "receipt", chat_id: 7n, kind: "delivered", seq: 4n, user_id: 3n, client_msg_id: null });
  assert.equal(store.ticks(chat, mine), "delivered");
  store.receipt({ type: "receipt", chat_id: 7n, kind: "read", seq: 1n, user_id: 2n, client_msg_id: null });
  store.receipt({ type: "receipt", chat_id: 7n, kind: "read", seq: 1n, user_id: 3n, client_msg_id: null });
  assert.equal(store.ticks(chat, mine), "read");
});

test("chats and read marks survive a reload; messages come again from the server", () => {
  const saved = new Map<string, string>();
  const storage = { getItem: (key: string) => saved.get(key) ?? null, setItem: (key: string, value: string) => void saved.set(key, value) };
  const before = new ChatStore(1n, storage);
  before.created({ type: "chat_created", client_msg_id: 1n, chat_id: 7n, kind: "direct", title: "", creator: 2n, members: [1n, 2n] });
  before.message(message(1n, 2n));
  before.markRead(before.chat(7n));
  const after = new ChatStore(1n, storage);
  const chat = after.chat(7n);
  assert.equal(after.name(chat), "User 2");
  assert.equal(chat.readMark, 1n);
  assert.equal(chat.creator, 2n);
  assert.deepEqual(after.messages(chat), []);
  assert.equal(new ChatStore(2n, storage).chats.size, 0, "each user has their own");
});

test("member changes keep the member list and show as notices where they happened", () => {
  const store = new ChatStore(1n, undefined);
  store.created({ type: "chat_created", client_msg_id: 1n, chat_id: 7n, kind: "group", title: "Team", creator: 1n, members: [1n, 2n] });
  const chat = store.chat(7n);
  assert.ok(store.isAdmin(chat), "the creator is the admin");
  store.message(message(1n, 2n));
  store.membersAdded({ client_msg_id: 2n, chat_id: 7n, by: 2n, users: [3n, 4n] });
  store.message(message(2n, 3n));
  store.membersRemoved({ client_msg_id: 3n, chat_id: 7n, by: 1n, users: [4n] });
  store.joined(7n, 5n);
  assert.deepEqual(chat.members, [1n, 2n, 3n, 5n]);
  assert.deepEqual(
    store.timeline(chat).map((entry) => ("notice" in entry ? entry.notice.text : `#${entry.message.seq}`)),
    ["#1", "User 2 added User 3, User 4", "#2", "You removed User 4", "User 5 joined"],
  );
  assert.equal(store.isAdmin(new ChatStore(2n, undefined).chat(7n)), false);
});

test("a user removed from a chat loses it; a joined chat has no admin the page knows of", () => {
  const store = new ChatStore(2n, undefined);
  store.created({ type: "chat_created", client_msg_id: 1n, chat_id: 7n, kind: "group", title: "Team", creator: 1n, members: [1n, 2n] });
  assert.equal(store.isAdmin(store.chat(7n)), false);
  assert.equal(store.membersRemoved({ client_msg_id: 2n, chat_id: 7n, by: 1n, users: [2n] }), true);
  assert.equal(store.chats.has(7n), false);
  store.joined(8n, 2n);
  const joined = store.chat(8n);
  assert.deepEqual([joined.members, joined.creator, store.isAdmin(joined)], [[2n], undefined, false]);
  assert.deepEqual(store.timeline(joined).map((entry) => "notice" in entry && entry.notice.text), ["You joined"]);
});
