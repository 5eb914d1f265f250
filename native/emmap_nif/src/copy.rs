//! Long copy reads (`pread` of more than `schedule::DIRTY_BYTES` on a handle without
//! `direct`), done in slices on the caller's normal scheduler.
//!
//! Moving such a copy to a dirty I/O scheduler costs two thread wake-ups, which for a
//! 1 MiB read are about as long as the copy itself. Instead the call allocates the result
//! (`enif_alloc_binary`, kept in a small resource, the job, so that it is released if the
//! calling process dies halfway), copies [`SLICE`] bytes, reports the time it took with
//! `enif_consume_timeslice` and reschedules itself (`enif_schedule_nif`, on the same kind
//! of scheduler) with the handle and the job as arguments, until all is copied. A slice
//! takes some tens of microseconds, so no normal scheduler is held for much longer than
//! that, whatever the length; between slices the VM may run other processes.
//!
//! Each slice pins the mapping afresh and checks what it touched (`Mapping::copy_at`):
//!
//! - the handle closed between slices: `{error, closed}`;
//! - the file cut by someone else under a slice: `{error, truncated}` (or `eio`), as any
//!   read answers;
//! - the mapping grown meanwhile: the copy goes on (the bytes are where they were);
//! - shrunk by `truncate/1` meanwhile: the result ends at the new end (what a read
//!   started now would return), or is `eof` if nothing before the new end was asked for.
//!
//! On every error the binary is released at once; a job abandoned by a dying process is
//! released by the resource's destructor.

use std::ffi::{c_char, c_int, c_void, CString};
use std::mem::MaybeUninit;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use emmap_core::Error;
use rustler::sys::{
    enif_alloc_binary, enif_alloc_resource, enif_consume_timeslice, enif_get_resource,
    enif_make_badarg, enif_make_binary, enif_make_resource, enif_open_resource_type,
    enif_realloc_binary, enif_release_binary, enif_release_resource, enif_schedule_nif,
    ErlNifBinary, ErlNifEnv, ErlNifResourceFlags, ErlNifResourceType, ErlNifTerm,
};

use crate::atoms;
use crate::resource::{self, Handle};
use crate::term::{self, atom, Answer, Env, Stop, Term};

/// Linux's ENOMEM: no memory for the result.
const ENOMEM: i32 = 12;

/// Bytes copied per slice: about 20-30 µs at the copy speeds seen here, page faults on a
/// file in the page cache included.
pub const SLICE: usize = 256 * 1024;

/// The result being filled in: the VM binary and the part of the mapping it copies.
struct State {
    bin: ErlNifBinary,
    /// Mapping offset of the result's byte 0.
    start: usize,
    /// Bytes copied so far.
    done: usize,
}

/// A copy in progress. Only the calling process's NIF calls touch it, one at a time; the
/// lock is never contended and makes the type safe to share anyway.
struct Job(Mutex<Option<State>>);

// SAFETY: `ErlNifBinary` holds the VM's pointers to a binary that this job alone owns (it
// is not a term yet); the VM's binary functions may be called on it from any thread, and
// the mutex serialises every access.
unsafe impl Send for Job {}
// SAFETY: see `Send`.
unsafe impl Sync for Job {}

impl Job {
    fn take(&self) -> Option<State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Releases a binary that never became a term.
fn release(mut st: State) {
    // SAFETY: `st.bin` came from `enif_alloc_binary` and was never handed to a term.
    unsafe { enif_release_binary(&mut st.bin) };
}

static JOB_TYPE: AtomicPtr<ErlNifResourceType> = AtomicPtr::new(ptr::null_mut());

unsafe extern "C" fn job_destructor(_env: *mut ErlNifEnv, obj: *mut c_void) {
    let j = obj as *mut Job;
    // SAFETY: the VM calls this once, after the last reference to the job is gone; `obj`
    // holds a `Job` written by `start` and dropped only here.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe {
        if let Some(st) = (*j).take() {
            release(st);
        }
        ptr::drop_in_place(j);
    }));
}

/// Opens (takes over, or creates) the job's resource type. Only in the NIF `load` and
/// `upgrade` callbacks. A job lives only while its call runs, and purging the module ends
/// the processes still running its code, so a type left behind by a reload has no job
/// this library must still decode.
pub fn register(env: *mut ErlNifEnv) -> bool {
    let name = CString::new(format!(
        "emmap_copy_job@{:x}",
        &JOB_TYPE as *const _ as usize
    ))
    .expect("no NUL in a formatted address");
    for flags in [
        ErlNifResourceFlags::ERL_NIF_RT_TAKEOVER,
        ErlNifResourceFlags::ERL_NIF_RT_CREATE,
    ] {
        let mut tried = MaybeUninit::uninit();
        // SAFETY: called from `load`/`upgrade` with their env; the name is NUL-terminated
        // and the VM copies it.
        let t = unsafe {
            enif_open_resource_type(
                env,
                ptr::null(),
                name.as_ptr(),
                Some(job_destructor),
                flags,
                tried.as_mut_ptr(),
            )
        };
        if !t.is_null() {
            JOB_TYPE.store(t as *mut ErlNifResourceType, Ordering::Release);
            return true;
        }
    }
    false
}

