/* Two NUMA nodes for real: the daemon's arenas bound to their nodes (page by page), a client
 * pinned to node 1 inserting into node 1's arena, remote placement when it is full, service
 * threads on their node's CPUs, and the per-node STATS agreeing. This machine has one node, so
 * tests/test_numa.sh boots a two-node guest under qemu and runs this binary there
 * (LAYERBANK_NUMA_TEST=1, scripts/test-numa); with fewer than two nodes it exits 77. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <numa.h>
#include <numaif.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "layerbank/layerbank.h"
#include "layerbank/shm.h"
#include "testutil.h"

static struct lbt_env env;

#define HUGE (2u << 20)
#define N_LAYERS 2
#define HIDDEN 1024
#define SEQ 256
#define ENTRY_DATA (SEQ * HIDDEN * 4) /* 1 MiB */
/* 64 MiB of arena per node: 32 hugepages each of the guest's 64 per node. The threads are the
 * default's, auto: one per node. */
#define ARENA_ARGS "--arena-size", "128M", "--hugepages", "require"

static struct lb_model_desc model(void)
{
	return (struct lb_model_desc){ .name = "numa", .weights_hash = 0x6e756d61,
				       .n_layers = N_LAYERS, .hidden = HIDDEN,
				       .dtype = LB_DTYPE_F32, .max_seq = 4096, .fp_seed = 5 };
}

static void key_make(struct lb_key *k, uint64_t id)
{
	memset(k, 0, sizeof(*k));
	for (int i = 0; i < 4; i++)
		k->fp[i] = (id + 1) * 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1);
	k->exact[0] = id + 1;
	k->exact[1] = 0x6e756d61;
	k->seq_len = SEQ;
}

static int insert(struct lb_client *c, uint32_t model_id, uint64_t id)
{
	struct lb_key k;
	float *buf = lb_insert_reserve(c, ENTRY_DATA);
	if (!buf)
		return -errno;
	for (unsigned i = 0; i < SEQ * HIDDEN; i += 1024)
		buf[i] = (float)id;
	key_make(&k, id);
	struct lb_shape sh = { .dtype = LB_DTYPE_F32, .ndim = 2, .dims = { SEQ, HIDDEN } };
	return lb_insert_commit(c, model_id, 0, &k, &sh);
}

/* The node of the page at p, by the kernel's page tables (p mapped and touched). */
static int page_node(const void *p)
{
	int node = -1;
	if (get_mempolicy(&node, NULL, 0, (void *)(uintptr_t)p, MPOL_F_NODE | MPOL_F_ADDR) < 0)
		return -errno;
	return node;
}

/* The node input id's entry is on, found by a lookup: its page's, and its arena's header's,
 * which must agree. */
static int entry_node(struct lb_client *c, uint32_t model_id, uint64_t id)
{
	struct lb_key k;
	struct lb_hit h;
	key_make(&k, id);
	assert_int_equal(lb_lookup(c, model_id, 0, &k, NULL, 0, &h), 0);
	int node = page_node(h.data), arena_node = -2;
	for (unsigned i = 0; i < lb_arena_count(c); i++) {
		size_t bytes;
		const uint8_t *base = lb_arena_base(c, i, &bytes);
		if (base && (const uint8_t *)h.data >= base && (const uint8_t *)h.data < base + bytes)
			arena_node = ((const struct lb_arena_hdr *)(const void *)base)->numa_node;
	}
	assert_int_equal(lb_release(c, h.lease), 0);
	assert_int_equal(node, arena_node);
	return node;
}

static unsigned free_huge(int node)
{
	char path[128];
	unsigned n = 0;
	snprintf(path, sizeof(path),
		 "/sys/devices/system/node/node%d/hugepages/hugepages-2048kB/free_hugepages", node);
	FILE *f = fopen(path, "r");
	if (f) {
		if (fscanf(f, "%u", &n) != 1)
			n = 0;
		fclose(f);
	}
	return n;
}

