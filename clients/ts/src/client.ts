// The client: one WebSocket session at a time, reconnected with backoff, over which it keeps
// each chat's messages in order and complete (seq tracking, gap syncs, dedupe), delivers the
// application's messages at least once (the outbox) and answers requests with promises. The
// decisions live in sans-IO parts (chats.ts, outbox.ts, reconnect.ts); this file is the glue.

import { decodeServerFrame, encodeClientFrame } from "./binary.js";
import { SeqTracker } from "./chats.js";
import { WireError } from "./check.js";
import { Emitter } from "./events.js";
import type {
  ChatCreated,
  ChatKind,
  ClientFrame,
  EntryKind,
  ErrorFrame,
  Joined,
  Left,
  MembersAdded,
  MembersChanged,
  MembersRemoved,
  MessageBody,
  ChatList,
  PresenceEntry,
  Receipt,
  ServerFrame,
  SyncBatch,
  TypingEvent,
  Welcome,
} from "./frames.js";
import { clientFrameToJson, serverFrameFromJson } from "./json.js";
import { Outbox } from "./outbox.js";
import type { OutboxEntry, OutboxOptions } from "./outbox.js";
import { CloseCode, ErrorCode, LIMITS, isRetryable } from "./protocol.js";
import { afterClose } from "./reconnect.js";
import type { BackoffOptions } from "./reconnect.js";
import { carryToken, globalWebSocket } from "./socket.js";
import type { Socket, SocketFactory, TokenCarrier } from "./socket.js";

/** A token, or a function that gets one; the function is called before every connection
 * attempt, so it can hand out fresh tokens (cache inside it if minting is costly). */
export type TokenSource = string | (() => string | Promise<string>);

/** `binary` reads every u64 exactly as a bigint; `json` (text frames) refuses ids above
 * 2^53 - 1, which JSON.parse cannot hold. */
export type Encoding = "binary" | "json";

export interface EdgeClientOptions {
  /** The gateway's WebSocket URL, such as ws://127.0.0.1:8080/ws. */
  url: string;
  token: TokenSource;
  /** Where the token goes: "header" needs Node.js; browsers use "subprotocol" or "query". */
  tokenCarrier?: TokenCarrier;
  encoding?: Encoding;
  /** The WebSocket implementation; the platform's global one by default. */
  webSocket?: SocketFactory;
  reconnect?: Partial<BackoffOptions>;
  outbox?: Partial<OutboxOptions>;
  /** A request (create, join, leave, add or remove members, presence, sync) unanswered this
   * long fails (ms). */
  requestTimeoutMs?: number;
  /** Messages asked for per sync page, 1 to 200. */
  syncPageSize?: number;
  /** Acknowledge delivery of every accepted message (a delivered watermark per chat). */
  autoAckDelivered?: boolean;
  /** Acks wait this long (ms) so that a burst of messages costs one ack per chat. */
  ackDelayMs?: number;
}

/** What `send` resolves to: the message is stored with `seq`. */
export interface Sent {
  chatId: bigint;
  clientMsgId: bigint;
  seq: bigint;
}

export interface EdgeEvents {
  /** A session started (after every reconnect too). */
  connected: [welcome: Welcome];
  /** The session ended; `reconnectInMs` is undefined when the client stops for good. */
  disconnected: [info: { code: number; reason: string; reconnectInMs: number | undefined }];
  /** A chat's next message, each (chat, seq) once and in seq order, the user's own included.
   * `live` is false for messages fetched by sync. */
  message: [message: MessageBody, info: { live: boolean; own: boolean }];
  /** Every receipt: `sent` for this user's messages, `delivered` and `read` watermarks of
   * the other members, and this user's own `read` watermark from its other sessions. */
  receipt: [receipt: Receipt];
  /** This user read `chatId` up to `seq` on another of its sessions (another device): a
   * chat list sets its unread count from this, so that every device agrees. */
  ownRead: [info: { chatId: bigint; seq: bigint }];
  /** A chat this user is a member of: created, or this user was added to it (then
   * `members` is the membership after the addition). The client follows the chat, fetching
   * the history an added member has not seen. */
  chatCreated: [event: ChatCreated];
  joined: [event: Joined];
  left: [event: Left];
  /** Users were added to a chat this user was a member of already. */
  membersAdded: [event: MembersAdded];
  /** Users were removed from a chat; when this user is among them, the client stops
   * following the chat. */
  membersRemoved: [event: MembersRemoved];
  typing: [event: TypingEvent];
  /** The server no longer holds these messages of the chat (its history was trimmed). */
  historyLost: [info: { chatId: bigint; firstSeq: bigint; lastSeq: bigint }];
  /** A followed chat refused a sync with `not_member` or `unknown_chat`: this user left it or
   * was removed while away (or never was a member), or the chat is gone. The client no
   * longer follows it. */
  chatLost: [info: { chatId: bigint; error: ErrorFrame }];
  /** An error frame that answers none of this client's requests. */
  serverError: [error: ErrorFrame];
  /** A frame from the server that could not be decoded. */
  invalidFrame: [error: WireError];
}

