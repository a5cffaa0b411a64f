/* y = x W^T (+ b) for a few rows of x, on CPU, in fp32: the decode-step matmul.
 *
 * With a handful of rows the cost is reading W once; BLAS packs W for every call and
 * reads it at a fraction of memory bandwidth. Here each thread streams its own slice of
 * W's rows exactly once and dots each with every (cache-resident) row of x.
 *
 *   x [M, K], W [N, K], b [N] or NULL, y [M, N]; all row-major and contiguous.
 */
#include <pthread.h>
#include <stdint.h>

typedef struct {
    const float *x, *w, *b;
    float *y;
    int64_t M, K, N, n0, n1;
} slice_t;

static void *run_slice(void *arg) {
    const slice_t *s = (const slice_t *)arg;
    const int64_t K = s->K;
    for (int64_t n = s->n0; n < s->n1; n++) {
        const float *w = s->w + n * K;
        const float bias = s->b ? s->b[n] : 0.f;
        for (int64_t m = 0; m < s->M; m++) {
            const float *x = s->x + m * K;
            float acc = 0.f;
            for (int64_t k = 0; k < K; k++) acc += x[k] * w[k];
            s->y[m * s->N + n] = acc + bias;
        }
    }
    return NULL;
}

int seer_small_linear(const float *x, const float *w, const float *b, float *y, int64_t M, int64_t K,
                      int64_t N, int nthreads) {
    if (nthreads < 1) nthreads = 1;
    if (nthreads > 64) nthreads = 64;
    /* A thread costs tens of microseconds to start: only split work worth it. */
    if (N < 64 * nthreads || M * K * N < (int64_t)1 << 20) nthreads = 1;
    slice_t s[64];
    pthread_t tid[64];
    for (int i = 0; i < nthreads; i++)
        s[i] = (slice_t){x, w, b, y, M, K, N, N * i / nthreads, N * (i + 1) / nthreads};
    for (int i = 1; i < nthreads; i++)
        if (pthread_create(&tid[i], NULL, run_slice, &s[i]) != 0) return -1;
    run_slice(&s[0]);
    for (int i = 1; i < nthreads; i++) pthread_join(tid[i], NULL);
    return 0;
}
