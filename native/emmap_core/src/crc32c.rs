//! CRC-32C (Castagnoli, the checksum of iSCSI, ext4 and SCTP): what versions 2 and 3 of
//! block storage check their blocks with.
//!
//! [`crc32c`] is the standard function (`crc32c(b"123456789") == 0xE3069283`). Underneath,
//! [`update`] runs the bare register (no inversions): `crc32c(d) == !update(!0, d)`, and
//! `update(update(r, a), b) == update(r, a ++ b)`.
//!
//! Speed: on x86-64 CPUs with SSE4.2 and PCLMULQDQ (detected at run time, once) the
//! `crc32` instruction does 8 bytes a step. One chain of steps is limited by the
//! instruction's latency (3 cycles), so [`Plan`] splits a buffer of a known length into
//! three equal parts, runs three independent chains side by side and joins them with two
//! carry-less multiplications: about twice as fast as one chain on the AMD Zen 3 this was
//! measured on (1531 bytes: ~100 ns against ~185 ns). CPUs that also have AVX2 and
//! VPCLMULQDQ fold buffers of 256 bytes and more with 256-bit carry-less multiplications
//! instead (`hw::folded`, ~66 ns for 1531 bytes there). Everywhere else a table-driven
//! software loop (slice-by-8) gives the same results, more slowly. `EMMAP_SOFT_CRC` in the
//! environment forces the software loop, `EMMAP_NARROW_CRC` the `crc32` chains (read once,
//! at the first checksum).
//!
//! [`Plan::copy_update`] copies while it checksums, so that a block is read once when it
//! is stored or read out.
//!
//! Arithmetic, for the constants: the register is a polynomial over GF(2) of degree < 32
//! stored bit-reflected (bit 31 is x^0). Running the register over `n` zero bytes
//! multiplies it by x^(8n) modulo P = 0x1EDC6F41 (reflected: 0x82F63B78), so the CRC of
//! `a ++ b` is `update(0, b) ^ update(r_a, zeros(len b))` = `update(0, b) ^ r_a * x^(8 len b)`.

use std::ptr;

/// The reflected polynomial.
const POLY: u32 = 0x82F6_3B78;

/// Slice-by-8 tables: `TABLE[0]` is the classic byte table, `TABLE[k][b]` the register
/// after byte `b` followed by `k` zero bytes.
static TABLE: [[u32; 256]; 8] = tables();

const fn tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut b = 0;
    while b < 256 {
        let mut c = b as u32;
        let mut i = 0;
        while i < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
            i += 1;
        }
        t[0][b] = c;
        b += 1;
    }
    let mut k = 1;
    while k < 8 {
        let mut b = 0;
        while b < 256 {
            let prev = t[k - 1][b];
            t[k][b] = (prev >> 8) ^ t[0][(prev & 0xFF) as usize];
            b += 1;
        }
        k += 1;
    }
    t
}

/// The standard CRC-32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    !update(!0, data)
}

/// Runs the CRC register `crc` over `data` (no pre- or post-inversion).
pub fn update(crc: u32, data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if hw::available() {
        // SAFETY: the CPU has SSE4.2 (checked at run time just above).
        return unsafe { hw::serial(crc, data) };
    }
    soft(crc, data)
}

/// [`update`] of `crc` over the 8 little-endian bytes of `v`.
#[inline]
pub fn update_u64(crc: u32, v: u64) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if hw::available() {
        // SAFETY: the CPU has SSE4.2 (checked at run time just above).
        return unsafe { hw::crc_u64(crc, v) };
    }
    soft(crc, &v.to_le_bytes())
}

/// [`update`] of `crc` over the 16 little-endian bytes of `a` and then `b`.
#[inline]
pub fn update_2u64(crc: u32, a: u64, b: u64) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if hw::available() {
        // SAFETY: the CPU has SSE4.2 (checked at run time just above).
        return unsafe { hw::crc_2u64(crc, a, b) };
    }
    soft(soft(crc, &a.to_le_bytes()), &b.to_le_bytes())
}

