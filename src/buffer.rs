//! A bounded byte buffer for one direction of one socket: bytes are appended at the tail
//! (by a read or by emitting a frame) and consumed from the head (by parsing or a write).
//!
//! The capacity is fixed when the buffer is made and never grows, which is what bounds a
//! relay's memory per connection. The storage is an anonymous mapping of its own, so pages the
//! connection never touches (most of them, for small frames) cost no resident memory, and all
//! of it goes back to the kernel when the connection closes. (Taken from the allocator instead,
//! a freed 1 MiB buffer raises glibc's mmap threshold; later buffers then come from the heap,
//! are zeroed page by page on the first frame, and stay resident: 534 MiB for 1,000 idle
//! connections at a relay that had served one, instead of 2.5 MiB, measured with
//! `scripts/bench.sh --only rss`. With their paths discovered, 1,000 connections take about
//! 20 MiB: `tests/load.rs` prints and bounds it.)

use std::io;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

pub struct Buffer {
    bytes: Pages,
    start: usize,
    end: usize,
}

impl Buffer {
    /// Fails when the kernel refuses the mapping: out of memory or of mappings, or past the
    /// locked-memory limit once `--mlock` has locked all future mappings.
    pub fn with_capacity(capacity: usize) -> io::Result<Buffer> {
        Ok(Buffer { bytes: Pages::new(capacity)?, start: 0, end: 0 })
    }

    pub fn capacity(&self) -> usize {
        self.bytes.len()
    }

    pub fn data(&self) -> &[u8] {
        &self.bytes[self.start..self.end]
    }

    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[self.start..self.end]
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Free bytes, counting those that compaction would recover.
    pub fn room(&self) -> usize {
        self.capacity() - self.len()
    }

    pub fn consume(&mut self, count: usize) {
        debug_assert!(count <= self.len(), "consumed more than the buffer holds");
        self.start += count;
        if self.start == self.end {
            // Going back to the front keeps the touched (resident) part of the buffer small.
            self.start = 0;
            self.end = 0;
        }
    }

    /// A writable slice of at least `wanted` bytes after the data (compacting when the tail
    /// is short), or `None` when the buffer cannot take that many bytes now.
    pub fn tail(&mut self, wanted: usize) -> Option<&mut [u8]> {
        if self.room() < wanted {
            return None;
        }
        if self.capacity() - self.end < wanted {
            self.bytes.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        Some(&mut self.bytes[self.end..])
    }

    /// Marks `count` bytes written into the slice from [`Buffer::tail`] as data.
    pub fn commit(&mut self, count: usize) {
        debug_assert!(self.end + count <= self.capacity(), "committed past the capacity");
        self.end += count;
    }

    /// Appends `bytes` whole, or returns false and appends nothing.
    pub fn push(&mut self, bytes: &[u8]) -> bool {
        match self.tail(bytes.len()) {
            Some(tail) => {
                tail[..bytes.len()].copy_from_slice(bytes);
                self.commit(bytes.len());
                true
            }
            None => false,
        }
    }
}

/// Zero-filled memory from an anonymous private mapping, unmapped on drop.
struct Pages {
    start: NonNull<u8>,
    len: usize,
}

impl Pages {
    fn new(len: usize) -> io::Result<Pages> {
        if len == 0 {
            return Ok(Pages { start: NonNull::dangling(), len });
        }
        // SAFETY: an anonymous private mapping of `len` bytes, no address hint; the result is
        // checked before use.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if address == libc::MAP_FAILED {
            let error = io::Error::last_os_error();
            return Err(io::Error::new(
                error.kind(),
                format!("cannot map a {} KiB buffer: {error}", len >> 10),
            ));
        }
        let start = NonNull::new(address.cast::<u8>()).expect("mmap never maps page 0 here");
        Ok(Pages { start, len })
    }
}

impl Deref for Pages {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `start` points to `len` readable bytes owned by this value (or is dangling
        // with `len == 0`, which a slice allows).
        unsafe { std::slice::from_raw_parts(self.start.as_ptr(), self.len) }
    }
}

impl DerefMut for Pages {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.start.as_ptr(), self.len) }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: unmaps exactly the mapping made in `new`, which nothing references now.
            unsafe { libc::munmap(self.start.as_ptr().cast(), self.len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_push_consume_compact() {
        let mut buffer = Buffer::with_capacity(8).unwrap();
        assert!(buffer.push(b"abcdef"));
        buffer.consume(4);
        assert_eq!(buffer.data(), b"ef");
        assert_eq!(buffer.room(), 6);
        // Needs compaction: only 2 bytes free at the tail, 6 in all.
        assert!(buffer.push(b"ghijkl"));
        assert_eq!(buffer.data(), b"efghijkl");
        assert!(!buffer.push(b"m"), "a full buffer refuses more");
        buffer.consume(8);
        assert!(buffer.is_empty());
        assert_eq!(buffer.tail(8).map(|tail| tail.len()), Some(8));
    }

    #[test]
    fn test_mapped_storage_is_zeroed_and_may_be_empty() {
        let mut buffer = Buffer::with_capacity(3 << 20).unwrap();
        assert!(buffer.tail(3 << 20).unwrap().iter().all(|&byte| byte == 0));
        assert!(buffer.push(&[0xa5; 4096]));
        assert_eq!(buffer.data()[4095], 0xa5);
        let mut empty = Buffer::with_capacity(0).unwrap();
        assert!(empty.is_empty() && empty.push(b"") && !empty.push(b"x"));
    }
}