export type ConnectionState = "idle" | "connecting" | "open" | "waiting" | "closed";

/** A request the server refused with an error frame. */
export class ServerError extends Error {
  constructor(readonly frame: ErrorFrame) {
    super(`${frame.code}: ${frame.reason}`);
    this.name = "ServerError";
  }

  get code(): number {
    return this.frame.code;
  }
}

/** A request that got no answer: the session ended, the client closed, or it timed out. */
export class NoAnswerError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "NoAnswerError";
  }
}

interface Deferred<T> {
  resolve(value: T): void;
  reject(error: Error): void;
}

type Request =
  | { kind: "create_chat"; answer: Deferred<ChatCreated> }
  | { kind: "join"; answer: Deferred<Joined> }
  | { kind: "leave"; answer: Deferred<Left> }
  | { kind: "add_members"; answer: Deferred<MembersChanged> }
  | { kind: "remove_members"; answer: Deferred<MembersChanged> }
  | { kind: "presence"; answer: Deferred<PresenceEntry[]> }
  | { kind: "history"; answer: Deferred<HistoryPage> }
  | { kind: "list_chats"; answer: Deferred<ChatList> }
  | { kind: "sync"; chatId: bigint };

/** A page of backward history: `messages` newest first; `hasMore` says whether older
 * messages precede the last one (ask again with its seq as `beforeSeq`). */
export interface HistoryPage {
  messages: MessageBody[];
  hasMore: boolean;
}

/** `before_seq` that asks for the newest messages of a chat. */
const NEWEST = 0xffff_ffff_ffff_ffffn;

/** Both watermarks of one chat: what the application wants acknowledged and what was
 * written on the current session. */
interface AckMarks {
  delivered: bigint;
  read: bigint;
  deliveredWritten: bigint;
  readWritten: bigint;
}

/** Most requests awaiting an answer at once. */
const MAX_PENDING_REQUESTS = 1000;

const DEFAULTS = {
  tokenCarrier: "subprotocol" as TokenCarrier,
  encoding: "binary" as Encoding,
  reconnect: { initialDelayMs: 500, maxDelayMs: 30_000 },
  outbox: { capacity: 1000, maxInFlight: 50, resendAfterMs: 10_000 },
  requestTimeoutMs: 10_000,
  syncPageSize: LIMITS.MAX_SYNC_PAGE as number,
  autoAckDelivered: true,
  ackDelayMs: 50,
};

export class EdgeClient {
  private readonly events = new Emitter<EdgeEvents>();
  private readonly options: typeof DEFAULTS & { url: string; token: TokenSource; webSocket: SocketFactory };
  private readonly seqs = new SeqTracker();
  private readonly outbox: Outbox;
  private readonly sends = new Map<bigint, Deferred<Sent>>();
  private readonly requests = new Map<bigint, { request: Request; timer: ReturnType<typeof setTimeout> }>();
  private readonly acks = new Map<bigint, AckMarks>();
  private socket: Socket | undefined;
  private welcome: Welcome | undefined;
  private stateNow: ConnectionState = "idle";
  /** Connection failures since the last session started. */
  private failures = 0;
  private lastReceivedAt = 0;
  private heartbeat: ReturnType<typeof setInterval> | undefined;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private outboxTimer: ReturnType<typeof setTimeout> | undefined;
  private ackTimer: ReturnType<typeof setTimeout> | undefined;
  private nonce = 0n;