/// Starts the sliced copy of `[s, e)` of `h`'s mapping for the `pread` call running now,
/// whose handle argument is `handle`: the answer, or the rescheduled call that will give it.
pub fn start(env: Env<'_>, handle: Term, h: &Handle, s: usize, e: usize) -> Answer {
    let ty = JOB_TYPE.load(Ordering::Acquire);
    let mut bin = MaybeUninit::<ErlNifBinary>::uninit();
    // SAFETY: `bin` is a valid out-pointer; on success the VM fills it in.
    if ty.is_null() || unsafe { enif_alloc_binary(e - s, bin.as_mut_ptr()) } == 0 {
        return Err(Stop::Error(Error::Os(ENOMEM)));
    }
    let st = State {
        // SAFETY: filled in by the successful call above.
        bin: unsafe { bin.assume_init() },
        start: s,
        done: 0,
    };
    // SAFETY: `ty` is our registered type; the allocation holds exactly a `Job`, written
    // before the object is used; the term takes its own reference, so ours is released.
    let job = unsafe {
        let obj = enif_alloc_resource(ty, std::mem::size_of::<Job>()) as *mut Job;
        ptr::write(obj, Job(Mutex::new(Some(st))));
        let t = enif_make_resource(env.raw(), obj as *const c_void);
        enif_release_resource(obj as *const c_void);
        t
    };
    step(env, handle, h, job)
}

/// The continuation: `(Handle, Job)`.
unsafe extern "C" fn next(env: *mut ErlNifEnv, argc: c_int, argv: *const ErlNifTerm) -> ErlNifTerm {
    let run = || {
        if argc != 2 {
            return Err(Stop::Badarg);
        }
        // SAFETY: the VM passes the two terms given to `enif_schedule_nif`, valid for the
        // call; the env is this call's.
        let (a, env) = unsafe { (std::slice::from_raw_parts(argv, 2), Env::new(env)) };
        let h = resource::handle(env, a[0])?;
        step(env, a[0], h, a[1])
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(Ok(t)) => t,
        // SAFETY: `env` is the current NIF env.
        Ok(Err(s)) => match term::stopped(unsafe { Env::new(env) }, s) {
            Some(t) => t,
            // SAFETY: as above.
            None => unsafe { enif_make_badarg(env) },
        },
        // SAFETY: as above.
        Err(_) => unsafe { enif_make_badarg(env) },
    }
}

/// Copies one slice of the job, then answers or reschedules.
fn step(env: Env<'_>, handle: Term, h: &Handle, job_term: Term) -> Answer {
    let ty = JOB_TYPE.load(Ordering::Acquire);
    let mut obj: *const c_void = ptr::null();
    // SAFETY: `env` and `job_term` belong to this call; `ty` is our registered type.
    if ty.is_null() || unsafe { enif_get_resource(env.raw(), job_term, ty, &mut obj) } == 0 {
        return Err(Stop::Badarg);
    }
    // SAFETY: objects of our type hold a `Job` while the term is reachable (an argument).
    let job = unsafe { &*(obj as *const Job) };
    let Some(mut st) = job.take() else {
        return Err(Stop::Badarg); // a finished job passed again: cannot happen
    };
    let t0 = Instant::now();
    let size = st.bin.size;
    let n = SLICE.min(size - st.done);
    // SAFETY: the binary's `size` bytes at `data` are ours to write (alloc'd, not a term
    // yet); `done + n <= size`.
    let dst = unsafe { std::slice::from_raw_parts_mut(st.bin.data.add(st.done), n) };
    let (got, len) = match h.mapping.copy_at(st.start + st.done, dst) {
        Ok(r) => r,
        Err(e) => {
            release(st);
            return Err(Stop::Error(e));
        }
    };
    st.done += got;
    if got < n {
        // Shrunk meanwhile: the result ends at the new end (which may lie before bytes
        // copied by earlier slices).
        st.done = st.done.min(len.saturating_sub(st.start));
        return finish(env, st);
    }
    if st.done == size {
        return finish(env, st);
    }
    let us = t0.elapsed().as_micros();
    let pct = c_int::try_from((us / 10).clamp(1, 100)).unwrap_or(100);
    *job.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(st);
    // SAFETY: this call's env; reports time used, nothing else.
    unsafe { enif_consume_timeslice(env.raw(), pct) };
    let args = [handle, job_term];
    // SAFETY: the name is NUL-terminated and static; `next` takes the two arguments,
    // which are terms of this call (kept by the VM for the rescheduled one).
    Ok(unsafe {
        enif_schedule_nif(
            env.raw(),
            c"pread".as_ptr() as *const c_char,
            0,
            next,
            2,
            args.as_ptr(),
        )
    })
}

/// The result: the binary cut to what was copied, or `eof` if that is nothing.
fn finish(env: Env<'_>, mut st: State) -> Answer {
    if st.done == 0 {
        release(st);
        return Ok(atom(atoms::eof()));
    }
    // SAFETY: shrinking a binary this job owns; it keeps its first `done` bytes.
    if st.done < st.bin.size && unsafe { enif_realloc_binary(&mut st.bin, st.done) } == 0 {
        release(st);
        return Err(Stop::Error(Error::Os(ENOMEM)));
    }
    // SAFETY: hands the binary to a new term, which owns it from now on; `st` is not used
    // after this.
    Ok(unsafe { enif_make_binary(env.raw(), &mut st.bin) })
}
