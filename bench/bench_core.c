/* layerbank-bench, core module: the machine's floor for any shared-memory round trip — one
 * cache line written by each of two spinning threads in turn, no ring, no daemon. */
#include "bench.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#define TRIPS 20000u
#define BATCHES 15u

struct pingpong {
	_Alignas(64) _Atomic uint32_t ping;
	_Alignas(64) _Atomic uint32_t pong;
	uint32_t n;
	int cpu[2]; /* two CPUs we may run on, or -1 */
};

/* Two spinning threads sharing a CPU would measure the scheduler, not the caches. */
static void pin(int cpu)
{
	cpu_set_t set;
	if (cpu < 0)
		return;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	(void)pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

static void *ponger(void *arg)
{
	struct pingpong *p = arg;
	pin(p->cpu[1]);
	for (uint32_t i = 1; i <= p->n; i++) {
		while (atomic_load_explicit(&p->ping, memory_order_acquire) != i)
			;
		atomic_store_explicit(&p->pong, i, memory_order_release);
	}
	return NULL;
}

double lbb_core_round_trip_us(void)
{
	struct pingpong p = { .n = TRIPS * BATCHES, .cpu = { -1, -1 } };
	double batch[BATCHES];
	cpu_set_t mine, saved;
	pthread_t t;
	uint32_t i = 0;
	int found = 0;

	if (pthread_getaffinity_np(pthread_self(), sizeof(saved), &saved))
		return -1;
	mine = saved;
	for (int c = 0; c < CPU_SETSIZE && found < 2; c++)
		if (CPU_ISSET(c, &mine))
			p.cpu[found++] = c;
	if (found < 2)
		p.cpu[0] = p.cpu[1] = -1;
	if (pthread_create(&t, NULL, ponger, &p))
		return -1;
	pin(p.cpu[0]);
	for (uint32_t b = 0; b < BATCHES; b++) {
		struct timespec t0, t1;
		clock_gettime(CLOCK_MONOTONIC, &t0);
		for (uint32_t k = 0; k < TRIPS; k++) {
			/* release/acquire pair: ping publishes trip i, pong acknowledges it */
			atomic_store_explicit(&p.ping, ++i, memory_order_release);
			while (atomic_load_explicit(&p.pong, memory_order_acquire) != i)
				;
		}
		clock_gettime(CLOCK_MONOTONIC, &t1);
		batch[b] = ((double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec)) /
			   1e3 / TRIPS;
	}
	pthread_join(t, NULL);
	(void)pthread_setaffinity_np(pthread_self(), sizeof(saved), &saved);
	/* The median batch: a batch in which either thread was preempted is an outlier. */
	return lbb_median(batch, BATCHES);
}
