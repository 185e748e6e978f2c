/* A storm of random and mutated control frames against one layerbankd: every frame gets an
 * answer (a reply or a hang-up) within 2 s, the daemon stays up, and afterwards a well-behaved
 * client is served normally. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "layerbank/layerbank.h"
#include "lbp.h"
#include "testutil.h"

#define FRAMES 10000

static struct lbt_env env; /* the test's fixture (lbt_env_setup, lbt_env_teardown) */
static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t next(void)
{
	/* xorshift64*: deterministic, so a failure replays with the printed seed */
	rng ^= rng >> 12;
	rng ^= rng << 25;
	rng ^= rng >> 27;
	return rng * 0x2545f4914f6cdd1dull;
}

static int dial(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	assert_true(strlen(env.sock) < sizeof(sa.sun_path));
	memcpy(sa.sun_path, env.sock, strlen(env.sock) + 1);
	assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	return fd;
}

/* Wait for the daemon's answer: 2 an ERROR reply, 1 another reply (its fds closed), 0 it hung
 * up, -1 silence. */
static int answer(int fd)
{
	static uint8_t buf[LBP_MAX_FRAME + 1];
	union {
		char b[CMSG_SPACE(sizeof(int) * LBP_MAX_ARENAS)];
		struct cmsghdr align;
	} cmsg;
	struct pollfd p = { .fd = fd, .events = POLLIN };
	/* Generous: a loaded CI machine under ASan; a daemon that never answers still fails. */
	if (poll(&p, 1, 10000) != 1)
		return -1;
	struct iovec iov = { buf, sizeof(buf) };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cmsg.b,
			      .msg_controllen = sizeof(cmsg.b) };
	ssize_t n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
	if (n <= 0)
		return 0;
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
		size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		int fds[LBP_MAX_ARENAS];
		memcpy(fds, CMSG_DATA(cm), k * sizeof(int));
		for (size_t i = 0; i < k; i++)
			close(fds[i]);
	}
	struct lbp_msg m;
	assert_int_equal(lbp_decode(buf, (size_t)n, &m, NULL), 0); /* the daemon speaks correctly */
	return m.type == LBP_ERROR ? 2 : 1;
}

/* A valid frame of a random request type, the seed of a mutation. */
static size_t valid_frame(uint8_t *buf, size_t cap)
{
	struct lbp_msg m;
	memset(&m, 0, sizeof(m));
	switch (next() % 3) {
	case 0:
		m.type = LBP_HELLO;
		m.u.hello.shm_abi = LB_SHM_ABI_VERSION;
		strcpy(m.u.hello.name, "storm");
		break;
	case 1:
		m.type = LBP_REGISTER_MODEL;
		snprintf(m.u.reg.name, sizeof(m.u.reg.name), "m%u", (unsigned)(next() % 4));
		m.u.reg.weights_hash = next() % 2;
		m.u.reg.n_layers = 12;
		m.u.reg.hidden = 768;
		m.u.reg.dtype = LBP_DTYPE_F32;
		m.u.reg.max_seq = 512;
		m.u.reg.fp.chunks = 4;
		m.u.reg.fp.bits = 256;
		break;
	default:
		m.type = LBP_STATS;
		break;
	}
	int n = lbp_encode(&m, buf, cap);
	assert_true(n > 0);
	return (size_t)n;
}

static size_t mutate(uint8_t *buf, size_t len, size_t cap)
{
	switch (next() % 6) {
	case 0: /* pure noise */
		len = 1 + next() % 512;
		for (size_t i = 0; i < len; i++)
			buf[i] = (uint8_t)next();
		return len;
	case 1: /* truncated */
		return len > 1 ? 1 + next() % (len - 1) : len;
	case 2: /* trailing garbage */
		for (unsigned k = 1 + next() % 16; k-- && len < cap;)
			buf[len++] = (uint8_t)next();
		return len;
	case 3: /* oversized */
		return cap;
	default: /* a few bytes flipped or replaced with msgpack headers */
		for (unsigned k = 1 + next() % 4; k--;) {
			static const uint8_t hdr[] = { 0xc0, 0xc2, 0xc3, 0xcf, 0xd3, 0xdb, 0xdd, 0xdf,
						       0xc6, 0xca, 0xcb, 0xd4, 0xff, 0x00, 0x7f };
			size_t at = next() % len;
			buf[at] = next() % 2 ? (uint8_t)(buf[at] ^ (1u << (next() % 8))) : hdr[next() % sizeof(hdr)];
		}
		return len;
	}
}

static void test_storm_of_bad_frames(void **state)
{
	(void)state;
	static uint8_t buf[LBP_MAX_FRAME + 512];
	const char *const args[] = { "--arena-size", "8M", "--hugepages", "off", "--log-level",
				     "error", NULL };
	unsigned replies = 0, errors = 0, hangups = 0;

	printf("seed 0x%016llx, %d frames\n", (unsigned long long)rng, FRAMES);
	pid_t pid = lbt_daemon_start(&env, args);
	assert_true(pid > 0);
	int fd = -1;
	for (int i = 0; i < FRAMES; i++) {
		if (fd < 0) {
			fd = dial();
			if (next() % 2) { /* half the storm comes after a proper HELLO */
				size_t n;
				struct lbp_msg h = { .type = LBP_HELLO };
				h.u.hello.shm_abi = LB_SHM_ABI_VERSION;
				n = (size_t)lbp_encode(&h, buf, sizeof(buf));
				assert_int_equal(send(fd, buf, n, MSG_NOSIGNAL), (ssize_t)n);
				assert_int_equal(answer(fd), 1); /* WELCOME */
			}
		}
		size_t len = mutate(buf, valid_frame(buf, sizeof(buf)), sizeof(buf));
		assert_int_equal(send(fd, buf, len, MSG_NOSIGNAL), (ssize_t)len);
		int a = answer(fd);
		if (a < 0) {
			printf("frame %d (%zu bytes) got no answer within 10 s\n", i, len);
			lbt_cat(env.log);
		}
		assert_true(a >= 0);
		if (a == 1) {
			replies++;
		} else if (a == 2) {
			/* Most ERRORs end the connection: start the next frame on a fresh one. */
			errors++;
			close(fd);
			fd = -1;
		} else {
			hangups++;
			close(fd);
			fd = -1;
		}
		assert_true(lbt_alive(pid));
	}
	if (fd >= 0)
		close(fd);
	printf("%u replies, %u error replies, %u hang-ups\n", replies, errors, hangups);
	/* Most mutants are invalid, and each of those must have been refused. */
	assert_true(errors > FRAMES / 2);
	assert_true(replies > 0);

	/* The storm is over: a well-behaved client gets full service. */
	struct lb_client *c;
	struct lb_stats st;
	uint32_t id;
	const struct lb_model_desc d = { .name = "after-storm", .weights_hash = 7, .n_layers = 4,
					 .hidden = 64, .dtype = LB_DTYPE_F32, .max_seq = 128 };
	assert_int_equal(lb_connect(env.sock, "good", &c), 0);
	assert_int_equal(lb_register_model(c, &d, &id), 0);
	assert_int_equal(lb_stats(c, &st, sizeof(st)), 0);
	assert_int_equal(st.clients, 1);
	lb_close(c);
	assert_true(lbt_daemon_stop(&env));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_prestate_setup_teardown(test_storm_of_bad_frames, lbt_env_setup,
							 lbt_env_teardown, &env),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
