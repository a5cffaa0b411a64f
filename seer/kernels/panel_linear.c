/* y = x W^T (+ b) in fp32 on CPU, W packed once into panels of NR output columns.
 *
 * The panel layout is [ceil(N / NR)][K][NR]: for each k, the NR weights of a panel's columns
 * lie together, so a tile of MR rows x NR columns reads one contiguous stream of W and, per
 * k, broadcasts MR values of x against it: MR * NR / VW fused multiply-adds for NR / VW
 * vector loads of W, with all MR * NR sums in registers and no horizontal sums at the end.
 * Each output is one chain of multiply-adds in k order, whatever the tile, so a row's result
 * does not depend on how many rows came with it, and any tiling of the rows gives the same bits.
 * At one row it reads W at memory speed; from 16 rows on it runs near the multiply-add peak
 * (BENCHMARKS.md: 150-200 GFLOP/s on two cores, faster than MKL on decoder shapes).
 *
 * Threads: pool.c's, over chunks of panels (seer_chunks_take); many rows go in blocks, each met by
 * every panel while it sits in L2.
 *
 *   x [M, K], Wp [ceil(N / NR)][K][NR] (zero past column N; kernels.pack_panels writes it), b [N] or NULL,
 *   y [M, N]; all contiguous.
 */
#include <stdint.h>
/* The tile is inlined once per row count, and -ffast-math would let each copy reorder its sums:
 * off here, with the multiply-adds written out, so every copy sums in the same order. */
#pragma GCC optimize("no-fast-math", "fp-contract=off")
#include "kernels.h"
#include "pool.h"
#include "vec.h"

#define NR SEER_PANEL /* columns per panel: two vectors */
#define MR 12 /* rows per tile at most: 24 sums in registers */

/* y[i, 0:nc] for i < mr rows of x against one panel; mr is a constant where inlined. */
static inline __attribute__((always_inline)) void tile(const float *x, const float *wp, const float *b, float *y,
                                                       int64_t K, int64_t N, int mr, int nc) {
    vf acc[MR][2];
    for (int i = 0; i < mr; i++) acc[i][0] = acc[i][1] = (vf){0};
#pragma GCC unroll 4
    for (int64_t k = 0; k < K; k++) {
        const vf w0 = loadf(wp + k * NR), w1 = loadf(wp + k * NR + VW);
        for (int i = 0; i < mr; i++) {
            const vf xb = bcastf(x[i * K + k]);
            acc[i][0] = vfma(xb, w0, acc[i][0]);
            acc[i][1] = vfma(xb, w1, acc[i][1]);
        }
    }
    for (int i = 0; i < mr; i++) {
        if (b) {
            acc[i][0] += loadf_n(b, nc);
            acc[i][1] += nc > VW ? loadf_n(b + VW, nc - VW) : (vf){0};
        }
        storef_n(y + i * N, acc[i][0], nc);
        if (nc > VW) storef_n(y + i * N + VW, acc[i][1], nc - VW);
    }
}

/* Rows [0, M) of x against one panel, in tiles of at most MR rows of near-equal size. */
static void panel(const float *x, const float *wp, const float *b, float *y, int64_t M, int64_t K, int64_t N,
                  int nc) {
    const int64_t tiles = (M + MR - 1) / MR;
    for (int64_t t = 0, m = 0; t < tiles; t++) {
        const int64_t m1 = M * (t + 1) / tiles;
        const float *xt = x + m * K;
        float *yt = y + m * N;
        switch ((int)(m1 - m)) {
#define CASE(r) \
    case r: tile(xt, wp, b, yt, K, N, r, nc); break;
            CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8) CASE(9) CASE(10) CASE(11) CASE(12)
#undef CASE
        }
        m = m1;
    }
}

typedef struct {
    const float *x, *wp, *b;
    float *y;
    int64_t M, K, N, panels, mblocks;
    seer_chunks_t chunks; /* of (block of rows, panel) items, rows-major */
} job_t;

static void task(void *arg, int t, int n) {
    (void)n;
    job_t *j = arg;
    const int64_t K = j->K, N = j->N;
    long long first, last;
    while ((first = seer_chunks_take(&j->chunks, t, &last)) >= 0)
        for (int64_t i = first; i < last; i++) {
            const int64_t mb = i / j->panels, p = i % j->panels, n0 = p * NR;
            const int64_t m0 = j->M * mb / j->mblocks, m1 = j->M * (mb + 1) / j->mblocks;
            panel(j->x + m0 * K, j->wp + p * K * NR, j->b ? j->b + n0 : 0, j->y + m0 * N + n0, m1 - m0, K, N,
                  N - n0 < NR ? (int)(N - n0) : NR);
        }
}

int seer_panel_linear_f32(const float *x, const float *wp, const float *b, float *y, int64_t M, int64_t K,
                          int64_t N, int nthreads) {
    if (nthreads < 1 || M * K * N < (int64_t)1 << 18) nthreads = 1;
    /* Many rows go in blocks of about 384 KB of x, which stay in L2 while every panel passes. */
    const int64_t rows = (96 << 10) / K > MR ? (96 << 10) / K : MR;
    job_t j = {x, wp, b, y, M, K, N, (N + NR - 1) / NR, (M + rows - 1) / rows};
    seer_chunks_init(&j.chunks, j.mblocks * j.panels, nthreads, seer_chunk_items(NR * K * (int64_t)sizeof(float)));
    seer_parallel(nthreads, task, &j);
    return 0;
}