  constructor(options: EdgeClientOptions) {
    this.options = {
      ...DEFAULTS,
      ...stripUndefined(options),
      url: options.url,
      token: options.token,
      webSocket: options.webSocket ?? globalWebSocket,
      reconnect: { ...DEFAULTS.reconnect, ...options.reconnect },
      outbox: { ...DEFAULTS.outbox, ...options.outbox },
    };
    if (this.options.tokenCarrier === "header" && this.options.webSocket === globalWebSocket) {
      throw new Error("a browser WebSocket cannot send headers: carry the token in the query or the subprotocol");
    }
    const page = this.options.syncPageSize;
    if (!Number.isInteger(page) || page < 1 || page > LIMITS.MAX_SYNC_PAGE) {
      throw new RangeError(`syncPageSize must be 1 to ${LIMITS.MAX_SYNC_PAGE}`);
    }
    this.outbox = new Outbox(this.options.outbox);
  }

  on<K extends keyof EdgeEvents>(event: K, listener: (...args: EdgeEvents[K]) => void): () => void {
    return this.events.on(event, listener);
  }

  get state(): ConnectionState {
    return this.stateNow;
  }

  /** The signed-in user, known once a session has started. */
  get userId(): bigint | undefined {
    return this.welcome?.user_id;
  }

  /** Messages sent and not yet answered by the server. */
  get unsentCount(): number {
    return this.outbox.size;
  }

  /** Every message of `chatId` up to this seq has been handed to the application. */
  heldSeq(chatId: bigint): bigint | undefined {
    return this.seqs.held(chatId);
  }

  /** Starts connecting; the client reconnects by itself until close(). */
  connect(): void {
    if (this.stateNow === "idle") void this.open();
  }

  /** Closes the session for good. Unanswered sends and requests fail with NoAnswerError. */
  close(): void {
    if (this.stateNow === "closed") return;
    this.stateNow = "closed";
    clearTimeout(this.reconnectTimer);
    const socket = this.socket;
    this.sessionEnded();
    socket?.close(CloseCode.NORMAL, "client closed");
    for (const entry of [...this.sends.keys()]) {
      this.outbox.settle(entry);
      this.sends.get(entry)?.reject(new NoAnswerError("the client was closed"));
    }
    this.sends.clear();
  }

  /**
   * Sends `body` to `chatId`. The message keeps one client_msg_id and is written again
   * after a timeout or a reconnect until the server answers; it resolves once stored.
   */
  send(chatId: bigint, body: string): Promise<Sent> {
    return this.append(chatId, "message", 0n, body);
  }

  /** Replaces the body of this user's message at `targetSeq`: a chat entry of its own (the
   * chat's next seq), written again until answered like a send. */
  edit(chatId: bigint, targetSeq: bigint, body: string): Promise<Sent> {
    return this.append(chatId, "edit", targetSeq, body);
  }

  /** Deletes this user's message at `targetSeq` (a chat entry of its own, like an edit). */
  delete(chatId: bigint, targetSeq: bigint): Promise<Sent> {
    return this.append(chatId, "delete", targetSeq, "");
  }

  /** Reacts to any message of the chat with `emoji` (a chat entry of its own). */
  react(chatId: bigint, targetSeq: bigint, emoji: string): Promise<Sent> {
    return this.append(chatId, "react", targetSeq, emoji);
  }

  /** Takes back this user's reaction `emoji` to the message at `targetSeq`. */
  unreact(chatId: bigint, targetSeq: bigint, emoji: string): Promise<Sent> {
    return this.append(chatId, "unreact", targetSeq, emoji);
  }

  private append(chatId: bigint, kind: EntryKind, targetSeq: bigint, body: string): Promise<Sent> {
    if (this.stateNow === "closed") return Promise.reject(new NoAnswerError("the client is closed"));
    const clientMsgId = newClientMsgId();
    // Encoding checks the limits now, so an entry the server would refuse never waits.
    try {
      const entry = this.outbox.add(chatId, clientMsgId, body, kind, targetSeq);
      try {
        this.encode(entryFrame(entry));
      } catch (error) {
        this.outbox.settle(clientMsgId);
        throw error;
      }
    } catch (error) {
      return Promise.reject(error);
    }
    const sent = new Promise<Sent>((resolve, reject) => this.sends.set(clientMsgId, { resolve, reject }));
    this.pumpOutbox();
    return sent;
  }

