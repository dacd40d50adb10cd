// What the tests against a real gateway share: clients of a stack, and waiting for events.

import type { Stack } from "../src/devstack.js";
import { EdgeClient, nodeWebSocket } from "../src/node.js";
import type { EdgeClientOptions, EdgeEvents, Socket, SocketFactory } from "../src/node.js";

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
