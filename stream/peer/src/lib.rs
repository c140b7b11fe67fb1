//! A raw Flumen peer for tests.
//!
//! [`Peer`] speaks the wire format of `PROTOCOL.md` byte by byte over any transport's halves,
//! with none of the core's checks on what it sends: tests use it to play a hostile or broken
//! client (floods, lies about lengths, ignored credit, reused sequence ids) or a broken
//! server, and to read exactly what the other side answered.
//!
//! The byte builders ([`frame`](fn@frame), [`metadata_block`]) write what they are given, limits and
//! consistency be damned; the reading side decodes strictly and reports what arrived.

pub mod chaos;

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use flumen_stream::{
    error::ErrorCode,
    frame::{self, Decoded, Frame, FrameHeader, FrameKind, HEADER_LEN},
    hello::{Hello, HELLO_LEN},
    Listener, Transport,
};
use futures_io::{AsyncRead, AsyncWrite};
use futures_lite::{AsyncReadExt, AsyncWriteExt};

/// One end of a raw Flumen connection.
#[derive(Debug)]
pub struct Peer<R, W> {
    reader: R,
    writer: W,
    /// Bytes read and not yet decoded.
    received: BytesMut,
}

/// A [`Peer`] on a transport's connection halves.
pub type TransportPeer<T> = Peer<<T as Transport>::Reader, <T as Transport>::Writer>;

/// Opens a raw connection to `addr` (nothing is sent yet, not even a hello).
///
/// # Errors
///
/// If the transport cannot connect.
pub async fn connect<T: Transport>(transport: &T, addr: &T::Addr) -> io::Result<TransportPeer<T>> {
    let (reader, writer) = transport.connect(addr).await?;
    Ok(Peer::new(reader, writer))
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Peer<R, W> {
    /// A peer on an open connection's halves.
    pub fn new(reader: R, writer: W) -> Self {
        Self {
            reader,
            writer,
            received: BytesMut::new(),
        }
    }

    /// Accepts one connection on `listener` and finishes its transport handshake: a fake
    /// server for testing clients.
    ///
    /// # Errors
    ///
    /// If accepting or the handshake fails.
    pub async fn accept<L>(listener: &mut L) -> io::Result<Self>
    where
        L: Listener<Reader = R, Writer = W>,
    {
        let (connecting, _) = listener.accept().await?;
        let (reader, writer) = connecting.await?;
        Ok(Self::new(reader, writer))
    }

    /// Sends `bytes` as they are, and flushes.
    ///
    /// # Errors
    ///
    /// If the write fails (the other side closed, for example).
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes).await?;
        self.writer.flush().await
    }

    /// Sends a hello.
    ///
    /// # Errors
    ///
    /// If the write fails.
    pub async fn send_hello(&mut self, hello: Hello) -> io::Result<()> {
        self.send_bytes(&hello.encode()).await
    }

    /// Sends one frame: `header` with its `len` set to `body`'s length, then `body`.
    ///
    /// # Errors
    ///
    /// If the write fails.
    pub async fn send_frame(&mut self, header: FrameHeader, body: &[u8]) -> io::Result<()> {
        self.send_bytes(&frame(header, body)).await
    }

    /// Closes the sending direction (TCP `FIN`).
    ///
    /// # Errors
    ///
    /// If closing fails.
    pub async fn close(&mut self) -> io::Result<()> {
        self.writer.close().await
    }

    /// Reads and decodes the other side's hello.
    ///
    /// # Errors
    ///
    /// If the connection ends first, or the hello does not decode.
    pub async fn read_hello(&mut self) -> io::Result<Hello> {
        while self.received.len() < HELLO_LEN {
            if self.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        let head = self.received.split_to(HELLO_LEN);
        let head = head
            .first_chunk::<HELLO_LEN>()
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        Hello::decode(head).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// The next frame, or `None` once the other side closed the connection (after a whole
    /// frame; a close in the middle of one is an error).
    ///
    /// # Errors
    ///
    /// If the read fails, the bytes do not decode, or the connection ends inside a frame.
    pub async fn next_frame(&mut self) -> io::Result<Option<Frame>> {
        loop {
            match frame::decode(&self.received, u32::MAX) {
                Ok(Decoded::Complete(header)) => {
                    self.received.advance(HEADER_LEN);
                    let body = self.received.split_to(header.len as usize).freeze();
                    return Ok(Some(Frame { header, body }));
                }
                Ok(Decoded::Incomplete(_)) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            if self.fill().await? == 0 {
                return match self.received.is_empty() {
                    true => Ok(None),
                    false => Err(io::ErrorKind::UnexpectedEof.into()),
                };
            }
        }
    }

    /// Every frame until the other side closes the connection.
    ///
    /// # Errors
    ///
    /// As [`next_frame`](Self::next_frame).
    pub async fn frames_until_close(&mut self) -> io::Result<Vec<Frame>> {
        let mut frames = Vec::new();
        while let Some(frame) = self.next_frame().await? {
            frames.push(frame);
        }
        Ok(frames)
    }

    /// Reads until the other side closes, and returns the code and reason of the `GoAway` it
    /// sent last.
    ///
    /// # Errors
    ///
    /// As [`next_frame`](Self::next_frame), or `InvalidData` if the last frame is not a
    /// `GoAway`.
    pub async fn go_away(&mut self) -> io::Result<(ErrorCode, String)> {
        let frames = self.frames_until_close().await?;
        match frames.last() {
            Some(Frame { header, body }) if header.kind == FrameKind::GoAway => Ok((
                ErrorCode::from_u32(header.aux),
                String::from_utf8_lossy(body).into_owned(),
            )),
            last => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the connection ended without a GoAway: last frame {last:?}"),
            )),
        }
    }

    /// Reads until a `GoAway` arrives (dropping the frames before it) and returns its code and
    /// reason, without waiting for the close: a server that closes with this side's input
    /// unread sends a reset, which must not cost the `GoAway` already received.
    ///
    /// # Errors
    ///
    /// A read error, or the connection ending first (`InvalidData`).
    pub async fn next_go_away(&mut self) -> io::Result<(ErrorCode, String)> {
        while let Some(Frame { header, body }) = self.next_frame().await? {
            if header.kind == FrameKind::GoAway {
                return Ok((
                    ErrorCode::from_u32(header.aux),
                    String::from_utf8_lossy(&body).into_owned(),
                ));
            }
        }
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the connection ended without a GoAway",
        ))
    }

    /// The halves, for tests that drive them by hand (bytes already read are dropped).
    pub fn into_parts(self) -> (R, W) {
        (self.reader, self.writer)
    }

    /// Reads once into `received`; the number of bytes read.
    async fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 8192];
        let n = self.reader.read(&mut chunk).await?;
        self.received.extend_from_slice(&chunk[..n]);
        Ok(n)
    }
}