  /**
   * Creates a chat with this user as its admin: `direct` with one other user (creating it
   * again, by either of the two, answers the existing chat), an invite-only `group`, or a
   * `public_group` that anyone may also join.
   */
  createChat(kind: ChatKind, title: string, members: bigint[]): Promise<ChatCreated> {
    return this.request((client_msg_id) => ({ type: "create_chat", client_msg_id, kind, title, members }), (answer) => ({
      kind: "create_chat",
      answer,
    }));
  }

  /** Joins a public group. An invite-only group refuses with ServerError 4030
   * (`not_member`): a member must add this user instead. */
  join(chatId: bigint): Promise<Joined> {
    return this.request((client_msg_id) => ({ type: "join", client_msg_id, chat_id: chatId }), (answer) => ({
      kind: "join",
      answer,
    }));
  }

  leave(chatId: bigint): Promise<Left> {
    return this.request((client_msg_id) => ({ type: "leave", client_msg_id, chat_id: chatId }), (answer) => ({
      kind: "leave",
      answer,
    }));
  }

  /** Adds `users` to a group this user is a member of (any member may). Resolves with the
   * `members_added` the members get; the users added get `chat_created`. */
  addMembers(chatId: bigint, users: bigint[]): Promise<MembersChanged> {
    return this.request((client_msg_id) => ({ type: "add_members", client_msg_id, chat_id: chatId, users }), (answer) => ({
      kind: "add_members",
      answer,
    }));
  }

  /** Removes `users` from a group this user is an admin of; anyone else gets ServerError
   * 4031 (`forbidden`). Resolves with the `members_removed` the members, the removed
   * included, get. */
  removeMembers(chatId: bigint, users: bigint[]): Promise<MembersChanged> {
    return this.request((client_msg_id) => ({ type: "remove_members", client_msg_id, chat_id: chatId, users }), (answer) => ({
      kind: "remove_members",
      answer,
    }));
  }

  /** The presence of `users`; those who share no chat with this user are always answered
   * as offline and never seen. */
  presence(users: bigint[]): Promise<PresenceEntry[]> {
    return this.request((client_msg_id) => ({ type: "presence_query", client_msg_id, users }), (answer) => ({
      kind: "presence",
      answer,
    }));
  }

  /** Up to `limit` messages of `chatId` before `beforeSeq` (by default the newest ones),
   * newest first: for a chat screen that scrolls back. These pages are the application's;
   * they do not go through the live seq tracking or the `message` events. */
  history(chatId: bigint, beforeSeq: bigint = NEWEST, limit: number = this.options.syncPageSize): Promise<HistoryPage> {
    return this.request(
      (client_msg_id) => ({ type: "sync", client_msg_id, chat_id: chatId, after_seq: 0n, limit, before_seq: beforeSeq }),
      (answer) => ({ kind: "history", answer }),
    );
  }

  /** A page of this user's chats, most recent activity first, each with its last seq, this
   * user's watermarks and unread count. For the next page while `has_more`, pass the last
   * chat of this one as `after`. */
  listChats(limit: number = LIMITS.MAX_CHAT_LIST_PAGE, after?: { last_activity_us: bigint; chat_id: bigint }): Promise<ChatList> {
    return this.request(
      (client_msg_id) => ({
        type: "list_chats",
        client_msg_id,
        limit,
        ...(after && { before_activity_us: after.last_activity_us, before_chat_id: after.chat_id }),
      }),
      (answer) => ({ kind: "list_chats", answer }),
    );
  }

  /** Tells the members that this user is typing (ephemeral; dropped while disconnected). */
  typing(chatId: bigint): void {
    this.write({ type: "typing", chat_id: chatId });
  }

  /** Marks everything in `chatId` up to `seq` read. */
  markRead(chatId: bigint, seq: bigint): void {
    const marks = this.ackMarks(chatId);
    if (seq > marks.read) marks.read = seq;
    this.scheduleAcks();
  }

