/* The second tier's records: l2_record.h says the layout. */
#include "l2_record.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "errf.h"

enum {
	P_MAGIC = 0, P_VERSION = 4, P_KIND = 6, P_MODEL = 8, P_LAYER = 16, P_SEQ_LEN = 20,
	P_HDR_BYTES = 24, P_ZERO = 28, P_PAYLOAD = 32, P_SUM = 40, P_PSUM = 48,
};
_Static_assert(P_PSUM + 8 == LBD_L2_PREAMBLE, "the preamble's size");
_Static_assert(sizeof(struct lb_insert_hdr) == 88 && sizeof(struct lb_block_hdr) == 72,
	       "the ring headers' sizes, as PROTOCOL.md gives them");

static void put(uint8_t *p, uint64_t v, int n)
{
	for (int i = 0; i < n; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get(const uint8_t *p, int n)
{
	uint64_t v = 0;
	for (int i = n - 1; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

uint64_t lbd_l2_model_hash(const struct lbp_register_model *d)
{
	uint8_t b[LBP_MAX_NAME + 1 + 8 * 16], *p = b;
	size_t n = strnlen(d->name, LBP_MAX_NAME);
	memcpy(p, d->name, n);
	p += n;
	*p++ = 0;
	const uint64_t f[] = { d->weights_hash, d->n_layers, d->hidden, d->dtype, d->max_seq,
			       d->fp.chunks, d->fp.bits, d->fp.seed, d->kv.dim, d->kv.block_tokens,
			       d->kv.layers };
	for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++, p += 8)
		put(p, f[i], 8);
	return XXH3_64bits(b, (size_t)(p - b));
}

size_t lbd_l2_key_layer(char *out, uint64_t model, const uint64_t exact[2], uint32_t layer)
{
	return (size_t)snprintf(out, LBD_L2_KEY_MAX, "lb2:{%016" PRIx64 ":%016" PRIx64 "%016" PRIx64
				"}:%" PRIu32, model, exact[1], exact[0], layer);
}

size_t lbd_l2_key_band(char *out, uint64_t model, uint32_t band, uint32_t value)
{
	return (size_t)snprintf(out, LBD_L2_KEY_MAX, "lb2:{%016" PRIx64 ":f:%02" PRIx32 ":%04" PRIx32
				"}", model, band, value);
}

void lbd_l2_member_encode(uint8_t out[LBD_L2_MEMBER], const struct lbd_l2_member *m)
{
	put(out, m->exact[0], 8);
	put(out + 8, m->exact[1], 8);
	for (int w = 0; w < 4; w++)
		put(out + 16 + 8 * w, m->fp[w], 8);
	put(out + 48, m->seq_len, 4);
}

int lbd_l2_member_decode(const uint8_t *buf, size_t len, struct lbd_l2_member *m)
{
	if (!buf || len != LBD_L2_MEMBER)
		return -EBADMSG;
	m->exact[0] = get(buf, 8);
	m->exact[1] = get(buf + 8, 8);
	for (int w = 0; w < 4; w++)
		m->fp[w] = get(buf + 16 + 8 * w, 8);
	m->seq_len = (uint32_t)get(buf + 48, 4);
	return 0;
}

size_t lbd_l2_key_block(char *out, uint64_t model, const uint64_t key[2])
{
	return (size_t)snprintf(out, LBD_L2_KEY_MAX, "lb2:{%016" PRIx64 ":%016" PRIx64 "%016" PRIx64
				"}:b", model, key[1], key[0]);
}

/* The record of kind with header hdr (hbytes) and the payload's two parts. */
static uint8_t *encode(enum lbd_l2_kind kind, uint64_t model, uint32_t layer, uint32_t seq_len,
		       const void *hdr, uint32_t hbytes, const void *a, uint64_t an, const void *b,
		       uint64_t bn, size_t *len)
{
	uint64_t total = LBD_L2_PREAMBLE + hbytes + an + bn;
	uint8_t *r = total <= SIZE_MAX ? malloc((size_t)total) : NULL;
	if (!r)
		return NULL;
	memcpy(r + LBD_L2_PREAMBLE, hdr, hbytes);
	memcpy(r + LBD_L2_PREAMBLE + hbytes, a, (size_t)an);
	if (bn)
		memcpy(r + LBD_L2_PREAMBLE + hbytes + an, b, (size_t)bn);
	memcpy(r + P_MAGIC, LBD_L2_MAGIC, 4);
	put(r + P_VERSION, LBD_L2_VERSION, 2);
	put(r + P_KIND, kind, 2);
	put(r + P_MODEL, model, 8);
	put(r + P_LAYER, layer, 4);
	put(r + P_SEQ_LEN, seq_len, 4);
	put(r + P_HDR_BYTES, hbytes, 4);
	put(r + P_ZERO, 0, 4);
	put(r + P_PAYLOAD, an + bn, 8);
	put(r + P_SUM, XXH3_64bits(r + LBD_L2_PREAMBLE, (size_t)(total - LBD_L2_PREAMBLE)), 8);
	put(r + P_PSUM, XXH3_64bits(r, P_PSUM), 8);
	*len = (size_t)total;
	return r;
}

uint8_t *lbd_l2_encode_layer(uint64_t model, uint32_t layer, uint32_t seq_len,
			     const struct lb_insert_hdr *h, const void *data, const int32_t *tokens,
			     size_t *len)
{
	uint64_t tb = tokens ? 4ull * h->n_tokens : 0;
	struct lb_insert_hdr c = *h;
	if (!tokens)
		c.n_tokens = 0;
	return encode(LBD_L2_LAYER, model, layer, seq_len, &c, sizeof(c), data, h->bytes, tokens,
		      tb, len);
}

uint8_t *lbd_l2_encode_block(uint64_t model, uint32_t seq_len, const struct lb_block_hdr *h,
			     const void *data, size_t *len)
{
	return encode(LBD_L2_BLOCK, model, LB_ENTRY_LAYER_BLOCK, seq_len, h, sizeof(*h), data,
		      h->bytes, NULL, 0, len);
}

bool lbd_l2_layer_fits(const struct lbp_register_model *d, uint32_t seq_len,
		       const struct lb_insert_hdr *h)
{
	uint64_t elems = 1;
	for (uint32_t i = 0; i < h->ndim && i < 4; i++)
		elems *= h->shape[i];
	return h->dtype == d->dtype && h->ndim >= 1 && h->ndim <= 4 &&
	       h->shape[h->ndim - 1] == d->hidden && elems == (uint64_t)seq_len * d->hidden &&
	       h->bytes == elems * lbp_dtype_size(d->dtype);
}

int lbd_l2_decode(const uint8_t *buf, size_t len, const struct lbd_l2_want *want,
		  struct lbd_l2_record *out, char *why, size_t whylen)
{
	if (!buf || len < LBD_L2_PREAMBLE)
		return lbu_fail(why, whylen, -EBADMSG, "%zu bytes, shorter than the preamble", len);
	if (get(buf + P_PSUM, 8) != XXH3_64bits(buf, P_PSUM))
		return lbu_fail(why, whylen, -EBADMSG, "preamble checksum mismatch");
	if (memcmp(buf + P_MAGIC, LBD_L2_MAGIC, 4) || get(buf + P_VERSION, 2) != LBD_L2_VERSION)
		return lbu_fail(why, whylen, -EBADMSG, "not a version %u record", LBD_L2_VERSION);
	memset(out, 0, sizeof(*out));
	out->kind = (enum lbd_l2_kind)get(buf + P_KIND, 2);
	out->layer = (uint32_t)get(buf + P_LAYER, 4);
	out->seq_len = (uint32_t)get(buf + P_SEQ_LEN, 4);
	uint64_t hb = get(buf + P_HDR_BYTES, 4), pb = get(buf + P_PAYLOAD, 8);
	uint64_t want_hb = out->kind == LBD_L2_LAYER ? sizeof(out->ins) : sizeof(out->blk);
	if (out->kind != want->kind)
		return lbu_fail(why, whylen, -EBADMSG, "kind %u, not %u", out->kind, want->kind);
	if (get(buf + P_MODEL, 8) != want->model)
		return lbu_fail(why, whylen, -EBADMSG, "another model's record");
	if (hb != want_hb || get(buf + P_ZERO, 4) || pb > len || len - LBD_L2_PREAMBLE - hb != pb)
		return lbu_fail(why, whylen, -EBADMSG, "lengths that do not add up to %zu bytes",
				len);
	if (get(buf + P_SUM, 8) != XXH3_64bits(buf + LBD_L2_PREAMBLE, (size_t)(hb + pb)))
		return lbu_fail(why, whylen, -EBADMSG, "checksum mismatch");
	out->payload = buf + LBD_L2_PREAMBLE + hb;
	out->payload_bytes = pb;
	if (out->kind == LBD_L2_LAYER) {
		memcpy(&out->ins, buf + LBD_L2_PREAMBLE, sizeof(out->ins));
		if (out->layer != want->layer || out->ins.exact[0] != want->key[0] ||
		    out->ins.exact[1] != want->key[1])
			return lbu_fail(why, whylen, -EBADMSG, "another input's or layer's record");
		if (out->ins.bytes > pb || pb - out->ins.bytes != 4ull * out->ins.n_tokens)
			return lbu_fail(why, whylen, -EBADMSG, "a header that is not its payload's");
	} else {
		memcpy(&out->blk, buf + LBD_L2_PREAMBLE, sizeof(out->blk));
		if (out->layer != LB_ENTRY_LAYER_BLOCK || out->blk.key[0] != want->key[0] ||
		    out->blk.key[1] != want->key[1])
			return lbu_fail(why, whylen, -EBADMSG, "another block's record");
		if (out->blk.bytes != pb)
			return lbu_fail(why, whylen, -EBADMSG, "a header that is not its payload's");
	}
	return 0;
}
