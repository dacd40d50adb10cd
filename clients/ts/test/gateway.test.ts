// The SDK against a real gateway on the memory engine, started from the cargo-built binary.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { startStack } from "../src/devstack.js";
import type { Stack } from "../src/devstack.js";
import { CloseCode, EdgeClient, ErrorCode, decodeClientFrame, decodeServerFrame } from "../src/node.js";
import type { Encoding, MessageBody, TokenCarrier } from "../src/node.js";
import { clientOf, connected, next, record, sleep, tappedWebSocket, twoDevicesAndEntries } from "./helpers.js";

let stack: Stack;
const clients: EdgeClient[] = [];
const track = (client: EdgeClient) => (clients.push(client), client);

before(async () => {
  stack = await startStack({ engine: "memory" });
});

after(async () => {
  for (const client of clients) client.close();
  await stack?.stop();
});

for (const carrier of ["header", "query", "subprotocol"] as TokenCarrier[]) {
  test(`a session opens with the token in the ${carrier}`, async () => {
    const client = track(clientOf(stack, 100n, { tokenCarrier: carrier }));
    const welcome = next(client, "connected");
    client.connect();
    const [session] = await welcome;
    assert.equal(session.user_id, 100n);
    assert.equal(client.userId, 100n);
  });
}

for (const [index, encoding] of (["binary", "json"] as Encoding[]).entries()) {
  test(`the chat list in ${encoding} frames: most recent activity first, paged, with unread counts`, async () => {
    const aliceId = 280n + BigInt(index * 10);
    const bobId = aliceId + 1n;
    const alice = track(await connected(clientOf(stack, aliceId, { encoding })));
    const bob = track(await connected(clientOf(stack, bobId, { encoding })));
    const quiet = await alice.createChat("group", "Quiet", [bobId]);
    const busy = await alice.createChat("group", "Busy", [bobId]);
    const bobGetsIt = next(bob, "message");
    await alice.send(quiet.chat_id, "wake up");
    await bobGetsIt;

    const first = await bob.listChats(1);
    assert.deepEqual(
      first.chats.map((c) => [c.chat_id, c.title, c.member_count, c.last_seq]),
      [[quiet.chat_id, "Quiet", 2, 1n]],
    );
    assert.equal(first.has_more, true);
    const second = await bob.listChats(1, first.chats[0]!);
    assert.deepEqual(second.chats.map((c) => [c.chat_id, c.last_seq, c.unread]), [[busy.chat_id, 0n, 0n]]);
    assert.equal(second.has_more, false);
  });

  test(`history in ${encoding} frames pages back from the newest message, newest first`, async () => {
    const aliceId = 260n + BigInt(index * 10);
    const alice = track(await connected(clientOf(stack, aliceId, { encoding })));
    const chat = await alice.createChat("group", "History", []);
    for (const body of ["one", "two", "three"]) await alice.send(chat.chat_id, body);

    const newest = await alice.history(chat.chat_id, undefined, 2);
    assert.deepEqual(newest.messages.map((m) => [m.seq, m.body]), [[3n, "three"], [2n, "two"]]);
    assert.equal(newest.hasMore, true);
    const older = await alice.history(chat.chat_id, 2n, 2);
    assert.deepEqual(older.messages.map((m) => m.seq), [1n]);
    assert.equal(older.hasMore, false);
    await assert.rejects(alice.history(987_654_321n), (error: Error & { code?: number }) => error.code === 4040);
  });

  test(`two devices of one user in ${encoding} frames: own messages and read state follow; edits, reactions, deletes`, async () => {
    await twoDevicesAndEntries(stack, 240n + BigInt(index * 10), encoding, track);
  });

  test(`a conversation in ${encoding} frames: chat, typing, message, receipts, presence`, async () => {
    const aliceId = 200n + BigInt(index * 10);
    const bobId = aliceId + 1n;
    const alice = track(await connected(clientOf(stack, aliceId, { encoding })));
    const bob = track(await connected(clientOf(stack, bobId, { encoding })));

    const bobHearsOfIt = next(bob, "chatCreated");
    const chat = await alice.createChat("group", "Weekend plans", [bobId]);
    assert.deepEqual(chat.members, [aliceId, bobId]);
    assert.equal((await bobHearsOfIt)[0].chat_id, chat.chat_id);

    const typing = next(bob, "typing");
    alice.typing(chat.chat_id);
    assert.equal((await typing)[0].user_id, aliceId);

    const bobGets = next(bob, "message");
    const aliceSees = next(alice, "message");
    const delivered = next(alice, "receipt", (r) => r.kind === "delivered");
    const sent = await alice.send(chat.chat_id, "See you at 10? ✓");
    assert.equal(sent.seq, 1n);
    const [message, info] = await bobGets;
    assert.deepEqual([message.seq, message.sender, message.body, info.live, info.own], [1n, aliceId, "See you at 10? ✓", true, false]);
    const [own, ownInfo] = await aliceSees;
    assert.deepEqual([own.seq, own.client_msg_id, ownInfo.own], [1n, sent.clientMsgId, true]);
    const [receipt] = await delivered;
    assert.deepEqual([receipt.user_id, receipt.seq], [bobId, 1n], "bob's client acknowledged delivery by itself");

    const read = next(alice, "receipt", (r) => r.kind === "read");
    bob.markRead(chat.chat_id, 1n);
    assert.deepEqual([(await read)[0].user_id, (await read)[0].seq], [bobId, 1n]);

    const presence = await alice.presence([bobId, 999_999n]);
    assert.deepEqual(
      presence.map((p) => [p.user_id, p.online]),
      [
        [bobId, true],
        [999_999n, false],
      ],
    );
  });
}

