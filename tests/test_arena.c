/* Tests for the daemon arena: size rounding, header, sealing against every client write route,
 * NUMA binding, hugetlb with its shortage paths. As root the hugetlb group reserves the 2 MiB
 * pages it needs and gives them back; otherwise, with none free, it is skipped with a reason. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <numa.h>
#include <numaif.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "arena.h"
#include "io.h"
#include "lbp.h"
#include "log.h"
#include "testutil.h"

#define MiB ((size_t)1 << 20)
#define SMALL 4096u
#define ARENA_SEALS (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE | F_SEAL_SEAL)
/* The hugetlb group never holds more than one 8 MiB arena at a time. */
#define HUGE_NEED 4L
/* Provoking a shortage costs a 4 KiB fallback arena as large as the free pool: cap it. */
#define SHORTAGE_MAX_PAGES 256L

static const uint8_t boot_id[16] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16 };

/* ---- helpers ---- */

/* Send stderr (the daemon log) to a temporary file while a call runs. */
struct capture {
	int saved;
	FILE *f;
};

static void capture_begin(struct capture *c)
{
	fflush(stderr);
	c->f = tmpfile();
	assert_non_null(c->f);
	c->saved = dup(STDERR_FILENO);
	assert_true(c->saved >= 0);
	assert_true(dup2(fileno(c->f), STDERR_FILENO) >= 0);
}

static void capture_end(struct capture *c, char *out, size_t n)
{
	size_t got;
	fflush(stderr);
	dup2(c->saved, STDERR_FILENO);
	close(c->saved);
	rewind(c->f);
	got = fread(out, 1, n - 1, c->f);
	out[got] = '\0';
	fclose(c->f);
	fputs(out, stderr); /* still show it */
}

static unsigned count_lines(const char *s)
{
	unsigned n = 0;
	for (; *s; s++)
		n += *s == '\n';
	return n;
}

static void check_header(const struct lbd_arena *a, int node, uint32_t index)
{
	const struct lb_arena_hdr *h = a->hdr;
	const char *why = NULL;
	assert_non_null(h);
	/* What a client will check, then each field by hand. */
	if (lbp_arena_hdr_check(h, a->bytes, &why))
		fail_msg("lbp_arena_hdr_check: %s", why);
	assert_true(h->magic == LB_SHM_MAGIC);
	assert_int_equal(h->abi_version, LB_SHM_ABI_VERSION);
	assert_int_equal(h->hdr_size, LB_SHM_HDR_SIZE);
	assert_int_equal(h->arena_bytes, a->bytes);
	assert_int_equal(h->page_size, a->page_size);
	assert_memory_equal(h->boot_id, boot_id, sizeof(boot_id));
	assert_int_equal(h->numa_node, node);
	assert_int_equal(h->arena_index, index);
	assert_int_equal(h->data_off, LB_SHM_DATA_ALIGN);
	assert_int_equal(h->data_bytes, a->bytes - LB_SHM_DATA_ALIGN);
	assert_true(h->data_off + h->data_bytes <= h->arena_bytes);
	for (size_t i = 0; i < sizeof(h->reserved) / sizeof(h->reserved[0]); i++)
		assert_int_equal(h->reserved[i], 0);
	assert_int_equal(a->bytes % a->page_size, 0);
}

/* Every page of the mapping is resident: the arena was prefaulted, not merely mapped. */
static void check_resident(const struct lbd_arena *a)
{
	size_t pages = a->bytes / SMALL;
	unsigned char *vec = malloc(pages);
	assert_non_null(vec);
	assert_int_equal(mincore(a->hdr, a->bytes, vec), 0);
	for (size_t i = 0; i < pages; i++)
		if (!(vec[i] & 1))
			fail_msg("page %zu of %zu not resident", i, pages);
	free(vec);
}

/*
 * What a client holding the arena fd (as received in WELCOME) can do: read, nothing else.
 * A dup stands in for the received fd: SCM_RIGHTS passes the same open file, read-write.
 */
