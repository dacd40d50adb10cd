//! The admin port: /healthz (the process answers), /readyz (every core accepts and no
//! shutdown is under way), /metrics (Prometheus text). It runs on its own small thread with
//! blocking I/O, away from the cores' rings: a scrape never delays a session.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::metrics;
use crate::node::Node;

/// Serves the admin port on a thread of its own.
pub fn spawn(listener: TcpListener, node: Arc<Node>) -> Result<()> {
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(error) = answer(stream, &node) {
                    tracing::debug!(%error, "admin request failed");
                }
            }
        })
        .context("spawning the admin thread")?;
    Ok(())
}

fn answer(mut stream: TcpStream, node: &Node) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 2048];
    let mut len = 0;
    let path = loop {
        let n = stream.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => break request.path.unwrap_or("/").to_owned(),
            Ok(httparse::Status::Partial) if len < buf.len() => continue,
            _ => {
                return respond(
                    &mut stream,
                    "400 Bad Request",
                    "text/plain",
                    "bad request\n",
                );
            }
        }
    };
    match path.split('?').next().unwrap_or("") {
        "/healthz" => respond(&mut stream, "200 OK", "text/plain", "ok\n"),
        "/readyz" if node.is_ready() => respond(&mut stream, "200 OK", "text/plain", "ready\n"),
        "/readyz" => respond(
            &mut stream,
            "503 Service Unavailable",
            "text/plain",
            "not ready\n",
        ),
        "/metrics" => respond(
            &mut stream,
            "200 OK",
            "text/plain; version=0.0.4",
            &metrics::render(&node.metrics),
        ),
        _ => respond(&mut stream, "404 Not Found", "text/plain", "not found\n"),
    }
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())
}
