//! The emmap NIF: decode terms, call `emmap_core`, encode results. Nothing clever lives
//! here; every check and every pointer rule is in the core.
//!
//! Argument shapes are guaranteed by `emmap.erl` (integers are already range-checked
//! there); anything else that reaches a NIF fails to decode and raises `badarg`.
//! The few calls on the hot path are raw NIFs in `hot.rs`; block storage (`blocks.rs`) and
//! the queue (`queue.rs`) are raw NIFs that decide their scheduler themselves
//! (`schedule.rs`); the rest use rustler's `#[nif]`.

#[cfg(not(target_os = "linux"))]
compile_error!("emmap supports Linux only (it relies on Linux's mmap, mremap and madvise flags and on /proc); build it on a Linux target");

mod atoms;
mod blocks;
mod entry;
mod hot;
mod queue;
mod raw;
mod resource;
mod schedule;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use emmap_core::{Error, Line, Mapping, Options, Whence};
use rustler::{Atom, Binary, Encoder, Env, NewBinary, NifResult, Term};

use resource::Handle;

/// Reads above this many bytes are copied on a dirty I/O scheduler.
pub(crate) const DIRTY_COPY: usize = 64 * 1024;
/// Lines are searched this far on a normal scheduler before moving to a dirty one.
const LINE_SCAN: usize = 64 * 1024;

fn term<'a>(env: Env<'a>, t: rustler::sys::ErlNifTerm) -> Term<'a> {
    // SAFETY: `t` was built in `env` during this call.
    unsafe { Term::new(env, t) }
}

fn reply<'a, T: Encoder>(env: Env<'a>, r: Result<T, Error>) -> Term<'a> {
    match r {
        Ok(v) => v.encode(env),
        Err(e) => term(env, raw::error(env.as_c_arg(), e)),
    }
}

// ---------------------------------------------------------------------------- open/close

fn decode_options(opts: Vec<Term>) -> NifResult<Options> {
    let mut o = Options::default();
    for t in opts {
        let (name, value) = if let Ok(a) = t.decode::<Atom>() {
            (a, None)
        } else {
            let (a, v): (Atom, u64) = t.decode()?;
            (a, Some(v))
        };
        let name = name.to_term(t.get_env()).atom_to_string()?;
        o.apply(&name, value).map_err(|_| rustler::Error::BadArg)?;
    }
    Ok(o)
}

#[rustler::nif(schedule = "DirtyIo")]
fn open_nif<'a>(
    env: Env<'a>,
    path: Binary,
    offset: u64,
    len: u64,
    opts: Vec<Term>,
) -> NifResult<Term<'a>> {
    let o = decode_options(opts)?;
    // A copy: the path may be a `direct` binary of some mapping, whose bytes another
    // process can change while we check, open, and (after a failure) remove what we
    // created. The copy is what all of them see.
    let path = path.as_slice().to_vec();
    if path.contains(&0) {
        return Err(rustler::Error::BadArg);
    }
    let p = (!path.is_empty()).then(|| Path::new(OsStr::from_bytes(&path)));
    Ok(match Mapping::open(p, offset, len, o) {
        Ok(m) => (atoms::ok(), resource::new_term(env, m)).encode(env),
        Err(e) => reply::<Atom>(env, Err(e)),
    })
}

#[rustler::nif(schedule = "DirtyIo")]
fn close_nif(h: &Handle) -> Atom {
    h.mapping.close();
    atoms::ok()
}

/// Whether the handle was opened with `debug` (then `emmap.erl` reports to the logger).
#[rustler::nif]
fn debug_nif(h: &Handle) -> bool {
    h.mapping.options().debug
}

