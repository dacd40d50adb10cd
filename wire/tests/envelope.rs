//! Envelopes between gateway and backend: their fields survive the archive and the frame
//! inside comes out byte for byte.

use proptest::prelude::*;
use wire::envelope::{
    ArchivedTarget, ENVELOPE_VERSION, Inbound, InboundView, MAX_ENVELOPE_BYTES, Outbound,
    OutboundView, Target,
};
use wire::{ClientFrame, ServerFrame, WireError};

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
            (Err(a), Err(b)) => prop_assert_eq!(a, b),
            (a, b) => prop_assert!(false, "envelope says {:?}, direct decode says {:?}", a.map(|f| f.kind()), b),
        }

        let bytes = Outbound { targets: &targets, frame: &frame }.encode().unwrap();
        let view = OutboundView::access(&bytes).unwrap();
        prop_assert_eq!(view.frame_bytes(), &frame[..]);
        match (view.server_frame(), ServerFrame::decode(&frame)) {
            (Ok(inner), Ok(direct)) => prop_assert_eq!(inner.to_owned().unwrap(), direct),
            (Err(a), Err(b)) => prop_assert_eq!(a, b),
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
