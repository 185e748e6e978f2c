/* layerbankd arena: makes the per-node memfd (2 MiB hugetlb, or 4 KiB pages as the fallback),
 * binds and prefaults it, writes the shared header and seals it so clients can only read it. */
#include "arena.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/memfd.h> /* MFD_HUGE_2MB; before sys/mman.h, which then skips its MFD_* */
#include <numa.h>
#include <numaif.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "errf.h"
#include "io.h"
#include "log.h"

#define SMALL_PAGE 4096u
#define ARENA_SEALS (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE | F_SEAL_SEAL)
#define SYSFS_NODE_HP "/sys/devices/system/node/node%d/hugepages/hugepages-2048kB/%s"

_Static_assert(LB_SHM_DATA_ALIGN % SMALL_PAGE == 0, "the data area starts on a page boundary");
_Static_assert(LB_SHM_HDR_SIZE <= LB_SHM_DATA_ALIGN, "the header fits before the data area");

size_t lbd_arena_round(size_t bytes, size_t page)
{
	if (!page || (page & (page - 1)) || bytes > SIZE_MAX - (page - 1))
		return 0;
	return (bytes + page - 1) & ~(page - 1);
}

/*
 * Explain a hugetlb shortage in one line the operator can act on. A node-bound arena can only
 * use pages that sit on its node, and raising the global count spreads new pages over all
 * nodes, so for a bound arena on a multi-node machine the count and the command are the
 * node's own.
 */
static void explain_shortage(char *err, size_t errlen, size_t need, int node, int why)
{
	char path[128], where[24] = "";
	long free_pages, total;
	/* On a one-node machine the global count is the same pool and the familiar command. */
	if (node >= 0)
		snprintf(where, sizeof(where), " on node %d", node);
	if (node >= 0 && numa_num_configured_nodes() > 1) {
		snprintf(path, sizeof(path), SYSFS_NODE_HP, node, "free_hugepages");
		free_pages = lbu_read_long(path);
		snprintf(path, sizeof(path), SYSFS_NODE_HP, node, "nr_hugepages");
		total = lbu_read_long(path);
	} else {
		/* Free counts pages that other mappings have reserved but not yet touched. */
		long rsvd = lbu_meminfo("HugePages_Rsvd");
		free_pages = lbu_meminfo("HugePages_Free");
		if (free_pages >= 0 && rsvd > 0)
			free_pages = free_pages > rsvd ? free_pages - rsvd : 0;
		snprintf(path, sizeof(path), "/proc/sys/vm/nr_hugepages");
		total = lbu_read_long(path);
	}
	if (free_pages < 0 || total < 0) {
		lbu_errf(err, errlen, "need %zu hugepages of 2 MiB%s, free count unreadable (%s): "
			"reserve them in %s (as root)", need, where, strerror(why), path);
	} else if ((size_t)free_pages >= need) {
		/* Enough in the pool, yet the kernel said no: a limit elsewhere is in the way. */
		lbu_errf(err, errlen, "need %zu hugepages of 2 MiB%s, %ld free, but mapping them failed "
			"(%s): a hugetlb cgroup limit or the cpuset may forbid them", need, where,
			free_pages, strerror(why));
	} else {
		lbu_errf(err, errlen, "need %zu hugepages of 2 MiB%s, %ld free: reserve them with "
			"'echo %zu > %s' (as root)", need, where, free_pages,
			(size_t)total + need - (size_t)free_pages, path);
	}
}

static int bind_node(void *base, size_t bytes, int node)
{
	struct bitmask *mask = numa_allocate_nodemask();
	int rc = 0;
	if (!mask)
		return -ENOMEM;
	numa_bitmask_setbit(mask, (unsigned)node);
	/* libnuma passes size + 1 too: the kernel drops the last bit of maxnode. */
	if (mbind(base, bytes, MPOL_BIND, mask->maskp, mask->size + 1, 0) < 0)
		rc = -errno;
	numa_bitmask_free(mask);
	return rc;
}

/* The transparent-hugepage policy for shared memory, e.g. "never"; "unknown" if unreadable. */
static void shmem_thp_policy(char *out, size_t n)
{
	FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/shmem_enabled", "re");
	char line[128];
	char *open, *close_;
	snprintf(out, n, "unknown");
	if (!f)
		return;
	if (fgets(line, sizeof(line), f) && (open = strchr(line, '[')) &&
	    (close_ = strchr(open, ']'))) {
		*close_ = '\0';
		snprintf(out, n, "%s", open + 1);
	}
	fclose(f);
}

