//! A handle's life: `open` and `close`, what `info`, `debug`, `stat` and `sigbus` tell,
//! durability (`flush`, `sync`), hints (`advise`) and size changes (`resize`, `truncate`,
//! `allocate`).
//!
//! What may wait on the file system or on readers (open, close, sync, the size changes)
//! is registered to run on a dirty I/O scheduler; the rest runs on the caller's.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use emmap_core::{Error, Mapping, Options, Whence};

use crate::atoms;
use crate::resource::{self, handle};
use crate::schedule::nif;
use crate::term::{self, atom, Env, Int, Stop, Term};

/// The open options, from a proper list of atoms and `{Atom, Integer}` pairs; `badarg` for
/// anything the core does not know (`Options::apply`), or a list that is not proper.
fn options(env: Env<'_>, list: Term) -> Result<Options, Stop> {
    let mut o = Options::default();
    term::each(env, list, |t| {
        let mut buf = [0u8; 64];
        let (name, value) = match term::tuple_items(env, t) {
            Ok(&[name, value]) => match term::int(env, value)? {
                Int::Fits(v) => (name, Some(v)),
                _ => return Err(Stop::Badarg),
            },
            Ok(_) => return Err(Stop::Badarg),
            Err(_) => (t, None),
        };
        let name = term::atom_name(env, name, &mut buf).ok_or(Stop::Badarg)?;
        o.apply(name, value).map_err(|_| Stop::Badarg)
    })?;
    Ok(o)
}

// `open(Path, Offset, Len, Options)`: the handle's resource (`emmap.erl` wraps it), or
// `{error, Reason}`. `Path` is a binary (empty with `anon`); a NUL in it, a negative
// `Offset` or `Len`, or a bad option is `badarg`; `Offset` or `Len` past 2^64 - 1 is
// `einval`.
nif!(dirty "open", open, 4, |env, a, _on| {
    let path = term::bin(env, a[0])?;
    let (offset, len) = (term::int(env, a[1])?, term::int(env, a[2])?);
    let o = options(env, a[3])?;
    // A copy: the path may be a `direct` binary of some mapping, whose bytes another
    // process can change while we check, open, and (after a failure) remove what we
    // created. The copy is what all of them see.
    let path = path.to_vec();
    if path.contains(&0) || offset == Int::Neg || len == Int::Neg {
        return Err(Stop::Badarg);
    }
    let (offset, len) = (offset.or_einval()?, len.or_einval()?);
    let p = (!path.is_empty()).then(|| Path::new(OsStr::from_bytes(&path)));
    let m = Mapping::open(p, offset, len, o)?;
    Ok(resource::new_term(env, m))
});

// `close(R)`: `ok`, also when it was closed already.
nif!(dirty "close", close, 1, |env, a, _on| {
    handle(env, a[0])?.mapping.close();
    Ok(atom(atoms::ok()))
});

// `debug(R)`: whether the handle was opened with `debug` (then `emmap.erl` reports what
// happens to it to the logger).
nif!(normal "debug", debug, 1, |env, a, _on| {
    Ok(term::boolean_term(handle(env, a[0])?.mapping.options().debug))
});

/// A copy of `bytes` as a binary, or `undefined`.
fn binary_or_undefined(env: Env<'_>, bytes: Option<&[u8]>) -> Term {
    match bytes {
        Some(b) => term::copy(env, b),
        None => atom(atoms::undefined()),
    }
}

// `info(R)`: the map `emmap:info/1` documents (the path as a binary).
nif!(normal "info", info, 1, |env, a, _on| {
    let i = handle(env, a[0])?.mapping.info();
    let b = term::boolean_term;
    let u = |v: u64| term::uint(env, v);
    let path = binary_or_undefined(env, i.path.as_ref().map(|p| p.as_os_str().as_bytes()));
    let lost = i.lost_from.map_or(atom(atoms::undefined()), |v| u(v as u64));
    let pairs = [
        (atoms::size(), u(i.size as u64)),
        (atoms::exist(), b(i.exist)),
        (atoms::path(), path),
        (atoms::offset(), u(i.offset)),
        (atoms::direct(), b(i.direct)),
        (atoms::shared(), b(i.shared)),
        (atoms::writable(), b(i.writable)),
        (atoms::lock(), b(i.lock)),
        (atoms::anon(), b(i.anon)),
        (atoms::fixed_size(), b(i.fixed_size)),
        (atoms::max_inc_size(), u(i.max_inc_size)),
        (atoms::closed(), b(i.closed)),
        (atoms::address(), u(i.address as u64)),
        (atoms::lost_from(), lost),
    ];
    term::map(env, &pairs.map(|p| atom(p.0)), &pairs.map(|p| p.1))
});

