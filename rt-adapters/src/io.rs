//! Connection halves over each runtime's sockets, for transports to wrap: whatever the socket
//! (TCP, Unix), a half speaks `futures-io` and
//! [`TransportRead`](flumen_stream::TransportRead), the traits the core drives.

#[cfg(feature = "smol")]
pub use self::smol_io::SmolIo;
#[cfg(feature = "tokio")]
pub use self::tokio_io::TokioIo;

#[cfg(feature = "tokio")]
mod tokio_io {
    use std::{
        io::{self, IoSlice},
        pin::Pin,
        task::{ready, Context, Poll},
    };

    use flumen_stream::{TransportRead, TransportWrite};
    use futures_io::{AsyncRead, AsyncWrite};
    use tokio::io::{AsyncRead as TokioRead, AsyncWrite as TokioWrite, ReadBuf};

    /// A half of a tokio connection (`OwnedReadHalf`, `OwnedWriteHalf`, ...): reads go
    /// straight into the core's buffer capacity through tokio's `ReadBuf` (no zero-fill);
    /// closing shuts the write side down (a TCP `FIN`).
    #[derive(Debug)]
    pub struct TokioIo<T>(pub T);

    impl<T: TokioRead + Unpin + Send + 'static> TransportRead for TokioIo<T> {
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

    impl<T: TokioRead + Unpin> AsyncRead for TokioIo<T> {
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

    impl<T: TokioWrite + Unpin + Send + 'static> TransportWrite for TokioIo<T> {}

    impl<T: TokioWrite + Unpin> AsyncWrite for TokioIo<T> {
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
}

#[cfg(feature = "smol")]
mod smol_io {
    use std::{
        io::{self, IoSlice},
        pin::Pin,
        sync::Arc,
        task::{Context, Poll},
    };

    use flumen_stream::{TransportRead, TransportWrite};
    use futures_io::{AsyncRead, AsyncWrite};
    use smol::Async;

    /// A half of a smol connection: the socket is shared by its two halves (`async-io` lets
    /// a reader and a writer use one socket at once); closing shuts the write side down.
    #[derive(Debug)]
    pub struct SmolIo<T>(Arc<Async<T>>);

    impl<T> SmolIo<T> {
        /// The two halves of `socket`: the reading one, then the writing one.
        pub fn split(socket: Async<T>) -> (Self, Self) {
            let socket = Arc::new(socket);
            (Self(socket.clone()), Self(socket))
        }

        /// The socket.
        pub fn get_ref(&self) -> &T {
            self.0.get_ref()
        }
    }

    impl<T> TransportRead for SmolIo<T>
    where
        T: Send + Sync + 'static,
        for<'a> &'a Async<T>: AsyncRead,
    {
    }

    impl<T> AsyncRead for SmolIo<T>
    where
        for<'a> &'a Async<T>: AsyncRead,
    {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut &*self.0).poll_read(cx, buf)
        }
    }

    impl<T> TransportWrite for SmolIo<T>
    where
        T: Send + Sync + 'static,
        for<'a> &'a Async<T>: AsyncWrite,
    {
    }

    impl<T> AsyncWrite for SmolIo<T>
    where
        for<'a> &'a Async<T>: AsyncWrite,
    {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut &*self.0).poll_write(cx, buf)
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut &*self.0).poll_write_vectored(cx, bufs)
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut &*self.0).poll_flush(cx)
        }

        fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut &*self.0).poll_close(cx)
        }
    }
}
