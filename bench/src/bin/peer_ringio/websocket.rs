//! The WebSocket side of the peer, as a [`Handler`]: the upgrade, then echo or broadcast of
//! every data message, pongs for pings, and a close answered with a close. Bytes in, frames
//! out: nothing here touches a socket, so the tests below drive it directly.

use std::collections::HashMap;
use std::net::SocketAddr;

use bench::peer::group_of;
use bytes::Bytes;
use ringio::{ConnId, Handler, Outbox};
use wsproto::handshake::{self, HandshakeLimits};
use wsproto::{Decoded, Decoder, MAX_HEADER_LEN, Message, OpCode, Role};

/// Largest message accepted, single frame or reassembled (the gateway's default frame
/// limit is of the same order; the benchmark loads send 64 bytes).
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// What a peer does with each data message (binary or text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Send it back unchanged to its sender.
    Echo,
    /// Send it unchanged to every client of the sender's group (`?group=<u64>` in the
    /// upgrade request, 0 without one), the sender included.
    Broadcast,
}

/// One connection's protocol state.
#[derive(Debug)]
pub enum Session {
    /// Waiting for the whole upgrade request; holds its first part if it came in pieces.
    Upgrading { head: Vec<u8> },
    /// Upgraded.
    Open {
        decoder: Decoder,
        /// The start of a frame that has not fully arrived, copied out of the shared buffer;
        /// empty (and without capacity) between whole frames.
        partial: Vec<u8>,
        group: u64,
    },
}

/// The peer's handler: the mode and, in broadcast mode, each group's members.
#[derive(Debug)]
pub struct Peer {
    mode: Mode,
    groups: HashMap<u64, Vec<ConnId>>,
    limits: HandshakeLimits,
}

impl Peer {
    /// A peer in `mode`, with no connections yet.
    pub fn new(mode: Mode) -> Peer {
        Peer {
            mode,
            groups: HashMap::new(),
            limits: HandshakeLimits::default(),
        }
    }

    /// Parses the upgrade from `head`; on success answers it and returns the group and the
    /// length of the request head (bytes after it are the first frames).
    fn upgrade(&self, conn: ConnId, head: &[u8], out: &mut Outbox) -> Upgrade {
        match handshake::parse_request(head, &self.limits) {
            Ok(None) => Upgrade::Incomplete,
            Ok(Some((request, head_len))) => {
                let group = group_of(request.query());
                out.send(
                    conn,
                    Bytes::from(handshake::switching_protocols(request.key, None)),
                );
                Upgrade::Done { group, head_len }
            }
            Err(err) => {
                out.send(conn, Bytes::from(err.refusal()));
                out.close(conn);
                Upgrade::Refused
            }
        }
    }

    /// Decodes every whole message at the front of `buf` and acts on it. Returns the bytes
    /// consumed, or `None` once the connection is closing.
    fn messages(
        &self,
        conn: ConnId,
        decoder: &mut Decoder,
        group: u64,
        buf: &mut [u8],
        out: &mut Outbox,
    ) -> Option<usize> {
        let mut pos = 0;
        loop {
            let Decoded { message, consumed } = match decoder.decode(&mut buf[pos..]) {
                Ok(decoded) => decoded,
                Err(err) => {
                    out.send(
                        conn,
                        Bytes::from(wsproto::close_frame(err.close_code(), "")),
                    );
                    out.close(conn);
                    return None;
                }
            };
            let Some(message) = message else {
                return Some(pos + consumed);
            };
            match message {
                Message::Binary(payload) => self.deliver(conn, group, OpCode::Binary, payload, out),
                Message::Text(text) => {
                    self.deliver(conn, group, OpCode::Text, text.as_bytes(), out);
                }
                Message::Ping(payload) => out.send(conn, Bytes::from(wsproto::pong_frame(payload))),
                Message::Pong(_) => {}
                Message::Close { code, .. } => {
                    // Echo the code, as RFC 6455 section 5.5.1 suggests; an empty close
                    // is answered with an empty one.
                    let reply = match code {
                        Some(code) => wsproto::close_frame(code, ""),
                        None => vec![0x88, 0x00],
                    };
                    out.send(conn, Bytes::from(reply));
                    out.close(conn);
                    return None;
                }
            }
            pos += consumed;
        }
    }

