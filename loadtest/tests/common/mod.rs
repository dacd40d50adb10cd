//! Small WebSocket servers for the tests, on tokio and the sans-IO parts the gateway uses
//! (wsproto's upgrade parser and codec in the server role, the gateway's token verifier):
//! - a chat server that speaks just enough of our protocol (welcome, create chat, send
//!   with deliveries and a sent receipt, acks answered by receipts, ping) and drops,
//!   duplicates and reorders deliveries on purpose, by their ordinal;
//! - a raw echo server and a raw broadcast server for the peer-server scenarios.

#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use gateway::auth::Verifier;
use gateway::handshake::{parse_upgrade, switching_protocols};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use wire::server::{ChatCreated, Message as ChatMessage, Pong, Receipt, Welcome};
use wire::{ChatKind, ClientFrame, ReceiptKind, ServerFrame};
use wsproto::handshake::{HandshakeLimits, refusal};
use wsproto::{Decoded, Decoder, Message, Role, binary_frame, pong_frame};

pub const SECRET: &str = "test-secret-of-enough-length";

/// Deliveries (message frames to recipients) to tamper with, by 1-based ordinal.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Never sent.
    pub drop: BTreeSet<u64>,
    /// Sent twice.
    pub duplicate: BTreeSet<u64>,
    /// Held back and sent after the next delivery to the same recipient.
    pub reorder: BTreeSet<u64>,
}

/// What the server does.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Our protocol, with faults.
    Chat(Faults),
    /// Every binary message back to its sender.
    RawEcho,
    /// Every binary message to every client of the sender's group (`group=` in the upgrade
    /// request's query, 0 without one), the sender included.
    RawBroadcast,
}

#[derive(Default)]
struct State {
    clients: HashMap<u64, UnboundedSender<Vec<u8>>>,
    chats: HashMap<u64, (Vec<u64>, u64)>,
    next_chat: u64,
    deliveries: u64,
    held: HashMap<u64, Vec<u8>>,
    next_raw_client: u64,
    /// Raw broadcast: each client's group.
    groups: HashMap<u64, u64>,
}

struct Server {
    mode: Mode,
    state: Mutex<State>,
}

/// Starts a server on a loopback port, on its own thread; it lives as long as the test.
pub fn start(mode: Mode) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            tx.send(listener.local_addr().expect("addr"))
                .expect("send addr");
            let server = Arc::new(Server {
                mode,
                state: Mutex::new(State::default()),
            });
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(serve(server.clone(), stream));
            }
        });
    });
    rx.recv().expect("server address")
}

/// The broadcast group the request line's query asks for, read as the peer servers read it.
fn group_of(head: &[u8]) -> u64 {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let query = line
        .split(' ')
        .nth(1)
        .and_then(|target| target.split_once('?'))
        .map(|(_, query)| query);
    bench::peer::group_of(query)
}

fn frame(frame: &ServerFrame) -> Vec<u8> {
    binary_frame(&frame.encode().expect("server frame encodes"))
}

