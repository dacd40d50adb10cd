//! Redis restarted empty under a running stack: the gateway notices that Redis forgot the
//! users it holds and writes them again, so live delivery comes back within seconds instead
//! of waiting for the registry's refresh. The Redis here is the test's own (a
//! `redis-server` child on a free port), never the shared one.

mod full_stack;

use std::net::{Ipv4Addr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use full_stack::{
    SHARDS, database_url, private_corner, start_gateway_with, tear_down, upgrade_request,
};
use futures_util::{SinkExt, StreamExt};
use gateway::Gateway;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wire::client::{CreateChat, SendMessage};
use wire::{ChatKind, ClientFrame, ServerFrame};

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The operations target: live delivery back within this long after Redis accepts again.
const RECOVERY_TARGET: Duration = Duration::from_secs(5);

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A `redis-server` of the test's own that keeps nothing on disk, so a restart is empty.
struct PrivateRedis {
    port: u16,
    server: Option<Child>,
}

impl PrivateRedis {
    fn start() -> PrivateRedis {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .expect("a free port")
            .local_addr()
            .expect("address")
            .port();
        let mut redis = PrivateRedis { port, server: None };
        redis.start_again();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts the server on the same port, empty, and waits until it answers.
    fn start_again(&mut self) {
        let server = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(std::env::temp_dir())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server starts (is it installed?)");
        self.server = Some(server);
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = redis::Client::open(self.url()).expect("url");
        loop {
            if let Ok(mut connection) = client.get_connection()
                && redis::cmd("PING").query::<String>(&mut connection).is_ok()
            {
                return;
            }
            assert!(Instant::now() < deadline, "the private Redis did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: everything in it is gone.
    fn kill(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Stack {
    name: String,
    node_id: u32,
    gateway: Option<Gateway>,
    worker: Child,
}

impl Stack {
    fn new(redis_url: &str) -> Stack {
        let (name, node_id) = private_corner("redis_restart");
        let gateway = start_gateway_with(&name, node_id, AMQP_URL, &["--redis-url", redis_url]);
        let worker = Command::new(env!("CARGO_BIN_EXE_backend"))
            .args(["--database-url", &database_url(), "--pg-schema", &name])
            .args(["--amqp-prefix", &name, "--redis-prefix", &name])
            .args(["--redis-url", redis_url, "--shards", SHARDS])
            .args(["--name", &format!("{name}-worker")])
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .expect("backend starts");
        Stack {
            name,
            node_id,
            gateway: Some(gateway),
            worker,
        }
    }

    async fn connect(&self, user: u64) -> Client {
        let gateway = self.gateway.as_ref().expect("running gateway");
        let request = upgrade_request(gateway.local_addr(), user);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match tokio_tungstenite::connect_async(request.clone()).await {
                Ok((mut client, _)) => {
                    assert!(matches!(
                        recv(&mut client, Duration::from_secs(20)).await,
                        Some(ServerFrame::Welcome(_))
                    ));
                    return client;
                }
                Err(error) => {
                    assert!(Instant::now() < deadline, "could not connect: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let gateway = self.gateway.take();
        tear_down(
            [&mut self.worker],
            gateway,
            &self.name,
            self.node_id,
            Some(AMQP_URL),
        );
    }
}

async fn send(client: &mut Client, frame: ClientFrame) {
    client
        .send(Message::Binary(Bytes::from(
            frame.encode().expect("encodes"),
        )))
        .await
        .expect("send");
}

/// The next server frame within `patience`, or `None`.
async fn recv(client: &mut Client, patience: Duration) -> Option<ServerFrame> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let message = tokio::time::timeout_at(deadline, client.next())
            .await
            .ok()?;
        match message.expect("stream open").expect("no WebSocket error") {
            Message::Binary(bytes) => {
                return Some(ServerFrame::decode(&bytes).expect("valid server frame"));
            }
            Message::Close(close) => panic!("closed: {close:?}"),
            _ => continue,
        }
    }
}

/// Sends one message a tenth of a second from `sender` until `reader` gets one live, and
/// returns when that was.
async fn first_live_delivery(
    sender: &mut Client,
    reader: &mut Client,
    chat_id: u64,
    next_id: &mut u64,
    patience: Duration,
) -> Option<Instant> {
    let deadline = Instant::now() + patience;
    while Instant::now() < deadline {
        *next_id += 1;
        send(
            sender,
            ClientFrame::Send(SendMessage {
                chat_id,
                client_msg_id: *next_id,
                body: format!("message {next_id}"),
            }),
        )
        .await;
        let until = tokio::time::Instant::now() + Duration::from_millis(100);
        while let Ok(Some(frame)) =
            tokio::time::timeout_at(until, recv(reader, Duration::from_millis(100))).await
        {
            if matches!(frame, ServerFrame::Message(_)) {
                return Some(Instant::now());
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_delivery_returns_within_seconds_of_redis_restarting_empty() {
    let mut redis = PrivateRedis::start();
    let stack = Stack::new(&redis.url());
    let mut alice = stack.connect(1).await;
    let mut bob = stack.connect(2).await;
    send(
        &mut alice,
        ClientFrame::CreateChat(CreateChat {
            client_msg_id: 1,
            kind: ChatKind::Direct,
            title: String::new(),
            members: vec![2],
        }),
    )
    .await;
    let chat_id = loop {
        match recv(&mut alice, Duration::from_secs(20)).await {
            Some(ServerFrame::ChatCreated(created)) => break created.chat_id,
            Some(_) => continue,
            None => panic!("no chat_created"),
        }
    };
    let mut next_id = 1;
    first_live_delivery(
        &mut alice,
        &mut bob,
        chat_id,
        &mut next_id,
        Duration::from_secs(20),
    )
    .await
    .expect("live delivery before the restart");

    redis.kill();
    redis.start_again();
    let back = Instant::now();
    let delivered = first_live_delivery(
        &mut alice,
        &mut bob,
        chat_id,
        &mut next_id,
        Duration::from_secs(30),
    )
    .await
    .expect("live delivery after Redis restarted empty");
    let took = delivered - back;
    eprintln!(
        "live delivery back {:.2} s after Redis accepted again",
        took.as_secs_f64()
    );
    assert!(
        took < RECOVERY_TARGET,
        "live delivery took {took:?} to come back (target {RECOVERY_TARGET:?})"
    );
}