  /**
   * Follows `chatId`, whose messages up to `heldSeq` the application already has (from
   * an earlier session, say): the client fetches the rest now (if connected) and after
   * every reconnect. Chats the server announces are followed without this.
   */
  follow(chatId: bigint, heldSeq = 0n): void {
    if (this.seqs.held(chatId) !== undefined) return;
    this.seqs.track(chatId, heldSeq);
    if (this.stateNow === "open") this.requestSync(chatId, heldSeq);
  }

  private async open(): Promise<void> {
    this.stateNow = "connecting";
    let token: string;
    try {
      token = typeof this.options.token === "string" ? this.options.token : await this.options.token();
    } catch {
      this.connectionEnded(CloseCode.ABNORMAL, "could not get a token");
      return;
    }
    if (this.stateNow !== "connecting") return;
    const request = carryToken(this.options.url, token, this.options.tokenCarrier, this.options.encoding === "json");
    let socket: Socket | undefined;
    const current = () => socket !== undefined && socket === this.socket;
    try {
      socket = this.options.webSocket(request.url, request.protocols, request.headers, {
        message: (data) => {
          if (current()) this.received(data);
        },
        close: (code, reason) => {
          if (current()) this.connectionEnded(code, reason);
        },
      });
    } catch (error) {
      this.connectionEnded(CloseCode.ABNORMAL, (error as Error).message);
      return;
    }
    this.socket = socket;
  }

  private received(data: ArrayBuffer | string): void {
    this.lastReceivedAt = Date.now();
    let frame: ServerFrame;
    try {
      frame = typeof data === "string" ? serverFrameFromJson(data) : decodeServerFrame(new Uint8Array(data));
    } catch (error) {
      if (!(error instanceof WireError)) throw error;
      this.events.emit("invalidFrame", error);
      return;
    }
    this.dispatch(frame);
  }

  private dispatch(frame: ServerFrame): void {
    switch (frame.type) {
      case "welcome":
        return this.started(frame);
      case "message":
        return this.live(frame);
      case "receipt":
        return this.receipt(frame);
      case "sync_batch":
        return this.syncPage(frame);
      case "chat_created":
        // A user added to a chat with history gets it by this first sync; for a chat just
        // created, the page is empty.
        this.follow(frame.chat_id);
        this.answer(frame.client_msg_id, "create_chat", frame);
        return this.events.emit("chatCreated", frame);
      case "joined":
        if (frame.user_id === this.userId) this.follow(frame.chat_id);
        this.answer(frame.client_msg_id, "join", frame);
        return this.events.emit("joined", frame);
      case "left":
        if (frame.user_id === this.userId) this.unfollow(frame.chat_id);
        this.answer(frame.client_msg_id, "leave", frame);
        return this.events.emit("left", frame);
      case "members_added":
        this.answer(frame.client_msg_id, "add_members", frame);
        return this.events.emit("membersAdded", frame);
      case "members_removed":
        if (this.userId !== undefined && frame.users.includes(this.userId)) this.unfollow(frame.chat_id);
        this.answer(frame.client_msg_id, "remove_members", frame);
        return this.events.emit("membersRemoved", frame);
      case "presence":
        return this.answer(frame.client_msg_id, "presence", frame.users);
      case "chat_list":
        return this.answer(frame.client_msg_id, "list_chats", frame);
      case "typing":
        return this.events.emit("typing", frame);
      case "error":
        return this.serverError(frame);
      case "pong":
        return;
    }
  }

  /** This user is no longer a member of `chatId`: nothing to sync or acknowledge there. */
  private unfollow(chatId: bigint): void {
    this.seqs.forget(chatId);
    this.acks.delete(chatId);
  }

  private started(welcome: Welcome): void {
    this.welcome = welcome;
    this.stateNow = "open";
    this.failures = 0;
    const beat = Math.max(1000, welcome.heartbeat_ms);
    this.heartbeat = setInterval(() => this.beat(beat), beat);
    for (const [chatId, afterSeq] of this.seqs.resume()) this.writeSync(chatId, afterSeq);
    // Whether the last session's acks arrived is unknown; watermarks are safe to repeat.
    for (const marks of this.acks.values()) {
      marks.deliveredWritten = 0n;
      marks.readWritten = 0n;
    }
    this.flushAcks();
    this.pumpOutbox();
    this.events.emit("connected", welcome);
  }

