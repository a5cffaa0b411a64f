/* The kernels one file calls from another (decode_stack.c runs a step through them); each file
 * that defines one includes this, so a definition and its callers cannot disagree. */
#ifndef SEER_KERNELS_H
#define SEER_KERNELS_H
#include <stdint.h>

#define SEER_PANEL 32 /* output columns per panel of panel_linear's weight layout (kernels.PANEL) */

int seer_panel_linear_f32(const float *x, const float *wp, const float *b, float *y, int64_t M, int64_t K, int64_t N,
                          int nthreads);
int seer_int_linear_q8(const float *x, const uint8_t *w, const float *ws, const float *b, float *y, int64_t M,
                       int64_t K, int64_t N, int nthreads);
int seer_int_linear_q4(const float *x, const uint8_t *w, const uint16_t *ws, const float *b, float *y, int64_t M,
                       int64_t K, int64_t N, int nthreads);
void seer_rms_norm(const float *x, int64_t sx, const float *w, float *y, int64_t M, int64_t D, float eps,
                   int nthreads);
void seer_rotary(const float *x, int64_t sx, const float *cos, const float *sin, float *out, int64_t T, int64_t H,
                 int64_t D, int nthreads);
int seer_paged_decode(const float *q, const void *kc, const void *vc, const int64_t *table, const int64_t *lens,
                      float *out, int64_t B, int64_t Hq, int64_t Hkv, int64_t D, int64_t bs, int64_t max_blocks,
                      float scale, int nthreads, int bf16);
void seer_silu_mul(const float *gu, float *act, int64_t M, int64_t I, int nthreads);
#endif
