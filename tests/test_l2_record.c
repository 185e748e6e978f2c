/*
 * The second tier's records (daemon/l2_record.c): both kinds round trip; every truncation, every
 * flipped bit, another model's, input's, layer's or block's record, and random garbage are
 * refused with a reason; the model hash tells every registration field apart; every layer of an
 * input lands in one slot.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "l2_cluster.h"
#include "l2_record.h"
#include "rng.h"

#define SEQ 5
#define HID 6

static struct lbp_register_model model(void)
{
	struct lbp_register_model d = { .weights_hash = 42, .n_layers = 4, .hidden = HID,
					.dtype = LBP_DTYPE_F32, .max_seq = 64,
					.fp = { 4, 256, 7 }, .kv = { 8, 2, 3 } };
	strcpy(d.name, "toy");
	return d;
}

/* A layer entry's record: layer 2 of an input of SEQ tokens, with its token ids. */
static uint8_t *layer_record(uint64_t m, size_t *len, struct lb_insert_hdr *h, float *data,
			     int32_t *tok)
{
	memset(h, 0, sizeof(*h));
	for (int i = 0; i < 4; i++)
		h->fp[i] = 0x1111111111111111ull * (uint64_t)(i + 1);
	h->exact[0] = 0xabcdef;
	h->exact[1] = 0x123456;
	h->dtype = LB_DTYPE_F32;
	h->ndim = 2;
	h->shape[0] = SEQ;
	h->shape[1] = HID;
	h->bytes = SEQ * HID * 4;
	h->approx = 3;
	h->n_tokens = SEQ;
	for (int i = 0; i < SEQ * HID; i++)
		data[i] = (float)i * 0.5f;
	for (int i = 0; i < SEQ; i++)
		tok[i] = 100 + i;
	return lbd_l2_encode_layer(m, 2, SEQ, h, data, tok, len);
}

static void test_round_trips(void **state)
{
	(void)state;
	struct lbp_register_model d = model();
	uint64_t m = lbd_l2_model_hash(&d);
	struct lb_insert_hdr h;
	float data[SEQ * HID];
	int32_t tok[SEQ];
	size_t len;
	char why[128];
	uint8_t *r = layer_record(m, &len, &h, data, tok);
	assert_int_equal(len, LBD_L2_PREAMBLE + 88 + sizeof(data) + sizeof(tok));
	struct lbd_l2_want w = { m, LBD_L2_LAYER, { h.exact[0], h.exact[1] }, 2 };
	struct lbd_l2_record rec;
	assert_int_equal(lbd_l2_decode(r, len, &w, &rec, why, sizeof(why)), 0);
	assert_int_equal(rec.layer, 2);
	assert_int_equal(rec.seq_len, SEQ);
	assert_memory_equal(&rec.ins, &h, sizeof(h));
	assert_memory_equal(rec.payload, data, sizeof(data));
	assert_memory_equal(rec.payload + sizeof(data), tok, sizeof(tok));
	free(r);

	struct lb_block_hdr b = { .key = { 5, 6 }, .parent = { 3, 4 }, .index = 1,
				  .dtype = LB_DTYPE_F32, .ndim = 4, .shape = { 3, 2, 2, 8 },
				  .bytes = 3 * 2 * 2 * 8 * 4 };
	float kv[3 * 2 * 2 * 8] = { 1, 2, 3 };
	r = lbd_l2_encode_block(m, 4, &b, kv, &len);
	struct lbd_l2_want wb = { m, LBD_L2_BLOCK, { 5, 6 }, 0 };
	assert_int_equal(lbd_l2_decode(r, len, &wb, &rec, why, sizeof(why)), 0);
	assert_int_equal(rec.seq_len, 4);
	assert_memory_equal(&rec.blk, &b, sizeof(b));
	assert_memory_equal(rec.payload, kv, sizeof(kv));
	free(r);
}

static void expect_refused(const uint8_t *r, size_t len, const struct lbd_l2_want *w,
			   const char *says, const char *what)
{
	struct lbd_l2_record rec;
	char why[128] = "";
	int rc = lbd_l2_decode(r, len, w, &rec, why, sizeof(why));
	if (rc != -EBADMSG || (says && !strstr(why, says)))
		fail_msg("%s: %d '%s', want -EBADMSG '%s'", what, rc, why, says ? says : "");
}

static void test_bad_records_are_refused(void **state)
{
	(void)state;
	struct lbp_register_model d = model();
	uint64_t m = lbd_l2_model_hash(&d);
	struct lb_insert_hdr h;
	float data[SEQ * HID];
	int32_t tok[SEQ];
	size_t len;
	uint8_t *r = layer_record(m, &len, &h, data, tok), *c = malloc(len);
	struct lbd_l2_want w = { m, LBD_L2_LAYER, { h.exact[0], h.exact[1] }, 2 };
	assert_non_null(c);
	for (size_t n = 0; n < len; n++) {
		memcpy(c, r, n);
		expect_refused(c, n, &w, NULL, "a truncation");
	}
	for (size_t i = 0; i < len; i++)
		for (int bit = 0; bit < 8; bit++) {
			memcpy(c, r, len);
			c[i] ^= (uint8_t)(1u << bit);
			expect_refused(c, len, &w, NULL, "a flipped bit");
		}
	struct lbd_l2_want x = w;
	x.model ^= 1;
	expect_refused(r, len, &x, "another model", "another model");
	x = w;
	x.layer = 3;
	expect_refused(r, len, &x, "another input", "another layer");
	x = w;
	x.key[1] ^= 1;
	expect_refused(r, len, &x, "another input", "another input");
	x = w;
	x.kind = LBD_L2_BLOCK;
	expect_refused(r, len, &x, "kind", "a block asked for");
	/* garbage: random bytes, and random bytes behind a good preamble's magic */
	uint64_t s = 99;
	for (int t = 0; t < 2000; t++) {
		size_t n = (size_t)(lbu_splitmix64(&s) % (len + 64));
		uint8_t *g = malloc(n ? n : 1);
		for (size_t i = 0; i < n; i++)
			g[i] = (uint8_t)lbu_splitmix64(&s);
		if (n >= 4 && t % 2)
			memcpy(g, LBD_L2_MAGIC, 4);
		expect_refused(g, n, &w, NULL, "garbage");
		free(g);
	}
	free(c);
	free(r);
}

