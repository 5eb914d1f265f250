/*
 * emmap_counters.h — use emmap's persistent counters files from C.
 *
 * A counters file (made by emmap:open_counters/2 or by emmap_counters_open below) is:
 *   offset 0   8 bytes  "EMMAP01\n" (any "EMMAP??\n" is accepted)
 *   offset 8   8 bytes  N, unsigned 64-bit little-endian
 *   offset 16  8*N      counters, signed 64-bit, native byte order
 * and exactly 16 + 8*N bytes long. Updates are C11 atomic operations (sequentially
 * consistent, lock-free) on the shared mapping, the same operations emmap's NIF does, so C
 * programs and Erlang nodes can count in the same file at the same time.
 *
 * Header-only; C11 with <stdatomic.h>, and POSIX.1-2008 (mmap, O_CLOEXEC): compile with
 * -std=c11 -D_POSIX_C_SOURCE=200809L, or with the compiler's default GNU dialect. Typical
 * use:
 *
 *   emmap_counters c;
 *   int err = emmap_counters_open(&c, "/tmp/hits.bin", 0);   // 0: the file must exist
 *   if (err) { fprintf(stderr, "%s\n", strerror(err)); return 1; }
 *   int64_t before = emmap_counter_add(&c, 2, 1);            // counter 2 += 1
 *   emmap_counters_close(&c);
 */
#ifndef EMMAP_COUNTERS_H
#define EMMAP_COUNTERS_H

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef O_CLOEXEC
#error "emmap_counters.h needs POSIX.1-2008: compile with -D_POSIX_C_SOURCE=200809L"
#endif

/* A counter in the file is a plain 8-byte word that both sides update atomically: that
 * needs 64-bit atomics that are lock-free (a lock would live in this process only). */
#if ATOMIC_LLONG_LOCK_FREE != 2 && ATOMIC_LONG_LOCK_FREE != 2
#error "emmap_counters.h needs lock-free 64-bit atomics"
#endif
_Static_assert(sizeof(_Atomic int64_t) == 8, "an atomic counter must be 8 bytes");

typedef struct {
    _Atomic int64_t *slots; /* the N counters */
    uint64_t count;         /* N */
    void *base;             /* the mapping (NULL when closed) */
    size_t size;            /* its length */
} emmap_counters;

static inline uint64_t emmap__le64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static inline int emmap__errno(void) { return errno ? errno : EIO; }

/* Opens `path`. With n > 0 a missing file is created with n counters at 0 (and an
 * existing one must hold exactly n); with n == 0 the file must exist and its header gives
 * the count. Returns 0, or an errno value (EINVAL: not a counters file, or another count;
 * nothing is changed then). After a failure `c` is closed (emmap_counters_close is a
 * no-op on it). */
static inline int emmap_counters_open(emmap_counters *c, const char *path, uint64_t n) {
    memset(c, 0, sizeof *c);
    int created = 0;
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT && n > 0) {
        fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        created = fd >= 0;
    }
    if (fd < 0) return emmap__errno();
    struct stat st;
    if (fstat(fd, &st) != 0) { int e = emmap__errno(); close(fd); return e; }
    if (created) {
        if (n > (UINT64_MAX - 16) / 8 || ftruncate(fd, (off_t)(16 + 8 * n)) != 0) {
            int e = n > (UINT64_MAX - 16) / 8 ? EINVAL : emmap__errno();
            close(fd); unlink(path); return e;
        }
        st.st_size = (off_t)(16 + 8 * n);
    }
    if (st.st_size < 16) { close(fd); return EINVAL; }
    size_t size = (size_t)st.st_size;
    void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    int map_err = base == MAP_FAILED ? emmap__errno() : 0;
    close(fd); /* the mapping keeps the file */
    if (map_err) return map_err;
    unsigned char *h = (unsigned char *)base;
    if (created) {
        /* The count first, then the magic: a reader that sees the magic sees the count. */
        for (int i = 0; i < 8; i++) h[8 + i] = (unsigned char)(n >> (8 * i));
        uint64_t magic;
        memcpy(&magic, "EMMAP01\n", 8);
        atomic_store((_Atomic uint64_t *)(void *)h, magic);
    }
    uint64_t hn = emmap__le64(h + 8);
    if (memcmp(h, "EMMAP", 5) != 0 || h[7] != '\n' || (n != 0 && hn != n)
        || hn > (UINT64_MAX - 16) / 8 || size != 16 + 8 * hn) {
        munmap(base, size);
        return EINVAL;
    }
    c->base = base;
    c->size = size;
    c->count = hn;
    c->slots = (_Atomic int64_t *)(void *)(h + 16);
    return 0;
}

/* Unmaps the file. Safe to call twice, or after a failed open. */
static inline void emmap_counters_close(emmap_counters *c) {
    if (c->base) munmap(c->base, c->size);
    memset(c, 0, sizeof *c);
}

/* Adds k to counter i and returns the previous value (i must be < count). Wraps around
 * on overflow, as emmap does. */
static inline int64_t emmap_counter_add(emmap_counters *c, uint64_t i, int64_t k) {
    return atomic_fetch_add(&c->slots[i], k);
}

/* Stores v in counter i and returns the previous value (i must be < count). */
static inline int64_t emmap_counter_set(emmap_counters *c, uint64_t i, int64_t v) {
    return atomic_exchange(&c->slots[i], v);
}

/* The value of counter i (i must be < count). */
static inline int64_t emmap_counter_read(emmap_counters *c, uint64_t i) {
    return atomic_load(&c->slots[i]);
}

#endif
