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

use std::sync::atomic::Ordering;
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};

use crate::error::Error;
use crate::growth::{self, Growth};
use crate::mapping::Mapping;
use crate::mem::{self, Fault, Mem};

/// Size of the header; the first message starts here.
pub const HDR: u32 = 16;
/// The largest offset (and file size) the format's 32-bit fields can express.
pub const MAX_OFFSET: u64 = u32::MAX as u64;
/// Frames up to this size are copied out to the stack before decoding.
const STACK_COPY: usize = 512;
/// Chunk in which `attach` checks that a file holds nothing but zeros.
const ZERO_CHUNK: u64 = 1 << 20;

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

/// The four header fields, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub size: u32,
    pub head: u32,
    pub tail: u32,
    pub next_tail: u32,
}

impl Header {
    /// The format's invariant, and the segment inside the mapping.
    fn valid(&self, mapped: u64) -> bool {
        HDR <= self.head
            && self.head <= self.tail
            && self.tail <= self.next_tail
            && self.next_tail <= self.size
            && u64::from(self.size) <= mapped
    }
}

/// A message in the file: where it starts and its whole size (`Sz`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub start: u32,
    pub size: u32,
}

impl Frame {
    /// Where the next message starts.
    pub fn end(&self) -> u32 {
        self.start + self.size
    }
}

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

/// What [`Locked::advance`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advanced {
    /// Head moved past the message.
    Done,
    /// The message is no longer the oldest one (another pop took it meanwhile): nothing
    /// was changed.
    Moved,
}

/// The size of the frame of an encoded term of `len` bytes (the original's padding rule:
/// frames are not always a multiple of 8), if the format can hold it.
pub fn frame_size(len: usize) -> Option<u32> {
    let sz0 = (len as u64).checked_add(8)?;
    u32::try_from(sz0 + sz0 % 8).ok()
}

/// Whether a term of `used` bytes fills a frame of `size` bytes.
fn fills(used: usize, size: u32) -> bool {
    frame_size(used) == Some(size)
}

fn split(w: u64) -> (u32, u32) {
    let b = w.to_ne_bytes();
    (
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
    )
}

fn join(a: u32, b: u32) -> u64 {
    let (a, b) = (a.to_be_bytes(), b.to_be_bytes());
    u64::from_ne_bytes([a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]])
}

// ------------------------------------------------------------------------------ on a region

/// The header as stored (unchecked).
fn read_header(mem: Mem<'_>) -> Result<Header> {
    let [w0, w1] = mem.words::<2>(0)?;
    let ((size, head), (tail, next_tail)) = (split(w0), split(w1));
    Ok(Header {
        size,
        head,
        tail,
        next_tail,
    })
}

/// The header, if it satisfies the invariant.
fn valid_header(mem: Mem<'_>) -> Result<Header> {
    let h = read_header(mem)?;
    if h.valid(mem.len()) {
        Ok(h)
    } else {
        Err(QueueError::CorruptHeader)
    }
}

/// Stores the two fields of header word `off` (0: Size and Head, 8: Tail and NextTail) as
/// one aligned 64-bit store, ordered after every store before it.
fn put(mem: Mem<'_>, off: u64, a: u32, b: u32) -> Result<()> {
    mem.atomic(off)?.store(join(a, b), Ordering::Release);
    Ok(())
}

fn u32_at(mem: Mem<'_>, off: u64) -> Result<u32> {
    let mut b = [0u8; 4];
    mem.read_into(off, &mut b)?;
    Ok(u32::from_be_bytes(b))
}

/// The message starting at `pos`, which must end at or before `limit`.
fn frame_at(mem: Mem<'_>, pos: u32, limit: u32) -> Result<Frame> {
    let avail = limit.checked_sub(pos).ok_or(QueueError::CorruptHeader)?;
    if avail < 8 {
        return Err(QueueError::CorruptHeader);
    }
    let size = u32_at(mem, u64::from(pos))?;
    if size < 8 || size > avail || u64::from(pos) + u64::from(size) > mem.len() {
        return Err(QueueError::CorruptHeader);
    }
    Ok(Frame { start: pos, size })
}

