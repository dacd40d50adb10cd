//! A core's sessions, by connection and by user, in one place: what routes a delivery and
//! what the sweep walks. A session sits at the place its connection id names (see
//! [`crate::router::connection_index`]), so finding it by id costs a bounds check and one
//! word per session instead of a hash table's entry; the sweep visits every
//! [`Registry::slots`]th place per tick instead of every session at once.

use std::hash::{BuildHasher, RandomState};
use std::rc::Rc;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

use wire::UserId;

use crate::outbox::Outbox;
use crate::router::{connection_id, connection_index};

/// The sessions of one core.
#[derive(Debug)]
pub struct Registry {
    core: usize,
    /// Connections opened on this core so far (the next one's number follows).
    opened: u64,
    /// Sessions at their places; a closed session's place is empty until reused.
    places: Vec<Option<Rc<Outbox>>>,
    /// Empty places, the most recently emptied last (reused first, while its memory is
    /// warm).
    free: Vec<u32>,
    /// How many places hold a session.
    len: usize,
    /// How many groups the sweep visits the places in, one per tick.
    slots: usize,
    /// The place of each user's latest session on this core, found by the user its
    /// session names. The user's other sessions follow from it, each outbox naming the
    /// place of the next ([`Outbox::next_of_user`]): one entry of four bytes per user,
    /// whatever the number of its sessions, since the key is read from the session.
    users: HashTable<u32>,
    hasher: RandomState,
}

/// The end of a user's list of sessions.
const NO_PLACE: u32 = u32::MAX;

impl Registry {
    /// An empty registry for core `core` whose sweep visits its sessions in `slots` groups,
    /// and whose connection numbers start after `first_number`.
    pub fn new(core: usize, slots: usize, first_number: u64) -> Registry {
        Registry {
            core,
            opened: first_number,
            places: Vec::new(),
            free: Vec::new(),
            len: 0,
            slots: slots.max(1),
            users: HashTable::new(),
            hasher: RandomState::new(),
        }
    }

    /// Adds the session `outbox_for` makes for its new connection id, under that id and
    /// its user. The core admits at most [`crate::router::MAX_SESSIONS_PER_CORE`]
    /// connections, so a place is always found.
    pub fn insert(&mut self, outbox_for: impl FnOnce(u64) -> Outbox) -> Rc<Outbox> {
        let index = match self.free.pop() {
            Some(index) => index as usize,
            None => {
                self.places.push(None);
                self.places.len() - 1
            }
        };
        // Only the count's low bits go into the id: it may wrap.
        self.opened = self.opened.wrapping_add(1);
        let id = connection_id(self.core, self.opened, index);
        let outbox = Rc::new(outbox_for(id));
        let user = outbox.user_id;
        self.places[index] = Some(outbox.clone());
        let Registry {
            places,
            users,
            hasher,
            ..
        } = self;
        let hash_of =
            |&p: &u32| hasher.hash_one(user_at(places, p).expect("a user's entry names a session"));
        let next = match users.entry(hasher.hash_one(user), holds_user(places, user), hash_of) {
            Entry::Occupied(mut head) => std::mem::replace(head.get_mut(), index as u32),
            Entry::Vacant(vacant) => {
                vacant.insert(index as u32);
                NO_PLACE
            }
        };
        outbox.set_next_of_user(next);
        self.len += 1;
        outbox
    }

    /// Forgets a session.
    pub fn remove(&mut self, outbox: &Outbox) {
        let id = outbox.connection_id;
        let Some(removed) = self.get(id).cloned() else {
            return;
        };
        let index = connection_index(id);
        self.unlink_from_user(&removed, index as u32);
        self.places[index] = None;
        self.free.push(index as u32);
        self.len -= 1;
        if self.len == 0 {
            // Nothing open: give the places' memory back rather than keep a burst's worth.
            self.places = Vec::new();
            self.free = Vec::new();
        }
    }

    /// Takes the session at `place` out of its user's list.
    fn unlink_from_user(&mut self, outbox: &Outbox, place: u32) {
        let user = outbox.user_id;
        let next = outbox.next_of_user();
        let hash = self.hasher.hash_one(user);
        let places = &self.places;
        let Ok(mut head) = self.users.find_entry(hash, holds_user(places, user)) else {
            return;
        };
        if *head.get() == place {
            if next == NO_PLACE {
                head.remove();
            } else {
                *head.get_mut() = next;
            }
            return;
        }
        let mut at = *head.get();
        while let Some(before) = self.at(at) {
            if before.next_of_user() == place {
                before.set_next_of_user(next);
                return;
            }
            at = before.next_of_user();
        }
    }

