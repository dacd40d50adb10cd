//! The frames of one vectored write: which bytes are still to go, as I/O vectors, and how a
//! short write moves the start. No I/O here: the ring module owns a batch while the kernel
//! reads from it, and this module only does the bookkeeping, so partial writes are tested
//! without a socket.

use std::collections::VecDeque;

use bytes::Bytes;

/// Most frames one write takes: Linux's `UIO_MAXIOV` is 1024; a smaller batch keeps the
/// vector array small and still turns a burst of small frames into one system call.
pub const MAX_FRAMES_PER_WRITE: usize = 64;

/// Frames being written, front first. The first frame may already be partly written.
#[derive(Debug, Default)]
pub struct Batch {
    frames: VecDeque<Bytes>,
    /// Bytes of the front frame already written.
    written_of_front: usize,
}

impl Batch {
    /// Moves up to [`MAX_FRAMES_PER_WRITE`] frames from the front of `queue` into this empty
    /// batch, skipping empty frames (a zero-length vector would only waste a slot).
    pub fn take_from(&mut self, queue: &mut VecDeque<Bytes>) {
        debug_assert!(self.is_empty(), "a batch is filled only when empty");
        self.written_of_front = 0;
        while self.frames.len() < MAX_FRAMES_PER_WRITE {
            let Some(frame) = queue.pop_front() else {
                break;
            };
            if !frame.is_empty() {
                self.frames.push_back(frame);
            }
        }
    }

    /// Whether every byte has been written.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The unwritten bytes, front first, one slice per frame.
    pub fn unwritten(&self) -> impl Iterator<Item = &[u8]> {
        self.frames.iter().enumerate().map(|(index, frame)| {
            let skip = if index == 0 { self.written_of_front } else { 0 };
            &frame[skip..]
        })
    }

    /// Records that the kernel wrote `written` bytes from the front, dropping the frames it
    /// finished. Returns whether anything is left (a short write).
    pub fn advance(&mut self, mut written: usize) -> bool {
        while let Some(front) = self.frames.front() {
            let left_in_front = front.len() - self.written_of_front;
            if written < left_in_front {
                self.written_of_front += written;
                return true;
            }
            written -= left_in_front;
            self.frames.pop_front();
            self.written_of_front = 0;
        }
        debug_assert_eq!(written, 0, "the kernel wrote more than it was given");
        false
    }

    /// Drops every frame (the connection is gone), keeping the allocation for reuse.
    pub fn clear(&mut self) {
        self.frames.clear();
        self.written_of_front = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(frames: &[&'static [u8]]) -> VecDeque<Bytes> {
        frames
            .iter()
            .map(|frame| Bytes::from_static(frame))
            .collect()
    }

    fn unwritten(batch: &Batch) -> Vec<u8> {
        batch.unwritten().flatten().copied().collect()
    }

    #[test]
    fn a_short_write_resumes_inside_a_frame() {
        let mut source = queue(&[b"abc", b"defg", b"h"]);
        let mut batch = Batch::default();
        batch.take_from(&mut source);
        assert!(source.is_empty());
        assert!(batch.advance(2));
        assert_eq!(unwritten(&batch), b"cdefgh");
        assert_eq!(batch.unwritten().count(), 3);
        assert!(batch.advance(1));
        assert_eq!(unwritten(&batch), b"defgh");
        assert_eq!(batch.unwritten().count(), 2);
        assert!(batch.advance(4));
        assert_eq!(unwritten(&batch), b"h");
        assert!(!batch.advance(1));
        assert!(batch.is_empty());
    }

    #[test]
    fn a_full_write_empties_the_batch() {
        let mut source = queue(&[b"abc", b"de"]);
        let mut batch = Batch::default();
        batch.take_from(&mut source);
        assert!(!batch.advance(5));
        assert!(batch.is_empty());
    }

    #[test]
    fn a_batch_takes_at_most_its_limit_and_skips_empty_frames() {
        let mut source: VecDeque<Bytes> = (0..MAX_FRAMES_PER_WRITE + 5)
            .map(|i| Bytes::from(vec![u8::try_from(i % 256).unwrap(); i % 3]))
            .collect();
        let total: usize = source.iter().map(Bytes::len).sum();
        let mut batch = Batch::default();
        let mut written = 0;
        while !source.is_empty() {
            batch.take_from(&mut source);
            assert!(batch.unwritten().count() <= MAX_FRAMES_PER_WRITE);
            assert!(batch.unwritten().all(|slice| !slice.is_empty()));
            let len: usize = batch.unwritten().map(<[u8]>::len).sum();
            written += len;
            assert!(!batch.advance(len));
        }
        assert_eq!(written, total);
    }

    #[test]
    fn clear_forgets_a_partly_written_frame() {
        let mut source = queue(&[b"abc"]);
        let mut batch = Batch::default();
        batch.take_from(&mut source);
        batch.advance(1);
        batch.clear();
        assert!(batch.is_empty());
        let mut source = queue(&[b"xyz"]);
        batch.take_from(&mut source);
        assert_eq!(unwritten(&batch), b"xyz");
    }
}
