import type { EntryKind } from "./frames.js";

// The outbox, without I/O: chat entries the application sent (messages, and edits, deletes
// and reactions) that the server has not answered
// yet. Each keeps its client_msg_id for life, so writing it again (after a timeout or a
// reconnect) is safe: the server stores a (sender, client_msg_id) once and answers a resend
// with the stored seq. Bounded in entries, and in entries written but unanswered at once,
// which also keeps a reconnect's resends under the gateway's frame rate limit.

export interface OutboxEntry {
  readonly chatId: bigint;
  readonly clientMsgId: bigint;
  /** The text, an edit's new text, a reaction's emoji; empty for a delete. */
  readonly body: string;
  readonly kind: EntryKind;
  /** The message an event is about; 0 for a message. */
  readonly targetSeq: bigint;
  /** Times written to a socket. */
  attempts: number;
  /** When it was last written (ms), or undefined while it waits to be. */
  writtenAt: number | undefined;
  /** Not to be written before this time (ms): set after a retryable error. */
  notBefore: number;
}

export interface OutboxOptions {
  /** Most messages waiting for an answer; send() fails beyond it. */
  capacity: number;
  /** Most messages written and unanswered at once. */
  maxInFlight: number;
  /** A written message unanswered this long (ms) is written again. */
  resendAfterMs: number;
}

export class OutboxFullError extends Error {
  constructor(capacity: number) {
    super(`the outbox holds ${capacity} unanswered messages; wait for answers before sending more`);
    this.name = "OutboxFullError";
  }
}

export class Outbox {
  private readonly entries = new Map<bigint, OutboxEntry>();

  constructor(private readonly options: OutboxOptions) {}

  get size(): number {
    return this.entries.size;
  }

  add(chatId: bigint, clientMsgId: bigint, body: string, kind: EntryKind = "message", targetSeq = 0n): OutboxEntry {
    if (this.entries.size >= this.options.capacity) throw new OutboxFullError(this.options.capacity);
    const entry: OutboxEntry = { chatId, clientMsgId, body, kind, targetSeq, attempts: 0, writtenAt: undefined, notBefore: 0 };
    this.entries.set(clientMsgId, entry);
    return entry;
  }

  /** The entries to write now, in the order they were sent, marked as written at `now`. */
  due(now: number): OutboxEntry[] {
    let inFlight = 0;
    for (const entry of this.entries.values()) {
      if (entry.writtenAt !== undefined && now - entry.writtenAt < this.options.resendAfterMs) inFlight += 1;
    }
    const due: OutboxEntry[] = [];
    for (const entry of this.entries.values()) {
      if (inFlight >= this.options.maxInFlight) break;
      const waiting = entry.writtenAt === undefined || now - entry.writtenAt >= this.options.resendAfterMs;
      if (waiting && now >= entry.notBefore) {
        entry.writtenAt = now;
        entry.attempts += 1;
        inFlight += 1;
        due.push(entry);
      }
    }
    return due;
  }

  /** The earliest time (ms) an entry becomes due, if any entry waits. */
  nextDueAt(): number | undefined {
    let next: number | undefined;
    for (const entry of this.entries.values()) {
      const at = entry.writtenAt === undefined ? entry.notBefore : Math.max(entry.notBefore, entry.writtenAt + this.options.resendAfterMs);
      next = next === undefined ? at : Math.min(next, at);
    }
    return next;
  }

  /** The connection ended: nothing written on it counts as in flight any more. */
  connectionLost(): void {
    for (const entry of this.entries.values()) entry.writtenAt = undefined;
  }

  /** The server answered the message (stored, or refused for good): it leaves the outbox. */
  settle(clientMsgId: bigint): OutboxEntry | undefined {
    const entry = this.entries.get(clientMsgId);
    this.entries.delete(clientMsgId);
    return entry;
  }

  /** The server could not take the message now (rate limited, or failing): write it again
   * later, a second after the first refusal, doubling up to half a minute. */
  retryLater(clientMsgId: bigint, now: number): void {
    const entry = this.entries.get(clientMsgId);
    if (entry === undefined) return;
    entry.writtenAt = undefined;
    entry.notBefore = now + Math.min(30_000, 1000 * 2 ** Math.min(Math.max(entry.attempts - 1, 0), 5));
  }

  has(clientMsgId: bigint): boolean {
    return this.entries.has(clientMsgId);
  }
}
