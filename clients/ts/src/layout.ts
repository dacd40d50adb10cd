// The shape of every frame body, in the protocol's field order: one table drives the binary
// codec (binary.ts), the JSON codec (json.ts) and the limit checks of both, for both
// directions, so that adding a frame kind is one entry here and one type in frames.ts.

import type { ClientFrame, ServerFrame } from "./frames.js";
import { LIMITS } from "./protocol.js";

/** How one field is stored. */
export type FieldType =
  | "u16"
  | "u32"
  | "u64"
  | "bool"
  | "option_u64"
  /** An optional u64 that JSON leaves out when none (binary: as option_u64); absent from
   * the frame object when none. */
  | "omittable_u64"
  /** A u64 that JSON leaves out when 0 (binary: as u64); 0 when JSON leaves it out. */
  | "defaulted_u64"
  | { string: number; noNul?: true }
  /** `omitted`: the label JSON leaves out, and the value of a missing field. */
  | { enum: readonly string[]; omitted?: string }
  | { list: "u64" | StructLayout; max: number };

export interface StructLayout {
  readonly fields: readonly (readonly [name: string, type: FieldType])[];
}

export interface FrameLayout extends StructLayout {
  /** The header's kind byte. */
  readonly kind: number;
  /** Rules beyond the fields' own limits. */
  readonly check?: (frame: Record<string, unknown>) => string | undefined;
}

/** The frames of one direction, by JSON `type` and by kind byte. */
export interface FrameSet {
  readonly byType: ReadonlyMap<string, FrameLayout>;
  readonly byKind: ReadonlyMap<number, readonly [type: string, layout: FrameLayout]>;
  /** The largest frame of this direction, in bytes (binary) or UTF-8 bytes (JSON). */
  readonly maxBytes: number;
}

const chatKind = { enum: ["direct", "group", "public_group"] } as const;
const receiptKind = { enum: ["sent", "delivered", "read"] } as const;
const entryKind = { enum: ["message", "edit", "delete", "react", "unreact"], omitted: "message" } as const;

const message: StructLayout = {
  fields: [
    ["chat_id", "u64"],
    ["seq", "u64"],
    ["sender", "u64"],
    ["client_msg_id", "u64"],
    ["server_time_us", "u64"],
    ["body", { string: LIMITS.MAX_BODY_BYTES }],
    ["kind", entryKind],
    ["target_seq", "defaulted_u64"],
  ],
};

const chatSummary: StructLayout = {
  fields: [
    ["chat_id", "u64"],
    ["kind", chatKind],
    ["title", { string: LIMITS.MAX_TITLE_BYTES }],
    ["member_count", "u32"],
    ["last_seq", "u64"],
    ["last_activity_us", "u64"],
    ["delivered_seq", "u64"],
    ["read_seq", "u64"],
    ["unread", "u64"],
  ],
};

const presenceEntry: StructLayout = {
  fields: [
    ["user_id", "u64"],
    ["online", "bool"],
    ["last_seen_us", "u64"],
  ],
};

const membership: FrameLayout["fields"] = [
  ["client_msg_id", "u64"],
  ["chat_id", "u64"],
];
const ack: FrameLayout["fields"] = [
  ["chat_id", "u64"],
  ["seq", "u64"],
];
const memberChange: FrameLayout["fields"] = [
  ["client_msg_id", "u64"],
  ["chat_id", "u64"],
  ["users", { list: "u64", max: LIMITS.MAX_MEMBERS_PER_CHAT }],
];
const membersChanged: FrameLayout["fields"] = [
  ["client_msg_id", "u64"],
  ["chat_id", "u64"],
  ["by", "u64"],
  ["users", { list: "u64", max: LIMITS.MAX_MEMBERS_PER_CHAT }],
];
const chatEvent: FrameLayout["fields"] = [
  ["client_msg_id", "u64"],
  ["chat_id", "u64"],
  ["user_id", "u64"],
];

const reaction: FrameLayout = {
  kind: 16,
  fields: [
    ["chat_id", "u64"],
    ["client_msg_id", "u64"],
    ["target_seq", "u64"],
    ["emoji", { string: LIMITS.MAX_EMOJI_BYTES, noNul: true }],
  ],
  check: (frame) => ((frame["emoji"] as string) === "" ? "emoji is empty" : undefined),
};

