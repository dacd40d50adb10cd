//! What the gateway does at the file-descriptor limit: refuse promptly, say so once per
//! interval, and report not-ready while it lasts.
//!
//! A core whose accept fails with EMFILE or ENFILE answers the clients waiting in its
//! listener's backlog with a 503 and `Retry-After` ([`refuse_waiting`], through the core's
//! [`DescriptorReserve`]), then stops accepting for [`ACCEPT_BACKOFF`]. The node-wide
//! [`DescriptorPressure`] counts those events, logs them at most once per [`LOG_INTERVAL`]
//! with the counts since the last line, and keeps /readyz at 503 until no core has hit the
//! limit, and the core monitor's probe has found a free descriptor, for [`AT_LIMIT_HOLD`].

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener as StdListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use telemetry::descriptors::DescriptorReserve;

/// How long a core stops accepting after it ran out of descriptors. Clients that arrive
/// meanwhile wait in the backlog at most this long before their 503.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// At most one log line per this interval, however often accepts fail.
pub const LOG_INTERVAL: Duration = Duration::from_secs(5);

/// How long after the last sign of exhaustion the node still reports not-ready: long
/// enough to span the core monitor's probes, so readiness does not flicker at the limit.
pub const AT_LIMIT_HOLD: Duration = Duration::from_secs(1);

/// Connections one exhaustion event refuses at most before the core backs off, so that a
/// flood of them cannot hold the core's thread.
pub const MAX_REFUSALS_PER_EVENT: usize = 256;

/// Bytes of a refused client's request read (and dropped) before the answer: closing a
/// socket with unread bytes resets it, and a reset can reach the client before the 503.
const DRAIN_BYTES: usize = 4096;

/// The node's view of descriptor exhaustion, shared by every core, the admin port and the
/// core monitor.
#[derive(Debug)]
pub struct DescriptorPressure {
    epoch: Instant,
    /// Milliseconds since `epoch` (plus one, so that 0 means never) of the last exhaustion.
    last_exhausted_ms: AtomicU64,
    /// Milliseconds since `epoch` (plus one) of the last log line.
    logged_ms: AtomicU64,
    /// Accepts that failed for lack of a descriptor, ever.
    accept_failures: AtomicU64,
    /// Clients answered 503 for lack of a descriptor, ever.
    refused: AtomicU64,
    /// The two counts as of the last log line, to log the difference.
    logged_failures: AtomicU64,
    logged_refused: AtomicU64,
}

impl DescriptorPressure {
    /// No exhaustion seen yet.
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last_exhausted_ms: AtomicU64::new(0),
            logged_ms: AtomicU64::new(0),
            accept_failures: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            logged_failures: AtomicU64::new(0),
            logged_refused: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// A core's accept failed for lack of a descriptor and it refused `refused` waiting
    /// clients; logs if the last line is older than [`LOG_INTERVAL`].
    pub fn accept_failed(&self, refused: usize) {
        self.accept_failures.fetch_add(1, Ordering::Relaxed);
        self.refused.fetch_add(refused as u64, Ordering::Relaxed);
        let now = self.now_ms();
        self.last_exhausted_ms.store(now, Ordering::Release);
        let logged = self.logged_ms.load(Ordering::Acquire);
        let due = logged == 0 || now - logged >= LOG_INTERVAL.as_millis() as u64;
        // One core wins the line; the others' events are in the next one's counts.
        if due
            && self
                .logged_ms
                .compare_exchange(logged, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            let failures = self.accept_failures.load(Ordering::Relaxed);
            let refused = self.refused.load(Ordering::Relaxed);
            let new_failures = failures - self.logged_failures.swap(failures, Ordering::Relaxed);
            let new_refused = refused - self.logged_refused.swap(refused, Ordering::Relaxed);
            tracing::warn!(
                accept_failures = new_failures,
                refused = new_refused,
                descriptor_limit = ?telemetry::descriptors::limit(),
                "out of file descriptors: answering new clients 503 until some close"
            );
        }
    }

    /// The core monitor's probe found no free descriptor.
    pub fn probe_failed(&self) {
        self.last_exhausted_ms
            .store(self.now_ms(), Ordering::Release);
    }

    /// Whether the node ran out of descriptors within the last [`AT_LIMIT_HOLD`].
    pub fn at_limit(&self) -> bool {
        let last = self.last_exhausted_ms.load(Ordering::Acquire);
        last != 0 && self.now_ms() - last < AT_LIMIT_HOLD.as_millis() as u64
    }

    /// Accepts that failed for lack of a descriptor, ever.
    pub fn accept_failures(&self) -> u64 {
        self.accept_failures.load(Ordering::Relaxed)
    }
}

impl Default for DescriptorPressure {
    fn default() -> Self {
        Self::new()
    }
}

/// Answers up to `max` clients waiting in `listener`'s backlog with `response` and closes
/// them, using the descriptor `reserve` frees; returns how many. `listener` must be
/// non-blocking (a duplicate of the core's listener: it shares the backlog). `None` when
/// the reserve was gone and no descriptor could be had for it.
pub fn refuse_waiting(
    reserve: &mut DescriptorReserve,
    listener: &StdListener,
    response: &[u8],
    max: usize,
) -> Option<usize> {
    reserve.with_released(|| {
        let mut refused = 0;
        while refused < max {
            // Each client is closed before the next accept, so the one freed descriptor
            // serves them all in turn.
            let Ok((mut stream, _)) = listener.accept() else {
                break;
            };
            if stream.set_nonblocking(true).is_ok() {
                let mut request = [0u8; DRAIN_BYTES];
                let _ = stream.read(&mut request);
                let _ = stream.write_all(response);
                let _ = stream.shutdown(Shutdown::Write);
            }
            refused += 1;
        }
        refused
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_reports_the_limit_only_after_an_exhaustion() {
        let pressure = DescriptorPressure::new();
        assert!(!pressure.at_limit());
        pressure.accept_failed(3);
        assert!(pressure.at_limit());
        assert_eq!(pressure.accept_failures(), 1);
        let probed = DescriptorPressure::new();
        probed.probe_failed();
        assert!(probed.at_limit());
        assert_eq!(probed.accept_failures(), 0);
    }

    #[test]
    fn waiting_clients_get_the_response_and_the_reserve_returns() {
        let listener = StdListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("non-blocking");
        let addr = listener.local_addr().expect("address");
        let mut clients: Vec<_> = (0..3)
            .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
            .collect();
        let mut reserve = DescriptorReserve::new();
        let refused = refuse_waiting(&mut reserve, &listener, b"HTTP/1.1 503 x\r\n\r\n", 2);
        assert_eq!(refused, Some(2));
        assert!(reserve.is_held());
        for client in &mut clients[..2] {
            let mut answer = String::new();
            client.read_to_string(&mut answer).expect("read");
            assert_eq!(answer, "HTTP/1.1 503 x\r\n\r\n");
        }
        assert_eq!(
            refuse_waiting(&mut reserve, &listener, b"", 10),
            Some(1),
            "the third was left for the next event"
        );
    }
}
