/* Arena header validation: what a client checks before it trusts a mapped arena.
 * The layout is include/layerbank/shm.h; PROTOCOL.md, "Arena header", restates it. */
#include <errno.h>

#include "lbp.h"

static int bad(const char **why, const char *text)
{
	if (why)
		*why = text;
	return -EPROTO;
}

int lbp_arena_hdr_check(const struct lb_arena_hdr *h, size_t mapped_bytes, const char **why)
{
	uint64_t size = mapped_bytes;

	if (why)
		*why = NULL;
	/* First, so that nothing below reads past a short mapping. */
	if (mapped_bytes < sizeof(*h))
		return bad(why, "mapping smaller than the arena header");
	/* Plain loads, no acquire: the daemon wrote the header before the memfd was sealed and sent
	 * (SCM_RIGHTS), and the kernel's sendmsg/recvmsg order those writes before our mapping. */
	if (h->magic != LB_SHM_MAGIC)
		return bad(why, "bad magic: not a layerbank arena");
	if (h->abi_version != LB_SHM_ABI_VERSION)
		return bad(why, "arena ABI version differs from this library's");
	if (h->hdr_size != LB_SHM_HDR_SIZE)
		return bad(why, "hdr_size differs from this library's arena header");
	if (h->arena_bytes != size)
		return bad(why, "arena_bytes differs from the mapped size");
	if (h->page_size != 4096 && h->page_size != 2097152)
		return bad(why, "page_size is neither 4096 nor 2097152");
	if (h->arena_bytes % h->page_size)
		return bad(why, "arena_bytes is not a multiple of page_size");
	if (h->data_off % LB_SHM_DATA_ALIGN)
		return bad(why, "data_off is not aligned to LB_SHM_DATA_ALIGN");
	if (h->data_off < h->hdr_size)
		return bad(why, "data_off overlaps the header");
	/* Written as a subtraction so that a huge data_bytes cannot wrap the sum. */
	if (h->data_off > h->arena_bytes || h->data_bytes > h->arena_bytes - h->data_off)
		return bad(why, "data area runs past the end of the arena");
	if (h->numa_node < -1)
		return bad(why, "numa_node below -1");
	/* The daemon never hands out more arenas than WELCOME can carry. */
	if (h->arena_index >= LBP_MAX_ARENAS)
		return bad(why, "arena_index beyond LBP_MAX_ARENAS");
	for (unsigned i = 0; i < sizeof(h->reserved) / sizeof(h->reserved[0]); i++)
		if (h->reserved[i])
			return bad(why, "reserved field is not zero");
	return 0;
}
