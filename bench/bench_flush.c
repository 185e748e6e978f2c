/* layerbank-bench flush: what FLUSH of a full store costs the lookups served beside it. An
 * in-process store (the daemon's daemon/store.c) is filled with small entries; a reader thread
 * looks them up back to back (releasing each hit) and records how long each took; then the
 * whole store is flushed, once holding the store lock for the whole pass (the baseline: what FLUSH did before)
 * and once in batches of LBD_FLUSH_BATCH drops (what it does now), interleaved, REPS times.
 * Printed: the flush's own time and the longest lookup during it, each way, and their ratios. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arena.h"
#include "bench.h"
#include "layerbank/layerbank.h"
#include "layerbank/ring.h"
#include "store.h"

#define DATA 256u /* bytes of an entry's data */
#define REPS 3

struct reader {
	struct lbd_store *st;
	uint32_t inputs;
	atomic_int stop;
	atomic_uint_fast64_t w0, w1; /* the flush's window (lb_now_ns); w0 0: not measuring,
				      * w1 0: not over yet */
	atomic_uint_fast64_t done;   /* lookups finished, all told */
	uint64_t worst_ns, lookups;  /* of the lookups that overlapped the window */
};

static void keys(uint32_t i, uint64_t fp[4], uint64_t exact[2])
{
	uint64_t x = i * 0x9e3779b97f4a7c15ull;
	for (int w = 0; w < 4; w++) {
		x ^= x >> 31;
		x *= 0xbf58476d1ce4e5b9ull;
		fp[w] = x ^ (x >> 29);
	}
	exact[0] = i;
	exact[1] = ~(uint64_t)i;
}

static int fill(struct lbd_store *st, uint32_t n)
{
	static const uint8_t data[DATA];
	for (uint32_t i = 1; i <= n; i++) {
		struct lb_req r = { .opcode = LB_OP_INSERT, .model_id = 1, .seq_len = 1,
				    .payload_len = LB_INSERT_HDR_SIZE + DATA };
		struct lb_insert_hdr h = { .dtype = LBP_DTYPE_F32, .ndim = 1, .shape = { DATA / 4 },
					   .bytes = DATA };
		struct lb_cpl cpl = { 0 };
		keys(i, h.fp, h.exact);
		lbd_store_insert(st, LBD_INSERTER_DAEMON, &r, &h, data, &cpl);
		if (cpl.status != 0)
			return cpl.status;
	}
	return 0;
}

static void *reader_main(void *p)
{
	struct reader *rd = p;
	struct lbd_leases ls = { 0 };
	uint32_t i = 0;

	while (!atomic_load(&rd->stop)) {
		struct lb_req r = { .opcode = LB_OP_LOOKUP, .model_id = 1, .seq_len = 1 };
		struct lb_query q = { .n_thr = 0 };
		struct lb_cpl cpl = { 0 }, rel = { 0 };
		keys(1 + i++ % rd->inputs, q.fp, q.exact);
		/* The lookup and, on a hit, its release: each waits for the store lock. */
		uint64_t t0 = lb_now_ns();
		lbd_store_lookup(rd->st, &ls, &r, &q, NULL, &cpl);
		if (cpl.status == 0)
			lbd_store_release(rd->st, &ls, cpl.lease, &rel);
		uint64_t t1 = lb_now_ns();
		uint64_t w0 = atomic_load(&rd->w0), w1 = atomic_load(&rd->w1);
		if (w0 && t1 >= w0 && (!w1 || t0 <= w1)) {
			rd->lookups++;
			if (t1 - t0 > rd->worst_ns)
				rd->worst_ns = t1 - t0;
		}
		atomic_fetch_add(&rd->done, 1);
	}
	lbd_leases_free(&ls);
	return NULL;
}

/* One way of flushing, over the runs. */
struct way {
	double flush_ms[REPS], worst_us[REPS];
	uint64_t lookups; /* during the last run */
};

/* Fill, then flush with the reader measuring every lookup that overlaps the flush (one the
 * flush blocked ends after it); its figures are read once two more lookups have finished
 * (the atomics order the reader's writes before them). */
static int one(struct reader *rd, uint32_t batch, struct way *out, int i)
{
	struct lbd_flush_result fr;
	int ret = fill(rd->st, rd->inputs);
	if (ret < 0)
		return ret;
	uint64_t seen = atomic_load(&rd->done);
	while (atomic_load(&rd->done) < seen + 2)
		; /* the reader is past any lookup of the last run */
	rd->worst_ns = 0;
	rd->lookups = 0;
	atomic_store(&rd->w1, 0);
	uint64_t t = lb_now_ns();
	atomic_store(&rd->w0, t);
	ret = lbd_store_flush_batched(rd->st, 0, -1, batch, &fr);
	atomic_store(&rd->w1, lb_now_ns());
	t = lb_now_ns() - t;
	seen = atomic_load(&rd->done);
	while (atomic_load(&rd->done) < seen + 2)
		;
	atomic_store(&rd->w0, 0);
	if (ret < 0)
		return ret;
	if (fr.entries != rd->inputs)
		return -EIO;
	out->flush_ms[i] = (double)t / 1e6;
	out->worst_us[i] = (double)rd->worst_ns / 1e3;
	out->lookups = rd->lookups;
	return 0;
}

