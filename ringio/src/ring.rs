//! The one module with `unsafe`: the io_uring instance and every piece of memory the kernel
//! reads or writes while an operation is in flight.
//!
//! - The provided-buffer ring: a page-aligned array of buffer descriptors shared with the
//!   kernel, and the buffers themselves. A multishot receive picks a free buffer only when
//!   data arrives, so an idle connection holds none. A buffer the kernel filled is handed out
//!   as a [`Buffer`] token that only this module can make, and goes back to the kernel when
//!   the token is given back ([`Ring::recycle`]), or waits idle when the kernel holds as
//!   many as it needs ([`crate::posting`]); idle buffers' pages go back to the operating
//!   system ([`Ring::fit_buffers`]).
//! - Vectored writes: the frames and the vector array of each write in flight live here, in
//!   a slab keyed by the operation's id, until the kernel reports the write complete; a
//!   short write is resubmitted from where it stopped.
//! - The accept back-off's timespec, and the counter an eventfd read fills.
//!
//! Every operation that may touch that memory is counted while in flight, and dropping the
//! ring cancels them all and waits for their last completions before freeing anything.

use std::alloc::{self, Layout};
use std::collections::VecDeque;
use std::io;
use std::num::NonZeroU32;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use bytes::Bytes;
use io_uring::types::{CancelBuilder, Fd, SubmitArgs, Timespec};
use io_uring::{IoUring, Probe, cqueue, opcode, squeue};
use slab::Slab;

use crate::Error;
use crate::batch::Batch;
use crate::posting::Posting;

/// The buffer group id of the one provided-buffer ring.
const BUFFER_GROUP: u16 = 0;
/// Batches kept for reuse after their write completes, so a steady stream of writes does not
/// allocate; beyond this many, finished batches are freed.
const SPARE_BATCHES: usize = 256;

/// The operation an SQE or CQE belongs to: the top byte of its user data. The low 32 bits
/// hold a listener index (accepts), a connection index (receives), a write's slab key
/// (writes) or nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    Accept = 1,
    Recv = 2,
    Write = 3,
    Backoff = 4,
    /// A cancellation request; its own completion carries nothing of interest.
    Cancel = 5,
    /// A read of the loop's eventfd: another thread woke the loop.
    Notify = 6,
}

impl Kind {
    fn user_data(self, index: u32) -> u64 {
        (u64::from(self as u8) << 56) | u64::from(index)
    }

    fn of(user_data: u64) -> Option<(Kind, u32)> {
        let kind = match user_data >> 56 {
            1 => Kind::Accept,
            2 => Kind::Recv,
            3 => Kind::Write,
            4 => Kind::Backoff,
            5 => Kind::Cancel,
            6 => Kind::Notify,
            _ => return None,
        };
        // Truncation intended: the low 32 bits are the index.
        Some((kind, user_data as u32))
    }
}

/// A filled buffer from the provided-buffer ring, lent to the loop until it is recycled.
/// Neither `Clone` nor constructible outside this module: holding one proves the kernel has
/// finished writing that buffer and will not pick it again until it is recycled.
#[derive(Debug)]
pub struct Buffer {
    id: u16,
    len: usize,
}

/// A write in flight, as [`Ring::write`] names it: its slab key plus one, so that an
/// `Option<WriteId>` in every connection costs four bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteId(NonZeroU32);

impl WriteId {
    fn key(self) -> u32 {
        self.0.get() - 1
    }
}

/// What one completion means to the loop.
#[derive(Debug)]
pub enum Event {
    /// Listener `listener`'s multishot accept produced a connection or failed; `more` says
    /// it stays armed.
    Accepted {
        listener: u32,
        result: io::Result<OwnedFd>,
        more: bool,
    },
    /// A receive on connection `conn`: data in a buffer, the peer's end of stream
    /// (`Ok(None)`), or an error (`ENOBUFS` when the buffer ring ran dry, `ECANCELED` after
    /// a cancellation). `more` says the multishot receive stays armed.
    Received {
        conn: u32,
        result: io::Result<Option<Buffer>>,
        more: bool,
    },
    /// Every byte of connection `conn`'s write went out, or the write failed.
    Wrote { conn: u32, result: io::Result<()> },
    /// The accept back-off elapsed.
    BackoffOver,
    /// The eventfd read completed: another thread woke the loop (the read drained the
    /// counter), or the read failed.
    Notified(io::Result<()>),
}

