/* y = x W^T (+ b) over quantised weights, in integer arithmetic: each row of x is rounded to
 * int8 with a scale of its own on the way in (dynamic per-token activation quantisation, as in
 * vLLM's W8A8 int8 and llama.cpp's q8_0 dot products), and the dot products are sums of
 * int8 x uint8 products in int32: 64 per instruction (vpdpbusd) where the CPU has AVX512-VNNI.
 *
 *   x [M, K] fp32;  xs[i] = max_k |x[i, k]| / 127,  xq[i, k] = rint(x[i, k] * (127 / max)) in -127..127
 *
 * W is stored for the kernel (seer/layers/quant.py writes it): its N rows in blocks of NB = 32,
 * padded to whole blocks, and within a block the 32 rows' weights of four consecutive columns k
 * side by side, so that one 64-byte vector holds 4 columns of 16 rows, and a block is one stream.
 *
 *   seer_int_linear_q8: q = w + 128 (w in -127..127), W[n, k] = ws[n] w; ws [N padded];
 *     bytes [N / 32][K4 / 4][32][4], K4 = K rounded up to 4 (the padding's x is 0)
 *     y[i, n] = (sum_k q xq - 128 sum_k xq) (xs[i] ws[n]) + b[n]        (the sums exact in int32)
 *   seer_int_linear_q4: q = w + 8 in 0..15, one scale per 32 columns: W[n, k] = ws[n, k / 32] (q - 8);
 *     K a multiple of 32; scales fp16 (4.5 bits a weight in all, as llama.cpp's q4_0) [N / 32][K / 32][32];
 *     bytes [N / 32][K / 32][4][2][16][4]: for
 *     group g, pair of steps c, half v (rows 16v..16v+15), row r, column t: the low nibble holds
 *     column 32g + 8c + t, the high one column 32g + 8c + 4 + t
 *     y[i, n] = xs[i] sum_g ws[n, g] (sum_{k in g} q xq - 8 sum_{k in g} xq) + b[n]
 *
 * A vector lane is one output: four x values (broadcast) meet four weights of 16 rows, so no
 * sums across lanes are needed. A tile is MR rows of x against a block; each thread streams its
 * blocks once (the threads of pool.c split the blocks). Every output comes from
 * its own row of x alone in one fixed order: a row's result never depends on the rows with it.
 * The scalar fallback (no AVX512-VNNI) gives the same results, slowly.
 *
 * Returns 0, 1 when a buffer cannot be allocated, 2 when K does not suit the format.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#pragma GCC optimize("no-fast-math", "fp-contract=off")
#include "kernels.h"
#include "pool.h"
#include "vec.h"

#define NB 32 /* rows of W per block: two vectors of outputs */
#define Q4_GROUP 32
/* (No software prefetch: the hardware's keeps up with a thread's one stream, and prefetches 1 KB
 * ahead measured slower: int8 at 1 row 26 -> 35 GB/s and at 16 rows 1850 -> 2260 tokens/s without.) */
enum { Q8, Q4 };
enum { MR_Q8 = 8, MR_Q4 = 4 }; /* rows of x per tile: the accumulators fill the 32 registers */

typedef uint8_t vu8 __attribute__((vector_size(64)));
typedef int8_t vs8 __attribute__((vector_size(64)));

/* lane l: acc[l] + sum_{t < 4} a[4l + t] b[4l + t], the bytes of a unsigned and those of b signed */
static inline vi dot4(vi acc, vi a, vi b) {
#if defined(__AVX512VNNI__)
    return (vi)_mm512_dpbusd_epi32((__m512i)acc, (__m512i)a, (__m512i)b);
#else
    const vu8 ua = (vu8)a;
    const vs8 sb = (vs8)b;
    for (int l = 0; l < VW; l++)
        for (int t = 0; t < 4; t++) acc[l] += (int32_t)ua[4 * l + t] * (int32_t)sb[4 * l + t];
    return acc;
#endif
}

/* The four bytes at p on every lane. */
static inline vi bcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, sizeof v);
    return (vi){0} + v;
}

