// What the page knows of the user's chats, without the DOM: titles, members and admin,
// messages in seq order with their edits, deletes and reactions folded in, membership
// notices, receipts as ticks, unread counts (the server's, from list_chats, moved on by what
// arrives and by this user's reads on any device), typing, how far history was loaded back,
// and what survives a reload (members and creators, which list_chats does not carry, in
// localStorage).

import { ChatEntries } from "edge-client";
import type { ChatCreated, ChatKind, ChatSummary, MembersChanged, MessageBody, MessageView, Receipt } from "edge-client";

export type Ticks = "pending" | "sent" | "delivered" | "read";

/** A change of the chat's members, shown among the messages where it happened. */
export interface Notice {
  /** The chat's last message when the change was heard: the notice follows it. */
  afterSeq: bigint;
  text: string;
}

/** A message, or a notice placed after the message `at`. */
export type TimelineEntry = { at: bigint; message: MessageView } | { at: bigint; notice: Notice };

export interface Chat {
  readonly id: bigint;
  kind: ChatKind | undefined;
  title: string;
  /** The creator, who is the group's admin while a member; unknown for a chat joined. */
  creator: bigint | undefined;
  /** Members as far as this page has heard (chat_created, joined, left, members_added,
   * members_removed, senders). */
  members: bigint[];
  /** Messages and the events about them, by seq. */
  entries: ChatEntries;
  /** The chat's newest entry as far as the page knows (list_chats, or what arrived). */
  lastSeq: bigint;
  lastActivityUs: bigint;
  /** Backward history: the oldest seq a page brought, and whether older ones remain. */
  history: { oldest: bigint | undefined; more: boolean; loading: boolean };
  /** Changes of the members heard while the page was open, oldest first. */
  notices: Notice[];
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

/** Most notices kept per chat. */
const MAX_NOTICES_PER_CHAT = 100;
/** A typing indicator shows this long after the last typing event. */
export const TYPING_SHOWS_MS = 4000;

interface Saved {
  chats: { id: string; kind?: ChatKind; title: string; creator?: string; members: string[]; readMark: string }[];
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
      restored.creator = chat.creator === undefined ? undefined : BigInt(chat.creator);
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
        creator: undefined,
        members: [],
        entries: new ChatEntries(),
        lastSeq: 0n,
        lastActivityUs: 0n,
        history: { oldest: undefined, more: true, loading: false },
        notices: [],
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

  /** A chat as list_chats gives it: its title, last seq, activity and this user's read mark. */
  summary(summary: ChatSummary): void {
    const chat = this.chat(summary.chat_id);
    chat.kind = summary.kind;
    chat.title = summary.title;
    if (summary.last_seq > chat.lastSeq) chat.lastSeq = summary.last_seq;
    if (summary.last_activity_us > chat.lastActivityUs) chat.lastActivityUs = summary.last_activity_us;
    if (summary.read_seq > chat.readMark) chat.readMark = summary.read_seq;
    this.save();
  }

  /** This user read the chat up to `seq` on another device. */
  readElsewhere(chatId: bigint, seq: bigint): void {
    const chat = this.chat(chatId);
    if (seq > chat.readMark) chat.readMark = seq;
    this.save();
  }

  /** The chat's messages as they show now, oldest first. */
  messages(chat: Chat): MessageView[] {
    return chat.entries.all();
  }

  created(event: ChatCreated): void {
    const chat = this.chat(event.chat_id);
    chat.kind = event.kind;
    chat.title = event.title;
    chat.creator = event.creator;
    chat.members = [...event.members];
    this.save();
  }

  joined(chatId: bigint, user: bigint): void {
    const chat = this.chat(chatId);
    if (!chat.members.includes(user)) {
      chat.members.push(user);
      this.notice(chat, `${this.person(user, true)} joined`);
    }
    this.save();
  }

  left(chatId: bigint, user: bigint): void {
    if (user === this.me) return this.forget(chatId);
    const chat = this.chat(chatId);
    chat.members = chat.members.filter((m) => m !== user);
    this.notice(chat, `${this.person(user, true)} left`);
    this.save();
  }

  membersAdded(event: MembersChanged): void {
    const chat = this.chat(event.chat_id);
    chat.members = [...new Set([...chat.members, ...event.users])];
    this.notice(chat, `${this.person(event.by, true)} added ${this.people(event.users)}`);
    this.save();
  }