static const struct lb_node_stats *node_stats(const struct lb_stats *st, int node)
{
	for (uint32_t i = 0; i < st->n_nodes; i++)
		if (st->nodes[i].node == node)
			return &st->nodes[i];
	static const struct lb_node_stats none; /* fail_msg does not return; the compiler cannot tell */
	fail_msg("no STATS row for node %d", node);
	return &none;
}

/* Each node's arena takes its hugepages from that node, and every page of it, as a client maps
 * it, is on the node its header names. */
static void test_arenas_are_bound_page_by_page(void **state)
{
	(void)state;
	unsigned before[2] = { free_huge(0), free_huge(1) };
	assert_true(lbt_daemon_start(&env, LBT_ARGS(ARENA_ARGS)) > 0);
	/* 64 MiB and the header's page: 32 or 33 pages, on each node. */
	for (int node = 0; node < 2; node++) {
		unsigned used = before[node] - free_huge(node);
		print_message("node %d: %u of its hugepages taken by its arena\n", node, used);
		assert_true(used >= 32 && used <= 33);
	}
	struct lb_client *c = NULL;
	assert_int_equal(lbt_connect(&env, "pages", &c), 0);
	assert_int_equal(lb_arena_count(c), 2);
	for (unsigned i = 0; i < 2; i++) {
		size_t bytes;
		const uint8_t *base = lb_arena_base(c, i, &bytes);
		const struct lb_arena_hdr *h = (const void *)base;
		assert_non_null(base);
		assert_int_equal(h->page_size, HUGE);
		unsigned n = (unsigned)(bytes / HUGE);
		void **pages = calloc(n, sizeof(*pages));
		int *status = calloc(n, sizeof(*status));
		assert_true(pages && status);
		for (unsigned p = 0; p < n; p++) {
			pages[p] = (void *)(uintptr_t)(base + (size_t)p * HUGE);
			(void)*(volatile const uint8_t *)pages[p]; /* into our page tables */
		}
		assert_int_equal(move_pages(0, n, pages, NULL, status, 0), 0);
		for (unsigned p = 0; p < n; p++)
			if (status[p] != h->numa_node)
				fail_msg("arena %u (node %d): page %u is on node %d", i, h->numa_node, p,
					 status[p]);
		assert_int_equal(page_node(base), h->numa_node);
		print_message("arena %u: %u pages of 2 MiB, every one on node %d\n", i, n, h->numa_node);
		free(pages);
		free(status);
	}
	struct lb_stats st;
	assert_int_equal(lb_stats(c, &st, sizeof(st)), 0);
	assert_int_equal(st.n_nodes, 2);
	assert_int_equal(node_stats(&st, 0)->arena_bytes, 64u << 20);
	assert_int_equal(node_stats(&st, 1)->arena_bytes, 64u << 20);
	assert_true(lbt_daemon_stop(&env));
}

/* With a tenant (an allow-list of another uid), an arena per tenant and node: root, on no list,
 * is given the shared tenant's two, each on its node; a model of that list goes to its own. */
static void test_tenants_have_arenas_on_each_node(void **state)
{
	(void)state;
	struct lb_client *c = NULL;
	struct lb_stats st;

	assert_true(lbt_daemon_start(&env, LBT_ARGS(ARENA_ARGS, "--model-allow", "secret 4242")) > 0);
	assert_int_equal(lbt_connect(&env, "root", &c), 0);
	assert_int_equal(lb_arena_count(c), 2); /* arenas 0 and 1: tenant 0 on nodes 0 and 1 */
	for (unsigned i = 0; i < 2; i++) {
		size_t bytes;
		const struct lb_arena_hdr *h = lb_arena_base(c, i, &bytes);
		assert_non_null(h);
		assert_int_equal(bytes, 32u << 20);
		assert_int_equal(page_node(h), (int)i);
		assert_int_equal(h->numa_node, (int)i);
	}
	assert_int_equal(lb_arena_fd(c, 2), -EINVAL); /* not even counted: tenant 1's come after */
	assert_int_equal(lb_stats(c, &st, sizeof(st)), 0);
	assert_int_equal(st.tenants, 2);
	assert_int_equal(st.n_nodes, 2);
	assert_int_equal(node_stats(&st, 0)->arena_bytes, 64u << 20); /* both tenants' */
	assert_int_equal(node_stats(&st, 1)->arena_bytes, 64u << 20);
	assert_true(lbt_daemon_stop(&env));
}