/*
 * Make the memfd, size it, map it, bind it, prefault it: everything but header and seals.
 * On failure nothing is left open. -ENOMEM means the pages could not be had (for hugetlb,
 * a shortage worth falling back from); err says why in either case.
 */
static int map_arena(struct lbd_arena *a, size_t bytes, int node, bool huge, uint32_t index,
		     char *err, size_t errlen)
{
	const char *kind = huge ? "hugetlb" : "shared";
	size_t page = huge ? LBD_HUGE_PAGE_SIZE : SMALL_PAGE;
	unsigned flags = MFD_CLOEXEC | MFD_ALLOW_SEALING;
	char name[32];
	void *base;
	int fd, rc;

	if (huge)
		flags |= MFD_HUGETLB | MFD_HUGE_2MB;
	snprintf(name, sizeof(name), "layerbank-arena-%u", index);
	fd = memfd_create(name, flags);
	if (fd < 0) {
		rc = -errno;
		lbu_errf(err, errlen, "memfd_create(%s, %s) failed: %s%s", name, kind, strerror(-rc),
		    huge && (rc == -EINVAL || rc == -ENOENT) ?
			    " (no 2 MiB hugetlb support in this kernel)" : "");
		return rc;
	}
	if (ftruncate(fd, (off_t)bytes) < 0) {
		rc = -errno;
		if (huge && rc == -ENOMEM)
			explain_shortage(err, errlen, bytes / page, node, -rc);
		else
			lbu_errf(err, errlen, "cannot size %s memfd to %zu bytes: %s", kind, bytes,
			    strerror(-rc));
		goto fail_fd;
	}
	/* For hugetlb a shared mapping reserves every page now: a shortage fails here, cleanly. */
	base = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (base == MAP_FAILED) {
		rc = -errno;
		if (huge && rc == -ENOMEM)
			explain_shortage(err, errlen, bytes / page, node, -rc);
		else
			lbu_errf(err, errlen, "cannot map %zu bytes of %s memory: %s", bytes, kind,
			    strerror(-rc));
		goto fail_fd;
	}
	/* Bind before the first fault: pages already faulted elsewhere would stay there. */
	if (node >= 0) {
		rc = bind_node(base, bytes, node);
		if (rc < 0) {
			lbu_errf(err, errlen, "cannot bind arena %u to NUMA node %d: %s", index, node,
			    strerror(-rc));
			goto fail_map;
		}
	}
	/* Shared memory gets THP only where shmem_enabled allows it; asking costs nothing. */
	if (!huge && madvise(base, bytes, MADV_HUGEPAGE) < 0)
		lbd_debug("arena %u: MADV_HUGEPAGE: %s", index, strerror(errno));
	/*
	 * Fault every page in now. POPULATE_WRITE reports a shortage as an error, where touching
	 * the pages would raise SIGBUS (hugetlb on the wrong node, a tmpfs or cgroup limit).
	 */
	if (madvise(base, bytes, MADV_POPULATE_WRITE) < 0) {
		rc = -errno;
		if (rc == -EINVAL) {
			lbu_errf(err, errlen, "cannot prefault arena %u: MADV_POPULATE_WRITE unsupported "
				"(Linux >= 5.14 needed)", index);
			rc = -EOPNOTSUPP;
		} else if (huge) {
			explain_shortage(err, errlen, bytes / page, node, -rc);
			rc = -ENOMEM;
		} else {
			lbu_errf(err, errlen, "cannot prefault %zu bytes of shared memory for arena %u "
				"(%s): memory, a tmpfs or a memory cgroup limit is short", bytes,
			    index, strerror(-rc));
			rc = -ENOMEM;
		}
		goto fail_map;
	}
	a->fd = fd;
	a->hdr = base;
	a->bytes = bytes;
	a->page_size = page;
	a->huge = huge;
	return 0;

fail_map:
	munmap(base, bytes);
fail_fd:
	close(fd);
	return rc;
}

static void reset(struct lbd_arena *a)
{
	a->fd = -1;
	a->hdr = NULL;
	a->bytes = 0;
	a->page_size = 0;
	a->node = -1;
	a->tenant = 0;
	a->huge = false;
}