static void check_read_only_for_clients(const struct lbd_arena *a)
{
	unsigned char *data = (unsigned char *)a->hdr + a->hdr->data_off;
	struct lb_arena_hdr before = *a->hdr;
	unsigned char byte = 0x5a;
	char path[64];
	void *p;
	int fd, rw, seals;

	memset(data, 0xc3, a->page_size);
	fd = dup(a->fd);
	assert_true(fd >= 0);

	/* (1) a writable shared mapping */
	errno = 0;
	p = mmap(NULL, a->bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	assert_true(p == MAP_FAILED);
	assert_int_equal(errno, EPERM);

	/* (2) a read-only shared mapping turned writable later, or hole-punched through */
	p = mmap(NULL, a->bytes, PROT_READ, MAP_SHARED, fd, 0);
	assert_true(p != MAP_FAILED);
	errno = 0;
	assert_int_equal(mprotect(p, a->bytes, PROT_READ | PROT_WRITE), -1);
	assert_int_equal(errno, EACCES);
	errno = 0;
	assert_int_equal(madvise(p, a->bytes, MADV_REMOVE), -1);
	assert_int_equal(errno, EACCES);

	/* (3) a read-write re-open through /proc: memfds are mode 0777, so it may open */
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	rw = open(path, O_RDWR | O_CLOEXEC);
	if (rw >= 0) {
		errno = 0;
		assert_true(mmap(NULL, a->bytes, PROT_READ | PROT_WRITE, MAP_SHARED, rw, 0) ==
			    MAP_FAILED);
		assert_int_equal(errno, EPERM);
		assert_int_equal(pwrite(rw, &byte, 1, (off_t)a->hdr->data_off), -1);
		close(rw);
	}

	/* (4) write and pwrite: EPERM on shmem; hugetlbfs has no write() at all (EINVAL) */
	errno = 0;
	assert_int_equal(write(fd, &byte, 1), -1);
	assert_true(errno == EPERM || errno == EINVAL);
	errno = 0;
	assert_int_equal(pwrite(fd, &byte, 1, (off_t)a->hdr->data_off), -1);
	assert_true(errno == EPERM || errno == EINVAL);

	/* (5) resizing either way, punching a hole (it would read back as zeros) */
	errno = 0;
	assert_int_equal(ftruncate(fd, (off_t)(a->bytes + a->page_size)), -1);
	assert_int_equal(errno, EPERM);
	errno = 0;
	assert_int_equal(ftruncate(fd, (off_t)(a->bytes - a->page_size)), -1);
	assert_int_equal(errno, EPERM);
	errno = 0;
	assert_int_equal(ftruncate(fd, 0), -1);
	assert_int_equal(errno, EPERM);
	errno = 0;
	assert_int_equal(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
				   (off_t)a->hdr->data_off, (off_t)a->page_size), -1);
	assert_int_equal(errno, EPERM);
	errno = 0;
	assert_int_equal(fallocate(fd, 0, 0, (off_t)(a->bytes + a->page_size)), -1);
	assert_int_equal(errno, EPERM);

	/* ... nor loosening the seals */
	seals = fcntl(fd, F_GET_SEALS);
	assert_int_equal(seals & ARENA_SEALS, ARENA_SEALS);
	errno = 0;
	assert_int_equal(fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE), -1);
	assert_int_equal(errno, EPERM);

	/* A private writable mapping is the client's own copy: its writes reach no one. */
	{
		unsigned char *priv = mmap(NULL, a->bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
		if (priv != MAP_FAILED) {
			priv[a->hdr->data_off] = byte;
			assert_int_equal(data[0], 0xc3);
			munmap(priv, a->bytes);
		}
	}

	/* Nothing above changed a byte. */
	assert_memory_equal(&before, a->hdr, sizeof(before));
	for (size_t i = 0; i < a->page_size; i++)
		if (data[i] != 0xc3)
			fail_msg("data byte %zu changed to 0x%x", i, data[i]);

	/* (6) the daemon's own mapping still writes, and readers see it */
	data[0] = 0x11;
	data[a->page_size - 1] = 0x22;
	assert_int_equal(((unsigned char *)p)[a->hdr->data_off], 0x11);
	assert_int_equal(((unsigned char *)p)[a->hdr->data_off + a->page_size - 1], 0x22);
	assert_memory_equal(p, a->hdr, sizeof(*a->hdr));

	munmap(p, a->bytes);
	close(fd);
}