/* A client on node 1 inserts into node 1's arena; one that says node 0 ($LAYERBANK_NUMA_NODE)
 * into node 0's; node 1's arena full, its inserts go to node 0's, counted as remote. */
static void test_inserts_go_to_their_node(void **state)
{
	(void)state;
	struct lb_model_desc m = model();
	struct lb_client *one = NULL, *zero = NULL;
	uint32_t id = 0;
	struct lb_stats st;

	assert_true(lbt_daemon_start(&env, LBT_ARGS(ARENA_ARGS)) > 0);
	assert_int_equal(numa_run_on_node(1), 0); /* HELLO says the node of the CPU we are on */
	assert_int_equal(lbt_connect(&env, "node1", &one), 0);
	assert_int_equal(setenv(LB_NUMA_NODE_ENV, "0", 1), 0);
	assert_int_equal(lbt_connect(&env, "node0", &zero), 0);
	assert_int_equal(unsetenv(LB_NUMA_NODE_ENV), 0);
	assert_int_equal(lb_register_model(one, &m, &id), 0);
	assert_int_equal(lb_register_model(zero, &m, &id), 0);
	for (uint64_t i = 0; i < 8; i++) {
		assert_int_equal(insert(one, id, i), 0);
		assert_int_equal(insert(zero, id, 100 + i), 0);
	}
	for (uint64_t i = 0; i < 8; i++) {
		assert_int_equal(entry_node(one, id, i), 1);
		assert_int_equal(entry_node(one, id, 100 + i), 0);
	}
	assert_int_equal(lb_stats(one, &st, sizeof(st)), 0);
	assert_int_equal(node_stats(&st, 1)->inserts, 8);
	assert_int_equal(node_stats(&st, 1)->entries, 8);
	assert_int_equal(node_stats(&st, 1)->hits, 8); /* the lookups above, counted where they read */
	assert_int_equal(node_stats(&st, 0)->inserts, 8);
	assert_int_equal(node_stats(&st, 0)->hits, 8);
	assert_int_equal(node_stats(&st, 1)->clients, 1);
	assert_int_equal(node_stats(&st, 0)->clients, 1);
	assert_int_equal(node_stats(&st, 1)->remote_inserts, 0);

	/* Fill node 1's arena: 64 MiB holds fewer than 64 entries of 1 MiB and a header. */
	uint64_t i = 8;
	int where = 1;
	for (; i < 200 && where == 1; i++) {
		assert_int_equal(insert(one, id, i), 0);
		where = entry_node(one, id, i);
	}
	assert_int_equal(where, 0);
	assert_int_equal(lb_stats(one, &st, sizeof(st)), 0);
	print_message("node 1's arena took %" PRIu64 " entries before one went to node 0\n", i - 1);
	assert_int_equal(node_stats(&st, 1)->remote_inserts, 1);
	assert_int_equal(node_stats(&st, 1)->entries, i - 1);
	assert_int_equal(node_stats(&st, 0)->inserts, 9);
	assert_int_equal(node_stats(&st, 0)->remote_inserts, 0);
	assert_int_equal(node_stats(&st, 0)->entries + node_stats(&st, 1)->entries, st.entries);
	assert_int_equal(node_stats(&st, 0)->bytes_used + node_stats(&st, 1)->bytes_used,
			 st.bytes_used);
	assert_int_equal(numa_run_on_node(-1), 0);
	assert_true(lbt_daemon_stop(&env));
}