for (const [index, encoding] of (["binary", "json"] as Encoding[]).entries()) {
  test(`groups in ${encoding} frames: members add to invite-only groups, anyone joins public ones, only the admin removes`, async () => {
    const [aliceId, bobId, carolId, daveId] = [810n, 811n, 812n, 813n].map((id) => id + BigInt(index * 10));
    const [alice, bob, carol, dave] = await Promise.all(
      [aliceId, bobId, carolId, daveId].map(async (id) => track(await connected(clientOf(stack, id, { encoding })))),
    );
    const code = (expected: number) => (error: Error & { code?: number }) => error.code === expected;

    const team = await alice.createChat("group", "Team", []);
    assert.deepEqual([team.kind, team.creator, team.members], ["group", aliceId, [aliceId]]);
    await alice.send(team.chat_id, "before bob came");
    await assert.rejects(bob.join(team.chat_id), code(ErrorCode.NOT_MEMBER), "an invite-only group cannot be joined");

    // Bob is added instead: he hears of the chat as it is, and his client fetches its history.
    const bobHearsOfIt = next(bob, "chatCreated", (chat) => chat.chat_id === team.chat_id);
    const bobGetsHistory = next(bob, "message", (message) => message.chat_id === team.chat_id);
    const added = await alice.addMembers(team.chat_id, [bobId]);
    assert.deepEqual([added.chat_id, added.by, added.users], [team.chat_id, aliceId, [bobId]]);
    const [chat] = await bobHearsOfIt;
    assert.deepEqual([chat.title, chat.creator, chat.members], ["Team", aliceId, [aliceId, bobId]]);
    const [old, info] = await bobGetsHistory;
    assert.deepEqual([old.seq, old.body, info.live], [1n, "before bob came", false]);

    // Any member adds; only the admin removes, and the removed hear it too.
    const aliceHears = next(alice, "membersAdded");
    await bob.addMembers(team.chat_id, [carolId]);
    assert.deepEqual([(await aliceHears)[0].by, (await aliceHears)[0].users], [bobId, [carolId]]);
    await assert.rejects(bob.removeMembers(team.chat_id, [carolId]), code(ErrorCode.FORBIDDEN));
    const carolHears = next(carol, "membersRemoved");
    assert.deepEqual((await alice.removeMembers(team.chat_id, [carolId])).users, [carolId]);
    assert.equal((await carolHears)[0].by, aliceId);
    assert.equal(carol.heldSeq(team.chat_id), undefined, "carol's client stops following the chat");
    await assert.rejects(carol.send(team.chat_id, "still here?"), code(ErrorCode.NOT_MEMBER));
    // A chat remembered from before (say, by a page that was closed while its user was removed).
    const lost = next(carol, "chatLost");
    carol.follow(team.chat_id);
    assert.deepEqual([(await lost)[0].chatId, (await lost)[0].error.code], [team.chat_id, ErrorCode.NOT_MEMBER]);
    assert.equal(carol.heldSeq(team.chat_id), undefined);

    const lobby = await alice.createChat("public_group", "Lobby", []);
    assert.equal(lobby.kind, "public_group");
    const aliceSeesDave = next(alice, "joined", (event) => event.user_id === daveId);
    assert.equal((await dave.join(lobby.chat_id)).user_id, daveId);
    await aliceSeesDave;

    // Presence only between users who share a chat: Dave and Bob share none.
    const [seen] = await dave.presence([aliceId]);
    const [unseen] = await dave.presence([bobId]);
    assert.deepEqual([seen.online, unseen.online, unseen.last_seen_us], [true, false, 0n]);

    const direct = await alice.createChat("direct", "", [bobId]);
    assert.equal((await bob.createChat("direct", "", [aliceId])).chat_id, direct.chat_id, "one direct chat per pair");
  });
}

test("user ids above 2^53 are exact in binary frames, and refused rather than rounded in JSON", async () => {
  const big = (1n << 63n) + 7n;
  const binary = track(await connected(clientOf(stack, big)));
  assert.equal(binary.userId, big);
  const json = track(clientOf(stack, big, { encoding: "json" }));
  const refused = next(json, "invalidFrame");
  json.connect();
  assert.match((await refused)[0].message, /2\^53/);
});