/* The first n floats at p (at most 16), zeros after them; and the first n of v to p. */
static inline vf load_part(const float *p, int64_t n) {
    vf v = {0};
    memcpy(&v, p, (n < VW ? n : VW) * sizeof(float));
    return v;
}

static inline void store(float *p, vf v, int64_t n) { memcpy(p, &v, (n < VW ? n : VW) * sizeof(float)); }

/* x as int8 rows of stride kp (zeros past K) and their scales xs; and what the weights' offset
 * adds to the dot products, to start the sums from: q8, -128 sum_k xq (xsum[i]); q4, -8 times each
 * group's sum (xsum[i * K / 32 + g]). A row with a non-finite value gets xs = NaN: its outputs
 * are NaN. */
static void quantize_rows(const float *x, int64_t i0, int64_t i1, int64_t K, int64_t kp, int fmt, int8_t *xq,
                          float *xs, int32_t *xsum) {
    typedef int8_t v16s8 __attribute__((vector_size(16)));
    const float magic = 12582912.f; /* 1.5 * 2^23: (v + magic) - magic rounds |v| < 2^22 to nearest even, as rintf */
    for (int64_t i = i0; i < i1; i++) {
        const float *r = x + i * K;
        int8_t *q = xq + i * kp;
        /* max |x| by the bits of |x| (ordered as the floats are); non-finite from the bits too:
         * -ffast-math may not see NaNs. */
        vi top = {0}, bad = {0};
        int64_t k = 0;
        for (; k + VW <= K; k += VW) {
            const vi bits = loadi(r + k) & 0x7fffffff;
            const vi up = bits > top; /* lanes: -1 where true (a max by masks: C has no vector ?:) */
            top = (bits & up) | (top & ~up);
            bad |= bits >= 0x7f800000;
        }
        uint32_t amax_bits = 0, nonfinite = 0;
        for (int l = 0; l < VW; l++) {
            amax_bits = (uint32_t)top[l] > amax_bits ? (uint32_t)top[l] : amax_bits;
            nonfinite |= bad[l] != 0;
        }
        for (; k < K; k++) {
            uint32_t bits;
            memcpy(&bits, r + k, sizeof bits);
            bits &= 0x7fffffffu;
            amax_bits = bits > amax_bits ? bits : amax_bits;
            nonfinite |= bits >= 0x7f800000u;
        }
        float amax;
        memcpy(&amax, &amax_bits, sizeof amax);
        const float inv = !nonfinite && amax > 0.f ? 127.f / amax : 0.f;
        xs[i] = nonfinite ? NAN : amax / 127.f;
        for (k = 0; k + VW <= K; k += VW) {
            const vf v = (loadf(r + k) * inv + magic) - magic;
            const v16s8 b = __builtin_convertvector(__builtin_convertvector(v, vi), v16s8);
            memcpy(q + k, &b, sizeof b);
        }
        for (; k < K; k++) q[k] = (int8_t)rintf(r[k] * inv);
        memset(q + K, 0, kp - K);
        if (fmt == Q8) {
            int32_t sum = 0;
            for (int64_t k = 0; k < K; k++) sum += q[k];
            xsum[i] = -128 * sum;
        } else
            for (int64_t g = 0; g < K / Q4_GROUP; g++) {
                int32_t sum = 0;
                for (int64_t t = 0; t < Q4_GROUP; t++) sum += q[g * Q4_GROUP + t];
                xsum[i * (K / Q4_GROUP) + g] = -8 * sum;
            }
    }
}

typedef struct { /* x rounded (quantize_rows writes it, the tiles read it) */
    int8_t *xq;
    float *xs;
    int32_t *xsum;
    int64_t kp, K, N;
} qx_t;

