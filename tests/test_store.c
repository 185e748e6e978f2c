/* The store (daemon/store.c) in process, where a test can time what the daemon's tests cannot:
 * models registered while inserts copy their data outside the lock. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arena.h"
#include "layerbank/ring.h"
#include "store.h"

#define ENTRY_BYTES (2u << 20) /* long copies: a wide window outside the lock */
#define INSERTS 60
#define MODELS 200

struct race {
	struct lbd_store *st;
	uint8_t *data;
	atomic_int inserting;
	int ok;
};

static struct lbp_register_model model(uint32_t i)
{
	struct lbp_register_model d = { .weights_hash = i, .n_layers = 2, .hidden = 64,
					.dtype = LBP_DTYPE_F32, .max_seq = 1 << 16,
					.fp = { .chunks = 4, .bits = 256, .seed = 1 } };
	snprintf(d.name, sizeof(d.name), "m%u", i);
	return d;
}

static void *inserter(void *p)
{
	struct race *r = p;
	for (uint32_t k = 0; k < INSERTS; k++) {
		struct lb_req req = { .opcode = LB_OP_INSERT, .layer = (uint16_t)(k % 2), .model_id = 1,
				      .seq_len = ENTRY_BYTES / 256,
				      .payload_len = LB_INSERT_HDR_SIZE + ENTRY_BYTES };
		struct lb_insert_hdr h = { .dtype = LBP_DTYPE_F32, .ndim = 2,
					   .shape = { ENTRY_BYTES / 256, 64 }, .bytes = ENTRY_BYTES };
		struct lb_cpl cpl = { 0 };
		h.exact[0] = k + 1;
		h.fp[0] = k;
		lbd_store_insert(r->st, 0, &req, &h, r->data, &cpl);
		if (cpl.status == 0)
			r->ok++;
		atomic_store(&r->inserting, 1);
	}
	atomic_store(&r->inserting, 2);
	return NULL;
}

/* Model banks live in one array that a registration reallocates; an insert that kept a
 * pointer into it across its unlocked copy wrote its counters into freed memory (ASan in CI
 * catches that; here the counters must simply add up). */
static void test_models_registered_during_inserts(void **state)
{
	(void)state;
	static const uint8_t boot[16] = { 1 };
	struct lbd_arena arena;
	struct lbd_store_cfg cfg = { .policy = LBD_POLICY_LRU, .ttl_ns = 1, .half_life_ns = 1,
				     .drift_max = 0.05, .tau = 0.98 };
	struct lbp_model_stats_reply ms;
	struct race r = { 0 };
	char err[256];
	pthread_t t;

	assert_int_equal(lbd_arena_create(&arena, 16u << 20, -1, LBD_HP_OFF, boot, 0, err, sizeof(err)), 0);
	r.st = lbd_store_new(&arena, 1, &cfg);
	assert_non_null(r.st);
	r.data = calloc(1, ENTRY_BYTES);
	assert_non_null(r.data);
	struct lbp_register_model d = model(1);
	assert_int_equal(lbd_store_add_model(r.st, 1, &d), 0);
	assert_int_equal(pthread_create(&t, NULL, inserter, &r), 0);
	while (atomic_load(&r.inserting) == 0)
		;
	/* One bank more at a time: a reallocation for every registration. */
	for (uint32_t i = 2; i <= MODELS && atomic_load(&r.inserting) == 1; i++) {
		d = model(i);
		assert_int_equal(lbd_store_add_model(r.st, i, &d), 0);
	}
	pthread_join(t, NULL);
	assert_true(r.ok > 0);
	assert_int_equal(lbd_store_model_stats(r.st, 1, 0, &ms), 0);
	assert_int_equal(ms.layers[0].inserts + ms.layers[1].inserts, (uint64_t)r.ok);
	free(r.data);
	lbd_store_free(r.st);
	lbd_arena_destroy(&arena);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_models_registered_during_inserts),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
