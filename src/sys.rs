//! The system calls libc alone offers: the crate's one place with `unsafe` (the crate denies it
//! everywhere else). Each call's safety argument is beside it.
//!
//! Most are calls on the descriptor of a socket that a live pingora stream owns. Pingora's L4
//! streams (and our wrappers around them) report their socket's descriptor as their unique id;
//! each function here borrows the stream that owns the descriptor for the whole call, so the
//! descriptor is open and names that socket throughout.

// The one place the crate allows `unsafe` (Cargo.toml's `[lints]` denies it everywhere else).
#![allow(unsafe_code)]

use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Stream;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

/// What waits on a socket, looked at without consuming it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    /// Nothing to read: the peer has said nothing since.
    Nothing,
    /// Bytes wait to be read.
    Data,
    /// The peer closed the connection (or it is broken, or this is not a socket).
    Closed,
}

/// Asks the kernel what waits on `stream`'s socket. Tokio's idea of readiness lags behind the
/// kernel (bytes that arrived since its reactor last ran are unknown to it), so a reuse check
/// made through the stream can miss what this sees.
pub fn pending(stream: &Stream) -> Pending {
    pending_fd(stream.id())
}

/// [`pending`] for a descriptor pingora hands over on its own (`connected_to_upstream`), while
/// it holds the stream. A peek reads no memory but its own buffer, so even a wrong number
/// could only give a wrong answer (`EBADF`, `ENOTSOCK`: reported as closed), never harm.
pub fn pending_fd(fd: RawFd) -> Pending {
    if fd < 0 {
        return Pending::Closed;
    }
    let mut byte = 0u8;
    // SAFETY: recv writes at most one byte into `byte`, which lives across the call; MSG_PEEK
    // leaves the data in the socket and MSG_DONTWAIT makes the call return at once.
    let n = unsafe { libc::recv(fd, (&mut byte as *mut u8).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    match n {
        1.. => Pending::Data,
        0 => Pending::Closed,
        _ => match std::io::Error::last_os_error().kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => Pending::Nothing,
            _ => Pending::Closed,
        },
    }
}

/// A plain std socket on a duplicate of `stream`'s descriptor, if it is a connected TCP socket.
/// The duplicate stays open when `stream` is dropped.
///
/// `stream` is pingora's plain transport stream, by type: never a TLS stream (pingora's TLS
/// streams are another type, whose `id()` is the TCP descriptor under the TLS layer), so what
/// is written to the duplicate is what the peer was meant to read in plain.
pub fn duplicate_tcp(stream: &L4Stream) -> Option<std::net::TcpStream> {
    let fd = stream.as_raw_fd();
    if fd < 0 {
        return None;
    }
    // SAFETY: the descriptor belongs to `stream`, which is borrowed (so open) for as long as
    // `borrowed` lives; the duplicate is a new descriptor with its own lifetime.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let std = std::net::TcpStream::from(borrowed.try_clone_to_owned().ok()?);
    // Anything but a connected TCP socket (a Unix socket, say) has no TCP peer address.
    std.peer_addr().is_ok().then_some(std)
}

/// Raises this process's soft open-files limit to its hard limit, as servers that hold one
/// descriptor per client do (Go's runtime does it for every program). Returns the limit now
/// in force, if it could be read.
pub fn raise_open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit struct into `limit`, which lives across the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: setrlimit only reads `raised`, which lives across the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    Some(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn peeking_sees_data_and_close_without_consuming() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let fd = client.as_raw_fd();
        assert_eq!(pending_fd(fd), Pending::Nothing);
        server.write_all(b"x").unwrap();
        let seen = (0..100).map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(5));
            pending_fd(fd)
        });
        assert!(seen.into_iter().any(|p| p == Pending::Data));
        assert_eq!(pending_fd(fd), Pending::Data, "peeking leaves the byte in place");
        drop(server);
        assert_eq!(pending_fd(-1), Pending::Closed);
    }
}
