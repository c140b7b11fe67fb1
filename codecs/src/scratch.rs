//! The per-thread buffer bodies are encoded into.
//!
//! Bodies are encoded into a per-thread buffer and split off it, so a small body costs no
//! allocation of its own: the buffer is replaced once it has less than `SCRATCH_MIN` bytes
//! left, by one of `SCRATCH_CHUNK` bytes (or what a larger body needs).

use std::{cell::RefCell, error::Error as StdError, io::Write};

use bytes::{BufMut, Bytes, BytesMut};

use crate::CodecError;

const SCRATCH_CHUNK: usize = 32 * 1024;
const SCRATCH_MIN: usize = 1024;

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
        if scratch.capacity() < SCRATCH_MIN {
            scratch.reserve(SCRATCH_CHUNK);
        }
        let mut out = (&mut *scratch).writer();
        match write(&mut out) {
            Ok(()) => Ok(scratch.split().freeze()),
            Err(e) => {
                scratch.clear();
                Err(CodecError::Encode(e.into()))
            }
        }
    })
}
