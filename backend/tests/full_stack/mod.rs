//! What the full-path tests share: an in-process gateway (amqp engine) in a private corner of
//! the services (its own schema, AMQP prefix, Redis prefix and node id), tokens for it, and
//! the schema's removal afterwards.

#![allow(dead_code)] // A helper for several test binaries; each uses a part of it.

use std::net::SocketAddr;
use std::process::Child;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;
use gateway::{Config, Gateway};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;

/// The gateway's HS256 secret.
pub const SECRET: &str = "full-path-secret-of-enough-length";

/// Inbound shards of every full-path test's topology.
pub const SHARDS: &str = "4";

pub fn database_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A name for the test's schema and prefixes, starting with `label`, and a node id, both
/// unlikely to meet another test's.
pub fn private_corner(label: &str) -> (String, u32) {
    let nonce = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos()
        ^ std::process::id();
    (format!("{label}_{nonce:x}"), 10_000 + nonce % 1_000_000)
}

/// Starts a two-core gateway on the amqp engine in the corner `name`, on the broker at
/// `amqp_url`.
pub fn start_gateway(name: &str, node_id: u32, amqp_url: &str) -> Gateway {
    start_gateway_with(name, node_id, amqp_url, &[])
}

/// [`start_gateway`] with more flags (later flags win over the defaults).
pub fn start_gateway_with(name: &str, node_id: u32, amqp_url: &str, more: &[&str]) -> Gateway {
    let node_id = node_id.to_string();
    let defaults = [
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--cores",
        "2",
        "--jwt-secret",
        SECRET,
        "--engine",
        "amqp",
        "--amqp-url",
        amqp_url,
        "--amqp-prefix",
        name,
        "--redis-prefix",
        name,
        "--shards",
        SHARDS,
        "--node-id",
        &node_id,
        "--shutdown-deadline",
        "3s",
        // The tests send bursts far above a person's typing rate.
        "--frames-per-second",
        "100000",
        "--frame-burst",
        "100000",
    ];
    let args = defaults.iter().chain(more);
    Gateway::start(Config::try_parse_from(args).expect("flags")).expect("gateway starts")
}

/// The upgrade request of `user`, with a token valid for an hour.
pub fn upgrade_request(addr: SocketAddr, user: u64) -> Request {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    let token = gateway::auth::mint_hs256(SECRET.as_bytes(), user, exp);
    let mut request = format!("ws://{addr}/ws")
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "Authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    request
}

/// Stops a test's stack: its worker processes (SIGKILL), then its gateway, then removes
/// its corner of the services with [`clean_up`].
pub fn tear_down<'a>(
    workers: impl IntoIterator<Item = &'a mut Child>,
    gateway: Option<Gateway>,
    name: &str,
    node_id: u32,
    amqp_url: Option<&str>,
) {
    for worker in workers {
        let _ = worker.kill();
        let _ = worker.wait();
    }
    if let Some(gateway) = gateway {
        gateway.begin_shutdown();
        gateway.join();
    }
    clean_up(name, node_id, amqp_url);
}

/// Drops the corner's schema and, on the broker at `amqp_url` (if given), its queues and
/// exchanges, from a thread of its own, so that it works inside a `Drop` of an async test.
pub fn clean_up(name: &str, node_id: u32, amqp_url: Option<&str>) {
    let name = name.to_owned();
    let amqp_url = amqp_url.map(str::to_owned);
    let _ = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            if let Ok((client, connection)) =
                tokio_postgres::connect(&database_url(), tokio_postgres::NoTls).await
            {
                tokio::spawn(connection);
                let _ = client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                    .await;
            }
            if let Some(url) = amqp_url
                && let Ok(connection) = broker::connect(&url, "full-path-cleanup").await
                && let Ok(channel) = connection.create_channel().await
            {
                let topology = broker::Topology {
                    prefix: name.clone(),
                    shards: SHARDS.parse().expect("shards"),
                };
                let _ = topology.delete_all(&channel, &[node_id]).await;
            }
        });
    })
    .join();
}