/* The node the page at addr sits on, and the policy governing it. */
static void check_bound(const struct lbd_arena *a, int node)
{
	unsigned long mask[16] = { 0 };
	int mode = -1, where = -1;
	void *addr = (char *)a->hdr + a->hdr->data_off;
	assert_int_equal(get_mempolicy(&mode, mask, sizeof(mask) * 8, addr, MPOL_F_ADDR), 0);
	assert_int_equal(mode, MPOL_BIND);
	assert_true(mask[node / 64] & (1UL << (node % 64)));
	assert_int_equal(get_mempolicy(&where, NULL, 0, addr, MPOL_F_NODE | MPOL_F_ADDR), 0);
	assert_int_equal(where, node);
}

/* ---- rounding ---- */

static void test_round_exact_multiples(void **state)
{
	(void)state;
	assert_int_equal(lbd_arena_round(4096, 4096), 4096);
	assert_int_equal(lbd_arena_round(8 * MiB, 4096), 8 * MiB);
	assert_int_equal(lbd_arena_round(8 * MiB, LBD_HUGE_PAGE_SIZE), 8 * MiB);
	assert_int_equal(lbd_arena_round(LBD_HUGE_PAGE_SIZE, LBD_HUGE_PAGE_SIZE), 2 * MiB);
}

static void test_round_up_by_one(void **state)
{
	(void)state;
	assert_int_equal(lbd_arena_round(1, 4096), 4096);
	assert_int_equal(lbd_arena_round(4097, 4096), 8192);
	assert_int_equal(lbd_arena_round(8 * MiB + 1, 4096), 8 * MiB + 4096);
	assert_int_equal(lbd_arena_round(8 * MiB + 1, LBD_HUGE_PAGE_SIZE), 10 * MiB);
	assert_int_equal(lbd_arena_round(8 * MiB - 1, LBD_HUGE_PAGE_SIZE), 8 * MiB);
}

static void test_round_zero(void **state)
{
	(void)state;
	assert_int_equal(lbd_arena_round(0, 4096), 0);
	assert_int_equal(lbd_arena_round(0, LBD_HUGE_PAGE_SIZE), 0);
}

static void test_round_overflow_near_size_max(void **state)
{
	(void)state;
	assert_int_equal(lbd_arena_round(SIZE_MAX, 4096), 0);
	assert_int_equal(lbd_arena_round(SIZE_MAX - 4094, 4096), 0);
	/* The largest multiple still fits. */
	assert_true(lbd_arena_round(SIZE_MAX - 4095, 4096) == SIZE_MAX - 4095);
	assert_true(lbd_arena_round(SIZE_MAX - 4096, 4096) == SIZE_MAX - 4095);
	assert_int_equal(lbd_arena_round(SIZE_MAX - LBD_HUGE_PAGE_SIZE + 2, LBD_HUGE_PAGE_SIZE), 0);
	/* Not a power of two: refused rather than rounded wrong. */
	assert_int_equal(lbd_arena_round(100, 0), 0);
	assert_int_equal(lbd_arena_round(100, 3000), 0);
}

/* ---- creation, 4 KiB pages ---- */

static void test_create_rejects_bad_arguments(void **state)
{
	struct lbd_arena a;
	char err[256];
	(void)state;

	assert_int_equal(lbd_arena_create(&a, 0, -1, LBD_HP_OFF, boot_id, 0, err, sizeof(err)),
			 -EINVAL);
	assert_true(strstr(err, "zero") != NULL);
	assert_int_equal(a.fd, -1);
	assert_null(a.hdr);
	assert_int_equal(lbd_arena_create(&a, SIZE_MAX, -1, LBD_HP_OFF, boot_id, 0, err,
					  sizeof(err)), -EINVAL);
	assert_true(strstr(err, "too large") != NULL);
	assert_int_equal(lbd_arena_create(&a, SIZE_MAX - 3 * MiB, -1, LBD_HP_TRY, boot_id, 0, err,
					  sizeof(err)), -EINVAL);
	assert_int_equal(lbd_arena_create(&a, (size_t)INT64_MAX + 1, -1, LBD_HP_OFF, boot_id, 0,
					  err, sizeof(err)), -EINVAL);
	assert_int_equal(lbd_arena_create(&a, MiB, -1, (enum lbd_hugepages)7, boot_id, 0, err,
					  sizeof(err)), -EINVAL);
	assert_int_equal(lbd_arena_create(&a, MiB, -2, LBD_HP_OFF, boot_id, 0, err, sizeof(err)),
			 -EINVAL);
	assert_int_equal(lbd_arena_create(&a, MiB, -1, LBD_HP_OFF, NULL, 0, err, sizeof(err)),
			 -EINVAL);
	/* err is optional */
	assert_int_equal(lbd_arena_create(&a, 0, -1, LBD_HP_OFF, boot_id, 0, NULL, 0), -EINVAL);
	lbd_arena_destroy(&a);
}

