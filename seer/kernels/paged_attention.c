/* Decode attention straight from the paged KV cache, on CPU, in fp32.
 *
 * One query token per sequence. Keys and values are read in place from their blocks
 * (no gather copy): for a context of L tokens each K and V row is read once per KV
 * head and shared by the query heads of its group (GQA).
 *
 * Layouts (row-major, contiguous):
 *   q      [B, Hq, D]
 *   kc, vc [num_blocks, block_size, Hkv, D]
 *   table  [B, max_blocks]  int64 block ids
 *   lens   [B]              int64 context lengths (>= 1)
 *   out    [B, Hq, D]
 * Work is split over (sequence, slice of kv heads) items across `nthreads` threads (pool.c).
 */
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pool.h"

typedef struct {
    const float *q, *kc, *vc;
    const int64_t *table, *lens;
    float *out;
    int64_t B, Hq, Hkv, D, bs, max_blocks;
    float scale;
    int64_t splits;      /* kv-head slices per sequence */
    int64_t first, last; /* [first, last) over B * splits work items */
    _Atomic int failed;
} job_t;

/* Sequence b, kv heads [h0, h1): tokens in the outer loop so each token's rows for these
 * heads are read together (contiguous in memory), query heads of a group in the inner loop. */
static void one_item(const job_t *j, int64_t b, int64_t h0, int64_t h1, float *scores) {
    const int64_t G = j->Hq / j->Hkv, D = j->D, L = j->lens[b], NH = (h1 - h0) * G;
    const int64_t row = j->Hkv * D; /* floats between consecutive tokens of a block */
    const int64_t *tab = j->table + b * j->max_blocks;
    const float *q = j->q + (b * j->Hq + h0 * G) * D;
    float *out = j->out + (b * j->Hq + h0 * G) * D;

    /* scores[n * L + t] = scale * <q_n, k_t> for query head n of this range */
    for (int64_t t = 0; t < L; t++) {
        const float *k = j->kc + (tab[t / j->bs] * j->bs + t % j->bs) * row + h0 * D;
        for (int64_t n = 0; n < NH; n++) {
            const float *qn = q + n * D, *kn = k + (n / G) * D;
            float s = 0.f;
            for (int64_t d = 0; d < D; d++) s += qn[d] * kn[d];
            scores[n * L + t] = s * j->scale;
        }
    }
    for (int64_t n = 0; n < NH; n++) {
        float *sn = scores + n * L, m = -INFINITY, sum = 0.f;
        for (int64_t t = 0; t < L; t++) m = sn[t] > m ? sn[t] : m;
        for (int64_t t = 0; t < L; t++) { sn[t] = expf(sn[t] - m); sum += sn[t]; }
        const float inv = 1.f / sum;
        for (int64_t t = 0; t < L; t++) sn[t] *= inv;
    }
    memset(out, 0, sizeof(float) * NH * D);
    for (int64_t t = 0; t < L; t++) {
        const float *v = j->vc + (tab[t / j->bs] * j->bs + t % j->bs) * row + h0 * D;
        for (int64_t n = 0; n < NH; n++) {
            const float p = scores[n * L + t], *vn = v + (n / G) * D;
            float *o = out + n * D;
            for (int64_t d = 0; d < D; d++) o[d] += p * vn[d];
        }
    }
}

/* Work items: (sequence, slice of kv heads); a sequence is split into `splits` slices so
 * that small batches still keep every thread busy. */
static void *run(const job_t *j) {
    int64_t maxlen = 1;
    for (int64_t b = 0; b < j->B; b++) maxlen = j->lens[b] > maxlen ? j->lens[b] : maxlen;
    float *scores = (float *)malloc(sizeof(float) * maxlen * j->Hq);
    if (!scores) return (void *)1;
    for (int64_t i = j->first; i < j->last; i++) {
        const int64_t b = i / j->splits, s = i % j->splits;
        one_item(j, b, j->Hkv * s / j->splits, j->Hkv * (s + 1) / j->splits, scores);
    }
    free(scores);
    return NULL;
}

static void task(void *arg, int t, int n) {
    job_t j = *(job_t *)arg;
    j.first = seer_split(j.last, t, n);
    j.last = seer_split(j.last, t + 1, n);
    if (run(&j) != NULL) atomic_store(&((job_t *)arg)->failed, 1);
}

int seer_paged_decode(const float *q, const float *kc, const float *vc, const int64_t *table,
                      const int64_t *lens, float *out, int64_t B, int64_t Hq, int64_t Hkv, int64_t D,
                      int64_t bs, int64_t max_blocks, float scale, int nthreads) {
    if (nthreads < 1) nthreads = 1;
    int64_t total = 0; /* keys to read, summed over sequences */
    for (int64_t b = 0; b < B; b++) total += lens[b];
    if (total * Hkv * D < (int64_t)1 << 15) nthreads = 1; /* not worth waking the other threads */
    int64_t splits = 1;
    while (B * splits < 2 * nthreads && splits < Hkv) splits++;
    const int64_t items = B * splits;
    if (nthreads > items) nthreads = (int)items;
    const job_t job = {q, kc, vc, table, lens, out, B, Hq, Hkv, D, bs, max_blocks, scale, splits, 0, items, 0};
    seer_parallel(nthreads, task, (void *)&job);
    return atomic_load(&job.failed) ? -2 : 0;
}