  /** The server pings a silent connection, but browsers cannot see WebSocket pings: an
   * application ping every heartbeat keeps both sides sure the other is there. */
  private beat(intervalMs: number): void {
    if (Date.now() - this.lastReceivedAt > 2 * intervalMs) {
      const socket = this.socket;
      this.connectionEnded(CloseCode.IDLE_TIMEOUT, "the server stopped answering");
      socket?.close();
      return;
    }
    this.nonce += 1n;
    this.write({ type: "ping", nonce: this.nonce });
  }

  private live(message: MessageBody): void {
    const verdict = this.seqs.live(message.chat_id, message.seq);
    if (verdict.accept) this.accepted(message, true);
    if (verdict.syncAfter !== undefined) this.requestSync(message.chat_id, verdict.syncAfter);
  }

  private receipt(receipt: Receipt): void {
    if (receipt.kind === "sent" && receipt.user_id === this.userId) {
      const entry = receipt.client_msg_id === null ? undefined : this.outbox.settle(receipt.client_msg_id);
      if (entry !== undefined) {
        this.sends.get(entry.clientMsgId)?.resolve({ chatId: entry.chatId, clientMsgId: entry.clientMsgId, seq: receipt.seq });
        this.sends.delete(entry.clientMsgId);
        this.ownMessageStored(entry, receipt.seq);
        this.pumpOutbox();
      } else {
        // Sent from another session of this user: the entry itself came just before (the
        // server sends it to this user's other sessions), or a sync fetches it.
        const verdict = this.seqs.seen(receipt.chat_id, receipt.seq);
        if (verdict.syncAfter !== undefined) this.requestSync(receipt.chat_id, verdict.syncAfter);
      }
    }
    if (receipt.kind === "read" && receipt.user_id === this.userId) {
      // This user read the chat on another device: no need to ack up to there again.
      const marks = this.ackMarks(receipt.chat_id);
      if (receipt.seq > marks.read) marks.read = receipt.seq;
      if (receipt.seq > marks.readWritten) marks.readWritten = receipt.seq;
      this.events.emit("ownRead", { chatId: receipt.chat_id, seq: receipt.seq });
    }
    this.events.emit("receipt", receipt);
  }

  /** The server stored one of this session's messages at `seq`: it takes its place in the
   * chat like any message. Its time is this machine's clock; a later sync carries the
   * server's. */
  private ownMessageStored(entry: OutboxEntry, seq: bigint): void {
    const verdict = this.seqs.live(entry.chatId, seq);
    if (verdict.accept) {
      this.accepted(
        {
          chat_id: entry.chatId,
          seq,
          sender: this.userId!,
          client_msg_id: entry.clientMsgId,
          server_time_us: BigInt(Date.now()) * 1000n,
          body: entry.body,
          kind: entry.kind,
          target_seq: entry.targetSeq,
        },
        true,
      );
    }
    if (verdict.syncAfter !== undefined) this.requestSync(entry.chatId, verdict.syncAfter);
  }

  private syncPage(batch: SyncBatch): void {
    const pending = this.requests.get(batch.client_msg_id);
    if (pending?.request.kind === "history") {
      return this.answer(batch.client_msg_id, "history", { messages: batch.messages, hasMore: batch.has_more });
    }
    if (pending?.request.kind === "sync") this.forgetRequest(batch.client_msg_id);
    // This user left the chat or was removed from it while the sync was under way.
    if (this.seqs.held(batch.chat_id) === undefined) return;
    const verdict = this.seqs.page(batch.chat_id, batch.messages, batch.has_more);
    if (verdict.lost !== undefined) {
      const [firstSeq, lastSeq] = verdict.lost;
      this.events.emit("historyLost", { chatId: batch.chat_id, firstSeq, lastSeq });
    }
    for (const message of verdict.accepted) {
      if (message.sender === this.userId && this.outbox.has(message.client_msg_id)) {
        // Stored before the session that sent it ended: the sync is the answer.
        this.outbox.settle(message.client_msg_id);
        this.sends.get(message.client_msg_id)?.resolve({
          chatId: message.chat_id,
          clientMsgId: message.client_msg_id,
          seq: message.seq,
        });
        this.sends.delete(message.client_msg_id);
      }
      this.accepted(message, false);
    }
    if (verdict.syncAfter !== undefined) this.requestSync(batch.chat_id, verdict.syncAfter);
  }

