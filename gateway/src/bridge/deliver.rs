//! Deliveries to the cores: each frame of a delivery envelope goes only to the cores that
//! hold its targets (a user's sessions, as the registry's session map knows them; a
//! connection's core, from its id), as one refcounted WebSocket frame. A full mailbox never
//! blocks the bridge: what does not fit waits in order in that core's parking queue, and the
//! bridge stops taking deliveries from the broker while too much waits, counted in
//! deliveries and in bytes (parked, and in the mailboxes), so that what a slow core or a
//! flood of sync pages leaves waiting stays in the broker rather than in this process.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use wire::envelope::{Target, outbound_items};

use super::registry::Sessions;
use crate::router::{CoreMsg, Delivery, Mailbox, Skip, connection_core};

/// How often parked deliveries try their mailbox again.
pub(super) const RETRY: Duration = Duration::from_millis(1);

/// Deliveries parked across all cores before the bridge stops taking more from the broker
/// (the unacknowledged prefetch then holds the rest in the broker).
const MAX_PARKED: usize = 16 * 1024;

/// Bytes of deliveries parked or in mailboxes before the bridge stops taking more: 256 sync
/// pages of maximal messages.
const MAX_WAITING_BYTES: usize = 64 * 1024 * 1024;

/// Routes deliveries to core mailboxes.
pub(super) struct Router {
    sessions: Rc<RefCell<Sessions>>,
    /// Per core, deliveries waiting for room, in order.
    parked: Vec<VecDeque<CoreMsg>>,
    parked_total: usize,
    /// Bytes of the parked deliveries.
    parked_bytes: usize,
}

impl Router {
    pub(super) fn new(cores: usize, sessions: Rc<RefCell<Sessions>>) -> Router {
        Router {
            sessions,
            parked: (0..cores).map(|_| VecDeque::new()).collect(),
            parked_total: 0,
            parked_bytes: 0,
        }
    }

    /// Whether the bridge may take another delivery from the broker.
    pub(super) fn has_room(&self, mailboxes: &[Mailbox]) -> bool {
        let in_mailboxes: usize = mailboxes.iter().map(Mailbox::delivery_bytes).sum();
        self.parked_total < MAX_PARKED && self.parked_bytes + in_mailboxes < MAX_WAITING_BYTES
    }

    /// Whether deliveries wait for a mailbox.
    pub(super) fn is_parked(&self) -> bool {
        self.parked_total > 0
    }

    /// Hands every frame of a delivery envelope to the cores that hold its targets.
    pub(super) fn route(&mut self, mailboxes: &[Mailbox], data: &[u8]) {
        let items = match outbound_items(data) {
            Ok(items) => items,
            Err(error) => {
                tracing::error!(%error, "dropping an invalid delivery envelope");
                return;
            }
        };
        let now = Instant::now();
        let mut per_core: Vec<Vec<Target>> = vec![Vec::new(); mailboxes.len()];
        let mut skip_on: Vec<Option<Skip>> = vec![None; mailboxes.len()];
        for item in items {
            let delivery = match Delivery::new(item.frame_bytes(), now) {
                Ok(delivery) => delivery,
                Err(error) => {
                    tracing::error!(%error, "dropping a delivery with an invalid server frame");
                    continue;
                }
            };
            {
                let sessions = self.sessions.borrow();
                for target in item.targets.iter().map(|t| t.to_native()) {
                    match target {
                        Target::User(user) => match sessions.cores_of(user) {
                            Some(cores) => {
                                for core in cores {
                                    if let Some(list) = per_core.get_mut(core) {
                                        list.push(target);
                                    }
                                }
                            }
                            // Not known here yet (its session's registration is still on
                            // its way): every core looks, as a core without the user
                            // writes nothing.
                            None => per_core.iter_mut().for_each(|list| list.push(target)),
                        },
                        Target::Connection(id) => {
                            if let Some(list) = per_core.get_mut(connection_core(id)) {
                                list.push(target);
                            }
                        }
                        Target::NotConnection(id) => {
                            if let Some(skip) = skip_on.get_mut(connection_core(id)) {
                                *skip = Some(Skip::Connection(id));
                            }
                        }
                    }
                }
            }
            for (core, targets) in per_core.iter_mut().enumerate() {
                let except = skip_on[core].take();
                if targets.is_empty() {
                    continue;
                }
                let msg = CoreMsg::Deliver {
                    targets: std::mem::take(targets).into(),
                    except,
                    delivery: delivery.clone(),
                };
                self.push(mailboxes, core, msg);
            }
        }
    }