/// The message ending at `end`, which must start at or after `lo`.
fn frame_before(mem: Mem<'_>, lo: u32, end: u32) -> Result<Frame> {
    let avail = end.checked_sub(lo).ok_or(QueueError::CorruptHeader)?;
    if avail < 8 {
        return Err(QueueError::CorruptHeader);
    }
    let size = u32_at(mem, u64::from(end) - 4)?;
    if size < 8 || size > avail {
        return Err(QueueError::CorruptHeader);
    }
    let f = frame_at(mem, end - size, end)?;
    if f.size != size {
        return Err(QueueError::CorruptHeader);
    }
    Ok(f)
}

/// Copies the frame's bytes after its leading size (term, padding, trailing size) out of
/// the mapping and runs `f` on the copy.
fn with_copy<T>(mem: Mem<'_>, frame: Frame, f: impl FnOnce(&[u8]) -> Result<T>) -> Result<T> {
    let n = frame.size as usize - 4;
    let off = u64::from(frame.start) + 4;
    if n <= STACK_COPY {
        let mut buf = [0u8; STACK_COPY];
        mem.read_into(off, &mut buf[..n])?;
        f(&buf[..n])
    } else {
        let mut buf = vec![0u8; n];
        mem.read_into(off, &mut buf)?;
        f(&buf)
    }
}

/// Decodes the frame: `decode` gets the bytes between the two sizes (term and padding);
/// the trailing size must equal the leading one and a decoded term must fill the frame by
/// the padding rule.
fn decode_frame<T>(
    mem: Mem<'_>,
    frame: Frame,
    decode: impl FnOnce(&[u8]) -> Option<Decoded<T>>,
) -> Result<Decoded<T>> {
    with_copy(mem, frame, |body| {
        let (term, trailer) = body.split_at(body.len() - 4);
        if trailer != frame.size.to_be_bytes() {
            return Err(QueueError::CorruptHeader);
        }
        match decode(term) {
            Some(Decoded::Term(t, used)) if fills(used, frame.size) => Ok(Decoded::Term(t, used)),
            Some(Decoded::Unchecked(t)) => Ok(Decoded::Unchecked(t)),
            _ => Err(QueueError::CorruptHeader),
        }
    })
}

/// Writes a message of `size` bytes holding `term` at `tail` and commits it: NextTail,
/// the message, then Tail. Writes nothing unless all of it lies inside the mapping.
fn write_message(mem: Mem<'_>, tail: u32, size: u32, term: &[u8]) -> Result<()> {
    let (t, end) = (u64::from(tail), u64::from(tail) + u64::from(size));
    mem.bytes(t, u64::from(size))?;
    let pad = u64::from(size) - 8 - term.len() as u64;
    // NextTail, ordered before the message by the swap's acquire half (a release store
    // alone would let the message's stores move above it).
    mem.atomic(8)?
        .swap(join(tail, end as u32), Ordering::AcqRel);
    mem.write(t, &size.to_be_bytes())?;
    mem.write(t + 4, term)?;
    mem.zero(t + 4 + term.len() as u64, pad)?;
    mem.write(end - 4, &size.to_be_bytes())?;
    put(mem, 8, end as u32, end as u32)
}

/// Tail and NextTail first, then Head: an interruption in between leaves
/// `Tail = NextTail = 16 < Head`, which `attach` recognises.
fn purge_header(mem: Mem<'_>, size: u32) -> Result<()> {
    put(mem, 8, HDR, HDR)?;
    put(mem, 0, size, HDR)
}

/// Moves Head past `frame` (the oldest message, found with header `h`), purging when
/// that empties the queue and `purge` is asked for.
fn consume(mem: Mem<'_>, h: Header, frame: Frame, purge: bool) -> Result<()> {
    let next = frame.end();
    if purge && next == h.tail && h.tail == h.next_tail {
        purge_header(mem, h.size)
    } else {
        put(mem, 0, h.size, next)
    }
}

fn all_zero(mem: Mem<'_>, from: u64, to: u64) -> Result<bool> {
    let mut pos = from;
    while pos < to {
        let n = (to - pos).min(ZERO_CHUNK);
        if mem.bytes(pos, n)?.iter().any(|&b| b != 0) {
            return Ok(false);
        }
        pos += n;
    }
    Ok(true)
}

// ------------------------------------------------------------------------------ the handle

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