static void test_off_creates_4k_arena_with_header(void **state)
{
	struct lbd_arena a;
	char err[256] = "junk";
	(void)state;

	assert_int_equal(lbd_arena_create(&a, 8 * MiB + 1, -1, LBD_HP_OFF, boot_id, 3, err,
					  sizeof(err)), 0);
	assert_string_equal(err, "");
	assert_true(a.fd >= 0);
	assert_int_equal(a.bytes, 8 * MiB + 4096);
	assert_int_equal(a.page_size, 4096);
	assert_false(a.huge);
	assert_int_equal(a.node, -1);
	check_header(&a, -1, 3);
	check_resident(&a);
	assert_int_equal(fcntl(a.fd, F_GET_SEALS) & ARENA_SEALS, ARENA_SEALS);
	assert_true(fcntl(a.fd, F_GETFD) & FD_CLOEXEC);
	lbd_arena_destroy(&a);
}

static void test_smallest_arena_is_one_page(void **state)
{
	struct lbd_arena a;
	(void)state;
	assert_int_equal(lbd_arena_create(&a, 1, -1, LBD_HP_OFF, boot_id, 0, NULL, 0), 0);
	assert_int_equal(a.bytes, 4096);
	check_header(&a, -1, 0);
	assert_int_equal(a.hdr->data_bytes, 0);
	lbd_arena_destroy(&a);
}

static void test_4k_arena_read_only_for_clients(void **state)
{
	struct lbd_arena a;
	char err[256];
	(void)state;
	assert_int_equal(lbd_arena_create(&a, 4 * MiB, -1, LBD_HP_OFF, boot_id, 0, err,
					  sizeof(err)), 0);
	check_read_only_for_clients(&a);
	lbd_arena_destroy(&a);
}

static void test_numa_node0_binds(void **state)
{
	struct lbd_arena a;
	char err[256];
	int rc;
	(void)state;

	rc = lbd_arena_create(&a, 2 * MiB, 0, LBD_HP_OFF, boot_id, 0, err, sizeof(err));
	if (numa_available() < 0) {
		assert_int_equal(rc, -EINVAL);
		assert_true(strstr(err, "NUMA") != NULL);
		return;
	}
	if (rc)
		fail_msg("node 0: %d: %s", rc, err);
	assert_int_equal(a.node, 0);
	check_header(&a, 0, 0);
	check_bound(&a, 0);
	lbd_arena_destroy(&a);
}

static void test_numa_missing_node_is_einval(void **state)
{
	struct lbd_arena a;
	char err[256];
	(void)state;
	assert_int_equal(lbd_arena_create(&a, 2 * MiB, 9999, LBD_HP_TRY, boot_id, 0, err,
					  sizeof(err)), -EINVAL);
	assert_true(strstr(err, "9999") != NULL);
	assert_int_equal(a.fd, -1);
	assert_null(a.hdr);
}

static void test_destroy_twice_and_zeroed_is_safe(void **state)
{
	struct lbd_arena a;
	struct lbd_arena zero;
	int stdin_flags = fcntl(STDIN_FILENO, F_GETFD);
	(void)state;

	memset(&zero, 0, sizeof(zero));
	lbd_arena_destroy(&zero); /* fd 0 in a zeroed struct is not ours to close */
	lbd_arena_destroy(&zero);
	assert_int_equal(fcntl(STDIN_FILENO, F_GETFD), stdin_flags);
	lbd_arena_destroy(NULL);

	assert_int_equal(lbd_arena_create(&a, MiB, -1, LBD_HP_OFF, boot_id, 0, NULL, 0), 0);
	lbd_arena_destroy(&a);
	assert_int_equal(a.fd, -1);
	assert_null(a.hdr);
	assert_int_equal(a.bytes, 0);
	lbd_arena_destroy(&a);
	assert_int_equal(a.fd, -1);
}