/* Outputs y[i, n0 .. n0 + 32) for rows i < mr of x, from the block w (scales ws: the block's). */
static inline __attribute__((always_inline)) void q8_tile(const qx_t *x, const int8_t *xq, const float *xs,
                                                          const int32_t *xsum, const uint8_t *w, const float *ws,
                                                          const float *b, float *y, int64_t n0, int mr) {
    const int64_t kp = x->kp;
    vi acc[MR_Q8][2];
    for (int i = 0; i < mr; i++) acc[i][0] = acc[i][1] = (vi){0} + xsum[i];
    for (int64_t s = 0; s < kp / 4; s++) {
        const uint8_t *p = w + s * 4 * NB;
        const vi w0 = loadi(p), w1 = loadi(p + 64);
        for (int i = 0; i < mr; i++) {
            const vi xb = bcast4(xq + i * kp + 4 * s);
            acc[i][0] = dot4(acc[i][0], w0, xb);
            acc[i][1] = dot4(acc[i][1], w1, xb);
        }
    }
    for (int v = 0; v < 2; v++) {
        const int64_t n = n0 + 16 * v;
        if (n >= x->N) break;
        const vf wsv = loadf(ws + 16 * v), bv = b ? load_part(b + 16 * v, x->N - n) : (vf){0};
        for (int i = 0; i < mr; i++)
            store(y + i * x->N + n, vfma(__builtin_convertvector(acc[i][v], vf), wsv * xs[i], bv), x->N - n);
    }
}

static inline __attribute__((always_inline)) void q4_tile(const qx_t *x, const int8_t *xq, const float *xs,
                                                          const int32_t *xsum, const uint8_t *w, const uint16_t *ws,
                                                          const float *b, float *y, int64_t n0, int mr) {
    const int64_t K = x->K, groups = K / Q4_GROUP;
    vf acc[MR_Q4][2];
    for (int i = 0; i < mr; i++) acc[i][0] = acc[i][1] = (vf){0};
    for (int64_t g = 0; g < groups; g++) {
        const uint8_t *p = w + g * (Q4_GROUP * NB / 2);
        vi t[MR_Q4][2];
        for (int i = 0; i < mr; i++) t[i][0] = t[i][1] = (vi){0} + xsum[i * groups + g];
        for (int c = 0; c < 4; c++) {
            const vu8 a0 = (vu8)loadi(p + c * 128), a1 = (vu8)loadi(p + c * 128 + 64);
            const vi lo0 = (vi)(a0 & 15), hi0 = (vi)(a0 >> 4), lo1 = (vi)(a1 & 15), hi1 = (vi)(a1 >> 4);
            for (int i = 0; i < mr; i++) {
                const int8_t *xg = xq + i * x->kp + g * Q4_GROUP + 8 * c;
                const vi xl = bcast4(xg), xh = bcast4(xg + 4);
                t[i][0] = dot4(dot4(t[i][0], lo0, xl), hi0, xh);
                t[i][1] = dot4(dot4(t[i][1], lo1, xl), hi1, xh);
            }
        }
        const vf s0 = load_halves(ws + g * NB), s1 = load_halves(ws + g * NB + 16);
        for (int i = 0; i < mr; i++) {
            acc[i][0] = vfma(__builtin_convertvector(t[i][0], vf), s0, acc[i][0]);
            acc[i][1] = vfma(__builtin_convertvector(t[i][1], vf), s1, acc[i][1]);
        }
    }
    for (int v = 0; v < 2; v++) {
        const int64_t n = n0 + 16 * v;
        if (n >= x->N) break;
        const vf bv = b ? load_part(b + 16 * v, x->N - n) : (vf){0};
        for (int i = 0; i < mr; i++) store(y + i * x->N + n, vfma(acc[i][v], (vf){0} + xs[i], bv), x->N - n);
    }
}

/* One block of W against all of x's rows, MR at a time (mr a constant in each inlined copy). */
#define TILE_CASE(T, m) \
    case m: T(x, xq, x->xs + i, xsum, w, ws, b, y + i * x->N, n0, m); break;
static void q8_block(const qx_t *x, const uint8_t *w, const float *ws, const float *b, float *y, int64_t M,
                     int64_t n0) {
    for (int64_t i = 0; i < M; i += MR_Q8) {
        const int8_t *xq = x->xq + i * x->kp;
        const int32_t *xsum = x->xsum + i;
        switch (M - i < MR_Q8 ? M - i : MR_Q8) {
            TILE_CASE(q8_tile, 1) TILE_CASE(q8_tile, 2) TILE_CASE(q8_tile, 3) TILE_CASE(q8_tile, 4)
            TILE_CASE(q8_tile, 5) TILE_CASE(q8_tile, 6) TILE_CASE(q8_tile, 7) TILE_CASE(q8_tile, 8)
        }
    }
}

