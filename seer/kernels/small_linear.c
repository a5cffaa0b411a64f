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
 * seer_small_linear_q8 is the same with int8 weights and a scale per row of W (y = x (s * Q)^T):
 * a quarter of the bytes to stream, converted to fp32 in registers.
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

static inline float hsum(vf v) {
    float s = 0.f;
    for (int i = 0; i < VW; i++) s += v[i];
    return s;
}

/* y[i, j] for i < mr rows of x and j < nr rows of w; mr, nr are constants where inlined.
 * LOADW(p) reads VW weights as floats; SCALE(j) multiplies row j's dot product (int8 weights:
 * the row's scale). Defined once per weight type below. */
#define DEFINE_KERNEL(NAME, WT, LOADW, SCALE, ...)                                                      \
    static inline __attribute__((always_inline)) void NAME##_tile(                                    \
        const float *x, const WT *w, const float *b, float *y, int64_t K, int64_t N, int mr, int nr,  \
        const float *scales) {                                                                        \
        vf acc[MR][NR];                                                                               \
        for (int i = 0; i < mr; i++)                                                                  \
            for (int j = 0; j < nr; j++) acc[i][j] = (vf){0};                                         \
        int64_t k = 0;                                                                                \
        for (; k + VW <= K; k += VW) {                                                                \
            vf wv[NR], xv[MR];                                                                        \
            for (int j = 0; j < nr; j++) wv[j] = LOADW(w + j * K + k);                               \
            for (int i = 0; i < mr; i++) xv[i] = load(x + i * K + k);                                 \
            for (int i = 0; i < mr; i++) /* fused multiply-adds (contraction is off in this file) */  \
                for (int j = 0; j < nr; j++) acc[i][j] = vfma(xv[i], wv[j], acc[i][j]);               \
        }                                                                                             \
        for (int i = 0; i < mr; i++)                                                                  \
            for (int j = 0; j < nr; j++) {                                                            \
                float s = hsum(acc[i][j]);                                                            \
                for (int64_t t = k; t < K; t++) s = __builtin_fmaf(x[i * K + t], (float)w[j * K + t], s); \
                y[i * N + j] = __builtin_fmaf(s, SCALE(j), b ? b[j] : 0.f);                           \
            }                                                                                         \
    }                                                                                                 \
    /* Rows [0, M) of x against the nr rows of W at w. */                                             \
    static void NAME##_block(const float *x, const WT *w, const float *b, float *y, int64_t M,        \
                             int64_t K, int64_t N, int nr, const float *scales) {                     \
        int64_t m = 0;                                                                                \
        if (nr == NR) {                                                                               \
            for (; m + MR <= M; m += MR) NAME##_tile(x + m * K, w, b, y + m * N, K, N, MR, NR, scales); \
            switch (M - m) {                                                                          \
                case 3: NAME##_tile(x + m * K, w, b, y + m * N, K, N, 3, NR, scales); break;          \
                case 2: NAME##_tile(x + m * K, w, b, y + m * N, K, N, 2, NR, scales); break;          \
                case 1: NAME##_tile(x + m * K, w, b, y + m * N, K, N, 1, NR, scales); break;          \
            }                                                                                         \
            return;                                                                                   \
        }                                                                                             \
        for (; m < M; m++) NAME##_tile(x + m * K, w, b, y + m * N, K, N, 1, nr, scales);              \
    }                                                                                                 \
    int NAME(const float *x, const WT *w, __VA_ARGS__ const float *b, float *y, int64_t M, int64_t K, \
             int64_t N, int nthreads) {                                                               \
        const int64_t blocks = (N + NR - 1) / NR;                                                     \
        /* Small problems are not worth waking the other threads for. */                              \
        if (nthreads < 1 || M * K * N < (int64_t)1 << 18) nthreads = 1;                               \
        _Pragma("omp parallel for schedule(static) num_threads(nthreads)")                             \
        for (int64_t blk = 0; blk < blocks; blk++) {                                                  \
            const int64_t n = blk * NR;                                                               \
            const int nr = N - n < NR ? (int)(N - n) : NR;                                            \
            NAME##_block(x, w + n * K, b ? b + n : 0, y + n, M, K, N, nr, SCALES_AT(n));              \
        }                                                                                             \
        return 0;                                                                                     \
    }

/* fp32 weights */
#define ONE(j) 1.f
#define SCALES_AT(n) 0
DEFINE_KERNEL(seer_small_linear, float, load, ONE, )
#undef SCALES_AT

/* int8 weights, one fp32 scale per output row (weight-only quantisation): W = scale * q. */
typedef int8_t vq __attribute__((vector_size(VW)));

static inline vf load_q8(const int8_t *p) {
#if defined(__AVX512F__)
    return (vf)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
#else
    vq v; /* GCC may widen this lane by lane */
    memcpy(&v, p, sizeof v);
    return __builtin_convertvector(v, vf);
#endif
}

#define ROW_SCALE(j) scales[j]
#define SCALES_AT(n) (scales + (n))
DEFINE_KERNEL(seer_small_linear_q8, int8_t, load_q8, ROW_SCALE, const float *scales,)
