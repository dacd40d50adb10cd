//! A peer WebSocket server on tokio-tungstenite, for the benchmarks that run the gateway
//! beside it on the same load: `--mode echo` sends each data message back to its sender,
//! `--mode broadcast` to every client of the sender's group, which each client picks with
//! `?group=<u64>` in its upgrade request (0 without one). Flags, the group contract and the
//! other shared parts are in `bench::peer`.
//!
//! Written from tokio-tungstenite's documented usage: `accept_async_with_config` on the
//! accepted TCP stream in echo mode, `accept_hdr_async_with_config` in broadcast mode with a
//! callback that reads the group from the request's URI (any path; of the query only `group`
//! is read, and an Authorization header is ignored), the stream split into its `Sink` and
//! `Stream` halves driven with futures' `SinkExt`/`StreamExt`, echo as the crate's
//! echo-server example forwards it, and tungstenite's defaults answering pings and
//! close frames while the stream is read. One setting departs from the defaults, as the
//! crate's documentation advises for many connections: a 4 KiB read buffer instead of
//! 128 KiB, which tungstenite allocates per connection up front (with the default, an idle
//! connection cost about 134 KB and echo twice the CPU on this host).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use bench::peer::{self, Args, Groups, Mode, Peer};
use clap::Parser;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt, TryStreamExt, future};
use tokio::net::TcpStream;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::{WebSocketStream, accept_async_with_config, accept_hdr_async_with_config};

static PEER: Peer = Peer::new("peer_tungstenite");

/// The read buffer tungstenite's documentation suggests when connections are many.
const READ_BUFFER_BYTES: usize = 4096;

type Connection = WebSocketStream<TcpStream>;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mode = args.mode;
    let groups = Groups::<Message>::new();
    PEER.run(&args, move |stream| {
        let groups = groups.clone();
        async move {
            let ended = match mode {
                Mode::Echo => echo(stream).await,
                Mode::Broadcast => broadcast(stream, &groups).await,
            };
            if let Err(err) = ended {
                PEER.connection_failed(&err);
            }
        }
    })
}

async fn echo(stream: TcpStream) -> anyhow::Result<()> {
    let (write, read) = accept(stream).await?.split();
    // Only data messages go back; control frames are tungstenite's business. `forward`
    // flushes when the reader has nothing more, so a burst of echoes goes out in one write.
    read.try_filter(|message| future::ready(message.is_binary() || message.is_text()))
        .forward(write)
        .await?;
    Ok(())
}

/// Joins the group the upgrade request asks for, reads the client's messages into the group's
/// ring on this task and writes the ring's messages to the client on a task of its own, so
/// that a delivery wakes only the writer, until either ends.
async fn broadcast(stream: TcpStream, groups: &Groups<Message>) -> anyhow::Result<()> {
    let mut group = 0;
    // The error type, an HTTP response, is tungstenite's `Callback` signature, not ours.
    #[allow(clippy::result_large_err)]
    let read_group = |request: &Request, response: Response| {
        group = peer::group_of(request.uri().query());
        Ok(response)
    };
    let connection = accept_hdr_async_with_config(stream, read_group, Some(config())).await?;
    let (write, mut read) = connection.split();
    // Subscribed before the first read, so the client's own messages come back to it.
    let (hub, deliveries) = groups.join(group);
    let mut writer = tokio::spawn(deliver(write, deliveries));
    tokio::select! {
        read = receive(&mut read, &hub) => {
            writer.abort();
            Ok(read?)
        }
        written = &mut writer => Ok(written??),
    }
}

async fn receive(
    read: &mut SplitStream<Connection>,
    hub: &broadcast::Sender<Message>,
) -> Result<(), Error> {
    // The stream ends once a close frame has been answered.
    while let Some(message) = read.try_next().await? {
        if message.is_binary() || message.is_text() {
            // Fails only without subscribers, and this connection is one.
            let _ = hub.send(message);
        }
    }
    Ok(())
}

async fn deliver(
    mut write: SplitSink<Connection, Message>,
    mut deliveries: broadcast::Receiver<Message>,
) -> Result<(), Error> {
    loop {
        match deliveries.recv().await {
            Ok(message) => {
                // tungstenite buffers frames until a flush: flush once the queue is drained,
                // so a burst goes out in one write.
                write.feed(message).await?;
                if deliveries.is_empty() {
                    write.flush().await?;
                }
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                PEER.slow_client_closed(missed);
                let close = CloseFrame {
                    code: peer::SLOW_CLIENT_CLOSE_CODE.into(),
                    reason: peer::SLOW_CLIENT_CLOSE_REASON.into(),
                };
                return write.send(Message::Close(Some(close))).await;
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

async fn accept(stream: TcpStream) -> Result<Connection, Error> {
    accept_async_with_config(stream, Some(config())).await
}

fn config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES)
}
