//! What a session decides about each message, without I/O: the frame rate limit, turning
//! text (JSON) and binary messages into one validated binary form, and the error replies.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use bytes::Bytes;
use wire::server::ErrorFrame;
use wire::{ClientFrame, ClientFrameRef, ClientMsgId, ErrorCode, Refusal, ServerFrame, WireError};

use crate::clock::Millis;
use crate::router::ws_frame;

/// How long refused frames count against a connection: they are forgiven at a burst's worth
/// per window, so a connection is closed once more than a burst of its frames were refused
/// within about this long, however many were accepted in between. A client cannot stay
/// open by pacing (a few accepted frames between many refused ones); one that goes over its
/// rate now and then, by less than a burst per window, is never closed.
pub const REFUSAL_WINDOW: Duration = Duration::from_secs(10);

/// A token bucket: `rate` frames per second on average, `burst` at once, and the refusals
/// it handed out, remembered over [`REFUSAL_WINDOW`]. Twelve bytes, since every session
/// holds one: its time is to the millisecond, which loses nothing, as each refill counts
/// from the last one's millisecond, not from when it ran.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f32,
    refilled_at: Millis,
    /// Refused frames not yet forgiven; past `burst`, the client is cut off.
    refusals: f32,
}

/// What the rate limit says about one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    /// Go ahead.
    Accept,
    /// Drop the frame and answer with a rate-limited error.
    Refuse,
    /// More than a burst's worth of frames were refused within the window: close with 1008.
    Disconnect,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(burst: u32, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: burst as f32,
            refilled_at: Millis::at(now),
            refusals: 0.0,
        }
    }

    /// Takes one token for a frame arriving at `now`.
    pub fn take(&mut self, now: Instant, rate: u32, burst: u32) -> RateDecision {
        let now = Millis::at(now);
        let elapsed = self.refilled_at.elapsed(now).as_secs_f32();
        self.refilled_at = now;
        self.tokens = (self.tokens + elapsed * rate as f32).min(burst as f32);
        let forgiven = elapsed * burst as f32 / REFUSAL_WINDOW.as_secs_f32();
        self.refusals = (self.refusals - forgiven).max(0.0);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return RateDecision::Accept;
        }
        self.refuse(burst)
    }

    /// A frame this bucket accepted (its last [`TokenBucket::take`]) was refused by another
    /// limit, the user's shared budget: the token is given back, and the refusal counts
    /// against the connection like its own, so a connection that keeps sending past its
    /// user's budget is closed with 1008 too.
    pub fn refused_elsewhere(&mut self, burst: u32) -> RateDecision {
        self.tokens = (self.tokens + 1.0).min(burst as f32);
        self.refuse(burst)
    }

    fn refuse(&mut self, burst: u32) -> RateDecision {
        self.refusals += 1.0;
        if self.refusals > burst as f32 {
            RateDecision::Disconnect
        } else {
            RateDecision::Refuse
        }
    }
}

/// The binary frame of a data message: binary messages as they are, text messages parsed
/// from JSON and encoded once here at the edge, so everything behind sees one form.
pub fn binary_form<'a>(message: &wsproto::Message<'a>) -> Result<Cow<'a, [u8]>, Refusal> {
    match *message {
        wsproto::Message::Binary(bytes) => Ok(Cow::Borrowed(bytes)),
        wsproto::Message::Text(text) => ClientFrame::binary_from_json(text).map(Cow::Owned),
        _ => Ok(Cow::Borrowed(&[])),
    }
}

/// The client message id a data message carries, if it can be read: a frame refused before
/// it was decoded (by the rate limit) is decoded only to name it in the error.
pub fn client_msg_id_of(message: &wsproto::Message<'_>) -> Option<ClientMsgId> {
    match binary_form(message) {
        Ok(raw) => match ClientFrameRef::check(&raw) {
            Ok(frame) => frame.client_msg_id(),
            Err(refusal) => refusal.client_msg_id,
        },
        Err(refusal) => refusal.client_msg_id,
    }
}

/// A server frame as a complete WebSocket frame in the session's encoding.
pub fn own_frame(frame: &ServerFrame, text: bool) -> Result<Bytes, WireError> {
    Ok(if text {
        ws_frame(wsproto::OpCode::Text, frame.to_json().as_bytes())
    } else {
        ws_frame(wsproto::OpCode::Binary, &frame.encode()?)
    })
}

