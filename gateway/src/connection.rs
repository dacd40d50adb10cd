//! The runtime glue of one connection: the upgrade (with its time and size bounds), then a
//! poll loop that reads only when the socket is readable, into the core's shared buffer,
//! and writes the session's queue in order, then the closing handshake.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use monoio::io::IntoPollIo;
use monoio::net::TcpStream;
use monoio::net::tcp::stream_poll::TcpStreamPoll;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use wire::CloseCode;

use crate::core::{Core, UpgradeGuard};
use crate::handshake::{self, UpgradeRequest};
use crate::open_session::{
    self, Accepted, CLOSE_LINGER, CloseProgress, MAX_FRAMES_PER_WRITE, OpenSession,
};
use crate::router::Delivery;

/// Reads one session may do per poll before it yields to the core's other sessions.
const READS_PER_POLL: usize = 16;

/// A plain or TLS socket in readiness mode: no buffer is held while it waits.
pub enum Transport {
    /// ws://
    Plain(TcpStreamPoll),
    /// wss:// (rustls keeps its own record buffers, so TLS sessions cost more memory).
    Tls(Box<tokio_rustls::server::TlsStream<TcpStreamPoll>>),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(s) => s.is_write_vectored(),
            Transport::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Serves one accepted connection to its end. `upgrading` was taken when the connection
/// was accepted, before this task was spawned: a core that stops right after accepting
/// must still see it and wait for it.
///
/// This future is what an open session costs for its whole life, so it holds only the
/// [`Session`]: the upgrade (its buffers, its timer, its TLS handshake) runs in a boxed
/// future that is freed before the session starts.
pub fn serve(
    core: Rc<Core>,
    stream: TcpStream,
    peer: SocketAddr,
    upgrading: UpgradeGuard,
) -> impl Future<Output = ()> {
    // Built outside the async block, so the block captures only the box, not the
    // arguments (an async fn would keep their slots for its whole life).
    let opened = Box::pin(open(core, stream, peer, upgrading));
    async move {
        let Some(mut session) = opened.await else {
            return;
        };
        let code = match poll_fn(|cx| session.poll(cx)).await {
            Ended::CloseWritten(code) => {
                // Boxed: the wait's timer is part of a closing session only.
                Box::pin(session.finish_closing_handshake()).await;
                code
            }
            Ended::Gone(code) => code,
        };
        session.state.finish(&session.core, code);
    }
}

/// The upgrade within its time limit, then the session's registration and welcome.
async fn open(
    core: Rc<Core>,
    stream: TcpStream,
    peer: SocketAddr,
    upgrading: UpgradeGuard,
) -> Option<Session> {
    let _ = stream.set_nodelay(true);
    // An upgrade still under way when a shutdown has drained long enough is dropped: the
    // stopping process must not wait out a slow client's handshake timeout.
    let accepted = {
        let cut = async {
            core.shutdown_started().await;
            monoio::time::sleep(crate::core::SHUTDOWN_DRAIN).await;
        };
        let upgrade = std::pin::pin!(upgrade(&core, stream));
        let cut = std::pin::pin!(cut);
        monoio::time::timeout(
            core.node.config.handshake_timeout,
            futures_util::future::select(upgrade, cut),
        )
        .await
        .map(|raced| match raced {
            futures_util::future::Either::Left((accepted, _)) => accepted,
            futures_util::future::Either::Right(((), _)) => None,
        })
    };
    drop(upgrading);
    let (io, request, claims, leftover) = match accepted {
        Ok(Some(accepted)) => accepted,
        Ok(None) => return None,
        Err(_) => {
            core.metrics.refuse("handshake_timeout");
            tracing::debug!(%peer, "handshake timed out");
            return None;
        }
    };
    Some(Session {
        state: OpenSession::open(&core, &request, &claims, leftover),
        core,
        io,
        writing: None,
    })
}

/// Answers a connection refused before its upgrade is even read (the per-IP limit).
pub async fn refuse(stream: TcpStream, refusal: Vec<u8>) {
    use monoio::io::AsyncWriteRentExt;
    let mut stream = stream;
    let (_, _) = stream.write_all(refusal).await;
}

/// Reads and answers the HTTP upgrade. `None` when the client was refused or went away.
async fn upgrade(
    core: &Core,
    stream: TcpStream,
) -> Option<(Transport, UpgradeRequest, crate::auth::Claims, Vec<u8>)> {
    let poll = match stream.into_poll_io() {
        Ok(poll) => poll,
        Err(error) => {
            tracing::warn!(%error, "could not switch a socket to readiness mode");
            return None;
        }
    };
    let mut io = match &core.node.tls {
        Some(acceptor) => match acceptor.accept(poll).await {
            Ok(tls) => Transport::Tls(Box::new(tls)),
            Err(error) => {
                core.metrics.refuse("tls");
                tracing::debug!(%error, "TLS handshake failed");
                return None;
            }
        },
        None => Transport::Plain(poll),
    };
    let limits = wsproto::handshake::HandshakeLimits {
        max_header_bytes: core.node.config.max_header_bytes,
        ..Default::default()
    };
    let mut head = Vec::with_capacity(1024);
    let Accepted {
        request,
        head_len,
        claims,
    } = loop {
        if head.len() == head.capacity() {
            head.reserve(head.capacity());
        }
        match io.read_buf(&mut head).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        match open_session::read_upgrade(core, &head, &limits) {
            Ok(Some(accepted)) => break accepted,
            Ok(None) => continue,
            Err(refusal) => {
                let _ = io.write_all(&refusal).await;
                let _ = io.shutdown().await;
                return None;
            }
        }
    };
    if io
        .write_all(&handshake::switching_protocols(&request))
        .await
        .is_err()
    {
        return None;
    }
    // What the client sent after its head is the start of the WebSocket stream.
    let leftover = head.split_off(head_len);
    Some((io, request, claims, leftover))
}

/// An open session on a readiness-driven socket.
struct Session {
    state: OpenSession,
    core: Rc<Core>,
    io: Transport,
    /// The write under way; allocated only while one is.
    writing: Option<Box<Writing>>,
}

/// Frames taken from the outbox for one write, and how much of the first went out.
struct Writing {
    frames: VecDeque<(Bytes, Option<Arc<Delivery>>)>,
    written: usize,
}

/// Why the poll loop stops: the session is over with this code.
type Closed = CloseCode;

/// How the poll loop ended.
enum Ended {
    /// Our close frame is written; the closing handshake goes on.
    CloseWritten(CloseCode),
    /// The connection failed or was dropped: nothing more can be said on it.
    Gone(CloseCode),
}

impl Session {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Ended> {
        self.state.outbox.register(cx.waker());
        for _ in 0..READS_PER_POLL {
            if let Err(code) = ready_or_pending(self.poll_write(cx)) {
                return Poll::Ready(Ended::Gone(code));
            }
            match self
                .state
                .close_progress(&self.core, self.writing.is_some())
            {
                CloseProgress::Open => {}
                CloseProgress::Aborted(code) => return Poll::Ready(Ended::Gone(code)),
                CloseProgress::Queued => continue,
                CloseProgress::Writing => return Poll::Pending,
                CloseProgress::Written(code) => return Poll::Ready(Ended::CloseWritten(code)),
            }
            // A client behind on what it was sent is not read until it catches up (the
            // socket's writability wakes this task).
            if self.state.outbox.is_behind() {
                return Poll::Pending;
            }
            if self.state.resume_if_paused_mid_read(&self.core) {
                continue;
            }
            match self.poll_read(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(code)) => return Poll::Ready(Ended::Gone(code)),
                Poll::Pending => return Poll::Pending,
            }
        }
        // Fairness: let the core's other sessions run, then come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Our close frame is out: waits (bounded) for the peer if the session says so
    /// ([`OpenSession::awaits_peer`]), then closes TCP.
    async fn finish_closing_handshake(&mut self) {
        if self.state.awaits_peer() {
            let wait = poll_fn(|cx| self.poll_peer_close(cx));
            let _ = monoio::time::timeout(CLOSE_LINGER, wait).await;
        }
        // One attempt: a TLS close_notify that does not fit the socket is not waited for.
        poll_fn(|cx| {
            let _ = Pin::new(&mut self.io).poll_shutdown(cx);
            Poll::Ready(())
        })
        .await;
    }

