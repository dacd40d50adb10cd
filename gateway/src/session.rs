//! What a session decides about each message, without I/O: the frame rate limit, turning
//! text (JSON) and binary messages into one validated binary form, and the error replies.

use std::borrow::Cow;
use std::time::Instant;

use bytes::Bytes;
use wire::server::ErrorFrame;
use wire::{ClientFrame, ErrorCode, ServerFrame, WireError};

use crate::router::ws_frame;
use crate::ws;

/// A token bucket: `rate` frames per second on average, `burst` at once.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f32,
    refilled_at: Instant,
    /// Frames refused in a row; a client that keeps going past its errors is cut off.
    strikes: u16,
}

/// What the rate limit says about one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    /// Go ahead.
    Accept,
    /// Drop the frame and answer with a rate-limited error.
    Refuse,
    /// The client ignored a burst's worth of refusals: close with 1008.
    Disconnect,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(burst: u32, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: burst as f32,
            refilled_at: now,
            strikes: 0,
        }
    }

    /// Takes one token for a frame arriving at `now`.
    pub fn take(&mut self, now: Instant, rate: u32, burst: u32) -> RateDecision {
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f32();
        self.tokens = (self.tokens + elapsed * rate as f32).min(burst as f32);
        self.refilled_at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.strikes = 0;
            return RateDecision::Accept;
        }
        self.strikes = self.strikes.saturating_add(1);
        if u32::from(self.strikes) > burst {
            RateDecision::Disconnect
        } else {
            RateDecision::Refuse
        }
    }
}

/// The binary frame of a data message: binary messages as they are, text messages parsed
/// from JSON and encoded once here at the edge, so everything behind sees one form.
pub fn binary_form<'a>(message: &ws::Message<'a>) -> Result<Cow<'a, [u8]>, WireError> {
    match *message {
        ws::Message::Binary(bytes) => Ok(Cow::Borrowed(bytes)),
        ws::Message::Text(text) => Ok(Cow::Owned(ClientFrame::from_json(text)?.encode()?)),
        _ => Ok(Cow::Borrowed(&[])),
    }
}

/// A server frame as a complete WebSocket frame in the session's encoding.
pub fn own_frame(frame: &ServerFrame, text: bool) -> Result<Bytes, WireError> {
    Ok(if text {
        ws_frame(ws::OpCode::Text, frame.to_json().as_bytes())
    } else {
        ws_frame(ws::OpCode::Binary, &frame.encode()?)
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
    fn text_and_binary_messages_reach_the_same_binary_form() {
        let frame = ClientFrame::Ping(wire::client::Ping { nonce: 7 });
        let binary = frame.encode().expect("encodes");
        let json = frame.to_json();
        assert_eq!(
            binary_form(&ws::Message::Binary(&binary))
                .expect("binary")
                .as_ref(),
            &binary[..]
        );
        assert_eq!(
            binary_form(&ws::Message::Text(&json))
                .expect("text")
                .as_ref(),
            &binary[..]
        );
        assert!(matches!(
            binary_form(&ws::Message::Text("{\"type\":\"nope\"}")),
            Err(WireError::Json(_))
        ));
    }
}