/// The error frame answering a frame that could not be accepted.
pub fn error_reply(
    code: ErrorCode,
    reason: impl Into<String>,
    client_msg_id: Option<u64>,
) -> ServerFrame {
    ServerFrame::Error(ErrorFrame::new(code, reason, client_msg_id))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(3, start);
        for _ in 0..3 {
            assert_eq!(bucket.take(start, 10, 3), RateDecision::Accept);
        }
        assert_eq!(bucket.take(start, 10, 3), RateDecision::Refuse);
        // 100 ms at 10 frames per second buys one frame.
        assert_eq!(
            bucket.take(start + Duration::from_millis(100), 10, 3),
            RateDecision::Accept
        );
        assert_eq!(
            bucket.take(start + Duration::from_millis(100), 10, 3),
            RateDecision::Refuse
        );
    }

    #[test]
    fn bucket_disconnects_a_client_that_ignores_refusals() {
        let now = Instant::now();
        let mut bucket = TokenBucket::new(2, now);
        let decisions: Vec<_> = (0..6).map(|_| bucket.take(now, 1, 2)).collect();
        assert_eq!(
            decisions,
            [
                RateDecision::Accept,
                RateDecision::Accept,
                RateDecision::Refuse,
                RateDecision::Refuse,
                RateDecision::Disconnect,
                RateDecision::Disconnect
            ]
        );
    }

    #[test]
    fn refusals_by_the_users_budget_count_like_the_connections_own() {
        let now = Instant::now();
        let mut bucket = TokenBucket::new(2, now);
        assert_eq!(bucket.take(now, 1, 2), RateDecision::Accept);
        assert_eq!(bucket.refused_elsewhere(2), RateDecision::Refuse);
        assert_eq!(bucket.take(now, 1, 2), RateDecision::Accept);
        assert_eq!(bucket.refused_elsewhere(2), RateDecision::Refuse);
        assert_eq!(
            bucket.take(now, 1, 2),
            RateDecision::Accept,
            "the refused frames' tokens were given back"
        );
        assert_eq!(bucket.refused_elsewhere(2), RateDecision::Disconnect);
    }

    #[test]
    fn text_and_binary_messages_reach_the_same_binary_form() {
        let frame = ClientFrame::Ping(wire::client::Ping { nonce: 7 });
        let binary = frame.encode().expect("encodes");
        let json = frame.to_json();
        assert_eq!(
            binary_form(&wsproto::Message::Binary(&binary))
                .expect("binary")
                .as_ref(),
            &binary[..]
        );
        assert_eq!(
            binary_form(&wsproto::Message::Text(&json))
                .expect("text")
                .as_ref(),
            &binary[..]
        );
        assert!(matches!(
            binary_form(&wsproto::Message::Text("{\"type\":\"nope\"}")),
            Err(Refusal {
                error: WireError::Json(_),
                client_msg_id: None
            })
        ));
    }

    #[test]
    fn refused_messages_are_named_by_their_client_msg_id() {
        let query = ClientFrame::PresenceQuery(wire::client::PresenceQuery {
            client_msg_id: 12,
            users: vec![1],
        });
        let binary = query.encode().expect("encodes");
        assert_eq!(
            client_msg_id_of(&wsproto::Message::Binary(&binary)),
            Some(12)
        );
        assert_eq!(
            client_msg_id_of(&wsproto::Message::Text(&query.to_json())),
            Some(12)
        );
        let broken = r#"{"type":"sync","client_msg_id":13,"limit":"all"}"#;
        assert_eq!(client_msg_id_of(&wsproto::Message::Text(broken)), Some(13));
        assert_eq!(
            client_msg_id_of(&wsproto::Message::Binary(&binary[1..])),
            None
        );
        let ping = ClientFrame::Ping(wire::client::Ping { nonce: 1 });
        assert_eq!(
            client_msg_id_of(&wsproto::Message::Binary(&ping.encode().expect("encodes"))),
            None
        );
    }

    /// Sends `per_tick` frames every `tick` for `ticks` ticks; the decisions, in order.
    fn paced(
        bucket: &mut TokenBucket,
        start: Instant,
        tick_ms: u64,
        per_tick: usize,
        ticks: u64,
    ) -> Vec<RateDecision> {
        let mut decisions = Vec::new();
        for tick in 0..ticks {
            let now = start + Duration::from_millis(tick * tick_ms);
            for _ in 0..per_tick {
                decisions.push(bucket.take(now, 100, 200));
            }
        }
        decisions
    }

    #[test]
    fn accepted_frames_between_refusals_do_not_dodge_the_close() {
        // The issue's recipe: 150 frames every 15 ms against 100 per second, burst 200. The
        // old rule forgot its refusals at every accepted frame and never closed.
        let start = Instant::now();
        let mut bucket = TokenBucket::new(200, start);
        let decisions = paced(&mut bucket, start, 15, 150, 100);
        let closed_at = decisions
            .iter()
            .position(|d| *d == RateDecision::Disconnect)
            .expect("the pacing client is closed");
        assert!(closed_at < 3 * 150, "closed only at frame {closed_at}");
        assert!(decisions[..closed_at].contains(&RateDecision::Accept));
    }

    #[test]
    fn sustained_excess_is_closed_and_occasional_excess_is_not() {
        let start = Instant::now();
        // Twice the rate: closed within seconds.
        let mut bucket = TokenBucket::new(200, start);
        let decisions = paced(&mut bucket, start, 10, 2, 1000);
        let closed_at = decisions
            .iter()
            .position(|d| *d == RateDecision::Disconnect)
            .expect("a client at twice the rate is closed");
        assert!(
            closed_at < 6 * 200,
            "closed only after {} s",
            closed_at / 200
        );
        // Just under the rate for a minute, after the whole burst at once: never closed.
        let mut bucket = TokenBucket::new(200, start);
        let mut decisions = paced(&mut bucket, start, 0, 200, 1);
        decisions.extend(paced(&mut bucket, start, 11, 1, 5500));
        assert!(!decisions.contains(&RateDecision::Disconnect));
        // Ten frames over the burst every few seconds are refused, never closed.
        let mut bucket = TokenBucket::new(200, start);
        for round in 0..20 {
            let at = start + Duration::from_secs(round * 3);
            let decisions = paced(&mut bucket, at, 0, 210, 1);
            assert!(decisions.contains(&RateDecision::Refuse));
            assert!(
                !decisions.contains(&RateDecision::Disconnect),
                "round {round}"
            );
        }
    }
}