/// The bytes of one frame: `header` with its `len` set to `body`'s length, then `body`.
///
/// # Panics
///
/// If `body` is longer than `u32::MAX` bytes.
pub fn frame(header: FrameHeader, body: &[u8]) -> Vec<u8> {
    let mut bytes = BytesMut::new();
    Frame::new(header, Bytes::copy_from_slice(body)).encode(&mut bytes);
    bytes.to_vec()
}

/// The bytes of a header alone, with whatever `len` it claims.
pub fn header(header: FrameHeader) -> [u8; HEADER_LEN] {
    let mut bytes = [0u8; HEADER_LEN];
    header.encode(&mut bytes);
    bytes
}

/// A `Request` header for `method` with sequence id `seq`.
pub fn request(method: u32, seq: u64) -> FrameHeader {
    FrameHeader {
        method,
        ..FrameHeader::new(FrameKind::Request, seq)
    }
}

/// A metadata block as §9 of `PROTOCOL.md` lays it out (length prefix, count, entries), with
/// no limit applied: `count` is written as given, whatever the entries.
pub fn metadata_block(count: u16, entries: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut block = count.to_le_bytes().to_vec();
    for (key, value) in entries {
        block.extend_from_slice(&(key.len() as u16).to_le_bytes());
        block.extend_from_slice(key);
        block.extend_from_slice(&(value.len() as u32).to_le_bytes());
        block.extend_from_slice(value);
    }
    let mut bytes = (block.len() as u32).to_le_bytes().to_vec();
    bytes.extend_from_slice(&block);
    bytes
}
