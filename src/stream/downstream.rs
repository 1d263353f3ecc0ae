//! A subscriber's connection once its stream has begun. The client's raw stream is taken out
//! of pingora's session and served from a task of its own (see `proxy::detach`), so pingora's
//! per-request state (session buffers, the futures of its request pipeline) is freed and an
//! open stream holds only its socket, its place in the topic's queue and a small task.
//! Responses are written here as raw HTTP/1.1 (see the sinks of `sse` and `ws`).

use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Stream;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a stream is written to.
pub enum Socket {
    /// The client's TCP socket itself, shared with the topic, which writes events to it
    /// directly while the subscriber is parked (see `topic::direct`).
    Tcp(Arc<TcpStream>),
    /// Pingora's stream, for connections that are not plain TCP.
    Pingora(Stream),
}

/// The leanest handle on a client's connection, and the descriptor that names it from now on.
///
/// Pingora's stream object carries a write buffer, digests and timing state, about 2 KiB per
/// connection. For a plain TCP connection (pingora's own transport stream, checked by its
/// type, with no wrapper left around it) a plain tokio socket on a duplicate of its descriptor
/// does the same job, and pingora's object is dropped (tokio deregisters it before its
/// descriptor closes; the socket stays open through the duplicate). Anything else, TLS
/// included, is kept as it is and written through.
pub fn lean(stream: Stream) -> (Socket, i32) {
    let plain = stream.as_any().downcast_ref::<L4Stream>();
    if let Some(std) = plain.and_then(crate::sys::duplicate_tcp) {
        if std.set_nonblocking(true).is_ok() {
            if let Ok(tcp) = TcpStream::from_std(std) {
                let id = tcp.as_raw_fd();
                drop(stream);
                return (Socket::Tcp(Arc::new(tcp)), id);
            }
        }
    }
    let fd = stream.id();
    (Socket::Pingora(stream), fd)
}

/// How a write to a subscriber failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteFailed {
    /// The client accepted nothing for `write_timeout`.
    Timeout,
    /// The connection is broken (the client left).
    Error,
}

impl WriteFailed {
    /// The `reason` label of `unpoll_subscribers_dropped_total`.
    pub fn drop_reason(self) -> &'static str {
        match self {
            WriteFailed::Timeout => "write_timeout",
            WriteFailed::Error => "write_error",
        }
    }
}

pub struct Downstream {
    /// Whatever keeps the connection counted (the connection limit's hold): released before
    /// the stream closes (fields drop in order).
    _hold: Box<dyn Send + Sync>,
    stream: Socket,
    write_timeout: Duration,
    /// What the client sent that was read before the stream was taken over: the next read
    /// returns it first.
    ahead: bytes::BytesMut,
}

impl Downstream {
    pub fn new(stream: Socket, hold: Box<dyn Send + Sync>, write_timeout: Duration) -> Downstream {
        Downstream { _hold: hold, stream, write_timeout, ahead: bytes::BytesMut::new() }
    }

    /// The same, with `ahead` (bytes the client sent with its request's head, read already)
    /// to be read first.
    pub fn read_ahead(mut self, ahead: bytes::BytesMut) -> Downstream {
        self.ahead = ahead;
        self
    }

    /// Writes all of `bytes` and flushes them, within `write_timeout`.
    pub async fn write(&mut self, mut bytes: &[u8]) -> Result<(), WriteFailed> {
        // The usual case: the socket takes it all at once, with no future and no timer.
        if let Socket::Tcp(tcp) = &self.stream {
            match tcp.try_write(bytes) {
                Ok(n) if n == bytes.len() => return Ok(()),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Err(WriteFailed::Error),
            }
        }
        let write = async {
            match &mut self.stream {
                Socket::Tcp(tcp) => write_all(tcp, bytes).await,
                Socket::Pingora(stream) => {
                    stream.write_all(bytes).await?;
                    stream.flush().await
                }
            }
        };
        match tokio::time::timeout(self.write_timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(WriteFailed::Error),
            Err(_) => Err(WriteFailed::Timeout),
        }
    }

    /// Writes `parts` one after the other, as [`Downstream::write`] does: on a plain socket in
    /// one gathered write (a chunk's size line, the shared event bytes and its end, with no
    /// copy), else (or for what a full socket did not take) from one buffer.
    pub async fn write_parts<const N: usize>(&mut self, parts: [&[u8]; N]) -> Result<(), WriteFailed> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut written = 0;
        if let Socket::Tcp(tcp) = &self.stream {
            match tcp.try_write_vectored(&parts.map(io::IoSlice::new)) {
                Ok(n) if n == total => return Ok(()),
                Ok(n) => written = n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Err(WriteFailed::Error),
            }
        }
        let mut rest = Vec::with_capacity(total - written);
        for part in parts {
            let skip = written.min(part.len());
            written -= skip;
            rest.extend_from_slice(&part[skip..]);
        }
        self.write(&rest).await
    }

    /// Reads what the client sent into `buf`; 0 when it closed the connection.
    pub async fn read(&mut self, buf: &mut bytes::BytesMut) -> io::Result<usize> {
        if !self.ahead.is_empty() {
            let n = self.ahead.len();
            buf.unsplit(self.ahead.split());
            return Ok(n);
        }
        if buf.capacity() - buf.len() < 256 {
            buf.reserve(256);
        }
        match &mut self.stream {
            Socket::Tcp(tcp) => loop {
                tcp.readable().await?;
                match tcp.try_read_buf(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    read => return read,
                }
            },
            Socket::Pingora(stream) => stream.read_buf(buf).await,
        }
    }

    /// The client's plain TCP socket, when the stream has one, for the topic to write events
    /// to directly.
    pub fn shared_socket(&self) -> Option<Arc<TcpStream>> {
        match &self.stream {
            Socket::Tcp(tcp) => Some(tcp.clone()),
            Socket::Pingora(_) => None,
        }
    }

    /// Ends the connection (FIN after what was written).
    pub async fn close(mut self) {
        let _ = match &mut self.stream {
            Socket::Tcp(tcp) => socket2::SockRef::from(&**tcp).shutdown(std::net::Shutdown::Write),
            Socket::Pingora(stream) => AsyncWriteExt::shutdown(stream).await,
        };
    }
}

/// Writes all of `bytes` to a socket shared with the topic (by reference, as the topic writes).
async fn write_all(tcp: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        tcp.writable().await?;
        match tcp.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