    /// The session at `place`, if any.
    fn at(&self, place: u32) -> Option<&Rc<Outbox>> {
        self.places.get(place as usize)?.as_ref()
    }

    /// The session of connection `id`, if it is on this core.
    pub fn get(&self, id: u64) -> Option<&Rc<Outbox>> {
        self.places
            .get(connection_index(id))?
            .as_ref()
            .filter(|outbox| outbox.connection_id == id)
    }

    /// The sessions of `user` on this core, the latest first.
    pub fn user_sessions(&self, user: UserId) -> impl Iterator<Item = &Rc<Outbox>> {
        let mut at = self.head_of(user).unwrap_or(NO_PLACE);
        std::iter::from_fn(move || {
            let outbox = self.at(at)?;
            at = outbox.next_of_user();
            Some(outbox)
        })
    }

    /// Whether `user` has a session on this core.
    pub fn has_user(&self, user: UserId) -> bool {
        self.head_of(user).is_some()
    }

    /// The place of `user`'s latest session on this core.
    fn head_of(&self, user: UserId) -> Option<u32> {
        let hash = self.hasher.hash_one(user);
        let places = &self.places;
        self.users.find(hash, holds_user(places, user)).copied()
    }

    /// Every session, in no particular order.
    pub fn all(&self) -> impl Iterator<Item = &Rc<Outbox>> {
        self.places.iter().flatten()
    }

    /// The connection ids of the sweep's group `slot` (every [`Registry::slots`]th place
    /// from `slot` on), appended to `into`.
    pub fn slot_connections(&self, slot: usize, into: &mut Vec<u64>) {
        let places = self
            .places
            .iter()
            .skip(slot % self.slots)
            .step_by(self.slots);
        into.extend(places.flatten().map(|outbox| outbox.connection_id));
    }

