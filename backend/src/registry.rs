//! The Redis registry the gateways keep: which nodes hold a session of each user, and when
//! each user was last seen. See README.md for the contract.

use std::collections::HashMap;

use anyhow::Context;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use wire::UserId;

/// Where users are, as far as one lookup knows.
#[derive(Debug, Default, Clone)]
pub(crate) struct Directory {
    /// Nodes holding at least one session of the user; absent or empty means offline.
    pub nodes: HashMap<UserId, Vec<u32>>,
    /// Last-seen times (microseconds since the epoch) of the users asked about.
    pub seen: HashMap<UserId, u64>,
}

impl Directory {
    /// Records that `user` is on `node` (the origin of a frame in this batch), whatever the
    /// registry says: a fresh connection may not be registered yet.
    pub(crate) fn add(&mut self, user: UserId, node: u32) {
        let nodes = self.nodes.entry(user).or_default();
        if !nodes.contains(&node) {
            nodes.push(node);
        }
    }

    pub(crate) fn nodes_of(&self, user: UserId) -> &[u32] {
        self.nodes.get(&user).map_or(&[], Vec::as_slice)
    }
}

/// A cheap handle (clone it per task) on a self-healing Redis connection.
#[derive(Clone)]
pub(crate) struct Registry {
    connection: ConnectionManager,
    prefix: String,
}

impl Registry {
    pub(crate) async fn connect(url: &str, prefix: &str) -> anyhow::Result<Registry> {
        let client = redis::Client::open(url).context("parsing the Redis URL")?;
        // Bounded waits: a lookup that hangs would stall the shard and its deliveries; an
        // error is retried with backoff instead.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(std::time::Duration::from_secs(5)))
            .set_response_timeout(Some(std::time::Duration::from_secs(5)));
        let connection = client
            .get_connection_manager_with_config(config)
            .await
            .context("connecting to Redis")?;
        Ok(Registry {
            connection,
            prefix: prefix.to_owned(),
        })
    }

    /// `{prefix}:nodes:{user}`: a set of decimal node ids.
    pub(crate) fn nodes_key(prefix: &str, user: UserId) -> String {
        format!("{prefix}:nodes:{user}")
    }

    /// `{prefix}:seen:{user}`: microseconds since the epoch, decimal.
    pub(crate) fn seen_key(prefix: &str, user: UserId) -> String {
        format!("{prefix}:seen:{user}")
    }

    /// The nodes of `users` and the last-seen times of `seen`, in one pipelined round trip.
    pub(crate) async fn lookup(
        &self,
        users: &[UserId],
        seen: &[UserId],
    ) -> redis::RedisResult<Directory> {
        let mut directory = Directory::default();
        if users.is_empty() && seen.is_empty() {
            return Ok(directory);
        }
        let mut pipe = redis::pipe();
        for &user in users {
            pipe.smembers(Self::nodes_key(&self.prefix, user));
        }
        for &user in seen {
            pipe.get(Self::seen_key(&self.prefix, user));
        }
        let mut connection = self.connection.clone();
        let (members, times): (Vec<Vec<String>>, Vec<Option<String>>) = {
            let values: Vec<redis::Value> = pipe.query_async(&mut connection).await?;
            let mut values = values.into_iter();
            let members = values
                .by_ref()
                .take(users.len())
                .map(redis::from_redis_value)
                .collect::<Result<_, _>>()?;
            let times = values
                .map(redis::from_redis_value)
                .collect::<Result<_, _>>()?;
            (members, times)
        };
        for (&user, members) in users.iter().zip(members) {
            let nodes: Vec<u32> = members
                .iter()
                .filter_map(|m| match m.parse() {
                    Ok(node) => Some(node),
                    Err(_) => {
                        tracing::warn!(user, member = %m, "ignoring a registry entry that is not a node id");
                        None
                    }
                })
                .collect();
            if !nodes.is_empty() {
                directory.nodes.insert(user, nodes);
            }
        }
        for (&user, time) in seen.iter().zip(times) {
            if let Some(time) = time.and_then(|t| t.parse().ok()) {
                directory.seen.insert(user, time);
            }
        }
        Ok(directory)
    }
}
