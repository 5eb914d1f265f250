//! The emmap NIF: decode terms, call `emmap_core`, encode results. Nothing clever lives
//! here; every check and every pointer rule is in the core.
//!
//! Argument shapes are guaranteed by `emmap.erl` (integers are already range-checked
//! there); anything else that reaches a NIF fails to decode and raises `badarg`.

mod atoms;
mod blocks;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use emmap_core::atomics::Op;
use emmap_core::{Error, Line, Mapping, Options, Whence};
use rustler::{Atom, Binary, Encoder, Env, NewBinary, NifResult, OwnedBinary, ResourceArc, Term};

/// The resource behind an Erlang handle.
pub struct Handle(Mapping);

// The core's lock and pointers are only touched through its own API, which leaves the state
// consistent at every panic point, so observing it after an unwind is fine.
impl std::panic::RefUnwindSafe for Handle {}

#[rustler::resource_impl]
impl rustler::Resource for Handle {}

/// Reads above this many bytes are copied on a dirty I/O scheduler.
const DIRTY_COPY: usize = 64 * 1024;
/// Lines are searched this far on a normal scheduler before moving to a dirty one.
const LINE_SCAN: usize = 64 * 1024;
/// Copies up to this size become heap binaries (no refc binary allocation).
const HEAP_BIN: usize = 64;

fn err<'a>(env: Env<'a>, e: Error) -> Term<'a> {
    (
        atoms::error(),
        Atom::from_str(env, e.atom()).unwrap_or_else(|_| atoms::error()),
    )
        .encode(env)
}

fn reply<'a, T: Encoder>(env: Env<'a>, r: Result<T, Error>) -> Term<'a> {
    match r {
        Ok(v) => v.encode(env),
        Err(e) => err(env, e),
    }
}

fn copy_binary<'a>(env: Env<'a>, bytes: &[u8]) -> Term<'a> {
    if bytes.len() <= HEAP_BIN {
        NewBinary::from_slice(env, bytes).into()
    } else {
        let b = OwnedBinary::from_slice(bytes);
        Binary::from_owned(b, env).encode(env)
    }
}

/// A resource binary over bytes of the mapping: keeps the handle (and so the memory) alive.
fn direct_binary<'a>(env: Env<'a>, res: &ResourceArc<Handle>, p: *const u8, n: usize) -> Term<'a> {
    // SAFETY: `p..p+n` came from `Mapping::pread_direct`/`read`, which marked the mapping
    // exported; from then on no region is unmapped before the `Mapping` is dropped, and the
    // resource binary holds a reference to this very resource, so the bytes outlive it.
    unsafe { res.make_binary_unsafe(env, |_| std::slice::from_raw_parts(p, n)) }.encode(env)
}

fn ok_bin<'a>(env: Env<'a>, bin: Term<'a>) -> Term<'a> {
    (atoms::ok(), bin).encode(env)
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
    if path.as_slice().contains(&0) {
        return Err(rustler::Error::BadArg);
    }
    let p = (!path.is_empty()).then(|| Path::new(OsStr::from_bytes(path.as_slice())));
    Ok(match Mapping::open(p, offset, len, o) {
        Ok(m) => (atoms::ok(), ResourceArc::new(Handle(m))).encode(env),
        Err(e) => err(env, e),
    })
}

#[rustler::nif(schedule = "DirtyIo")]
fn close_nif(h: &Handle) -> Atom {
    h.0.close();
    atoms::ok()
}

#[rustler::nif]
fn info_nif<'a>(env: Env<'a>, h: &Handle) -> NifResult<Term<'a>> {
    let i = h.0.info();
    let path = match &i.path {
        Some(p) => {
            let mut b = NewBinary::new(env, p.as_os_str().len());
            b.as_mut_slice().copy_from_slice(p.as_os_str().as_bytes());
            Binary::from(b).encode(env)
        }
        None => atoms::undefined().encode(env),
    };
    let pairs: [(Atom, Term); 13] = [
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
    ];
    let (keys, values): (Vec<Term>, Vec<Term>) =
        pairs.into_iter().map(|(k, v)| (k.encode(env), v)).unzip();
    Term::map_from_term_arrays(env, &keys, &values)
}

// ---------------------------------------------------------------------------- reads