/// A write in flight: its frames and the vector array the kernel reads.
#[derive(Debug, Default)]
struct Write {
    conn: u32,
    frames: Batch,
    iovecs: Vec<libc::iovec>,
    /// The `sendmsg` header naming `iovecs`, boxed so that it stays put while the slab of
    /// writes grows between the submission's queueing and the kernel reading it.
    header: Box<MessageHeader>,
}

/// A `struct msghdr` that names only a vector array (no address, no control data).
#[derive(Debug)]
struct MessageHeader(libc::msghdr);

impl Default for MessageHeader {
    fn default() -> MessageHeader {
        // SAFETY: an all-zero msghdr is valid: null pointers with zero lengths.
        MessageHeader(unsafe { std::mem::zeroed() })
    }
}

impl Write {
    /// Points the vector array at the batch's unwritten bytes, and the header at the array.
    fn refresh_iovecs(&mut self) {
        self.iovecs.clear();
        self.iovecs
            .extend(self.frames.unwritten().map(|slice| libc::iovec {
                iov_base: slice.as_ptr().cast_mut().cast(),
                iov_len: slice.len(),
            }));
        self.header.0.msg_iov = self.iovecs.as_mut_ptr();
        self.header.0.msg_iovlen = self.iovecs.len();
    }
}

/// One kernel buffer descriptor, `struct io_uring_buf` of the kernel's ABI. In the first
/// descriptor, `tail` is the ring's tail, written by user space; in the others it is unused.
#[repr(C)]
struct BufDescriptor {
    addr: u64,
    len: u32,
    bid: u16,
    tail: u16,
}

const _: () = assert!(size_of::<BufDescriptor>() == 16);

/// The size of a page, the unit in which idle buffers' memory goes back.
const PAGE: usize = 4096;

/// The provided-buffer ring's memory: descriptors and buffers, both allocated here and freed
/// only after the kernel has let go of them.
struct BufferRing {
    descriptors: NonNull<BufDescriptor>,
    descriptors_layout: Layout,
    /// A private anonymous mapping, so that advising its pages away frees them and they
    /// read as zeros when next touched.
    buffers: NonNull<u8>,
    buffers_len: usize,
    count: u16,
    buffer_size: u32,
    /// The tail as last published to the kernel.
    tail: u16,
    /// Which buffers the kernel holds and which wait idle.
    posting: Posting,
    /// Set when the kernel may still use the memory: it is then never freed.
    leaked: bool,
}