int lbd_arena_create(struct lbd_arena *a, size_t bytes, int node, enum lbd_hugepages hp,
		     const uint8_t boot_id[16], uint32_t index, char *err, size_t errlen)
{
	size_t small, big;
	struct lb_arena_hdr *h;
	char why[256] = "";
	char thp[32];
	int rc, seals;

	lbu_errf(err, errlen, "%s", "");
	if (!a)
		return -EINVAL;
	reset(a);
	if (!boot_id || (unsigned)hp > LBD_HP_REQUIRE || node < -1) {
		lbu_errf(err, errlen, "invalid arena arguments (boot_id %s, hugepages %d, node %d)",
		    boot_id ? "set" : "NULL", (int)hp, node);
		return -EINVAL;
	}
	small = lbd_arena_round(bytes, SMALL_PAGE);
	if (!small || small > (size_t)INT64_MAX) {
		lbu_errf(err, errlen, "arena size %zu bytes is %s", bytes, bytes ? "too large" : "zero");
		return -EINVAL;
	}
	if (node >= 0) {
		/* Never call into libnuma without it: it would print its own errors. */
		if (numa_available() < 0) {
			lbu_errf(err, errlen, "NUMA node %d requested, but this system has no NUMA support",
			    node);
			return -EINVAL;
		}
		if (node > numa_max_node()) {
			lbu_errf(err, errlen, "NUMA node %d does not exist (highest node is %d)", node,
			    numa_max_node());
			return -EINVAL;
		}
	}

	rc = -1; /* not mapped yet */
	if (hp != LBD_HP_OFF) {
		big = lbd_arena_round(bytes, LBD_HUGE_PAGE_SIZE);
		if (!big || big > (size_t)INT64_MAX) {
			lbu_errf(err, errlen, "arena size %zu bytes is too large for 2 MiB pages", bytes);
			return -EINVAL;
		}
		rc = map_arena(a, big, node, true, index, why, sizeof(why));
		if (rc < 0 && hp == LBD_HP_REQUIRE) {
			lbu_errf(err, errlen, "%s", why);
			return rc;
		}
		/* TRY falls back on any hugetlb failure: 4 KiB pages may still work. */
		if (rc < 0)
			lbd_warn("arena %u: %s; falling back to 4096-byte pages", index, why);
	}
	if (rc < 0) {
		rc = map_arena(a, small, node, false, index, err, errlen);
		if (rc < 0)
			return rc;
	}
	a->node = node;

	h = a->hdr;
	memset(h, 0, sizeof(*h));
	h->magic = LB_SHM_MAGIC;
	h->abi_version = LB_SHM_ABI_VERSION;
	h->hdr_size = LB_SHM_HDR_SIZE;
	h->arena_bytes = a->bytes;
	h->page_size = a->page_size;
	memcpy(h->boot_id, boot_id, sizeof(h->boot_id));
	h->numa_node = node;
	h->arena_index = index;
	h->data_off = LB_SHM_DATA_ALIGN;
	h->data_bytes = a->bytes - LB_SHM_DATA_ALIGN;

	/* Seal after mapping: FUTURE_WRITE spares our mapping and refuses every later writer. */
	if (fcntl(a->fd, F_ADD_SEALS, ARENA_SEALS) < 0) {
		rc = -errno;
		lbu_errf(err, errlen, "cannot seal arena %u: %s (F_SEAL_FUTURE_WRITE needs Linux >= 5.1)",
		    index, strerror(-rc));
		lbd_arena_destroy(a);
		return rc;
	}
	seals = fcntl(a->fd, F_GET_SEALS);
	if (seals < 0 || (seals & ARENA_SEALS) != ARENA_SEALS) {
		rc = seals < 0 ? -errno : -EPERM;
		lbu_errf(err, errlen, "arena %u is not sealed as asked (seals 0x%x)", index,
		    seals < 0 ? 0 : (unsigned)seals);
		lbd_arena_destroy(a);
		return rc;
	}

	if (a->huge) {
		lbd_info("arena %u: %zu bytes, 2 MiB hugetlb pages, node %d", index, a->bytes, node);
	} else {
		shmem_thp_policy(thp, sizeof(thp));
		lbd_info("arena %u: %zu bytes, 4096-byte pages (no hugetlb), node %d; "
			 "shared memory here may not get transparent hugepages (shmem_enabled: %s)",
			 index, a->bytes, node, thp);
	}
	return 0;
}

/* A live arena always has hdr set, so a zeroed struct (fd 0!) never closes stdin. */
void lbd_arena_destroy(struct lbd_arena *a)
{
	if (!a)
		return;
	if (a->hdr) {
		munmap(a->hdr, a->bytes);
		if (a->fd >= 0)
			close(a->fd);
	}
	reset(a);
}