/* ---- hugetlb shortage: runs with any pool, including an empty one ---- */

/* One page more than can be had; skip() where that is unknown or too costly to provoke. */
static size_t short_size(void)
{
	long avail = lbt_hugepages_avail();
	if (avail < 0) {
		printf("SKIP: this kernel has no 2 MiB hugetlb pages\n");
		skip();
	}
	if (avail > SHORTAGE_MAX_PAGES) {
		printf("SKIP: %ld free hugepages: a shortage would cost too much memory\n", avail);
		skip();
	}
	return (size_t)(avail + 1) * LBD_HUGE_PAGE_SIZE;
}

static void test_require_fails_when_hugepages_short(void **state)
{
	struct lbd_arena a;
	char err[256], want[64];
	size_t bytes = short_size();
	(void)state;

	assert_int_equal(lbd_arena_create(&a, bytes, -1, LBD_HP_REQUIRE, boot_id, 0, err,
					  sizeof(err)), -ENOMEM);
	printf("REQUIRE said: %s\n", err);
	snprintf(want, sizeof(want), "need %zu hugepages of 2 MiB", bytes / LBD_HUGE_PAGE_SIZE);
	assert_true(strstr(err, want) != NULL);
	assert_true(strstr(err, "nr_hugepages") != NULL);
	assert_true(strstr(err, "echo ") != NULL);
	assert_null(strchr(err, '\n'));
	assert_int_equal(a.fd, -1);
	assert_null(a.hdr);
	lbd_arena_destroy(&a);
}

static void test_require_short_on_a_node_names_that_node(void **state)
{
	struct lbd_arena a;
	char err[256];
	size_t bytes = short_size();
	(void)state;

	if (numa_available() < 0) {
		printf("SKIP: no NUMA support\n");
		skip();
	}
	assert_int_equal(lbd_arena_create(&a, bytes, 0, LBD_HP_REQUIRE, boot_id, 0, err,
					  sizeof(err)), -ENOMEM);
	printf("REQUIRE on node 0 said: %s\n", err);
	/* Raising the global count would spread pages over every node: name this one's, unless
	 * there is only one node, where the global count is the same pool. */
	assert_true(strstr(err, "on node 0") != NULL);
	if (numa_num_configured_nodes() > 1)
		assert_true(strstr(err, "/sys/devices/system/node/node0/hugepages/"
					"hugepages-2048kB/nr_hugepages") != NULL);
	else
		assert_true(strstr(err, "/proc/sys/vm/nr_hugepages") != NULL);
	assert_null(a.hdr);
}

static void test_try_falls_back_to_4k_when_hugepages_short(void **state)
{
	struct lbd_arena a;
	struct capture c;
	char log[4096], err[256];
	size_t bytes = short_size();
	int rc;
	(void)state;

	capture_begin(&c);
	rc = lbd_arena_create(&a, bytes, -1, LBD_HP_TRY, boot_id, 1, err, sizeof(err));
	capture_end(&c, log, sizeof(log));
	if (rc)
		fail_msg("TRY: %d: %s", rc, err);
	assert_false(a.huge);
	assert_int_equal(a.page_size, 4096);
	assert_int_equal(a.bytes, bytes);
	check_header(&a, -1, 1);
	check_resident(&a);
	/* One warning with the counts and the fallback, then the arena's info line. */
	assert_true(strstr(log, "warn: arena 1: need ") != NULL);
	assert_true(strstr(log, "falling back to 4096-byte pages") != NULL);
	assert_true(strstr(log, "transparent hugepages") != NULL);
	assert_int_equal(count_lines(log), 2);
	lbd_arena_destroy(&a);
}

/* ---- hugetlb: needs HUGE_NEED free pages ---- */

