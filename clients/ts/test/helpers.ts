// What the tests against a real gateway share: clients of a stack, and waiting for events.

import assert from "node:assert/strict";
import type { Stack } from "../src/devstack.js";
import { ChatEntries, EdgeClient, ErrorCode, nodeWebSocket } from "../src/node.js";
import type { EdgeClientOptions, EdgeEvents, Encoding, Socket, SocketFactory } from "../src/node.js";

/** A client of user `user` on `stack`, with a fresh token for every connection. */
export function clientOf(stack: Stack, user: bigint, options: Partial<EdgeClientOptions> = {}): EdgeClient {
  return new EdgeClient({ url: stack.url, token: () => stack.token(user), reconnect: { initialDelayMs: 200 }, ...options });
}

/** Resolves with the arguments of the first `event` of `client` that `matches`. */
export function next<K extends keyof EdgeEvents>(
  client: EdgeClient,
  event: K,
  matches: (...args: EdgeEvents[K]) => boolean = () => true,
  timeoutMs = 10_000,
): Promise<EdgeEvents[K]> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      stop();
      reject(new Error(`no ${String(event)} within ${timeoutMs} ms`));
    }, timeoutMs);
    const stop = client.on(event, (...args) => {
      if (!matches(...args)) return;
      clearTimeout(timer);
      stop();
      resolve(args);
    });
  });
}

/** Connects and resolves once the session has started. */
export async function connected(client: EdgeClient): Promise<EdgeClient> {
  const welcome = next(client, "connected");
  client.connect();
  await welcome;
  return client;
}

/** Every `event` of `client` from now on. */
export function record<K extends keyof EdgeEvents>(client: EdgeClient, event: K): EdgeEvents[K][] {
  const seen: EdgeEvents[K][] = [];
  client.on(event, (...args) => seen.push(args));
  return seen;
}

export const sleep = (ms: number) => new Promise((done) => setTimeout(done, ms));

/** A `ws` socket factory that lets a test see and cut the client's sockets and filter what
 * arrives. */
export function tappedWebSocket(filter: (data: ArrayBuffer | string) => boolean = () => true): {
  factory: SocketFactory;
  sockets: Socket[];
  written: (Uint8Array | string)[];
} {
  const sockets: Socket[] = [];
  const written: (Uint8Array | string)[] = [];
  const factory: SocketFactory = (url, protocols, headers, handlers) => {
    const socket = nodeWebSocket(url, protocols, headers, {
      ...handlers,
      message: (data) => {
        if (filter(data)) handlers.message(data);
      },
    });
    const tapped: Socket = {
      send: (data) => {
        written.push(data);
        socket.send(data);
      },
      close: (code, reason) => socket.close(code, reason),
    };
    sockets.push(tapped);
    return tapped;
  };
  return { factory, sockets, written };
}

/**
 * One user on two devices and a friend, on whichever engine `stack` runs: the user's own
 * message reaches its other device, its read watermark follows to the other device, and
 * edits, reactions and deletes come back as entries that fold into the message's view,
 * live and from history. `aliceId + 1` is the friend.
 */
export async function twoDevicesAndEntries(stack: Stack, aliceId: bigint, encoding: Encoding, track: (c: EdgeClient) => EdgeClient): Promise<void> {
  const bobId = aliceId + 1n;
  const phone = track(await connected(clientOf(stack, aliceId, { encoding })));
  const laptop = track(await connected(clientOf(stack, aliceId, { encoding })));
  const bob = track(await connected(clientOf(stack, bobId, { encoding })));
  const laptopHears = next(laptop, "chatCreated");
  const chat = await phone.createChat("group", "Devices", [bobId]);
  await laptopHears;

  const onLaptop = next(laptop, "message", (m) => m.kind === "message");
  const bobGets = next(bob, "message");
  const sent = await phone.send(chat.chat_id, "from my phone");
  const [mine, info] = await onLaptop;
  assert.deepEqual([mine.seq, mine.sender, mine.body, info.own], [sent.seq, aliceId, "from my phone", true]);
  await bobGets;

  const laptopRead = next(laptop, "ownRead");
  phone.markRead(chat.chat_id, sent.seq);
  assert.deepEqual(await laptopRead, [{ chatId: chat.chat_id, seq: sent.seq }]);

  const views = new ChatEntries();
  bob.on("message", (entry) => views.add(entry));
  views.add(mine);
  const edited = next(bob, "message", (m) => m.kind === "edit");
  await phone.edit(chat.chat_id, sent.seq, "from my laptop, really");
  await edited;
  const reacted = next(phone, "message", (m) => m.kind === "react");
  await bob.react(chat.chat_id, sent.seq, "👍");
  await reacted;
  await assert.rejects(bob.edit(chat.chat_id, sent.seq, "mine now"), (e: Error & { code?: number }) => e.code === ErrorCode.FORBIDDEN);
  await assert.rejects(bob.react(chat.chat_id, sent.seq, "👍"), (e: Error & { code?: number }) => e.code === ErrorCode.INVALID_REQUEST);
  let view = views.view(sent.seq)!;
  assert.deepEqual([view.body, view.edited, [...view.reactions]], ["from my laptop, really", true, [["👍", [bobId]]]]);

  const deleted = next(bob, "message", (m) => m.kind === "delete");
  await laptop.delete(chat.chat_id, sent.seq);
  await deleted;
  assert.equal(views.view(sent.seq)!.deleted, true);

  // History gives the same state, the events first (newest first), the message last.
  const fromHistory = new ChatEntries();
  const page = await bob.history(chat.chat_id);
  assert.deepEqual(page.messages.map((m) => m.kind), ["delete", "react", "edit", "message"]);
  for (const entry of page.messages) fromHistory.add(entry);
  view = fromHistory.view(sent.seq)!;
  assert.deepEqual([view.deleted, view.body, [...view.reactions]], [true, "", [["👍", [bobId]]]]);
}
