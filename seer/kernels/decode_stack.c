/* A decode step through a stack of Llama-style decoder layers in one call, on CPU, in fp32.
 *
 * At batch 1 a layer is a dozen small operations (two norms, four matmuls, rotary, the KV
 * write, attention, two residual adds, SiLU-and-multiply); dispatched one by one from Python
 * each costs several microseconds beyond its arithmetic, about as much in all as reading the
 * layer's int8 weights. Here the whole stack runs as one call: the same kernels the Python path
 * uses (rms_norm, rotary, panel_linear / int_linear, paged_decode, silu_mul), in the same order
 * and on the same rows, so a decode row gets bitwise the result of seer.models.llama's
 * DecoderLayer.forward.
 *
 * One token per sequence (a pure decode step), no tensor parallelism, full attention
 * (seer/layers/decode_stack.py checks when this applies).
 *
 *   x      [M, hidden]  the embeddings in, the last layer's output out (before the final norm)
 *   cos/sin [M, head_dim] the rotary tables of each row's position
 *   slots  [M] flat KV-cache slot of each row's new key and value
 *   table  [M, max_blocks], lens [M]: as seer_paged_decode
 * Each layer's caches are [num_blocks, block_size, kv_heads, head_dim], fp32 or bf16 (bf16: the
 * new keys and values are rounded to nearest-even, as torch's conversion rounds them).
 *
 * Returns 0, 1 when scratch memory cannot be allocated, or the failing kernel's code + 100.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "pool.h"

enum { LIN_PANEL, LIN_Q8, LIN_Q4 };

typedef struct {
    int64_t kind; /* LIN_* */
    const void *w;
    const void *scales; /* NULL for fp32; float for q8, fp16 for q4 */
    const float *bias;  /* may be NULL */
    int64_t K, N;
} seer_lin_t;

typedef struct {
    const float *ln1, *ln2; /* input_layernorm, post_attention_layernorm weights */
    const float *qn, *kn;   /* per-head q/k RMSNorm weights (Qwen3), or NULL */
    seer_lin_t qkv, o, gate_up, down;
    void *kc, *vc;
} seer_layer_t;

typedef struct {
    int64_t hidden, heads, kv_heads, head_dim, inter, block_size, max_blocks, bf16, threads;
    double eps, scale;
} seer_dims_t;

/* act[m, i] = silu(gu[m, i]) * gu[m, I + i]: the MLP's gate and up halves, as F.silu(gate) * up
 * (silu(g) = g / (1 + exp(-g)); this file is built with -ffast-math, so the loop is vectorised
 * and exp may differ from torch's in the last bit: both of seer's paths use this one). */
typedef struct {
    const float *gu;
    float *act;
    int64_t M, I;
} silu_job_t;

static void silu_task(void *arg, int t, int n) {
    const silu_job_t *j = arg;
    const int64_t I = j->I;
    for (int64_t m = seer_split(j->M, t, n); m < seer_split(j->M, t + 1, n); m++) {
        const float *g = j->gu + m * 2 * I, *u = g + I;
        float *a = j->act + m * I;
        for (int64_t i = 0; i < I; i++) a[i] = g[i] / (1.f + expf(-g[i])) * u[i];
    }
}

void seer_silu_mul(const float *gu, float *act, int64_t M, int64_t I, int nthreads) {
    const silu_job_t j = {gu, act, M, I};
    seer_parallel(M * I < (int64_t)1 << 16 ? 1 : nthreads, silu_task, (void *)&j);
}

static int linear(const seer_lin_t *l, const float *x, float *y, int64_t M, int threads) {
    switch (l->kind) {
    case LIN_PANEL: return seer_panel_linear_f32(x, l->w, l->bias, y, M, l->K, l->N, threads);
    case LIN_Q8: return seer_int_linear_q8(x, l->w, l->scales, l->bias, y, M, l->K, l->N, threads);
    case LIN_Q4: return seer_int_linear_q4(x, l->w, l->scales, l->bias, y, M, l->K, l->N, threads);
    default: return 3;
    }
}

/* torch's float -> bfloat16: round to nearest, ties to even; NaN stays a (quiet) NaN. */
static inline uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* n values of src into the cache row at dst (fp32 or bf16). */
static void put_row(void *cache, int64_t slot, const float *src, int64_t n, int bf16) {
    if (!bf16) {
        memcpy((float *)cache + slot * n, src, n * sizeof(float));
        return;
    }
    uint16_t *dst = (uint16_t *)cache + slot * n;
    for (int64_t i = 0; i < n; i++) dst[i] = to_bf16(src[i]);
}

static void add_rows(float *x, const float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] += y[i];
}

