//! Every atom the NIF answers with.

rustler::atoms! {
    ok,
    error,
    eof,
    dirty,
    undefined,
    true_ = "true",
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