    /// Reads until the peer's close arrives or the peer hangs up, dropping what comes
    /// before it.
    fn poll_peer_close(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        // A shutdown that has waited long enough cuts the wait short.
        self.state.outbox.register(cx.waker());
        if self.state.outbox.is_aborted() {
            return Poll::Ready(());
        }
        let core = self.core.clone();
        let mut scratch = core.scratch.borrow_mut();
        for _ in 0..READS_PER_POLL {
            let mut read_buf = ReadBuf::new(&mut scratch[..]);
            let read = match Pin::new(&mut self.io).poll_read(cx, &mut read_buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(())) => read_buf.filled().len(),
            };
            if read == 0 || self.state.peer_close_received(&mut scratch[..read]) {
                return Poll::Ready(());
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Writes queued frames until the queue is empty or the socket is full. What is queued
    /// goes out in one vectored write (up to [`MAX_FRAMES_PER_WRITE`] frames): a burst of
    /// receipts costs the core one system call and the kernel one send, not one per frame.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Closed>> {
        loop {
            self.take_frames();
            let Some(writing) = self.writing.as_deref() else {
                return match Pin::new(&mut self.io).poll_flush(cx) {
                    Poll::Ready(Err(_)) => Poll::Ready(Err(CloseCode(1006))),
                    _ => Poll::Ready(Ok(())),
                };
            };
            let mut slices = [io::IoSlice::new(&[]); MAX_FRAMES_PER_WRITE];
            let count = writing.frames.len().min(MAX_FRAMES_PER_WRITE);
            for (i, (slice, (bytes, _))) in slices.iter_mut().zip(&writing.frames).enumerate() {
                let from = if i == 0 { writing.written } else { 0 };
                *slice = io::IoSlice::new(&bytes[from..]);
            }
            let sent = match Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..count]) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) | Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(CloseCode(1006)));
                }
                Poll::Ready(Ok(n)) => n,
            };
            self.advance(sent);
        }
    }

    /// Starts a write of frames from the outbox, up to a write's worth, unless one is under
    /// way.
    fn take_frames(&mut self) {
        if self.writing.is_none() {
            let mut frames = VecDeque::new();
            self.state.take_frames(&self.core, |frame, delivery| {
                frames.push_back((frame, delivery))
            });
            if !frames.is_empty() {
                self.writing = Some(Box::new(Writing { frames, written: 0 }));
            }
        }
    }

    /// Accounts for `sent` bytes of the write under way having gone out, and frees it once
    /// all of it has: an idle session holds no write.
    fn advance(&mut self, mut sent: usize) {
        let Some(writing) = self.writing.as_mut() else {
            return;
        };
        self.state.wrote(&self.core, sent);
        while let Some((bytes, _)) = writing.frames.front() {
            let left = bytes.len() - writing.written;
            if sent < left {
                writing.written += sent;
                return;
            }
            sent -= left;
            writing.written = 0;
            if let Some((_, Some(delivery))) = writing.frames.pop_front() {
                self.state.delivered(&self.core, &delivery);
            }
        }
        self.writing = None;
    }

    /// One read, when the socket has something, and everything it completes.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Closed>> {
        if self.core.is_backpressured() {
            self.core.wait_for_room(cx.waker());
            return Poll::Pending;
        }
        let core = self.core.clone();
        let mut scratch = core.scratch.borrow_mut();
        let have = self.state.pending().len();
        scratch[..have].copy_from_slice(self.state.pending());
        let mut read_buf = ReadBuf::new(&mut scratch[have..]);
        let read = match Pin::new(&mut self.io).poll_read(cx, &mut read_buf) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(_)) => return Poll::Ready(Err(CloseCode(1006))),
            Poll::Ready(Ok(())) => read_buf.filled().len(),
        };
        if read == 0 {
            return Poll::Ready(Err(CloseCode(1006)));
        }
        let now = std::time::Instant::now();
        self.state.outbox.touch(now);
        self.state.consume(&core, &mut scratch[..have + read], now);
        Poll::Ready(Ok(()))
    }
}

fn ready_or_pending(poll: Poll<Result<(), Closed>>) -> Result<(), Closed> {
    match poll {
        Poll::Ready(result) => result,
        Poll::Pending => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `f` returns, without calling it.
    fn size_of_output<A, B, C, D, F>(_: fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn an_idle_sessions_task_stays_small() {
        // What every open session's task holds for its whole life (bench/RESULTS.md,
        // "Bytes per idle socket"): the socket alone is 80 bytes of it.
        let session = std::mem::size_of::<Session>();
        assert!(session <= 216, "a session is {session} bytes");
        let task = size_of_output(serve);
        assert!(task <= 248, "a session's future is {task} bytes");
    }
}
