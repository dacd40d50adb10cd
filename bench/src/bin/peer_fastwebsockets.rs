//! A peer WebSocket server on fastwebsockets (Deno's), for the benchmarks that run the gateway
//! beside it on the same load: `--mode echo` sends each data message back to its sender,
//! `--mode broadcast` to every client of the sender's group, which each client picks with
//! `?group=<u64>` in its upgrade request (0 without one). Flags, the group contract and the
//! other shared parts are in `bench::peer`.
//!
//! Written from fastwebsockets' documented usage: hyper 1 serves the HTTP upgrade through
//! `fastwebsockets::upgrade::upgrade` (the group is read from the hyper request's URI
//! first), each WebSocket runs on a task of its own under `tokio::task::unconstrained` as in
//! the crate's echo examples, `FragmentCollector` (or `FragmentCollectorRead` over the split
//! read half) hands over whole messages, and the crate's defaults answer pings and close
//! frames.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use bench::peer::{self, Args, Groups, Mode, Peer};
use clap::Parser;
use fastwebsockets::upgrade::{self, UpgradeFut};
use fastwebsockets::{
    FragmentCollector, FragmentCollectorRead, Frame, OpCode, Payload, WebSocketError,
    WebSocketWrite,
};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::sync::Arc;

use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, broadcast};

static PEER: Peer = Peer::new("peer_fastwebsockets");

/// A broadcast message as every writer sends it: its opcode and its payload, shared.
type Delivery = (OpCode, Bytes);

/// The read half of a split connection, handing over whole messages.
type Reader = FragmentCollectorRead<ReadHalf<TokioIo<Upgraded>>>;
/// The write half of a split connection.
type Writer = WebSocketWrite<WriteHalf<TokioIo<Upgraded>>>;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mode = args.mode;
    let groups = Groups::<Delivery>::new();
    PEER.run(&args, move |stream| {
        serve_http(stream, mode, groups.clone())
    })
}

/// Serves one TCP connection's HTTP/1 until its upgrade hands the socket to a WebSocket task.
async fn serve_http(stream: TcpStream, mode: Mode, groups: Groups<Delivery>) {
    let service = service_fn(move |request| {
        let groups = groups.clone();
        async move { answer_upgrade(request, mode, groups) }
    });
    let served = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
    if let Err(err) = served {
        PEER.connection_failed(&err);
    }
}

/// Answers the upgrade request (on any path; of the query only `group` is read, in broadcast
/// mode, and an Authorization header is ignored) and starts the WebSocket once hyper has sent
/// the 101.
fn answer_upgrade(
    mut request: Request<Incoming>,
    mode: Mode,
    groups: Groups<Delivery>,
) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let group = peer::group_of(request.uri().query());
    let (response, websocket) = upgrade::upgrade(&mut request)?;
    tokio::spawn(tokio::task::unconstrained(async move {
        let ended = match mode {
            Mode::Echo => echo(websocket).await,
            Mode::Broadcast => broadcast(websocket, &groups, group).await,
        };
        if let Err(err) = ended {
            PEER.connection_failed(&err);
        }
    }));
    Ok(response)
}

async fn echo(websocket: UpgradeFut) -> anyhow::Result<()> {
    let mut ws = FragmentCollector::new(websocket.await?);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            // read_frame has already answered it.
            OpCode::Close => return Ok(()),
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
}

/// Joins `group`, reads the client's messages into the group's ring on this task and writes
/// the ring's messages to the client on a task of its own, so that a delivery wakes only the
/// writer, until either ends.
async fn broadcast(
    websocket: UpgradeFut,
    groups: &Groups<Delivery>,
    group: u64,
) -> anyhow::Result<()> {
    let (read, write) = websocket.await?.split(tokio::io::split);
    let mut read = FragmentCollectorRead::new(read);
    // The reader's pongs and close replies and the deliveries share the write half, behind a
    // lock as the crate's split test shares it.
    let write = Arc::new(Mutex::new(write));
    // Subscribed before the first read, so the client's own messages come back to it.
    let (hub, deliveries) = groups.join(group);
    let mut writer = tokio::spawn(tokio::task::unconstrained(deliver(
        Arc::clone(&write),
        deliveries,
    )));
    tokio::select! {
        read = receive(&mut read, &write, &hub) => {
            writer.abort();
            Ok(read?)
        }
        written = &mut writer => Ok(written??),
    }
}

async fn receive(
    read: &mut Reader,
    write: &Mutex<Writer>,
    hub: &broadcast::Sender<Delivery>,
) -> Result<(), WebSocketError> {
    let mut send = |frame| async move { write.lock().await.write_frame(frame).await };
    loop {
        let frame = read.read_frame(&mut send).await?;
        match frame.opcode {
            // Its reply went out through `send`.
            OpCode::Close => return Ok(()),
            OpCode::Text | OpCode::Binary => {
                // Fails only without subscribers, and this connection is one.
                let _ = hub.send((frame.opcode, shared(frame.payload)));
            }
            _ => {}
        }
    }
}

async fn deliver(
    write: Arc<Mutex<Writer>>,
    mut deliveries: broadcast::Receiver<Delivery>,
) -> Result<(), WebSocketError> {
    loop {
        match deliveries.recv().await {
            Ok((opcode, payload)) => {
                let frame = Frame::new(true, opcode, None, Payload::Borrowed(&payload));
                write.lock().await.write_frame(frame).await?;
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                PEER.slow_client_closed(missed);
                let close = Frame::close(
                    peer::SLOW_CLIENT_CLOSE_CODE,
                    peer::SLOW_CLIENT_CLOSE_REASON.as_bytes(),
                );
                return write.lock().await.write_frame(close).await;
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

/// A received payload as one buffer every writer can share.
fn shared(payload: Payload<'_>) -> Bytes {
    match payload {
        // A message in one frame is a slice of the connection's read buffer: freezing it
        // shares that slice without a copy.
        Payload::Bytes(bytes) => bytes.freeze(),
        // A reassembled fragmented message is already an owned buffer.
        other => Vec::from(other).into(),
    }
}
