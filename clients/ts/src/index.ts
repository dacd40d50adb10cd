// The edge gateway's client SDK: typed frames and their two encodings, and a client that
// reconnects, keeps chats in order and resends until answered. This entry uses the
// platform's global WebSocket (browsers); Node.js resolves the package to node.ts instead.

export { EdgeClient, NoAnswerError, ServerError } from "./client.js";
export type { ConnectionState, EdgeClientOptions, EdgeEvents, Encoding, HistoryPage, Sent, TokenSource } from "./client.js";
export type * from "./frames.js";
export { decodeClientFrame, decodeServerFrame, encodeClientFrame, encodeServerFrame } from "./binary.js";
export { clientFrameFromJson, clientFrameToJson, serverFrameFromJson, serverFrameToJson } from "./json.js";
export { WireError } from "./check.js";
export { CloseCode, ErrorCode, LIMITS, PROTOCOL_VERSION, isRetryable } from "./protocol.js";
export { SeqTracker } from "./chats.js";
export { ChatEntries } from "./entries.js";
export type { MessageView } from "./entries.js";
export { Outbox, OutboxFullError } from "./outbox.js";
export { afterClose } from "./reconnect.js";
export type { BackoffOptions, CloseDecision } from "./reconnect.js";
export { carryToken, globalWebSocket } from "./socket.js";
export type { Socket, SocketFactory, SocketHandlers, TokenCarrier } from "./socket.js";
