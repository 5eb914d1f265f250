//! Errors the core reports. Each maps to one Erlang atom (see [`Error::atom`]).

use std::fmt;
use std::io;

/// Why a request could not be carried out. Nothing was changed when one is returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The handle was closed.
    Closed,
    /// Offset, length or option combination outside what the mapping allows.
    Einval,
    /// Write on a read-only mapping, or a file opened without permission.
    Eacces,
    /// An atomic operation on an address that is not 8-byte aligned.
    Alignment,
    /// Resize of a mapping opened with `fixed_size`.
    FixedSize,
    /// The requested fixed address is already in use.
    Eexist,
    /// The bytes the call touched are gone: someone else cut the mapped file shorter.
    Truncated,
    /// Any other operating-system error, by errno.
    Os(i32),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The atom name the Erlang side sees.
    pub fn atom(&self) -> &'static str {
        match self {
            Error::Closed => "closed",
            Error::Einval => "einval",
            Error::Eacces => "eacces",
            Error::Alignment => "alignment",
            Error::FixedSize => "fixed_size",
            Error::Eexist => "eexist",
            Error::Truncated => "truncated",
            Error::Os(errno) => errno_atom(*errno),
        }
    }

    /// The error of the last failed libc call.
    pub fn last_os() -> Error {
        Error::from_errno(
            io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        )
    }

    pub fn from_errno(errno: i32) -> Error {
        match errno {
            libc::EINVAL => Error::Einval,
            libc::EACCES | libc::EPERM => Error::Eacces,
            libc::EEXIST => Error::Eexist,
            e => Error::Os(e),
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::from_errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.atom())
    }
}

impl std::error::Error for Error {}

/// POSIX names, lower-cased as Erlang's `file` module reports them.
fn errno_atom(errno: i32) -> &'static str {
    match errno {
        libc::ENOENT => "enoent",
        libc::ENOMEM => "enomem",
        libc::EBADF => "ebadf",
        libc::EBUSY => "ebusy",
        libc::EISDIR => "eisdir",
        libc::ENOTDIR => "enotdir",
        libc::ENODEV => "enodev",
        libc::ENOSPC => "enospc",
        libc::EFBIG => "efbig",
        libc::EMFILE => "emfile",
        libc::ENFILE => "enfile",
        libc::EROFS => "erofs",
        libc::ETXTBSY => "etxtbsy",
        libc::EAGAIN => "eagain",
        libc::EOVERFLOW => "eoverflow",
        libc::ENAMETOOLONG => "enametoolong",
        libc::ELOOP => "eloop",
        libc::EOPNOTSUPP => "eopnotsupp",
        libc::EIO => "eio",
        libc::EINTR => "eintr",
        libc::EFAULT => "efault",
        libc::ENXIO => "enxio",
        libc::EDQUOT => "edquot",
        libc::EINVAL => "einval",
        libc::EACCES => "eacces",
        libc::EPERM => "eperm",
        libc::EEXIST => "eexist",
        _ => "eunknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_maps_to_erlang_names() {
        assert_eq!(Error::from_errno(libc::ENOENT).atom(), "enoent");
        assert_eq!(Error::from_errno(libc::EACCES).atom(), "eacces");
        assert_eq!(Error::from_errno(libc::EEXIST), Error::Eexist);
        assert_eq!(Error::Os(9999).atom(), "eunknown");
    }
}
