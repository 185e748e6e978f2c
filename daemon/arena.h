/* layerbankd arena: one sealed memfd per NUMA node, hugetlb when it can be had,
 * bound to its node, prefaulted at start-up, then shared read-only with clients. */
#ifndef LAYERBANK_DAEMON_ARENA_H
#define LAYERBANK_DAEMON_ARENA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "layerbank/shm.h"

#define LBD_HUGE_PAGE_SIZE (2u << 20)

enum lbd_hugepages { LBD_HP_OFF = 0, LBD_HP_TRY = 1, LBD_HP_REQUIRE = 2 };

/* Owned by the daemon's main thread; fd and base live until lbd_arena_destroy. */
struct lbd_arena {
	int fd;                   /* memfd, sealed (shrink, grow, future write, seal) */
	struct lb_arena_hdr *hdr; /* base of the daemon's read-write mapping */
	size_t bytes;             /* mapping size, a multiple of page_size */
	size_t page_size;
	int node;                 /* -1: not bound */
	unsigned tenant;          /* whose entries it holds (0: the shared tenant); set by its owner */
	bool huge;
};

/* Round bytes up to a multiple of page (a power of two). Returns 0 on overflow. */
size_t lbd_arena_round(size_t bytes, size_t page);

/*
 * Create, bind (node >= 0 and libnuma available), prefault, write the header, seal.
 * hp: OFF uses 4 KiB pages; TRY uses hugetlb and falls back to 4 KiB with a warning log;
 * REQUIRE fails when hugetlb pages are short.
 * On failure err (errlen bytes) holds one line for the user, e.g. with REQUIRE:
 * "need 32 hugepages of 2 MiB, 0 free: reserve them with 'echo 32 > /proc/sys/vm/nr_hugepages'".
 * @return 0; -ENOMEM (pages short), -EINVAL (bytes 0 or too large), other -errno from the kernel.
 */
int lbd_arena_create(struct lbd_arena *a, size_t bytes, int node, enum lbd_hugepages hp,
		     const uint8_t boot_id[16], uint32_t index, char *err, size_t errlen);

void lbd_arena_destroy(struct lbd_arena *a);

#endif
