//! Errors of connecting and declaring.

/// Why talking to the broker failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The AMQP URL could not be parsed. The URL itself is not repeated: it may hold a password.
    #[error("invalid AMQP URL: {0}")]
    InvalidUrl(String),
    /// The connection could not be opened.
    #[error("could not connect to the AMQP broker as {name:?}")]
    Connect {
        /// The connection name we asked for.
        name: String,
        /// What lapin reported.
        #[source]
        source: lapin::Error,
    },
    /// A declaration (exchange, queue or binding) failed, for example because an object of the
    /// same name already exists with other arguments.
    #[error("could not declare {object}")]
    Declare {
        /// What was being declared, with its name.
        object: String,
        /// What the broker or lapin reported.
        #[source]
        source: lapin::Error,
    },
    /// A deletion failed.
    #[error("could not delete {object}")]
    Delete {
        /// What was being deleted, with its name.
        object: String,
        /// What the broker or lapin reported.
        #[source]
        source: lapin::Error,
    },
    /// A topology with no shards cannot route anything.
    #[error("a topology needs at least one shard")]
    NoShards,
}
