//! A core's sessions, by connection and by user, in one place: what routes a delivery and
//! what the sweep walks. The sessions sit in the slots of a hashed wheel (by connection id),
//! so the sweep can visit one slot per tick instead of every session at once.

use std::collections::HashMap;
use std::rc::Rc;

use wire::UserId;

use crate::outbox::Outbox;
use crate::router::connection_id;

/// The sessions of one core.
#[derive(Debug)]
pub struct Registry {
    core: usize,
    /// Connections opened on this core so far (the next one's number follows).
    opened: u64,
    /// Session by connection id, in slot `id % slots.len()`.
    slots: Box<[HashMap<u64, Rc<Outbox>>]>,
    /// Each user's connections on this core.
    users: HashMap<UserId, UserConnections>,
}

/// One user's connections on a core: almost always one, held inline in 16 bytes (a
/// `SmallVec` of one would take 24, in every entry of the table).
#[derive(Debug)]
enum UserConnections {
    One(u64),
    #[expect(
        clippy::box_collection,
        reason = "one pointer keeps the enum at 16 bytes; a Vec's three words would make it 24"
    )]
    Several(Box<Vec<u64>>),
}

impl UserConnections {
    fn as_slice(&self) -> &[u64] {
        match self {
            UserConnections::One(id) => std::slice::from_ref(id),
            UserConnections::Several(ids) => ids,
        }
    }

    fn add(&mut self, id: u64) {
        match self {
            UserConnections::One(first) => {
                *self = UserConnections::Several(Box::new(vec![*first, id]));
            }
            UserConnections::Several(ids) => ids.push(id),
        }
    }

    /// Removes `id`; returns whether none is left.
    fn remove(&mut self, id: u64) -> bool {
        match self {
            UserConnections::One(only) => *only == id,
            UserConnections::Several(ids) => {
                ids.retain(|other| *other != id);
                match ids[..] {
                    [] => true,
                    [last] => {
                        *self = UserConnections::One(last);
                        false
                    }
                    _ => false,
                }
            }
        }
    }
}

impl Registry {
    /// An empty registry for core `core` with `slots` wheel slots, whose connection numbers
    /// start after `first_number`.
    pub fn new(core: usize, slots: usize, first_number: u64) -> Registry {
        Registry {
            core,
            opened: first_number,
            slots: (0..slots.max(1)).map(|_| HashMap::new()).collect(),
            users: HashMap::new(),
        }
    }

    /// The id the next session opened on this core gets.
    pub fn next_connection_id(&mut self) -> u64 {
        self.opened += 1;
        connection_id(self.core, self.opened)
    }

    /// Adds a session under its connection id and user.
    pub fn insert(&mut self, outbox: Rc<Outbox>) {
        let id = outbox.connection_id;
        self.users
            .entry(outbox.user_id)
            .and_modify(|ids| ids.add(id))
            .or_insert(UserConnections::One(id));
        self.slot_mut(id).insert(id, outbox);
    }

    /// Forgets a session.
    pub fn remove(&mut self, outbox: &Outbox) {
        let id = outbox.connection_id;
        self.slot_mut(id).remove(&id);
        if let Some(ids) = self.users.get_mut(&outbox.user_id)
            && ids.remove(id)
        {
            self.users.remove(&outbox.user_id);
        }
    }

    /// The session of connection `id`, if it is on this core.
    pub fn get(&self, id: u64) -> Option<&Rc<Outbox>> {
        self.slots[self.slot_of(id)].get(&id)
    }

    /// The connections of `user` on this core.
    pub fn user_connections(&self, user: UserId) -> &[u64] {
        self.users.get(&user).map_or(&[], UserConnections::as_slice)
    }

    /// Every session, in no particular order.
    pub fn all(&self) -> impl Iterator<Item = &Rc<Outbox>> {
        self.slots.iter().flat_map(HashMap::values)
    }

    /// The connection ids in wheel slot `slot`, appended to `into`.
    pub fn slot_connections(&self, slot: usize, into: &mut Vec<u64>) {
        into.extend(self.slots[slot % self.slots.len()].keys().copied());
    }

    /// How many slots the wheel has.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// How many sessions are open.
    pub fn len(&self) -> usize {
        self.slots.iter().map(HashMap::len).sum()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.slots.iter().all(HashMap::is_empty)
    }

    fn slot_of(&self, id: u64) -> usize {
        (id % self.slots.len() as u64) as usize
    }

    fn slot_mut(&mut self, id: u64) -> &mut HashMap<u64, Rc<Outbox>> {
        let slot = self.slot_of(id);
        &mut self.slots[slot]
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::outbox::QueueLimits;

    fn outbox(id: u64, user: UserId) -> Rc<Outbox> {
        let limits = QueueLimits {
            frames: 8,
            bytes: 1024,
            max_frames: 16,
            max_bytes: 4096,
            stall: Duration::from_secs(1),
            behind_for: Duration::from_secs(1),
        };
        Rc::new(Outbox::new(id, user, u64::MAX, false, Rc::new(limits)))
    }

    #[test]
    fn a_users_entry_is_three_words() {
        assert_eq!(size_of::<(UserId, UserConnections)>(), 24);
    }

    #[test]
    fn sessions_are_found_by_connection_and_by_user_until_removed() {
        let mut registry = Registry::new(3, 8, 0);
        let a = registry.next_connection_id();
        let b = registry.next_connection_id();
        assert_ne!(a, b);
        assert_eq!(crate::router::connection_core(a), 3);
        registry.insert(outbox(a, 7));
        registry.insert(outbox(b, 7));
        assert_eq!(registry.len(), 2);
        assert_eq!(registry.user_connections(7), &[a, b]);
        assert!(registry.get(a).is_some());
        registry.remove(&outbox(a, 7));
        assert!(registry.get(a).is_none());
        assert_eq!(registry.user_connections(7), &[b]);
        let c = registry.next_connection_id();
        registry.insert(outbox(c, 7));
        assert_eq!(registry.user_connections(7), &[b, c]);
        registry.remove(&outbox(b, 7));
        assert_eq!(registry.user_connections(7), &[c]);
        registry.remove(&outbox(c, 7));
        assert!(registry.is_empty());
        assert!(registry.user_connections(7).is_empty());
        assert_eq!(registry.all().count(), 0);
    }

    #[test]
    fn consecutive_connections_spread_evenly_over_the_slots() {
        let slots = 10;
        let mut registry = Registry::new(0, slots, 12_345);
        for user in 0..1000 {
            let id = registry.next_connection_id();
            registry.insert(outbox(id, user));
        }
        let mut seen = 0;
        for slot in 0..slots {
            let mut ids = Vec::new();
            registry.slot_connections(slot, &mut ids);
            assert_eq!(ids.len(), 100, "slot {slot}");
            assert!(ids.iter().all(|id| id % slots as u64 == slot as u64));
            seen += ids.len();
        }
        assert_eq!(seen, registry.len());
        assert_eq!(registry.all().count(), 1000);
    }
}
