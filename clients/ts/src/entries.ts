// The state of a chat's messages from its entries, without I/O (wire/PROTOCOL.md, "Chat
// entries"): history is a log, and a message's state is its entry with the later edits,
// deletes and reactions that target it applied in seq order. Entries may come in any order
// (a backward history page brings events before the older messages they are about), so
// each message's state is folded again from what is held whenever one of its entries
// arrives.

import type { MessageBody } from "./frames.js";

/** A message as the chat shows it now. */
export interface MessageView {
  seq: bigint;
  sender: bigint;
  client_msg_id: bigint;
  server_time_us: bigint;
  /** The last edit's text, or the message's own. Empty once deleted. */
  body: string;
  edited: boolean;
  deleted: boolean;
  /** Each reaction held now, with the users who hold it, in the order they came. */
  reactions: Map<string, bigint[]>;
}

/** One chat's messages and the events about them, held by seq. */
export class ChatEntries {
  private readonly messages = new Map<bigint, MessageBody>();
  /** Events by the seq of the message they are about, each once. */
  private readonly events = new Map<bigint, Map<bigint, MessageBody>>();
  private readonly views = new Map<bigint, MessageView>();

  /** Takes one entry; returns the seq of the message whose view changed, if one did (an
   * event about a message not held yet changes nothing until the message comes). */
  add(entry: MessageBody): bigint | undefined {
    if (entry.kind === "message") {
      if (this.messages.has(entry.seq)) return undefined;
      this.messages.set(entry.seq, entry);
      return this.refold(entry.seq);
    }
    let events = this.events.get(entry.target_seq);
    if (events === undefined) {
      events = new Map();
      this.events.set(entry.target_seq, events);
    }
    if (events.has(entry.seq)) return undefined;
    events.set(entry.seq, entry);
    return this.messages.has(entry.target_seq) ? this.refold(entry.target_seq) : undefined;
  }

  view(seq: bigint): MessageView | undefined {
    return this.views.get(seq);
  }

  /** Every message held, oldest first. */
  all(): MessageView[] {
    return [...this.views.values()].sort((a, b) => (a.seq < b.seq ? -1 : a.seq > b.seq ? 1 : 0));
  }

  private refold(seq: bigint): bigint {
    const message = this.messages.get(seq)!;
    const view: MessageView = {
      seq,
      sender: message.sender,
      client_msg_id: message.client_msg_id,
      server_time_us: message.server_time_us,
      body: message.body,
      edited: false,
      deleted: false,
      reactions: new Map(),
    };
    const events = [...(this.events.get(seq)?.values() ?? [])].sort((a, b) => (a.seq < b.seq ? -1 : 1));
    for (const event of events) {
      switch (event.kind) {
        case "edit":
          view.body = event.body;
          view.edited = true;
          break;
        case "delete":
          view.body = "";
          view.deleted = true;
          break;
        case "react": {
          const users = view.reactions.get(event.body) ?? [];
          if (!users.includes(event.sender)) users.push(event.sender);
          view.reactions.set(event.body, users);
          break;
        }
        case "unreact": {
          const users = (view.reactions.get(event.body) ?? []).filter((u) => u !== event.sender);
          if (users.length === 0) view.reactions.delete(event.body);
          else view.reactions.set(event.body, users);
          break;
        }
      }
    }
    this.views.set(seq, view);
    return seq;
  }
}
