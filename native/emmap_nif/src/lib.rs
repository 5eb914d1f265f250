//! The emmap NIF library: decode terms, call `emmap_core`, encode results. Every check and
//! every pointer rule is in the core; what is here is the boundary, organised by what the
//! NIFs do:
//!
//! - `lifecycle.rs`: open, close, info, debug, sigbus, stat, flush, sync, advise, resize,
//!   truncate, allocate;
//! - `io.rs`: pread, pwrite, read, read_line, write, position, ipread;
//! - `atomics.rs`: one NIF per atomic operation, cas, load, store;
//! - `blocks.rs`, `queue.rs`: block storage (`emmap_blocks`) and the queue (`emmap_queue`);
//!
//! and by the machinery they share:
//!
//! - `copy.rs`: long copy reads, in slices on the caller's scheduler;
//! - `schedule.rs`: how a NIF is defined (`nif!`) and where it runs, decided in one place;
//! - `term.rs`: reading arguments and building answers, and the one `{error, Reason}`
//!   path;
//! - `resource.rs`: the handle's resource type, which survives reloads, and the one
//!   "resource binary into the mapping, or a copy" helper (`Handle::binary`);
//! - `entry.rs`: the library's entry, with the list of every NIF;
//! - `atoms.rs`.
//!
//! The library belongs to the Erlang module `emmap_nif` (internal: `emmap`,
//! `emmap_counters`, `emmap_blocks` and `emmap_queue` call it). Each NIF decodes its handle
//! first and its integers itself, answering `badarg` for a wrong type and the documented
//! `{error, Reason}` for an integer out of range, so the Erlang functions carry no range
//! guards. Answers are bare (`Bin`, `Old`, `ok`, `eof`, `{error, Reason}`): the public
//! function builds `{ok, V}` where the API has it.

#[cfg(not(target_os = "linux"))]
compile_error!("emmap supports Linux only (it relies on Linux's mmap, mremap and madvise flags and on /proc); build it on a Linux target");

mod atomics;
mod atoms;
mod blocks;
mod copy;
mod entry;
mod io;
mod lifecycle;
mod queue;
mod resource;
mod schedule;
mod term;