/// Shared body of pread/read: `dirty_ok` says whether a large copy may run here.
fn read_reply<'a>(
    env: Env<'a>,
    term: Term<'a>,
    dirty_ok: bool,
    read: impl FnOnce(&Mapping, &mut dyn FnMut(&[u8]) -> Term<'a>) -> Result<Option<Term<'a>>, Error>,
) -> NifResult<Term<'a>> {
    let h: &Handle = term.decode()?;
    let m = &h.0;
    let r = if m.options().direct {
        let res: ResourceArc<Handle> = term.decode()?;
        read(m, &mut |b| direct_binary(env, &res, b.as_ptr(), b.len()))
    } else {
        let mut too_big = false;
        let r = read(m, &mut |b| {
            if b.len() > DIRTY_COPY && !dirty_ok {
                too_big = true;
                atoms::dirty().encode(env)
            } else {
                copy_binary(env, b)
            }
        });
        if too_big {
            return Ok(atoms::dirty().encode(env));
        }
        r
    };
    Ok(match r {
        Ok(Some(bin)) => ok_bin(env, bin),
        Ok(None) => atoms::eof().encode(env),
        Err(e) => err(env, e),
    })
}

fn pread_any<'a>(
    env: Env<'a>,
    res: Term<'a>,
    pos: u64,
    len: u64,
    dirty_ok: bool,
) -> NifResult<Term<'a>> {
    read_reply(env, res, dirty_ok, |m, f| m.pread(pos, len, |b| f(b)))
}

#[rustler::nif]
fn pread_nif<'a>(env: Env<'a>, res: Term<'a>, pos: u64, len: u64) -> NifResult<Term<'a>> {
    pread_any(env, res, pos, len, false)
}

#[rustler::nif(schedule = "DirtyIo")]
fn pread_dirty_nif<'a>(env: Env<'a>, res: Term<'a>, pos: u64, len: u64) -> NifResult<Term<'a>> {
    pread_any(env, res, pos, len, true)
}

fn read_any<'a>(env: Env<'a>, res: Term<'a>, len: u64, dirty_ok: bool) -> NifResult<Term<'a>> {
    let h: &Handle = res.decode()?;
    if !dirty_ok && !h.0.options().direct && len > DIRTY_COPY as u64 {
        return Ok(atoms::dirty().encode(env));
    }
    read_reply(env, res, true, |m, f| m.read(len, |b| f(b)))
}

#[rustler::nif]
fn read_nif<'a>(env: Env<'a>, res: Term<'a>, len: u64) -> NifResult<Term<'a>> {
    read_any(env, res, len, false)
}

#[rustler::nif(schedule = "DirtyIo")]
fn read_dirty_nif<'a>(env: Env<'a>, res: Term<'a>, len: u64) -> NifResult<Term<'a>> {
    read_any(env, res, len, true)
}

fn read_line_any<'a>(env: Env<'a>, res: Term<'a>, limit: usize) -> NifResult<Term<'a>> {
    let h: &Handle = res.decode()?;
    let m = &h.0;
    let arc: Option<ResourceArc<Handle>> = if m.options().direct {
        Some(res.decode()?)
    } else {
        None
    };
    let r = m.read_line(limit, |line, crlf| {
        if crlf {
            // `\r\n` is reported as `\n`, as raw files do: that needs a copy.
            let mut v = line[..line.len() - 2].to_vec();
            v.push(b'\n');
            copy_binary(env, &v)
        } else if let Some(arc) = &arc {
            direct_binary(env, arc, line.as_ptr(), line.len())
        } else {
            copy_binary(env, line)
        }
    });
    Ok(match r {
        Ok(Line::Found(bin)) => ok_bin(env, bin),
        Ok(Line::Eof) => atoms::eof().encode(env),
        Ok(Line::TooLong) => atoms::dirty().encode(env),
        Err(e) => err(env, e),
    })
}

#[rustler::nif]
fn read_line_nif<'a>(env: Env<'a>, res: Term<'a>) -> NifResult<Term<'a>> {
    read_line_any(env, res, LINE_SCAN)
}

#[rustler::nif(schedule = "DirtyIo")]
fn read_line_dirty_nif<'a>(env: Env<'a>, res: Term<'a>) -> NifResult<Term<'a>> {
    read_line_any(env, res, usize::MAX)
}

// ---------------------------------------------------------------------------- writes