int seer_decode_layers(const seer_layer_t *layers, int64_t nlayers, const seer_dims_t *d, float *x, int64_t M,
                       const float *cos, const float *sin, const int64_t *slots, const int64_t *table,
                       const int64_t *lens) {
    const int64_t H = d->hidden, D = d->head_dim, qs = d->heads * D, kvs = d->kv_heads * D, I = d->inter;
    const int64_t wqkv = qs + 2 * kvs, th = d->threads;
    const int bf16 = (int)d->bf16;
    /* scratch: h [M, H], qkv [M, wqkv], q [M, qs], k [M, kvs], attn [M, qs], t [M, H], gu [M, 2I], act [M, I],
     * normed [M, qs + kvs] (q/k norms) */
    const int64_t per_row = H + wqkv + qs + kvs + qs + H + 2 * I + I + qs + kvs;
    float *buf = malloc(sizeof(float) * M * per_row);
    if (!buf) return 1;
    float *h = buf, *qkv = h + M * H, *q = qkv + M * wqkv, *k = q + M * qs, *attn = k + M * kvs,
          *t = attn + M * qs, *gu = t + M * H, *act = gu + M * 2 * I, *qn = act + M * I, *kn = qn + M * qs;
    int rc = 0;
    for (int64_t li = 0; li < nlayers && !rc; li++) {
        const seer_layer_t *L = &layers[li];
        seer_rms_norm(x, H, L->ln1, h, M, H, (float)d->eps, th);
        if ((rc = linear(&L->qkv, h, qkv, M, th))) break;
        const float *qsrc = qkv, *ksrc = qkv + qs;
        int64_t qstride = wqkv, kstride = wqkv;
        if (L->qn) { /* each head's q and k normalised first, as [tokens * heads, D] rows */
            for (int64_t m = 0; m < M; m++) {
                seer_rms_norm(qkv + m * wqkv, D, L->qn, qn + m * qs, d->heads, D, (float)d->eps, 1);
                seer_rms_norm(qkv + m * wqkv + qs, D, L->kn, kn + m * kvs, d->kv_heads, D, (float)d->eps, 1);
            }
            qsrc = qn, ksrc = kn, qstride = qs, kstride = kvs;
        }
        seer_rotary(qsrc, qstride, cos, sin, q, M, d->heads, D, th);
        seer_rotary(ksrc, kstride, cos, sin, k, M, d->kv_heads, D, th);
        for (int64_t m = 0; m < M; m++) {
            put_row(L->kc, slots[m], k + m * kvs, kvs, bf16);
            put_row(L->vc, slots[m], qkv + m * wqkv + qs + kvs, kvs, bf16);
        }
        if ((rc = seer_paged_decode(q, L->kc, L->vc, table, lens, attn, M, d->heads, d->kv_heads, D,
                                    d->block_size, d->max_blocks, (float)d->scale, th, bf16)))
            break;
        if ((rc = linear(&L->o, attn, t, M, th))) break;
        add_rows(x, t, M * H);
        seer_rms_norm(x, H, L->ln2, h, M, H, (float)d->eps, th);
        if ((rc = linear(&L->gate_up, h, gu, M, th))) break;
        seer_silu_mul(gu, act, M, I, th);
        if ((rc = linear(&L->down, act, t, M, th))) break;
        add_rows(x, t, M * H);
    }
    free(buf);
    return rc ? rc + 100 : 0;
}

/* The ends of a decode step, for seer_decode_step: the token embedding before the layers, the
 * final norm and the LM head after them, as seer.models.llama computes them. */
typedef struct {
    const float *embed;   /* [vocab, H] rows, or pack_panels' layout of them when embed_panels */
    int64_t vocab, embed_panels;
    const float *cos, *sin; /* the rotary tables [positions, head_dim] */
    int64_t positions;
    const float *norm;    /* the final RMSNorm's weight */
    seer_lin_t head;      /* logits = head(norm(x)) */
} seer_ends_t;

/* A whole decode step from token ids to logits [M, head.N]: the embedding rows and the rotary
 * rows of each position looked up here, then seer_decode_layers, the final norm and the head,
 * the kernels the Python path calls in the order it calls them. Returns as seer_decode_layers,
 * or 2 for a token id or position outside the tables. */
int seer_decode_step(const seer_layer_t *layers, int64_t nlayers, const seer_dims_t *d, const seer_ends_t *e,
                     const int64_t *ids, const int64_t *pos, int64_t M, const int64_t *slots, const int64_t *table,
                     const int64_t *lens, float *logits) {
    const int64_t H = d->hidden, D = d->head_dim;
    for (int64_t m = 0; m < M; m++)
        if (ids[m] < 0 || ids[m] >= e->vocab || pos[m] < 0 || pos[m] >= e->positions) return 2;
    float *buf = malloc(sizeof(float) * M * (2 * H + 2 * D));
    if (!buf) return 1;
    float *x = buf, *h = x + M * H, *cos = h + M * H, *sin = cos + M * D;
    for (int64_t m = 0; m < M; m++) {
        const int64_t id = ids[m];
        if (e->embed_panels) {
            const float *panel = e->embed + (id / SEER_PANEL) * H * SEER_PANEL + id % SEER_PANEL;
            for (int64_t k = 0; k < H; k++) x[m * H + k] = panel[k * SEER_PANEL];
        } else
            memcpy(x + m * H, e->embed + id * H, H * sizeof(float));
        memcpy(cos + m * D, e->cos + pos[m] * D, D * sizeof(float));
        memcpy(sin + m * D, e->sin + pos[m] * D, D * sizeof(float));
    }
    int rc = seer_decode_layers(layers, nlayers, d, x, M, cos, sin, slots, table, lens);
    if (!rc) {
        seer_rms_norm(x, H, e->norm, h, M, H, (float)d->eps, (int)d->threads);
        rc = linear(&e->head, h, logits, M, (int)d->threads);
        rc = rc ? rc + 100 : 0;
    }
    free(buf);
    return rc;
}
