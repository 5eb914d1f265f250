//! Reads and writes: `pread`, `pwrite`, `read`, `read_line`, `write`, `position` and the
//! indirect read `ipread` (`emmap:ipread_s32bu_p32bu/3`).
//!
//! Answers are bare (`Bin`, `eof`, `ok`, a position, `{error, Reason}`); `emmap.erl`
//! adds the `{ok, _}`. A `pread` copy longer than `schedule::DIRTY_BYTES` is made in
//! slices on the caller's scheduler (`copy.rs`); other copies that long move to a dirty
//! I/O scheduler before anything is read or written; `direct` reads of any length are O(1)
//! and never move.

use emmap_core::{Line, Whence};

use crate::resource::{handle, Handle};
use crate::schedule::{nif, On, DIRTY_BYTES};
use crate::term::{self, atom, Answer, Env, Int, Stop, Term};
use crate::{atoms, copy};

/// `bytes` of `h`'s mapping as the binary a read answers, or `None` when copying them
/// is too much work for this scheduler.
///
/// # Safety
/// As for `Handle::binary`.
#[inline(always)]
unsafe fn read_binary(env: Env<'_>, h: &Handle, on: On, bytes: &[u8]) -> Option<Term> {
    if !h.mapping.options().direct && on.may_touch(bytes.len() as u64).is_err() {
        return None;
    }
    // SAFETY: per this function's contract.
    Some(unsafe { h.binary(env, bytes) })
}

/// What a read answers: its binary, `eof`, or a move to a dirty scheduler.
#[inline(always)]
fn read_answer(r: Option<Option<Term>>) -> Result<Term, Stop> {
    match r {
        Some(Some(t)) => Ok(t),
        Some(None) => Err(Stop::Dirty),
        None => Ok(atom(atoms::eof())),
    }
}

// `pread(R, Pos, Len)`: up to `Len` bytes at `Pos`. A negative position is `einval`, one
// past 2^64 - 1 is `eof`; a length past 2^64 - 1 reads to the end, a negative one is
// `badarg`, answered as `{'$emmap_badarg', R, Pos, Len}` (`emmap:pread/3` raises it).
nif!(normal "pread", pread, 3, badarg_answered, |env, a, on| {
    let h = handle(env, a[0])?;
    let pos = term::int(env, a[1])?;
    let len = term::int(env, a[2])?.len()?;
    let pos = match pos {
        Int::Fits(p) => p,
        Int::Neg => return Err(Stop::Error(emmap_core::Error::Einval)),
        Int::Over => return Ok(atom(atoms::eof())),
    };
    if h.mapping.options().direct {
        return match h.mapping.pread_direct(pos, len)? {
            // SAFETY: the mapping is direct, and `pread_direct` marked it exported: the
            // bytes stay mapped while the handle lives, and the resource binary keeps it
            // alive.
            Some((p, n)) => Ok(unsafe { h.direct_binary(env, p, n) }),
            None => Ok(atom(atoms::eof())),
        };
    }
    if len > DIRTY_BYTES as u64 && on.is_normal() {
        // A long copy: in slices, on this scheduler (`copy.rs`).
        return match h.mapping.read_range(pos, len)? {
            None => Ok(atom(atoms::eof())),
            Some((s, e)) if e - s > DIRTY_BYTES => copy::start(env, a[0], h, s, e),
            Some(_) => pread_now(env, h, on, pos, len),
        };
    }
    pread_now(env, h, on, pos, len)
});

/// `pread` in one piece: a copy short enough for this scheduler (`direct` reads are
/// answered before).
#[inline(always)]
fn pread_now(env: Env<'_>, h: &Handle, on: On, pos: u64, len: u64) -> Answer {
    // SAFETY: bytes from `Mapping::pread` stay mapped while the handle lives in direct
    // mode (it marks the mapping exported).
    let r = h
        .mapping
        .pread(pos, len, |b| unsafe { read_binary(env, h, on, b) })?;
    read_answer(r)
}

// `pwrite(R, Pos, Bin)`: `ok`; `einval` for a position outside 0..2^64-1. `badarg` is
// answered as `{'$emmap_badarg', R, Pos, Bin}` (`emmap:pwrite/3` raises it).
nif!(normal "pwrite", pwrite, 3, badarg_answered, |env, a, on| {
    let h = handle(env, a[0])?;
    let pos = term::int(env, a[1])?;
    let data = term::bin(env, a[2])?;
    let pos = pos.or_einval()?;
    on.may_touch(data.len() as u64)?;
    h.mapping.pwrite(pos, data)?;
    Ok(atom(atoms::ok()))
});

