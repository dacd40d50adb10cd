// What the page knows of the user's chats, without the DOM: titles and members, messages in
// seq order, receipts as ticks, unread counts, typing, and what survives a reload (the chats
// and the read marks, in localStorage, since the protocol cannot list a user's chats yet).

import type { ChatCreated, ChatKind, MessageBody, Receipt } from "edge-client";

export type Ticks = "pending" | "sent" | "delivered" | "read";

export interface Chat {
  readonly id: bigint;
  kind: ChatKind | undefined;
  title: string;
  /** Members as far as this page has heard (chat_created, joined, left). */
  members: bigint[];
  messages: MessageBody[];
  /** This user's messages not yet stored, by a page-local key. */
  pending: Map<number, { body: string; error?: string }>;
  /** Watermarks of the other members. */
  delivered: Map<bigint, bigint>;
  read: Map<bigint, bigint>;
  /** Everything up to this seq has been read by this user. */
  readMark: bigint;
  /** Who is typing, until when (ms). */
  typing: Map<bigint, number>;
}

/** Most messages kept per chat; older ones leave the page (the server keeps them). */
const MAX_MESSAGES_PER_CHAT = 2000;
/** A typing indicator shows this long after the last typing event. */
export const TYPING_SHOWS_MS = 4000;

interface Saved {
  chats: { id: string; kind?: ChatKind; title: string; members: string[]; readMark: string }[];
}

export class ChatStore {
  readonly chats = new Map<bigint, Chat>();

  constructor(
    readonly me: bigint,
    private readonly storage: Pick<Storage, "getItem" | "setItem"> | undefined,
  ) {
    const saved = storage?.getItem(this.key());
    if (!saved) return;
    for (const chat of (JSON.parse(saved) as Saved).chats) {
      const restored = this.chat(BigInt(chat.id));
      restored.kind = chat.kind;
      restored.title = chat.title;
      restored.members = chat.members.map(BigInt);
      restored.readMark = BigInt(chat.readMark);
    }
  }

  chat(id: bigint): Chat {
    let chat = this.chats.get(id);
    if (chat === undefined) {
      chat = {
        id,
        kind: undefined,
        title: "",
        members: [],
        messages: [],
        pending: new Map(),
        delivered: new Map(),
        read: new Map(),
        readMark: 0n,
        typing: new Map(),
      };
      this.chats.set(id, chat);
    }
    return chat;
  }

  created(event: ChatCreated): void {
    const chat = this.chat(event.chat_id);
    chat.kind = event.kind;
    chat.title = event.title;
    chat.members = [...event.members];
    this.save();
  }

  joined(chatId: bigint, user: bigint): void {
    const chat = this.chat(chatId);
    if (!chat.members.includes(user)) chat.members.push(user);
    this.save();
  }

  left(chatId: bigint, user: bigint): void {
    if (user === this.me) {
      this.chats.delete(chatId);
    } else {
      const chat = this.chat(chatId);
      chat.members = chat.members.filter((m) => m !== user);
    }
    this.save();
  }

  /** A message from the SDK: each (chat, seq) once, in seq order. */
  message(message: MessageBody): void {
    const chat = this.chat(message.chat_id);
    chat.messages.push(message);
    if (chat.messages.length > MAX_MESSAGES_PER_CHAT) chat.messages.shift();
    if (!chat.members.includes(message.sender)) chat.members.push(message.sender);
    chat.typing.delete(message.sender);
  }

  receipt(receipt: Receipt): void {
    if (receipt.kind === "sent") return;
    const marks = this.chat(receipt.chat_id)[receipt.kind];
    if (receipt.seq > (marks.get(receipt.user_id) ?? 0n)) marks.set(receipt.user_id, receipt.seq);
  }

  typing(chatId: bigint, user: bigint, now: number): void {
    this.chat(chatId).typing.set(user, now + TYPING_SHOWS_MS);
  }

  whoIsTyping(chat: Chat, now: number): bigint[] {
    return [...chat.typing].filter(([, until]) => until > now).map(([user]) => user);
  }

  unread(chat: Chat): number {
    return chat.messages.filter((m) => m.sender !== this.me && m.seq > chat.readMark).length;
  }

  /** Marks the chat read up to its last message; the seq to acknowledge, if that moved. */
  markRead(chat: Chat): bigint | undefined {
    const last = chat.messages.at(-1)?.seq ?? 0n;
    if (last <= chat.readMark) return undefined;
    chat.readMark = last;
    this.save();
    return last;
  }

  /** The ticks of one of this user's stored messages: read or delivered once every other
   * member (as far as the page knows them) has come that far. */
  ticks(chat: Chat, message: MessageBody): Ticks {
    const others = this.others(chat);
    const reached = (marks: Map<bigint, bigint>) =>
      others.length > 0 && others.every((user) => (marks.get(user) ?? 0n) >= message.seq);
    if (reached(chat.read)) return "read";
    if (reached(chat.delivered)) return "delivered";
    return "sent";
  }

  others(chat: Chat): bigint[] {
    const known = chat.members.length > 0 ? chat.members : [...chat.delivered.keys()];
    return known.filter((user) => user !== this.me);
  }

  /** The name the chat list shows. */
  name(chat: Chat): string {
    if (chat.title) return chat.title;
    const others = this.others(chat);
    if (chat.kind === "direct" && others.length === 1) return `User ${others[0]}`;
    return `Chat ${chat.id}`;
  }

  /** Chats by their latest message, newest first. */
  ordered(): Chat[] {
    const latest = (chat: Chat) => chat.messages.at(-1)?.server_time_us ?? 0n;
    return [...this.chats.values()].sort((a, b) => (latest(b) > latest(a) ? 1 : latest(b) < latest(a) ? -1 : Number(b.id - a.id)));
  }

  private key(): string {
    return `edge.chats.${this.me}`;
  }

  private save(): void {
    const saved: Saved = {
      chats: [...this.chats.values()].map((chat) => ({
        id: String(chat.id),
        ...(chat.kind ? { kind: chat.kind } : {}),
        title: chat.title,
        members: chat.members.map(String),
        readMark: String(chat.readMark),
      })),
    };
    this.storage?.setItem(this.key(), JSON.stringify(saved));
  }
}
