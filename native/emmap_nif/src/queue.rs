//! NIFs behind `emmap_queue.erl`: one per queue operation, each under the handle's queue
//! lock (`emmap_core::queue::Queue`), so that several processes may use one handle.
//!
//! Terms cross as the external term format: a push gets the binary `term_to_binary/2`
//! made in Erlang (so that the bytes are exactly that function's, at any compression
//! level), and a pop or peek decodes with `enif_binary_to_term` from a private copy of
//! the frame, checking that the term fills the frame before anything is committed.
//!
//! Scheduling (`schedule.rs`): a call runs on the caller's normal scheduler unless it must
//! copy more than `DIRTY_COPY` bytes, grow the file, or wait for the lock more than
//! `LOCK_WAIT` (another process's long operation on the same handle): then it moves to a
//! dirty I/O scheduler, where waiting and long copies are fine.

use std::time::Duration;

use emmap_core::queue::{Advanced, Decoded, Frame, Locked, QueueError};
use rustler::sys::{enif_binary_to_term, ErlNifTerm};

use crate::raw::{self, get_bin, get_bool, get_u64, Raw};
use crate::resource::{self, Handle};
use crate::schedule::{nif, On, Step};
use crate::{atoms, DIRTY_COPY};

/// How long a normal scheduler waits for the queue lock before moving to a dirty one.
const LOCK_WAIT: Duration = Duration::from_micros(50);
/// Messages one `queue_count_nif` call walks at most (a 4-byte load each).
const COUNT_STEP: u64 = 65_536;

/// The handle's queue, locked; `None` on a normal scheduler when it is busy for longer.
fn lock(h: &Handle, on: On) -> Option<Locked<'_>> {
    match on {
        On::Normal => h.queue.try_lock_for(&h.mapping, LOCK_WAIT),
        On::DirtyIo => Some(h.queue.lock(&h.mapping)),
    }
}

fn error(env: Raw, e: QueueError) -> Option<Step> {
    let reason = match e {
        QueueError::NeedsGrowth => return Some(Step::Dirty),
        QueueError::Map(e) => return Some(Step::Done(raw::error(env, e))),
        QueueError::CorruptHeader => atoms::corrupt_header(),
        QueueError::Full => atoms::full(),
    };
    Some(Step::Done(raw::tuple2(
        env,
        raw::atom(atoms::error()),
        raw::atom(reason),
    )))
}

fn done<T>(env: Raw, r: Result<T, QueueError>, f: impl FnOnce(T) -> ErlNifTerm) -> Option<Step> {
    match r {
        Ok(v) => Some(Step::Done(f(v))),
        Err(e) => error(env, e),
    }
}

/// First bytes of a compressed term in the external format.
const COMPRESSED: [u8; 2] = [131, 80];

/// Decodes a term in the external format at the start of `bytes` (a private copy): the
/// term and how many bytes it used, `None` if it does not decode. The VM's NIF decoder
/// does not take compressed terms: those come back unchecked, as a binary of the bytes,
/// for `binary_to_term/2` in Erlang.
fn decode(env: Raw, bytes: &[u8]) -> Option<Decoded<ErlNifTerm>> {
    if bytes.starts_with(&COMPRESSED) {
        return Some(Decoded::Unchecked(raw::copy(env, bytes)));
    }
    decode_plain(env, bytes).map(|(t, used)| Decoded::Term(t, used))
}

fn decode_plain(env: Raw, bytes: &[u8]) -> Option<(ErlNifTerm, usize)> {
    let mut t = std::mem::MaybeUninit::<ErlNifTerm>::uninit();
    // SAFETY: `bytes` is valid for reading for its length (a private buffer nobody else
    // writes); the decoder reads at most that many bytes and writes only `t`, which it
    // fills in when it answers a non-zero length.
    unsafe {
        let used = enif_binary_to_term(env, bytes.as_ptr(), bytes.len(), t.as_mut_ptr(), 0);
        (used > 0).then(|| (t.assume_init(), used))
    }
}

/// Whether decoding this frame may take long.
fn too_big(on: On, f: &Frame) -> bool {
    on.is_normal() && f.size as usize > DIRTY_COPY
}

fn u32_arg(env: Raw, t: ErlNifTerm) -> Option<u32> {
    u32::try_from(get_u64(env, t)?).ok()
}