  private accepted(message: MessageBody, live: boolean): void {
    const own = message.sender === this.userId;
    if (this.options.autoAckDelivered && !own) {
      const marks = this.ackMarks(message.chat_id);
      if (message.seq > marks.delivered) marks.delivered = message.seq;
      this.scheduleAcks();
    }
    this.events.emit("message", message, { live, own });
  }

  private serverError(error: ErrorFrame): void {
    const id = error.client_msg_id;
    if (id !== null && this.outbox.has(id)) {
      if (isRetryable(error.code)) {
        this.outbox.retryLater(id, Date.now());
      } else {
        this.outbox.settle(id);
        this.sends.get(id)?.reject(new ServerError(error));
        this.sends.delete(id);
      }
      this.pumpOutbox();
      return;
    }
    const pending = id === null ? undefined : this.requests.get(id);
    if (pending === undefined || id === null) {
      this.events.emit("serverError", error);
      return;
    }
    this.forgetRequest(id);
    const request = pending.request;
    if (request.kind === "sync") {
      this.seqs.syncAbandoned(request.chatId);
      if (error.code === ErrorCode.NOT_MEMBER || error.code === ErrorCode.UNKNOWN_CHAT) {
        this.unfollow(request.chatId);
        this.events.emit("chatLost", { chatId: request.chatId, error });
      } else {
        this.events.emit("serverError", error);
      }
    } else {
      request.answer.reject(new ServerError(error));
    }
  }

  private request<T>(frame: (clientMsgId: bigint) => ClientFrame, make: (answer: Deferred<T>) => Request): Promise<T> {
    if (this.stateNow !== "open") return Promise.reject(new NoAnswerError(`the client is ${this.stateNow}, not open`));
    if (this.requests.size >= MAX_PENDING_REQUESTS) {
      return Promise.reject(new NoAnswerError(`${MAX_PENDING_REQUESTS} requests already await an answer`));
    }
    const clientMsgId = newClientMsgId();
    return new Promise<T>((resolve, reject) => {
      const written = frame(clientMsgId);
      this.encode(written);
      this.track(clientMsgId, make({ resolve, reject }));
      this.write(written);
    });
  }

  private requestSync(chatId: bigint, afterSeq: bigint): void {
    if (this.stateNow !== "open") {
      // The next session's start syncs every chat.
      this.seqs.syncAbandoned(chatId);
      return;
    }
    this.writeSync(chatId, afterSeq);
  }

  private writeSync(chatId: bigint, afterSeq: bigint): void {
    const clientMsgId = newClientMsgId();
    this.track(clientMsgId, { kind: "sync", chatId });
    this.write({ type: "sync", client_msg_id: clientMsgId, chat_id: chatId, after_seq: afterSeq, limit: this.options.syncPageSize });
  }

  private track(clientMsgId: bigint, request: Request): void {
    const timer = setTimeout(() => {
      this.forgetRequest(clientMsgId);
      if (request.kind === "sync") this.seqs.syncAbandoned(request.chatId);
      else request.answer.reject(new NoAnswerError(`no answer within ${this.options.requestTimeoutMs} ms`));
    }, this.options.requestTimeoutMs);
    this.requests.set(clientMsgId, { request, timer });
  }

  /** Resolves the request `clientMsgId` with `value` if it is one of this client's of `kind`
   * (the other members of a chat get the same frame with the requester's id). */
  private answer(clientMsgId: bigint, kind: Request["kind"], value: unknown): void {
    const pending = this.requests.get(clientMsgId);
    if (pending === undefined || pending.request.kind !== kind || pending.request.kind === "sync") return;
    this.forgetRequest(clientMsgId);
    (pending.request.answer as Deferred<unknown>).resolve(value);
  }

  private forgetRequest(clientMsgId: bigint): void {
    clearTimeout(this.requests.get(clientMsgId)?.timer);
    this.requests.delete(clientMsgId);
  }

  private ackMarks(chatId: bigint): AckMarks {
    let marks = this.acks.get(chatId);
    if (marks === undefined) {
      marks = { delivered: 0n, read: 0n, deliveredWritten: 0n, readWritten: 0n };
      this.acks.set(chatId, marks);
    }
    return marks;
  }