const clientLayouts: Record<ClientFrame["type"], FrameLayout> = {
  create_chat: {
    kind: 1,
    fields: [
      ["client_msg_id", "u64"],
      ["kind", chatKind],
      ["title", { string: LIMITS.MAX_TITLE_BYTES, noNul: true }],
      ["members", { list: "u64", max: LIMITS.MAX_MEMBERS_PER_CHAT }],
    ],
  },
  join: { kind: 2, fields: membership },
  leave: { kind: 3, fields: membership },
  send: {
    kind: 4,
    fields: [
      ["chat_id", "u64"],
      ["client_msg_id", "u64"],
      ["body", { string: LIMITS.MAX_BODY_BYTES, noNul: true }],
    ],
  },
  ack_delivered: { kind: 5, fields: ack },
  ack_read: { kind: 6, fields: ack },
  sync: {
    kind: 7,
    fields: [
      ["client_msg_id", "u64"],
      ["chat_id", "u64"],
      ["after_seq", "u64"],
      ["limit", "u32"],
      ["before_seq", "omittable_u64"],
    ],
    check: (frame) => {
      const limit = frame["limit"] as number;
      return limit >= 1 && limit <= LIMITS.MAX_SYNC_PAGE
        ? undefined
        : `limit is ${limit}, it must be 1 to ${LIMITS.MAX_SYNC_PAGE}`;
    },
  },
  typing: { kind: 8, fields: [["chat_id", "u64"]] },
  presence_query: {
    kind: 9,
    fields: [
      ["client_msg_id", "u64"],
      ["users", { list: "u64", max: LIMITS.MAX_PRESENCE_QUERY }],
    ],
  },
  ping: { kind: 10, fields: [["nonce", "u64"]] },
  add_members: { kind: 11, fields: memberChange },
  remove_members: { kind: 12, fields: memberChange },
  list_chats: {
    kind: 13,
    fields: [
      ["client_msg_id", "u64"],
      ["limit", "u32"],
      ["before_activity_us", "omittable_u64"],
      ["before_chat_id", "omittable_u64"],
    ],
    check: (frame) => {
      const limit = frame["limit"] as number;
      return limit >= 1 && limit <= LIMITS.MAX_CHAT_LIST_PAGE
        ? undefined
        : `limit is ${limit}, it must be 1 to ${LIMITS.MAX_CHAT_LIST_PAGE}`;
    },
  },
  edit: {
    kind: 14,
    fields: [
      ["chat_id", "u64"],
      ["client_msg_id", "u64"],
      ["target_seq", "u64"],
      ["body", { string: LIMITS.MAX_BODY_BYTES, noNul: true }],
    ],
  },
  delete: {
    kind: 15,
    fields: [
      ["chat_id", "u64"],
      ["client_msg_id", "u64"],
      ["target_seq", "u64"],
    ],
  },
  react: reaction,
  unreact: { ...reaction, kind: 17 },
};

const serverLayouts: Record<ServerFrame["type"], FrameLayout> = {
  welcome: {
    kind: 1,
    fields: [
      ["user_id", "u64"],
      ["connection_id", "u64"],
      ["node_id", "u32"],
      ["server_time_us", "u64"],
      ["heartbeat_ms", "u32"],
      ["max_frame_bytes", "u32"],
    ],
  },
  message: { kind: 2, fields: message.fields },
  receipt: {
    kind: 3,
    fields: [
      ["chat_id", "u64"],
      ["kind", receiptKind],
      ["seq", "u64"],
      ["user_id", "u64"],
      ["client_msg_id", "option_u64"],
    ],
  },
  chat_created: {
    kind: 4,
    fields: [
      ["client_msg_id", "u64"],
      ["chat_id", "u64"],
      ["kind", chatKind],
      ["title", { string: LIMITS.MAX_TITLE_BYTES }],
      ["creator", "u64"],
      ["members", { list: "u64", max: LIMITS.MAX_MEMBERS_PER_CHAT }],
    ],
  },
  joined: { kind: 5, fields: chatEvent },
  left: { kind: 6, fields: chatEvent },
  sync_batch: {
    kind: 7,
    fields: [
      ["client_msg_id", "u64"],
      ["chat_id", "u64"],
      ["messages", { list: message, max: LIMITS.MAX_SYNC_PAGE }],
      ["has_more", "bool"],
    ],
  },
  presence: {
    kind: 8,
    fields: [
      ["client_msg_id", "u64"],
      ["users", { list: presenceEntry, max: LIMITS.MAX_PRESENCE_QUERY }],
    ],
  },
  typing: {
    kind: 9,
    fields: [
      ["chat_id", "u64"],
      ["user_id", "u64"],
    ],
  },
  error: {
    kind: 10,
    fields: [
      ["code", "u16"],
      ["reason", { string: LIMITS.MAX_REASON_BYTES }],
      ["client_msg_id", "option_u64"],
    ],
  },
  pong: {
    kind: 11,
    fields: [
      ["nonce", "u64"],
      ["server_time_us", "u64"],
    ],
  },
  members_added: { kind: 12, fields: membersChanged },
  members_removed: { kind: 13, fields: membersChanged },
  chat_list: {
    kind: 14,
    fields: [
      ["client_msg_id", "u64"],
      ["chats", { list: chatSummary, max: LIMITS.MAX_CHAT_LIST_PAGE }],
      ["has_more", "bool"],
    ],
  },
};

function frameSet(layouts: Record<string, FrameLayout>, maxBytes: number): FrameSet {
  const entries = Object.entries(layouts);
  return {
    byType: new Map(entries),
    byKind: new Map(entries.map(([type, layout]) => [layout.kind, [type, layout] as const])),
    maxBytes,
  };
}

export const CLIENT_FRAMES = frameSet(clientLayouts, LIMITS.MAX_FRAME_BYTES);
export const SERVER_FRAMES = frameSet(serverLayouts, LIMITS.MAX_SERVER_FRAME_BYTES);

/** Bytes a field takes inside its struct in the unaligned archive format. */
export function fieldSize(type: FieldType): number {
  switch (type) {
    case "u16":
      return 2;
    case "u32":
      return 4;
    case "u64":
    case "defaulted_u64":
      return 8;
    case "bool":
      return 1;
    case "option_u64":
    case "omittable_u64":
      return 9;
  }
  if ("enum" in type) return 1;
  return 8; // a string or a list: offset and length
}

export function structSize(layout: StructLayout): number {
  return layout.fields.reduce((size, [, type]) => size + fieldSize(type), 0);
}
