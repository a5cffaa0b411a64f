/* A pool of threads for the kernels, kept between calls.
 *
 * seer runs its model on an engine thread, not the process's first thread, and libgomp then
 * puts its workers to sleep at the end of every parallel region (it counts more OpenMP threads
 * than cores once any other thread has used OpenMP, and stops spinning), so each region paid a
 * futex wake-up: 40-50 us, more than a decode step's matmul of a 768 x 768 weight. These workers
 * instead spin for a while (SPIN pauses, a fraction of a millisecond) after each job, so the
 * next kernel of the same step finds them awake, and sleep on a condition variable after that.
 *
 * One job runs at a time (callers on other threads wait their turn). Every started worker
 * acknowledges every job, so a job's fields never change under a worker still reading them.
 * After fork() the child starts with no workers.
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>

#include "pool.h"

#define MAX_WORKERS (SEER_MAX_THREADS - 1)
#define SPIN 20000 /* pause instructions a waiting thread spins before it sleeps or yields */

static struct {
    pthread_mutex_t call; /* held for one job */
    pthread_mutex_t m;    /* with cv: sleeping workers */
    pthread_cond_t cv;
    _Atomic uint64_t gen; /* bumped to publish a job */
    _Atomic int pending;  /* workers yet to acknowledge it */
    _Atomic int sleepers;
    int workers;
    uint64_t start_gen[MAX_WORKERS + 1]; /* the last job before each worker started */
    void (*fn)(void *, int, int);
    void *ctx;
    int n;
} P = {.call = PTHREAD_MUTEX_INITIALIZER, .m = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static pthread_once_t once = PTHREAD_ONCE_INIT;

static inline void relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

static void *worker(void *arg) {
    const int id = (int)(intptr_t)arg;
    uint64_t seen = P.start_gen[id];
    for (;;) {
        for (int spins = 0; atomic_load_explicit(&P.gen, memory_order_acquire) == seen;) {
            if (++spins < SPIN) {
                relax();
                continue;
            }
            /* The caller bumps gen, then reads sleepers; here sleepers goes up, then gen is read:
             * one of the two sees the other, so a job is never missed. */
            pthread_mutex_lock(&P.m);
            atomic_fetch_add(&P.sleepers, 1);
            while (atomic_load(&P.gen) == seen) pthread_cond_wait(&P.cv, &P.m);
            atomic_fetch_sub(&P.sleepers, 1);
            pthread_mutex_unlock(&P.m);
        }
        seen = atomic_load_explicit(&P.gen, memory_order_acquire);
        if (id < P.n) P.fn(P.ctx, id, P.n);
        atomic_fetch_sub_explicit(&P.pending, 1, memory_order_release);
    }
    return NULL;
}

static void forget_workers(void) { /* in a forked child: the workers were not copied */
    pthread_mutex_init(&P.call, NULL);
    pthread_mutex_init(&P.m, NULL);
    pthread_cond_init(&P.cv, NULL);
    atomic_store(&P.pending, 0);
    atomic_store(&P.sleepers, 0);
    P.workers = 0;
}

static void at_fork(void) { pthread_atfork(NULL, NULL, forget_workers); }

void seer_parallel(int n, void (*fn)(void *, int, int), void *ctx) {
    if (n > MAX_WORKERS + 1) n = MAX_WORKERS + 1;
    if (n <= 1) {
        fn(ctx, 0, 1);
        return;
    }
    pthread_once(&once, at_fork);
    pthread_mutex_lock(&P.call);
    while (P.workers < n - 1) {
        pthread_t th;
        P.start_gen[P.workers + 1] = atomic_load(&P.gen);
        if (pthread_create(&th, NULL, worker, (void *)(intptr_t)(P.workers + 1)) != 0) break;
        pthread_detach(th);
        P.workers++;
    }
    if (n > P.workers + 1) n = P.workers + 1; /* a thread could not be started: fewer */
    if (n > 1) {
        P.fn = fn;
        P.ctx = ctx;
        P.n = n;
        atomic_store(&P.pending, P.workers);
        atomic_fetch_add(&P.gen, 1);
        if (atomic_load(&P.sleepers) > 0) {
            pthread_mutex_lock(&P.m);
            pthread_cond_broadcast(&P.cv);
            pthread_mutex_unlock(&P.m);
        }
    }
    fn(ctx, 0, n);
    for (int spins = 0; atomic_load_explicit(&P.pending, memory_order_acquire) > 0;) {
        if (++spins < SPIN) relax();
        else sched_yield();
    }
    pthread_mutex_unlock(&P.call);
}

void seer_chunks_init(seer_chunks_t *c, long long count, int n, long long chunk) {
    if (n < 1) n = 1;
    if (n > SEER_MAX_THREADS) n = SEER_MAX_THREADS;
    c->n = n;
    c->chunk = chunk > 0 ? chunk : 1;
    for (int t = 0; t < n; t++) {
        atomic_init(&c->next[t], seer_split(count, t, n));
        c->end[t] = seer_split(count, t + 1, n);
    }
}

long long seer_chunks_take(seer_chunks_t *c, int t, long long *last) {
    for (int i = 0; i < c->n; i++) {
        const int s = (t + i) % c->n; /* its own share first, then the next ones' */
        if (atomic_load_explicit(&c->next[s], memory_order_relaxed) >= c->end[s]) continue;
        const long long first = atomic_fetch_add(&c->next[s], c->chunk);
        if (first < c->end[s]) {
            *last = first + c->chunk < c->end[s] ? first + c->chunk : c->end[s];
            return first;
        }
    }
    return -1;
}
