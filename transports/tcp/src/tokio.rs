use std::{
    future::{ready, Ready},
    io::{self, IoSlice},
    net::SocketAddr,
    pin::Pin,
    task::{ready, Context, Poll},
};

use crate::TcpOptions;
use flumen_stream::{Listener, Transport, TransportRead};
use futures_io::{AsyncRead, AsyncWrite};
use socket2::SockRef;
use tokio::{
    io::{AsyncRead as _, AsyncWrite as _, ReadBuf},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpListener, TcpStream,
    },
};

/// TCP on tokio. Must be used from within a tokio runtime.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioTcp {
    options: TcpOptions,
}

/// The receiving half of a tokio TCP connection.
#[derive(Debug)]
pub struct TokioTcpReader(OwnedReadHalf);

/// The sending half of a tokio TCP connection; closing it sends `FIN`.
#[derive(Debug)]
pub struct TokioTcpWriter(OwnedWriteHalf);

/// A tokio TCP listener.
#[derive(Debug)]
pub struct TokioTcpListener {
    listener: TcpListener,
    options: TcpOptions,
}

impl TokioTcp {
    /// TCP with `options` on every connection it opens or accepts.
    pub const fn with_options(options: TcpOptions) -> Self {
        Self { options }
    }
}

fn split(stream: TcpStream, options: &TcpOptions) -> io::Result<(TokioTcpReader, TokioTcpWriter)> {
    options.apply(SockRef::from(&stream))?;
    let (reader, writer) = stream.into_split();
    Ok((TokioTcpReader(reader), TokioTcpWriter(writer)))
}

impl Transport for TokioTcp {
    type Addr = SocketAddr;
    type Reader = TokioTcpReader;
    type Writer = TokioTcpWriter;
    type Listener = TokioTcpListener;

    async fn connect(&self, addr: &SocketAddr) -> io::Result<(TokioTcpReader, TokioTcpWriter)> {
        split(TcpStream::connect(addr).await?, &self.options)
    }

    async fn bind(&self, addr: &SocketAddr) -> io::Result<TokioTcpListener> {
        Ok(TokioTcpListener {
            listener: TcpListener::from_std(crate::listener(addr)?)?,
            options: self.options,
        })
    }
}

impl Listener for TokioTcpListener {
    type Addr = SocketAddr;
    type Reader = TokioTcpReader;
    type Writer = TokioTcpWriter;
    type Connecting = Ready<io::Result<(TokioTcpReader, TokioTcpWriter)>>;

    async fn accept(&mut self) -> io::Result<(Self::Connecting, SocketAddr)> {
        let (stream, peer) = self.listener.accept().await?;
        Ok((ready(split(stream, &self.options)), peer))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Reads straight into the core's buffer capacity through tokio's `ReadBuf` (no zero-fill).
impl TransportRead for TokioTcpReader {
    const READS_UNINIT: bool = true;

    fn poll_read_buf(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut bytes::BytesMut,
        max: usize,
    ) -> Poll<io::Result<usize>> {
        use bytes::BufMut;
        tokio_util::io::poll_read_buf(Pin::new(&mut self.0), cx, &mut buf.limit(max))
    }
}

impl AsyncRead for TokioTcpReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut buf = ReadBuf::new(buf);
        ready!(Pin::new(&mut self.0).poll_read(cx, &mut buf))?;
        Poll::Ready(Ok(buf.filled().len()))
    }
}

impl AsyncWrite for TokioTcpWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
