//! From outputs and a registry lookup to outbound envelopes: one batch per node (more only
//! when a node's frames outgrow [`BATCH_BYTES`]), each frame encoded once however many
//! nodes and targets receive it.

use std::collections::{BTreeMap, BTreeSet};

use wire::envelope::{MAX_ENVELOPE_BYTES, Outbound, OutboundBatch, Target};
use wire::server::{Presence, PresenceEntry};
use wire::{ServerFrame, UserId};

use crate::outcome::{Body, Output, Recipients};
use crate::registry::Directory;

/// Most targets in one envelope, so that a frame for a large group on one node stays far
/// below the envelope size limit (a target takes 9 to 16 bytes archived).
pub(crate) const MAX_TARGETS_PER_ENVELOPE: usize = 2048;

/// Size a node's batch grows to before the next frame starts another one. Large enough that
/// a busy batch is one broker message per node, small enough that a gateway routes one
/// without holding much memory; a frame larger than this (a full sync page) travels alone.
pub(crate) const BATCH_BYTES: usize = 256 * 1024;
const _: () = assert!(BATCH_BYTES < MAX_ENVELOPE_BYTES);

/// How frames travel to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// Batch envelopes: one per node per batch.
    Batch,
    /// One single-frame envelope per frame, for gateways that predate batch envelopes.
    Single,
}

/// One publish to one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Envelope {
    pub node_id: u32,
    /// The encoded `wire::envelope::Outbound`.
    pub body: Vec<u8>,
    pub republish: bool,
}

/// The users whose nodes the outputs need, and those whose last-seen times they need.
pub(crate) fn lookups(outputs: &[Output]) -> (Vec<UserId>, Vec<UserId>) {
    let mut nodes = BTreeSet::new();
    let mut seen = BTreeSet::new();
    for output in outputs {
        if let Recipients::Users(users) | Recipients::UsersBut { users, .. } = &output.to {
            nodes.extend(users.iter().copied());
        }
        if let Body::Presence { users, .. } = &output.body {
            let visible = users.iter().filter(|(_, v)| *v).map(|(u, _)| *u);
            nodes.extend(visible.clone());
            seen.extend(visible);
        }
    }
    (nodes.into_iter().collect(), seen.into_iter().collect())
}

/// Builds the envelopes: per node, the frames in output order (so each node receives a
/// chat's messages in seq order), batched. Outputs that cannot be encoded are logged and
/// counted in the second value; they are bugs (every frame the backend builds is within the
/// protocol's limits).
pub(crate) fn route(
    outputs: Vec<Output>,
    directory: &Directory,
    now_us: u64,
    form: Form,
) -> (Vec<Envelope>, u64) {
    let mut frames: Vec<Vec<u8>> = Vec::with_capacity(outputs.len());
    // Per node: (frame index, targets, republish), in output order.
    let mut per_node: BTreeMap<u32, Vec<(usize, Vec<Target>, bool)>> = BTreeMap::new();
    let mut dropped = 0;
    for output in outputs {
        let frame = match output.body {
            Body::Frame(frame) => frame,
            Body::Presence {
                client_msg_id,
                users,
            } => ServerFrame::Presence(presence(client_msg_id, &users, directory, now_us)),
        };
        let bytes = match frame.encode() {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::error!(%error, kind = frame.kind().name(), "dropping a server frame that does not encode");
                dropped += 1;
                continue;
            }
        };
        let index = frames.len();
        frames.push(bytes);
        let mut targets: BTreeMap<u32, Vec<Target>> = BTreeMap::new();
        // A connection the node's user targets skip, named in every envelope of that node.
        let mut skip = None;
        match output.to {
            Recipients::Users(users) => {
                for user in users {
                    for &node in directory.nodes_of(user) {
                        targets.entry(node).or_default().push(Target::User(user));
                    }
                }
            }
            Recipients::Connection {
                node_id,
                connection_id,
            } => targets
                .entry(node_id)
                .or_default()
                .push(Target::Connection(connection_id)),
            Recipients::UsersBut {
                users,
                node_id,
                connection_id,
            } => {
                for user in users {
                    for &node in directory.nodes_of(user) {
                        targets.entry(node).or_default().push(Target::User(user));
                    }
                }
                skip = Some((node_id, Target::NotConnection(connection_id)));
            }
        }
        for (node_id, targets) in targets {
            let items = per_node.entry(node_id).or_default();
            for chunk in targets.chunks(MAX_TARGETS_PER_ENVELOPE) {
                let mut chunk = chunk.to_vec();
                chunk.extend(skip.filter(|(on, _)| *on == node_id).map(|(_, t)| t));
                items.push((index, chunk, output.republish));
            }
        }
    }
    let mut envelopes = Vec::with_capacity(per_node.len());
    for (node_id, items) in per_node {
        let batches = match form {
            Form::Batch => cut(&items, &frames),
            Form::Single => items.chunks(1).collect(),
        };
        for batch in batches {
            let republish = batch.iter().any(|(_, _, republish)| *republish);
            let outbound: Vec<Outbound> = batch
                .iter()
                .map(|(index, targets, _)| Outbound {
                    targets,
                    frame: &frames[*index],
                })
                .collect();
            let encoded = match (form, outbound.as_slice()) {
                (Form::Single, [one]) => one.encode(),
                _ => OutboundBatch { items: &outbound }.encode(),
            };
            match encoded {
                Ok(body) => envelopes.push(Envelope {
                    node_id,
                    body,
                    republish,
                }),
                Err(error) => {
                    tracing::error!(%error, node_id, frames = batch.len(), "dropping an envelope that does not encode");
                    dropped += batch.len() as u64;
                }
            }
        }
    }
    (envelopes, dropped)
}