#[rustler::nif]
fn pwrite_nif<'a>(env: Env<'a>, h: &Handle, pos: u64, data: Binary) -> Term<'a> {
    reply(env, h.0.pwrite(pos, data.as_slice()).map(|_| atoms::ok()))
}

#[rustler::nif(schedule = "DirtyIo")]
fn pwrite_dirty_nif<'a>(env: Env<'a>, h: &Handle, pos: u64, data: Binary) -> Term<'a> {
    reply(env, h.0.pwrite(pos, data.as_slice()).map(|_| atoms::ok()))
}

#[rustler::nif]
fn write_nif<'a>(env: Env<'a>, h: &Handle, data: Binary) -> Term<'a> {
    reply(env, h.0.write(data.as_slice()).map(|_| atoms::ok()))
}

#[rustler::nif(schedule = "DirtyIo")]
fn write_dirty_nif<'a>(env: Env<'a>, h: &Handle, data: Binary) -> Term<'a> {
    reply(env, h.0.write(data.as_slice()).map(|_| atoms::ok()))
}

#[rustler::nif]
fn position_nif<'a>(env: Env<'a>, h: &Handle, whence: u32, delta: i64) -> NifResult<Term<'a>> {
    let w = match whence {
        0 => Whence::Bof,
        1 => Whence::Cur,
        2 => Whence::Eof,
        _ => return Err(rustler::Error::BadArg),
    };
    Ok(reply(env, h.0.position(w, delta).map(|p| (atoms::ok(), p))))
}

// ---------------------------------------------------------------------------- durability, size

#[rustler::nif]
fn flush_nif<'a>(env: Env<'a>, h: &Handle) -> Term<'a> {
    reply(env, h.0.sync(false, false).map(|_| atoms::ok()))
}

#[rustler::nif(schedule = "DirtyIo")]
fn sync_nif<'a>(env: Env<'a>, h: &Handle, data_only: bool) -> Term<'a> {
    reply(env, h.0.sync(true, data_only).map(|_| atoms::ok()))
}

#[rustler::nif]
fn advise_nif<'a>(env: Env<'a>, h: &Handle, off: u64, len: u64, advice: i32) -> Term<'a> {
    reply(env, h.0.advise(off, len, advice).map(|_| atoms::ok()))
}

#[rustler::nif(schedule = "DirtyIo")]
fn resize_nif<'a>(env: Env<'a>, h: &Handle, new_size: u64) -> Term<'a> {
    reply(env, h.0.resize(new_size).map(|n| (atoms::ok(), n)))
}

// ---------------------------------------------------------------------------- atomics

fn op_of(code: u32) -> NifResult<Op> {
    Ok(match code {
        0 => Op::Add,
        1 => Op::Sub,
        2 => Op::And,
        3 => Op::Or,
        4 => Op::Xor,
        5 => Op::Xchg,
        _ => return Err(rustler::Error::BadArg),
    })
}

#[rustler::nif]
fn patomic_nif<'a>(env: Env<'a>, h: &Handle, pos: u64, op: u32, v: i64) -> NifResult<Term<'a>> {
    Ok(reply(
        env,
        h.0.atomic(pos, op_of(op)?, v).map(|old| (atoms::ok(), old)),
    ))
}

/// Like `patomic_nif`, but answers the bare old value: the counters API's hot path.
#[rustler::nif]
fn patomic_old_nif<'a>(env: Env<'a>, h: &Handle, pos: u64, op: u32, v: i64) -> NifResult<Term<'a>> {
    Ok(reply(env, h.0.atomic(pos, op_of(op)?, v)))
}

#[rustler::nif]
fn patomic_cas_nif<'a>(env: Env<'a>, h: &Handle, pos: u64, expected: i64, new: i64) -> Term<'a> {
    reply(
        env,
        h.0.cas(pos, expected, new).map(|r| match r {
            Ok(old) => (true, old),
            Err(cur) => (false, cur),
        }),
    )
}

#[rustler::nif]
fn patomic_read_nif<'a>(env: Env<'a>, h: &Handle, pos: u64) -> Term<'a> {
    reply(env, h.0.atomic_load(pos).map(|v| (atoms::ok(), v)))
}

#[rustler::nif]
fn patomic_write_nif<'a>(env: Env<'a>, h: &Handle, pos: u64, v: i64) -> Term<'a> {
    reply(env, h.0.atomic_store(pos, v).map(|_| atoms::ok()))
}

rustler::init!("emmap");