/// The portable version of [`update`].
pub fn soft(mut crc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let lo = crc ^ u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        crc = TABLE[7][(lo & 0xFF) as usize]
            ^ TABLE[6][((lo >> 8) & 0xFF) as usize]
            ^ TABLE[5][((lo >> 16) & 0xFF) as usize]
            ^ TABLE[4][(lo >> 24) as usize]
            ^ TABLE[3][c[4] as usize]
            ^ TABLE[2][c[5] as usize]
            ^ TABLE[1][c[6] as usize]
            ^ TABLE[0][c[7] as usize];
    }
    for &b in chunks.remainder() {
        crc = (crc >> 8) ^ TABLE[0][((crc ^ u32::from(b)) & 0xFF) as usize];
    }
    crc
}

/// `a * b mod P`, both reflected.
const fn mul_mod(a: u32, b: u32) -> u32 {
    let (mut a, mut p) = (a, 0u32);
    let mut i = 0;
    while i < 32 {
        if b & (0x8000_0000 >> i) != 0 {
            p ^= a;
        }
        a = if a & 1 != 0 { (a >> 1) ^ POLY } else { a >> 1 };
        i += 1;
    }
    p
}

/// `x^n mod P`, reflected.
pub const fn x_pow(mut n: u64) -> u32 {
    let (mut r, mut sq) = (0x8000_0000u32, 0x4000_0000u32); // 1 and x
    while n > 0 {
        if n & 1 != 0 {
            r = mul_mod(r, sq);
        }
        sq = mul_mod(sq, sq);
        n >>= 1;
    }
    r
}

/// The register `r` run over `n` zero bytes: `r * x^(8n) mod P` (software).
pub fn shift_soft(r: u32, n: u64) -> u32 {
    mul_mod(r, x_pow(8 * n))
}

/// Buffers from this length on are checksummed by folding with 256-bit carry-less
/// multiplications when the CPU can (`hw::folded`, which needs at least 143 bytes).
const WIDE_MIN: usize = 256;

/// The constants that move a 16-byte block of the message `d` bytes further (see
/// `hw::folded`): `x^(8d + 31)` for its first 8 bytes and `x^(8d - 33)` for its last 8,
/// mod P, reflected (the multiplication itself adds a factor x^33).
const fn fold_k(d: u64) -> [u64; 2] {
    [x_pow(8 * d + 31) as u64, x_pow(8 * d - 33) as u64]
}

/// [`fold_k`] for the distances `hw::folded` moves blocks by: 16, 32, 64, 96, 128 bytes.
const FOLD: [[u64; 2]; 5] = [fold_k(16), fold_k(32), fold_k(64), fold_k(96), fold_k(128)];

/// How to checksum buffers of one length fast: the three equal parts and the constants
/// that join them. Made once per block size (see `blocks`), used for every block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    len: usize,
    /// Bytes in each of the three parts (a multiple of 8; 0: too short to split).
    part: usize,
    /// `x^(8 * 2 * part - 33) mod P` and `x^(8 * part - 33) mod P`: with the `crc32`
    /// instruction's own factor of x^33 (see `hw::shift`), multiplying by these shifts a
    /// register over two parts and over one part.
    k2: u32,
    k1: u32,
}

impl Plan {
    /// The plan for buffers of `len` bytes.
    pub fn new(len: usize) -> Plan {
        // Below ~24 words per part the joins cost more than they save.
        let part = if len >= 3 * 64 { len / 24 * 8 } else { 0 };
        let (k2, k1) = if part == 0 {
            (0, 0)
        } else {
            (x_pow(16 * part as u64 - 33), x_pow(8 * part as u64 - 33))
        };
        Plan { len, part, k2, k1 }
    }

    /// The length this plan is for.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// [`update`] of `crc` over `data`, fast when `data` has the plan's length (any other
    /// length gives the same result, by the plain loop).
    #[inline]
    pub fn update(&self, crc: u32, data: &[u8]) -> u32 {
        #[cfg(target_arch = "x86_64")]
        if hw::available() {
            if data.len() == self.len && self.len >= WIDE_MIN && hw::wide() {
                // SAFETY: AVX2, VPCLMULQDQ, PCLMULQDQ and SSE4.2 are there (checked at run
                // time); `data` is `len >= WIDE_MIN` readable bytes; nothing is written.
                return unsafe {
                    hw::folded::<false>(crc, data.as_ptr(), ptr::null_mut(), self.len)
                };
            }
            if data.len() == self.len && self.part > 0 {
                // SAFETY: SSE4.2 and PCLMULQDQ are there (checked at run time); `data` is
                // `len` readable bytes, and nothing is written (no copy).
                return unsafe {
                    hw::three_way::<false>(crc, data.as_ptr(), ptr::null_mut(), self)
                };
            }
            // SAFETY: as in `update`.
            return unsafe { hw::serial(crc, data) };
        }
        soft(crc, data)
    }

