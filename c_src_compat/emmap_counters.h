/*
 * emmap_counters.h — use emmap's persistent counters files from C.
 *
 * A counters file (made by emmap:open_counters/2 or by emmap_counters_open below) is:
 *   offset 0   8 bytes  "EMMAP01\n" (any "EMMAP??\n" is accepted)
 *   offset 8   8 bytes  N, unsigned 64-bit little-endian
 *   offset 16  8*N      counters, signed 64-bit, native byte order
 * and exactly 16 + 8*N bytes long. Updates are 64-bit atomic operations on the shared
 * mapping, so C programs and Erlang nodes can count in the same file at the same time.
 *
 * Header-only; needs C11 atomics (gcc/clang builtins). Linux/POSIX.
 */
#ifndef EMMAP_COUNTERS_H
#define EMMAP_COUNTERS_H

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    int64_t  *slots;   /* the N counters */
    uint64_t  count;   /* N */
    void     *base;    /* the mapping */
    size_t    size;    /* its length */
} emmap_counters;

static inline uint64_t emmap__le64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/* Opens `path`. With n > 0 a missing file is created with n counters at 0; with n == 0
 * the file must exist and its header gives the count. Returns 0, or an errno value
 * (EINVAL: the header or size does not match; nothing is changed then). */
static inline int emmap_counters_open(emmap_counters *c, const char *path, uint64_t n) {
    int created = 0;
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT && n > 0) {
        fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        created = fd >= 0;
    }
    if (fd < 0) return errno;
    struct stat st;
    if (fstat(fd, &st) != 0) { int e = errno; close(fd); return e; }
    if (created) {
        if (n > (UINT64_MAX - 16) / 8 || ftruncate(fd, (off_t)(16 + 8 * n)) != 0) {
            int e = errno ? errno : EINVAL; close(fd); unlink(path); return e;
        }
        st.st_size = (off_t)(16 + 8 * n);
    }
    if (st.st_size < 16) { close(fd); return EINVAL; }
    size_t size = (size_t)st.st_size;
    void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd); /* the mapping keeps the file */
    if (base == MAP_FAILED) return errno;
    unsigned char *h = (unsigned char *)base;
    if (created) {
        for (int i = 0; i < 8; i++) h[8 + i] = (unsigned char)(n >> (8 * i));
        __atomic_store_n((uint64_t *)h, *(const uint64_t *)"EMMAP01\n", __ATOMIC_SEQ_CST);
    }
    uint64_t hn = emmap__le64(h + 8);
    if (memcmp(h, "EMMAP", 5) != 0 || h[7] != '\n' || (n != 0 && hn != n)
        || hn > (UINT64_MAX - 16) / 8 || size != 16 + 8 * hn) {
        munmap(base, size);
        return EINVAL;
    }
    c->base = base; c->size = size; c->count = hn; c->slots = (int64_t *)(h + 16);
    return 0;
}

static inline void emmap_counters_close(emmap_counters *c) {
    if (c->base) munmap(c->base, c->size);
    c->base = NULL; c->slots = NULL; c->count = 0;
}

/* Adds k to counter i and returns the previous value (i must be < count). */
static inline int64_t emmap_counter_add(emmap_counters *c, uint64_t i, int64_t k) {
    return __atomic_fetch_add(&c->slots[i], k, __ATOMIC_SEQ_CST);
}

/* Stores v in counter i and returns the previous value. */
static inline int64_t emmap_counter_set(emmap_counters *c, uint64_t i, int64_t v) {
    return __atomic_exchange_n(&c->slots[i], v, __ATOMIC_SEQ_CST);
}

static inline int64_t emmap_counter_read(emmap_counters *c, uint64_t i) {
    return __atomic_load_n(&c->slots[i], __ATOMIC_SEQ_CST);
}

#endif