test("errors of the server reject the request they answer", async () => {
  const alice = track(await connected(clientOf(stack, 300n)));
  await assert.rejects(alice.join(987_654_321n), (error: Error & { code?: number }) => error.code === 4040);
  await assert.rejects(alice.send(987_654_321n, "to nowhere"), (error: Error & { code?: number }) => error.code === 4040);
  await assert.rejects(alice.send(1n, "x".repeat(5000)), /limit is 4096/);
});

test("messages missed while disconnected arrive by sync, in order and once; sends made meanwhile go out after", async () => {
  const alice = track(await connected(clientOf(stack, 400n)));
  let letBobBack: () => void = () => {};
  const bobMayReconnect = new Promise<void>((resolve) => (letBobBack = resolve));
  let connections = 0;
  const tap = tappedWebSocket();
  const bob = track(
    new EdgeClient({
      url: stack.url,
      webSocket: tap.factory,
      reconnect: { initialDelayMs: 50 },
      token: async () => {
        if (connections++ > 0) await bobMayReconnect;
        return stack.token(401n);
      },
    }),
  );
  await connected(bob);
  // Listening before the request: Bob may hear of the chat before Alice's answer arrives.
  const bobHearsOfIt = next(bob, "chatCreated");
  const chat = await alice.createChat("direct", "", [401n]);
  await bobHearsOfIt;
  const bobMessages = record(bob, "message");
  const first = next(bob, "message");
  await alice.send(chat.chat_id, "one");
  await first;

  const gone = next(bob, "disconnected");
  tap.sockets.at(-1)!.close(CloseCode.NORMAL, "the test cuts the line");
  await gone;
  for (const body of ["two", "three", "four"]) await alice.send(chat.chat_id, body);
  const bobSent = bob.send(chat.chat_id, "written while offline");
  assert.equal(bob.unsentCount, 1);

  const back = next(bob, "message", (m) => m.seq === 5n);
  letBobBack();
  await back;
  assert.equal((await bobSent).seq, 5n);
  await sleep(200);
  const seqs = bobMessages.map(([m]) => m.seq);
  assert.deepEqual(seqs, [1n, 2n, 3n, 4n, 5n], "each seq once, in order");
  assert.deepEqual(
    bobMessages.filter(([m]) => m.seq >= 2n && m.seq <= 4n).map(([m, info]) => [m.body, info.live]),
    [
      ["two", false],
      ["three", false],
      ["four", false],
    ],
  );
});

test("an unanswered send is written again with the same client_msg_id, and stored once", async () => {
  let dropped = false;
  // Loses the first sent receipt, as a connection that dies at the wrong moment would.
  const tap = tappedWebSocket((data) => {
    if (dropped || typeof data === "string") return true;
    const frame = decodeServerFrame(new Uint8Array(data));
    if (frame.type === "receipt" && frame.kind === "sent") {
      dropped = true;
      return false;
    }
    return true;
  });
  const alice = track(await connected(clientOf(stack, 500n, { webSocket: tap.factory, outbox: { resendAfterMs: 300 } })));
  const bob = track(await connected(clientOf(stack, 501n)));
  const chat = await alice.createChat("direct", "", [501n]);
  const bobMessages = record(bob, "message");

  const sent = await alice.send(chat.chat_id, "only once");
  assert.ok(dropped);
  const writes = tap.written
    .filter((data): data is Uint8Array => typeof data !== "string")
    .map((data) => decodeClientFrame(data))
    .filter((frame) => frame.type === "send");
  assert.equal(writes.length, 2, "written twice");
  assert.ok(writes.every((frame) => frame.client_msg_id === sent.clientMsgId), "with the same id");
  assert.equal(sent.seq, 1n);
  await sleep(300);
  assert.deepEqual(bobMessages.map(([m]: [MessageBody, unknown]) => m.body), ["only once"]);
});

test("a token that expires mid-session (4002) is replaced at once", async () => {
  let tokens = 0;
  const client = track(
    new EdgeClient({
      url: stack.url,
      // The first token lives a second; the gateway closes the session when it runs out.
      token: () => stack.token(600n, tokens++ === 0 ? "1s" : "60m"),
    }),
  );
  await connected(client);
  const [closed] = await next(client, "disconnected");
  assert.equal(closed.code, CloseCode.TOKEN_EXPIRED);
  assert.equal(closed.reconnectInMs, 0);
  await next(client, "connected");
  assert.equal(tokens, 2);
});

test("a gateway restart (1001) is followed by a reconnect to the new process", async () => {
  const client = track(await connected(clientOf(stack, 700n)));
  const gone = next(client, "disconnected");
  const back = next(client, "connected", () => true, 30_000);
  await stack.restartGateway();
  assert.equal((await gone)[0].code, CloseCode.GOING_AWAY);
  await back;
  assert.equal(client.state, "open");
});