// `sigbus()`: `#{enabled => boolean(), library => Path | undefined}`: whether the SIGBUS
// handler is installed and on, and which library file installed it.
nif!(normal "sigbus", sigbus, 0, |env, _a, _on| {
    let (on, lib) = emmap_core::sigbus::status();
    let lib = binary_or_undefined(env, lib.as_ref().map(|p| p.as_bytes()));
    term::map(
        env,
        &[atom(atoms::enabled()), atom(atoms::library())],
        &[term::boolean_term(on), lib],
    )
});

// `stat(R)`: `undefined` for anonymous memory, else the mapped file's
// `{Mode, Links, Dev, Rdev, Inode, Uid, Gid, Atime, Mtime, Ctime}` (times in POSIX
// seconds).
nif!(normal "stat", stat, 1, |env, a, _on| {
    let Some(m) = handle(env, a[0])?.mapping.stat()? else {
        return Ok(atom(atoms::undefined()));
    };
    let u = |v: u64| term::uint(env, v);
    let i = |v: i64| term::int64(env, v);
    let fields = [
        u(u64::from(m.mode())),
        u(m.nlink()),
        u(m.dev()),
        u(m.rdev()),
        u(m.ino()),
        u(u64::from(m.uid())),
        u(u64::from(m.gid())),
        i(m.atime()),
        i(m.mtime()),
        i(m.ctime()),
    ];
    Ok(term::tuple(env, &fields))
});

// `flush(R)`: `ok` once write-back of the dirty pages is scheduled (`msync(MS_ASYNC)`).
nif!(normal "flush", flush, 1, |env, a, _on| {
    handle(env, a[0])?.mapping.sync(false, false)?;
    Ok(atom(atoms::ok()))
});

// `sync(R, DataOnly)`: `ok` once the data (and the metadata, unless `DataOnly`) is on disk.
nif!(dirty "sync", sync, 2, |env, a, _on| {
    let h = handle(env, a[0])?;
    h.mapping.sync(true, term::boolean(a[1])?)?;
    Ok(atom(atoms::ok()))
});

/// The `madvise` code of an advice atom (Linux's values: `MADV_NORMAL` 0, `MADV_RANDOM`
/// 1, `MADV_SEQUENTIAL` 2, `MADV_WILLNEED` 3, `MADV_DONTNEED` 4, the same on every
/// architecture). `no_reuse` has no effect on Linux: it is `normal`.
fn advice(t: Term) -> Result<std::ffi::c_int, Stop> {
    let codes = [
        (atoms::normal(), 0),
        (atoms::no_reuse(), 0),
        (atoms::random(), 1),
        (atoms::sequential(), 2),
        (atoms::will_need(), 3),
        (atoms::dont_need(), 4),
    ];
    codes
        .iter()
        .find(|c| atom(c.0) == t)
        .map(|c| c.1)
        .ok_or(Stop::Badarg)
}

// `advise(R, Offset, Length, Advice)`: `ok`; `einval` for an offset or length outside
// 0..2^64-1.
nif!(normal "advise", advise, 4, |env, a, _on| {
    let h = handle(env, a[0])?;
    let (off, len) = (term::int(env, a[1])?, term::int(env, a[2])?);
    let code = advice(a[3])?;
    h.mapping.advise(off.or_einval()?, len.or_einval()?, code)?;
    Ok(atom(atoms::ok()))
});

// `resize(R, Size | grow)`: the new size. `grow` grows by the mapping's growth rule; a size
// of 0 or outside 0..2^64-1 is `einval`.
nif!(dirty "resize", resize, 2, |env, a, _on| {
    let h = handle(env, a[0])?;
    let size = if a[1] == atom(atoms::grow()) {
        0
    } else {
        match term::int(env, a[1])? {
            Int::Fits(n) if n > 0 => n,
            _ => return Err(Stop::Error(Error::Einval)),
        }
    };
    Ok(term::uint(env, h.mapping.resize(size)? as u64))
});

// `truncate(R)`: the new size, which the handle's position becomes.
nif!(dirty "truncate", truncate, 1, |env, a, _on| {
    let m = &handle(env, a[0])?.mapping;
    let p = m.position(Whence::Cur, 0)?;
    Ok(term::uint(env, m.truncate(p)? as u64))
});

// `allocate(R, Offset, Length)`: `ok`; `einval` for an offset or length outside
// 0..2^64-1, or a length of 0.
nif!(dirty "allocate", allocate, 3, |env, a, _on| {
    let h = handle(env, a[0])?;
    let (off, len) = (term::int(env, a[1])?, term::int(env, a[2])?);
    h.mapping.allocate(off.or_einval()?, len.or_einval()?)?;
    Ok(atom(atoms::ok()))
});
