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
});

test("unread counts the other members' messages above the read mark", () => {
  const store = new ChatStore(1n, undefined);
  store.created({ type: "chat_created", client_msg_id: 1n, chat_id: 7n, kind: "group", title: "Team", creator: 1n, members: [1n, 2n, 3n] });
  const chat = store.chat(7n);
  store.message(message(1n, 2n));
  store.message(message(2n, 1n));
  store.message(message(3n, 3n));
  assert.equal(store.unread(chat), 2);
  assert.equal(store.markRead(chat), 3n);
  assert.equal(store.unread(chat), 0);
  assert.equal(store.markRead(chat), undefined, "nothing new to acknowledge");
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
  assert.deepEqual(chat.messages, []);
  assert.equal(new ChatStore(2n, storage).chats.size, 0, "each user has their own");
});
