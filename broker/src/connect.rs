//! Opening a connection with the settings both sides want.

use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};

use crate::BrokerError;

/// Heartbeat asked for when the URL does not set one (`?heartbeat=`). RabbitMQ's default of
/// 60 s leaves a dead peer undetected, and its queued deliveries unconsumed, for up to two
/// minutes; 10 s bounds that to about 20 s for two frames a second of overhead.
pub const DEFAULT_HEARTBEAT_SECS: u16 = 10;

/// How long to wait for the TCP connection and AMQP handshake when the URL does not set it
/// (`?connection_timeout=`, milliseconds), so that an unreachable broker is an error to retry
/// instead of a hang.
pub const DEFAULT_CONNECTION_TIMEOUT_MS: u64 = 10_000;

/// Connects to `url` with connection name `name` (shown by `rabbitmqctl list_connections
/// client_properties` and the management UI), a heartbeat and a connect timeout.
///
/// Needs a tokio runtime (lapin's default runtime). Automatic recovery is left off on
/// purpose: after a reconnect the broker redelivers every unacknowledged message with new
/// delivery tags, and each side decides itself what to redo, so callers reconnect explicitly.
pub async fn connect(url: &str, name: &str) -> Result<Connection, BrokerError> {
    // Some parse errors quote the input, which may hold a password.
    let mut uri: AMQPUri = url
        .parse()
        .map_err(|e: String| BrokerError::InvalidUrl(e.replace(url, "<url>")))?;
    uri.query.heartbeat.get_or_insert(DEFAULT_HEARTBEAT_SECS);
    uri.query
        .connection_timeout
        .get_or_insert(DEFAULT_CONNECTION_TIMEOUT_MS);
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect_uri(uri, properties)
        .await
        .map_err(|source| BrokerError::Connect {
            name: name.to_owned(),
            source,
        })
}
