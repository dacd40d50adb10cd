//! From outputs and a registry lookup to outbound envelopes: one per (server frame, node),
//! each frame encoded once however many nodes and targets receive it.

use std::collections::{BTreeMap, BTreeSet};

use wire::envelope::{Outbound, Target};
use wire::server::{Presence, PresenceEntry};
use wire::{ServerFrame, UserId};

use crate::outcome::{Body, Output, Recipients};
use crate::registry::Directory;

/// Most targets in one envelope, so that a frame for a large group on one node stays far
/// below the envelope size limit (a target takes 9 to 16 bytes archived).
pub(crate) const MAX_TARGETS_PER_ENVELOPE: usize = 2048;

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
        if let Recipients::Users(users) = &output.to {
            nodes.extend(users.iter().copied());
        }
        if let Body::Presence { users, .. } = &output.body {
            nodes.extend(users.iter().copied());
            seen.extend(users.iter().copied());
        }
    }
    (nodes.into_iter().collect(), seen.into_iter().collect())
}

/// Builds the envelopes, in output order (so each node receives a chat's messages in seq
/// order). Outputs that cannot be encoded are logged and counted in the second value; they
/// are bugs (every frame the backend builds is within the protocol's limits).
pub(crate) fn route(
    outputs: Vec<Output>,
    directory: &Directory,
    now_us: u64,
) -> (Vec<Envelope>, u64) {
    let mut envelopes = Vec::new();
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
        let mut per_node: BTreeMap<u32, Vec<Target>> = BTreeMap::new();
        match output.to {
            Recipients::Users(users) => {
                for user in users {
                    for &node in directory.nodes_of(user) {
                        per_node.entry(node).or_default().push(Target::User(user));
                    }
                }
            }
            Recipients::Connection {
                node_id,
                connection_id,
            } => per_node
                .entry(node_id)
                .or_default()
                .push(Target::Connection(connection_id)),
        }
        for (node_id, targets) in per_node {
            for chunk in targets.chunks(MAX_TARGETS_PER_ENVELOPE) {
                match (Outbound {
                    targets: chunk,
                    frame: &bytes,
                })
                .encode()
                {
                    Ok(body) => envelopes.push(Envelope {
                        node_id,
                        body,
                        republish: output.republish,
                    }),
                    Err(error) => {
                        tracing::error!(%error, node_id, "dropping an envelope that does not encode");
                        dropped += 1;
                    }
                }
            }
        }
    }
    (envelopes, dropped)
}

fn presence(client_msg_id: u64, users: &[UserId], directory: &Directory, now_us: u64) -> Presence {
    let users = users
        .iter()
        .map(|&user_id| {
            let online = !directory.nodes_of(user_id).is_empty();
            PresenceEntry {
                user_id,
                online,
                // Someone online is seen now; otherwise the gateway's disconnect time.
                last_seen_us: if online {
                    now_us
                } else {
                    directory.seen.get(&user_id).copied().unwrap_or(0)
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
    use wire::envelope::OutboundView;
    use wire::server::TypingEvent;

    use super::*;

    fn directory() -> Directory {
        let mut d = Directory::default();
        d.add(1, 10);
        d.add(2, 10);
        d.add(2, 20);
        d.seen.insert(3, 42);
        d
    }

    fn decode(envelope: &Envelope) -> (Vec<Target>, ServerFrame) {
        let view = OutboundView::access(&envelope.body).expect("valid envelope");
        let targets = view.targets.iter().map(|t| t.to_native()).collect();
        let frame = ServerFrameRef::access(view.frame_bytes())
            .and_then(|f| f.to_owned())
            .expect("frame");
        (targets, frame)
    }

    #[test]
    fn one_envelope_per_node_with_every_target_there() {
        let frame = ServerFrame::Typing(TypingEvent {
            chat_id: 5,
            user_id: 9,
        });
        let outputs = vec![Output::new(frame.clone(), Recipients::Users(vec![1, 2, 3]))];
        let (envelopes, dropped) = route(outputs, &directory(), 0);
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
        let (envelopes, _) = route(outputs, &Directory::default(), 0);
        assert_eq!(envelopes.len(), 1);
        assert_eq!(envelopes[0].node_id, 77);
        assert_eq!(
            decode(&envelopes[0]),
            (vec![Target::Connection(1234)], frame)
        );
    }

    #[test]
    fn presence_comes_from_the_directory() {
        let outputs = vec![Output {
            body: Body::Presence {
                client_msg_id: 8,
                users: vec![2, 3, 4],
            },
            to: Recipients::Connection {
                node_id: 1,
                connection_id: 1,
            },
            republish: false,
        }];
        assert_eq!(lookups(&outputs), (vec![2, 3, 4], vec![2, 3, 4]));
        let (envelopes, _) = route(outputs, &directory(), 1000);
        let (_, frame) = decode(&envelopes[0]);
        let ServerFrame::Presence(presence) = frame else {
            panic!("not a presence frame: {frame:?}");
        };
        let entries: Vec<(u64, bool, u64)> = presence
            .users
            .iter()
            .map(|e| (e.user_id, e.online, e.last_seen_us))
            .collect();
        assert_eq!(entries, [(2, true, 1000), (3, false, 42), (4, false, 0)]);
    }

    #[test]
    fn large_target_lists_are_split() {
        let mut d = Directory::default();
        let users: Vec<u64> = (0..5000).collect();
        for &u in &users {
            d.add(u, 1);
        }
        let frame = ServerFrame::Typing(TypingEvent {
            chat_id: 5,
            user_id: 9,
        });
        let (envelopes, dropped) = route(vec![Output::new(frame, Recipients::Users(users))], &d, 0);
        assert_eq!(dropped, 0);
        assert_eq!(envelopes.len(), 3);
        let total: usize = envelopes.iter().map(|e| decode(e).0.len()).sum();
        assert_eq!(total, 5000);
    }
}