static void test_model_hash_and_keys(void **state)
{
	(void)state;
	struct lbp_register_model a = model(), b = model();
	assert_true(lbd_l2_model_hash(&a) == lbd_l2_model_hash(&b));
	uint32_t *fields[] = { &b.n_layers, &b.hidden, &b.dtype, &b.max_seq, &b.fp.chunks,
			       &b.fp.bits, &b.kv.dim, &b.kv.block_tokens, &b.kv.layers };
	for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
		b = model();
		uint32_t *f = (uint32_t *)((uint8_t *)&b + ((uint8_t *)fields[i] - (uint8_t *)&b));
		(*f)++;
		assert_true(lbd_l2_model_hash(&a) != lbd_l2_model_hash(&b));
	}
	b = model();
	b.weights_hash++;
	assert_true(lbd_l2_model_hash(&a) != lbd_l2_model_hash(&b));
	b = model();
	b.name[0] = 'T';
	assert_true(lbd_l2_model_hash(&a) != lbd_l2_model_hash(&b));

	char k0[LBD_L2_KEY_MAX], k1[LBD_L2_KEY_MAX];
	const uint64_t ex[2] = { 1, 2 };
	size_t n0 = lbd_l2_key_layer(k0, 0xfeed, ex, 0), n1 = lbd_l2_key_layer(k1, 0xfeed, ex, 11);
	assert_string_equal(k0, "lb2:{000000000000feed:00000000000000020000000000000001}:0");
	assert_int_equal(n0, strlen(k0));
	assert_int_equal(lbd_cluster_slot(k0, n0), lbd_cluster_slot(k1, n1)); /* one node */
	size_t nb = lbd_l2_key_block(k1, 0xfeed, ex);
	assert_int_equal(nb, strlen(k1));
	assert_string_equal(k1, "lb2:{000000000000feed:00000000000000020000000000000001}:b");
}

/* The fingerprint index's bands and members (PROTOCOL.md, Second tier, 5). */
static void test_bands_and_members(void **state)
{
	(void)state;
	const uint64_t fp[4] = { 0x0123456789abcdefull, 0xfedcba9876543210ull, 0, ~0ull };
	assert_int_equal(lbd_l2_band(fp, 0), 0xcdef);
	assert_int_equal(lbd_l2_band(fp, 3), 0x0123);
	assert_int_equal(lbd_l2_band(fp, 4), 0x3210);
	assert_int_equal(lbd_l2_band(fp, 8), 0);
	assert_int_equal(lbd_l2_band(fp, 15), 0xffff);
	char key[LBD_L2_KEY_MAX];
	lbd_l2_key_band(key, 0xabcull, 15, 0x3210);
	assert_string_equal(key, "lb2:{0000000000000abc:f:0f:3210}");
	/* fewer than LBD_L2_BANDS bits apart: some band's value is the same */
	uint64_t near[4] = { fp[0], fp[1], fp[2], fp[3] };
	for (uint32_t b = 0; b + 1 < LBD_L2_BANDS; b++)
		near[b / 4] ^= 1ull << (16 * (b % 4) + b);
	int shared = 0;
	for (uint32_t b = 0; b < LBD_L2_BANDS; b++)
		shared += lbd_l2_band(fp, b) == lbd_l2_band(near, b);
	assert_int_equal(shared, 1);

	struct lbd_l2_member m = { { 1, 2 }, { fp[0], fp[1], fp[2], fp[3] }, 77 }, back;
	uint8_t buf[LBD_L2_MEMBER + 1];
	lbd_l2_member_encode(buf, &m);
	assert_int_equal(lbd_l2_member_decode(buf, LBD_L2_MEMBER, &back), 0);
	assert_memory_equal(back.exact, m.exact, sizeof(m.exact)); /* not the struct: padding */
	assert_memory_equal(back.fp, m.fp, sizeof(m.fp));
	assert_int_equal(back.seq_len, 77);
	assert_int_equal(buf[0], 1); /* little-endian */
	assert_int_equal(lbd_l2_member_decode(buf, LBD_L2_MEMBER - 1, &back), -EBADMSG);
	assert_int_equal(lbd_l2_member_decode(buf, LBD_L2_MEMBER + 1, &back), -EBADMSG);
	assert_int_equal(lbd_l2_member_decode(NULL, LBD_L2_MEMBER, &back), -EBADMSG);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round_trips),
		cmocka_unit_test(test_bad_records_are_refused),
		cmocka_unit_test(test_model_hash_and_keys),
		cmocka_unit_test(test_bands_and_members),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