    /// Sends one data message to its sender (echo) or its group (broadcast), built once as
    /// header and payload in one shared buffer.
    fn deliver(&self, from: ConnId, group: u64, opcode: OpCode, payload: &[u8], out: &mut Outbox) {
        let header = wsproto::server_header(opcode, true, payload.len());
        let mut frame = Vec::with_capacity(header.as_bytes().len() + payload.len());
        frame.extend_from_slice(header.as_bytes());
        frame.extend_from_slice(payload);
        let frame = Bytes::from(frame);
        match self.mode {
            Mode::Echo => out.send(from, frame),
            Mode::Broadcast => {
                for &member in self.groups.get(&group).into_iter().flatten() {
                    out.send(member, frame.clone());
                }
            }
        }
    }
}

enum Upgrade {
    Incomplete,
    Done { group: u64, head_len: usize },
    Refused,
}

impl Handler for Peer {
    type Session = Session;

    fn on_open(&mut self, _: ConnId, _: SocketAddr, _: &mut Outbox) -> Session {
        Session::Upgrading { head: Vec::new() }
    }

    fn on_data(&mut self, conn: ConnId, session: &mut Session, data: &mut [u8], out: &mut Outbox) {
        let mut frames_from = 0;
        if let Session::Upgrading { head } = session {
            // Parsed in place when the request came in one read, the usual case.
            let (result, buffered) = if head.is_empty() {
                (self.upgrade(conn, data, out), false)
            } else {
                head.extend_from_slice(data);
                (self.upgrade(conn, head, out), true)
            };
            match result {
                Upgrade::Incomplete => {
                    if !buffered {
                        head.extend_from_slice(data);
                    }
                    // parse_request refuses a head past the limit, so `head` stays bounded.
                    return;
                }
                Upgrade::Refused => return,
                Upgrade::Done { group, head_len } => {
                    // Bytes after the head are frames. A buffered head holds the earlier
                    // reads, then `data`; those earlier reads were an incomplete head.
                    let earlier = if buffered { head.len() - data.len() } else { 0 };
                    frames_from = head_len - earlier;
                    if self.mode == Mode::Broadcast {
                        self.groups.entry(group).or_default().push(conn);
                    }
                    *session = Session::Open {
                        decoder: Decoder::new(Role::Server, MAX_MESSAGE_BYTES),
                        partial: Vec::new(),
                        group,
                    };
                }
            }
        }
        let Session::Open {
            decoder,
            partial,
            group,
        } = session
        else {
            return;
        };
        let data = &mut data[frames_from..];
        if partial.is_empty() {
            let Some(consumed) = self.messages(conn, decoder, *group, data, out) else {
                return;
            };
            partial.extend_from_slice(&data[consumed..]);
        } else {
            partial.extend_from_slice(data);
            let Some(consumed) = self.messages(conn, decoder, *group, partial, out) else {
                return;
            };
            partial.drain(..consumed);
            if partial.is_empty() {
                // A large frame's copy should not stay with the connection.
                *partial = Vec::new();
            }
        }
        if partial.len() > MAX_MESSAGE_BYTES + MAX_HEADER_LEN {
            out.send(
                conn,
                Bytes::from(wsproto::close_frame(
                    wsproto::close_code::MESSAGE_TOO_BIG,
                    "",
                )),
            );
            out.close(conn);
        }
    }

