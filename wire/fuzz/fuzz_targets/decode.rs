//! Arbitrary bytes into every decoder of the wire protocol. Nothing may panic, and whatever
//! a decoder accepts must survive a round trip through the encoder unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::envelope::{InboundView, OutboundView};
use wire::{ClientFrame, ClientFrameRef, ServerFrame, ServerFrameRef};

fn client(bytes: &[u8]) {
    if let Ok(view) = ClientFrameRef::access(bytes) {
        let frame = view
            .to_owned()
            .expect("a validated client frame deserialises");
        let again = frame
            .encode()
            .expect("a validated client frame is within its limits");
        assert_eq!(ClientFrame::decode(&again).as_ref(), Ok(&frame));
        // The JSON of a valid binary frame can outgrow the text limit (escapes, long ids).
        let json = frame.to_json();
        if json.len() <= wire::limits::MAX_FRAME_BYTES {
            assert_eq!(ClientFrame::from_json(&json).as_ref(), Ok(&frame));
        } else {
            assert!(matches!(
                ClientFrame::from_json(&json),
                Err(wire::WireError::TooLarge { .. })
            ));
        }
    }
}

fn server(bytes: &[u8]) {
    if let Ok(view) = ServerFrameRef::access(bytes) {
        let frame = view
            .to_owned()
            .expect("a validated server frame deserialises");
        let again = frame
            .encode()
            .expect("a validated server frame is within its limits");
        assert_eq!(ServerFrame::decode(&again).as_ref(), Ok(&frame));
        assert_eq!(
            wire::server::binary_to_json(bytes).as_ref(),
            Ok(&frame.to_json())
        );
    }
}

fuzz_target!(|data: &[u8]| {
    client(data);
    server(data);

    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(frame) = ClientFrame::from_json(text) {
            assert_eq!(
                ClientFrame::from_json(&frame.to_json()).as_ref(),
                Ok(&frame)
            );
            let bytes = frame
                .encode()
                .expect("a parsed client frame is within its limits");
            assert_eq!(ClientFrame::decode(&bytes).as_ref(), Ok(&frame));
        }
        if let Ok(frame) = ServerFrame::from_json(text) {
            assert_eq!(
                ServerFrame::from_json(&frame.to_json()).as_ref(),
                Ok(&frame)
            );
        }
    }

    if let Ok(envelope) = InboundView::access(data) {
        let inner = envelope.client_frame();
        assert_eq!(
            inner.is_ok(),
            ClientFrameRef::access(&envelope.frame).is_ok()
        );
        client(&envelope.frame);
    }
    if let Ok(envelope) = OutboundView::access(data) {
        let inner = envelope.server_frame();
        assert_eq!(
            inner.is_ok(),
            ServerFrameRef::access(envelope.frame_bytes()).is_ok()
        );
        server(envelope.frame_bytes());
    }
});
