//! The shared region's descriptor: created anonymous and sealed, and passed over the socket.
//!
//! On Linux the server creates the region with `memfd_create`, sizes it, and seals it against
//! shrinking and growing, then against new seals (`F_SEAL_SHRINK | F_SEAL_GROW`, then
//! `F_SEAL_SEAL`): a peer holding the descriptor can write the rings (it must) but can never
//! make the mapping shorter than the file, which would turn this side's next access into a
//! bus error. The descriptor travels over the Unix socket (`SCM_RIGHTS`), so nothing is left
//! on a file system, and a client checks the seals before it maps what a server sent it.
//!
//! Elsewhere (no memfd seals) the region is a file created in [`ShmConfig::dir`] and unlinked
//! at once, passed the same way; a hostile peer there can truncate it, so shared memory is
//! for trusted peers only on such systems.
//!
//! [`ShmConfig::dir`]: crate::ShmConfig::dir

use std::{fs::File, io, path::Path};

#[cfg(any(feature = "tokio", feature = "smol"))]
pub(crate) use self::socket::{recv_with_fds, send_with_fd};

/// A fresh region of `len` bytes, zeroed, sealed against resizing where the system can.
/// `dir` is where systems without memfd seals create (and at once remove) its file.
pub(crate) fn create(len: usize, dir: &Path) -> io::Result<File> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let _ = dir;
        use rustix::fs::{MemfdFlags, SealFlags};
        let fd = rustix::fs::memfd_create(
            "flumen-shm",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )?;
        rustix::fs::ftruncate(&fd, len as u64)?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW)?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SEAL)?;
        Ok(File::from(fd))
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join(format!(
            "flumen-shm-{}-{:016x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        std::fs::remove_file(&path)?;
        file.set_len(len as u64)?;
        Ok(file)
    }
}

/// Checks that a region a peer sent cannot be resized under this side's mapping: both
/// resizing seals are set (on systems with memfd seals; elsewhere there is nothing to check).
pub(crate) fn check_sealed(file: &File) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use rustix::fs::SealFlags;
        let seals = rustix::fs::fcntl_get_seals(file).map_err(|_| unsealed())?;
        if !seals.contains(SealFlags::SHRINK | SealFlags::GROW) {
            return Err(unsealed());
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = file;
    Ok(())
}

fn unsealed() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "shared memory region not sealed against resizing",
    )
}

/// Descriptor passing on the socket (the runtimes' bells use it).
#[cfg(any(feature = "tokio", feature = "smol"))]
mod socket {
    use std::{
        io::{self, IoSlice, IoSliceMut},
        mem::MaybeUninit,
        os::fd::{BorrowedFd, OwnedFd},
    };

    use rustix::net::{
        RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
        SendAncillaryMessage, SendFlags,
    };

    /// The most descriptors one message may carry before the rest are refused: the handshake
    /// passes one; room for a few more lets a peer that sends extra be told apart (and their
    /// descriptors closed) rather than have the kernel drop them silently.
    const MAX_FDS: usize = 4;

    /// Sends `buf` with `fd` attached (`SCM_RIGHTS`) on `socket`, without waiting: the bytes
    /// written (at least one carries the descriptor), or `WouldBlock`.
    pub(crate) fn send_with_fd(
        socket: BorrowedFd<'_>,
        buf: &[u8],
        fd: BorrowedFd<'_>,
    ) -> io::Result<usize> {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut ancillary = SendAncillaryBuffer::new(&mut space);
        let fds = [fd];
        if !ancillary.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(io::Error::other("no room for a descriptor"));
        }
        Ok(rustix::net::sendmsg(
            socket,
            &[IoSlice::new(buf)],
            &mut ancillary,
            SendFlags::NOSIGNAL,
        )?)
    }

    /// Receives into `buf` on `socket`, without waiting, adding the descriptors that came with
    /// the bytes to `fds` (marked close-on-exec; closed when dropped): the bytes read (0 at the
    /// end), or `WouldBlock`.
    pub(crate) fn recv_with_fds(
        socket: BorrowedFd<'_>,
        buf: &mut [u8],
        fds: &mut Vec<OwnedFd>,
    ) -> io::Result<usize> {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut ancillary = RecvAncillaryBuffer::new(&mut space);
        let received = rustix::net::recvmsg(
            socket,
            &mut [IoSliceMut::new(buf)],
            &mut ancillary,
            RecvFlags::CMSG_CLOEXEC,
        )?;
        for message in ancillary.drain() {
            if let RecvAncillaryMessage::ScmRights(passed) = message {
                fds.extend(passed);
            }
        }
        if received.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the peer passed more descriptors than the handshake has",
            ));
        }
        Ok(received.bytes)
    }
}
