/* End to end through liblayerbank: several client processes against one layerbankd —
 * handshake and arena mapping, model registration (conflicts, and the registry's rules for kv
 * on the wire), stats, and an arena that no client can write by any route. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "layerbank/layerbank.h"
#include "layerbank/shm.h"
#include "lbp.h"
#include "testutil.h"

#define N_CLIENTS 4

static struct lbt_env env;

/* Every test here has a daemon of its own. */
static int setup(void **state)
{
	(void)state;
	const char *const args[] = { "--arena-size", "16M", "--hugepages", "try", NULL };
	lbt_env_make(&env);
	return lbt_daemon_start(&env, args) > 0 ? 0 : -1;
}

static int teardown(void **state)
{
	(void)state;
	/* SIGTERM even after a failed assertion, so no daemon outlives the test. */
	bool clean = lbt_daemon_stop(&env);
	lbt_env_remove(&env);
	return clean ? 0 : -1;
}

static const struct lb_model_desc bert = {
	.name = "bert-base",
	.weights_hash = 0x0123456789abcdefull,
	.n_layers = 12,
	.hidden = 768,
	.dtype = LB_DTYPE_F32,
	.max_seq = 512,
	.fp_seed = 42,
};

/* Child: connect, register, report the model id through the pipe, wait until told to go. */
static int client_child(int report_fd, int go_fd)
{
	struct lb_client *c;
	uint32_t id = 0;
	char go;
	if (lb_connect(env.sock, "integration", &c) < 0)
		return 10;
	if (lb_register_model(c, &bert, &id) < 0)
		return 11;
	if (write(report_fd, &id, sizeof(id)) != sizeof(id))
		return 12;
	if (read(go_fd, &go, 1) != 1)
		return 13;
	lb_close(c);
	return 0;
}

static void test_clients_share_models_and_stats(void **state)
{
	(void)state;
	int rep[2], go[2];
	pid_t kids[N_CLIENTS];
	struct lb_client *c;
	struct lb_stats st;

	assert_int_equal(pipe(rep), 0);
	assert_int_equal(pipe(go), 0);
	for (int i = 0; i < N_CLIENTS; i++) {
		kids[i] = fork();
		assert_true(kids[i] >= 0);
		if (kids[i] == 0)
			_exit(client_child(rep[1], go[0]));
	}
	uint32_t first = 0;
	for (int i = 0; i < N_CLIENTS; i++) {
		uint32_t id;
		assert_int_equal(read(rep[0], &id, sizeof(id)), sizeof(id));
		assert_true(id >= 1);
		if (i == 0)
			first = id;
		assert_int_equal(id, first); /* every process got the same model */
	}
	assert_int_equal(lb_connect(env.sock, "observer", &c), 0);
	assert_int_equal(lb_stats(c, &st, sizeof(st)), 0);
	assert_int_equal(st.clients, N_CLIENTS + 1);
	assert_int_equal(st.models, 1);
	assert_int_equal(st.arena_bytes, 16u << 20);
	assert_true(st.page_size == 4096 || st.page_size == 2u << 20);

	/* Same name, other weights: refused, naming the field. */
	struct lb_model_desc other = bert;
	uint32_t id;
	other.weights_hash ^= 1;
	assert_int_equal(lb_register_model(c, &other, &id), -EEXIST);
	assert_non_null(strstr(lb_last_error(c), "weights_hash"));
	other = bert;
	other.n_layers = 24;
	assert_int_equal(lb_register_model(c, &other, &id), -EEXIST);
	assert_non_null(strstr(lb_last_error(c), "n_layers"));
	/* The connection survives a refusal; a second model gets a new id. */
	other = bert;
	other.name = "gpt2-small";
	assert_int_equal(lb_register_model(c, &other, &id), 0);
	assert_int_not_equal(id, first);
	/* Out of range never leaves the process. */
	other.n_layers = 0;
	assert_int_equal(lb_register_model(c, &other, &id), -EINVAL);

	assert_int_equal(write(go[1], "gggg", N_CLIENTS), N_CLIENTS);
	for (int i = 0; i < N_CLIENTS; i++) {
		int wst;
		assert_int_equal(waitpid(kids[i], &wst, 0), kids[i]);
		assert_true(WIFEXITED(wst));
		assert_int_equal(WEXITSTATUS(wst), 0);
	}
	/* The daemon sees the BYEs; give it a moment to process them. */
	for (int i = 0; i < 100; i++) {
		assert_int_equal(lb_stats(c, &st, sizeof(st)), 0);
		if (st.clients == 1)
			break;
		usleep(10000);
	}
	assert_int_equal(st.clients, 1);
	assert_int_equal(st.models, 2);
	lb_close(c);
	close(rep[0]);
	close(rep[1]);
	close(go[0]);
	close(go[1]);
}

