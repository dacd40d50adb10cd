// The protocol's numbers as wire/PROTOCOL.md gives them: version, limits, error codes and
// close codes. The wire crate is the reference; these repeat it for TypeScript.

/** The first byte of every binary frame. */
export const PROTOCOL_VERSION = 1;

/** The limits of wire/src/limits.rs, enforced on both encodings. */
export const LIMITS = {
  /** Largest client frame: the binary frame with its header, or the JSON text. */
  MAX_FRAME_BYTES: 16384,
  /** `body` of `send` and `message`, in UTF-8 bytes. */
  MAX_BODY_BYTES: 4096,
  /** `emoji` of `react` and `unreact`, 1 to this many UTF-8 bytes. */
  MAX_EMOJI_BYTES: 32,
  /** Different reactions one user keeps on one message: a bound of the server's (one more
   * `react` gets `limit_exceeded`). */
  MAX_REACTIONS_PER_USER: 8,
  /** `title` of `create_chat`, in UTF-8 bytes. */
  MAX_TITLE_BYTES: 256,
  /** Ids in `members` of `create_chat` and `chat_created`, in `users` of `add_members`,
   * `remove_members`, `members_added` and `members_removed`, and members of a chat. */
  MAX_MEMBERS_PER_CHAT: 1000,
  /** `limit` of `sync` (1 to this), and the most messages in a `sync_batch`. */
  MAX_SYNC_PAGE: 200,
  /** Most `body` bytes in one `sync_batch`: the server ends a page early (`has_more`) before
   * the message that would pass it; a page always holds at least one message. */
  MAX_SYNC_PAGE_BYTES: 262144,
  /** `limit` of `list_chats` (1 to this), and the most chats in a `chat_list`. */
  MAX_CHAT_LIST_PAGE: 100,
  /** `users` of `presence_query` and `presence`. */
  MAX_PRESENCE_QUERY: 200,
  /** `reason` of `error`, in UTF-8 bytes. */
  MAX_REASON_BYTES: 256,
  /** Largest server frame the server produces. */
  MAX_SERVER_FRAME_BYTES: 1048576,
  /** Chats one user may have created that still exist, unless the server is configured
   * otherwise: a bound of the server's, not of a frame, so only the server checks it
   * (one more `create_chat` gets `limit_exceeded`). */
  DEFAULT_MAX_CHATS_PER_USER: 500,
} as const;

/** Codes of error frames. 4xxx: the request was wrong; 5xxx: the server failed. */
export const ErrorCode = {
  MALFORMED_FRAME: 4000,
  UNSUPPORTED_VERSION: 4001,
  UNKNOWN_KIND: 4002,
  TOO_LARGE: 4003,
  LIMIT_EXCEEDED: 4004,
  RATE_LIMITED: 4029,
  NOT_MEMBER: 4030,
  /** A member, but not an admin, asked for what takes one (`remove_members`). */
  FORBIDDEN: 4031,
  UNKNOWN_CHAT: 4040,
  INVALID_REQUEST: 4090,
  INTERNAL: 5000,
  UNAVAILABLE: 5030,
} as const;

/**
 * Whether a request answered with `code` may be sent again as it is (same client_msg_id):
 * server failures, and the rate limiter, which dropped the frame without acting on it.
 */
export function isRetryable(code: number): boolean {
  return code >= 5000 || code === ErrorCode.RATE_LIMITED;
}

/** WebSocket close codes the gateway uses. */
export const CloseCode = {
  NORMAL: 1000,
  GOING_AWAY: 1001,
  PROTOCOL_ERROR: 1002,
  /** What a browser reports when the connection ended without a close frame. */
  ABNORMAL: 1006,
  INVALID_PAYLOAD: 1007,
  POLICY_VIOLATION: 1008,
  MESSAGE_TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  SLOW_CONSUMER: 4000,
  IDLE_TIMEOUT: 4001,
  TOKEN_EXPIRED: 4002,
} as const;

/** The largest u64. */
export const U64_MAX = (1n << 64n) - 1n;
