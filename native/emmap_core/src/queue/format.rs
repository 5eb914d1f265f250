//! The file format on a region: the header words, the frames, and the reads and writes
//! every queue operation is made of. Nothing here locks; [`super::Locked`] does.

use std::mem::MaybeUninit;
use std::ptr;
use std::sync::atomic::Ordering;

use super::{Decoded, QueueError, Result, HDR};
use crate::mem::Mem;

/// Frames up to this size are copied out to the stack before decoding (a 4 KiB term's
/// frame fits; scheduler threads have stacks of hundreds of KiB), larger ones to the heap.
const STACK_COPY: usize = 8192;
/// Chunk in which `attach` checks that a file holds nothing but zeros.
const ZERO_CHUNK: u64 = 1 << 20;

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

/// The header as stored (unchecked).
pub(super) fn read_header(mem: Mem<'_>) -> Result<Header> {
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
pub(super) fn valid_header(mem: Mem<'_>) -> Result<Header> {
    let h = read_header(mem)?;
    if h.valid(mem.len()) {
        Ok(h)
    } else {
        Err(QueueError::CorruptHeader)
    }
}

/// Stores the two fields of header word `off` (0: Size and Head, 8: Tail and NextTail) as
/// one aligned 64-bit store, ordered after every store before it.
pub(super) fn put(mem: Mem<'_>, off: u64, a: u32, b: u32) -> Result<()> {
    mem.atomic(off)?.store(join(a, b), Ordering::Release);
    Ok(())
}

pub(super) fn u32_at(mem: Mem<'_>, off: u64) -> Result<u32> {
    let mut b = [0u8; 4];
    mem.read_into(off, &mut b)?;
    Ok(u32::from_be_bytes(b))
}

/// The message starting at `pos`, which must end at or before `limit`.
pub(super) fn frame_at(mem: Mem<'_>, pos: u32, limit: u32) -> Result<Frame> {
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
pub(super) fn frame_before(mem: Mem<'_>, lo: u32, end: u32) -> Result<Frame> {
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
        // Not zeroed first: only the `n` bytes copied in are ever looked at.
        let mut buf = MaybeUninit::<[u8; STACK_COPY]>::uninit();
        let src = mem.ptr_at(off, n as u64)?;
        // SAFETY: `src` is `n` readable bytes of the region (range-checked just above);
        // `buf` is private stack memory of `STACK_COPY >= n` bytes, so they do not overlap.
        // After the copy its first `n` bytes are initialised, and only they are read.
        let bytes = unsafe {
            ptr::copy_nonoverlapping(src, buf.as_mut_ptr().cast::<u8>(), n);
            std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n)
        };
        f(bytes)
    } else {
        let src = mem.ptr_at(off, n as u64)?;
        let mut buf = Vec::<u8>::with_capacity(n);
        // SAFETY: `src` is `n` readable bytes of the region (range-checked just above);
        // `buf` is a new allocation of at least `n` bytes, so they do not overlap; the
        // copy initialises its first `n` bytes before the length says so.
        unsafe {
            ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), n);
            buf.set_len(n);
        }
        f(&buf)
    }
}

/// Decodes the frame: `decode` gets the bytes between the two sizes (term and padding);
/// the trailing size must equal the leading one and a decoded term must fill the frame by
/// the padding rule.
pub(super) fn decode_frame<T>(
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
pub(super) fn write_message(mem: Mem<'_>, tail: u32, size: u32, term: &[u8]) -> Result<()> {
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
pub(super) fn purge_header(mem: Mem<'_>, size: u32) -> Result<()> {
    put(mem, 8, HDR, HDR)?;
    put(mem, 0, size, HDR)
}

/// Moves Head past `frame` (the oldest message, found with header `h`), purging when
/// that empties the queue and `purge` is asked for.
pub(super) fn consume(mem: Mem<'_>, h: Header, frame: Frame, purge: bool) -> Result<()> {
    let next = frame.end();
    if purge && next == h.tail && h.tail == h.next_tail {
        purge_header(mem, h.size)
    } else {
        put(mem, 0, h.size, next)
    }
}

pub(super) fn all_zero(mem: Mem<'_>, from: u64, to: u64) -> Result<bool> {
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