/// `{ok, Term | Extra...}` for a checked term, `{compressed, Bin, Start, End}` for one
/// Erlang must decode (and check against the frame `f`).
fn term_reply(env: Raw, d: Decoded<ErlNifTerm>, f: &Frame, extra: &[ErlNifTerm]) -> ErlNifTerm {
    match d {
        Decoded::Term(t, _) => {
            let mut items = [raw::atom(atoms::ok()), t, t, t];
            let n = 2 + extra.len().min(2);
            items[2..n].copy_from_slice(&extra[..n - 2]);
            raw::tuple(env, &items[..n])
        }
        Decoded::Unchecked(bin) => raw::tuple(
            env,
            &[
                raw::atom(atoms::compressed()),
                bin,
                raw::uint(env, u64::from(f.start)),
                raw::uint(env, u64::from(f.end())),
            ],
        ),
    }
}

fn header_term(env: Raw, h: emmap_core::queue::Header) -> ErlNifTerm {
    let f = |v: u32| raw::uint(env, u64::from(v));
    raw::tuple(env, &[f(h.size), f(h.head), f(h.tail), f(h.next_tail)])
}

// Checks, repairs or initialises the header of a queue file just opened: `ok` or
// `{error, Reason}`. May read the whole file: always dirty.
nif!(dirty "queue_attach_nif", queue_attach, 1, |env, a, on| {
    let h = resource::get(env, a[0])?;
    let q = lock(h, on)?;
    done(env, q.attach(), |_| raw::atom(atoms::ok()))
});

// Appends the encoded term `Bin`: `ok` or `{error, Reason}`.
nif!(normal "queue_push_nif", queue_push, 2, |env, a, on| {
    let h = resource::get(env, a[0])?;
    let term = get_bin(env, a[1])?;
    if on.is_normal() && term.len() > DIRTY_COPY {
        return Some(Step::Dirty);
    }
    let Some(q) = lock(h, on) else {
        return Some(Step::Dirty);
    };
    done(env, q.push(term, on.growth()), |_| raw::atom(atoms::ok()))
});

// Removes and returns the oldest term (purging the header when that empties the queue,
// if `Purge`): `{ok, Term}`, `nil`, `{error, Reason}`, or, for a compressed term, which
// Erlang decodes, `{compressed, Bin, Head, Next}` (nothing removed yet).
nif!(normal "queue_pop_nif", queue_pop, 2, |env, a, on| {
    let h = resource::get(env, a[0])?;
    let purge = get_bool(a[1])?;
    let Some(q) = lock(h, on) else {
        return Some(Step::Dirty);
    };
    let front = match q.front() {
        Ok(Some(f)) => f,
        Ok(None) => return Some(Step::Done(raw::atom(atoms::nil()))),
        Err(e) => return error(env, e),
    };
    if too_big(on, &front.frame) {
        return Some(Step::Dirty);
    }
    let f = front.frame;
    done(env, q.take(&front, purge, |b| decode(env, b)), |d| {
        term_reply(env, d, &f, &[])
    })
});

// The oldest (`Back = false`) or newest term, left in the queue: `{ok, Term}`, `nil`,
// `{error, Reason}` or `{compressed, Bin, Start, End}`.
nif!(normal "queue_peek_nif", queue_peek, 2, |env, a, on| {
    let h = resource::get(env, a[0])?;
    let back = get_bool(a[1])?;
    let Some(q) = lock(h, on) else {
        return Some(Step::Dirty);
    };
    let frame = if back {
        q.back()
    } else {
        q.front().map(|f| f.map(|f| f.frame))
    };
    let frame = match frame {
        Ok(Some(f)) => f,
        Ok(None) => return Some(Step::Done(raw::atom(atoms::nil()))),
        Err(e) => return error(env, e),
    };
    if too_big(on, &frame) {
        return Some(Step::Dirty);
    }
    done(env, q.peek(frame, |b| decode(env, b)), |d| {
        term_reply(env, d, &frame, &[])
    })
});

