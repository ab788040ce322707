//! A bounded byte buffer for one direction of one socket: bytes are appended at the tail
//! (by a read or by emitting a frame) and consumed from the head (by parsing or a write).
//!
//! The capacity is fixed when the buffer is made and never grows, which is what bounds a
//! relay's memory per connection. The storage comes from a zeroed allocation, so pages the
//! connection never touches (most of them, for small frames) cost no resident memory.

pub struct Buffer {
    bytes: Vec<u8>,
    start: usize,
    end: usize,
}

impl Buffer {
    pub fn with_capacity(capacity: usize) -> Buffer {
        Buffer { bytes: vec![0; capacity], start: 0, end: 0 }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_push_consume_compact() {
        let mut buffer = Buffer::with_capacity(8);
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
}
