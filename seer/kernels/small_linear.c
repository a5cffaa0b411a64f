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
 */
#include <stdint.h>
#include <string.h>

#define VW 16 /* floats per vector: 512 bits (two AVX2 registers where AVX-512 is missing) */
#define MR 4
#define NR 4

typedef float vf __attribute__((vector_size(VW * sizeof(float))));

static inline vf load(const float *p) {
    vf v;
    memcpy(&v, p, sizeof v); /* unaligned */
    return v;
}

static inline float hsum(vf v) {
    float s = 0.f;
    for (int i = 0; i < VW; i++) s += v[i];
    return s;
}

/* y[i, j] for i < mr rows of x and j < nr rows of w; mr, nr are constants where inlined. */
static inline __attribute__((always_inline)) void tile(const float *x, const float *w, const float *b, float *y,
                                                        int64_t K, int64_t N, int mr, int nr) {
    vf acc[MR][NR];
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++) acc[i][j] = (vf){0};
    int64_t k = 0;
    for (; k + VW <= K; k += VW) {
        vf wv[NR], xv[MR];
        for (int j = 0; j < nr; j++) wv[j] = load(w + j * K + k);
        for (int i = 0; i < mr; i++) xv[i] = load(x + i * K + k);
        for (int i = 0; i < mr; i++)
            for (int j = 0; j < nr; j++) acc[i][j] += xv[i] * wv[j];
    }
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++) {
            float s = hsum(acc[i][j]);
            for (int64_t t = k; t < K; t++) s += x[i * K + t] * w[j * K + t];
            y[i * N + j] = s + (b ? b[j] : 0.f);
        }
}

/* Rows [0, M) of x against the nr rows of W at w. */
static void column_block(const float *x, const float *w, const float *b, float *y, int64_t M, int64_t K,
                         int64_t N, int nr) {
    int64_t m = 0;
    if (nr == NR) {
        for (; m + MR <= M; m += MR) tile(x + m * K, w, b, y + m * N, K, N, MR, NR);
        switch (M - m) {
            case 3: tile(x + m * K, w, b, y + m * N, K, N, 3, NR); break;
            case 2: tile(x + m * K, w, b, y + m * N, K, N, 2, NR); break;
            case 1: tile(x + m * K, w, b, y + m * N, K, N, 1, NR); break;
        }
        return;
    }
    for (; m < M; m++) tile(x + m * K, w, b, y + m * N, K, N, 1, nr); /* W's last rows */
}

int seer_small_linear(const float *x, const float *w, const float *b, float *y, int64_t M, int64_t K,
                      int64_t N, int nthreads) {
    const int64_t blocks = (N + NR - 1) / NR;
    /* Small problems are not worth waking the other threads for. */
    if (nthreads < 1 || M * K * N < (int64_t)1 << 18) nthreads = 1;
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t blk = 0; blk < blocks; blk++) {
        const int64_t n = blk * NR;
        const int nr = N - n < NR ? (int)(N - n) : NR;
        column_block(x, w + n * K, b ? b + n : 0, y + n, M, K, N, nr);
    }
    return 0;
}
