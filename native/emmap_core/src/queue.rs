//! The persistent FIFO queue of `emmap_queue`: its file format, its operations and the
//! repairs made when a queue file is opened. The Erlang module's documentation is the
//! reference for the format; in short:
//!
//! ```text
//! 0   Size      u32 big-endian: size of the segment (= the file)      } one 64-bit word
//! 4   Head      offset of the oldest message                           }
//! 8   Tail      end of the last committed message                      } one 64-bit word
//! 12  NextTail  end of a message being written (= Tail when none is)   }
//! 16  messages, oldest first: <<Sz:32, Term/binary, 0:Pad/unit:8, Sz:32>>
//! ```
//!
//! where `Term` is the term's external format (encoded and decoded by the caller) and
//! `Sz = len + 8 + (len + 8) rem 8` (the original's padding rule). A push stores NextTail,
//! then the message, then Tail (the commit); a pop stores Head; each store is one aligned
//! 64-bit word, so no field is ever seen half written, and a process killed at any point
//! leaves a file [`Locked::attach`] repairs.
//!
//! Nothing read from the file is trusted: every offset is checked against the header's
//! invariant (`16 <= Head <= Tail <= NextTail <= Size <= file`) and against the mapping
//! before use, and a frame's sizes and term are checked before a pop commits; damage gives
//! [`QueueError::CorruptHeader`], never an access outside the mapping or a panic.
//!
//! One handle's operations are serialised by its [`Queue`] (a mutex taken by queue
//! operations only): [`Queue::lock`] returns the [`Locked`] queue every operation runs on.
//! Terms are bytes here: the caller encodes before a push and decodes in the closures
//! given to [`Locked::take`] and [`Locked::peek`], which run on a private copy of the
//! bytes (never on the mapping, which another process could change mid-decode). A
//! decoder that cannot tell how many bytes a term uses (the VM's decoder and compressed
//! terms) hands back [`Decoded::Unchecked`] bytes; the caller checks them and removes the
//! message with [`Locked::advance`].
//!
//! The format's reads and writes on a region (header words, frames, the commit order) are
//! in `queue/format.rs`; this file holds the errors, the handle and the operations.

use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};

use crate::error::Error;
use crate::growth::{self, Growth};
use crate::mapping::Mapping;
use crate::mem::{self, Fault, Mem};

mod format;

use format::{all_zero, consume, decode_frame, frame_at, frame_before, purge_header, put};
pub use format::{frame_size, Frame, Header};
use format::{read_header, u32_at, valid_header, write_message};

/// Size of the header; the first message starts here.
pub const HDR: u32 = 16;
/// The largest offset (and file size) the format's 32-bit fields can express.
pub const MAX_OFFSET: u64 = u32::MAX as u64;

/// Why a queue operation could not be carried out. Nothing was changed when one is
/// returned (but for [`QueueError::Map`] errors of a growth, which leave the queue as it
/// was and the file perhaps larger).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// The header breaks its invariant, or a frame it points at does not fit or decode.
    CorruptHeader,
    /// The message does not fit and the file may not grow (`fixed_size`, or 4 GiB).
    Full,
    /// The push needs the file to grow and the caller said it may not
    /// ([`Growth::Refused`]): nothing was done.
    NeedsGrowth,
    /// An error of the mapping itself (closed, eacces, alignment, ...).
    Map(Error),
}

impl QueueError {
    /// The atom the Erlang side sees in `{error, Atom}`.
    pub fn atom(&self) -> &'static str {
        match self {
            QueueError::CorruptHeader => "corrupt_header",
            QueueError::Full => "full",
            QueueError::NeedsGrowth => "eagain",
            QueueError::Map(e) => e.atom(),
        }
    }
}

impl From<Error> for QueueError {
    fn from(e: Error) -> QueueError {
        QueueError::Map(e)
    }
}

impl From<Fault> for QueueError {
    fn from(f: Fault) -> QueueError {
        match f {
            Fault::OutOfRange => QueueError::CorruptHeader,
            Fault::Misaligned => QueueError::Map(Error::Alignment),
        }
    }
}

pub type Result<T> = std::result::Result<T, QueueError>;

