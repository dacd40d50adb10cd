//! A broker delivery, validated and decoded into what the backend acts on.

use wire::envelope::InboundView;
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
    /// The broker's delivery tag on the shard's channel.
    pub tag: u64,
    pub origin: Origin,
    pub frame: ClientFrame,
}

impl Request {
    /// The client message id of the frame, which an error frame answering it echoes.
    pub(crate) fn client_msg_id(&self) -> Option<ClientMsgId> {
        match &self.frame {
            ClientFrame::CreateChat(f) => Some(f.client_msg_id),
            ClientFrame::Join(f) | ClientFrame::Leave(f) => Some(f.client_msg_id),
            ClientFrame::Send(f) => Some(f.client_msg_id),
            ClientFrame::Sync(f) => Some(f.client_msg_id),
            ClientFrame::PresenceQuery(f) => Some(f.client_msg_id),
            ClientFrame::AckDelivered(_)
            | ClientFrame::AckRead(_)
            | ClientFrame::Typing(_)
            | ClientFrame::Ping(_) => None,
        }
    }
}

/// Validates an inbound envelope and the client frame inside it (size, version, archive,
/// limits) and copies the frame out. The copy is one allocation per string field; the
/// frame then outlives the delivery's buffer, which is released before the database work.
pub(crate) fn decode(tag: u64, data: &[u8]) -> Result<Request, WireError> {
    let view = InboundView::access(data)?;
    let frame = view.client_frame()?.to_owned()?;
    Ok(Request {
        tag,
        origin: Origin {
            user_id: view.user_id.to_native(),
            node_id: view.node_id.to_native(),
            connection_id: view.connection_id.to_native(),
        },
        frame,
    })
}

#[cfg(test)]
mod tests {
    use wire::client::SendMessage;
    use wire::envelope::Inbound;

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
        let request = decode(17, &envelope).expect("valid");
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
        assert!(decode(1, b"").is_err());
        assert!(decode(1, b"\x01garbage that is no archive").is_err());
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
        assert!(decode(1, &envelope).is_err());
    }
}
