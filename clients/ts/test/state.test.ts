// The sans-IO parts: seq tracking, the outbox and the reconnect policy.

import assert from "node:assert/strict";
import { test } from "node:test";
import { ChatEntries, CloseCode, Outbox, OutboxFullError, SeqTracker, afterClose } from "../src/index.js";
import type { MessageBody } from "../src/index.js";

const message = (seq: bigint): MessageBody => ({
  chat_id: 1n,
  seq,
  sender: 2n,
  client_msg_id: seq,
  server_time_us: 0n,
  body: "",
  kind: "message",
  target_seq: 0n,
});

test("live messages are accepted in seq order once; a gap starts one sync", () => {
  const seqs = new SeqTracker();
  seqs.track(1n);
  assert.deepEqual(seqs.live(1n, 1n), { accept: true });
  assert.deepEqual(seqs.live(1n, 1n), { accept: false }, "a duplicate");
  assert.deepEqual(seqs.live(1n, 4n), { accept: false, syncAfter: 1n }, "2 and 3 are missing");
  assert.deepEqual(seqs.live(1n, 5n), { accept: false }, "the sync is already under way");
  const page = seqs.page(1n, [message(2n), message(3n), message(4n), message(5n)], false);
  assert.deepEqual(page.accepted.map((m) => m.seq), [2n, 3n, 4n, 5n]);
  assert.equal(page.syncAfter, undefined);
  assert.deepEqual(seqs.live(1n, 6n), { accept: true });
  assert.equal(seqs.held(1n), 6n);
});

test("pages are followed while the server has more, and duplicates in them are dropped", () => {
  const seqs = new SeqTracker();
  assert.deepEqual(seqs.live(9n, 3n), { accept: false, syncAfter: 0n }, "an unknown chat starts at 0");
  const first = seqs.page(9n, [message(1n), message(2n)], true);
  assert.deepEqual(first.accepted.map((m) => m.seq), [1n, 2n]);
  assert.equal(first.syncAfter, 2n);
  const second = seqs.page(9n, [message(2n), message(3n)], false);
  assert.deepEqual(second.accepted.map((m) => m.seq), [3n]);
  assert.equal(second.syncAfter, undefined);
});

test("a trimmed history is reported lost, and a seq the server never returns is asked for once more only", () => {
  const seqs = new SeqTracker();
  seqs.track(1n);
  seqs.live(1n, 10n);
  const page = seqs.page(1n, [message(7n), message(8n)], false);
  assert.deepEqual(page.lost, [1n, 6n]);
  assert.equal(page.syncAfter, 8n, "10 was seen live: look again");
  const again = seqs.page(1n, [], false);
  assert.equal(again.syncAfter, undefined, "no second repeat for the same seq");
});

test("a seq known only from a receipt of another session is fetched, not invented", () => {
  const seqs = new SeqTracker();
  seqs.track(1n, 4n);
  assert.deepEqual(seqs.seen(1n, 5n), { accept: false, syncAfter: 4n });
  assert.equal(seqs.held(1n), 4n);
  assert.deepEqual(seqs.seen(1n, 3n), { accept: false });
});

test("after a reconnect every chat syncs from what it holds", () => {
  const seqs = new SeqTracker();
  seqs.track(1n, 5n);
  seqs.track(2n);
  assert.deepEqual(seqs.resume(), [
    [1n, 5n],
    [2n, 0n],
  ]);
});

test("the outbox writes in order, bounds what is in flight, and writes again after the timeout", () => {
  const outbox = new Outbox({ capacity: 3, maxInFlight: 2, resendAfterMs: 1000 });
  outbox.add(1n, 11n, "a");
  outbox.add(1n, 12n, "b");
  outbox.add(1n, 13n, "c");
  assert.throws(() => outbox.add(1n, 14n, "d"), OutboxFullError);
  assert.deepEqual(outbox.due(0).map((e) => e.clientMsgId), [11n, 12n]);
  assert.deepEqual(outbox.due(10), [], "two in flight");
  assert.equal(outbox.settle(11n)?.body, "a");
  assert.deepEqual(outbox.due(20).map((e) => e.clientMsgId), [13n]);
  assert.equal(outbox.nextDueAt(), 1000);
  const again = outbox.due(1000);
  assert.deepEqual(again.map((e) => [e.clientMsgId, e.attempts]), [[12n, 2]], "same id, second attempt");
  outbox.connectionLost();
  assert.deepEqual(outbox.due(1001).map((e) => e.clientMsgId), [12n, 13n], "everything again on a new session");
  outbox.retryLater(13n, 2000);
  assert.ok(outbox.nextDueAt()! > 2000);
});

test("close codes decide whether and when to reconnect", () => {
  const options = { initialDelayMs: 500, maxDelayMs: 30_000 };
  const decide = (code: number, attempt = 0, refresh = true) => afterClose(code, attempt, refresh, options, () => 0.999);
  assert.deepEqual(decide(CloseCode.TOKEN_EXPIRED), { reconnect: true, delayMs: 0 }, "a fresh token goes at once");
  assert.equal(decide(CloseCode.TOKEN_EXPIRED, 0, false).reconnect, false, "a fixed token cannot be renewed");
  const goingAway = decide(CloseCode.GOING_AWAY);
  assert.ok(goingAway.reconnect && goingAway.delayMs < 500, "a restart: within the first window");
  const slow = decide(CloseCode.SLOW_CONSUMER, 3);
  assert.ok(slow.reconnect && slow.delayMs >= 3000 && slow.delayMs < 4000, "backs off with the attempts");
  const capped = decide(CloseCode.ABNORMAL, 40);
  assert.ok(capped.reconnect && capped.delayMs <= 30_000);
  const policy = afterClose(CloseCode.POLICY_VIOLATION, 0, true, options, () => 0);
  assert.ok(policy.reconnect && policy.delayMs >= 15_000, "a rate-limit offender comes back slowly");
});

test("a message's view folds its edits, delete and reactions in seq order, whatever order they came in", () => {
  const entry = (seq: bigint, kind: MessageBody["kind"], body: string, sender = 2n): MessageBody => ({
    ...message(seq),
    sender,
    kind,
    body,
    target_seq: kind === "message" ? 0n : 1n,
  });
  const log = new ChatEntries();
  // A page back from the newest brings the events first, newest first.
  assert.equal(log.add(entry(5n, "unreact", "👍", 3n)), undefined, "its message is not held yet");
  assert.equal(log.add(entry(4n, "react", "🎉", 2n)), undefined);
  assert.equal(log.add(entry(3n, "react", "👍", 3n)), undefined);
  assert.equal(log.add(entry(2n, "edit", "see you at 11")), undefined);
  assert.equal(log.add(entry(1n, "message", "see you at 10")), 1n);
  const view = log.view(1n)!;
  assert.equal(view.body, "see you at 11");
  assert.equal(view.edited, true);
  assert.deepEqual([...view.reactions], [["🎉", [2n]]]);
  assert.equal(log.add(entry(3n, "react", "👍", 3n)), undefined, "a repeat changes nothing");
  assert.equal(log.add(entry(6n, "delete", "")), 1n);
  assert.equal(log.view(1n)!.deleted, true);
  assert.equal(log.view(1n)!.body, "");
  assert.deepEqual(log.all().map((m) => m.seq), [1n]);
});
