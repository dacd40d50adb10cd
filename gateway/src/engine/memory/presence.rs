//! Presence as a core's replica knows it. A core sees its own sessions in its registry, so
//! the replica keeps only what the core cannot see there: the users with sessions on other
//! cores (how many), and when each user that left was last seen. One word per user; on a
//! gateway with one core, the users online take no entry at all.
//!
//! Answers as the amqp engine's backend does: a user online is seen now; one offline was
//! last seen when its last session closed; one never seen is offline at 0.

use std::collections::HashMap;

use wire::UserId;
use wire::server::PresenceEntry;

/// Set while the user is online; the rest of the word is then its open sessions.
const ONLINE: u64 = 1 << 63;

/// A user's presence: with [`ONLINE`], its open sessions; without, when it was last seen
/// (microseconds since the Unix epoch, 0 for never), which stays below 2^63 until far past
/// the year 290,000.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct PresenceState(u64);

impl PresenceState {
    /// Open sessions.
    fn sessions(self) -> u64 {
        if self.0 & ONLINE != 0 {
            self.0 & !ONLINE
        } else {
            0
        }
    }

    /// One more session opened.
    fn connected(&mut self) {
        self.0 = ONLINE | (self.sessions() + 1);
    }

    /// One session closed at `at_us`: with it the last, the user was last seen then.
    fn disconnected(&mut self, at_us: u64) {
        self.0 = match self.sessions() {
            1 => at_us & !ONLINE,
            // Already offline: a close reported late by another core moves nothing back.
            0 => self.0.max(at_us & !ONLINE),
            sessions => ONLINE | (sessions - 1),
        };
    }

    /// The answer to a query about `user_id` at `now_us`.
    fn entry(self, user_id: UserId, now_us: u64) -> PresenceEntry {
        let online = self.sessions() > 0;
        PresenceEntry {
            user_id,
            online,
            last_seen_us: if online { now_us } else { self.0 },
        }
    }
}

/// One core's view of every user's presence, less what its own sessions show.
#[derive(Debug, Default)]
pub(super) struct PresenceReplica {
    /// Users online on other cores (their sessions there), and users offline (when last
    /// seen). A user online only on this core has no entry.
    users: HashMap<UserId, PresenceState>,
}

impl PresenceReplica {
    /// `user` opened a session on this core: the registry answers for it from now on, so
    /// a last-seen time kept for it is dropped (its last close here will write a new one).
    pub(super) fn connected_here(&mut self, user: UserId) {
        if self
            .users
            .get(&user)
            .is_some_and(|state| state.sessions() == 0)
        {
            self.users.remove(&user);
        }
    }

    /// A session of `user` on this core closed at `at_us`, and the user has sessions left
    /// here or not (`still_here`). With none left here or elsewhere, it was last seen now.
    pub(super) fn disconnected_here(&mut self, user: UserId, still_here: bool, at_us: u64) {
        if still_here {
            return;
        }
        let state = self.users.entry(user).or_default();
        if state.sessions() == 0 {
            state.disconnected(at_us);
        }
    }

    /// Another core says a session of `user` opened or closed there at `at_us`.
    pub(super) fn changed_elsewhere(&mut self, user: UserId, online: bool, at_us: u64) {
        let state = self.users.entry(user).or_default();
        if online {
            state.connected();
        } else {
            state.disconnected(at_us);
        }
    }

    /// The answer to a query about `user` at `now_us`, where `here` says whether it has a
    /// session on this core.
    pub(super) fn entry(&self, user: UserId, here: bool, now_us: u64) -> PresenceEntry {
        if here {
            return PresenceEntry {
                user_id: user,
                online: true,
                last_seen_us: now_us,
            };
        }
        self.users
            .get(&user)
            .copied()
            .unwrap_or_default()
            .entry(user, now_us)
    }

    /// The answer about a user the asker may not see: as if never seen.
    pub(super) fn never_seen(user: UserId) -> PresenceEntry {
        PresenceState::default().entry(user, 0)
    }

    /// Users with an entry.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.users.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: UserId = 7;

    fn answer(replica: &PresenceReplica, here: bool, now_us: u64) -> (bool, u64) {
        let entry = replica.entry(USER, here, now_us);
        assert_eq!(entry.user_id, USER);
        (entry.online, entry.last_seen_us)
    }

    #[test]
    fn a_user_is_one_word() {
        assert_eq!(size_of::<(UserId, PresenceState)>(), 16);
    }

    #[test]
    fn never_seen_is_offline_at_zero() {
        assert_eq!(answer(&PresenceReplica::default(), false, 500), (false, 0));
        let stranger = PresenceReplica::never_seen(USER);
        assert_eq!((stranger.online, stranger.last_seen_us), (false, 0));
    }

    #[test]
    fn a_user_online_only_here_takes_no_entry() {
        let mut replica = PresenceReplica::default();
        replica.connected_here(USER);
        assert_eq!(replica.len(), 0);
        assert_eq!(answer(&replica, true, 1_000), (true, 1_000));
        replica.disconnected_here(USER, true, 1_100);
        assert_eq!(replica.len(), 0, "a session is still open here");
        replica.disconnected_here(USER, false, 1_200);
        assert_eq!(answer(&replica, false, 1_300), (false, 1_200));
        replica.connected_here(USER);
        assert_eq!(
            replica.len(),
            0,
            "the last-seen time goes while online here"
        );
        assert_eq!(answer(&replica, true, 1_400), (true, 1_400));
    }

    #[test]
    fn sessions_elsewhere_keep_the_user_online_after_it_leaves_here() {
        let mut replica = PresenceReplica::default();
        replica.connected_here(USER);
        replica.changed_elsewhere(USER, true, 100);
        replica.changed_elsewhere(USER, true, 110);
        replica.disconnected_here(USER, false, 200);
        assert_eq!(answer(&replica, false, 300), (true, 300));
        replica.changed_elsewhere(USER, false, 400);
        assert_eq!(answer(&replica, false, 450), (true, 450));
        replica.changed_elsewhere(USER, false, 500);
        assert_eq!(answer(&replica, false, 600), (false, 500));
    }

    #[test]
    fn the_last_close_anywhere_is_the_last_seen_time() {
        let mut replica = PresenceReplica::default();
        replica.connected_here(USER);
        replica.changed_elsewhere(USER, true, 100);
        replica.changed_elsewhere(USER, false, 200);
        assert_eq!(answer(&replica, true, 250), (true, 250), "still here");
        replica.disconnected_here(USER, false, 300);
        assert_eq!(answer(&replica, false, 350), (false, 300));
        replica.changed_elsewhere(USER, false, 280);
        assert_eq!(
            answer(&replica, false, 400),
            (false, 300),
            "a close reported late moves nothing back"
        );
    }

    #[test]
    fn a_close_without_an_open_leaves_the_user_offline() {
        let mut replica = PresenceReplica::default();
        replica.changed_elsewhere(USER, false, 42);
        assert_eq!(answer(&replica, false, 50), (false, 42));
    }
}
