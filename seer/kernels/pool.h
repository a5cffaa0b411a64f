/* The kernels' threads: see pool.c. */
#ifndef SEER_POOL_H
#define SEER_POOL_H
/* fn(ctx, t, n) for every t < n, t = 0 on the calling thread; returns when all have returned. */
void seer_parallel(int n, void (*fn)(void *ctx, int t, int n), void *ctx);
/* Items [0, count) split evenly over n threads: thread t's first item. */
static inline long long seer_split(long long count, int t, int n) { return count * t / n; }
#endif
