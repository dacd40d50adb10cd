//! wss:// on the completion loop: rustls driven by hand. Ciphertext the loop received goes
//! in and plaintext comes out for the session; the session's frames go in and ciphertext
//! comes out for the loop to write. No I/O here, and no buffer kept between calls beyond
//! rustls's own.

use std::io::{self, Read, Write};
use std::sync::Arc;

use bytes::Bytes;
use rustls::{ServerConfig, ServerConnection};

/// What one batch of received ciphertext brought.
#[derive(Debug, Default)]
pub struct Received {
    /// The peer sent its close_notify: nothing more will come.
    pub peer_closed: bool,
}

/// One connection's TLS state.
pub struct TlsSession {
    connection: ServerConnection,
}

impl TlsSession {
    /// A server side of a new connection, presenting what `config` resolves.
    pub fn new(config: Arc<ServerConfig>) -> Result<TlsSession, rustls::Error> {
        Ok(TlsSession {
            connection: ServerConnection::new(config)?,
        })
    }

    /// Decrypts `ciphertext`, appending its plaintext to `plaintext`. An error (a bad
    /// record, a failed handshake) ends the connection; what [`TlsSession::ciphertext`]
    /// returns after it is the alert to send first.
    pub fn receive(
        &mut self,
        mut ciphertext: &[u8],
        plaintext: &mut Vec<u8>,
    ) -> Result<Received, rustls::Error> {
        let mut received = Received::default();
        while !ciphertext.is_empty() {
            let taken = self
                .connection
                .read_tls(&mut ciphertext)
                .map_err(|error| rustls::Error::General(error.to_string()))?;
            let state = self.connection.process_new_packets()?;
            let ready = state.plaintext_bytes_to_read();
            if ready > 0 {
                let start = plaintext.len();
                plaintext.resize(start + ready, 0);
                self.connection
                    .reader()
                    .read_exact(&mut plaintext[start..])
                    .map_err(|error| rustls::Error::General(error.to_string()))?;
            }
            received.peer_closed |= state.peer_has_closed();
            if taken == 0 {
                break;
            }
        }
        Ok(received)
    }

    /// Encrypts `plaintext` (held by rustls until the handshake is done).
    pub fn seal(&mut self, plaintext: &[u8]) -> io::Result<()> {
        self.connection.writer().write_all(plaintext)
    }

    /// Queues the close_notify alert.
    pub fn close_notify(&mut self) {
        self.connection.send_close_notify();
    }

    /// The ciphertext waiting to be written (handshake records, sealed frames, alerts), in
    /// one buffer; `None` when there is none.
    pub fn ciphertext(&mut self) -> Option<Bytes> {
        if !self.connection.wants_write() {
            return None;
        }
        let mut out = Vec::new();
        while self.connection.wants_write() {
            if self.connection.write_tls(&mut out).is_err() {
                break;
            }
        }
        Some(Bytes::from(out))
    }
}
