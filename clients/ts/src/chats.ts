// Per-chat seq tracking, without I/O: which messages to hand to the application (each chat's
// messages once, in seq order) and when to ask the server for history. The client feeds it
// live messages, its own sent receipts and sync pages; it answers with what to accept and
// which sync to send. Nothing is buffered: a message beyond a gap is dropped and fetched
// again by the sync the gap starts, so memory per chat is a few numbers.

import type { MessageBody } from "./frames.js";

/** What to do with one live message (or one of our own sends, stored at `seq`). */
export interface LiveVerdict {
  /** Hand it to the application: it is the next seq of its chat. */
  accept: boolean;
  /** Send a sync of the chat from this seq (exclusive): a gap was found. */
  syncAfter?: bigint;
}

/** What to do with one sync page. */
export interface PageVerdict {
  /** The page's messages the application has not had yet, in seq order. */
  accepted: MessageBody[];
  /** Send the next sync of the chat from this seq (exclusive). */
  syncAfter?: bigint;
  /** Seqs the server no longer holds (its history was trimmed), as [first, last]. */
  lost?: [bigint, bigint];
}

interface ChatSeqs {
  /** Every message up to this seq has been accepted. */
  contiguous: bigint;
  /** The highest seq the server has shown, live or in a receipt. */
  highestSeen: bigint;
  /** A sync of this chat is in flight. */
  syncing: boolean;
  /** The highest seq a finished sync was repeated for, so a seq the server never returns
   * cannot make the client sync forever. */
  repeatedFor: bigint;
}

export class SeqTracker {
  private readonly chats = new Map<bigint, ChatSeqs>();

  /** Starts tracking `chatId` with everything up to `seq` already held (0: nothing). */
  track(chatId: bigint, seq = 0n): void {
    if (!this.chats.has(chatId)) {
      this.chats.set(chatId, { contiguous: seq, highestSeen: seq, syncing: false, repeatedFor: 0n });
    }
  }

  forget(chatId: bigint): void {
    this.chats.delete(chatId);
  }

  /** Every message of `chatId` up to this seq has been accepted. */
  held(chatId: bigint): bigint | undefined {
    return this.chats.get(chatId)?.contiguous;
  }

  chatIds(): bigint[] {
    return [...this.chats.keys()];
  }

  /** A live message, or a sent receipt for one of ours. An unknown chat starts at 0, so its
   * first message makes the client fetch its history. */
  live(chatId: bigint, seq: bigint): LiveVerdict {
    this.track(chatId);
    const chat = this.chats.get(chatId)!;
    if (seq > chat.highestSeen) chat.highestSeen = seq;
    if (seq <= chat.contiguous) return { accept: false };
    if (seq === chat.contiguous + 1n) {
      chat.contiguous = seq;
      return { accept: true };
    }
    return this.startSync(chat);
  }

  /** A seq the server shows without the message (a sent receipt of another session of
   * this user): held already, or fetched by a sync. */
  seen(chatId: bigint, seq: bigint): LiveVerdict {
    this.track(chatId);
    const chat = this.chats.get(chatId)!;
    if (seq > chat.highestSeen) chat.highestSeen = seq;
    return seq <= chat.contiguous ? { accept: false } : this.startSync(chat);
  }

  /** A page answering a sync of `chatId`. */
  page(chatId: bigint, messages: readonly MessageBody[], hasMore: boolean): PageVerdict {
    this.track(chatId);
    const chat = this.chats.get(chatId)!;
    const accepted: MessageBody[] = [];
    let lost: [bigint, bigint] | undefined;
    for (const message of messages) {
      if (message.seq <= chat.contiguous) continue;
      if (message.seq > chat.contiguous + 1n && lost === undefined) {
        lost = [chat.contiguous + 1n, message.seq - 1n];
      }
      chat.contiguous = message.seq;
      accepted.push(message);
    }
    if (chat.contiguous > chat.highestSeen) chat.highestSeen = chat.contiguous;
    chat.syncing = false;
    const verdict: PageVerdict = { accepted };
    if (lost !== undefined) verdict.lost = lost;
    // A page without news cannot lead anywhere: the next one would be the same.
    const progressed = accepted.length > 0;
    if (hasMore && progressed) {
      chat.syncing = true;
      verdict.syncAfter = chat.contiguous;
    } else if (chat.highestSeen > chat.contiguous && chat.repeatedFor < chat.highestSeen) {
      // Something seen live was not stored yet when the page was read: look once more.
      chat.repeatedFor = chat.highestSeen;
      chat.syncing = true;
      verdict.syncAfter = chat.contiguous;
    }
    return verdict;
  }

  /** The sync of `chatId` failed or its session ended: the next gap starts another. */
  syncAbandoned(chatId: bigint): void {
    const chat = this.chats.get(chatId);
    if (chat !== undefined) chat.syncing = false;
  }

  /** After a reconnect: every chat must sync from what it holds, since anything may have
   * been missed while the connection was down. */
  resume(): [chatId: bigint, afterSeq: bigint][] {
    return [...this.chats].map(([chatId, chat]) => {
      chat.syncing = true;
      return [chatId, chat.contiguous];
    });
  }

  private startSync(chat: ChatSeqs): LiveVerdict {
    if (chat.syncing) return { accept: false };
    chat.syncing = true;
    return { accept: false, syncAfter: chat.contiguous };
  }
}
