//! HTTP/2 with prior knowledge (h2c): hyper's server, given the bytes the HTTP/1 loop already
//! read. Its own limits bound rapid reset, SETTINGS and CONTINUATION floods.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use bytes::{Buf, Bytes};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::Context;
use crate::client_body::RequestBody;
use crate::forward;

/// The HTTP/2 side of a worker's server.
pub struct Http2 {
    builder: http2::Builder<TokioExecutor>,
}

impl Http2 {
    pub fn new(max_header_size: usize) -> Http2 {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_header_list_size(max_header_size.min(u32::MAX as usize) as u32);
        Http2 { builder }
    }

    /// Serves an HTTP/2 connection whose first bytes (`read`) are already taken off the socket.
    pub async fn serve(&self, stream: TcpStream, read: Bytes, peer: SocketAddr, context: &Context) {
        let service = service_fn(move |req: hyper::Request<Incoming>| {
            let (shared, upstream) = (context.shared.clone(), context.upstream.clone());
            Box::pin(async move {
                let req = req.map(RequestBody::H2);
                let response = forward::handle(&shared, &upstream, req, peer).await;
                Ok::<_, std::convert::Infallible>(response)
            })
        });
        let io = TokioIo::new(Rewind { read, stream });
        let connection = self.builder.serve_connection(io, service);
        let mut connection = std::pin::pin!(connection);
        let ended = tokio::select! {
            ended = connection.as_mut() => ended,
            _ = context.stop.cancelled() => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(err) = ended {
            tracing::debug!(%peer, error = %err, "HTTP/2 client connection ended with an error");
        }
    }
}

/// A socket with bytes already read from it put back in front.
struct Rewind {
    read: Bytes,
    stream: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read[..n]);
            self.read.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