/// The oldest message and the header it was found with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Front {
    pub header: Header,
    pub frame: Frame,
}

/// What a caller's decoder made of a term's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<T> {
    /// The term, and how many bytes it used: it must fill the frame by the padding rule.
    Term(T, usize),
    /// A value for bytes the decoder cannot check itself (it cannot tell how many bytes
    /// the term uses): nothing is committed, the caller checks it and then removes the
    /// message with [`Locked::advance`].
    Unchecked(T),
}

/// What [`Locked::pop`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Popped<T> {
    /// The queue is empty.
    Empty,
    /// The oldest message is larger than the caller's limit: nothing was done.
    TooLarge,
    /// The oldest message, decoded, and removed unless [`Decoded::Unchecked`].
    Took(Frame, Decoded<T>),
}

/// What [`Locked::advance`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advanced {
    /// Head moved past the message.
    Done,
    /// The message is no longer the oldest one (another pop took it meanwhile): nothing
    /// was changed.
    Moved,
}

/// One handle's queue: what serialises its operations.
#[derive(Debug, Default)]
pub struct Queue {
    lock: Mutex<()>,
}

impl Queue {
    /// The queue in `m`, once no other operation of this handle runs.
    pub fn lock<'a>(&'a self, m: &'a Mapping) -> Locked<'a> {
        Locked {
            m,
            _guard: self.lock.lock(),
        }
    }

    /// Like [`Queue::lock`], waiting at most `wait` for another operation to finish.
    pub fn try_lock_for<'a>(&'a self, m: &'a Mapping, wait: Duration) -> Option<Locked<'a>> {
        let g = self.lock.try_lock_for(wait)?;
        Some(Locked { m, _guard: g })
    }
}

/// The queue of a mapping, with the handle's queue lock held: every operation.
pub struct Locked<'a> {
    m: &'a Mapping,
    _guard: MutexGuard<'a, ()>,
}

