/* The second tier's records: what a layerbankd writes to Redis for an entry, and checks before it
 * believes one it reads back (PROTOCOL.md, "Second tier"). A record is a 56-byte preamble, then
 * the entry's ring header as a client sends it (struct lb_insert_hdr of a layer entry, 88 bytes,
 * or struct lb_block_hdr of a prefix block, 72), its data, and a layer entry's token ids:
 *
 *   0  4  magic "LBL2"          16 4  layer (LB_ENTRY_LAYER_BLOCK for a block)
 *   4  2  version 1             20 4  seq_len
 *   6  2  kind: 1 layer, 2 block 24 4  header bytes: 88 or 72
 *   8  8  model: lbd_l2_model_hash 28 4  0
 *                                32 8  payload bytes: data, then 4 n_tokens of token ids
 *                                40 8  XXH3-64 of the header and the payload
 *                                48 8  XXH3-64 of bytes 0..47
 *
 * little-endian, on the machines layerbank runs on. Its Redis key names the model and the input
 * (or the block), and a hash tag puts every layer of one input on one node.
 */
#ifndef LBD_L2_RECORD_H
#define LBD_L2_RECORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "layerbank/ring.h"
#include "lbp.h"

#define LBD_L2_MAGIC "LBL2"
#define LBD_L2_VERSION 1u
#define LBD_L2_PREAMBLE 56u
#define LBD_L2_KEY_MAX 80u /* a key's bytes, NUL included */

enum lbd_l2_kind { LBD_L2_LAYER = 1, LBD_L2_BLOCK = 2 };

/* XXH3-64 of a registration's fields (name, weights hash, shape, fingerprint and KV geometry),
 * little-endian in the order of struct lbp_register_model: equal on every host that registers
 * the same model, different for any field that differs. */
uint64_t lbd_l2_model_hash(const struct lbp_register_model *d);

/* Whether a layer entry of seq_len positions (its header h) has the model's geometry, the only
 * one the tier carries: d's dtype, rows of hidden elements (the last dimension), seq_len of
 * them. An entry of another geometry stays in its host's bank; a record of one is refused. */
bool lbd_l2_layer_fits(const struct lbp_register_model *d, uint32_t seq_len,
		       const struct lb_insert_hdr *h);

/* "lb2:{MODEL:EXACT}:LAYER" of a layer entry and "lb2:{MODEL:KEY}:b" of a block, in hex, into
 * out (LBD_L2_KEY_MAX bytes). @return its length. */
size_t lbd_l2_key_layer(char *out, uint64_t model, const uint64_t exact[2], uint32_t layer);
size_t lbd_l2_key_block(char *out, uint64_t model, const uint64_t key[2]);

/*
 * The fingerprint index in the cluster (PROTOCOL.md, "Second tier", 5): the deepest layer's
 * inputs by band. A 256-bit fingerprint is LBD_L2_BANDS bands of 16 bits; an input is a member
 * of the set "lb2:{MODEL:f:BB:VVVV}" of each band BB (2 hex digits) and its value there VVVV (4);
 * two fingerprints fewer than LBD_L2_BANDS bits apart share a band's value (pigeonhole), so the
 * union of a query's sets holds every input within 15 bits, and most further ones.
 * A member is 52 bytes: the input's exact key, its fingerprint and seq_len, little-endian.
 */
#define LBD_L2_BANDS 16u
#define LBD_L2_MEMBER 52u

struct lbd_l2_member {
	uint64_t exact[2];
	uint64_t fp[4];
	uint32_t seq_len;
};

/* Band b's value of fp. */
static inline uint32_t lbd_l2_band(const uint64_t fp[4], uint32_t b)
{
	return (uint32_t)(fp[b / 4] >> (16 * (b % 4))) & 0xffffu;
}
size_t lbd_l2_key_band(char *out, uint64_t model, uint32_t band, uint32_t value);
void lbd_l2_member_encode(uint8_t out[LBD_L2_MEMBER], const struct lbd_l2_member *m);
/* @return 0, -EBADMSG for anything but LBD_L2_MEMBER bytes. */
int lbd_l2_member_decode(const uint8_t *buf, size_t len, struct lbd_l2_member *m);

/* The record of a layer entry (tokens: NULL, or h->n_tokens ids) or of a block, malloc'd, its
 * length in *len. @return it; NULL when there is no memory. */
uint8_t *lbd_l2_encode_layer(uint64_t model, uint32_t layer, uint32_t seq_len,
			     const struct lb_insert_hdr *h, const void *data, const int32_t *tokens,
			     size_t *len);
uint8_t *lbd_l2_encode_block(uint64_t model, uint32_t seq_len, const struct lb_block_hdr *h,
			     const void *data, size_t *len);

/* A record read back, pointing into the buffer it was decoded from. */
struct lbd_l2_record {
	enum lbd_l2_kind kind;
	uint32_t layer, seq_len;
	struct lb_insert_hdr ins;  /* kind LAYER */
	struct lb_block_hdr blk;   /* kind BLOCK */
	const uint8_t *payload;    /* the data, then a layer entry's token ids */
	uint64_t payload_bytes;
};

/* What a reader asked for: the model, and the key it looked up (a layer entry's exact hash and
 * layer, or a block's key). */
struct lbd_l2_want {
	uint64_t model;
	enum lbd_l2_kind kind;
	uint64_t key[2];
	uint32_t layer;
};

/*
 * Check buf (len bytes, as Redis returned it) against want: the preamble's checksum, magic,
 * version and kind; the model; the lengths adding up to len; the payload's checksum; the key
 * and layer asked for; a header's byte counts agreeing with the payload. The store checks the
 * rest when the record is inserted, as it checks a client's insert.
 * @return 0 and *out; -EBADMSG with why (whylen bytes) naming what is wrong.
 */
int lbd_l2_decode(const uint8_t *buf, size_t len, const struct lbd_l2_want *want,
		  struct lbd_l2_record *out, char *why, size_t whylen);

#endif
