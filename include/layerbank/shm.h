/* layerbank shared-memory layout: the arena header every arena memfd starts with.
 * Both the daemon and liblayerbank compile against this file; it is part of the ABI.
 * No pointers in shared memory, only offsets from the start of the arena. */
#ifndef LAYERBANK_SHM_H
#define LAYERBANK_SHM_H

#include <stddef.h>
#include <stdint.h>

/* Pin one field of an ABI struct: its offset and its size. Every field of every struct in these
 * headers is pinned, so that a change to the layout is a compile error, not a silent break. */
#define LB_ABI_FIELD(type, field, off, size)                                                  \
	_Static_assert(offsetof(type, field) == (off) && sizeof(((type *)0)->field) == (size), \
		       #type "." #field " moved or changed size")
/* The same for structs with pointers (the API's, not shared memory's): pinned where the
 * library is built, LP64 (x86-64, AArch64). */
#if defined(__LP64__)
#define LB_ABI_FIELD_LP64(type, field, off, size) LB_ABI_FIELD(type, field, off, size)
#define LB_ABI_SIZE_LP64(type, size) _Static_assert(sizeof(type) == (size), #type " changed size")
#else
#define LB_ABI_FIELD_LP64(type, field, off, size) _Static_assert(1, "not LP64")
#define LB_ABI_SIZE_LP64(type, size) _Static_assert(1, "not LP64")
#endif

#define LB_SHM_MAGIC 0x4b4e41425259414cULL /* "LAYRBANK" little-endian */
#define LB_SHM_ABI_VERSION 2u /* 2: prefix blocks (LOOKUP_PREFIX, INSERT_BLOCK) */
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
	uint32_t arena_index; /* the arena's index, as completions and WELCOME name it */
	uint64_t data_off;    /* start of the data area, LB_SHM_DATA_ALIGN-aligned */
	uint64_t data_bytes;  /* data_off + data_bytes <= arena_bytes */
	uint64_t reserved[7]; /* zero */
};
LB_ABI_FIELD(struct lb_arena_hdr, magic, 0, 8);
LB_ABI_FIELD(struct lb_arena_hdr, abi_version, 8, 4);
LB_ABI_FIELD(struct lb_arena_hdr, hdr_size, 12, 4);
LB_ABI_FIELD(struct lb_arena_hdr, arena_bytes, 16, 8);
LB_ABI_FIELD(struct lb_arena_hdr, page_size, 24, 8);
LB_ABI_FIELD(struct lb_arena_hdr, boot_id, 32, 16);
LB_ABI_FIELD(struct lb_arena_hdr, numa_node, 48, 4);
LB_ABI_FIELD(struct lb_arena_hdr, arena_index, 52, 4);
LB_ABI_FIELD(struct lb_arena_hdr, data_off, 56, 8);
LB_ABI_FIELD(struct lb_arena_hdr, data_bytes, 64, 8);
LB_ABI_FIELD(struct lb_arena_hdr, reserved, 72, 56);

_Static_assert(sizeof(struct lb_arena_hdr) == LB_SHM_HDR_SIZE, "abi");

#endif
