/* The kernels' threads: see pool.c. */
#ifndef SEER_POOL_H
#define SEER_POOL_H
/* fn(ctx, t, n) for every t < n, t = 0 on the calling thread; returns when all have returned. */
void seer_parallel(int n, void (*fn)(void *ctx, int t, int n), void *ctx);
/* Items [0, count) split evenly over n threads: thread t's first item. */
static inline long long seer_split(long long count, int t, int n) { return count * t / n; }

/* Items [0, count) handed out in chunks: thread t takes chunks from the front of its own share
 * (seer_split's), so in the common case it reads one stream as with a fixed split; once its share
 * is done it takes chunks from the others', so a thread slowed by the shared core's other work
 * does not hold the call up. The result of an item must not depend on which thread does it. */
#define SEER_MAX_THREADS 256
typedef struct {
    _Atomic long long next[SEER_MAX_THREADS];
    long long end[SEER_MAX_THREADS], chunk;
    int n;
} seer_chunks_t;
void seer_chunks_init(seer_chunks_t *c, long long count, int n, long long chunk);
/* Items per chunk where an item reads item_bytes of weights: about 64 KB a chunk, at least one item. */
static inline long long seer_chunk_items(long long item_bytes) { return 1 + (1 << 16) / item_bytes; }
/* The first item of thread t's next chunk, its end in *last; -1 when none is left. */
long long seer_chunks_take(seer_chunks_t *c, int t, long long *last);
#endif