    /// Copies the plan's length of bytes from `src` to `dst` and returns [`update`] of
    /// `crc` over them, in one pass (the bytes are read once, checksummed as they are
    /// written). What is checksummed is exactly what was written, even if `src` changes
    /// meanwhile.
    ///
    /// # Safety
    /// `src` must be readable and `dst` writable for `self.len()` bytes, and the two
    /// ranges must not overlap unless they are the same range.
    #[inline]
    pub unsafe fn copy_update(&self, crc: u32, src: *const u8, dst: *mut u8) -> u32 {
        #[cfg(target_arch = "x86_64")]
        if self.len >= WIDE_MIN && hw::wide() {
            // SAFETY: AVX2, VPCLMULQDQ, PCLMULQDQ and SSE4.2 are there (checked at run
            // time); the caller guarantees both ranges (`len >= WIDE_MIN` bytes); each
            // vector is read before it is written, so a range copied onto itself stays.
            return unsafe { hw::folded::<true>(crc, src, dst, self.len) };
        }
        #[cfg(target_arch = "x86_64")]
        if hw::available() && self.part > 0 {
            // SAFETY: SSE4.2 and PCLMULQDQ are there (checked at run time); the caller
            // guarantees both ranges; each word is read before it is written, so a range
            // copied onto itself stays as it was.
            return unsafe { hw::three_way::<true>(crc, src, dst, self) };
        }
        // SAFETY: per this function's contract (memmove copes with identical ranges).
        unsafe { ptr::copy(src, dst, self.len) };
        // SAFETY: `dst` holds the `len` bytes just written; shared memory may be read
        // through a slice for checksumming (see `mem.rs`).
        self.update(crc, unsafe { std::slice::from_raw_parts(dst, self.len) })
    }
}

#[cfg(target_arch = "x86_64")]
mod hw {
    use std::arch::x86_64::{
        __m128i, __m256i, _mm256_castsi256_si128, _mm256_clmulepi64_epi128,
        _mm256_extracti128_si256, _mm256_loadu_si256, _mm256_set_epi32, _mm256_set_epi64x,
        _mm256_storeu_si256, _mm256_xor_si256, _mm_clmulepi64_si128, _mm_crc32_u64, _mm_crc32_u8,
        _mm_cvtsi128_si64, _mm_cvtsi32_si128, _mm_extract_epi64, _mm_loadu_si128, _mm_set_epi64x,
        _mm_storeu_si128, _mm_xor_si128,
    };
    use std::sync::atomic::{AtomicU8, Ordering};

    use super::{Plan, FOLD};

    /// 0: not checked yet, 1: no, 2: SSE4.2 and PCLMULQDQ, 3: also AVX2 and VPCLMULQDQ.
    static HAVE: AtomicU8 = AtomicU8::new(0);

    #[inline]
    fn level() -> u8 {
        match HAVE.load(Ordering::Relaxed) {
            0 => detect(),
            l => l,
        }
    }

    /// Whether the CPU has SSE4.2 (the `crc32` instruction) and PCLMULQDQ.
    #[inline]
    pub fn available() -> bool {
        level() >= 2
    }

    /// Whether the CPU also has AVX2 and VPCLMULQDQ (for [`folded`]).
    #[inline]
    pub fn wide() -> bool {
        level() == 3
    }

    /// `EMMAP_SOFT_CRC` set: the portable code only; `EMMAP_NARROW_CRC`: no [`folded`].
    #[cold]
    fn detect() -> u8 {
        let base = std::is_x86_feature_detected!("sse4.2")
            && std::is_x86_feature_detected!("pclmulqdq")
            && std::env::var_os("EMMAP_SOFT_CRC").is_none();
        let wide = base
            && std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("vpclmulqdq")
            && std::env::var_os("EMMAP_NARROW_CRC").is_none();
        let l = match (base, wide) {
            (_, true) => 3,
            (true, false) => 2,
            _ => 1,
        };
        HAVE.store(l, Ordering::Relaxed);
        l
    }

