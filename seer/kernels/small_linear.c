/* y = x W^T (+ b) for a few rows of x, on CPU, in fp32: the decode-step matmul.
 *
 * With a handful of rows the cost is reading W once; BLAS packs W for every call and
 * reads it at a fraction of memory bandwidth. Here W is streamed once, in blocks of NR rows,
 * and each block meets every row of x (MR rows at a time) while it is in L1: a tile of
 * MR x NR dot products kept in vector registers, so a k-step loads MR + NR vectors for
 * MR * NR fused multiply-adds.
 *
 * Threads: OpenMP, over blocks of W's rows. Built with -fopenmp, the library needs
 * libgomp.so.1, which torch has already loaded: the kernel runs on torch's own pool of
 * threads, so there is no thread start-up per call and no second pool competing for the
 * cores. Built without OpenMP the pragmas are ignored and it runs on one thread.
 *
 *   x [M, K], W [N, K], b [N] or NULL, y [M, N]; all row-major and contiguous.
 *
 * The same kernel over quantised weights, converted to fp32 in registers (weight-only
 * quantisation, seer/layers/quant.py):
 *   seer_small_linear_q8: int8, one scale per row of W (W = s * Q): a quarter of fp32's bytes;
 *   seer_small_linear_q4: 4-bit, one scale per group of 32 along K (W[n, g*32 + i] =
 *     s[n, g] * (q - 8)); a group is 16 bytes, byte i holding element i in its low nibble and
 *     element i + 16 in its high one: an eighth of fp32's bytes (plus the scales).
 */
#include <stdint.h>
#include <string.h>
/* Each dot product is summed in one fixed order, whatever tile it falls in (the kernels are
 * inlined once per tile shape, and -ffast-math would let each copy reorder its sums), so a
 * row's result never depends on how many rows came with it. The vector loop is explicit. */
#pragma GCC optimize("no-fast-math", "fp-contract=off")
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#define VW 16 /* floats per vector: 512 bits (two AVX2 registers where AVX-512 is missing) */
/* Each row of W is prefetched this far ahead of its loads: quantised rows are short and read
 * 16 bytes a step, too little in flight for the hardware prefetcher alone to keep up. */
#define PREFETCH_BYTES 512
#define MR 4
#define NR 4

typedef float vf __attribute__((vector_size(VW * sizeof(float))));

static inline vf load(const float *p) {
    vf v;
    memcpy(&v, p, sizeof v); /* unaligned */
    return v;
}

static inline vf vfma(vf a, vf b, vf c) {
#if defined(__AVX512F__)
    return (vf)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#else
    vf r;
    for (int i = 0; i < VW; i++) r[i] = __builtin_fmaf(a[i], b[i], c[i]);
    return r;
#endif
}

static inline float hsum(vf v) { /* one fixed order: the same for every tile */
#if defined(__AVX512F__)
    return _mm512_reduce_add_ps((__m512)v);
#else
    float s = 0.f;
    for (int i = 0; i < VW; i++) s += v[i];
    return s;
#endif
}

/* A weight format is five macros over the weight pointer w of a block of rows:
 *   WLOAD(j, k): VW weights of row j from column k, as floats (k a multiple of VW)
 *   WAT(j, t):   one weight, for the columns past the last whole vector
 *   WROW(n):     w advanced to row n;  SROWS(n): the scales advanced to row n
 *   SCALE(j):    the factor of row j's dot product
 * DEFINE_KERNEL writes the tile, the block and the entry point for one format. */
