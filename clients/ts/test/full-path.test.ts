// The SDK on the full path: gateway (amqp engine) and backend on RabbitMQ, PostgreSQL and
// Redis, in a private corner of those services, from the cargo-built binaries.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { startStack } from "../src/devstack.js";
import type { Stack } from "../src/devstack.js";
import { CloseCode, EdgeClient, ErrorCode } from "../src/node.js";
import { clientOf, connected, next, record, sleep, tappedWebSocket, twoDevicesAndEntries } from "./helpers.js";

let stack: Stack;
const clients: EdgeClient[] = [];
const track = (client: EdgeClient) => (clients.push(client), client);
// User ids of this run only: the backend keeps (sender, client_msg_id) and chats for good.
const base = BigInt(Date.now()) * 1000n;

before(async () => {
  stack = await startStack({ engine: "amqp" });
});

after(async () => {
  for (const client of clients) client.close();
  await stack?.stop();
});

test("two devices of one user through the broker and the database: own messages and read state follow; edits, reactions, deletes", async () => {
  await twoDevicesAndEntries(stack, base + 50n, "json", track);
});

test("a conversation through the broker and the database", async () => {
  const [aliceId, bobId] = [base + 1n, base + 2n];
  const alice = track(await connected(clientOf(stack, aliceId)));
  const bob = track(await connected(clientOf(stack, bobId, { encoding: "json" })));

  const bobHearsOfIt = next(bob, "chatCreated");
  const chat = await alice.createChat("group", "Stored", [bobId]);
  await bobHearsOfIt;

  const bobGets = next(bob, "message");
  const delivered = next(alice, "receipt", (r) => r.kind === "delivered");
  const sent = await alice.send(chat.chat_id, "stored in PostgreSQL");
  assert.equal(sent.seq, 1n);
  assert.equal((await bobGets)[0].body, "stored in PostgreSQL");
  assert.equal((await delivered)[0].user_id, bobId);

  const read = next(alice, "receipt", (r) => r.kind === "read");
  bob.markRead(chat.chat_id, 1n);
  assert.equal((await read)[0].seq, 1n);
});

test("the group rules through the backend: adds bring the history, only the admin removes, public groups take joins", async () => {
  const [aliceId, bobId, carolId] = [base + 31n, base + 32n, base + 33n];
  const [alice, bob, carol] = await Promise.all([aliceId, bobId, carolId].map(async (id) => track(await connected(clientOf(stack, id)))));
  const code = (expected: number) => (error: Error & { code?: number }) => error.code === expected;

  const team = await alice.createChat("group", "Stored team", []);
  await alice.send(team.chat_id, "before bob came");
  await assert.rejects(bob.join(team.chat_id), code(ErrorCode.NOT_MEMBER));
  const bobGetsHistory = next(bob, "message", (message) => message.chat_id === team.chat_id, 15_000);
  const added = await alice.addMembers(team.chat_id, [bobId]);
  assert.deepEqual(added.users, [bobId]);
  const [old, info] = await bobGetsHistory;
  assert.deepEqual([old.body, info.live], ["before bob came", false]);

  await bob.addMembers(team.chat_id, [carolId]);
  await assert.rejects(bob.removeMembers(team.chat_id, [carolId]), code(ErrorCode.FORBIDDEN));
  const carolHears = next(carol, "membersRemoved");
  await alice.removeMembers(team.chat_id, [carolId]);
  await carolHears;
  await assert.rejects(carol.send(team.chat_id, "still here?"), code(ErrorCode.NOT_MEMBER));

  const lobby = await alice.createChat("public_group", "Stored lobby", []);
  assert.equal(lobby.kind, "public_group");
  assert.equal((await carol.join(lobby.chat_id)).user_id, carolId);
});

test("a reconnecting client gets what it missed from the database, in order and once", async () => {
  const [aliceId, bobId] = [base + 11n, base + 12n];
  const alice = track(await connected(clientOf(stack, aliceId)));
  const tap = tappedWebSocket();
  const bob = track(await connected(clientOf(stack, bobId, { webSocket: tap.factory, reconnect: { initialDelayMs: 1500 } })));
  // Listening before the request: Bob may hear of the chat before Alice's answer arrives.
  const bobHearsOfIt = next(bob, "chatCreated");
  const chat = await alice.createChat("direct", "", [bobId]);
  await bobHearsOfIt;
  const bobMessages = record(bob, "message");

  const gone = next(bob, "disconnected");
  tap.sockets.at(-1)!.close(CloseCode.NORMAL, "the test cuts the line");
  await gone;
  // Listening before the sends: the reconnect delay is jittered below its ceiling, so Bob
  // may be back before the last send returns and get the last message live.
  const third = next(bob, "message", (m) => m.seq === 3n, 15_000);
  for (const body of ["one", "two", "three"]) await alice.send(chat.chat_id, body);
  await third;
  await sleep(300);
  assert.deepEqual(
    bobMessages.map(([m]) => m.body),
    ["one", "two", "three"],
  );
});

test("a fresh device of a member finds a chat's history from its first message", async () => {
  const [aliceId, bobId] = [base + 21n, base + 22n];
  const alice = track(await connected(clientOf(stack, aliceId)));
  const chat = await alice.createChat("direct", "", [bobId]);
  for (const body of ["before", "bob", "came"]) await alice.send(chat.chat_id, body);
  // Bob was offline when the chat was created; with no way to list chats, the next message
  // is how his client learns of it, and the gap before it brings the history.
  const bob = track(await connected(clientOf(stack, bobId)));
  const bobMessages = record(bob, "message");
  const last = next(bob, "message", (m) => m.seq === 4n, 15_000);
  await alice.send(chat.chat_id, "online");
  await last;
  assert.deepEqual(
    bobMessages.map(([m, info]) => [m.body, info.live]),
    [
      ["before", false],
      ["bob", false],
      ["came", false],
      ["online", false],
    ],
  );
});
