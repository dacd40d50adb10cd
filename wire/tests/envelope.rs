//! Envelopes between gateway and backend: their fields survive the archive and the frame
//! inside comes out byte for byte.

use proptest::prelude::*;
use wire::envelope::{
    ArchivedTarget, BATCH_ENVELOPE_VERSION, ENVELOPE_VERSION, Inbound, InboundBatch, InboundView,
    MAX_ENVELOPE_BYTES, Outbound, OutboundBatch, OutboundView, Target, inbound_items,
    outbound_items,
};
use wire::{ClientFrame, ServerFrame, WireError};

/// An error as far as two decodes of the same bytes must agree: a `Malformed` message names
/// the address the archive was read at, which differs between two copies of the bytes.
fn same_error(error: &WireError) -> WireError {
    match error {
        WireError::Malformed(_) => WireError::Malformed(String::new()),
        other => other.clone(),
    }
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        any::<u64>().prop_map(Target::User),
        any::<u64>().prop_map(Target::Connection)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn inbound_round_trips_with_the_frame_verbatim(
        frame in any::<ClientFrame>(),
        user_id in any::<u64>(),
        node_id in any::<u32>(),
        core in any::<u16>(),
        connection_id in any::<u64>(),
        received_at_us in any::<u64>(),
        pad in 0usize..8,
    ) {
        let frame_bytes = frame.encode().unwrap();
        let bytes = Inbound { user_id, node_id, core, connection_id, received_at_us, frame: &frame_bytes }
            .encode()
            .unwrap();
        prop_assert_eq!(bytes[0], ENVELOPE_VERSION);

        // Read it at any offset of a larger buffer.
        let mut buf = vec![0x5Au8; pad + bytes.len() + 8];
        buf[pad..pad + bytes.len()].copy_from_slice(&bytes);
        let view = InboundView::access(&buf[pad..pad + bytes.len()]).unwrap();
        prop_assert_eq!(view.user_id.to_native(), user_id);
        prop_assert_eq!(view.node_id.to_native(), node_id);
        prop_assert_eq!(view.core.to_native(), core);
        prop_assert_eq!(view.connection_id.to_native(), connection_id);
        prop_assert_eq!(view.received_at_us.to_native(), received_at_us);
        prop_assert_eq!(&*view.frame, &frame_bytes[..]);
        prop_assert_eq!(view.client_frame().unwrap().to_owned().unwrap(), frame);
    }

    #[test]
    fn outbound_round_trips_with_the_frame_verbatim(
        frame in any::<ServerFrame>(),
        targets in proptest::collection::vec(target(), 0..64),
        pad in 0usize..8,
    ) {
        let frame_bytes = frame.encode().unwrap();
        let bytes = Outbound { targets: &targets, frame: &frame_bytes }.encode().unwrap();
        prop_assert_eq!(bytes[0], ENVELOPE_VERSION);

        let mut buf = vec![0x5Au8; pad + bytes.len() + 8];
        buf[pad..pad + bytes.len()].copy_from_slice(&bytes);
        let view = OutboundView::access(&buf[pad..pad + bytes.len()]).unwrap();
        let read: Vec<Target> = view.targets.iter().map(ArchivedTarget::to_native).collect();
        prop_assert_eq!(read, targets);
        prop_assert_eq!(view.frame_bytes(), &frame_bytes[..]);
        prop_assert_eq!(view.server_frame().unwrap().to_owned().unwrap(), frame);
    }

    /// The envelope treats the frame as opaque bytes: anything goes in and comes out as it
    /// was; only `client_frame` / `server_frame` judge it.
    #[test]
    fn envelopes_carry_any_bytes_verbatim(
        frame in proptest::collection::vec(any::<u8>(), 0..512),
        targets in proptest::collection::vec(target(), 0..4),
    ) {
        let bytes = Inbound { user_id: 1, node_id: 2, core: 3, connection_id: 4, received_at_us: 5, frame: &frame }
            .encode()
            .unwrap();
        let view = InboundView::access(&bytes).unwrap();
        prop_assert_eq!(&*view.frame, &frame[..]);
        match (view.client_frame(), ClientFrame::decode(&frame)) {
            (Ok(inner), Ok(direct)) => prop_assert_eq!(inner.to_owned().unwrap(), direct),
            (Err(a), Err(b)) => prop_assert_eq!(same_error(&a), same_error(&b)),
            (a, b) => prop_assert!(false, "envelope says {:?}, direct decode says {:?}", a.map(|f| f.kind()), b),
        }

        let bytes = Outbound { targets: &targets, frame: &frame }.encode().unwrap();
        let view = OutboundView::access(&bytes).unwrap();
        prop_assert_eq!(view.frame_bytes(), &frame[..]);
        match (view.server_frame(), ServerFrame::decode(&frame)) {
            (Ok(inner), Ok(direct)) => prop_assert_eq!(inner.to_owned().unwrap(), direct),
            (Err(a), Err(b)) => prop_assert_eq!(same_error(&a), same_error(&b)),
            (a, b) => prop_assert!(false, "envelope says {:?}, direct decode says {:?}", a.map(|f| f.kind()), b),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_as_envelopes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(view) = InboundView::access(&bytes) {
            let _ = view.client_frame().map(|f| f.to_owned());
        }
        if let Ok(view) = OutboundView::access(&bytes) {
            let _ = view.server_frame().map(|f| f.to_owned());
        }
    }

    #[test]
    fn envelopes_with_another_version_are_refused(
        version in any::<u8>().prop_filter("not ours", |v| *v != ENVELOPE_VERSION),
        rest in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut bytes = vec![version];
        bytes.extend_from_slice(&rest);
        prop_assert_eq!(InboundView::access(&bytes).unwrap_err(), WireError::UnsupportedVersion(version));
        prop_assert_eq!(OutboundView::access(&bytes).unwrap_err(), WireError::UnsupportedVersion(version));
    }
}

#[test]
fn truncated_envelopes_are_refused() {
    assert_eq!(
        InboundView::access(&[]).unwrap_err(),
        WireError::Truncated(0)
    );
    assert_eq!(
        OutboundView::access(&[]).unwrap_err(),
        WireError::Truncated(0)
    );
    assert!(matches!(
        InboundView::access(&[ENVELOPE_VERSION]),
        Err(WireError::Malformed(_))
    ));
    assert!(matches!(
        OutboundView::access(&[ENVELOPE_VERSION]),
        Err(WireError::Malformed(_))
    ));

    let frame = ClientFrame::Ping(wire::client::Ping { nonce: 7 })
        .encode()
        .unwrap();
    let bytes = Inbound {
        user_id: 1,
        node_id: 2,
        core: 3,
        connection_id: 4,
        received_at_us: 5,
        frame: &frame,
    }
    .encode()
    .unwrap();
    // Every prefix shorter than the envelope's fixed part is refused.
    let fixed = std::mem::size_of::<InboundView>();
    for len in 1..=fixed {
        assert!(
            matches!(
                InboundView::access(&bytes[..len]),
                Err(WireError::Malformed(_))
            ),
            "prefix {len}"
        );
    }
}

#[test]
fn oversized_envelopes_are_refused() {
    let bytes = vec![ENVELOPE_VERSION; MAX_ENVELOPE_BYTES + 1];
    let too_large = WireError::TooLarge {
        size: MAX_ENVELOPE_BYTES + 1,
        limit: MAX_ENVELOPE_BYTES,
    };
    assert_eq!(InboundView::access(&bytes).unwrap_err(), too_large);
    assert_eq!(OutboundView::access(&bytes).unwrap_err(), too_large);

    let frame = vec![0u8; MAX_ENVELOPE_BYTES];
    match (Outbound {
        targets: &[],
        frame: &frame,
    })
    .encode()
    {
        Err(WireError::TooLarge { size, limit }) => {
            assert!(size > MAX_ENVELOPE_BYTES);
            assert_eq!(limit, MAX_ENVELOPE_BYTES);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn envelope_frame_bytes_are_checked_by_the_frame_codec() {
    let bytes = Inbound {
        user_id: 1,
        node_id: 2,
        core: 3,
        connection_id: 4,
        received_at_us: 5,
        frame: &[9, 1],
    }
    .encode()
    .unwrap();
    let view = InboundView::access(&bytes).unwrap();
    assert_eq!(
        view.client_frame().unwrap_err(),
        WireError::UnsupportedVersion(9)
    );

    let bytes = Outbound {
        targets: &[Target::User(1)],
        frame: &[wire::PROTOCOL_VERSION, 200],
    }
    .encode()
    .unwrap();
    let view = OutboundView::access(&bytes).unwrap();
    assert_eq!(
        view.server_frame().unwrap_err(),
        WireError::UnknownKind(200)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// A batch carries its frames in order, each with its own assertions, byte for byte; the
    /// single form reads as a batch of one, so receivers handle both with one loop.
    #[test]
    fn batches_round_trip_in_order_and_singles_read_as_batches_of_one(
        frames in proptest::collection::vec(any::<ClientFrame>(), 1..16),
        replies in proptest::collection::vec(
            (any::<ServerFrame>(), proptest::collection::vec(target(), 0..8)),
            1..16,
        ),
    ) {
        let encoded: Vec<Vec<u8>> = frames.iter().map(|f| f.encode().unwrap()).collect();
        let items: Vec<Inbound> = encoded
            .iter()
            .enumerate()
            .map(|(i, frame)| Inbound {
                user_id: i as u64,
                node_id: 7,
                core: (i % 3) as u16,
                connection_id: 100 + i as u64,
                received_at_us: 1000 + i as u64,
                frame,
            })
            .collect();
        let bytes = InboundBatch { items: &items }.encode().unwrap();
        prop_assert_eq!(bytes[0], BATCH_ENVELOPE_VERSION);
        let read = inbound_items(&bytes).unwrap();
        prop_assert_eq!(read.len(), frames.len());
        for (i, (view, frame)) in read.iter().zip(&frames).enumerate() {
            prop_assert_eq!(view.user_id.to_native(), i as u64);
            prop_assert_eq!(view.connection_id.to_native(), 100 + i as u64);
            prop_assert_eq!(&view.client_frame().unwrap().to_owned().unwrap(), frame);
        }
        let single = items[0].encode().unwrap();
        let read = inbound_items(&single).unwrap();
        prop_assert_eq!(read.len(), 1);
        prop_assert_eq!(&read[0].client_frame().unwrap().to_owned().unwrap(), &frames[0]);

        let encoded: Vec<Vec<u8>> = replies.iter().map(|(f, _)| f.encode().unwrap()).collect();
        let items: Vec<Outbound> = encoded
            .iter()
            .zip(&replies)
            .map(|(frame, (_, targets))| Outbound { targets, frame })
            .collect();
        let bytes = OutboundBatch { items: &items }.encode().unwrap();
        let read = outbound_items(&bytes).unwrap();
        prop_assert_eq!(read.len(), replies.len());
        for (view, (frame, targets)) in read.iter().zip(&replies) {
            let got: Vec<Target> = view.targets.iter().map(ArchivedTarget::to_native).collect();
            prop_assert_eq!(&got, targets);
            prop_assert_eq!(&view.server_frame().unwrap().to_owned().unwrap(), frame);
        }
        let single = items[0].encode().unwrap();
        prop_assert_eq!(outbound_items(&single).unwrap().len(), 1);
    }

    #[test]
    fn arbitrary_bytes_never_panic_as_batches(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        for version in [ENVELOPE_VERSION, BATCH_ENVELOPE_VERSION] {
            let mut bytes = bytes.clone();
            bytes.insert(0, version);
            if let Ok(items) = inbound_items(&bytes) {
                for item in items {
                    let _ = item.client_frame().map(|f| f.to_owned());
                }
            }
            if let Ok(items) = outbound_items(&bytes) {
                for item in items {
                    let _ = item.server_frame().map(|f| f.to_owned());
                }
            }
        }
    }
}

#[test]
fn batches_over_the_envelope_limit_do_not_encode() {
    let frame = vec![0u8; 64 * 1024];
    let items: Vec<Inbound> = (0..(MAX_ENVELOPE_BYTES / frame.len() + 1))
        .map(|_| Inbound {
            user_id: 1,
            node_id: 2,
            core: 3,
            connection_id: 4,
            received_at_us: 5,
            frame: &frame,
        })
        .collect();
    assert!(matches!(
        InboundBatch { items: &items }.encode(),
        Err(WireError::TooLarge { .. })
    ));
    assert_eq!(
        inbound_items(&[3, 0, 0]).unwrap_err(),
        WireError::UnsupportedVersion(3)
    );
}
