//! Socket options and queries the standard library does not offer: the
//! send-buffer cap and the kernel's send-queue length.

use std::io;
use std::os::fd::AsRawFd;

use mio::net::TcpStream;

/// Caps the kernel's send buffer of a client socket at `bytes` (Linux
/// doubles the value for its bookkeeping, and stops autotuning it). Kernel
/// memory per client is then bounded, and epoll reports the socket writable
/// after a reader has taken a third of that, not of megabytes.
pub fn cap_send_buffer(stream: &TcpStream, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt on a descriptor the stream owns, with a pointer to
    // a live c_int and its exact size.
    let result = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Bytes in the kernel's send queue that the peer has not acknowledged
/// (`SIOCOUTQ`, which is `TIOCOUTQ` on Linux). When it shrinks, the peer is
/// reading, however slowly.
pub fn kernel_send_queue(stream: &TcpStream) -> io::Result<usize> {
    let mut queued: libc::c_int = 0;
    // SAFETY: the ioctl writes one c_int through a pointer to a live one,
    // on a descriptor the stream owns.
    let result = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    if result == 0 {
        usize::try_from(queued).map_err(|_| io::ErrorKind::InvalidData.into())
    } else {
        Err(io::Error::last_os_error())
    }
}
