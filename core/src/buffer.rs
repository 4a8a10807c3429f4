//! A byte buffer that starts on a page boundary, for the reads and writes of bulk data.
//!
//! Why: every byte a socket moves is copied by the kernel between its buffers and ours (`_copy_to_iter` on
//! a read, `_copy_from_iter` on a write), and that copy costs less when our buffer starts on a page
//! boundary. A large `Vec<u8>` does not: `malloc` serves it with `mmap` and puts it 16 bytes into the first
//! page. Measured on loopback (bench/NOTES.md, issue 25: 256 KiB `recv_into` calls on one core, a sender
//! on the other), the receiving side spent 0.12–0.16 CPU-s per GB with a page-aligned buffer against
//! 0.17–0.22 at offset 16 or 64, in three alternating rounds.
//!
//! # Notes
//!
//! The alignment is to 4 KiB, the smallest page size Linux uses on any architecture, whatever the page
//! size is; a buffer holds one page more than it hands out so that the aligned part always fits.

/// The alignment: 4 KiB.
const PAGE: usize = 4096;

/// `len` zeroed bytes starting on a page boundary (see the module docs for why).
pub struct PageAligned {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl PageAligned {
    /// A zeroed buffer of `len` bytes whose first byte is page-aligned.
    pub fn new(len: usize) -> PageAligned {
        let buf = vec![0; len + PAGE];
        // The heap block does not move when the Vec does, so the offset found now stays right.
        let start = buf.as_ptr().align_offset(PAGE);
        PageAligned { buf, start, len }
    }

    /// The aligned bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    /// The aligned bytes, to read into.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_a_page_and_has_the_length_asked() {
        for len in [1, 1024, 64 * 1024, 256 * 1024] {
            let mut b = PageAligned::new(len);
            assert_eq!(b.as_slice().len(), len);
            assert_eq!(b.as_mut_slice().as_ptr() as usize % PAGE, 0);
            assert!(b.as_slice().iter().all(|&x| x == 0));
        }
    }
}
