//! The admin port: a small HTTP/1.1 server for probes and scrapes, one request per
//! connection. Each connection gets a thread of its own, so a slow or idle client never
//! delays a probe, and everything a client can make it hold is bounded: connections at
//! once, bytes of the request head, and time (the whole head must arrive within
//! [`HEAD_DEADLINE`], however the client trickles it, and the answer must be taken within
//! [`WRITE_DEADLINE`]). It runs on plain threads, away from the gateway's cores and the
//! backend's runtime, so it answers even when they are busy or stuck, and it keeps a
//! descriptor in reserve, so it answers at the process's descriptor limit too.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rustix::event::{PollFd, PollFlags, poll};

use crate::descriptors::{self, DescriptorReserve};

/// Connections served at once; more are closed at once without an answer.
pub const MAX_CONNECTIONS: usize = 32;

/// Time a client has to send its whole request head.
pub const HEAD_DEADLINE: Duration = Duration::from_secs(2);

/// Time a client has to take the answer.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(5);

/// The largest request head read; a longer one gets 431.
const MAX_HEAD_BYTES: usize = 4096;

/// How long the port stops accepting after an accept failed.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// A connection thread needs little: a head buffer and the answer being written.
const THREAD_STACK: usize = 256 * 1024;

/// What a handler answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status line after the version, such as `200 OK`.
    pub status: &'static str,
    /// The body's media type.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
}

impl Response {
    /// A plain-text answer.
    pub fn text(status: &'static str, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }

    /// 404 for a path nobody serves.
    pub fn not_found() -> Response {
        Response::text("404 Not Found", "not found\n")
    }
}

/// Serves `listener` on a thread named `name`, answering each GET with `handler(path)`
/// (the path without its query).
pub fn spawn<H>(listener: TcpListener, name: &str, handler: H) -> Result<()>
where
    H: Fn(&str) -> Response + Send + Sync + 'static,
{
    listener
        .set_nonblocking(true)
        .context("making the admin listener non-blocking")?;
    let handler = Arc::new(handler);
    let active = Arc::new(AtomicUsize::new(0));
    let thread_name = format!("{name}-conn");
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let mut reserve = DescriptorReserve::new();
            loop {
                // Waiting in poll rather than in a blocking accept: Linux takes a
                // descriptor for an accept before it waits, and one held by a waiting
                // accept is one a session can no longer take from the reserve's place.
                let mut waiting = [PollFd::new(&listener, PollFlags::IN)];
                if poll(&mut waiting, None).is_err() {
                    continue;
                }
                let stream = match listener.accept() {
                    Ok((stream, _)) => stream,
                    Err(error) if error.kind() == ErrorKind::WouldBlock => continue,
                    Err(error) => {
                        if descriptors::is_exhaustion(&error) {
                            serve_at_descriptor_limit(&mut reserve, &listener, handler.as_ref());
                        } else {
                            tracing::debug!(%error, "admin accept failed");
                        }
                        // Back off instead of spinning while accepts fail.
                        std::thread::sleep(ACCEPT_BACKOFF);
                        continue;
                    }
                };
                // Accepted sockets do not inherit the listener's non-blocking mode, but the
                // deadlines below rely on blocking reads and writes: make sure.
                if stream.set_nonblocking(false).is_err() {
                    continue;
                }
                if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                    active.fetch_sub(1, Ordering::AcqRel);
                    continue;
                }
                let slot = Slot(active.clone());
                let handler = handler.clone();
                let spawned = std::thread::Builder::new()
                    .name(thread_name.clone())
                    .stack_size(THREAD_STACK)
                    .spawn(move || {
                        let _slot = slot;
                        if let Err(error) = serve(stream, handler.as_ref()) {
                            tracing::debug!(%error, "admin request failed");
                        }
                    });
                if let Err(error) = spawned {
                    tracing::warn!(%error, "could not start an admin connection thread");
                }
            }
        })
        .with_context(|| format!("spawning the {name} thread"))?;
    Ok(())
}

/// Serves the connection waiting in `listener` with the descriptor the reserve frees, on
/// this thread: a probe must get its answer at the descriptor limit too (readiness says why
/// the process is not ready), and the descriptor must be back in reserve, not held by a
/// connection thread, before the next one comes. The connection's deadlines bound the
/// wait.
fn serve_at_descriptor_limit(
    reserve: &mut DescriptorReserve,
    listener: &TcpListener,
    handler: &dyn Fn(&str) -> Response,
) {
    reserve.with_released(|| {
        let served = listener.accept().and_then(|(stream, _)| {
            stream.set_nonblocking(false)?;
            serve(stream, handler)
        });
        if let Err(error) = served {
            tracing::debug!(%error, "admin request at the descriptor limit failed");
        }
    });
}

/// Holds one of the [`MAX_CONNECTIONS`] places while a connection is served.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the parser made of a request head.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    Get { path: String, head_only: bool },
    OtherMethod,
    Malformed,
    TooLarge,
}