#[rustler::nif]
fn info_nif<'a>(env: Env<'a>, h: &Handle) -> NifResult<Term<'a>> {
    let i = h.mapping.info();
    let path = match &i.path {
        Some(p) => {
            let mut b = NewBinary::new(env, p.as_os_str().len());
            b.as_mut_slice().copy_from_slice(p.as_os_str().as_bytes());
            Binary::from(b).encode(env)
        }
        None => atoms::undefined().encode(env),
    };
    let lost = match i.lost_from {
        Some(v) => v.encode(env),
        None => atoms::undefined().encode(env),
    };
    let pairs: [(Atom, Term); 14] = [
        (atoms::size(), i.size.encode(env)),
        (atoms::exist(), i.exist.encode(env)),
        (atoms::path(), path),
        (atoms::offset(), i.offset.encode(env)),
        (atoms::direct(), i.direct.encode(env)),
        (atoms::shared(), i.shared.encode(env)),
        (atoms::writable(), i.writable.encode(env)),
        (atoms::lock(), i.lock.encode(env)),
        (atoms::anon(), i.anon.encode(env)),
        (atoms::fixed_size(), i.fixed_size.encode(env)),
        (atoms::max_inc_size(), i.max_inc_size.encode(env)),
        (atoms::closed(), i.closed.encode(env)),
        (atoms::address(), i.address.encode(env)),
        (atoms::lost_from(), lost),
    ];
    let (keys, values): (Vec<Term>, Vec<Term>) =
        pairs.into_iter().map(|(k, v)| (k.encode(env), v)).unzip();
    Term::map_from_term_arrays(env, &keys, &values)
}

/// `#{enabled => boolean(), library => Path | undefined}`: whether the SIGBUS handler is
/// installed and on, and which library file installed it.
#[rustler::nif]
fn sigbus_nif(env: Env<'_>) -> NifResult<Term<'_>> {
    let (on, lib) = emmap_core::sigbus::status();
    let lib = match lib {
        Some(p) => {
            let mut b = NewBinary::new(env, p.len());
            b.as_mut_slice().copy_from_slice(p.as_bytes());
            Binary::from(b).encode(env)
        }
        None => atoms::undefined().encode(env),
    };
    Term::map_from_term_arrays(
        env,
        &[atoms::enabled().encode(env), atoms::library().encode(env)],
        &[on.encode(env), lib],
    )
}

// ---------------------------------------------------------------------------- reads

#[rustler::nif(schedule = "DirtyIo")]
fn pread_dirty_nif<'a>(env: Env<'a>, h: &Handle, pos: u64, len: u64) -> Term<'a> {
    term(env, hot::pread(env.as_c_arg(), h, pos, len, true))
}

/// Bytes read at the position become `{ok, Bin}`: a resource binary in direct mode.
fn read_bytes(env: Env<'_>, h: &Handle, b: &[u8]) -> rustler::sys::ErlNifTerm {
    let e = env.as_c_arg();
    if h.mapping.options().direct {
        // SAFETY: `b` comes from `Mapping::read`/`read_line`, which marked the mapping
        // exported: it stays mapped while the resource lives.
        raw::ok(e, unsafe {
            resource::direct_binary(e, h, b.as_ptr(), b.len())
        })
    } else {
        raw::ok(e, raw::copy(e, b))
    }
}

fn read_any<'a>(env: Env<'a>, h: &Handle, len: u64, dirty_ok: bool) -> Term<'a> {
    if !dirty_ok && !h.mapping.options().direct && len > DIRTY_COPY as u64 {
        return atoms::dirty().encode(env);
    }
    match h.mapping.read(len, |b| read_bytes(env, h, b)) {
        Ok(Some(t)) => term(env, t),
        Ok(None) => atoms::eof().encode(env),
        Err(e) => reply::<Atom>(env, Err(e)),
    }
}

#[rustler::nif]
fn read_nif<'a>(env: Env<'a>, h: &Handle, len: u64) -> Term<'a> {
    read_any(env, h, len, false)
}

#[rustler::nif(schedule = "DirtyIo")]
fn read_dirty_nif<'a>(env: Env<'a>, h: &Handle, len: u64) -> Term<'a> {
    read_any(env, h, len, true)
}

fn read_line_any<'a>(env: Env<'a>, h: &Handle, limit: usize) -> Term<'a> {
    let r = h.mapping.read_line(limit, |line, crlf| {
        if crlf {
            // `\r\n` is reported as `\n`, as raw files do: that needs a copy.
            let mut v = line[..line.len() - 2].to_vec();
            v.push(b'\n');
            raw::ok(env.as_c_arg(), raw::copy(env.as_c_arg(), &v))
        } else {
            read_bytes(env, h, line)
        }
    });
    match r {
        Ok(Line::Found(t)) => term(env, t),
        Ok(Line::Eof) => atoms::eof().encode(env),
        Ok(Line::TooLong) => atoms::dirty().encode(env),
        Err(e) => reply::<Atom>(env, Err(e)),
    }
}