    #[inline]
    fn word(d: &[u8], i: usize) -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&d[i..i + 8]);
        u64::from_le_bytes(w)
    }

    /// # Safety
    /// The CPU must have SSE4.2.
    #[inline]
    #[target_feature(enable = "sse4.2")]
    pub unsafe fn crc_u64(crc: u32, v: u64) -> u32 {
        _mm_crc32_u64(u64::from(crc), v) as u32
    }

    /// # Safety
    /// The CPU must have SSE4.2.
    #[inline]
    #[target_feature(enable = "sse4.2")]
    pub unsafe fn crc_2u64(crc: u32, a: u64, b: u64) -> u32 {
        _mm_crc32_u64(_mm_crc32_u64(u64::from(crc), a), b) as u32
    }

    /// # Safety
    /// The CPU must have SSE4.2.
    #[target_feature(enable = "sse4.2")]
    pub unsafe fn serial(crc: u32, data: &[u8]) -> u32 {
        let mut c = u64::from(crc);
        let mut chunks = data.chunks_exact(8);
        for w in &mut chunks {
            c = _mm_crc32_u64(c, word(w, 0));
        }
        let mut crc = c as u32;
        for &b in chunks.remainder() {
            crc = _mm_crc32_u8(crc, b);
        }
        crc
    }

    /// `r * x^(8n) mod P` for the `n` whose constant `k` is (see [`Plan`]). The carry-less
    /// product of two reflected 32-bit values, read as a reflected 64-bit word, is
    /// `r * k * x`; the `crc32` instruction multiplies its 64-bit input by x^32 and
    /// reduces, so the result is `r * k * x^33 mod P`. (Callable without `unsafe` only
    /// from code compiled for the same CPU features, such as [`three_way`].)
    #[inline]
    #[target_feature(enable = "sse4.2,pclmulqdq")]
    fn shift(r: u32, k: u32) -> u32 {
        let p = _mm_clmulepi64_si128(_mm_cvtsi32_si128(r as i32), _mm_cvtsi32_si128(k as i32), 0);
        _mm_crc32_u64(0, _mm_cvtsi128_si64(p) as u64) as u32
    }

    /// A 16-byte block moved `k`'s distance further: `lo * k[0] ^ hi * k[1]` carry-less.
    #[inline]
    #[target_feature(enable = "sse4.2,pclmulqdq")]
    fn fold128(x: __m128i, k: __m128i) -> __m128i {
        _mm_xor_si128(
            _mm_clmulepi64_si128(x, k, 0x00),
            _mm_clmulepi64_si128(x, k, 0x11),
        )
    }

    /// [`fold128`] on both 16-byte halves.
    #[inline]
    #[target_feature(enable = "avx2,vpclmulqdq")]
    fn fold256(x: __m256i, k: __m256i) -> __m256i {
        _mm256_xor_si256(
            _mm256_clmulepi64_epi128(x, k, 0x00),
            _mm256_clmulepi64_epi128(x, k, 0x11),
        )
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn k256(d: usize) -> __m256i {
        let [lo, hi] = FOLD[d];
        _mm256_set_epi64x(hi as i64, lo as i64, hi as i64, lo as i64)
    }

    #[inline]
    #[target_feature(enable = "sse4.2")]
    fn k128(d: usize) -> __m128i {
        let [lo, hi] = FOLD[d];
        _mm_set_epi64x(hi as i64, lo as i64)
    }

    /// The CRC register `crc` run over `len` bytes at `src` (and with `COPY` the bytes
    /// copied to `dst`) by folding: the first `len % 16` bytes go through the `crc32`
    /// instruction; the rest, a multiple of 16 bytes, is read 128 bytes a step into four
    /// 256-bit accumulators (the register XORed into its first 4 bytes), each moved 128
    /// bytes further by two carry-less multiplications per 16 bytes and XORed with the
    /// next bytes. Read as bits, a 16-byte block is a polynomial (first byte's lowest bit
    /// the highest power); moving it `d` bytes on multiplies it by x^(8d) mod P, which
    /// `fold128` does with the constants of [`super::fold_k`]. The accumulators are then
    /// folded into the last 16-byte block, the 16-byte blocks left over are folded in one
    /// by one, and two `crc32` instructions over the final block give the register: the
    /// block and the message are the same polynomial mod P, at the same place.
    ///
    /// # Safety
    /// The CPU must have AVX2, VPCLMULQDQ, PCLMULQDQ and SSE4.2; `len >= 143`; `src` must
    /// be readable (and with `COPY`, `dst` writable) for `len` bytes; with `COPY` the
    /// ranges must not overlap unless they are the same range (every vector is read before
    /// it is written).
    #[target_feature(enable = "avx2,vpclmulqdq,pclmulqdq,sse4.2")]
    pub unsafe fn folded<const COPY: bool>(
        crc: u32,
        src: *const u8,
        dst: *mut u8,
        len: usize,
    ) -> u32 {
        // Every offset below stays below `len` with the access's width: the prefix loops
        // stop at `p <= 15`, the 128-byte steps at `off + 128 <= len`, the 16-byte steps
        // at `off + 16 <= len` (`len - p` is a multiple of 16), and `p + 128 <= len`.
        let p = len % 16;
        let mut r = crc;
        let mut i = 0;
        while i + 8 <= p {
            // SAFETY: `i + 8 <= p < len` (see above); unaligned reads need no alignment.
            let w = unsafe { (src.add(i) as *const u64).read_unaligned() };
            if COPY {
                // SAFETY: as for the read, in `dst`.
                unsafe { (dst.add(i) as *mut u64).write_unaligned(w) };
            }
            r = _mm_crc32_u64(u64::from(r), w) as u32;
            i += 8;
        }
        while i < p {
            // SAFETY: `i < p < len`.
            let b = unsafe { *src.add(i) };
            if COPY {
                // SAFETY: as above.
                unsafe { *dst.add(i) = b };
            }
            r = _mm_crc32_u8(r, b);
            i += 1;
        }
        macro_rules! load {
            ($t:ty, $ld:ident, $st:ident, $off:expr) => {{
                // SAFETY: `$off` plus the vector's width is at most `len` (see above);
                // the loads and stores are unaligned.
                let v = unsafe { $ld(src.add($off) as *const $t) };
                if COPY {
                    // SAFETY: as for the load, in `dst`.
                    unsafe { $st(dst.add($off) as *mut $t, v) };
                }
                v
            }};
        }
        let y = |off: usize| load!(__m256i, _mm256_loadu_si256, _mm256_storeu_si256, off);
        let first = _mm256_set_epi32(0, 0, 0, 0, 0, 0, 0, r as i32);
        let mut a = [
            _mm256_xor_si256(y(p), first),
            y(p + 32),
            y(p + 64),
            y(p + 96),
        ];
        let k = k256(4);
        let mut off = p + 128;
        while off + 128 <= len {
            for (j, acc) in a.iter_mut().enumerate() {
                *acc = _mm256_xor_si256(fold256(*acc, k), y(off + 32 * j));
            }
            off += 128;
        }
        let mut w = a[3];
        w = _mm256_xor_si256(w, fold256(a[2], k256(1)));
        w = _mm256_xor_si256(w, fold256(a[1], k256(2)));
        w = _mm256_xor_si256(w, fold256(a[0], k256(3)));
        let k16 = k128(0);
        let mut x = _mm_xor_si128(
            fold128(_mm256_castsi256_si128(w), k16),
            _mm256_extracti128_si256(w, 1),
        );
        while off + 16 <= len {
            let v = load!(__m128i, _mm_loadu_si128, _mm_storeu_si128, off);
            x = _mm_xor_si128(fold128(x, k16), v);
            off += 16;
        }
        let lo = _mm_cvtsi128_si64(x) as u64;
        let hi = _mm_extract_epi64(x, 1) as u64;
        _mm_crc32_u64(_mm_crc32_u64(0, lo), hi) as u32
    }

    /// The three-chain CRC of `plan.len()` bytes at `src`; with `COPY`, each word is
    /// also written to `dst` right after it is read.
    ///
    /// # Safety
    /// The CPU must have SSE4.2 and PCLMULQDQ; `src` must be readable (and with `COPY`,
    /// `dst` writable) for `plan.len()` bytes; with `COPY` the ranges must not overlap
    /// unless they are the same range.
    #[target_feature(enable = "sse4.2,pclmulqdq")]
    pub unsafe fn three_way<const COPY: bool>(
        crc: u32,
        src: *const u8,
        dst: *mut u8,
        plan: &Plan,
    ) -> u32 {
        let l = plan.part;
        // Every offset `rd` and `wr` get below is at most `plan.len - 8` (`3 * l <= len` by
        // construction of the plan, and the tail loop stops 8 bytes before the end).
        let rd = |i: usize| {
            // SAFETY: `i + 8 <= plan.len`, inside the range the caller vouches for;
            // unaligned reads need no alignment.
            unsafe { (src.add(i) as *const u64).read_unaligned() }
        };
        let wr = |i: usize, v: u64| {
            if COPY {
                // SAFETY: as for `rd`, in `dst`, writable with `COPY` (caller's contract).
                unsafe { (dst.add(i) as *mut u64).write_unaligned(v) }
            }
        };
        let (mut x, mut y, mut z) = (u64::from(crc), 0u64, 0u64);
        let mut i = 0;
        while i < l {
            let (a, b, c) = (rd(i), rd(l + i), rd(2 * l + i));
            wr(i, a);
            wr(l + i, b);
            wr(2 * l + i, c);
            x = _mm_crc32_u64(x, a);
            y = _mm_crc32_u64(y, b);
            z = _mm_crc32_u64(z, c);
            i += 8;
        }
        let mut r = shift(x as u32, plan.k2) ^ shift(y as u32, plan.k1) ^ z as u32;
        let mut i = 3 * l;
        while i + 8 <= plan.len {
            let w = rd(i);
            wr(i, w);
            r = _mm_crc32_u64(u64::from(r), w) as u32;
            i += 8;
        }
        while i < plan.len {
            // SAFETY: as above, `i < plan.len`.
            let b = unsafe { *src.add(i) };
            if COPY {
                // SAFETY: as above.
                unsafe { *dst.add(i) = b };
            }
            r = _mm_crc32_u8(r, b);
            i += 1;
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The definition, one bit at a time.
    fn bitwise(mut crc: u32, data: &[u8]) -> u32 {
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ POLY
                } else {
                    crc >> 1
                };
            }
        }
        crc
    }

    #[test]
    fn known_values() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA); // RFC 3720, B.4
        assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
        let inc: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&inc), 0x46DD_794E);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn every_length_and_split_agrees_with_the_definition() {
        let data: Vec<u8> = (0..2000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in (0..300).chain([383, 384, 575, 576, 577, 1000, 1531, 1999]) {
            let d = &data[..len];
            let want = bitwise(0x1234_5678, d);
            assert_eq!(soft(0x1234_5678, d), want, "soft {len}");
            assert_eq!(update(0x1234_5678, d), want, "update {len}");
            assert_eq!(Plan::new(len).update(0x1234_5678, d), want, "plan {len}");
            // A plan for another length still answers right (by the plain loop).
            assert_eq!(Plan::new(len + 1).update(0x1234_5678, d), want);
        }
        for v in [
            0u64,
            1,
            0x8000_0000_0000_0000,
            0x0123_4567_89AB_CDEF,
            u64::MAX,
        ] {
            assert_eq!(
                update_u64(0xDEAD_BEEF, v),
                bitwise(0xDEAD_BEEF, &v.to_le_bytes())
            );
        }
    }

    #[test]
    fn copying_while_checksumming_copies_and_checksums() {
        let data: Vec<u8> = (0..1600u32).map(|i| (i * 31 + 7) as u8).collect();
        for len in [0, 1, 100, 191, 192, 193, 1531, 1600] {
            let plan = Plan::new(len);
            let mut out = vec![0u8; len];
            // SAFETY: both buffers hold `len` bytes and are distinct.
            let c = unsafe { plan.copy_update(7, data.as_ptr(), out.as_mut_ptr()) };
            assert_eq!(out, &data[..len]);
            assert_eq!(c, bitwise(7, &data[..len]), "{len}");
            // Onto itself.
            let mut same = data[..len].to_vec();
            let p = same.as_mut_ptr();
            // SAFETY: the same range, `len` bytes.
            let c2 = unsafe { plan.copy_update(7, p, p) };
            assert_eq!((c2, &same[..]), (c, &data[..len]));
        }
    }

    /// Each hardware path the CPU has, called directly (whatever `EMMAP_*_CRC` says), for
    /// every length around its thresholds and some larger ones, with and without copying
    /// (to another buffer and onto itself).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn every_hardware_path_agrees_with_the_definition() {
        use std::arch::is_x86_feature_detected as has;
        if !(has!("sse4.2") && has!("pclmulqdq")) {
            return;
        }
        let wide = has!("avx2") && has!("vpclmulqdq");
        let data: Vec<u8> = (0..70_000u32)
            .map(|i| (i.wrapping_mul(2_246_822_519) >> 11) as u8)
            .collect();
        let lens = (143..1100).chain([1531, 1532, 2048, 4095, 4096, 65_543]);
        for len in lens {
            let d = &data[..len];
            let want = bitwise(0x5EED_1234, d);
            let plan = Plan::new(len);
            let mut out = vec![0u8; len];
            if plan.part > 0 {
                // SAFETY: the CPU has the features (checked above); `d` holds `len` bytes,
                // nothing is written.
                let got = unsafe {
                    hw::three_way::<false>(0x5EED_1234, d.as_ptr(), ptr::null_mut(), &plan)
                };
                assert_eq!(got, want, "three_way {len}");
                // SAFETY: as above; `out` holds `len` writable bytes, apart from `d`.
                let got = unsafe {
                    hw::three_way::<true>(0x5EED_1234, d.as_ptr(), out.as_mut_ptr(), &plan)
                };
                assert_eq!((got, &out[..]), (want, d), "three_way copy {len}");
            }
            if wide {
                // SAFETY: the CPU has the features (checked above); `len >= 143`; `d`
                // holds `len` bytes, nothing is written.
                let got =
                    unsafe { hw::folded::<false>(0x5EED_1234, d.as_ptr(), ptr::null_mut(), len) };
                assert_eq!(got, want, "folded {len}");
                out.fill(0);
                // SAFETY: as above; `out` holds `len` writable bytes, apart from `d`.
                let got =
                    unsafe { hw::folded::<true>(0x5EED_1234, d.as_ptr(), out.as_mut_ptr(), len) };
                assert_eq!((got, &out[..]), (want, d), "folded copy {len}");
                let p = out.as_mut_ptr();
                // SAFETY: the same range, `len` bytes.
                let got = unsafe { hw::folded::<true>(0x5EED_1234, p, p, len) };
                assert_eq!((got, &out[..]), (want, d), "folded onto itself {len}");
            }
        }
    }

    #[test]
    fn shifting_is_running_over_zeros() {
        for n in [0u64, 1, 3, 8, 100, 1531] {
            for r in [1u32, 0x8000_0000, 0xDEAD_BEEF] {
                assert_eq!(shift_soft(r, n), bitwise(r, &vec![0; n as usize]));
            }
        }
    }

    proptest! {
        #[test]
        fn fast_paths_match_the_definition(d in proptest::collection::vec(any::<u8>(), 0..3000), r in any::<u32>()) {
            let want = bitwise(r, &d);
            prop_assert_eq!(update(r, &d), want);
            prop_assert_eq!(soft(r, &d), want);
            prop_assert_eq!(Plan::new(d.len()).update(r, &d), want);
        }

        #[test]
        fn appending_composes(a in proptest::collection::vec(any::<u8>(), 0..500), b in proptest::collection::vec(any::<u8>(), 0..500)) {
            let ab: Vec<u8> = a.iter().chain(&b).copied().collect();
            prop_assert_eq!(update(update(!0, &a), &b), update(!0, &ab));
            prop_assert_eq!(update(0, &b) ^ shift_soft(update(!0, &a), b.len() as u64), update(!0, &ab));
        }
    }
}