async fn serve(server: Arc<Server>, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    let (request, head) = loop {
        let mut chunk = [0u8; 4096];
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        match parse_upgrade(&buf, &HandshakeLimits::default()) {
            Ok(Some(parsed)) => break parsed,
            Ok(None) => continue,
            Err(_) => return,
        }
    };
    let group = group_of(&buf[..head]);
    buf.drain(..head);
    let chat = matches!(server.mode, Mode::Chat(_));
    let user = if chat {
        let token = request.token.as_deref().unwrap_or_default();
        match Verifier::hs256(SECRET.as_bytes()).verify(token) {
            Ok(claims) => claims.user_id,
            Err(_) => {
                let _ = stream.write_all(&refusal(401, "bad token")).await;
                return;
            }
        }
    } else {
        let mut state = server.state.lock().expect("state");
        state.next_raw_client += 1;
        let client = state.next_raw_client;
        state.groups.insert(client, group);
        client
    };
    if stream
        .write_all(&switching_protocols(&request))
        .await
        .is_err()
    {
        return;
    }
    let (mut reader, mut writer) = stream.into_split();
    let (tx, mut rx) = unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            if writer.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    if chat {
        let _ = tx.send(frame(&ServerFrame::Welcome(Welcome {
            user_id: user,
            connection_id: user,
            node_id: 1,
            server_time_us: 0,
            heartbeat_ms: 25_000,
            max_frame_bytes: 16 * 1024,
        })));
    }
    server
        .state
        .lock()
        .expect("state")
        .clients
        .insert(user, tx.clone());
    let mut decoder = Decoder::new(Role::Server, 1 << 20);
    loop {
        let mut used = 0;
        loop {
            let Ok(Decoded { message, consumed }) = decoder.decode(&mut buf[used..]) else {
                return;
            };
            used += consumed;
            match message {
                None => break,
                Some(Message::Binary(bytes)) => server.on_binary(user, bytes, &tx),
                Some(Message::Ping(payload)) => {
                    let _ = tx.send(pong_frame(payload));
                }
                Some(Message::Close { .. }) => {
                    server.state.lock().expect("state").clients.remove(&user);
                    return;
                }
                Some(_) => {}
            }
        }
        buf.drain(..used);
        let mut chunk = [0u8; 16 * 1024];
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                server.state.lock().expect("state").clients.remove(&user);
                return;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

impl Server {
    fn on_binary(&self, user: u64, bytes: &[u8], reply: &UnboundedSender<Vec<u8>>) {
        match &self.mode {
            Mode::RawEcho => {
                let _ = reply.send(binary_frame(bytes));
            }
            Mode::RawBroadcast => {
                let out = binary_frame(bytes);
                let state = self.state.lock().expect("state");
                let group = state.groups.get(&user);
                for (other, client) in &state.clients {
                    if state.groups.get(other) == group {
                        let _ = client.send(out.clone());
                    }
                }
            }
            Mode::Chat(faults) => {
                if let Ok(client_frame) = ClientFrame::decode(bytes) {
                    self.on_frame(faults, user, client_frame, reply);
                }
            }
        }
    }

    fn on_frame(
        &self,
        faults: &Faults,
        user: u64,
        client_frame: ClientFrame,
        reply: &UnboundedSender<Vec<u8>>,
    ) {
        let mut state = self.state.lock().expect("state");
        match client_frame {
            ClientFrame::CreateChat(create) => {
                state.next_chat += 1;
                let chat_id = state.next_chat;
                let mut members = create.members;
                members.push(user);
                members.sort_unstable();
                members.dedup();
                let out = frame(&ServerFrame::ChatCreated(ChatCreated {
                    client_msg_id: create.client_msg_id,
                    chat_id,
                    kind: ChatKind::Group,
                    title: create.title,
                    creator: user,
                    members: members.clone(),
                }));
                for member in &members {
                    state.send(*member, out.clone());
                }
                state.chats.insert(chat_id, (members, 0));
            }
            ClientFrame::Send(send) => {
                let Some((members, seq)) = state.chats.get_mut(&send.chat_id) else {
                    return;
                };
                *seq += 1;
                let seq = *seq;
                let members = members.clone();
                let out = frame(&ServerFrame::Message(ChatMessage {
                    chat_id: send.chat_id,
                    seq,
                    sender: user,
                    client_msg_id: send.client_msg_id,
                    server_time_us: 0,
                    body: send.body,
                    kind: wire::EntryKind::Message,
                    target_seq: 0,
                }));
                for member in members.into_iter().filter(|&m| m != user) {
                    state.deliver(faults, member, out.clone());
                }
                let _ = reply.send(frame(&ServerFrame::Receipt(Receipt {
                    chat_id: send.chat_id,
                    kind: ReceiptKind::Sent,
                    seq,
                    user_id: user,
                    client_msg_id: Some(send.client_msg_id),
                })));
            }
            ClientFrame::AckDelivered(ack) => state.receipt(user, &ack, ReceiptKind::Delivered),
            ClientFrame::AckRead(ack) => state.receipt(user, &ack, ReceiptKind::Read),
            ClientFrame::Ping(ping) => {
                let _ = reply.send(frame(&ServerFrame::Pong(Pong {
                    nonce: ping.nonce,
                    server_time_us: 0,
                })));
            }
            _ => {}
        }
    }
}

impl State {
    fn send(&self, user: u64, bytes: Vec<u8>) {
        if let Some(client) = self.clients.get(&user) {
            let _ = client.send(bytes);
        }
    }

    /// A member's watermark, forwarded to the other members as a receipt.
    fn receipt(&self, user: u64, ack: &wire::client::Ack, kind: ReceiptKind) {
        let Some((members, _)) = self.chats.get(&ack.chat_id) else {
            return;
        };
        let out = frame(&ServerFrame::Receipt(Receipt {
            chat_id: ack.chat_id,
            kind,
            seq: ack.seq,
            user_id: user,
            client_msg_id: None,
        }));
        for &member in members.iter().filter(|&&m| m != user) {
            self.send(member, out.clone());
        }
    }

    /// One delivery, counted and tampered with as the faults say.
    fn deliver(&mut self, faults: &Faults, recipient: u64, bytes: Vec<u8>) {
        self.deliveries += 1;
        let n = self.deliveries;
        if faults.drop.contains(&n) {
            return;
        }
        if faults.reorder.contains(&n) {
            self.held.insert(recipient, bytes);
            return;
        }
        self.send(recipient, bytes.clone());
        if faults.duplicate.contains(&n) {
            self.send(recipient, bytes);
        }
        if let Some(held) = self.held.remove(&recipient) {
            self.send(recipient, held);
        }
    }
}
