// The Node.js entry: the same API, with the `ws` package as the WebSocket (Node.js 20 has
// no global one) and the token in the Authorization header by default.

import WebSocket from "ws";
import { EdgeClient as BaseClient } from "./client.js";
import type { EdgeClientOptions } from "./client.js";
import type { SocketFactory } from "./socket.js";

export * from "./index.js";

/** A WebSocket of the `ws` package, which can also send request headers. */
export const nodeWebSocket: SocketFactory = (url, protocols, headers, handlers) => {
  const socket = new WebSocket(url, protocols, { headers });
  socket.binaryType = "arraybuffer";
  socket.on("message", (data: ArrayBuffer, isBinary: boolean) =>
    handlers.message(isBinary ? data : new TextDecoder().decode(data)),
  );
  socket.on("close", (code: number, reason: Buffer) => handlers.close(code, reason.toString()));
  // A refused upgrade or a network failure: "close" (1006) follows and reconnects.
  socket.on("error", () => {});
  return socket;
};

export class EdgeClient extends BaseClient {
  constructor(options: EdgeClientOptions) {
    super({ ...options, webSocket: options.webSocket ?? nodeWebSocket, tokenCarrier: options.tokenCarrier ?? "header" });
  }
}