/* ---- the registry's rules for kv, as a client on the wire meets them ---- */

/* A raw control connection to env's daemon, past HELLO (WELCOME's descriptors closed). */
static int raw_connect(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct timeval tv = { 5, 0 };
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	memcpy(sa.sun_path, env.sock, strlen(env.sock) + 1);
	assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	return fd;
}

/* Send m and read the answer into *back, closing any descriptors that come with it. */
static void raw_call(int fd, const struct lbp_msg *m, struct lbp_msg *back)
{
	static uint8_t buf[LBP_MAX_FRAME + 1];
	union {
		char b[CMSG_SPACE(sizeof(int) * (LBP_MAX_ARENAS + 1))];
		struct cmsghdr align;
	} cm;
	struct iovec iov = { buf, sizeof(buf) };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.b,
			      .msg_controllen = sizeof(cm.b) };
	int len = lbp_encode(m, buf, sizeof(buf));

	assert_true(len > 0);
	assert_int_equal(send(fd, buf, (size_t)len, MSG_NOSIGNAL), len);
	ssize_t n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
	assert_true(n > 0);
	for (struct cmsghdr *h = CMSG_FIRSTHDR(&msg); h; h = CMSG_NXTHDR(&msg, h))
		for (size_t i = 0; h->cmsg_type == SCM_RIGHTS &&
				   i < (h->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++)
			close(((int *)(void *)CMSG_DATA(h))[i]);
	assert_int_equal(lbp_decode(buf, (size_t)n, back, NULL), 0);
}

/* REGISTER_MODEL as sent, in order, on one connection: what the daemon answers. */
static const struct kv_case {
	const char *name;
	uint32_t dim, block_tokens, layers; /* of bert's 12 layers */
	int code;          /* 0: MODEL; else ERROR's code */
	const char *field; /* ERROR's field */
	bool created;      /* MODEL's */
} kv_cases[] = {
	{ "encoder", 0, 0, 0, 0, NULL, true }, /* no prefix blocks */
	{ "decoder", 128, 16, 12, 0, NULL, true },
	{ "decoder", 128, 16, 12, 0, NULL, false },
	{ "widest", LBP_MAX_HIDDEN, LBP_MAX_BLOCK_TOKENS, 12, 0, NULL, true },
	{ "fusedkv", 128, 16, 6, 0, NULL, true }, /* blocks of its 6 storage layers */
	{ "one-kv-layer", 128, 16, 1, 0, NULL, true },
	/* All 0 or all at least 1: ranges the codec takes, sets the registry refuses. */
	{ "rows-no-blocks", 128, 0, 12, EINVAL, "kv.block_tokens", false },
	{ "blocks-no-rows", 0, 16, 12, EINVAL, "kv.block_tokens", false },
	{ "blocks-no-layers", 128, 16, 0, EINVAL, "kv.layers", false },
	{ "layers-no-blocks", 0, 0, 3, EINVAL, "kv.layers", false },
	{ "too-many-layers", 128, 16, 13, EINVAL, "kv.layers", false },
	{ "decoder", 128, 0, 12, EINVAL, "kv.block_tokens", false }, /* before the name's parameters */
	/* The same name with another kv is another model: the first field that differs. */
	{ "decoder", 64, 16, 12, EEXIST, "kv.dim", false },
	{ "decoder", 128, 32, 12, EEXIST, "kv.block_tokens", false },
	{ "decoder", 128, 16, 6, EEXIST, "kv.layers", false },
	{ "encoder", 128, 16, 12, EEXIST, "kv.dim", false },
};

