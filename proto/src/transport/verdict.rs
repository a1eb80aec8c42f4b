//! A client's wait for the coordinator's verdict on its certificate. In TLS 1.3 the server checks the
//! client's certificate after the client has finished its half of the handshake; a refusal (an
//! expired certificate) then arrives as an alert on the first read, and hyper reports only
//! "connection closed". The coordinator speaks first on an accepted connection (its HTTP/2
//! settings), so reading those first bytes before handing the stream to hyper turns a refusal into
//! a failed connect whose error is the TLS alert; the bytes read are replayed to hyper.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// `io`, with `first` read from it already and given back before anything else.
pub(crate) struct Replayed<IO> {
    first: Vec<u8>,
    at: usize,
    io: IO,
}

/// Waits for the server's first bytes: an error (the TLS alert of a refusal) or end of stream is the
/// connection's failure.
pub(crate) async fn first_bytes<IO: AsyncRead + Unpin>(mut io: IO) -> io::Result<Replayed<IO>> {
    let mut first = vec![0u8; 4096];
    let n = io.read(&mut first).await?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the coordinator closed the connection right after the TLS handshake",
        ));
    }
    first.truncate(n);
    Ok(Replayed { first, at: 0, io })
}

impl<IO: AsyncRead + Unpin> AsyncRead for Replayed<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.first.len() {
            let n = buf.remaining().min(this.first.len() - this.at);
            buf.put_slice(&this.first[this.at..this.at + n]);
            this.at += n;
            if this.at == this.first.len() {
                this.first = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Replayed<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
