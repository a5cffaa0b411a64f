/* RMSNorm and rotary embedding for fp32 rows on CPU: at batch 1 each is a handful of torch
 * operators whose dispatch costs more than their arithmetic; here each is one call.
 *
 *   seer_rms_norm: y[m] = (x[m] * (1 / sqrt(mean(x[m]^2) + eps))) * w, x rows of length D at
 *     stride sx, y [M, D] contiguous.
 *   seer_rotary: out[t, h] = x[t, h] * cos[t] + rotate_half(x[t, h]) * sin[t] for H heads of D
 *     at row stride sx (x may be a column slice of a fused projection), cos / sin [T, D],
 *     out [T, H, D] contiguous; rotate_half(v) = (-v[D/2:], v[:D/2]). Each product and the sum are
 *     rounded as torch rounds them, so the result is bitwise torch's.
 */
#include <math.h>
#include <stdint.h>
#pragma GCC optimize("no-fast-math", "fp-contract=off")
#include "kernels.h"
#include "pool.h"
#include "vec.h"

typedef struct {
    const float *x, *w, *cos, *sin;
    float *y;
    int64_t rows, sx, D, H;
    float eps;
} job_t;

static void norm_task(void *arg, int t, int n) {
    const job_t *j = arg;
    const int64_t D = j->D;
    for (int64_t m = seer_split(j->rows, t, n); m < seer_split(j->rows, t + 1, n); m++) {
        const float *x = j->x + m * j->sx;
        float *y = j->y + m * D;
        vf acc = {0};
        int64_t d = 0;
        for (; d + VW <= D; d += VW) {
            const vf v = loadf(x + d);
            acc = vfma(v, v, acc);
        }
        float ss = hsum(acc);
        for (; d < D; d++) ss = __builtin_fmaf(x[d], x[d], ss);
        const float r = 1.f / sqrtf(ss / (float)D + j->eps);
        for (d = 0; d < D; d++) y[d] = (x[d] * r) * j->w[d];
    }
}

void seer_rms_norm(const float *x, int64_t sx, const float *w, float *y, int64_t M, int64_t D, float eps,
                   int nthreads) {
    const job_t j = {x, w, 0, 0, y, M, sx, D, 1, eps};
    seer_parallel(M * D < (int64_t)1 << 16 ? 1 : nthreads, norm_task, (void *)&j);
}

static void rope_task(void *arg, int t, int n) {
    const job_t *j = arg;
    const int64_t D = j->D, half = D / 2, H = j->H;
    for (int64_t r = seer_split(j->rows, t, n); r < seer_split(j->rows, t + 1, n); r++) {
        const float *c = j->cos + r * D, *s = j->sin + r * D;
        for (int64_t h = 0; h < H; h++) {
            const float *x = j->x + r * j->sx + h * D;
            float *o = j->y + (r * H + h) * D;
            for (int64_t i = 0; i < half; i++) o[i] = x[i] * c[i] + (-x[i + half]) * s[i];
            for (int64_t i = half; i < D; i++) o[i] = x[i] * c[i] + x[i - half] * s[i];
        }
    }
}

void seer_rotary(const float *x, int64_t sx, const float *cos, const float *sin, float *out, int64_t T, int64_t H,
                 int64_t D, int nthreads) {
    const job_t j = {x, 0, cos, sin, out, T, sx, D, H, 0.f};
    seer_parallel(T * H * D < (int64_t)1 << 16 ? 1 : nthreads, rope_task, (void *)&j);
}
