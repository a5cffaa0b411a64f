/* y = x W^T (+ b) for a few rows of x, on CPU, in fp32: the decode-step matmul.
 *
 * With a handful of rows the cost is reading W once; BLAS packs W for every call and
 * reads it at a fraction of memory bandwidth. Here W is streamed once, in blocks of NR rows,
 * and each block meets every row of x (MR rows at a time) while it is in L1: a tile of
 * MR x NR dot products kept in vector registers, so a k-step loads MR + NR vectors for
 * MR * NR fused multiply-adds. Only the first tile of a block would wait on memory, so the
 * tiles share out the fetching of the thread's next block (prefetches, a row each, spread over
 * them): at 16 rows that took the matmuls from ~90 to ~118 GFLOP/s, at 64 from ~128 to ~140.
 *
 * Threads: pool.c's, over chunks of blocks of W's rows (seer_chunks_take: each its own share first).
 *
 *   x [M, K], W [N, K], b [N] or NULL, y [M, N]; all row-major and contiguous.
 * (Quantised weights: int_linear.c.)
 */
#include <stdint.h>
/* Each dot product is summed in one fixed order, whatever tile it falls in (the tile is
 * inlined once per shape, and -ffast-math would let each copy reorder its sums), so a
 * row's result never depends on how many rows came with it. The vector loop is explicit. */
#pragma GCC optimize("no-fast-math", "fp-contract=off")
#include "pool.h"
#include "vec.h"

#define MR 4
#define NR 4

/* y[i, j] for i < mr rows of x and j < nr rows of w; mr, nr are constants where inlined. */
static inline __attribute__((always_inline)) void tile(const float *x, const float *w, const float *b, float *y,
                                                       int64_t K, int64_t N, int mr, int nr, const float *pf,
                                                       int npf) {
    vf acc[MR][NR];
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++) acc[i][j] = (vf){0};
    int64_t k = 0;
    for (; k + VW <= K; k += VW) {
        vf wv[NR], xv[MR];
        for (int j = 0; j < nr; j++) wv[j] = loadf(w + j * K + k);
        for (int r = 0; r < npf; r++) __builtin_prefetch(pf + r * K + k, 0, 3);
        for (int i = 0; i < mr; i++) xv[i] = loadf(x + i * K + k);
        for (int i = 0; i < mr; i++) /* fused multiply-adds (contraction is off in this file) */
            for (int j = 0; j < nr; j++) acc[i][j] = vfma(xv[i], wv[j], acc[i][j]);
    }
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++) {
            float s = hsum(acc[i][j]);
            for (int64_t t = k; t < K; t++) s = __builtin_fmaf(x[i * K + t], w[j * K + t], s);
            y[i * N + j] = s + (b ? b[j] : 0.f);
        }
}

/* Rows [0, M) of x against the nr rows of W at w. */
static void block(const float *x, const float *w, const float *b, float *y, int64_t M, int64_t K, int64_t N,
                  int nr, const float *next) {
    int64_t m = 0;
    if (nr == NR) {
        /* While W's block is in L1, the tiles fetch the next block's rows, spread over them. */
        const int64_t tiles = M / MR;
        if (tiles < 2) next = 0; /* (one tile: the loads would crowd its own stream; measured slower) */
        for (int64_t t = 0; m + MR <= M; m += MR, t++) {
            const int r0 = (int)(t * NR / tiles), r1 = (int)((t + 1) * NR / tiles);
            tile(x + m * K, w, b, y + m * N, K, N, MR, NR, next && r0 < NR ? next + r0 * K : 0,
                 next && r0 < NR ? (r1 < NR ? r1 : NR) - r0 : 0);
        }
        switch (M - m) {
            case 3: tile(x + m * K, w, b, y + m * N, K, N, 3, NR, 0, 0); break;
            case 2: tile(x + m * K, w, b, y + m * N, K, N, 2, NR, 0, 0); break;
            case 1: tile(x + m * K, w, b, y + m * N, K, N, 1, NR, 0, 0); break;
        }
        return;
    }
    for (; m < M; m++) tile(x + m * K, w, b, y + m * N, K, N, 1, nr, 0, 0);
}

typedef struct {
    const float *x, *w, *b;
    float *y;
    int64_t M, K, N;
    seer_chunks_t chunks; /* of blocks */
} job_t;

static void task(void *arg, int t, int n) {
    (void)n;
    job_t *j = arg;
    const int64_t K = j->K, N = j->N;
    long long first, last;
    while ((first = seer_chunks_take(&j->chunks, t, &last)) >= 0)
        for (int64_t blk = first; blk < last; blk++) {
            const int64_t r = blk * NR;
            const float *next = blk + 1 < last && r + 2 * NR <= N ? j->w + (r + NR) * K : 0; /* a whole next block */
            block(j->x, j->w + r * K, j->b ? j->b + r : 0, j->y + r, j->M, K, N, N - r < NR ? (int)(N - r) : NR,
                  next);
        }
}

int seer_small_linear_f32(const float *x, const float *w, const float *b, float *y, int64_t M, int64_t K,
                          int64_t N, int nthreads) {
    /* Small problems are not worth waking the other threads for. */
    if (nthreads < 1 || M * K * N < (int64_t)1 << 18) nthreads = 1;
    job_t j = {x, w, b, y, M, K, N};
    const int64_t chunk = (1 << 16) / (NR * K * (int64_t)sizeof(float)); /* blocks in ~64 KB of W */
    seer_chunks_init(&j.chunks, (N + NR - 1) / NR, nthreads, chunk);
    seer_parallel(nthreads, task, &j);
    return 0;
}
