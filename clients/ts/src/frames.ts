// The frames of both directions, typed. Field names are the protocol's (wire/PROTOCOL.md),
// and every u64 is a bigint, so ids stay exact in both encodings or fail loudly (see json.ts).

/** `group` is invite-only (members add members); anyone may also join a `public_group`. */
export type ChatKind = "direct" | "group" | "public_group";
export type ReceiptKind = "sent" | "delivered" | "read";
/** What a chat entry is: a message, or an event about the earlier message at `target_seq`
 * (wire/PROTOCOL.md, "Chat entries"). */
export type EntryKind = "message" | "edit" | "delete" | "react" | "unreact";

// Client to server.

export interface CreateChat {
  type: "create_chat";
  client_msg_id: bigint;
  kind: ChatKind;
  title: string;
  members: bigint[];
}
export interface Join {
  type: "join";
  client_msg_id: bigint;
  chat_id: bigint;
}
export interface Leave {
  type: "leave";
  client_msg_id: bigint;
  chat_id: bigint;
}
/** Users to add to a group (any member may) or to remove from it (admins only). */
export interface MemberChange {
  client_msg_id: bigint;
  chat_id: bigint;
  users: bigint[];
}
export interface AddMembers extends MemberChange {
  type: "add_members";
}
export interface RemoveMembers extends MemberChange {
  type: "remove_members";
}
export interface Send {
  type: "send";
  chat_id: bigint;
  client_msg_id: bigint;
  body: string;
}
/** Replaces the body of one's own message at `target_seq`. */
export interface Edit {
  type: "edit";
  chat_id: bigint;
  client_msg_id: bigint;
  target_seq: bigint;
  body: string;
}
/** Deletes one's own message at `target_seq`. */
export interface Delete {
  type: "delete";
  chat_id: bigint;
  client_msg_id: bigint;
  target_seq: bigint;
}
/** Puts (`react`) or takes back (`unreact`) a reaction on any message. */
export interface Reaction {
  chat_id: bigint;
  client_msg_id: bigint;
  target_seq: bigint;
  emoji: string;
}
export interface React extends Reaction {
  type: "react";
}
export interface Unreact extends Reaction {
  type: "unreact";
}
export interface AckDelivered {
  type: "ack_delivered";
  chat_id: bigint;
  seq: bigint;
}
export interface AckRead {
  type: "ack_read";
  chat_id: bigint;
  seq: bigint;
}
export interface Sync {
  type: "sync";
  client_msg_id: bigint;
  chat_id: bigint;
  after_seq: bigint;
  limit: number;
  /** Backward history: messages before this seq, newest first (after_seq must then be 0). */
  before_seq?: bigint;
}
export interface ListChats {
  type: "list_chats";
  client_msg_id: bigint;
  limit: number;
  /** The cursor: the last chat of the previous page (left out for the first page). */
  before_activity_us?: bigint;
  before_chat_id?: bigint;
}
export interface Typing {
  type: "typing";
  chat_id: bigint;
}
export interface PresenceQuery {
  type: "presence_query";
  client_msg_id: bigint;
  users: bigint[];
}
export interface Ping {
  type: "ping";
  nonce: bigint;
}

export type ClientFrame =
  | CreateChat
  | Join
  | Leave
  | Send
  | AckDelivered
  | AckRead
  | Sync
  | Typing
  | PresenceQuery
  | Ping
  | AddMembers
  | RemoveMembers
  | ListChats
  | Edit
  | Delete
  | React
  | Unreact;

// Server to client.

export interface Welcome {
  type: "welcome";
  user_id: bigint;
  connection_id: bigint;
  node_id: number;
  server_time_us: bigint;
  heartbeat_ms: number;
  max_frame_bytes: number;
}
/** A chat entry (a message, or an edit, delete or reaction of the message at
 * `target_seq`); also the element of a sync batch, where it carries no `type`. */
export interface MessageBody {
  chat_id: bigint;
  seq: bigint;
  sender: bigint;
  client_msg_id: bigint;
  server_time_us: bigint;
  /** The text; an edit's new text; a reaction's emoji; empty for a delete. */
  body: string;
  kind: EntryKind;
  /** 0 for a message. */
  target_seq: bigint;
}
export interface Message extends MessageBody {
  type: "message";
}
export interface Receipt {
  type: "receipt";
  chat_id: bigint;
  kind: ReceiptKind;
  seq: bigint;
  user_id: bigint;
  client_msg_id: bigint | null;
}
export interface ChatCreated {
  type: "chat_created";
  client_msg_id: bigint;
  chat_id: bigint;
  kind: ChatKind;
  title: string;
  creator: bigint;
  members: bigint[];
}
export interface Joined {
  type: "joined";
  client_msg_id: bigint;
  chat_id: bigint;
  user_id: bigint;
}
export interface Left {
  type: "left";
  client_msg_id: bigint;
  chat_id: bigint;
  user_id: bigint;
}
/** User `by` added `users` to the chat, or removed them from it; `client_msg_id` is the id
 * of `by`'s request. */
export interface MembersChanged {
  client_msg_id: bigint;
  chat_id: bigint;
  by: bigint;
  users: bigint[];
}
export interface MembersAdded extends MembersChanged {
  type: "members_added";
}
export interface MembersRemoved extends MembersChanged {
  type: "members_removed";
}
export interface SyncBatch {
  type: "sync_batch";
  client_msg_id: bigint;
  chat_id: bigint;
  messages: MessageBody[];
  has_more: boolean;
}
/** One chat of a `chat_list`, as the asker sees it. */
export interface ChatSummary {
  chat_id: bigint;
  kind: ChatKind;
  title: string;
  member_count: number;
  last_seq: bigint;
  last_activity_us: bigint;
  delivered_seq: bigint;
  read_seq: bigint;
  unread: bigint;
}
export interface ChatList {
  type: "chat_list";
  client_msg_id: bigint;
  chats: ChatSummary[];
  has_more: boolean;
}
export interface PresenceEntry {
  user_id: bigint;
  online: boolean;
  last_seen_us: bigint;
}
export interface Presence {
  type: "presence";
  client_msg_id: bigint;
  users: PresenceEntry[];
}
export interface TypingEvent {
  type: "typing";
  chat_id: bigint;
  user_id: bigint;
}
export interface ErrorFrame {
  type: "error";
  code: number;
  reason: string;
  client_msg_id: bigint | null;
}
export interface Pong {
  type: "pong";
  nonce: bigint;
  server_time_us: bigint;
}

export type ServerFrame =
  | Welcome
  | Message
  | Receipt
  | ChatCreated
  | Joined
  | Left
  | SyncBatch
  | Presence
  | TypingEvent
  | ErrorFrame
  | Pong
  | MembersAdded
  | MembersRemoved
  | ChatList;
