//! One user's presence as a core's replica knows it, in one word per user (the replica holds
//! every user of the node on every core): how many sessions the user has open while it has
//! any, else when it was last seen.
//!
//! Answers as the amqp engine's backend does: a user online is seen now; one offline was
//! last seen when its last session closed; one never seen is offline at 0.

use wire::UserId;
use wire::server::PresenceEntry;

/// Set while the user is online; the rest of the word is then its open sessions.
const ONLINE: u64 = 1 << 63;

/// A user's presence: with [`ONLINE`], its open sessions; without, when it was last seen
/// (microseconds since the Unix epoch, 0 for never), which stays below 2^63 until far past
/// the year 290,000.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct PresenceState(u64);

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
    pub(super) fn connected(&mut self) {
        self.0 = ONLINE | (self.sessions() + 1);
    }

    /// One session closed at `at_us`: with it the last, the user was last seen then.
    pub(super) fn disconnected(&mut self, at_us: u64) {
        self.0 = match self.sessions() {
            0 | 1 => at_us & !ONLINE,
            sessions => ONLINE | (sessions - 1),
        };
    }

    /// The answer to a query about `user_id` at `now_us`.
    pub(super) fn entry(self, user_id: UserId, now_us: u64) -> PresenceEntry {
        let online = self.sessions() > 0;
        PresenceEntry {
            user_id,
            online,
            last_seen_us: if online { now_us } else { self.0 },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(state: PresenceState, now_us: u64) -> (bool, u64) {
        let entry = state.entry(7, now_us);
        (entry.online, entry.last_seen_us)
    }

    #[test]
    fn a_user_is_one_word() {
        assert_eq!(size_of::<(UserId, PresenceState)>(), 16);
    }

    #[test]
    fn never_seen_is_offline_at_zero() {
        assert_eq!(answer(PresenceState::default(), 500), (false, 0));
    }

    #[test]
    fn online_is_seen_now_and_offline_when_the_last_session_closed() {
        let mut state = PresenceState::default();
        state.connected();
        state.connected();
        assert_eq!(answer(state, 1_000), (true, 1_000));
        state.disconnected(1_100);
        assert_eq!(
            answer(state, 1_200),
            (true, 1_200),
            "one session is still open"
        );
        state.disconnected(1_300);
        assert_eq!(answer(state, 1_400), (false, 1_300));
        state.connected();
        assert_eq!(answer(state, 1_500), (true, 1_500));
    }

    #[test]
    fn a_close_without_an_open_leaves_the_user_offline() {
        let mut state = PresenceState::default();
        state.disconnected(42);
        assert_eq!(answer(state, 50), (false, 42));
    }
}