// `read(R, Len)`: up to `Len` bytes at the handle's position, which moves past them.
// `Len = 0` answers an empty binary (or the handle's error).
nif!(normal "read", read, 2, |env, a, on| {
    let h = handle(env, a[0])?;
    let len = term::int(env, a[1])?.len()?;
    let m = &h.mapping;
    if len == 0 {
        m.position(Whence::Cur, 0)?;
        return Ok(term::copy(env, &[]));
    }
    // The position moves before the bytes are seen: decide on the length asked for.
    if !m.options().direct {
        on.may_touch(len)?;
    }
    // SAFETY: as in `pread`.
    let r = m.read(len, |b| unsafe { read_binary(env, h, On::DirtyIo, b) })?;
    read_answer(r)
});

// `read_line(R)`: the line at the handle's position (`\r\n` answered as `\n`). A normal
// scheduler looks `DIRTY_BYTES` ahead for the newline, a dirty one as far as it takes.
nif!(normal "read_line", read_line, 1, |env, a, on| {
    let h = handle(env, a[0])?;
    let limit = if on.is_normal() {
        crate::schedule::DIRTY_BYTES
    } else {
        usize::MAX
    };
    let r = h.mapping.read_line(limit, |line, crlf| {
        if crlf {
            let n = line.len() - 1;
            let (t, dst) = term::new_binary(env, n);
            dst[..n - 1].copy_from_slice(&line[..n - 1]);
            dst[n - 1] = b'\n';
            t
        } else {
            // SAFETY: as in `pread` (`read_line` marks the mapping exported too).
            unsafe { h.binary(env, line) }
        }
    })?;
    match r {
        Line::Found(t) => Ok(t),
        Line::Eof => Ok(atom(atoms::eof())),
        Line::TooLong => Err(Stop::Dirty),
    }
});

// `write(R, Bin)`: `ok`, all of it at the handle's position, which moves past it.
nif!(normal "write", write, 2, |env, a, on| {
    let h = handle(env, a[0])?;
    let data = term::bin(env, a[1])?;
    on.may_touch(data.len() as u64)?;
    h.mapping.write(data)?;
    Ok(atom(atoms::ok()))
});

/// A location of `position/2`: an integer, `bof`, `cur`, `eof` or `{bof | cur | eof,
/// Offset}`; an offset outside the signed 64-bit range is `einval`.
fn location(env: Env<'_>, t: Term) -> Result<(Whence, i64), Stop> {
    let whence = |w: Term| {
        if w == atom(atoms::bof()) {
            Ok(Whence::Bof)
        } else if w == atom(atoms::cur()) {
            Ok(Whence::Cur)
        } else if w == atom(atoms::eof()) {
            Ok(Whence::Eof)
        } else {
            Err(Stop::Badarg)
        }
    };
    if let Ok(w) = whence(t) {
        return Ok((w, 0));
    }
    if let Ok(items) = term::tuple_items(env, t) {
        let [w, d] = items else {
            return Err(Stop::Badarg);
        };
        let w = whence(*w)?;
        return Ok((w, term::offset(env, *d)?));
    }
    Ok((Whence::Bof, term::offset(env, t)?))
}

// `position(R, Location)`: the new position.
nif!(normal "position", position, 2, |env, a, _on| {
    let h = handle(env, a[0])?;
    let (whence, delta) = location(env, a[1])?;
    Ok(term::uint(env, h.mapping.position(whence, delta)?))
});

// `ipread(R, Pos, Max)`: the indirect read `dets` uses. A 32-bit big-endian size and a
// 32-bit big-endian pointer at `Pos`, then `Size` bytes at the pointer:
// `{Size, Pointer, Bin | eof}`, or `eof` when the header is not all there or
// `Size > Max`. `Max` at or past 2^31 is `einval`; `Pos` is taken as `pread` takes it.
nif!(normal "ipread", ipread, 3, |env, a, on| {
    let h = handle(env, a[0])?;
    let pos = term::int(env, a[1])?;
    let max = match term::int(env, a[2])? {
        Int::Fits(v) if v < 1 << 31 => v as i64,
        Int::Neg => -1,
        _ => return Err(Stop::Error(emmap_core::Error::Einval)),
    };
    let pos = match pos {
        Int::Fits(p) => p,
        Int::Neg => return Err(Stop::Error(emmap_core::Error::Einval)),
        Int::Over => return Ok(atom(atoms::eof())),
    };
    let m = &h.mapping;
    let mut header = [0u8; 8];
    let got = m.pread(pos, 8, |b| {
        header[..b.len()].copy_from_slice(b);
        b.len()
    })?;
    if got != Some(8) {
        return Ok(atom(atoms::eof()));
    }
    let size = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    let ptr = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    if i64::from(size) > max {
        return Ok(atom(atoms::eof()));
    }
    let data = if size == 0 {
        atom(atoms::eof())
    } else {
        // SAFETY: as in `pread`.
        let r = m.pread(u64::from(ptr), u64::from(size), |b| unsafe {
            read_binary(env, h, on, b)
        })?;
        read_answer(r)?
    };
    let (size, ptr) = (term::uint(env, u64::from(size)), term::uint(env, u64::from(ptr)));
    Ok(term::tuple(env, &[size, ptr, data]))
});