static void q4_block(const qx_t *x, const uint8_t *w, const uint16_t *ws, const float *b, float *y, int64_t M,
                     int64_t n0) {
    for (int64_t i = 0; i < M; i += MR_Q4) {
        const int8_t *xq = x->xq + i * x->kp;
        const int32_t *xsum = x->xsum + i * (x->K / Q4_GROUP);
        switch (M - i < MR_Q4 ? M - i : MR_Q4) {
            TILE_CASE(q4_tile, 1) TILE_CASE(q4_tile, 2) TILE_CASE(q4_tile, 3) TILE_CASE(q4_tile, 4)
        }
    }
}

typedef struct {
    const float *x;
    const void *ws; /* q8: float [N], q4: fp16 [N / 32][K / 32][32] */
    const float *b;
    const uint8_t *w;
    float *y;
    int64_t M, wblock, sblock;
    int fmt, quantize; /* quantize: the threads' job is rounding x's rows, not the matmul */
    qx_t qx;
    seer_chunks_t chunks; /* of blocks */
} job_t;

static void task(void *arg, int t, int n) {
    job_t *j = arg;
    const qx_t *x = &j->qx;
    if (j->quantize) {
        quantize_rows(j->x, seer_split(j->M, t, n), seer_split(j->M, t + 1, n), x->K, x->kp, j->fmt, x->xq, x->xs,
                      x->xsum);
        return;
    }
    long long first, last;
    while ((first = seer_chunks_take(&j->chunks, t, &last)) >= 0)
        for (int64_t blk = first; blk < last; blk++) {
            const uint8_t *w = j->w + blk * j->wblock;
            const float *b = j->b ? j->b + blk * NB : 0;
            if (j->fmt == Q8) q8_block(x, w, (const float *)j->ws + blk * j->sblock, b, j->y, j->M, blk * NB);
            else q4_block(x, w, (const uint16_t *)j->ws + blk * j->sblock, b, j->y, j->M, blk * NB);
        }
}

static int run(const float *x, const uint8_t *w, const void *ws, const float *b, float *y, int64_t M, int64_t K,
               int64_t N, int nthreads, int fmt) {
    if (fmt == Q4 && K % Q4_GROUP) return 2;
    if (M == 0) return 0; /* (and no zero-byte mallocs, which may return NULL) */
    const int64_t kp = (K + 3) / 4 * 4, nsums = fmt == Q8 ? 1 : K / Q4_GROUP;
    int8_t *xq = malloc(M * kp);
    float *xs = malloc(M * sizeof *xs);
    int32_t *xsum = malloc(M * nsums * sizeof *xsum);
    const int64_t wblock = fmt == Q8 ? NB * kp : NB * K / 2;
    job_t j = {x, ws, b, w, y, M, wblock, fmt == Q8 ? NB : NB * K / Q4_GROUP, fmt, 1, {xq, xs, xsum, kp, K, N}};
    const int rc = !xq || !xs || !xsum;
    if (!rc) {
        /* Small problems are not worth waking the other threads for. */
        if (nthreads < 1 || M * K * N < (int64_t)1 << 18) nthreads = 1;
        seer_parallel(M * K < (int64_t)1 << 15 ? 1 : nthreads, task, &j);
        j.quantize = 0;
        seer_chunks_init(&j.chunks, (N + NB - 1) / NB, nthreads, seer_chunk_items(wblock));
        seer_parallel(nthreads, task, &j);
    }
    free(xq);
    free(xs);
    free(xsum);
    return rc;
}

int seer_int_linear_q8(const float *x, const uint8_t *w, const float *ws, const float *b, float *y, int64_t M,
                       int64_t K, int64_t N, int nthreads) {
    return run(x, w, ws, b, y, M, K, N, nthreads, Q8);
}

int seer_int_linear_q4(const float *x, const uint8_t *w, const uint16_t *ws, const float *b, float *y, int64_t M,
                       int64_t K, int64_t N, int nthreads) {
    return run(x, w, ws, b, y, M, K, N, nthreads, Q4);
}