    /// How many groups the sweep visits the sessions in.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// How many sessions are open.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The user of the session at `place`: what the table of users is keyed by.
fn user_at(places: &[Option<Rc<Outbox>>], place: u32) -> Option<UserId> {
    Some(places.get(place as usize)?.as_ref()?.user_id)
}

/// Whether a place in the table of users is `user`'s, for its lookups.
fn holds_user(places: &[Option<Rc<Outbox>>], user: UserId) -> impl Fn(&u32) -> bool {
    move |&place| user_at(places, place) == Some(user)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::outbox::{OutboxShared, QueueLimits};

    fn outbox(id: u64, user: UserId) -> Outbox {
        let limits = QueueLimits {
            frames: 8,
            bytes: 1024,
            max_frames: 16,
            max_bytes: 4096,
            stall: Duration::from_secs(1),
            behind_for: Duration::from_secs(1),
        };
        Outbox::new(id, user, u64::MAX, false, OutboxShared::new(limits))
    }

    fn open(registry: &mut Registry, user: UserId) -> u64 {
        registry.insert(|id| outbox(id, user)).connection_id
    }

    fn sessions_of(registry: &Registry, user: UserId) -> Vec<u64> {
        registry
            .user_sessions(user)
            .map(|outbox| outbox.connection_id)
            .collect()
    }

    #[test]
    fn sessions_are_found_by_connection_and_by_user_until_removed() {
        let mut registry = Registry::new(3, 8, 0);
        let a = open(&mut registry, 7);
        let b = open(&mut registry, 7);
        assert_ne!(a, b);
        assert_eq!(crate::router::connection_core(a), 3);
        assert_eq!(registry.len(), 2);
        assert_eq!(sessions_of(&registry, 7), [b, a]);
        assert!(registry.has_user(7) && !registry.has_user(8));
        assert!(registry.get(a).is_some());
        registry.remove(&outbox(a, 7));
        assert!(registry.get(a).is_none());
        assert_eq!(sessions_of(&registry, 7), [b]);
        let c = open(&mut registry, 7);
        assert_eq!(sessions_of(&registry, 7), [c, b]);
        registry.remove(&outbox(b, 7));
        assert_eq!(sessions_of(&registry, 7), [c]);
        registry.remove(&outbox(c, 7));
        assert!(registry.is_empty());
        assert!(!registry.has_user(7));
        assert!(sessions_of(&registry, 7).is_empty());
        assert_eq!(registry.all().count(), 0);
    }

    #[test]
    fn a_users_list_survives_removals_from_its_head_middle_and_tail() {
        let mut registry = Registry::new(0, 4, 0);
        let ids: Vec<u64> = (0..5).map(|_| open(&mut registry, 9)).collect();
        let other = open(&mut registry, 10);
        let mut expected: Vec<u64> = ids.iter().rev().copied().collect();
        assert_eq!(sessions_of(&registry, 9), expected);
        for gone in [ids[2], ids[4], ids[0]] {
            registry.remove(&outbox(gone, 9));
            expected.retain(|id| *id != gone);
            assert_eq!(sessions_of(&registry, 9), expected);
        }
        let again = open(&mut registry, 9);
        expected.insert(0, again);
        assert_eq!(sessions_of(&registry, 9), expected);
        assert_eq!(sessions_of(&registry, 10), [other]);
        for id in expected {
            registry.remove(&outbox(id, 9));
        }
        assert!(sessions_of(&registry, 9).is_empty());
        assert_eq!(registry.len(), 1);
    }

    proptest::proptest! {
        /// Opens and closes in any order, over enough users for the table of users to grow
        /// and shrink its buckets, find every user's sessions, latest first, as a plain
        /// model of the same steps does.
        #[test]
        fn users_sessions_follow_any_opens_and_closes(
            steps in proptest::collection::vec((proptest::bool::weighted(0.6), 0u64..300, proptest::num::usize::ANY), 1..1500)
        ) {
            let mut registry = Registry::new(0, 8, 0);
            let mut model: Vec<(u64, UserId)> = Vec::new();
            for (opens, user, pick) in steps {
                if opens || model.is_empty() {
                    model.push((open(&mut registry, user), user));
                } else {
                    let (id, user) = model.remove(pick % model.len());
                    registry.remove(&outbox(id, user));
                }
            }
            proptest::prop_assert_eq!(registry.len(), model.len());
            for user in 0..300 {
                let expected: Vec<u64> = model
                    .iter()
                    .rev()
                    .filter(|(_, of)| *of == user)
                    .map(|(id, _)| *id)
                    .collect();
                proptest::prop_assert_eq!(registry.has_user(user), !expected.is_empty());
                proptest::prop_assert_eq!(sessions_of(&registry, user), expected);
            }
        }
    }

    #[test]
    fn a_reused_place_does_not_answer_to_the_closed_connections_id() {
        let mut registry = Registry::new(1, 8, 41);
        let _kept = open(&mut registry, 1);
        let closed = open(&mut registry, 2);
        registry.remove(&outbox(closed, 2));
        let reopened = open(&mut registry, 3);
        assert_eq!(
            connection_index(reopened),
            connection_index(closed),
            "the emptied place is reused"
        );
        assert_ne!(reopened, closed);
        assert!(
            registry.get(closed).is_none(),
            "a delivery to the old id is dropped"
        );
        assert_eq!(registry.get(reopened).map(|o| o.user_id), Some(3));
        // Removing the closed connection again must not remove the new one.
        registry.remove(&outbox(closed, 2));
        assert_eq!(registry.len(), 2);
        assert!(registry.get(reopened).is_some());
    }

    #[test]
    fn ids_stay_under_two_to_the_53_and_name_their_core() {
        for core in [0, 1, 255] {
            let mut registry = Registry::new(core, 8, u64::MAX - 10);
            for user in 0..20 {
                let id = open(&mut registry, user);
                assert!(id < 1 << 53, "{id} is not exact in JavaScript");
                assert_eq!(crate::router::connection_core(id), core);
            }
        }
    }

    #[test]
    fn the_sweep_groups_cover_every_session_once() {
        let slots = 10;
        let mut registry = Registry::new(0, slots, 12_345);
        let ids: Vec<u64> = (0..1000).map(|user| open(&mut registry, user)).collect();
        for id in ids.iter().step_by(3) {
            let user = registry.get(*id).map(|o| o.user_id).expect("open");
            registry.remove(&outbox(*id, user));
        }
        let mut seen = Vec::new();
        for slot in 0..slots {
            let before = seen.len();
            registry.slot_connections(slot, &mut seen);
            let group = seen.len() - before;
            assert!((60..=74).contains(&group), "group {slot} holds {group}");
        }
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), registry.len());
        assert_eq!(registry.all().count(), registry.len());
    }
}
