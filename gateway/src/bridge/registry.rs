//! The registry: which cores of this node hold each user's sessions (for routing deliveries
//! to those cores only), and in Redis which nodes hold each user and when each user was last
//! seen. The contract with the backend: the set `{prefix}:nodes:{user}` holds the node ids
//! where the user has a session (refreshed with a TTL); `{prefix}:seen:{user}` holds the
//! last-seen time in microseconds.
//!
//! It runs beside the broker session, not inside it, so session changes reach Redis while
//! the broker is down. Changes are applied to the session map at once and to Redis in
//! pipelined rounds; while Redis fails, the users still to write wait in a map (one entry per
//! user, so it is bounded by the users this node has seen since Redis last answered) and
//! are written when it answers again.
//!
//! A Redis that restarts empty (or is flushed) forgets every user this node holds, and
//! the backend then routes their deliveries nowhere. Waiting for the next refresh would
//! stop live delivery for up to a third of the TTL, so the registry keeps a marker key of
//! its own, `{prefix}:node:{id}`, and probes it every [`PROBE`]: a marker that is gone means
//! the entries are gone, and every user is written again at once.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::watch;
use wire::UserId;

use super::{BridgeInbox, BridgeSettings, SessionChange};

/// Users written to Redis in one pipelined round trip.
const PIPELINE: usize = 1000;

/// How long a Redis round trip may take before it counts as failed.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// First pause before writing again after Redis failed; it doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// How often the registry checks that Redis still holds this node's entries.
const PROBE: Duration = Duration::from_secs(1);

/// Which cores hold each user's sessions, and how many there.
#[derive(Debug, Default)]
pub(super) struct Sessions {
    users: HashMap<UserId, Vec<(usize, u32)>>,
}

impl Sessions {
    /// The cores holding a session of `user`, or `None` if this node knows of none.
    pub(super) fn cores_of(&self, user: UserId) -> Option<impl Iterator<Item = usize> + '_> {
        self.users
            .get(&user)
            .map(|counts| counts.iter().map(|&(core, _)| core))
    }

    /// Records a change; true when the user's presence on the node changed (first session
    /// opened or last one closed).
    fn apply(&mut self, change: SessionChange) -> bool {
        let core = usize::from(change.core);
        match change.closed_at_us {
            None => {
                let counts = self.users.entry(change.user).or_default();
                let first = counts.is_empty();
                match counts.iter_mut().find(|(c, _)| *c == core) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((core, 1)),
                }
                first
            }
            Some(_) => {
                let Some(counts) = self.users.get_mut(&change.user) else {
                    return false;
                };
                let Some(at) = counts.iter().position(|(c, _)| *c == core) else {
                    return false;
                };
                counts[at].1 -= 1;
                if counts[at].1 == 0 {
                    counts.remove(at);
                }
                if counts.is_empty() {
                    self.users.remove(&change.user);
                    return true;
                }
                false
            }
        }
    }

    #[cfg(test)]
    pub(super) fn apply_for_test(&mut self, change: SessionChange) -> bool {
        self.apply(change)
    }

    fn users(&self) -> impl Iterator<Item = UserId> + '_ {
        self.users.keys().copied()
    }
}

/// What Redis must learn about a user: online here, or gone since this time.
type Pending = HashMap<UserId, Option<u64>>;

pub(super) async fn run(
    settings: BridgeSettings,
    inbox: Arc<BridgeInbox>,
    sessions: Rc<RefCell<Sessions>>,
    mut stop: watch::Receiver<bool>,
) {
    let ttl = settings.registry_ttl.as_secs().max(3) as i64;
    let mut redis = Redis::new(&settings);
    let mut pending = Pending::new();
    let mut refresh = tokio::time::interval(settings.registry_ttl / 3);
    let mut probe = tokio::time::interval(PROBE);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retry = FIRST_RETRY;
    loop {
        take_changes(&inbox, &sessions, &mut pending);
        if !pending.is_empty() {
            if redis.write(&pending, ttl).await {
                pending.clear();
                retry = FIRST_RETRY;
            } else {
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = stop.changed() => break,
                }
                retry = (retry * 2).min(MAX_RETRY);
                continue;
            }
        }
        tokio::select! {
            _ = inbox.sessions_ready.notified() => {}
            _ = refresh.tick() => {
                // Every user again, with a fresh TTL; the marker's TTL is renewed with them.
                redis.forget_marker();
                pending.extend(sessions.borrow().users().map(|u| (u, None)));
            }
            _ = probe.tick() => {
                let users = sessions.borrow().users().count();
                if redis.marker_was_lost(ttl).await && users > 0 {
                    tracing::info!(users, "Redis does not hold this node's registry (restarted empty or flushed); writing every user again");
                    pending.extend(sessions.borrow().users().map(|u| (u, None)));
                }
            }
            _ = stop.changed() => break,
        }
    }
    // Stopping: this node holds nobody any more.
    take_changes(&inbox, &sessions, &mut pending);
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    pending.extend(sessions.borrow().users().map(|u| (u, Some(now_us))));
    if !redis.write(&pending, ttl).await {
        tracing::warn!(
            users = pending.len(),
            "could not clear this node from the registry; its entries expire with their TTL"
        );
    }
}