static void test_register_model_kv_pairs(void **state)
{
	(void)state;
	struct lbp_msg m = { .type = LBP_HELLO }, back;
	int fd = raw_connect();

	m.u.hello.shm_abi = LB_SHM_ABI_VERSION;
	raw_call(fd, &m, &back);
	assert_int_equal(back.type, LBP_WELCOME);
	for (size_t i = 0; i < sizeof(kv_cases) / sizeof(kv_cases[0]); i++) {
		const struct kv_case *k = &kv_cases[i];
		m = (struct lbp_msg){ .type = LBP_REGISTER_MODEL };
		assert_int_equal(lbp_register_from_desc(&bert, &m.u.reg), 0);
		strcpy(m.u.reg.name, k->name);
		m.u.reg.kv = (struct lbp_kv_spec){ k->dim, k->block_tokens, k->layers };
		raw_call(fd, &m, &back); /* an ERROR leaves the connection open: the next call works */
		if (k->code) {
			if (back.type != LBP_ERROR || back.u.error.code != k->code ||
			    strcmp(back.u.error.field, k->field))
				fail_msg("case %zu (%s): type %d code %d field '%s'", i, k->name,
					 back.type, back.u.error.code, back.u.error.field);
			continue;
		}
		if (back.type != LBP_MODEL || back.u.model.created != k->created)
			fail_msg("case %zu (%s): type %d created %d", i, k->name, back.type,
				 back.u.model.created);
	}
	m = (struct lbp_msg){ .type = LBP_STATS };
	raw_call(fd, &m, &back);
	assert_int_equal(back.type, LBP_STATS_REPLY);
	assert_int_equal(back.u.stats.models, 5);
	close(fd);
}

/* The arena a client receives is readable, valid, and not writable by any route. */
static void test_client_cannot_write_arena(void **state)
{
	(void)state;
	struct lb_client *c;
	size_t bytes;
	char path[64];

	assert_int_equal(lb_connect(env.sock, "attacker", &c), 0);
	assert_true(lb_arena_count(c) >= 1);
	const struct lb_arena_hdr *h = lb_arena_base(c, 0, &bytes);
	assert_non_null(h);
	assert_int_equal(h->magic, LB_SHM_MAGIC);
	assert_int_equal(h->abi_version, LB_SHM_ABI_VERSION);
	assert_int_equal(h->arena_bytes, bytes);
	int fd = lb_arena_fd(c, 0);
	assert_true(fd >= 0);

	/* 1. map it writable */
	void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	assert_true(p == MAP_FAILED);
	/* 2. make the read-only mapping writable */
	assert_int_equal(mprotect((void *)(uintptr_t)h, 4096, PROT_READ | PROT_WRITE), -1);
	/* 3. re-open the memfd read-write through /proc and map that */
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	int rw = open(path, O_RDWR | O_CLOEXEC);
	if (rw >= 0) {
		p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, rw, 0);
		assert_true(p == MAP_FAILED);
		/* 4. write() through either fd */
		assert_true(pwrite(rw, "x", 1, 0) < 0);
		close(rw);
	}
	assert_true(pwrite(fd, "x", 1, 0) < 0);
	assert_true(ftruncate(fd, 0) < 0);
	/* A private copy-on-write mapping is allowed: it never reaches the shared pages. */
	assert_int_equal(h->magic, LB_SHM_MAGIC);
	lb_close(c);
}

/* Unknown socket paths and a daemon that went away give clean errors. */
static void test_connect_errors(void **state)
{
	(void)state;
	struct lb_client *c = (void *)1;
	char missing[320];
	snprintf(missing, sizeof(missing), "%s/nobody.env.sock", env.dir);
	assert_int_equal(lb_connect(missing, NULL, &c), -ENOENT);
	assert_null(c);
	char longname[200];
	memset(longname, 'a', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	assert_int_equal(lb_connect(longname, NULL, &c), -ENAMETOOLONG);
	assert_int_equal(lb_connect(env.sock, longname, &c), -ENAMETOOLONG);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_clients_share_models_and_stats, setup, teardown),
		cmocka_unit_test_setup_teardown(test_client_cannot_write_arena, setup, teardown),
		cmocka_unit_test_setup_teardown(test_register_model_kv_pairs, setup, teardown),
		cmocka_unit_test_setup_teardown(test_connect_errors, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
