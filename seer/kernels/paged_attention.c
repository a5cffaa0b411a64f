/* Decode attention straight from the paged KV cache, on CPU, in fp32.
 *
 * One query token per sequence. Keys and values are read in place from their blocks
 * (no gather copy): for a context of L tokens each K and V row is read once per KV
 * head and shared by the query heads of its group (GQA).
 *
 * Layouts (row-major, contiguous):
 *   q      [B, Hq, D]
 *   kc, vc [num_blocks, block_size, Hkv, D]  fp32, or bf16 (kv_cache_dtype="bfloat16": half the bytes
 *                                             to read; widened to fp32 as they are loaded)
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

#include "kernels.h"
#include "pool.h"
#include "vec.h"

typedef struct {
    const float *q;
    const void *kc, *vc;
    const int64_t *table, *lens;
    float *out;
    int64_t B, Hq, Hkv, D, bs, max_blocks;
    float scale;
    int bf16;            /* the caches hold bf16 */
    int64_t splits;      /* kv-head slices per sequence */
    int64_t first, last; /* [first, last) over B * splits work items */
    _Atomic int failed;
} job_t;

/* Element i of a cache row: fp32, or bf16 widened (its bits are fp32's upper half). */
static inline __attribute__((always_inline)) float at(const void *row, int64_t i, int bf16) {
    if (!bf16) return ((const float *)row)[i];
    const uint32_t bits = (uint32_t)((const uint16_t *)row)[i] << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* Elements i .. i + 15 of a cache row, as fp32. */
static inline __attribute__((always_inline)) vf at16(const void *row, int64_t i, int bf16) {
    if (!bf16) return loadf((const float *)row + i);
    uint16_t h[VW];
    memcpy(h, (const uint16_t *)row + i, sizeof h);
    vi w;
    for (int l = 0; l < VW; l++) w[l] = (int32_t)h[l] << 16;
    return (vf)w;
}

/* Sequence b, kv heads [h0, h1): tokens in the outer loop so each token's rows for these
 * heads are read together (contiguous in memory), query heads of a group in the inner loop.
 * bf16 is a constant in each inlined copy. */
static inline __attribute__((always_inline)) void one_item(const job_t *j, int64_t b, int64_t h0, int64_t h1,
                                                           float *scores, int bf16) {
    const size_t elem = bf16 ? 2 : 4;
    const int64_t G = j->Hq / j->Hkv, D = j->D, L = j->lens[b], NH = (h1 - h0) * G;
    const int64_t row = j->Hkv * D; /* floats between consecutive tokens of a block */
    const int64_t *tab = j->table + b * j->max_blocks;
    const float *q = j->q + (b * j->Hq + h0 * G) * D;
    float *out = j->out + (b * j->Hq + h0 * G) * D;

    /* scores[n * L + t] = scale * <q_n, k_t> for query head n of this range */
    const int vec = D % VW == 0;
    for (int64_t t = 0; t < L; t++) {
        const char *k = (const char *)j->kc + ((tab[t / j->bs] * j->bs + t % j->bs) * row + h0 * D) * elem;
        for (int64_t n = 0; n < NH; n++) {
            const float *qn = q + n * D;
            const char *kn = k + (n / G) * D * elem;
            float s = 0.f;
            if (vec) {
                vf acc = {0};
                for (int64_t d = 0; d < D; d += VW) acc = vfma(loadf(qn + d), at16(kn, d, bf16), acc);
                s = hsum(acc);
            } else
                for (int64_t d = 0; d < D; d++) s += qn[d] * at(kn, d, bf16);
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
        const char *v = (const char *)j->vc + ((tab[t / j->bs] * j->bs + t % j->bs) * row + h0 * D) * elem;
        for (int64_t n = 0; n < NH; n++) {
            const float p = scores[n * L + t];
            const char *vn = v + (n / G) * D * elem;
            float *o = out + n * D;
            if (vec) {
                const vf pv = (vf){0} + p;
                for (int64_t d = 0; d < D; d += VW) {
                    const vf r = vfma(pv, at16(vn, d, bf16), loadf(o + d));
                    memcpy(o + d, &r, sizeof r);
                }
            } else
                for (int64_t d = 0; d < D; d++) o[d] += p * at(vn, d, bf16);
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
        const int64_t h0 = j->Hkv * s / j->splits, h1 = j->Hkv * (s + 1) / j->splits;
        if (j->bf16) one_item(j, b, h0, h1, scores, 1);
        else one_item(j, b, h0, h1, scores, 0);
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

int seer_paged_decode(const float *q, const void *kc, const void *vc, const int64_t *table,
                      const int64_t *lens, float *out, int64_t B, int64_t Hq, int64_t Hkv, int64_t D,
                      int64_t bs, int64_t max_blocks, float scale, int nthreads, int bf16) {
    if (nthreads < 1) nthreads = 1;
    int64_t total = 0; /* keys to read, summed over sequences */
    for (int64_t b = 0; b < B; b++) total += lens[b];
    if (total * Hkv * D < (int64_t)1 << 15) nthreads = 1; /* not worth waking the other threads */
    int64_t splits = 1;
    while (B * splits < 2 * nthreads && splits < Hkv) splits++;
    const int64_t items = B * splits;
    if (nthreads > items) nthreads = (int)items;
    const job_t job = {q, kc, vc, table, lens, out, B, Hq, Hkv, D, bs, max_blocks, scale, bf16, splits, 0, items, 0};
    seer_parallel(nthreads, task, (void *)&job);
    return atomic_load(&job.failed) ? -2 : 0;
}
