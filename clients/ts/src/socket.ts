// The WebSocket behind the client, as a small adapter: browsers have a global WebSocket,
// Node.js 20 has none (the node entry plugs in the `ws` package). Also where the token goes.

/** What the client needs of a WebSocket. */
export interface Socket {
  send(data: Uint8Array | string): void;
  close(code?: number, reason?: string): void;
}

/** What the client hears of a socket. It waits for the server's welcome rather than for
 * "open", so that is not among them. */
export interface SocketHandlers {
  /** A binary message (as an ArrayBuffer) or a text message. */
  message(data: ArrayBuffer | string): void;
  close(code: number, reason: string): void;
}

/** Opens a WebSocket to `url` offering `protocols`, with extra request `headers` where the
 * platform allows them. */
export type SocketFactory = (
  url: string,
  protocols: string[],
  headers: Record<string, string>,
  handlers: SocketHandlers,
) => Socket;

/** Where the token travels in the upgrade request (wire/PROTOCOL.md, "The token"). */
export type TokenCarrier = "header" | "query" | "subprotocol";

/** The upgrade request's URL, subprotocols and headers carrying `token`. */
export function carryToken(
  url: string,
  token: string,
  carrier: TokenCarrier,
  json: boolean,
): { url: string; protocols: string[]; headers: Record<string, string> } {
  const target = new URL(url);
  if (json) target.searchParams.set("format", "json");
  switch (carrier) {
    case "header":
      return { url: target.href, protocols: [], headers: { Authorization: `Bearer ${token}` } };
    case "query":
      target.searchParams.set("token", token);
      return { url: target.href, protocols: [], headers: {} };
    case "subprotocol":
      // The gateway selects edge.v1, so the token is never echoed back.
      return { url: target.href, protocols: ["edge.v1", `bearer.${token}`], headers: {} };
  }
}

/** The platform's global WebSocket (browsers, and Node.js 22 and later). */
export const globalWebSocket: SocketFactory = (url, protocols, headers, handlers) => {
  const WebSocketClass = (globalThis as { WebSocket?: typeof WebSocket }).WebSocket;
  if (WebSocketClass === undefined) {
    throw new Error("this platform has no global WebSocket: in Node.js, import the client from the package's node entry");
  }
  if (Object.keys(headers).length > 0) {
    throw new Error("a browser WebSocket cannot send headers: carry the token in the query or the subprotocol");
  }
  const socket = new WebSocketClass(url, protocols);
  socket.binaryType = "arraybuffer";
  socket.onmessage = (event: MessageEvent) => handlers.message(event.data as ArrayBuffer | string);
  socket.onclose = (event: CloseEvent) => handlers.close(event.code, event.reason);
  return socket;
};