    /// Moves parked deliveries into their mailboxes while they fit.
    pub(super) fn retry(&mut self, mailboxes: &[Mailbox]) {
        for (core, parked) in self.parked.iter_mut().enumerate() {
            while let Some(msg) = parked.pop_front() {
                let bytes = msg.pinned_bytes();
                if let Err(msg) = mailboxes[core].push(msg) {
                    parked.push_front(msg);
                    break;
                }
                self.parked_total -= 1;
                self.parked_bytes -= bytes;
            }
        }
    }

    /// Pushes behind whatever already waits for this core, so its deliveries stay in order.
    fn push(&mut self, mailboxes: &[Mailbox], core: usize, msg: CoreMsg) {
        let parked = &mut self.parked[core];
        let msg = if parked.is_empty() {
            match mailboxes[core].push(msg) {
                Ok(()) => return,
                Err(msg) => msg,
            }
        } else {
            msg
        };
        self.parked_bytes += msg.pinned_bytes();
        parked.push_back(msg);
        self.parked_total += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::task::{Context, Poll, Waker};

    use wire::ServerFrame;
    use wire::envelope::{Outbound, OutboundBatch};
    use wire::server::TypingEvent;

    use super::*;
    use crate::bridge::SessionChange;
    use crate::router::connection_id;

    fn envelope(items: &[(Vec<Target>, u64)]) -> Vec<u8> {
        let frames: Vec<Vec<u8>> = items
            .iter()
            .map(|(_, chat_id)| {
                ServerFrame::Typing(TypingEvent {
                    chat_id: *chat_id,
                    user_id: 1,
                })
                .encode()
                .expect("frame")
            })
            .collect();
        let outbound: Vec<Outbound> = items
            .iter()
            .zip(&frames)
            .map(|((targets, _), frame)| Outbound { targets, frame })
            .collect();
        OutboundBatch { items: &outbound }
            .encode()
            .expect("envelope")
    }

    /// What a mailbox holds: per delivery, its targets.
    fn drain(mailbox: &Mailbox) -> Vec<Vec<Target>> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut out = Vec::new();
        while let Poll::Ready(msg) = mailbox.poll_recv(&mut cx) {
            if let CoreMsg::Deliver { targets, .. } = msg {
                out.push(targets.to_vec());
            }
        }
        out
    }

    fn router_with_user_7_on_core_1() -> Router {
        let mut sessions = Sessions::default();
        sessions.apply_for_test(SessionChange {
            user: 7,
            core: 1,
            closed_at_us: None,
        });
        Router::new(3, Rc::new(RefCell::new(sessions)))
    }

    #[test]
    fn deliveries_reach_only_the_cores_that_hold_their_targets() {
        let mailboxes: Vec<Mailbox> = (0..3).map(|_| Mailbox::new(16)).collect();
        let mut router = router_with_user_7_on_core_1();
        let on_core_2 = Target::Connection(connection_id(2, 5, 0));
        router.route(
            &mailboxes,
            &envelope(&[
                (vec![Target::User(7)], 1),
                (vec![Target::User(7), on_core_2], 2),
                (vec![Target::User(8)], 3),
            ]),
        );
        assert_eq!(drain(&mailboxes[0]), [vec![Target::User(8)]]);
        assert_eq!(
            drain(&mailboxes[1]),
            [
                vec![Target::User(7)],
                vec![Target::User(7)],
                vec![Target::User(8)]
            ]
        );
        assert_eq!(
            drain(&mailboxes[2]),
            [vec![on_core_2], vec![Target::User(8)]]
        );
    }

    #[test]
    fn a_full_mailbox_parks_deliveries_without_blocking_until_they_fit() {
        let mailboxes: Vec<Mailbox> = (0..3).map(|_| Mailbox::new(2)).collect();
        let mut router = router_with_user_7_on_core_1();
        let items: Vec<(Vec<Target>, u64)> = (0..5).map(|c| (vec![Target::User(7)], c)).collect();
        router.route(&mailboxes, &envelope(&items));
        assert!(router.is_parked());
        assert_eq!(drain(&mailboxes[1]).len(), 2);
        router.retry(&mailboxes);
        assert_eq!(drain(&mailboxes[1]).len(), 2);
        router.retry(&mailboxes);
        assert_eq!(drain(&mailboxes[1]).len(), 1);
        assert!(!router.is_parked());
        assert!(router.has_room(&mailboxes));
    }
}
