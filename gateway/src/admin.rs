//! The admin port: /healthz (the process answers), /readyz (the node should get new
//! clients: see [`Node::not_ready_because`]), /metrics (Prometheus text). It is served by
//! [`telemetry::admin`] on threads of its own, away from the cores' rings: a scrape never
//! delays a session, and a stuck core never stops a probe from seeing it.

use std::net::TcpListener;
use std::sync::Arc;

use anyhow::Result;
use telemetry::admin::Response;
use telemetry::metrics::{CONTENT_TYPE, Metrics};

use crate::metrics::NodeMetrics;
use crate::node::Node;

/// Serves the admin port.
pub fn spawn(listener: TcpListener, node: Arc<Node>) -> Result<()> {
    let metrics = Metrics::new(
        "gateway",
        env!("CARGO_PKG_VERSION"),
        vec![Box::new(NodeMetrics(node.clone()))],
    );
    telemetry::admin::spawn(listener, "admin", move |path| match path {
        "/healthz" => Response::text("200 OK", "ok\n"),
        "/readyz" => readiness(&node),
        "/metrics" => Response {
            status: "200 OK",
            content_type: CONTENT_TYPE,
            body: metrics.render(),
        },
        _ => Response::not_found(),
    })
}

/// 200 `ready`, or 503 with the reasons, one a line.
fn readiness(node: &Node) -> Response {
    let reasons = node.not_ready_because();
    if reasons.is_empty() {
        Response::text("200 OK", "ready\n")
    } else {
        Response::text(
            "503 Service Unavailable",
            format!("not ready: {}\n", reasons.join(", ")),
        )
    }
}