#define DEFINE_KERNEL(NAME, WT)                                                                         \
    /* y[i, j] for i < mr rows of x and j < nr rows of w; mr, nr are constants where inlined. */     \
    static inline __attribute__((always_inline)) void NAME##_tile(                                    \
        const float *x, const WT *w, const float *scales, const float *b, float *y, int64_t K,        \
        int64_t N, int mr, int nr) {                                                                  \
        vf acc[MR][NR];                                                                               \
        for (int i = 0; i < mr; i++)                                                                  \
            for (int j = 0; j < nr; j++) acc[i][j] = (vf){0};                                         \
        int64_t k = 0;                                                                                \
        for (; k + VW <= K; k += VW) {                                                                \
            vf wv[NR], xv[MR];                                                                        \
            for (int j = 0; j < nr; j++) {                                                            \
                WPREFETCH(j, k);                                                                      \
                wv[j] = WLOAD(j, k);                                                                  \
            }                                                                                         \
            for (int i = 0; i < mr; i++) xv[i] = load(x + i * K + k);                                 \
            for (int i = 0; i < mr; i++) /* fused multiply-adds (contraction is off in this file) */  \
                for (int j = 0; j < nr; j++) acc[i][j] = vfma(xv[i], wv[j], acc[i][j]);               \
        }                                                                                             \
        for (int i = 0; i < mr; i++)                                                                  \
            for (int j = 0; j < nr; j++) {                                                            \
                float s = hsum(acc[i][j]);                                                            \
                for (int64_t t = k; t < K; t++) s = __builtin_fmaf(x[i * K + t], WAT(j, t), s);       \
                y[i * N + j] = __builtin_fmaf(s, SCALE(j), b ? b[j] : 0.f);                           \
            }                                                                                         \
    }                                                                                                 \
    /* Rows [0, M) of x against the nr rows of W at w. */                                             \
    static void NAME##_block(const float *x, const WT *w, const float *scales, const float *b,        \
                             float *y, int64_t M, int64_t K, int64_t N, int nr) {                     \
        int64_t m = 0;                                                                                \
        if (nr == NR) {                                                                               \
            for (; m + MR <= M; m += MR) NAME##_tile(x + m * K, w, scales, b, y + m * N, K, N, MR, NR); \
            switch (M - m) {                                                                          \
                case 3: NAME##_tile(x + m * K, w, scales, b, y + m * N, K, N, 3, NR); break;          \
                case 2: NAME##_tile(x + m * K, w, scales, b, y + m * N, K, N, 2, NR); break;          \
                case 1: NAME##_tile(x + m * K, w, scales, b, y + m * N, K, N, 1, NR); break;          \
            }                                                                                         \
            return;                                                                                   \
        }                                                                                             \
        for (; m < M; m++) NAME##_tile(x + m * K, w, scales, b, y + m * N, K, N, 1, nr);              \
    }                                                                                                 \
    int NAME(const float *x, const WT *w, const float *scales, const float *b, float *y, int64_t M,   \
             int64_t K, int64_t N, int nthreads) {                                                    \
        const int64_t blocks = (N + NR - 1) / NR;                                                     \
        /* Small problems are not worth waking the other threads for. */                              \
        if (nthreads < 1 || M * K * N < (int64_t)1 << 18) nthreads = 1;                               \
        _Pragma("omp parallel for schedule(static) num_threads(nthreads)")                             \
        for (int64_t blk = 0; blk < blocks; blk++) {                                                  \
            const int64_t n = blk * NR;                                                               \
            const int nr = N - n < NR ? (int)(N - n) : NR;                                            \
            NAME##_block(x, WROW(n), SROWS(n), b ? b + n : 0, y + n, M, K, N, nr);                    \
        }                                                                                             \
        return 0;                                                                                     \
    }

/* fp32 weights (scales unused: NULL) */
#define WLOAD(j, k) load(w + (j) * K + (k))
#define WPREFETCH(j, k) /* 64 bytes a step: the hardware prefetcher keeps up */
#define WAT(j, t) w[(j) * K + (t)]
#define WROW(n) (w + (n) * K)
#define SROWS(n) scales
#define SCALE(j) 1.f
DEFINE_KERNEL(seer_small_linear_f32, float)
#undef WLOAD
#undef WPREFETCH
#undef WAT
#undef SCALE

/* int8 weights, one scale per row */
static inline vf load_q8(const int8_t *p) {
#if defined(__AVX512F__)
    return (vf)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
#else
    int8_t v __attribute__((vector_size(VW))); /* GCC may widen this lane by lane */
    memcpy(&v, p, sizeof v);
    return __builtin_convertvector(v, vf);
#endif
}
#define WLOAD(j, k) load_q8(w + (j) * K + (k))
#define WPREFETCH(j, k) __builtin_prefetch(w + (j) * K + (k) + PREFETCH_BYTES)
#define WAT(j, t) (float)w[(j) * K + (t)]
#define SCALE(j) scales[j]
#undef SROWS
#define SROWS(n) (scales + (n))
DEFINE_KERNEL(seer_small_linear_q8, int8_t)
#undef WLOAD
#undef WPREFETCH
#undef WAT
#undef WROW
#undef SROWS
#undef SCALE

/* 4-bit weights, one scale per group of 32 (K is a multiple of 32) */
#define Q4_GROUP 32
static inline vf load_q4(const uint8_t *group, int high) {
#if defined(__AVX512F__)
    __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)group));
    v = high ? _mm512_srli_epi32(v, 4) : _mm512_and_si512(v, _mm512_set1_epi32(15));
    return (vf)_mm512_cvtepi32_ps(_mm512_sub_epi32(v, _mm512_set1_epi32(8)));
#else
    vf r;
    for (int i = 0; i < VW; i++) r[i] = (float)((high ? group[i] >> 4 : group[i] & 15) - 8);
    return r;
#endif
}
static inline float q4_at(const uint8_t *row, const float *row_scales, int64_t t) {
    const uint8_t byte = row[(t / Q4_GROUP) * 16 + t % 16];
    return row_scales[t / Q4_GROUP] * (float)(((t % Q4_GROUP) < 16 ? byte & 15 : byte >> 4) - 8);
}
#define WLOAD(j, k) \
    (load_q4(w + (j) * (K / 2) + ((k) / Q4_GROUP) * 16, ((k) / 16) & 1) * scales[(j) * (K / Q4_GROUP) + (k) / Q4_GROUP])
#define WPREFETCH(j, k) __builtin_prefetch(w + (j) * (K / 2) + (k) / 2 + PREFETCH_BYTES)
#define WAT(j, t) q4_at(w + (j) * (K / 2), scales + (j) * (K / Q4_GROUP), t)
#define WROW(n) (w + (n) * (K / 2))
#define SROWS(n) (scales + (n) * (K / Q4_GROUP))
#define SCALE(j) 1.f
DEFINE_KERNEL(seer_small_linear_q4, uint8_t)
