/* The vector types and helpers the linear kernels share: 512-bit vectors as GCC vector
 * extensions (AVX-512 instructions where the CPU has them, two AVX2 registers or scalar code
 * elsewhere). Each helper does its lanes in one fixed order, the same in every tile. */
#ifndef SEER_VEC_H
#define SEER_VEC_H
#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#define VW 16 /* 32-bit lanes per vector */
typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));

static inline vf loadf(const float *p) {
    vf v;
    memcpy(&v, p, sizeof v); /* unaligned */
    return v;
}

static inline vi loadi(const void *p) {
    vi v;
    memcpy(&v, p, sizeof v);
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

static inline vf bcastf(float s) {
#if defined(__AVX512F__)
    return (vf)_mm512_set1_ps(s);
#else
    vf v;
    for (int i = 0; i < VW; i++) v[i] = s;
    return v;
#endif
}

/* The first n (<= VW) lanes from p, the rest 0; and the first n lanes of v to p. */
static inline vf loadf_n(const float *p, int n) {
    if (n >= VW) return loadf(p);
    vf v = {0};
    memcpy(&v, p, (size_t)n * sizeof(float));
    return v;
}

static inline void storef_n(float *p, vf v, int n) { memcpy(p, &v, (size_t)(n < VW ? n : VW) * sizeof(float)); }

/* The IEEE half-precision number with bits h, as a float (exact). */
static inline float half_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 31, m = h & 0x3ff;
    uint32_t bits;
    if (e == 31) bits = sign | 0x7f800000u | m << 13;       /* inf, NaN */
    else if (e) bits = sign | (e + 112) << 23 | m << 13;     /* normal: exponent bias 15 -> 127 */
    else {                                                   /* zero, subnormal: m 2^-24 */
        float f = (float)m * 5.9604644775390625e-8f;
        memcpy(&bits, &f, sizeof bits);
        bits |= sign;
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* VW fp16 values at p as floats. */
static inline vf load_halves(const uint16_t *p) {
#if defined(__AVX512F__)
    return (vf)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
#else
    vf v;
    for (int i = 0; i < VW; i++) v[i] = half_to_float(p[i]);
    return v;
#endif
}

static inline float hsum(vf v) {
#if defined(__AVX512F__)
    return _mm512_reduce_add_ps((__m512)v);
#else
    float s = 0.f;
    for (int i = 0; i < VW; i++) s += v[i];
    return s;
#endif
}

#endif