int bench_flush_main(int argc, char **argv)
{
	static const uint8_t boot[16] = { 3 };
	static const struct option opts[] = { { "entries", required_argument, NULL, 'n' },
					      { "json", no_argument, NULL, 'j' },
					      { NULL, 0, NULL, 0 } };
	struct lbd_store_cfg cfg = { .policy = LBD_POLICY_LRU, .ttl_ns = 1, .half_life_ns = 1,
				     .drift_max = 0.05, .tau = 0.98 };
	struct lbp_register_model d = { .weights_hash = 1, .n_layers = 1, .hidden = DATA / 4,
					.dtype = LBP_DTYPE_F32, .max_seq = 1,
					.fp = { .chunks = 4, .bits = 256, .seed = 1 }, .name = "flush" };
	struct reader rd = { .inputs = 100000 };
	struct way whole, batched;
	struct lbd_arena arena;
	bool json = false;
	char err[256];
	pthread_t t;
	int c, ret = 0;

	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		unsigned long v;
		char *end;
		switch (c) {
		case 'n':
			errno = 0;
			v = strtoul(optarg, &end, 10);
			if (errno || *end || v < 1000 || v > 2000000) {
				fprintf(stderr, "layerbank-bench flush: --entries '%s': a count from 1000 to 2000000\n",
					optarg);
				return 2;
			}
			rd.inputs = (uint32_t)v;
			break;
		case 'j':
			json = true;
			break;
		default:
			fprintf(stderr, "usage: layerbank-bench flush [--entries N] [--json]\n");
			return 2;
		}
	}
	/* An entry takes its 128-byte header and its data, rounded to the allocator's 64 bytes. */
	size_t bytes = (size_t)rd.inputs * 512 + (64u << 20);
	if (lbd_arena_create(&arena, bytes, -1, LBD_HP_OFF, boot, 0, err, sizeof(err)) < 0) {
		fprintf(stderr, "layerbank-bench flush: %s\n", err);
		return 1;
	}
	rd.st = lbd_store_new(&arena, 1, &cfg);
	if (!rd.st || lbd_store_add_model(rd.st, 1, &d) < 0) {
		fprintf(stderr, "layerbank-bench flush: cannot make the store\n");
		lbd_arena_destroy(&arena);
		return 1;
	}
	if (pthread_create(&t, NULL, reader_main, &rd) != 0) {
		fprintf(stderr, "layerbank-bench flush: cannot start the reader\n");
		return 1;
	}
	for (int i = 0; i < REPS && ret == 0; i++) {
		ret = one(&rd, UINT32_MAX, &whole, i);
		if (ret == 0)
			ret = one(&rd, LBD_FLUSH_BATCH, &batched, i);
	}
	atomic_store(&rd.stop, 1);
	pthread_join(t, NULL);
	lbd_store_free(rd.st);
	lbd_arena_destroy(&arena);
	if (ret < 0) {
		fprintf(stderr, "layerbank-bench flush: %s\n", strerror(-ret));
		return 1;
	}

	/* lbb_median sorts: [0] is then the best run. */
	double w_flush = lbb_median(whole.flush_ms, REPS), b_flush = lbb_median(batched.flush_ms, REPS);
	double w_worst = lbb_median(whole.worst_us, REPS), b_worst = lbb_median(batched.worst_us, REPS);
	if (json) {
		json_object *o = json_object_new_object();
		json_object_object_add(o, "entries", json_object_new_int64(rd.inputs));
		json_object_object_add(o, "batch", json_object_new_int64(LBD_FLUSH_BATCH));
		json_object_object_add(o, "whole_flush_ms", json_object_new_double(w_flush));
		json_object_object_add(o, "batched_flush_ms", json_object_new_double(b_flush));
		json_object_object_add(o, "whole_worst_lookup_us", json_object_new_double(w_worst));
		json_object_object_add(o, "batched_worst_lookup_us", json_object_new_double(b_worst));
		json_object_object_add(o, "worst_lookup_ratio", json_object_new_double(w_worst / b_worst));
		printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
		json_object_put(o);
		return 0;
	}
	printf("FLUSH of %u entries beside a thread looking them up (median of %d, best in brackets)\n",
	       rd.inputs, REPS);
	printf("  %-28s %14s %22s %16s\n", "", "flush ms", "longest lookup us", "lookups during");
	printf("  %-28s %6.1f (%5.1f) %14.0f (%6.0f) %16" PRIu64 "\n", "one hold of the lock", w_flush,
	       whole.flush_ms[0], w_worst, whole.worst_us[0], whole.lookups);
	printf("  batches of %-16u %6.1f (%5.1f) %14.0f (%6.0f) %16" PRIu64 "\n", LBD_FLUSH_BATCH,
	       b_flush, batched.flush_ms[0], b_worst, batched.worst_us[0], batched.lookups);
	printf("  longest lookup, one hold / batches: %.1fx; flush time, batches / one hold: %.2fx\n",
	       w_worst / b_worst, b_flush / w_flush);
	return 0;
}