/* The CPUs of node n, as /proc's Cpus_allowed_list writes them ("1", "0-3"). */
static void node_cpus(int node, char *out, size_t n)
{
	struct bitmask *b = numa_allocate_cpumask();
	size_t len = 0;
	int first = -1;
	assert_int_equal(numa_node_to_cpus(node, b), 0);
	out[0] = '\0';
	for (unsigned i = 0; i <= b->size; i++) {
		bool on = i < b->size && numa_bitmask_isbitset(b, i);
		if (on && first < 0)
			first = (int)i;
		if (!on && first >= 0) {
			len += (size_t)snprintf(out + len, n - len, "%s%d", len ? "," : "", first);
			if ((int)i - 1 > first)
				len += (size_t)snprintf(out + len, n - len, "-%u", i - 1);
			first = -1;
		}
	}
	numa_free_cpumask(b);
}

/* By default a service thread per node, each on its node's CPUs only. */
static void test_service_threads_run_on_their_node(void **state)
{
	(void)state;
	char want[2][64], path[320], line[256];
	unsigned found[2] = { 0, 0 };

	assert_true(lbt_daemon_start(&env, LBT_ARGS(ARENA_ARGS)) > 0);
	/* Listening comes before the threads start; an answer after them. */
	struct lb_client *c = NULL;
	assert_int_equal(lbt_connect(&env, "threads", &c), 0);
	assert_int_equal(lb_ping(c), 0);
	node_cpus(0, want[0], sizeof(want[0]));
	node_cpus(1, want[1], sizeof(want[1]));
	snprintf(path, sizeof(path), "/proc/%d/task", (int)env.pid);
	DIR *d = opendir(path);
	assert_non_null(d);
	struct dirent *de;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/%d/task/%s/status", (int)env.pid, de->d_name);
		FILE *f = fopen(path, "r");
		while (f && fgets(line, sizeof(line), f))
			if (strncmp(line, "Cpus_allowed_list:", 18) == 0) {
				char *v = line + 18;
				v += strspn(v, " \t");
				v[strcspn(v, "\n")] = '\0';
				print_message("thread %s: CPUs %s\n", de->d_name, v);
				for (int k = 0; k < 2; k++)
					found[k] += strcmp(v, want[k]) == 0;
			}
		if (f)
			fclose(f);
	}
	closedir(d);
	print_message("threads on node 0's CPUs (%s): %u, on node 1's (%s): %u\n", want[0],
		      found[0], want[1], found[1]);
	if (found[0] != 1 || found[1] != 1) {
		char cmd[300];
		snprintf(cmd, sizeof(cmd), "cat %s", env.log);
		(void)system(cmd);
	}
	assert_int_equal(found[0], 1);
	assert_int_equal(found[1], 1);
	struct lb_stats st;
	assert_int_equal(lb_stats(c, &st, sizeof(st)), 0);
	assert_int_equal(st.threads, 2);
	assert_true(lbt_daemon_stop(&env));
}

#define TEST(f) cmocka_unit_test_prestate_setup_teardown(f, lbt_env_setup, lbt_env_teardown, &env)

int main(void)
{
	if (numa_available() < 0 || numa_num_configured_nodes() < 2)
		LBT_SKIP("fewer than two NUMA nodes here: tests/test_numa.sh runs this in a two-node "
			 "guest (LAYERBANK_NUMA_TEST=1, scripts/test-numa)");
	if (numa_num_configured_nodes() != 2 || free_huge(0) < 33 || free_huge(1) < 33)
		LBT_SKIP("wants exactly two nodes with 33 free hugepages of 2 MiB each, as "
			 "tests/test_numa.sh's guest has");
	const struct CMUnitTest tests[] = {
		TEST(test_arenas_are_bound_page_by_page),
		TEST(test_tenants_have_arenas_on_each_node),
		TEST(test_inserts_go_to_their_node),
		TEST(test_service_threads_run_on_their_node),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