  private scheduleAcks(): void {
    if (this.ackTimer !== undefined) return;
    this.ackTimer = setTimeout(() => {
      this.ackTimer = undefined;
      this.flushAcks();
    }, this.options.ackDelayMs);
  }

  private flushAcks(): void {
    if (this.stateNow !== "open") return;
    for (const [chatId, marks] of this.acks) {
      if (marks.delivered > marks.deliveredWritten) {
        this.write({ type: "ack_delivered", chat_id: chatId, seq: marks.delivered });
        marks.deliveredWritten = marks.delivered;
      }
      if (marks.read > marks.readWritten) {
        this.write({ type: "ack_read", chat_id: chatId, seq: marks.read });
        marks.readWritten = marks.read;
      }
    }
  }

  private pumpOutbox(): void {
    clearTimeout(this.outboxTimer);
    this.outboxTimer = undefined;
    if (this.stateNow !== "open") return;
    const now = Date.now();
    for (const entry of this.outbox.due(now)) {
      this.write(entryFrame(entry));
    }
    const next = this.outbox.nextDueAt();
    if (next !== undefined) this.outboxTimer = setTimeout(() => this.pumpOutbox(), Math.max(0, next - now));
  }

  private encode(frame: ClientFrame): Uint8Array | string {
    return this.options.encoding === "json" ? clientFrameToJson(frame) : encodeClientFrame(frame);
  }

  private write(frame: ClientFrame): void {
    if (this.stateNow !== "open" || this.socket === undefined) return;
    this.socket.send(this.encode(frame));
  }

  /** Stops everything that belongs to one session. */
  private sessionEnded(): void {
    this.socket = undefined;
    clearInterval(this.heartbeat);
    clearTimeout(this.outboxTimer);
    clearTimeout(this.ackTimer);
    this.heartbeat = this.outboxTimer = this.ackTimer = undefined;
    this.outbox.connectionLost();
    for (const [clientMsgId, { request }] of [...this.requests]) {
      this.forgetRequest(clientMsgId);
      if (request.kind === "sync") this.seqs.syncAbandoned(request.chatId);
      else request.answer.reject(new NoAnswerError("the session ended before the answer"));
    }
  }

  private connectionEnded(code: number, reason: string): void {
    if (this.stateNow === "closed") return;
    const hadSession = this.stateNow === "open";
    this.sessionEnded();
    const decision = afterClose(
      code,
      hadSession ? 0 : this.failures,
      typeof this.options.token !== "string",
      this.options.reconnect,
      Math.random,
    );
    this.failures += 1;
    if (!decision.reconnect) {
      this.events.emit("disconnected", { code, reason: decision.reason, reconnectInMs: undefined });
      this.close();
      return;
    }
    this.stateNow = "waiting";
    this.events.emit("disconnected", { code, reason, reconnectInMs: decision.delayMs });
    this.reconnectTimer = setTimeout(() => void this.open(), decision.delayMs);
  }
}

/** The frame that writes an outbox entry: a send, or the edit, delete or reaction it is. */
function entryFrame(entry: OutboxEntry): ClientFrame {
  const ids = { chat_id: entry.chatId, client_msg_id: entry.clientMsgId };
  const target = { ...ids, target_seq: entry.targetSeq };
  switch (entry.kind) {
    case "message":
      return { type: "send", ...ids, body: entry.body };
    case "edit":
      return { type: "edit", ...target, body: entry.body };
    case "delete":
      return { type: "delete", ...target };
    case "react":
    case "unreact":
      return { type: entry.kind, ...target, emoji: entry.body };
  }
}

/** A client_msg_id: random below 2^53, so that it is unique across this user's sessions and
 * devices and exact even in JSON (wire/PROTOCOL.md, "Client frames"). */
function newClientMsgId(): bigint {
  const random = globalThis.crypto?.getRandomValues(new Uint32Array(2));
  const high = random ? random[0]! & 0x1f_ffff : Math.floor(Math.random() * 0x20_0000);
  const low = random ? random[1]! : Math.floor(Math.random() * 0x1_0000_0000);
  return (BigInt(high) << 32n) | BigInt(low) || 1n;
}

function stripUndefined<T extends object>(value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as Partial<T>;
}