/// Applies every queued session change to the map, and notes the users whose presence on
/// the node changed.
fn take_changes(inbox: &BridgeInbox, sessions: &RefCell<Sessions>, pending: &mut Pending) {
    let mut sessions = sessions.borrow_mut();
    while let Some(change) = inbox.sessions.pop() {
        if sessions.apply(change) {
            pending.insert(change.user, change.closed_at_us);
        }
    }
}

/// The Redis connection, opened on first use and again after a failure.
struct Redis {
    url: String,
    prefix: String,
    node_id: u32,
    connection: Option<ConnectionManager>,
    /// The marker is known to be in Redis with a fresh TTL.
    marked: bool,
}

impl Redis {
    fn new(settings: &BridgeSettings) -> Redis {
        Redis {
            url: settings.redis_url.clone(),
            prefix: settings.redis_prefix.clone(),
            node_id: settings.node_id,
            connection: None,
            marked: false,
        }
    }

    async fn connection(&mut self) -> Option<ConnectionManager> {
        if self.connection.is_none() {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(REDIS_TIMEOUT))
                .set_response_timeout(Some(REDIS_TIMEOUT));
            match redis::Client::open(self.url.as_str()) {
                Ok(client) => match client.get_connection_manager_with_config(config).await {
                    Ok(manager) => self.connection = Some(manager),
                    Err(error) => {
                        tracing::warn!(%error, "Redis is unreachable; the registry is stale until it returns")
                    }
                },
                Err(error) => tracing::error!(%error, "bad Redis URL"),
            }
        }
        self.connection.clone()
    }

    fn marker(&self) -> String {
        format!("{}:node:{}", self.prefix, self.node_id)
    }

    /// The next write renews the marker's TTL.
    fn forget_marker(&mut self) {
        self.marked = false;
    }

    /// Sets the marker if it is missing; true when it was missing, which means Redis lost
    /// what this node wrote (or never had it). False also when Redis does not answer: the
    /// pending writes retry then, and the probe asks again when it is back.
    async fn marker_was_lost(&mut self, ttl: i64) -> bool {
        let Some(mut connection) = self.connection().await else {
            return false;
        };
        let set: Result<Option<String>, _> = redis::cmd("SET")
            .arg(self.marker())
            .arg(1)
            .arg("NX")
            .arg("EX")
            .arg(ttl)
            .query_async(&mut connection)
            .await;
        match set {
            Ok(answer) => answer.is_some(),
            Err(error) => {
                tracing::debug!(%error, "probing the registry marker failed");
                false
            }
        }
    }

    /// Writes every user's state, pipelined; false if Redis did not take all of it.
    async fn write(&mut self, users: &Pending, ttl: i64) -> bool {
        if users.is_empty() {
            return true;
        }
        let Some(mut connection) = self.connection().await else {
            return false;
        };
        let users: Vec<(&UserId, &Option<u64>)> = users.iter().collect();
        for (index, chunk) in users.chunks(PIPELINE).enumerate() {
            let mut pipe = redis::pipe();
            if index == 0 && !self.marked {
                pipe.set_ex(self.marker(), 1, ttl as u64).ignore();
            }
            for &(user, closed_at_us) in chunk {
                let nodes = format!("{}:nodes:{user}", self.prefix);
                match closed_at_us {
                    None => pipe
                        .sadd(&nodes, self.node_id)
                        .ignore()
                        .expire(&nodes, ttl)
                        .ignore(),
                    Some(at_us) => pipe
                        .srem(&nodes, self.node_id)
                        .ignore()
                        .set(format!("{}:seen:{user}", self.prefix), *at_us)
                        .ignore(),
                };
            }
            if let Err(error) = pipe.query_async::<()>(&mut connection).await {
                tracing::warn!(%error, "updating the registry failed");
                return false;
            }
            self.marked = true;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(user: UserId, core: u16) -> SessionChange {
        SessionChange {
            user,
            core,
            closed_at_us: None,
        }
    }

    fn close(user: UserId, core: u16) -> SessionChange {
        SessionChange {
            user,
            core,
            closed_at_us: Some(9),
        }
    }

    fn cores(sessions: &Sessions, user: UserId) -> Option<Vec<usize>> {
        sessions.cores_of(user).map(Iterator::collect)
    }

    #[test]
    fn sessions_know_the_cores_of_each_user_and_report_presence_changes() {
        let mut s = Sessions::default();
        assert!(
            s.apply(open(1, 0)),
            "first session: the node now holds the user"
        );
        assert!(!s.apply(open(1, 1)));
        assert!(!s.apply(open(1, 1)));
        assert_eq!(cores(&s, 1), Some(vec![0, 1]));
        assert!(!s.apply(close(1, 0)));
        assert_eq!(cores(&s, 1), Some(vec![1]));
        assert!(!s.apply(close(1, 1)), "one session left on core 1");
        assert_eq!(cores(&s, 1), Some(vec![1]));
        assert!(
            s.apply(close(1, 1)),
            "last session: the node no longer holds the user"
        );
        assert_eq!(cores(&s, 1), None);
        assert!(!s.apply(close(1, 1)), "a stray close changes nothing");
        assert_eq!(cores(&s, 2), None);
    }
}
