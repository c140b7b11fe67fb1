//! The per-thread buffer bodies are encoded into.
//!
//! Bodies are encoded into a per-thread buffer and split off it, so a small body costs no
//! allocation of its own: the buffer is replaced once it has less than `SCRATCH_MIN` bytes
//! left, by one of `SCRATCH_CHUNK` bytes (or what a larger body needs). Space left over from a
//! large body (more than `SCRATCH_KEEP`) is let go rather than kept for the small ones.

use std::{cell::RefCell, error::Error as StdError, io, io::Write};

use bytes::{BufMut, Bytes, BytesMut};

use crate::CodecError;

const SCRATCH_CHUNK: usize = 32 * 1024;
const SCRATCH_MIN: usize = 1024;
/// The most spare capacity kept after a body: more would hold a large body's buffer alive
/// under every small body cut from it.
const SCRATCH_KEEP: usize = 4 * SCRATCH_CHUNK;

thread_local! {
    static SCRATCH: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// The body `write` writes, split off this thread's buffer.
pub(crate) fn encode<E>(
    write: impl FnOnce(&mut dyn Write) -> Result<(), E>,
) -> Result<Bytes, CodecError>
where
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    SCRATCH.with_borrow_mut(|scratch| {
        // The old chunk back if nothing holds it any more, else a new one: never a realloc.
        if scratch.capacity() < SCRATCH_MIN && !scratch.try_reclaim(SCRATCH_CHUNK) {
            *scratch = BytesMut::with_capacity(SCRATCH_CHUNK);
        }
        let mut out = Grow(scratch);
        let written = write(&mut out);
        let body = scratch.split().freeze();
        if scratch.capacity() > SCRATCH_KEEP {
            *scratch = BytesMut::new();
        }
        match written {
            Ok(()) => Ok(body),
            Err(e) => Err(CodecError::Encode(e.into())),
        }
    })
}

/// Writes into the scratch buffer. When a write does not fit, what the body has so far moves
/// to a new buffer with room for it: growing the old one in place (`realloc`) would copy its
/// whole capacity, written or not (32 KiB for each body over what was left).
struct Grow<'a>(&'a mut BytesMut);

impl Grow<'_> {
    /// Moves the body so far to a buffer with room for `more` bytes after it: at least double
    /// what is written, so that many small writes grow it in amortised linear time.
    #[cold]
    fn grow(&mut self, more: usize) {
        let scratch = &mut *self.0;
        // Its own buffer, if nothing else holds it and it is large enough: the body so far
        // moves to its front.
        if scratch.try_reclaim(more) {
            return;
        }
        let capacity = (scratch.len() + more)
            .max(2 * scratch.len())
            .max(SCRATCH_CHUNK);
        let mut grown = BytesMut::with_capacity(capacity);
        grown.extend_from_slice(scratch);
        *scratch = grown;
    }
}

impl Write for Grow<'_> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.write_all(bytes)?;
        Ok(bytes.len())
    }

    #[inline]
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.0.capacity() - self.0.len() < bytes.len() {
            self.grow(bytes.len());
        }
        self.0.put_slice(bytes);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_large_and_small_come_out_whole() {
        let large = vec![9u8; 3 * SCRATCH_CHUNK];
        for (i, len) in [
            10,
            SCRATCH_CHUNK - 5,
            3 * SCRATCH_CHUNK,
            7,
            2 * SCRATCH_CHUNK + 1,
        ]
        .into_iter()
        .enumerate()
        {
            let body = encode(|out| -> io::Result<()> {
                out.write_all(&[i as u8])?;
                out.write_all(&large[..len])
            })
            .unwrap();
            assert_eq!(body.len(), len + 1);
            assert_eq!(body[0], i as u8);
            assert!(body[1..].iter().all(|&b| b == 9));
        }
        // Many small writes past the chunk.
        let body = encode(|out| -> io::Result<()> {
            (0..3 * SCRATCH_CHUNK).try_for_each(|i| out.write_all(&[i as u8]))
        })
        .unwrap();
        assert!(body.iter().enumerate().all(|(i, &b)| b == i as u8));
        // A failed encode leaves nothing behind.
        let failed = encode(|out| {
            out.write_all(b"half")?;
            Err(io::Error::other("unencodable"))
        });
        assert!(matches!(failed, Err(CodecError::Encode(_))));
        assert_eq!(&encode(|out| out.write_all(b"next")).unwrap()[..], b"next");
    }

    #[test]
    fn a_large_body_leaves_no_large_buffer_behind() {
        drop(encode(|out| out.write_all(&vec![1u8; 3 * SCRATCH_KEEP])).unwrap());
        SCRATCH.with_borrow(|scratch| assert!(scratch.capacity() <= SCRATCH_KEEP));
    }
}