impl BufferRing {
    fn new(count: u16, buffer_size: u32) -> Result<BufferRing, Error> {
        if !count.is_power_of_two() || buffer_size == 0 {
            return Err(Error::Config(
                "the buffer count must be a power of two and buffers must not be empty",
            ));
        }
        let descriptors_layout = Layout::array::<BufDescriptor>(usize::from(count))
            .and_then(|layout| layout.align_to(PAGE))
            .map_err(|_| Error::Config("buffer ring too large"))?;
        let buffers_len = usize::from(count) * buffer_size as usize;
        // SAFETY: the layout has a non-zero size (count is non-zero). Zeroed descriptors
        // start with tail 0, which the kernel requires at registration.
        let descriptors = unsafe { alloc::alloc_zeroed(descriptors_layout) };
        let descriptors = NonNull::new(descriptors.cast::<BufDescriptor>())
            .unwrap_or_else(|| alloc::handle_alloc_error(descriptors_layout));
        // SAFETY: a new private anonymous mapping of a non-zero length, at an address the
        // kernel picks; nothing else refers to it.
        let buffers = unsafe {
            libc::mmap(
                ptr::null_mut(),
                buffers_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if buffers == libc::MAP_FAILED {
            let error = io::Error::last_os_error();
            // SAFETY: allocated just above with this layout, and not shared with anyone.
            unsafe { alloc::dealloc(descriptors.as_ptr().cast(), descriptors_layout) };
            return Err(Error::Io(error));
        }
        let buffers = NonNull::new(buffers.cast::<u8>()).expect("mmap never maps page zero");
        Ok(BufferRing {
            descriptors,
            descriptors_layout,
            buffers,
            buffers_len,
            count,
            buffer_size,
            tail: 0,
            posting: Posting::new(count),
            leaked: false,
        })
    }

    /// Provides idle buffers while the kernel holds fewer than the target.
    fn top_up(&mut self) {
        while let Some(id) = self.posting.next_to_provide() {
            self.provide(id);
        }
    }

    /// Buffer `id` is back from its reader or was never filled: to the kernel, or idle.
    fn give_back(&mut self, id: u16) {
        if self.posting.returned(id) {
            self.provide(id);
        }
    }

    /// Gives the pages that only idle buffers cover back to the operating system.
    fn release_idle_pages(&mut self) {
        let size = self.buffer_size as usize;
        let base = self.buffers.as_ptr() as usize;
        for run in self.posting.idle_runs() {
            let start = (base + usize::from(run.start) * size).next_multiple_of(PAGE);
            let end = (base + usize::from(run.end) * size) / PAGE * PAGE;
            if start < end {
                // SAFETY: the range is whole pages inside the mapping (base is page-aligned
                // and the run's bytes lie inside it), and every buffer they overlap is idle:
                // neither provided to the kernel nor lent as a `Buffer`, so nothing reads or
                // writes them until they are provided again, after which the kernel's
                // writes fault in fresh zeroed pages. Advice is only a hint, so its failure
                // costs memory, not correctness.
                unsafe {
                    libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
                }
            }
        }
    }

    fn buffer_ptr(&self, id: u16) -> *mut u8 {
        debug_assert!(id < self.count);
        // SAFETY: id < count, so the offset stays inside the buffers' allocation.
        unsafe {
            self.buffers
                .as_ptr()
                .add(usize::from(id) * self.buffer_size as usize)
        }
    }

    /// Hands buffer `id` to the kernel: writes a descriptor at the tail and publishes it.
    fn provide(&mut self, id: u16) {
        let slot = usize::from(self.tail & (self.count - 1));
        let descriptor = BufDescriptor {
            addr: self.buffer_ptr(id) as u64,
            len: self.buffer_size,
            bid: id,
            tail: 0,
        };
        // SAFETY: slot < count, inside the descriptor array. The slot is between the
        // kernel's head and our tail only after the tail store below, so the kernel is not
        // reading it now. Only addr, len and bid are written: in the first descriptor the
        // fourth field is the tail the kernel reads, and it must not be overwritten here.
        unsafe {
            let entry = self.descriptors.as_ptr().add(slot);
            ptr::addr_of_mut!((*entry).addr).write(descriptor.addr);
            ptr::addr_of_mut!((*entry).len).write(descriptor.len);
            ptr::addr_of_mut!((*entry).bid).write(descriptor.bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail field of the first descriptor is a properly aligned u16 inside
        // our allocation, shared with the kernel, which only reads it; the release store
        // orders the descriptor writes above before the kernel can see the new tail.
        unsafe {
            let tail = ptr::addr_of_mut!((*self.descriptors.as_ptr()).tail);
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufferRing {
    fn drop(&mut self) {
        if self.leaked {
            return;
        }
        // SAFETY: allocated and mapped in `new` with these sizes; `Ring::drop` has
        // unregistered the ring and waited out every receive before this runs, or set
        // `leaked`.
        unsafe {
            alloc::dealloc(self.descriptors.as_ptr().cast(), self.descriptors_layout);
            libc::munmap(self.buffers.as_ptr().cast(), self.buffers_len);
        }
    }
}

/// A new eventfd with its counter at zero, for another thread to wake the loop through
/// [`Ring::arm_notify`]. Blocking on purpose: io_uring fails a read of a non-blocking
/// descriptor with `EAGAIN` instead of waiting for it to become readable.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a non-negative result is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sizes of a [`Ring`].
#[derive(Debug, Clone, Copy)]
pub struct RingConfig {
    pub entries: u32,
    pub buffers: u16,
    pub buffer_size: u32,
}

/// The io_uring instance of one core's loop and the memory its operations use.
pub struct Ring {
    // Declared first: if `drop` must give up waiting, the fields below are leaked instead.
    uring: IoUring,
    buffers: BufferRing,
    writes: Slab<Write>,
    spare: Vec<Write>,
    /// Boxed so its address stays put while a back-off timeout is in flight.
    backoff: Box<Timespec>,
    /// Where the eventfd read puts the counter; boxed so its address stays put while the
    /// read is in flight. Nothing reads it: the completion is the news.
    notified: Box<u64>,
    /// Operations that may still touch memory owned here (accept and receive count until
    /// their multishot ends).
    in_flight: usize,
    /// Completions copied out of the queue, kept for its capacity.
    completions: Vec<(u64, i32, u32)>,
    /// Writes the kernel completed short and that were resubmitted for the rest.
    short_writes: u64,
}

/// Whether this kernel release (as in `uname -r`) has what the loop needs: multishot
/// receive with buffer selection arrived in 6.0, provided-buffer rings and multishot accept
/// in 5.19. The opcode probe cannot tell, since multishot is a flag on existing opcodes.
fn kernel_supports_multishot_recv(release: &str) -> bool {
    let major = release
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|major| major.parse::<u32>().ok())
        .unwrap_or(0);
    major >= 6
}

impl Ring {
    /// Builds the ring, checks the kernel supports every operation the loop uses, and
    /// registers the provided-buffer ring. [`Error::Unsupported`] means: use the epoll path.
    pub fn new(config: RingConfig) -> Result<Ring, Error> {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        if !kernel_supports_multishot_recv(release.trim()) {
            return Err(Error::Unsupported(format!(
                "kernel {} has no multishot receive (6.0 or later is needed)",
                release.trim()
            )));
        }
        let uring = IoUring::builder()
            // One thread submits and reaps; completions are run when it enters the kernel.
            .setup_single_issuer()
            .setup_coop_taskrun()
            .build(config.entries)
            .map_err(|err| Error::Unsupported(format!("io_uring_setup: {err}")))?;
        let mut probe = Probe::new();
        uring
            .submitter()
            .register_probe(&mut probe)
            .map_err(|err| Error::Unsupported(format!("io_uring probe: {err}")))?;
        for (code, name) in [
            (opcode::AcceptMulti::CODE, "accept"),
            (opcode::RecvMulti::CODE, "recv"),
            (opcode::Send::CODE, "send"),
            (opcode::SendMsg::CODE, "sendmsg"),
            (opcode::Read::CODE, "read"),
            (opcode::AsyncCancel::CODE, "async cancel"),
            (opcode::Timeout::CODE, "timeout"),
        ] {
            if !probe.is_supported(code) {
                return Err(Error::Unsupported(format!("io_uring has no {name} opcode")));
            }
        }
        let mut buffers = BufferRing::new(config.buffers, config.buffer_size)?;
        // SAFETY: the descriptor array is page-aligned, holds `count` descriptors and lives
        // in `buffers`, which `Ring` owns and frees only after unregistering it (see Drop).
        unsafe {
            uring.submitter().register_buf_ring_with_flags(
                buffers.descriptors.as_ptr() as u64,
                buffers.count,
                BUFFER_GROUP,
                0,
            )
        }
        .map_err(|err| Error::Unsupported(format!("registering a provided-buffer ring: {err}")))?;
        buffers.top_up();
        Ok(Ring {
            uring,
            buffers,
            writes: Slab::new(),
            spare: Vec::new(),
            backoff: Box::new(Timespec::new()),
            notified: Box::new(0),
            in_flight: 0,
            completions: Vec::new(),
            short_writes: 0,
        })
    }

    /// Queues `entry`, first submitting what is queued if the submission queue is full.
    ///
    /// # Safety
    ///
    /// Whatever `entry` points at must stay valid until its last completion.
    unsafe fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: the caller's guarantee, passed on.
            if unsafe { self.uring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            self.uring.submit()?;
        }
    }

    /// Arms an accept, multishot or single, on the socket of listener `listener` (an index
    /// of the loop's, carried back in its completions).
    pub fn arm_accept(&mut self, listener: u32, fd: RawFd, multishot: bool) -> io::Result<()> {
        let entry = if multishot {
            opcode::AcceptMulti::new(Fd(fd))
                .flags(libc::SOCK_CLOEXEC)
                .build()
        } else {
            opcode::Accept::new(Fd(fd), ptr::null_mut(), ptr::null_mut())
                .flags(libc::SOCK_CLOEXEC)
                .build()
        }
        .user_data(Kind::Accept.user_data(listener));
        // SAFETY: the entry points at no memory.
        unsafe { self.push(&entry) }?;
        self.in_flight += 1;
        Ok(())
    }

    /// Arms a multishot receive on connection `conn`'s socket, filling buffers from the ring.
    pub fn arm_recv(&mut self, conn: u32, fd: RawFd) -> io::Result<()> {
        let entry = opcode::RecvMulti::new(Fd(fd), BUFFER_GROUP)
            .build()
            .user_data(Kind::Recv.user_data(conn));
        // SAFETY: the kernel writes only into ring buffers, which live as long as the ring.
        unsafe { self.push(&entry) }?;
        self.in_flight += 1;
        Ok(())
    }

    /// Asks the kernel to end connection `conn`'s multishot receive; its last completion
    /// comes with `ECANCELED` (or sooner, if it was ending anyway).
    pub fn cancel_recv(&mut self, conn: u32) -> io::Result<()> {
        self.cancel(Kind::Recv.user_data(conn))
    }

    /// Asks the kernel to end a write in flight; its completion reports the outcome.
    pub fn cancel_write(&mut self, write: WriteId) -> io::Result<()> {
        self.cancel(Kind::Write.user_data(write.key()))
    }

    /// Asks the kernel to end listener `listener`'s multishot accept; its last completion
    /// comes with `ECANCELED`. Connections it completed before are still reported.
    pub fn cancel_accept(&mut self, listener: u32) -> io::Result<()> {
        self.cancel(Kind::Accept.user_data(listener))
    }

    /// Arms one read of the eventfd `fd` (see [`eventfd`]); [`Event::Notified`] arrives
    /// when another thread writes it. One read is armed at a time.
    pub fn arm_notify(&mut self, fd: RawFd) -> io::Result<()> {
        let counter = ptr::from_mut::<u64>(&mut self.notified).cast::<u8>();
        let entry = opcode::Read::new(Fd(fd), counter, 8)
            .build()
            .user_data(Kind::Notify.user_data(0));
        // SAFETY: the counter is boxed in `self`, which outlives the read (see Drop), and
        // nothing else touches it; one read is armed at a time, so two never share it.
        unsafe { self.push(&entry) }?;
        self.in_flight += 1;
        Ok(())
    }

    fn cancel(&mut self, target: u64) -> io::Result<()> {
        let entry = opcode::AsyncCancel::new(target)
            .build()
            .user_data(Kind::Cancel.user_data(0));
        // SAFETY: the entry points at no memory.
        unsafe { self.push(&entry) }
    }

    /// Arms a one-shot timeout after which [`Event::BackoffOver`] arrives.
    pub fn arm_backoff(&mut self, after: Duration) -> io::Result<()> {
        *self.backoff = Timespec::from(after);
        let entry = opcode::Timeout::new(&*self.backoff)
            .build()
            .user_data(Kind::Backoff.user_data(0));
        // SAFETY: the timespec is boxed in `self` and outlives the operation; the loop arms
        // one back-off at a time, so it is not overwritten while in flight.
        unsafe { self.push(&entry) }?;
        self.in_flight += 1;
        Ok(())
    }

    /// Starts one vectored write of up to a batch of frames from the front of `queue` to
    /// connection `conn`'s socket. The frames move here until the kernel has written them
    /// all; returns the write's id (for [`Ring::cancel_write`]).
    pub fn write(
        &mut self,
        conn: u32,
        fd: RawFd,
        queue: &mut VecDeque<Bytes>,
    ) -> io::Result<WriteId> {
        let mut write = self.spare.pop().unwrap_or_default();
        write.conn = conn;
        write.frames.take_from(queue);
        let key = self.writes.insert(write);
        let id = u32::try_from(key)
            .ok()
            .and_then(|key| key.checked_add(1))
            .and_then(NonZeroU32::new)
            .ok_or_else(|| io::Error::other("too many writes"))?;
        self.submit_write(id.get() - 1, fd)?;
        Ok(WriteId(id))
    }

    fn submit_write(&mut self, id: u32, fd: RawFd) -> io::Result<()> {
        let write = &mut self.writes[id as usize];
        write.refresh_iovecs();
        // A socket's own send, not a file write: `writev` through io_uring goes the file
        // path (kiocb set-up and a modify notification per write, 2-3% of the core's CPU
        // on echo), a send straight to the socket; one frame needs no header to copy. No
        // SIGPIPE: a peer gone is an error.
        let entry = match write.iovecs[..] {
            [one] => opcode::Send::new(
                Fd(fd),
                one.iov_base.cast_const().cast(),
                u32::try_from(one.iov_len).unwrap_or(u32::MAX),
            )
            .flags(libc::MSG_NOSIGNAL)
            .build(),
            _ => opcode::SendMsg::new(Fd(fd), &raw const write.header.0)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build(),
        }
        .user_data(Kind::Write.user_data(id));
        // SAFETY: the header (boxed), the vector array it names and the frames that array
        // points into are owned by the slab entry `id`, which is neither changed nor removed
        // until this write's completion.
        unsafe { self.push(&entry) }?;
        self.in_flight += 1;
        Ok(())
    }

    /// Submits what is queued and waits for at least one completion, or for `timeout`; a
    /// zero timeout submits without waiting.
    pub fn submit_and_wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let submitter = self.uring.submitter();
        let result = match timeout {
            Some(Duration::ZERO) => submitter.submit(),
            Some(timeout) => {
                let timespec = Timespec::from(timeout);
                submitter.submit_with_args(1, &SubmitArgs::new().timespec(&timespec))
            }
            None => submitter.submit_and_wait(1),
        };
        match result {
            Ok(_) => Ok(()),
            Err(err)
                if matches!(
                    err.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    /// Takes every completion that has arrived and appends what it means to `events`.
    /// Short writes are resubmitted here and report nothing until they finish; `fd_of`
    /// gives a connection's socket for that.
    pub fn reap(&mut self, events: &mut Vec<Event>, fd_of: impl Fn(u32) -> Option<RawFd>) {
        let mut completions = std::mem::take(&mut self.completions);
        completions.extend(
            self.uring
                .completion()
                .map(|cqe| (cqe.user_data(), cqe.result(), cqe.flags())),
        );
        for (user_data, result, flags) in completions.drain(..) {
            let Some((kind, index)) = Kind::of(user_data) else {
                continue;
            };
            let more = cqueue::more(flags);
            if kind != Kind::Cancel && !more {
                self.in_flight -= 1;
            }
            let error = (result < 0).then(|| io::Error::from_raw_os_error(-result));
            match kind {
                Kind::Accept => events.push(Event::Accepted {
                    listener: index,
                    result: match error {
                        Some(error) => Err(error),
                        // SAFETY: a successful accept returns a new descriptor that nothing
                        // else in this process owns.
                        None => Ok(unsafe { OwnedFd::from_raw_fd(result) }),
                    },
                    more,
                }),
                Kind::Recv => {
                    if error.as_ref().and_then(io::Error::raw_os_error) == Some(libc::ENOBUFS) {
                        self.buffers.posting.ran_dry();
                    }
                    let result = match (error, cqueue::buffer_select(flags)) {
                        (Some(error), _) => Err(error),
                        (None, Some(id)) => {
                            self.buffers.posting.taken();
                            if result > 0 {
                                Ok(Some(Buffer {
                                    id,
                                    len: result as usize,
                                }))
                            } else {
                                // End of stream can still consume a buffer: give it back.
                                self.buffers.give_back(id);
                                Ok(None)
                            }
                        }
                        (None, None) => Ok(None),
                    };
                    events.push(Event::Received {
                        conn: index,
                        result,
                        more,
                    });
                }
                Kind::Write => self.write_completed(index, error, result, events, &fd_of),
                Kind::Backoff => events.push(Event::BackoffOver),
                Kind::Notify => events.push(Event::Notified(error.map_or(Ok(()), Err))),
                Kind::Cancel => {}
            }
        }
        self.completions = completions;
        self.buffers.posting.reaped();
        self.buffers.top_up();
    }

    fn write_completed(
        &mut self,
        id: u32,
        error: Option<io::Error>,
        written: i32,
        events: &mut Vec<Event>,
        fd_of: &impl Fn(u32) -> Option<RawFd>,
    ) {
        let write = &mut self.writes[id as usize];
        let conn = write.conn;
        let result = match error {
            Some(error) => Err(error),
            None if write.frames.advance(written as usize) => match fd_of(conn) {
                Some(fd) => match self.submit_write(id, fd) {
                    Ok(()) => {
                        self.short_writes += 1;
                        return;
                    }
                    Err(err) => Err(err),
                },
                None => Err(io::Error::from_raw_os_error(libc::EBADF)),
            },
            None => Ok(()),
        };
        let mut write = self.writes.remove(id as usize);
        write.frames.clear();
        write.iovecs.clear();
        if self.spare.len() < SPARE_BATCHES {
            self.spare.push(write);
        }
        events.push(Event::Wrote { conn, result });
    }

    /// The bytes the kernel put in `buffer`, to read and change in place.
    pub fn bytes(&mut self, buffer: &Buffer) -> &mut [u8] {
        // SAFETY: a `Buffer` exists only for a buffer the kernel filled with `len` bytes and
        // took out of the ring; it is not provided again until the token is recycled, so
        // nothing else reads or writes these bytes while the returned borrow lives.
        unsafe { std::slice::from_raw_parts_mut(self.buffers.buffer_ptr(buffer.id), buffer.len) }
    }

    /// Gives a buffer back: to the kernel, or idle if the kernel holds enough.
    pub fn recycle(&mut self, buffer: Buffer) {
        self.buffers.give_back(buffer.id);
    }

    /// Called about once a second: fits the buffers the kernel holds to the busiest turn
    /// since the last call, and gives idle buffers' pages back to the operating system.
    pub fn fit_buffers(&mut self) {
        self.buffers.posting.fit();
        self.buffers.top_up();
        self.buffers.release_idle_pages();
    }

    /// Buffers the kernel holds for receives now.
    pub fn buffers_posted(&self) -> u16 {
        self.buffers.posting.posted()
    }

    /// Writes completed short and resubmitted so far.
    pub fn short_writes(&self) -> u64 {
        self.short_writes
    }

    /// Operations still in flight that may touch memory owned here.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        let cancel_all = opcode::AsyncCancel2::new(CancelBuilder::any().all())
            .build()
            .user_data(Kind::Cancel.user_data(0));
        let mut events = Vec::new();
        // SAFETY: the entry points at no memory.
        let mut settled = self.in_flight == 0 || unsafe { self.push(&cancel_all) }.is_ok();
        while settled && self.in_flight > 0 {
            settled = self.uring.submit_and_wait(1).is_ok();
            // Nothing is resubmitted: with no socket known, a short write ends as failed.
            self.reap(&mut events, |_| None);
            events.clear();
        }
        if settled {
            // The ring is quiet: the buffer ring can go before its memory does.
            let _ = self.uring.submitter().unregister_buf_ring(BUFFER_GROUP);
        } else {
            // The kernel may still use these: leaking is the only safe choice.
            std::mem::forget(std::mem::take(&mut self.writes));
            std::mem::forget(std::mem::replace(&mut self.notified, Box::new(0)));
            self.buffers.leaked = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips_kind_and_index() {
        for kind in [
            Kind::Accept,
            Kind::Recv,
            Kind::Write,
            Kind::Backoff,
            Kind::Cancel,
            Kind::Notify,
        ] {
            for index in [0, 1, 12_345, u32::MAX] {
                assert_eq!(Kind::of(kind.user_data(index)), Some((kind, index)));
            }
        }
        assert_eq!(Kind::of(0), None);
    }

    #[test]
    fn kernel_release_check_wants_6_or_later() {
        assert!(kernel_supports_multishot_recv("6.18.44-fc-v1098"));
        assert!(kernel_supports_multishot_recv("6.0.0"));
        assert!(!kernel_supports_multishot_recv("5.19.17"));
        assert!(!kernel_supports_multishot_recv(""));
    }

    #[test]
    fn buffer_counts_must_be_powers_of_two() {
        assert!(BufferRing::new(3, 64).is_err());
        assert!(BufferRing::new(4, 0).is_err());
        assert!(BufferRing::new(4, 64).is_ok());
    }

    #[test]
    fn the_descriptor_array_is_page_aligned_and_the_tail_counts_provided_buffers() {
        let mut ring = BufferRing::new(4, 64).unwrap();
        assert_eq!(ring.descriptors.as_ptr() as usize % 4096, 0);
        for id in 0..6 {
            ring.provide(id % 4);
        }
        // SAFETY: the tail field of the first descriptor, inside the allocation; no
        // kernel shares this unregistered ring.
        let tail = unsafe { (*ring.descriptors.as_ptr()).tail };
        assert_eq!(tail, 6);
        // The fifth and sixth provides wrapped to slots 0 and 1.
        // SAFETY: slot 1 is inside the descriptor array.
        let slot1 = unsafe { &*ring.descriptors.as_ptr().add(1) };
        assert_eq!(slot1.bid, 1);
        assert_eq!(slot1.addr, ring.buffer_ptr(1) as u64);
        assert_eq!(slot1.len, 64);
    }

    #[test]
    fn only_pages_that_idle_buffers_cover_alone_go_back_and_read_as_zeros() {
        // 64 buffers of 1,000 bytes: the first 32 are provided, 32..64 wait idle. Buffer
        // sizes that do not divide a page leave the pages at the run's edges resident.
        let mut ring = BufferRing::new(64, 1000).unwrap();
        ring.top_up();
        assert_eq!(ring.posting.posted(), 32);
        // SAFETY: the whole mapping, which nothing else uses: the ring is not registered.
        let bytes = unsafe { std::slice::from_raw_parts_mut(ring.buffers.as_ptr(), 64_000) };
        bytes.fill(0xab);
        ring.release_idle_pages();
        // SAFETY: as above.
        let bytes = unsafe { std::slice::from_raw_parts(ring.buffers.as_ptr(), 64_000) };
        let released = 32_768..61_440;
        assert!(bytes[released.clone()].iter().all(|&b| b == 0));
        assert!(bytes[..released.start].iter().all(|&b| b == 0xab));
        assert!(bytes[released.end..].iter().all(|&b| b == 0xab));
    }

    #[test]
    fn a_ring_with_nothing_in_flight_drops_at_once() {
        let ring = Ring::new(RingConfig {
            entries: 8,
            buffers: 4,
            buffer_size: 64,
        })
        .unwrap();
        assert_eq!(ring.in_flight(), 0);
        drop(ring);
    }
}