/// Cuts a node's items into batches of at most [`BATCH_BYTES`] (estimated from the frame and
/// target sizes, with room for the archive's own fields), never splitting an item.
fn cut<'a>(
    items: &'a [(usize, Vec<Target>, bool)],
    frames: &[Vec<u8>],
) -> Vec<&'a [(usize, Vec<Target>, bool)]> {
    let size = |(index, targets, _): &(usize, Vec<Target>, bool)| {
        frames[*index].len() + targets.len() * 16 + 32
    };
    let mut batches = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, item) in items.iter().enumerate() {
        let item_bytes = size(item);
        if i > start && bytes + item_bytes > BATCH_BYTES {
            batches.push(&items[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += item_bytes;
    }
    if start < items.len() {
        batches.push(&items[start..]);
    }
    batches
}

fn presence(
    client_msg_id: u64,
    users: &[(UserId, bool)],
    directory: &Directory,
    now_us: u64,
) -> Presence {
    let users = users
        .iter()
        .map(|&(user_id, visible)| {
            let online = visible && !directory.nodes_of(user_id).is_empty();
            PresenceEntry {
                user_id,
                online,
                // Someone online is seen now; otherwise the gateway's disconnect time.
                last_seen_us: match (online, visible) {
                    (true, _) => now_us,
                    (false, true) => directory.seen.get(&user_id).copied().unwrap_or(0),
                    (false, false) => 0,
                },
            }
        })
        .collect();
    Presence {
        client_msg_id,
        users,
    }
}

#[cfg(test)]
mod tests {
    use wire::ServerFrameRef;
    use wire::envelope::outbound_items;
    use wire::server::{SyncBatch, TypingEvent};

    use super::*;

    fn directory() -> Directory {
        let mut d = Directory::default();
        d.add(1, 10);
        d.add(2, 10);
        d.add(2, 20);
        d.seen.insert(3, 42);
        d
    }

    fn decode_all(envelope: &Envelope) -> Vec<(Vec<Target>, ServerFrame)> {
        outbound_items(&envelope.body)
            .expect("valid envelope")
            .iter()
            .map(|view| {
                let targets = view.targets.iter().map(|t| t.to_native()).collect();
                let frame = ServerFrameRef::access(view.frame_bytes())
                    .and_then(|f| f.to_owned())
                    .expect("frame");
                (targets, frame)
            })
            .collect()
    }

    /// The only frame of an envelope.
    fn decode(envelope: &Envelope) -> (Vec<Target>, ServerFrame) {
        let mut items = decode_all(envelope);
        assert_eq!(items.len(), 1, "one frame in the envelope");
        items.remove(0)
    }

    fn typing(chat_id: u64) -> ServerFrame {
        ServerFrame::Typing(TypingEvent {
            chat_id,
            user_id: 9,
        })
    }

    #[test]
    fn one_envelope_per_node_with_every_target_there() {
        let frame = ServerFrame::Typing(TypingEvent {
            chat_id: 5,
            user_id: 9,
        });
        let outputs = vec![Output::new(frame.clone(), Recipients::Users(vec![1, 2, 3]))];
        let (envelopes, dropped) = route(outputs, &directory(), 0, Form::Batch);
        assert_eq!(dropped, 0);
        let nodes: Vec<u32> = envelopes.iter().map(|e| e.node_id).collect();
        assert_eq!(nodes, [10, 20]);
        assert_eq!(
            decode(&envelopes[0]),
            (vec![Target::User(1), Target::User(2)], frame.clone())
        );
        assert_eq!(decode(&envelopes[1]), (vec![Target::User(2)], frame));
    }

    #[test]
    fn answers_go_to_the_origin_connection() {
        let frame = ServerFrame::Typing(TypingEvent {
            chat_id: 5,
            user_id: 9,
        });
        let outputs = vec![Output::new(
            frame.clone(),
            Recipients::Connection {
                node_id: 77,
                connection_id: 1234,
            },
        )];
        let (envelopes, _) = route(outputs, &Directory::default(), 0, Form::Batch);
        assert_eq!(envelopes.len(), 1);
        assert_eq!(envelopes[0].node_id, 77);
        assert_eq!(
            decode(&envelopes[0]),
            (vec![Target::Connection(1234)], frame)
        );
    }

    #[test]
    fn presence_comes_from_the_directory_for_the_users_the_asker_may_see() {
        let outputs = vec![Output {
            body: Body::Presence {
                client_msg_id: 8,
                users: vec![(2, true), (3, true), (4, true), (5, false)],
            },
            to: Recipients::Connection {
                node_id: 1,
                connection_id: 1,
            },
            republish: false,
        }];
        // Only the users the asker may see are looked up.
        assert_eq!(lookups(&outputs), (vec![2, 3, 4], vec![2, 3, 4]));
        let mut directory = directory();
        directory.add(5, 10);
        directory.seen.insert(5, 7);
        let (envelopes, _) = route(outputs, &directory, 1000, Form::Batch);
        let (_, frame) = decode(&envelopes[0]);
        let ServerFrame::Presence(presence) = frame else {
            panic!("not a presence frame: {frame:?}");
        };
        let entries: Vec<(u64, bool, u64)> = presence
            .users
            .iter()
            .map(|e| (e.user_id, e.online, e.last_seen_us))
            .collect();
        // User 5 shares no chat with the asker: never seen, whatever the registry says.
        assert_eq!(
            entries,
            [
                (2, true, 1000),
                (3, false, 42),
                (4, false, 0),
                (5, false, 0)
            ]
        );
    }

    #[test]
    fn large_target_lists_are_split_into_items_of_one_envelope() {
        let mut d = Directory::default();
        let users: Vec<u64> = (0..5000).collect();
        for &u in &users {
            d.add(u, 1);
        }
        let (envelopes, dropped) = route(
            vec![Output::new(typing(5), Recipients::Users(users))],
            &d,
            0,
            Form::Batch,
        );
        assert_eq!(dropped, 0);
        assert_eq!(envelopes.len(), 1);
        let items = decode_all(&envelopes[0]);
        assert_eq!(items.len(), 3);
        let total: usize = items.iter().map(|(targets, _)| targets.len()).sum();
        assert_eq!(total, 5000);
    }

    #[test]
    fn a_batch_is_one_envelope_per_node_with_frames_in_output_order() {
        let outputs: Vec<Output> = (0..100)
            .map(|chat| Output::new(typing(chat), Recipients::Users(vec![1, 2])))
            .collect();
        let (envelopes, dropped) = route(outputs, &directory(), 0, Form::Batch);
        assert_eq!(dropped, 0);
        let nodes: Vec<u32> = envelopes.iter().map(|e| e.node_id).collect();
        assert_eq!(nodes, [10, 20]);
        let chats = |envelope: &Envelope| -> Vec<u64> {
            decode_all(envelope)
                .into_iter()
                .map(|(_, frame)| match frame {
                    ServerFrame::Typing(t) => t.chat_id,
                    other => panic!("not typing: {other:?}"),
                })
                .collect()
        };
        let expected: Vec<u64> = (0..100).collect();
        assert_eq!(chats(&envelopes[0]), expected);
        assert_eq!(chats(&envelopes[1]), expected);
        assert!(envelopes.iter().all(|e| !e.republish));
    }

    #[test]
    fn the_single_form_is_one_envelope_per_frame_that_old_gateways_read() {
        let outputs: Vec<Output> = (0..3)
            .map(|chat| Output::new(typing(chat), Recipients::Users(vec![1])))
            .collect();
        let (envelopes, dropped) = route(outputs, &directory(), 0, Form::Single);
        assert_eq!(dropped, 0);
        assert_eq!(envelopes.len(), 3);
        for (chat, envelope) in envelopes.iter().enumerate() {
            assert_eq!(envelope.body[0], wire::envelope::ENVELOPE_VERSION);
            let view = wire::envelope::OutboundView::access(&envelope.body).expect("single form");
            assert_eq!(
                view.server_frame()
                    .and_then(|f| f.to_owned())
                    .expect("frame"),
                typing(chat as u64)
            );
        }
    }

    #[test]
    fn batches_are_cut_by_size_and_keep_the_order() {
        let page = |chat_id| {
            ServerFrame::SyncBatch(SyncBatch {
                client_msg_id: 1,
                chat_id,
                messages: (1..=200)
                    .map(|seq| wire::server::Message {
                        chat_id,
                        seq,
                        sender: 2,
                        client_msg_id: seq,
                        server_time_us: 0,
                        body: "x".repeat(1000),
                        kind: wire::EntryKind::Message,
                        target_seq: 0,
                    })
                    .collect(),
                has_more: true,
            })
        };
        let to = Recipients::Connection {
            node_id: 7,
            connection_id: 1,
        };
        let outputs: Vec<Output> = (0..5).map(|c| Output::new(page(c), to.clone())).collect();
        let (envelopes, dropped) = route(outputs, &Directory::default(), 0, Form::Batch);
        assert_eq!(dropped, 0);
        // Each page is about 215 KB: one per batch.
        assert_eq!(envelopes.len(), 5);
        for (chat, envelope) in envelopes.iter().enumerate() {
            assert!(envelope.body.len() <= MAX_ENVELOPE_BYTES);
            match decode(envelope).1 {
                ServerFrame::SyncBatch(page) => assert_eq!(page.chat_id, chat as u64),
                other => panic!("not a page: {other:?}"),
            }
        }
    }
}
