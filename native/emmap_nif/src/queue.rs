//! NIFs behind `emmap_queue.erl`: one per queue operation, each under the handle's queue
//! lock (`emmap_core::queue::Queue`), so that several processes may use one handle.
//!
//! Terms cross as the external term format: a push gets the binary `term_to_binary/2`
//! made in Erlang (so that the bytes are exactly that function's, at any compression
//! level), and a pop or peek decodes with `enif_binary_to_term` from a private copy of
//! the frame, checking that the term fills the frame before anything is committed.
//!
//! Scheduling (`schedule.rs`): a call runs on the caller's normal scheduler unless it must
//! copy more than `DIRTY_BYTES` bytes, grow the file, or wait for the lock more than
//! `LOCK_WAIT` (another process's long operation on the same handle): then it moves to a
//! dirty I/O scheduler, where waiting and long copies are fine.

use std::time::Duration;

use emmap_core::queue::{Advanced, Decoded, Frame, Locked, Popped, QueueError};
use rustler::sys::enif_binary_to_term;

use crate::atoms;
use crate::resource::{handle, Handle};
use crate::schedule::{nif, On, DIRTY_BYTES};
use crate::term::{self, atom, Env, Int, Stop, Term};

/// How long a normal scheduler waits for the queue lock before moving to a dirty one.
const LOCK_WAIT: Duration = Duration::from_micros(50);
/// Messages one `queue_count_nif` call walks at most (a 4-byte load each).
const COUNT_STEP: u64 = 65_536;

/// The handle's queue, locked; `Stop::Dirty` on a normal scheduler when it stays busy.
fn lock(h: &Handle, on: On) -> Result<Locked<'_>, Stop> {
    match on {
        On::Normal => h
            .queue
            .try_lock_for(&h.mapping, LOCK_WAIT)
            .ok_or(Stop::Dirty),
        On::DirtyIo => Ok(h.queue.lock(&h.mapping)),
    }
}

impl From<QueueError> for Stop {
    fn from(e: QueueError) -> Stop {
        match e {
            QueueError::NeedsGrowth => Stop::Dirty,
            QueueError::Map(e) => Stop::Error(e),
            QueueError::CorruptHeader => Stop::Reason(atoms::corrupt_header()),
            QueueError::Full => Stop::Reason(atoms::full()),
        }
    }
}

/// First bytes of a compressed term in the external format.
const COMPRESSED: [u8; 2] = [131, 80];

/// Decodes a term in the external format at the start of `bytes` (a private copy): the
/// term and how many bytes it used, `None` if it does not decode. The VM's NIF decoder
/// does not take compressed terms: those come back unchecked, as a binary of the bytes,
/// for `binary_to_term/2` in Erlang.
fn decode(env: Env<'_>, bytes: &[u8]) -> Option<Decoded<Term>> {
    if bytes.starts_with(&COMPRESSED) {
        return Some(Decoded::Unchecked(term::copy(env, bytes)));
    }
    decode_plain(env, bytes).map(|(t, used)| Decoded::Term(t, used))
}

fn decode_plain(env: Env<'_>, bytes: &[u8]) -> Option<(Term, usize)> {
    let mut t = std::mem::MaybeUninit::<Term>::uninit();
    // SAFETY: `bytes` is valid for reading for its length (a private buffer nobody else
    // writes); the decoder reads at most that many bytes and writes only `t`, which it
    // fills in when it answers a non-zero length.
    unsafe {
        let used = enif_binary_to_term(env.raw(), bytes.as_ptr(), bytes.len(), t.as_mut_ptr(), 0);
        (used > 0).then(|| (t.assume_init(), used))
    }
}

/// `Stop::Dirty` when decoding this frame may take long here.
fn decodable(on: On, f: &Frame) -> Result<(), Stop> {
    on.may_touch(u64::from(f.size))
}

/// An offset in the queue file (the Erlang side passes only what the NIFs gave it).
fn u32_arg(env: Env<'_>, t: Term) -> Result<u32, Stop> {
    match term::int(env, t)? {
        Int::Fits(v) => u32::try_from(v).map_err(|_| Stop::Badarg),
        _ => Err(Stop::Badarg),
    }
}

/// `{ok, Term | Extra...}` for a checked term, `{compressed, Bin, Start, End}` for one
/// Erlang must decode (and check against the frame `f`).
fn term_reply(env: Env<'_>, d: Decoded<Term>, f: &Frame, extra: &[Term]) -> Term {
    match d {
        Decoded::Term(t, _) => {
            let mut items = [atom(atoms::ok()), t, t, t];
            let n = 2 + extra.len().min(2);
            items[2..n].copy_from_slice(&extra[..n - 2]);
            term::tuple(env, &items[..n])
        }
        Decoded::Unchecked(bin) => term::tuple(
            env,
            &[
                atom(atoms::compressed()),
                bin,
                term::uint(env, u64::from(f.start)),
                term::uint(env, u64::from(f.end())),
            ],
        ),
    }
}

fn header_term(env: Env<'_>, h: emmap_core::queue::Header) -> Term {
    let f = |v: u32| term::uint(env, u64::from(v));
    term::tuple(env, &[f(h.size), f(h.head), f(h.tail), f(h.next_tail)])
}

/// The oldest message's frame, or `nil` (as an early answer) for an empty queue.
macro_rules! or_nil {
    ($e:expr) => {
        match $e? {
            Some(f) => f,
            None => return Ok(atom(atoms::nil())),
        }
    };
}

// Checks, repairs or initialises the header of a queue file just opened: `ok` or
// `{error, Reason}`. May read the whole file: always dirty.
nif!(dirty "queue_attach", queue_attach, 1, |env, a, on| {
    let h = handle(env, a[0])?;
    lock(h, on)?.attach()?;
    Ok(atom(atoms::ok()))
});