// The oldest term and where it lies, for a pop that runs a fun before committing:
// `{ok, Term, Head, Next}`, `nil`, `{error, Reason}` or `{compressed, Bin, Head, Next}`.
nif!(normal "queue_front_nif", queue_front, 1, |env, a, on| {
    let h = resource::get(env, a[0])?;
    let Some(q) = lock(h, on) else {
        return Some(Step::Dirty);
    };
    let front = match q.front() {
        Ok(Some(f)) => f,
        Ok(None) => return Some(Step::Done(raw::atom(atoms::nil()))),
        Err(e) => return error(env, e),
    };
    if too_big(on, &front.frame) {
        return Some(Step::Dirty);
    }
    let f = front.frame;
    done(env, q.peek(f, |b| decode(env, b)), |d| {
        let head = raw::uint(env, u64::from(f.start));
        term_reply(env, d, &f, &[head, raw::uint(env, u64::from(f.end()))])
    })
});

// Removes the message at `Head` ending at `Next` if it is still the oldest:
// `ok`, `moved` (it is not: nothing changed), or `{error, Reason}`.
nif!(normal "queue_advance_nif", queue_advance, 4, |env, a, on| {
    let h = resource::get(env, a[0])?;
    let (head, next) = (u32_arg(env, a[1])?, u32_arg(env, a[2])?);
    let purge = get_bool(a[3])?;
    let Some(q) = lock(h, on) else {
        return Some(Step::Dirty);
    };
    done(env, q.advance(head, next, purge), |r| {
        raw::atom(match r {
            Advanced::Done => atoms::ok(),
            Advanced::Moved => atoms::moved(),
        })
    })
});

// The header `{Size, Head, Tail, NextTail}`: checked (`Check = true`, else
// `{error, corrupt_header}`) or as stored.
nif!(normal "queue_header_nif", queue_header, 2, |env, a, on| {
    let h = resource::get(env, a[0])?;
    let check = get_bool(a[1])?;
    let Some(q) = lock(h, on) else {
        return Some(Step::Dirty);
    };
    let r = if check { q.header() } else { q.raw_header() };
    done(env, r, |hd| header_term(env, hd))
});

// One step of a fold: forwards (`Back = false`), the message starting at `Pos` and ending
// at or before `Limit`, as `{ok, Term, End}`; backwards, the message ending at `Pos` and
// starting at or after `Limit`, as `{ok, Term, Start}`. Or `{error, Reason}`, or
// `{compressed, Bin, Start, End}`.
nif!(normal "queue_frame_nif", queue_frame, 4, |env, a, on| {
    let h = resource::get(env, a[0])?;
    let (pos, limit) = (u32_arg(env, a[1])?, u32_arg(env, a[2])?);
    let back = get_bool(a[3])?;
    let Some(q) = lock(h, on) else {
        return Some(Step::Dirty);
    };
    let frame = if back {
        q.frame_before(limit, pos)
    } else {
        q.frame_at(pos, limit)
    };
    let frame = match frame {
        Ok(f) => f,
        Err(e) => return error(env, e),
    };
    if too_big(on, &frame) {
        return Some(Step::Dirty);
    }
    let to = if back { frame.start } else { frame.end() };
    done(env, q.peek(frame, |b| decode(env, b)), |d| {
        term_reply(env, d, &frame, &[raw::uint(env, u64::from(to))])
    })
});

// Counts messages from `Pos` on, which must end exactly at `End`, at most a bounded
// number per call: `{Count, NextPos}` (`NextPos = End` when done), or `{error, Reason}`.
nif!(normal "queue_count_nif", queue_count, 3, |env, a, on| {
    let h = resource::get(env, a[0])?;
    let (pos, end) = (u32_arg(env, a[1])?, u32_arg(env, a[2])?);
    let Some(q) = lock(h, on) else {
        return Some(Step::Dirty);
    };
    done(env, q.count(pos, end, COUNT_STEP), |(n, next)| {
        raw::tuple2(env, raw::uint(env, n), raw::uint(env, u64::from(next)))
    })
});

// `purge/1`: `true`, `false`, or `{error, Reason}`.
nif!(normal "queue_purge_nif", queue_purge, 1, |env, a, on| {
    let h = resource::get(env, a[0])?;
    let Some(q) = lock(h, on) else {
        return Some(Step::Dirty);
    };
    done(env, q.purge(), |p| {
        raw::atom(if p { atoms::true_() } else { atoms::false_() })
    })
});

// `erase/1`: `ok` or `{error, Reason}`.
nif!(normal "queue_erase_nif", queue_erase, 1, |env, a, on| {
    let h = resource::get(env, a[0])?;
    let Some(q) = lock(h, on) else {
        return Some(Step::Dirty);
    };
    done(env, q.erase(), |_| raw::atom(atoms::ok()))
});