static void test_huge_require_creates_2m_arena(void **state)
{
	struct lbd_arena a;
	char err[256];
	long before = lbt_hugepages_free();
	(void)state;

	if (lbd_arena_create(&a, 6 * MiB + 1, -1, LBD_HP_REQUIRE, boot_id, 2, err, sizeof(err)))
		fail_msg("REQUIRE: %s", err);
	assert_true(a.huge);
	assert_int_equal(a.page_size, LBD_HUGE_PAGE_SIZE);
	assert_int_equal(a.bytes, 8 * MiB);
	check_header(&a, -1, 2);
	/* Prefaulted: the pages left the free pool, and none is merely reserved. */
	assert_int_equal(before - lbt_hugepages_free(), 4);
	assert_int_equal(lbu_meminfo("HugePages_Rsvd"), 0);
	assert_int_equal(fcntl(a.fd, F_GET_SEALS) & ARENA_SEALS, ARENA_SEALS);
	lbd_arena_destroy(&a);
	assert_int_equal(lbt_hugepages_free(), before);
}

static void test_huge_try_uses_hugetlb_when_free(void **state)
{
	struct lbd_arena a;
	char err[256];
	(void)state;
	if (lbd_arena_create(&a, 8 * MiB, -1, LBD_HP_TRY, boot_id, 0, err, sizeof(err)))
		fail_msg("TRY: %s", err);
	assert_true(a.huge);
	assert_int_equal(a.page_size, LBD_HUGE_PAGE_SIZE);
	lbd_arena_destroy(&a);
}

static void test_huge_arena_read_only_for_clients(void **state)
{
	struct lbd_arena a;
	char err[256];
	(void)state;
	if (lbd_arena_create(&a, 8 * MiB, -1, LBD_HP_REQUIRE, boot_id, 0, err, sizeof(err)))
		fail_msg("REQUIRE: %s", err);
	check_read_only_for_clients(&a);
	lbd_arena_destroy(&a);
}

static void test_huge_numa_node0_binds(void **state)
{
	struct lbd_arena a;
	char err[256];
	(void)state;
	if (numa_available() < 0) {
		printf("SKIP: no NUMA support\n");
		skip();
	}
	if (lbd_arena_create(&a, 4 * MiB, 0, LBD_HP_REQUIRE, boot_id, 0, err, sizeof(err)))
		fail_msg("REQUIRE on node 0: %s", err);
	assert_true(a.huge);
	check_header(&a, 0, 0);
	check_bound(&a, 0);
	lbd_arena_destroy(&a);
}

int main(void)
{
	const struct CMUnitTest core[] = {
		cmocka_unit_test(test_round_exact_multiples),
		cmocka_unit_test(test_round_up_by_one),
		cmocka_unit_test(test_round_zero),
		cmocka_unit_test(test_round_overflow_near_size_max),
		cmocka_unit_test(test_create_rejects_bad_arguments),
		cmocka_unit_test(test_off_creates_4k_arena_with_header),
		cmocka_unit_test(test_smallest_arena_is_one_page),
		cmocka_unit_test(test_4k_arena_read_only_for_clients),
		cmocka_unit_test(test_numa_node0_binds),
		cmocka_unit_test(test_numa_missing_node_is_einval),
		cmocka_unit_test(test_destroy_twice_and_zeroed_is_safe),
		cmocka_unit_test(test_require_fails_when_hugepages_short),
		cmocka_unit_test(test_require_short_on_a_node_names_that_node),
		cmocka_unit_test(test_try_falls_back_to_4k_when_hugepages_short),
	};
	const struct CMUnitTest huge[] = {
		cmocka_unit_test(test_huge_require_creates_2m_arena),
		cmocka_unit_test(test_huge_try_uses_hugetlb_when_free),
		cmocka_unit_test(test_huge_arena_read_only_for_clients),
		cmocka_unit_test(test_huge_numa_node0_binds),
	};
	const char *why;
	bool have_huge;
	int failed;

	lbd_log_setup(LBD_LOG_INFO, 0);
	have_huge = lbt_hugepages_ensure(HUGE_NEED, &why);
	failed = cmocka_run_group_tests_name("arena", core, NULL, NULL);
	if (have_huge)
		failed += cmocka_run_group_tests_name("arena_hugetlb", huge, NULL, NULL);
	lbt_hugepages_restore();
	if (failed)
		return 1;
	if (!have_huge)
		LBT_SKIP("%s", why);
	return 0;
}
