/* layerbankd fingerprint index: nearest 256-bit SimHash by hamming distance, sublinear
 * (multi-index hashing: exact within the search radius), verified by popcount. */
#ifndef LAYERBANK_DAEMON_FPINDEX_H
#define LAYERBANK_DAEMON_FPINDEX_H

#include <stdbool.h>
#include <stdint.h>

#define LBD_FP_WORDS 4

struct lbd_fpindex; /* opaque; not thread-safe: the caller holds the model's lock */

/* capacity_hint: expected entries, used to size tables; the index grows past it.
 * @return NULL with errno ENOMEM. */
struct lbd_fpindex *lbd_fpindex_new(uint32_t capacity_hint);
void lbd_fpindex_free(struct lbd_fpindex *ix);

/* Add id (any uint32 the caller chooses, unique among live entries) under fp.
 * @return 0, -ENOMEM, -EEXIST (id already present). */
int lbd_fpindex_insert(struct lbd_fpindex *ix, const uint64_t fp[LBD_FP_WORDS], uint32_t id);

/* Remove id, which was inserted with fp. @return 0, -ENOENT. */
int lbd_fpindex_remove(struct lbd_fpindex *ix, const uint64_t fp[LBD_FP_WORDS], uint32_t id);

/* Decides whether a candidate may be returned (same sequence length, live, ...). */
typedef bool (*lbd_fpindex_accept_fn)(void *ctx, uint32_t id);

/*
 * The accepted entry nearest to q with hamming distance <= max_d (ties: any), except that a
 * search which has found accepted entries within good_d bits may stop there and return the
 * nearest of those it found (round 0: the entries that share a substring with q exactly).
 * A caller for whom every entry within good_d is as good as the nearest (each threshold it
 * applies is met) passes that radius and skips proving that nothing nearer exists, which is
 * most of the cost of a near-duplicate hit in a large index. good_d 0: exact, the result
 * equals a brute-force scan's best distance. accept may be NULL (accept all).
 * @return 0 with *id and *dist set; -ENOENT when nothing within max_d is accepted.
 */
int lbd_fpindex_nearest(struct lbd_fpindex *ix, const uint64_t q[LBD_FP_WORDS], uint32_t max_d,
			uint32_t good_d, lbd_fpindex_accept_fn accept, void *ctx, uint32_t *id,
			uint32_t *dist);

uint32_t lbd_fpindex_count(const struct lbd_fpindex *ix);

/* Popcount of a ^ b over 256 bits. */
uint32_t lbd_fp_hamming(const uint64_t a[LBD_FP_WORDS], const uint64_t b[LBD_FP_WORDS]);

#endif
