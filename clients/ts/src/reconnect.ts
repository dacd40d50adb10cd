// What to do when a connection closes, without I/O: whether to reconnect and after how
// long, by the close code (wire/PROTOCOL.md, "Close
// codes"). Delays grow exponentially with "full jitter", so that the clients of a gateway
// that went away do not all come back in the same instant.

import { CloseCode } from "./protocol.js";

export interface BackoffOptions {
  /** The first delay's ceiling (ms). */
  initialDelayMs: number;
  /** The largest delay (ms). */
  maxDelayMs: number;
}

export type CloseDecision =
  | { reconnect: true; delayMs: number }
  | { reconnect: false; reason: string };

/**
 * The decision after the connection closed with `code`, on the `attempt`-th failure in a row
 * (0 for the first close after a session was established). `random` is in [0, 1).
 * `canRefreshToken` says whether the client has a way to get a new token (it asks for one
 * before every connection attempt).
 */
export function afterClose(
  code: number,
  attempt: number,
  canRefreshToken: boolean,
  options: BackoffOptions,
  random: () => number,
): CloseDecision {
  const backoff = (floorMs = 0) => {
    const ceiling = Math.min(options.maxDelayMs, options.initialDelayMs * 2 ** Math.min(attempt, 30));
    return Math.max(floorMs, Math.floor(random() * ceiling));
  };
  switch (code) {
    case CloseCode.TOKEN_EXPIRED:
      // The session was fine; only the token ran out. A fresh one can go at once.
      return canRefreshToken
        ? { reconnect: true, delayMs: attempt === 0 ? 0 : backoff() }
        : { reconnect: false, reason: "the token expired and the client has no way to get a new one" };
    case CloseCode.GOING_AWAY:
      // A restart or a drain: the service is there, just not this process. Spread the
      // reconnects over the first backoff window.
      return { reconnect: true, delayMs: backoff() };
    case CloseCode.POLICY_VIOLATION:
      // The client kept breaking the rate limit: come back slowly.
      return { reconnect: true, delayMs: backoff(options.maxDelayMs / 2) };
    default:
      // Slow consumer (4000), idle timeout (4001), a network failure (1006), a server
      // failure (1011) and anything else: back off, reconnect, and sync.
      return { reconnect: true, delayMs: backoff() };
  }
}
