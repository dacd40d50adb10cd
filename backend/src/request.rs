//! A broker delivery, validated and decoded into what the backend acts on.

use wire::envelope::inbound_items;
use wire::{ClientFrame, ClientMsgId, UserId, WireError};

/// Where a frame came from, as the gateway asserts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Origin {
    /// The authenticated sender.
    pub user_id: UserId,
    /// The gateway node holding the connection (where answers to it are routed).
    pub node_id: u32,
    /// The connection on that node.
    pub connection_id: u64,
}

/// One valid client frame from the broker.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    /// The broker's delivery tag on the shard's channel (shared by the frames of a batch).
    pub tag: u64,
    /// The broker handed this frame's message out before, to a worker that did not ack it:
    /// that worker may have committed the frame without publishing what it produced.
    pub redelivered: bool,
    pub origin: Origin,
    /// When the gateway read the frame, microseconds since the epoch (the gateway's clock).
    pub received_at_us: u64,
    pub frame: ClientFrame,
}

impl Request {
    /// The client message id of the frame, which an error frame answering it echoes.
    pub(crate) fn client_msg_id(&self) -> Option<ClientMsgId> {
        self.frame.client_msg_id()
    }
}

/// Validates an inbound envelope of either form and every client frame inside it (size,
/// version, archive, limits) and copies the frames out, in order. One invalid frame refuses
/// the whole envelope: the gateway validated each frame before it built the batch, so this
/// is a bug or a foreign publisher, and the envelope goes to the dead-letter queue whole.
/// The copy is one allocation per string field; the frames then outlive the delivery's
/// buffer, which is released before the database work.
pub(crate) fn decode(tag: u64, redelivered: bool, data: &[u8]) -> Result<Vec<Request>, WireError> {
    inbound_items(data)?
        .iter()
        .map(|view| {
            Ok(Request {
                tag,
                redelivered,
                origin: Origin {
                    user_id: view.user_id.to_native(),
                    node_id: view.node_id.to_native(),
                    connection_id: view.connection_id.to_native(),
                },
                received_at_us: view.received_at_us.to_native(),
                frame: view.client_frame()?.to_owned()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use wire::client::{Ping, SendMessage};
    use wire::envelope::{Inbound, InboundBatch};

    use super::*;

    #[test]
    fn decodes_a_valid_envelope() {
        let frame = ClientFrame::Send(SendMessage {
            chat_id: 4,
            client_msg_id: 9,
            body: "hi".into(),
        });
        let bytes = frame.encode().expect("encode");
        let envelope = Inbound {
            user_id: 1,
            node_id: 2,
            core: 0,
            connection_id: 3,
            received_at_us: 5,
            frame: &bytes,
        }
        .encode()
        .expect("envelope");
        let requests = decode(17, false, &envelope).expect("valid");
        assert_eq!(requests.len(), 1);
        let request = &requests[0];
        assert_eq!(request.tag, 17);
        assert_eq!(
            request.origin,
            Origin {
                user_id: 1,
                node_id: 2,
                connection_id: 3
            }
        );
        assert_eq!(request.frame, frame);
    }

    #[test]
    fn rejects_garbage_and_bad_frames_inside_good_envelopes() {
        assert!(decode(1, false, b"").is_err());
        assert!(decode(1, false, b"\x01garbage that is no archive").is_err());
        let envelope = Inbound {
            user_id: 1,
            node_id: 2,
            core: 0,
            connection_id: 3,
            received_at_us: 5,
            frame: b"\x01\x04not a send frame",
        }
        .encode()
        .expect("envelope");
        assert!(decode(1, false, &envelope).is_err());
    }

    #[test]
    fn a_batch_decodes_in_order_and_one_bad_frame_refuses_it() {
        let frames: Vec<Vec<u8>> = (0..3)
            .map(|nonce| ClientFrame::Ping(Ping { nonce }).encode().expect("encode"))
            .collect();
        let item = |user_id, frame| Inbound {
            user_id,
            node_id: 2,
            core: 0,
            connection_id: 3,
            received_at_us: 5,
            frame,
        };
        let items: Vec<Inbound> = frames.iter().zip(10..).map(|(f, u)| item(u, f)).collect();
        let batch = InboundBatch { items: &items }.encode().expect("batch");
        let requests = decode(4, true, &batch).expect("valid");
        let users: Vec<u64> = requests.iter().map(|r| r.origin.user_id).collect();
        assert_eq!(users, [10, 11, 12]);
        assert!(requests.iter().all(|r| r.tag == 4 && r.redelivered));

        let mut items = items;
        items[1] = item(11, b"\x01\x04not a send frame");
        let batch = InboundBatch { items: &items }.encode().expect("batch");
        assert!(decode(4, false, &batch).is_err());
    }
}