fn serve(mut stream: TcpStream, handler: &dyn Fn(&str) -> Response) -> std::io::Result<()> {
    let Some(head) = read_head(&mut stream, Instant::now() + HEAD_DEADLINE)? else {
        return Ok(());
    };
    let (response, head_only) = match head {
        Head::Get { path, head_only } => (handler(&path), head_only),
        Head::OtherMethod => (
            Response::text("405 Method Not Allowed", "only GET\n"),
            false,
        ),
        Head::Malformed => (Response::text("400 Bad Request", "bad request\n"), false),
        Head::TooLarge => (
            Response::text("431 Request Header Fields Too Large", "head too large\n"),
            false,
        ),
    };
    stream.set_write_timeout(Some(WRITE_DEADLINE))?;
    stream.write_all(&encode(&response, head_only))
}

/// Reads until the request head is complete, too large or malformed; `None` when the
/// client left first. Each read waits only for what is left of the deadline.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> std::io::Result<Option<Head>> {
    let mut buf = vec![0u8; MAX_HEAD_BYTES];
    let mut len = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(None);
        }
        len += n;
        match parse(&buf[..len]) {
            Some(head) => return Ok(Some(head)),
            None if len == buf.len() => return Ok(Some(Head::TooLarge)),
            None => continue,
        }
    }
}

/// The request head in `bytes`, or `None` while it is incomplete.
fn parse(bytes: &[u8]) -> Option<Head> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(bytes) {
        Ok(httparse::Status::Partial) => None,
        Ok(httparse::Status::Complete(_)) => {
            let target = request.path.unwrap_or("/");
            let path = target.split('?').next().unwrap_or("").to_owned();
            Some(match request.method {
                Some("GET") => Head::Get {
                    path,
                    head_only: false,
                },
                Some("HEAD") => Head::Get {
                    path,
                    head_only: true,
                },
                _ => Head::OtherMethod,
            })
        }
        Err(_) => Some(Head::Malformed),
    }
}

fn encode(response: &Response, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.status,
        response.content_type,
        response.body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(response.body.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding");
        let addr = listener.local_addr().expect("address");
        spawn(listener, "admin-test", |path| match path {
            "/healthz" => Response::text("200 OK", "ok\n"),
            _ => Response::not_found(),
        })
        .expect("serving");
        addr
    }

    fn get(addr: SocketAddr, request: &str) -> String {
        try_get(addr, request).expect("an answer")
    }

    fn try_get(addr: SocketAddr, request: &str) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(request.as_bytes())?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    }

    #[test]
    fn idle_and_trickling_clients_do_not_delay_a_probe() {
        let addr = server();
        let idle: Vec<TcpStream> = (0..3)
            .map(|_| TcpStream::connect(addr).expect("an idle client"))
            .collect();
        let mut trickler = TcpStream::connect(addr).expect("a trickling client");
        let trickling = std::thread::spawn(move || {
            // One byte every 100 ms: without an overall deadline this never ends.
            let started = Instant::now();
            let head = b"GET /healthz HTTP/1.1\r\nX-Slow: ".iter();
            for byte in head.chain(std::iter::repeat(&b'a')) {
                if trickler.write_all(&[*byte]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            started.elapsed()
        });
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        let answer = get(addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nok\n"), "{answer}");
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "the probe took {:?}",
            started.elapsed()
        );
        let cut_after = trickling.join().expect("trickler");
        assert!(
            cut_after < HEAD_DEADLINE + Duration::from_secs(1),
            "the trickling client was cut after {cut_after:?}"
        );
        drop(idle);
    }

    #[test]
    fn connections_beyond_the_limit_are_closed_unanswered() {
        let addr = server();
        let held: Vec<TcpStream> = (0..MAX_CONNECTIONS)
            .map(|_| TcpStream::connect(addr).expect("a held client"))
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        // Closed unanswered: an end of stream, or a reset if the request was still unread.
        let answer = try_get(addr, "GET /healthz HTTP/1.1\r\n\r\n").unwrap_or_default();
        assert_eq!(answer, "", "over the limit: closed without an answer");
        drop(held);
        std::thread::sleep(Duration::from_millis(200));
        let answer = get(addr, "GET /healthz HTTP/1.1\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    }

    #[test]
    fn heads_are_parsed_and_bounded() {
        assert_eq!(parse(b"GET /metrics HTTP/1.1\r\n"), None);
        assert_eq!(
            parse(b"GET /metrics?x=1 HTTP/1.1\r\n\r\n"),
            Some(Head::Get {
                path: "/metrics".into(),
                head_only: false
            })
        );
        assert_eq!(parse(b"POST / HTTP/1.1\r\n\r\n"), Some(Head::OtherMethod));
        assert_eq!(parse(b"\x01\x02 nonsense\r\n\r\n"), Some(Head::Malformed));
        let addr = server();
        // Exactly the limit, still unfinished: the server reads it all, then refuses.
        let start = "GET / HTTP/1.1\r\nX: ";
        let long = format!("{start}{}", "a".repeat(MAX_HEAD_BYTES - start.len()));
        assert!(get(addr, &long).starts_with("HTTP/1.1 431"));
        let head = get(addr, "HEAD /healthz HTTP/1.1\r\n\r\n");
        assert!(
            head.ends_with("Content-Length: 3\r\nConnection: close\r\n\r\n"),
            "{head}"
        );
    }
}
