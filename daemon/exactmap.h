/* layerbankd exact map: 128-bit token hash to input id, open addressing.
 * The fast path for identical inputs. */
#ifndef LAYERBANK_DAEMON_EXACTMAP_H
#define LAYERBANK_DAEMON_EXACTMAP_H

#include <stdint.h>

struct lbd_exactmap; /* opaque; not thread-safe: the caller holds the model's lock */

struct lbd_exactmap *lbd_exactmap_new(uint32_t capacity_hint);
void lbd_exactmap_free(struct lbd_exactmap *m);
/* @return 0, -EEXIST (key present: *id untouched), -ENOMEM. Grows as needed. */
int lbd_exactmap_insert(struct lbd_exactmap *m, const uint64_t key[2], uint32_t id);
/* @return 0 and *id, or -ENOENT. */
int lbd_exactmap_find(const struct lbd_exactmap *m, const uint64_t key[2], uint32_t *id);
/* @return 0, -ENOENT. */
int lbd_exactmap_remove(struct lbd_exactmap *m, const uint64_t key[2]);
uint32_t lbd_exactmap_count(const struct lbd_exactmap *m);

#endif
