//! Deliveries to the cores: each frame of a delivery envelope goes only to the cores that
//! hold its targets (a user's sessions, as the registry's session map knows them; a
//! connection's core, from its id), as one refcounted WebSocket frame. A full mailbox never
//! blocks the bridge: what does not fit waits in order in that core's parking queue, and the
//! bridge stops taking deliveries from the broker while too much waits.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use wire::envelope::{Target, outbound_items};

use super::registry::Sessions;
use crate::router::{CoreMsg, Delivery, Mailbox, connection_core};

/// How often parked deliveries try their mailbox again.
pub(super) const RETRY: Duration = Duration::from_millis(1);

/// Deliveries parked across all cores before the bridge stops taking more from the broker
/// (the unacknowledged prefetch then holds the rest in the broker).
const MAX_PARKED: usize = 16 * 1024;

/// Routes deliveries to core mailboxes.
pub(super) struct Router {
    sessions: Rc<RefCell<Sessions>>,
    /// Per core, deliveries waiting for room, in order.
    parked: Vec<VecDeque<CoreMsg>>,
    parked_total: usize,
}

impl Router {
    pub(super) fn new(cores: usize, sessions: Rc<RefCell<Sessions>>) -> Router {
        Router {
            sessions,
            parked: (0..cores).map(|_| VecDeque::new()).collect(),
            parked_total: 0,
        }
    }

    /// Whether the bridge may take another delivery from the broker.
    pub(super) fn has_room(&self) -> bool {
        self.parked_total < MAX_PARKED
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
                                for &core in cores {
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
                    }
                }
            }
            for (core, targets) in per_core.iter_mut().enumerate() {
                if targets.is_empty() {
                    continue;
                }
                let msg = CoreMsg::Deliver {
                    targets: std::mem::take(targets).into(),
                    except: None,
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
                if let Err(msg) = mailboxes[core].push(msg) {
                    parked.push_front(msg);
                    break;
                }
                self.parked_total -= 1;
            }
        }
    }

    /// Pushes behind whatever already waits for this core, so its deliveries stay in order.
    fn push(&mut self, mailboxes: &[Mailbox], core: usize, msg: CoreMsg) {
        let parked = &mut self.parked[core];
        if parked.is_empty() {
            match mailboxes[core].push(msg) {
                Ok(()) => return,
                Err(msg) => parked.push_back(msg),
            }
        } else {
            parked.push_back(msg);
        }
        self.parked_total += 1;
    }
}
