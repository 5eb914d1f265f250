//! Every atom the NIFs answer with or read.

rustler::atoms! {
    ok,
    error,
    eof,
    undefined,
    true_ = "true",
    // the badarg answer of `badarg_answered` NIFs (schedule.rs)
    emmap_badarg = "$emmap_badarg",
    false_ = "false",
    // info/1 keys
    size,
    exist,
    path,
    offset,
    direct,
    shared,
    writable,
    lock,
    anon,
    fixed_size,
    max_inc_size,
    closed,
    address,
    lost_from,
    enabled,
    library,
    // position/2
    bof,
    cur,
    // advise/4
    normal,
    random,
    sequential,
    will_need,
    dont_need,
    no_reuse,
    // resize/1
    grow,
    // block storage and queue errors and answers
    not_initialized,
    corrupt,
    full,
    mismatch,
    corrupt_header,
    nil,
    moved,
    compressed,
}
