/* layerbank shared-memory layout: the arena header every arena memfd starts with.
 * Both the daemon and liblayerbank compile against this file; it is part of the ABI.
 * No pointers in shared memory, only offsets from the start of the arena. */
#ifndef LAYERBANK_SHM_H
#define LAYERBANK_SHM_H

#include <stddef.h>
#include <stdint.h>

#define LB_SHM_MAGIC 0x4b4e41425259414cULL /* "LAYRBANK" little-endian */
#define LB_SHM_ABI_VERSION 1u
#define LB_SHM_HDR_SIZE 128u
/* The data area starts on this boundary: the header never shares a 4 KiB page with data. */
#define LB_SHM_DATA_ALIGN 4096u

/*
 * Written once by the daemon before the arena is sealed and its fd leaves the daemon;
 * read-only for clients from then on. Field owners: the daemon, for the arena's lifetime.
 */
struct lb_arena_hdr {
	uint64_t magic;       /* LB_SHM_MAGIC */
	uint32_t abi_version; /* LB_SHM_ABI_VERSION */
	uint32_t hdr_size;    /* LB_SHM_HDR_SIZE */
	uint64_t arena_bytes; /* size of the whole mapping, a multiple of page_size */
	uint64_t page_size;   /* 2097152 (hugetlb) or 4096 */
	uint8_t boot_id[16];  /* random per daemon start: tells a restarted daemon apart */
	int32_t numa_node;    /* node the memory is bound to, -1 when not bound */
	uint32_t arena_index; /* position of this arena in WELCOME's fd list */
	uint64_t data_off;    /* start of the data area, LB_SHM_DATA_ALIGN-aligned */
	uint64_t data_bytes;  /* data_off + data_bytes <= arena_bytes */
	uint64_t reserved[7]; /* zero */
};

_Static_assert(offsetof(struct lb_arena_hdr, magic) == 0, "abi");
_Static_assert(offsetof(struct lb_arena_hdr, abi_version) == 8, "abi");
_Static_assert(offsetof(struct lb_arena_hdr, hdr_size) == 12, "abi");
_Static_assert(offsetof(struct lb_arena_hdr, arena_bytes) == 16, "abi");
_Static_assert(offsetof(struct lb_arena_hdr, page_size) == 24, "abi");
_Static_assert(offsetof(struct lb_arena_hdr, boot_id) == 32, "abi");
_Static_assert(offsetof(struct lb_arena_hdr, numa_node) == 48, "abi");
_Static_assert(offsetof(struct lb_arena_hdr, arena_index) == 52, "abi");
_Static_assert(offsetof(struct lb_arena_hdr, data_off) == 56, "abi");
_Static_assert(offsetof(struct lb_arena_hdr, data_bytes) == 64, "abi");
_Static_assert(offsetof(struct lb_arena_hdr, reserved) == 72, "abi");
_Static_assert(sizeof(struct lb_arena_hdr) == LB_SHM_HDR_SIZE, "abi");

#endif