impl Locked<'_> {
    fn on<T>(&self, f: impl FnOnce(Mem<'_>) -> Result<T>) -> Result<T> {
        mem::with_mem(self.m, f)
    }

    fn writable(&self) -> Result<()> {
        if self.m.options().write {
            Ok(())
        } else {
            Err(QueueError::Map(Error::Eacces))
        }
    }

    /// The header fields as stored, checked against nothing (`metadata/1`).
    pub fn raw_header(&self) -> Result<Header> {
        self.on(read_header)
    }

    /// The header, if it satisfies the invariant.
    pub fn header(&self) -> Result<Header> {
        self.on(valid_header)
    }

    /// Appends the encoded term `term`: NextTail, the message, then Tail. Grows the file
    /// first if the message does not fit (with [`Growth::Refused`]: answers
    /// [`QueueError::NeedsGrowth`] instead, having done nothing).
    pub fn push(&self, term: &[u8], growth: Growth) -> Result<()> {
        self.writable()?;
        let size = frame_size(term.len()).ok_or(QueueError::Full)?;
        // At most two rounds: the second one follows a growth and finds room.
        for _ in 0..2 {
            let short = self.on(|mem| {
                let h = valid_header(mem)?;
                let end = u64::from(h.tail) + u64::from(size);
                if end > u64::from(h.size) {
                    return Ok(Some((h, end)));
                }
                write_message(mem, h.tail, size, term)?;
                Ok(None)
            })?;
            let Some((h, end)) = short else {
                return Ok(());
            };
            if end > MAX_OFFSET || self.m.options().fixed_size {
                return Err(QueueError::Full);
            }
            if growth == Growth::Refused {
                return Err(QueueError::NeedsGrowth);
            }
            self.grow(h, end)?;
        }
        Err(QueueError::CorruptHeader) // grown, and still no room: the header changed
    }

    /// Grows the file so that the segment reaches `end` (by the growth rule, from the
    /// mapping's size, with no floor: the original queue's sequence) and records the new
    /// size in the header. Returns it.
    fn grow(&self, h: Header, end: u64) -> Result<u32> {
        let o = self.m.options();
        let cur = self.m.size()? as u64;
        let target = growth::target(cur, end, o.max_inc_size, 1)
            .unwrap_or(MAX_OFFSET)
            .min(MAX_OFFSET);
        let new = match self.m.resize(target) {
            Ok(n) => n as u64,
            Err(Error::FixedSize) => return Err(QueueError::Full),
            Err(e) => return Err(e.into()),
        };
        let new = u32::try_from(new.min(MAX_OFFSET)).unwrap_or(u32::MAX);
        self.on(|mem| put(mem, 0, new, h.head))?;
        Ok(new)
    }

    /// The oldest message, `None` if the queue is empty.
    pub fn front(&self) -> Result<Option<Front>> {
        self.on(|mem| {
            let h = valid_header(mem)?;
            if h.head == h.tail {
                return Ok(None);
            }
            let frame = frame_at(mem, h.head, h.tail)?;
            Ok(Some(Front { header: h, frame }))
        })
    }

    /// Decodes the oldest message (`front`, just returned by [`Locked::front`]) and removes
    /// it: Head moves past it, or with `purge` and nothing after it the header is reset to
    /// 16/16/16. Nothing changes if the frame does not decode, nor for a
    /// [`Decoded::Unchecked`] value.
    pub fn take<T>(
        &self,
        front: &Front,
        purge: bool,
        decode: impl FnOnce(&[u8]) -> Option<Decoded<T>>,
    ) -> Result<Decoded<T>> {
        self.writable()?;
        self.on(|mem| {
            if valid_header(mem)? != front.header {
                return Err(QueueError::CorruptHeader); // changed outside our lock
            }
            let d = decode_frame(mem, front.frame, decode)?;
            if let Decoded::Term(..) = d {
                consume(mem, front.header, front.frame, purge)?;
            }
            Ok(d)
        })
    }

    /// [`Locked::front`] and [`Locked::take`] in one look at the mapping: decodes the
    /// oldest message if it is at most `max` bytes (its frame) and removes it as `take`
    /// does. The errors come in the same order as with the two calls: a corrupt header or
    /// frame, then a message over `max`, then a mapping not opened for writing.
    pub fn pop<T>(
        &self,
        purge: bool,
        max: u64,
        decode: impl FnOnce(&[u8]) -> Option<Decoded<T>>,
    ) -> Result<Popped<T>> {
        self.on(|mem| {
            let h = valid_header(mem)?;
            if h.head == h.tail {
                return Ok(Popped::Empty);
            }
            let frame = frame_at(mem, h.head, h.tail)?;
            if u64::from(frame.size) > max {
                return Ok(Popped::TooLarge);
            }
            self.writable()?;
            let d = decode_frame(mem, frame, decode)?;
            if let Decoded::Term(..) = d {
                consume(mem, h, frame, purge)?;
            }
            Ok(Popped::Took(frame, d))
        })
    }

    /// Decodes a message, leaving it where it is.
    pub fn peek<T>(
        &self,
        frame: Frame,
        decode: impl FnOnce(&[u8]) -> Option<Decoded<T>>,
    ) -> Result<Decoded<T>> {
        self.on(|mem| decode_frame(mem, frame, decode))
    }

    /// The message starting at `pos`, which must end at or before `limit`.
    pub fn frame_at(&self, pos: u32, limit: u32) -> Result<Frame> {
        self.on(|mem| frame_at(mem, pos, limit))
    }

    /// The message ending at `end`, which must start at or after `lo`.
    pub fn frame_before(&self, lo: u32, end: u32) -> Result<Frame> {
        self.on(|mem| frame_before(mem, lo, end))
    }

    /// The newest message, `None` if the queue is empty.
    pub fn back(&self) -> Result<Option<Frame>> {
        self.on(|mem| {
            let h = valid_header(mem)?;
            if h.head == h.tail {
                return Ok(None);
            }
            frame_before(mem, h.head, h.tail).map(Some)
        })
    }

    /// Removes the message at `head`, which ends at `next`, if it is still the oldest one
    /// (after a fun ran on it outside the lock): see [`Advanced`].
    pub fn advance(&self, head: u32, next: u32, purge: bool) -> Result<Advanced> {
        self.writable()?;
        self.on(|mem| {
            let h = valid_header(mem)?;
            if h.head != head || h.head == h.tail {
                return Ok(Advanced::Moved);
            }
            let frame = frame_at(mem, h.head, h.tail)?;
            if frame.end() != next {
                return Ok(Advanced::Moved);
            }
            consume(mem, h, frame, purge)?;
            Ok(Advanced::Done)
        })
    }

    /// Counts at most `max` messages from `pos` on, which must end exactly at `end`.
    /// Returns how many and where the next one starts (`end` when done).
    pub fn count(&self, pos: u32, end: u32, max: u64) -> Result<(u64, u32)> {
        self.on(|mem| {
            let (mut pos, mut n) = (pos, 0);
            while pos != end && n < max {
                let avail = end.checked_sub(pos).ok_or(QueueError::CorruptHeader)?;
                let size = u32_at(mem, u64::from(pos))?;
                if size < 8 || size > avail {
                    return Err(QueueError::CorruptHeader);
                }
                pos += size;
                n += 1;
            }
            Ok((n, pos))
        })
    }

    /// If the queue is empty, resets the header to 16/16/16 and answers `true`; else
    /// changes nothing and answers `false`.
    pub fn purge(&self) -> Result<bool> {
        self.writable()?;
        self.on(|mem| {
            let h = valid_header(mem)?;
            if (h.head, h.tail, h.next_tail) == (HDR, HDR, HDR) {
                Ok(true)
            } else if h.head == h.tail {
                purge_header(mem, h.size).map(|_| true)
            } else {
                Ok(false)
            }
        })
    }

    /// Drops every message: the header becomes 16/16/16 with Size the mapping's size,
    /// whatever it held before.
    pub fn erase(&self) -> Result<()> {
        self.writable()?;
        self.on(|mem| purge_header(mem, mem.len().min(MAX_OFFSET) as u32))
    }

    /// Checks the header of a queue file just opened and repairs what an interrupted
    /// operation leaves behind (see the module doc of `emmap_queue`): NextTail ahead of
    /// Tail, Size below the file's size, a purge half done, a header never written.
    pub fn attach(&self) -> Result<()> {
        let info = self.m.info();
        if info.closed {
            return Err(QueueError::Map(Error::Closed));
        }
        let fsize = info.size as u64;
        if fsize > MAX_OFFSET {
            return Err(QueueError::CorruptHeader);
        }
        let h = self.raw_header()?;
        if h == (Header {
            size: 0,
            head: 0,
            tail: 0,
            next_tail: 0,
        }) && !info.exist
        {
            return self.init_header(fsize);
        }
        self.recover(fsize, h)
    }

    fn recover(&self, fsize: u64, h: Header) -> Result<()> {
        let Header {
            size: s,
            head,
            tail: t,
            next_tail: n,
        } = h;
        if t == 0 && n == 0 {
            // Nothing was ever committed: fine if all else is zeros (a header half written).
            let partial = (s == 0 && head == 0) || (u64::from(s) == fsize && head == HDR);
            let zeros = partial && self.on(|mem| all_zero(mem, u64::from(HDR), fsize))?;
            return if zeros {
                self.init_header(fsize)
            } else {
                Err(QueueError::CorruptHeader)
            };
        }
        let ordered = HDR <= t && t <= n && n <= s && u64::from(s) <= fsize;
        if !ordered || head < HDR || head > s {
            return Err(QueueError::CorruptHeader);
        }
        let new_head = if head <= t {
            head
        } else if t == HDR && n == HDR {
            HDR // a purge interrupted between its two stores
        } else {
            return Err(QueueError::CorruptHeader);
        };
        let fsize = fsize as u32;
        self.writable()?;
        self.on(|mem| {
            if n != t {
                put(mem, 8, t, t)?;
            }
            if s != fsize || head != new_head {
                put(mem, 0, fsize, new_head)?;
            }
            Ok(())
        })
    }

    fn init_header(&self, fsize: u64) -> Result<()> {
        if fsize < u64::from(HDR) {
            return Err(QueueError::CorruptHeader);
        }
        self.writable()?;
        self.on(|mem| {
            put(mem, 0, fsize as u32, HDR)?;
            put(mem, 8, HDR, HDR)
        })
    }
}

#[cfg(test)]
mod tests;