#[rustler::nif]
fn read_line_nif<'a>(env: Env<'a>, h: &Handle) -> Term<'a> {
    read_line_any(env, h, LINE_SCAN)
}

#[rustler::nif(schedule = "DirtyIo")]
fn read_line_dirty_nif<'a>(env: Env<'a>, h: &Handle) -> Term<'a> {
    read_line_any(env, h, usize::MAX)
}

// ---------------------------------------------------------------------------- writes

#[rustler::nif(schedule = "DirtyIo")]
fn pwrite_dirty_nif<'a>(env: Env<'a>, h: &Handle, pos: u64, data: Binary) -> Term<'a> {
    reply(
        env,
        h.mapping.pwrite(pos, data.as_slice()).map(|_| atoms::ok()),
    )
}

#[rustler::nif]
fn write_nif<'a>(env: Env<'a>, h: &Handle, data: Binary) -> Term<'a> {
    reply(env, h.mapping.write(data.as_slice()).map(|_| atoms::ok()))
}

#[rustler::nif(schedule = "DirtyIo")]
fn write_dirty_nif<'a>(env: Env<'a>, h: &Handle, data: Binary) -> Term<'a> {
    reply(env, h.mapping.write(data.as_slice()).map(|_| atoms::ok()))
}

#[rustler::nif]
fn position_nif<'a>(env: Env<'a>, h: &Handle, whence: u32, delta: i64) -> NifResult<Term<'a>> {
    let w = match whence {
        0 => Whence::Bof,
        1 => Whence::Cur,
        2 => Whence::Eof,
        _ => return Err(rustler::Error::BadArg),
    };
    Ok(reply(
        env,
        h.mapping.position(w, delta).map(|p| (atoms::ok(), p)),
    ))
}

// ---------------------------------------------------------------------------- durability, size

#[rustler::nif]
fn flush_nif<'a>(env: Env<'a>, h: &Handle) -> Term<'a> {
    reply(env, h.mapping.sync(false, false).map(|_| atoms::ok()))
}

#[rustler::nif(schedule = "DirtyIo")]
fn sync_nif<'a>(env: Env<'a>, h: &Handle, data_only: bool) -> Term<'a> {
    reply(env, h.mapping.sync(true, data_only).map(|_| atoms::ok()))
}

#[rustler::nif]
fn advise_nif<'a>(env: Env<'a>, h: &Handle, off: u64, len: u64, advice: i32) -> Term<'a> {
    reply(env, h.mapping.advise(off, len, advice).map(|_| atoms::ok()))
}

#[rustler::nif(schedule = "DirtyIo")]
fn resize_nif<'a>(env: Env<'a>, h: &Handle, new_size: u64) -> Term<'a> {
    reply(env, h.mapping.resize(new_size).map(|n| (atoms::ok(), n)))
}

#[rustler::nif(schedule = "DirtyIo")]
fn truncate_nif<'a>(env: Env<'a>, h: &Handle) -> Term<'a> {
    let m = &h.mapping;
    let r = m.position(Whence::Cur, 0).and_then(|p| m.truncate(p));
    reply(env, r.map(|n| (atoms::ok(), n)))
}

#[rustler::nif(schedule = "DirtyIo")]
fn allocate_nif<'a>(env: Env<'a>, h: &Handle, off: u64, len: u64) -> Term<'a> {
    reply(env, h.mapping.allocate(off, len).map(|_| atoms::ok()))
}

/// `{ok, undefined}` for anonymous memory, else
/// `{ok, {{Mode, Links, Dev, Rdev, Inode}, {Uid, Gid, Atime, Mtime, Ctime}}}` (times in
/// POSIX seconds) of the mapped file.
#[rustler::nif]
fn stat_nif<'a>(env: Env<'a>, h: &Handle) -> Term<'a> {
    use std::os::unix::fs::MetadataExt;
    let r = h.mapping.stat().map(|m| match m {
        None => (atoms::ok(), atoms::undefined()).encode(env),
        Some(m) => (
            atoms::ok(),
            (
                (m.mode(), m.nlink(), m.dev(), m.rdev(), m.ino()),
                (m.uid(), m.gid(), m.atime(), m.mtime(), m.ctime()),
            ),
        )
            .encode(env),
    });
    reply(env, r)
}