  /** Whether this user was among the removed; the chat is then gone from the page. */
  membersRemoved(event: MembersChanged): boolean {
    if (event.users.includes(this.me)) {
      this.forget(event.chat_id);
      return true;
    }
    const chat = this.chat(event.chat_id);
    chat.members = chat.members.filter((m) => !event.users.includes(m));
    this.notice(chat, `${this.person(event.by, true)} removed ${this.people(event.users)}`);
    this.save();
    return false;
  }

  /** The chat's messages with its notices in between, each notice after the message it
   * was heard after. */
  timeline(chat: Chat): TimelineEntry[] {
    const entries: TimelineEntry[] = [
      ...this.messages(chat).map((message) => ({ at: message.seq, message })),
      ...chat.notices.map((notice) => ({ at: notice.afterSeq, notice })),
    ];
    // The sort is stable, so notices of one place keep the order they were heard in.
    return entries.sort((a, b) => (a.at !== b.at ? (a.at < b.at ? -1 : 1) : Number("notice" in a) - Number("notice" in b)));
  }

  /** The chat is no longer this user's (left, removed, or gone): it leaves the page. */
  forget(chatId: bigint): void {
    this.chats.delete(chatId);
    this.save();
  }

  /** Whether this user may remove members: the admin of a group who is still a member. */
  isAdmin(chat: Chat): boolean {
    return chat.kind !== "direct" && chat.creator === this.me && chat.members.includes(this.me);
  }

  /** An entry, live from the SDK or from a history page (in any order, each seq once). */
  message(entry: MessageBody): void {
    const chat = this.chat(entry.chat_id);
    chat.entries.add(entry);
    if (entry.seq > chat.lastSeq) chat.lastSeq = entry.seq;
    if (entry.server_time_us > chat.lastActivityUs) chat.lastActivityUs = entry.server_time_us;
    if (!chat.members.includes(entry.sender)) chat.members.push(entry.sender);
    chat.typing.delete(entry.sender);
  }

  /** A page of backward history: its entries, and how far back the chat is loaded. */
  historyPage(chatId: bigint, page: readonly MessageBody[], hasMore: boolean): void {
    const chat = this.chat(chatId);
    for (const entry of page) {
      chat.entries.add(entry);
      if (chat.history.oldest === undefined || entry.seq < chat.history.oldest) chat.history.oldest = entry.seq;
      if (entry.seq > chat.lastSeq) chat.lastSeq = entry.seq;
    }
    chat.history.more = hasMore;
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

  /** The server's count: the chat's entries above this user's read mark. */
  unread(chat: Chat): number {
    return Number(chat.lastSeq > chat.readMark ? chat.lastSeq - chat.readMark : 0n);
  }

  /** Marks the chat read up to its last entry; the seq to acknowledge, if that moved. */
  markRead(chat: Chat): bigint | undefined {
    const last = chat.lastSeq;
    if (last <= chat.readMark) return undefined;
    chat.readMark = last;
    this.save();
    return last;
  }

  /** The ticks of one of this user's stored messages: read or delivered once every other
   * member (as far as the page knows them) has come that far. */
  ticks(chat: Chat, message: { seq: bigint }): Ticks {
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

  /** How notices name a user: "you" for this one. */
  person(user: bigint, first = false): string {
    if (user !== this.me) return `User ${user}`;
    return first ? "You" : "you";
  }

  /** The chat list's and the chat header's name. */
  name(chat: Chat): string {
    if (chat.title) return chat.title;
    const others = this.others(chat);
    if (chat.kind === "direct" && others.length === 1) return `User ${others[0]}`;
    return `Chat ${chat.id}`;
  }

  /** Chats by their latest activity, newest first. */
  ordered(): Chat[] {
    const latest = (chat: Chat) => chat.lastActivityUs;
    return [...this.chats.values()].sort((a, b) => (latest(b) > latest(a) ? 1 : latest(b) < latest(a) ? -1 : Number(b.id - a.id)));
  }

  private people(users: readonly bigint[]): string {
    return users.map((user) => this.person(user)).join(", ");
  }

  private notice(chat: Chat, text: string): void {
    chat.notices.push({ afterSeq: chat.lastSeq, text });
    if (chat.notices.length > MAX_NOTICES_PER_CHAT) chat.notices.shift();
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
        ...(chat.creator === undefined ? {} : { creator: String(chat.creator) }),
        members: chat.members.map(String),
        readMark: String(chat.readMark),
      })),
    };
    this.storage?.setItem(this.key(), JSON.stringify(saved));
  }
}