// Appends the encoded term `Bin`: `ok` or `{error, Reason}`.
nif!(normal "queue_push", queue_push, 2, |env, a, on| {
    let h = handle(env, a[0])?;
    let bytes = term::bin(env, a[1])?;
    on.may_touch(bytes.len() as u64)?;
    lock(h, on)?.push(bytes, on.growth())?;
    Ok(atom(atoms::ok()))
});

// Removes and returns the oldest term (purging the header when that empties the queue,
// if `Purge`): `{ok, Term}`, `nil`, `{error, Reason}`, or, for a compressed term, which
// Erlang decodes, `{compressed, Bin, Head, Next}` (nothing removed yet).
nif!(normal "queue_pop", queue_pop, 2, |env, a, on| {
    let h = handle(env, a[0])?;
    let purge = term::boolean(a[1])?;
    let max = if on.is_normal() { DIRTY_BYTES as u64 } else { u64::MAX };
    match lock(h, on)?.pop(purge, max, |b| decode(env, b))? {
        Popped::Empty => Ok(atom(atoms::nil())),
        Popped::TooLarge => Err(Stop::Dirty),
        Popped::Took(f, d) => Ok(term_reply(env, d, &f, &[])),
    }
});

// The oldest (`Back = false`) or newest term, left in the queue: `{ok, Term}`, `nil`,
// `{error, Reason}` or `{compressed, Bin, Start, End}`.
nif!(normal "queue_peek", queue_peek, 2, |env, a, on| {
    let h = handle(env, a[0])?;
    let back = term::boolean(a[1])?;
    let q = lock(h, on)?;
    let frame = if back {
        or_nil!(q.back())
    } else {
        or_nil!(q.front()).frame
    };
    decodable(on, &frame)?;
    let d = q.peek(frame, |b| decode(env, b))?;
    Ok(term_reply(env, d, &frame, &[]))
});

// The oldest term and where it lies, for a pop that runs a fun before committing:
// `{ok, Term, Head, Next}`, `nil`, `{error, Reason}` or `{compressed, Bin, Head, Next}`.
nif!(normal "queue_front", queue_front, 1, |env, a, on| {
    let h = handle(env, a[0])?;
    let q = lock(h, on)?;
    let f = or_nil!(q.front()).frame;
    decodable(on, &f)?;
    let d = q.peek(f, |b| decode(env, b))?;
    let (head, next) = (term::uint(env, u64::from(f.start)), term::uint(env, u64::from(f.end())));
    Ok(term_reply(env, d, &f, &[head, next]))
});

// Removes the message at `Head` ending at `Next` if it is still the oldest:
// `ok`, `moved` (it is not: nothing changed), or `{error, Reason}`.
nif!(normal "queue_advance", queue_advance, 4, |env, a, on| {
    let h = handle(env, a[0])?;
    let (head, next) = (u32_arg(env, a[1])?, u32_arg(env, a[2])?);
    let purge = term::boolean(a[3])?;
    Ok(atom(match lock(h, on)?.advance(head, next, purge)? {
        Advanced::Done => atoms::ok(),
        Advanced::Moved => atoms::moved(),
    }))
});

// The header `{Size, Head, Tail, NextTail}`: checked (`Check = true`, else
// `{error, corrupt_header}`) or as stored.
nif!(normal "queue_header", queue_header, 2, |env, a, on| {
    let h = handle(env, a[0])?;
    let check = term::boolean(a[1])?;
    let q = lock(h, on)?;
    let hd = if check { q.header()? } else { q.raw_header()? };
    Ok(header_term(env, hd))
});

// One step of a fold: forwards (`Back = false`), the message starting at `Pos` and ending
// at or before `Limit`, as `{ok, Term, End}`; backwards, the message ending at `Pos` and
// starting at or after `Limit`, as `{ok, Term, Start}`. Or `{error, Reason}`, or
// `{compressed, Bin, Start, End}`.
nif!(normal "queue_frame", queue_frame, 4, |env, a, on| {
    let h = handle(env, a[0])?;
    let (pos, limit) = (u32_arg(env, a[1])?, u32_arg(env, a[2])?);
    let back = term::boolean(a[3])?;
    let q = lock(h, on)?;
    let frame = if back {
        q.frame_before(limit, pos)?
    } else {
        q.frame_at(pos, limit)?
    };
    decodable(on, &frame)?;
    let to = if back { frame.start } else { frame.end() };
    let d = q.peek(frame, |b| decode(env, b))?;
    Ok(term_reply(env, d, &frame, &[term::uint(env, u64::from(to))]))
});

// Counts messages from `Pos` on, which must end exactly at `End`, at most a bounded
// number per call: `{Count, NextPos}` (`NextPos = End` when done), or `{error, Reason}`.
nif!(normal "queue_count", queue_count, 3, |env, a, on| {
    let h = handle(env, a[0])?;
    let (pos, end) = (u32_arg(env, a[1])?, u32_arg(env, a[2])?);
    let (n, next) = lock(h, on)?.count(pos, end, COUNT_STEP)?;
    Ok(term::tuple2(env, term::uint(env, n), term::uint(env, u64::from(next))))
});

// `purge/1`: `true`, `false`, or `{error, Reason}`.
nif!(normal "queue_purge", queue_purge, 1, |env, a, on| {
    let h = handle(env, a[0])?;
    Ok(term::boolean_term(lock(h, on)?.purge()?))
});

// `erase/1`: `ok` or `{error, Reason}`.
nif!(normal "queue_erase", queue_erase, 1, |env, a, on| {
    let h = handle(env, a[0])?;
    lock(h, on)?.erase()?;
    Ok(atom(atoms::ok()))
});