    fn on_close(&mut self, conn: ConnId, session: &mut Session) {
        if let Session::Open { group, .. } = session
            && let Some(members) = self.groups.get_mut(group)
        {
            members.retain(|&member| member != conn);
            if members.is_empty() {
                self.groups.remove(group);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wsproto::encode_frame;

    const UPGRADE: &[u8] = b"GET /ws?group=7 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

    const PEER: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 40000);

    fn client_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut frame = Vec::new();
        encode_frame(Role::Client, opcode, true, payload, &mut frame);
        frame
    }

    /// Feeds `chunks` to a new connection `conn` and returns what it sent and closed.
    fn feed(peer: &mut Peer, conn: u32, chunks: &[&[u8]]) -> (Vec<(ConnId, Bytes)>, Vec<ConnId>) {
        let conn = ConnId::from_index(conn);
        let mut out = Outbox::default();
        let mut session = peer.on_open(conn, PEER, &mut out);
        for chunk in chunks {
            peer.on_data(conn, &mut session, &mut chunk.to_vec(), &mut out);
        }
        (out.sends().to_vec(), out.closes().to_vec())
    }

    #[test]
    fn upgrade_then_echo_in_one_read() {
        let mut peer = Peer::new(Mode::Echo);
        let mut read = UPGRADE.to_vec();
        read.extend(client_frame(OpCode::Binary, b"hello"));
        let (sends, closes) = feed(&mut peer, 0, &[&read]);
        assert!(sends[0].1.starts_with(b"HTTP/1.1 101"));
        assert!(
            sends[0]
                .1
                .windows(28)
                .any(|w| w == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
        assert_eq!(&sends[1].1[..], wsproto::binary_frame(b"hello"));
        assert!(closes.is_empty());
    }

    #[test]
    fn a_request_and_a_frame_split_anywhere_come_out_the_same() {
        let mut stream = UPGRADE.to_vec();
        stream.extend(client_frame(OpCode::Text, b"hi there"));
        stream.extend(client_frame(OpCode::Ping, b"p"));
        for cut_a in 1..stream.len() {
            let cut_b = (cut_a + 7).min(stream.len());
            let mut peer = Peer::new(Mode::Echo);
            let (sends, closes) = feed(
                &mut peer,
                0,
                &[&stream[..cut_a], &stream[cut_a..cut_b], &stream[cut_b..]],
            );
            let frames: Vec<&[u8]> = sends.iter().skip(1).map(|(_, f)| &f[..]).collect();
            assert_eq!(
                frames,
                [
                    &wsproto::text_frame("hi there")[..],
                    &wsproto::pong_frame(b"p")[..]
                ],
                "cut at {cut_a}"
            );
            assert!(closes.is_empty());
        }
    }

    #[test]
    fn a_close_is_answered_and_closes() {
        let mut peer = Peer::new(Mode::Echo);
        let mut close = 1001u16.to_be_bytes().to_vec();
        close.extend(b"bye");
        let (sends, closes) = feed(
            &mut peer,
            3,
            &[UPGRADE, &client_frame(OpCode::Close, &close)],
        );
        assert_eq!(&sends[1].1[..], wsproto::close_frame(1001, ""));
        assert_eq!(closes, [ConnId::from_index(3)]);
    }

    #[test]
    fn a_bad_request_is_refused_and_closed() {
        let mut peer = Peer::new(Mode::Echo);
        let (sends, closes) = feed(&mut peer, 0, &[b"POST / HTTP/1.1\r\nHost: x\r\n\r\n"]);
        assert!(sends[0].1.starts_with(b"HTTP/1.1 405"));
        assert_eq!(closes, [ConnId::from_index(0)]);
    }

    #[test]
    fn an_unmasked_client_frame_is_a_protocol_error() {
        let mut peer = Peer::new(Mode::Echo);
        let (sends, closes) = feed(&mut peer, 0, &[UPGRADE, &wsproto::binary_frame(b"x")]);
        assert_eq!(
            &sends[1].1[..],
            wsproto::close_frame(wsproto::close_code::PROTOCOL_ERROR, "")
        );
        assert_eq!(closes.len(), 1);
    }

    #[test]
    fn broadcast_reaches_the_group_and_leaves_with_the_member() {
        let mut peer = Peer::new(Mode::Broadcast);
        let other_group = b"GET /ws?group=8 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
            Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
            Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        let mut sessions = Vec::new();
        let mut out = Outbox::default();
        for (index, request) in [UPGRADE, UPGRADE, other_group].into_iter().enumerate() {
            let conn = ConnId::from_index(index as u32);
            let mut session = peer.on_open(conn, PEER, &mut out);
            peer.on_data(conn, &mut session, &mut request.to_vec(), &mut out);
            sessions.push(session);
        }
        let mut out = Outbox::default();
        let mut message = client_frame(OpCode::Binary, b"m");
        peer.on_data(
            ConnId::from_index(0),
            &mut sessions[0],
            &mut message,
            &mut out,
        );
        let to: Vec<ConnId> = out.sends().iter().map(|(to, _)| *to).collect();
        assert_eq!(to, [ConnId::from_index(0), ConnId::from_index(1)]);
        peer.on_close(ConnId::from_index(1), &mut sessions[1]);
        let mut out = Outbox::default();
        let mut message = client_frame(OpCode::Binary, b"n");
        peer.on_data(
            ConnId::from_index(0),
            &mut sessions[0],
            &mut message,
            &mut out,
        );
        assert_eq!(out.sends().len(), 1);
    }

    #[test]
    fn an_open_session_is_small_and_holds_no_buffer() {
        let size = size_of::<Session>();
        assert!(size <= 72, "Session grew to {size} bytes");
        let mut peer = Peer::new(Mode::Echo);
        let conn = ConnId::from_index(0);
        let mut session = peer.on_open(conn, PEER, &mut Outbox::default());
        peer.on_data(
            conn,
            &mut session,
            &mut UPGRADE.to_vec(),
            &mut Outbox::default(),
        );
        let Session::Open { partial, .. } = &session else {
            panic!("not upgraded");
        };
        assert_eq!(partial.capacity(), 0);
    }
}
