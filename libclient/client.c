/* liblayerbank connection: socket, HELLO/WELCOME with arena fds, read-only arena mappings and
 * the client's region, and the request/reply calls of the control protocol. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "client_internal.h"
#include "client_local.h"

#define LB_REPLY_TIMEOUT_NS 5000000000ull      /* a control reply */
#define LB_SNAPSHOT_TIMEOUT_NS 600000000000ull /* SNAPSHOT's, once the file is on disk */

static void close_fds(const int *fds, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		close(fds[i]);
}

/* Send req; receive one reply into rep, with up to max_fds fds into fds (*n_fds received).
 * An ERROR reply is turned into -code with the message kept in last_error. */
static int call_once(struct lb_client *c, const struct lbp_msg *req, struct lbp_msg *rep, int *fds,
		     unsigned max_fds, unsigned *n_fds);

/* A control call on a connected client; the daemon's hang-up makes it lost (see lbi_lost). */
static int call(struct lb_client *c, const struct lbp_msg *req, struct lbp_msg *rep, int *fds,
		unsigned max_fds, unsigned *n_fds)
{
	int ret;
	if (c->lost) {
		ret = lbi_ready(c);
		if (ret < 0)
			return ret;
	}
	ret = call_once(c, req, rep, fds, max_fds, n_fds);
	if (ret == -ECONNRESET || ret == -EPIPE)
		return lbi_lost(c);
	return ret;
}

static int send_msg(struct lb_client *c, const struct lbp_msg *req)
{
	ssize_t n;
	int len;

	c->last_error[0] = '\0';
	len = lbp_encode(req, c->buf, sizeof(c->buf));
	if (len < 0)
		return len;
	do
		n = send(c->fd, c->buf, (size_t)len, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return errno == EAGAIN ? -ETIMEDOUT : -errno;
	return 0;
}

/* Receive one reply into rep, with up to max_fds fds into fds (*n_fds received). An ERROR
 * reply is turned into -code with the message kept in last_error. */
static int recv_reply(struct lb_client *c, struct lbp_msg *rep, int *fds, unsigned max_fds,
		      unsigned *n_fds)
{
	union {
		char buf[CMSG_SPACE(sizeof(int) * (LBP_MAX_ARENAS + 1))];
		struct cmsghdr align;
	} cmsg;
	struct iovec iov = { c->buf, sizeof(c->buf) };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
	struct lbp_fault fault;
	unsigned got = 0;
	ssize_t n;
	int ret;

	msg.msg_control = cmsg.buf;
	msg.msg_controllen = sizeof(cmsg.buf);
	do
		n = recvmsg(c->fd, &msg, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return errno == EAGAIN ? -ETIMEDOUT : -errno;
	if (n == 0)
		return -ECONNRESET;
	/* Take every fd the kernel gave us first, so that none leaks whatever comes next. */
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
			continue;
		unsigned k = (unsigned)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
		if (k > LBP_MAX_ARENAS + 1)
			k = LBP_MAX_ARENAS + 1; /* cannot happen with our cmsg buffer; stay in tmp */
		int tmp[LBP_MAX_ARENAS + 1];
		memcpy(tmp, CMSG_DATA(cm), k * sizeof(int));
		for (unsigned i = 0; i < k; i++) {
			if (got < max_fds)
				fds[got++] = tmp[i];
			else
				close(tmp[i]);
		}
	}
	ret = lbp_decode(c->buf, (size_t)n, rep, &fault);
	if (ret == 0 && (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)))
		ret = -EPROTO;
	if (ret < 0) {
		snprintf(c->last_error, sizeof(c->last_error), "bad reply from layerbankd: %s %s",
			 fault.field, fault.reason);
		close_fds(fds, got);
		return -EPROTO;
	}
	if (rep->type == LBP_ERROR) {
		snprintf(c->last_error, sizeof(c->last_error), "%s%s%s", rep->u.error.field,
			 rep->u.error.field[0] ? ": " : "", rep->u.error.message);
		close_fds(fds, got);
		return -rep->u.error.code;
	}
	if (n_fds)
		*n_fds = got;
	else
		close_fds(fds, got);
	return 0;
}

static int call_once(struct lb_client *c, const struct lbp_msg *req, struct lbp_msg *rep, int *fds,
		     unsigned max_fds, unsigned *n_fds)
{
	int ret = send_msg(c, req);
	return ret < 0 ? ret : recv_reply(c, rep, fds, max_fds, n_fds);
}

/* Map and check the region passed in WELCOME. @return 0, or -errno with last_error set. */
static int region_map(struct lb_client *c, int fd, const struct lbp_region_desc *d)
{
	struct stat st;
	uint64_t bytes;

	c->region_fd = fd;
	bytes = lb_region_layout(&c->layout, d->req_entries, d->cpl_entries, d->staging_bytes);
	if (!bytes || bytes != d->bytes || fstat(fd, &st) < 0 || (uint64_t)st.st_size != bytes) {
		snprintf(c->last_error, sizeof(c->last_error), "the client region does not match WELCOME");
		return -EPROTO;
	}
	void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
	if (p == MAP_FAILED) {
		int e = errno;
		snprintf(c->last_error, sizeof(c->last_error), "mmap client region: %s", strerror(e));
		return -e;
	}
	c->region = p;
	c->region_bytes = bytes;
	/* Plain loads: the daemon wrote the header before it sent the fd (as for arenas,
	 * lbp_arena_hdr_check). */
	const struct lb_region_hdr *h = p;
	if (h->magic != LB_REGION_MAGIC || h->req_off != c->layout.req_off ||
	    h->cpl_off != c->layout.cpl_off || h->staging_off != c->layout.staging_off) {
		snprintf(c->last_error, sizeof(c->last_error), "the client region's header is wrong");
		return -EPROTO;
	}
	lb_ring_view_init(&c->req, c->region + c->layout.req_off, c->layout.req_entries);
	lb_ring_view_init(&c->cpl, c->region + c->layout.cpl_off, c->layout.cpl_entries);
	c->staging = c->region + c->layout.staging_off;
	return 0;
}

static void region_unmap(struct lb_client *c)
{
	if (c->region)
		munmap(c->region, c->region_bytes);
	if (c->region_fd >= 0)
		close(c->region_fd);
	c->region = NULL;
	c->region_fd = -1;
}

/* Arena i of WELCOME goes to c->arenas[its index]: completions name arenas by index, and the
 * arenas of tenants we may not read are holes (fd -1, nothing mapped). */
static int map_arenas(struct lb_client *c, const struct lbp_welcome *w, const int *fds, unsigned n)
{
	if (n != w->n_arenas + 1) {
		snprintf(c->last_error, sizeof(c->last_error),
			 "WELCOME announced %u arenas and a region, %u fds came", w->n_arenas, n);
		close_fds(fds, n);
		return -EPROTO;
	}
	/* The region first: from here on every fd is owned by c, and lb_close frees it. */
	int ret = region_map(c, fds[n - 1], &w->region);
	n--;
	if (ret < 0) {
		close_fds(fds, n);
		return ret;
	}
	for (unsigned k = 0; k < LBP_MAX_ARENAS; k++)
		c->arenas[k] = (struct lb_arena_map){ .fd = -1 };
	for (unsigned i = 0; i < n; i++) {
		unsigned idx = w->arenas[i].index;
		struct lb_arena_map *a = &c->arenas[idx];
		const char *why = NULL;
		struct stat st;

		if (i && idx <= w->arenas[i - 1].index) {
			/* Rising: no slot is taken twice, so no fd is lost. */
			snprintf(c->last_error, sizeof(c->last_error),
				 "WELCOME's arena %u: index %u not above the one before", i, idx);
			close_fds(fds + i, n - i);
			return -EPROTO;
		}
		a->fd = fds[i];
		c->n_arenas = idx + 1;
		if (fstat(a->fd, &st) < 0 || (uint64_t)st.st_size != w->arenas[i].bytes) {
			why = "size differs from WELCOME";
		} else {
			void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, a->fd, 0);
			if (p == MAP_FAILED) {
				int e = errno;
				snprintf(c->last_error, sizeof(c->last_error), "mmap arena %u: %s", idx,
					 strerror(e));
				close_fds(fds + i + 1, n - i - 1);
				return -e;
			}
			a->base = p;
			a->bytes = (size_t)st.st_size;
			const struct lb_arena_hdr *h = a->base;
			if (lbp_arena_hdr_check(h, a->bytes, &why) == 0) {
				if (memcmp(h->boot_id, w->boot_id, sizeof(h->boot_id)) != 0)
					why = "boot id differs from WELCOME";
				else if (h->arena_index != idx)
					why = "arena_index differs from its index in WELCOME";
			}
		}
		if (why) {
			snprintf(c->last_error, sizeof(c->last_error), "arena %u: %s", idx, why);
			close_fds(fds + i + 1, n - i - 1);
			return -EPROTO;
		}
	}
	return 0;
}

static struct lb_client *client_new(void)
{
	struct lb_client *c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->fd = -1;
	c->region_fd = -1;
	c->reserved_off = UINT64_MAX;
	c->reserve_orphan = -1;
	c->spin_ns = 50000;
	lbu_spare_open(&c->spare);
	c->wait_ns = LBI_WAIT_NS;
	const char *w = getenv(LBI_WAIT_ENV);
	char *end;
	unsigned long long us = w && *w ? strtoull(w, &end, 10) : 0;
	if (us && !*end && us <= 600000000ull)
		c->wait_ns = us * 1000;
	return c;
}

static void unmap_arenas(struct lb_arena_map *a, unsigned n)
{
	for (unsigned i = 0; i < n; i++) {
		if (a[i].base)
			munmap((void *)(uintptr_t)a[i].base, a[i].bytes);
		if (a[i].fd >= 0)
			close(a[i].fd);
	}
}

/* Close the socket and unmap what this connection mapped (not the orphans). */
static void drop_conn(struct lb_client *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	unmap_arenas(c->arenas, c->n_arenas);
	c->n_arenas = 0;
	region_unmap(c);
}

static void set_timeouts(int fd, uint64_t ns)
{
	struct timeval tv = { (time_t)(ns / 1000000000ull), (suseconds_t)(ns % 1000000000ull / 1000) };
	if (!tv.tv_sec && !tv.tv_usec)
		tv.tv_usec = 1; /* 0 would mean no limit */
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

/* $LAYERBANK_NUMA_NODE, else the node of the CPU we run on now; -1 when neither says. A node
 * the daemon has no arena on is its to ignore. */
static int32_t numa_node(void)
{
	const char *v = getenv(LB_NUMA_NODE_ENV);
	unsigned cpu, node;
	char *end;

	if (v && *v) {
		long n = strtol(v, &end, 10);
		return !*end && n >= 0 && n <= INT32_MAX ? (int32_t)n : -1;
	}
	if (syscall(SYS_getcpu, &cpu, &node, NULL) < 0 || node > INT32_MAX)
		return -1;
	return (int32_t)node;
}

/* Socket and HELLO, every wait bounded by timeout_ns. On failure the caller calls drop_conn.
 * @return 0 or as lb_connect. */
static int start_conn(struct lb_client *c, uint64_t timeout_ns)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct lbp_msg req = { .type = LBP_HELLO };

	c->fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (c->fd < 0)
		return -errno;
	/* Bounded waits: a wedged daemon must not hang the worker. */
	set_timeouts(c->fd, timeout_ns);
	memcpy(sa.sun_path, c->socket_path, strlen(c->socket_path) + 1);
	if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		return errno == EINPROGRESS || errno == EAGAIN ? -ETIMEDOUT : -errno;
	req.u.hello.shm_abi = LB_SHM_ABI_VERSION;
	memcpy(req.u.hello.name, c->name, strlen(c->name) + 1);
	req.u.hello.numa_node = numa_node();
	int ret = send_msg(c, &req);
	/* A daemon that refused us at accept (too many connections of our uid, PROTOCOL.md 4.1)
	 * may have closed already: its ERROR is still there for finish_conn to read. */
	return ret == -EPIPE || ret == -ECONNRESET ? 0 : ret;
}

/* WELCOME and the mappings, after start_conn. On failure the caller calls drop_conn.
 * @return 0 or as lb_connect. */
static int finish_conn(struct lb_client *c)
{
	struct lbp_msg rep;
	int fds[LBP_MAX_ARENAS + 1];
	unsigned n_fds = 0;
	int ret = recv_reply(c, &rep, fds, LBP_MAX_ARENAS + 1, &n_fds);

	/* A daemon that refused us without reading our HELLO (too many connections of our uid
	 * waiting to be refused, PROTOCOL.md 4.1) closed with it unread, and the kernel reports
	 * that as ECONNRESET before the ERROR it sent: read once more for the ERROR. */
	if (ret == -ECONNRESET)
		ret = recv_reply(c, &rep, fds, LBP_MAX_ARENAS + 1, &n_fds);
	if (ret < 0)
		return ret;
	if (rep.type != LBP_WELCOME) {
		close_fds(fds, n_fds);
		return -EPROTO;
	}
	ret = map_arenas(c, &rep.u.welcome, fds, n_fds);
	if (ret < 0)
		return ret;
	c->client_id = rep.u.welcome.client_id;
	memcpy(c->boot_id, rep.u.welcome.boot_id, sizeof(c->boot_id));
	return 0;
}

int lbi_client_local(const struct lbp_welcome *w, const int *fds, unsigned n, void (*pump)(void *),
		     void *ctx, struct lb_client **out)
{
	struct lb_client *c = client_new();
	*out = NULL;
	if (!c) {
		close_fds(fds, n);
		return -ENOMEM;
	}
	int ret = map_arenas(c, w, fds, n);
	if (ret < 0) {
		lb_close(c);
		return ret;
	}
	c->client_id = w->client_id;
	memcpy(c->boot_id, w->boot_id, sizeof(c->boot_id));
	c->pump = pump;
	c->pump_ctx = ctx;
	*out = c;
	return 0;
}

/* Why this thread's last lb_connect failed, as the daemon said it: lb_last_error(NULL). The
 * client it was said to is gone by the time lb_connect returns. */
static _Thread_local char connect_error[sizeof(((struct lb_client *)0)->last_error)];

LB_EXPORT int lb_connect(const char *socket_path, const char *name, struct lb_client **out)
{
	struct sockaddr_un sa;
	struct lb_client *c;
	int ret;

	*out = NULL;
	connect_error[0] = '\0';
	if (!socket_path)
		socket_path = getenv(LB_SOCKET_ENV);
	if (!socket_path || !*socket_path)
		socket_path = LB_DEFAULT_SOCKET;
	_Static_assert(sizeof(((struct lb_client *)0)->socket_path) == sizeof(sa.sun_path),
		       "the client keeps a path that fits sun_path");
	if (strlen(socket_path) >= sizeof(sa.sun_path) || (name && strlen(name) > LB_NAME_MAX))
		return -ENAMETOOLONG;
	c = client_new();
	if (!c)
		return -ENOMEM;
	memcpy(c->socket_path, socket_path, strlen(socket_path) + 1);
	if (name)
		memcpy(c->name, name, strlen(name) + 1);
	ret = start_conn(c, LB_REPLY_TIMEOUT_NS);
	if (ret == 0)
		ret = finish_conn(c);
	if (ret < 0) {
		memcpy(connect_error, c->last_error, sizeof(connect_error));
		lb_close(c);
		return ret;
	}
	*out = c;
	return 0;
}

static void orphan_free(struct lbi_orphan *o)
{
	unmap_arenas(o->arenas, o->n_arenas);
	if (o->region)
		munmap(o->region, o->region_bytes);
	if (o->region_fd >= 0)
		close(o->region_fd);
	lbi_leases_free(&o->leases);
}

LB_EXPORT void lb_close(struct lb_client *c)
{
	if (!c)
		return;
	/* Requests sent without waiting (lb_lem_run's inserts) are served before the goodbye,
	 * which the daemon may read first: a worker that exits after its last run loses none. */
	if (c->region && c->inflight && c->inflight == c->n_stale) {
		lbi_wake(c);
		(void)lbi_drain(c, c->wait_ns);
	}
	if (c->fd >= 0) {
		struct lbp_msg bye = { .type = LBP_BYE };
		int len = lbp_encode(&bye, c->buf, sizeof(c->buf));
		if (len > 0)
			(void)!send(c->fd, c->buf, (size_t)len, MSG_NOSIGNAL | MSG_DONTWAIT);
	}
	drop_conn(c);
	for (unsigned i = 0; i < c->n_orphans; i++)
		orphan_free(&c->orphans[i]);
	free(c->orphans);
	free(c->models);
	lbi_leases_free(&c->leases);
	lbu_spare_close(&c->spare);
	free(c);
}

/* ---- losing the daemon and coming back ---- */

bool lbi_hung_up(const struct lb_client *c)
{
	struct pollfd p = { c->fd, POLLRDHUP, 0 };
	if (c->fd < 0)
		return c->lost;
	return poll(&p, 1, 0) > 0 && (p.revents & (POLLHUP | POLLRDHUP | POLLERR));
}

int lbi_lost(struct lb_client *c)
{
	bool reserved = c->reserved_off != UINT64_MAX && c->reserve_orphan < 0;

	if (c->pump || c->lost)
		return -ECONNRESET;
	/* Hits point into the arenas and a reservation into the region: those stay mapped until
	 * the application lets go of them. */
	if (c->region || c->leases.n || c->untracked) {
		struct lbi_orphan *o = realloc(c->orphans, (c->n_orphans + 1) * sizeof(*o));
		if (o) {
			c->orphans = o;
			o += c->n_orphans;
			o->n_arenas = c->n_arenas;
			memcpy(o->arenas, c->arenas, sizeof(o->arenas));
			o->region_fd = c->region_fd;
			o->region = c->region;
			o->region_bytes = c->region_bytes;
			o->leases = c->leases;
			o->reserved = reserved;
			o->pinned = c->untracked;
			o->staging = true;
			if (reserved)
				c->reserve_orphan = (int)c->n_orphans;
			c->n_orphans++;
		}
		/* Without memory for the record the mappings are left in place for good: a
		 * leak, where unmapping would crash the application. */
		c->n_arenas = 0;
		c->region = NULL;
		c->region_fd = -1;
		c->leases = (struct lbi_leases){ NULL, 0, 0 };
		c->untracked = false;
	}
	drop_conn(c);
	c->lost = true;
	c->inflight = 0;
	c->n_stale = 0;
	c->stage_used = 0;
	c->retry_ns = lb_now_ns() + LBI_RETRY_NS;
	snprintf(c->last_error, sizeof(c->last_error), "layerbankd went away; reconnecting");
	return -ECONNRESET;
}

static void orphan_drop_if_unused(struct lb_client *c, unsigned i)
{
	struct lbi_orphan *o = &c->orphans[i];
	if (o->leases.n || o->reserved || o->pinned || o->staging)
		return;
	orphan_free(o);
	c->orphans[i] = c->orphans[--c->n_orphans];
	if (c->reserve_orphan == (int)c->n_orphans)
		c->reserve_orphan = (int)i;
}

bool lbi_orphan_release(struct lb_client *c, uint64_t lease)
{
	for (unsigned i = 0; i < c->n_orphans; i++) {
		if (lbi_leases_take(&c->orphans[i].leases, lease)) {
			orphan_drop_if_unused(c, i);
			return true;
		}
	}
	return false;
}

void lbi_orphan_unreserve(struct lb_client *c)
{
	int i = c->reserve_orphan;
	c->reserve_orphan = -1;
	if (i >= 0) {
		c->orphans[i].reserved = false;
		orphan_drop_if_unused(c, (unsigned)i);
	}
}

uint32_t lbi_model_id(const struct lb_client *c, uint32_t app_id)
{
	if (c->remapped)
		for (unsigned i = 0; i < c->n_models; i++)
			if (c->models[i].app_id == app_id)
				return c->models[i].cur_id;
	return app_id;
}

/* REGISTER_MODEL on the open connection. @return 0 with *id, or -errno. */
static int register_once(struct lb_client *c, const struct lbp_register_model *r, uint32_t *id)
{
	struct lbp_msg req = { .type = LBP_REGISTER_MODEL }, rep;
	int ret;

	req.u.reg = *r;
	ret = call_once(c, &req, &rep, NULL, 0, NULL);
	if (ret < 0)
		return ret;
	if (rep.type != LBP_MODEL)
		return -EPROTO;
	*id = rep.u.model.model_id;
	return 0;
}

/* Wait up to ns for the socket to be readable (or hung up). */
static bool readable(int fd, uint64_t ns)
{
	struct pollfd p = { fd, POLLIN, 0 };
	return poll(&p, 1, (int)((ns + 999999) / 1000000)) > 0;
}


/*
 * One step of coming back that never waits for the daemon (a worker must not stall on a
 * daemon that is still starting): connect and say HELLO; the WELCOME is looked for at this
 * and the next calls, without a new HELLO (each would cost the daemon a new region); then the
 * models are registered again, each answer awaited at most LBI_RECONNECT_BUDGET_NS.
 */
int lbi_ready(struct lb_client *c)
{
	uint64_t now, deadline;
	int ret = 0;

	/* A new call: the bytes of the last insert before the loss are no longer read. */
	for (unsigned i = c->n_orphans; i-- > 0;) {
		if (c->orphans[i].staging) {
			c->orphans[i].staging = false;
			orphan_drop_if_unused(c, i);
		}
	}
	if (!c->lost)
		return c->region ? 0 : -ENOTCONN;
	now = lb_now_ns();
	deadline = now + LBI_RECONNECT_BUDGET_NS;
	if (c->fd < 0) {
		if (now < c->retry_ns)
			return -ENOTCONN;
		c->retry_ns = now + LBI_RETRY_NS;
		c->hello_ns = now;
		ret = start_conn(c, LBI_RECONNECT_BUDGET_NS);
	}
	if (ret == 0 && !readable(c->fd, 0)) {
		if (lb_now_ns() - c->hello_ns < LB_REPLY_TIMEOUT_NS)
			return -ENOTCONN; /* still coming */
		ret = -ETIMEDOUT;
	}
	if (ret == 0)
		ret = finish_conn(c);
	c->remapped = false;
	for (unsigned i = 0; ret == 0 && i < c->n_models; i++) {
		now = lb_now_ns();
		/* REGISTER_MODEL is answered at once, unlike HELLO; a loaded machine still gets
		 * LBI_REGISTER_WAIT_NS, or every attempt would fail there and start over. */
		set_timeouts(c->fd, now < deadline ? deadline - now : LBI_REGISTER_WAIT_NS);
		ret = register_once(c, &c->models[i].msg, &c->models[i].cur_id);
		c->remapped |= c->models[i].cur_id != c->models[i].app_id;
	}
	if (ret < 0) {
		drop_conn(c);
		return -ENOTCONN;
	}
	set_timeouts(c->fd, LB_REPLY_TIMEOUT_NS);
	c->lost = false;
	/* The new daemon may have them. */
	c->sflight_off = c->any_len_off = c->tokens_off = false;
	c->reconnects++;
	c->last_error[0] = '\0';
	return 0;
}

LB_EXPORT uint32_t lb_reconnects(const struct lb_client *c)
{
	return c->reconnects;
}

LB_EXPORT bool lb_connected(const struct lb_client *c)
{
	return c->region != NULL;
}

LB_EXPORT const char *lb_last_error(const struct lb_client *c)
{
	return c ? c->last_error : connect_error;
}

LB_EXPORT int lb_register_model(struct lb_client *c, const struct lb_model_desc *d, uint32_t *model_id)
{
	struct lbp_msg req = { .type = LBP_REGISTER_MODEL }, rep;
	struct lbp_register_model *r = &req.u.reg;
	int ret;

	if (!model_id || lbp_register_from_desc(d, r) < 0)
		return -EINVAL;
	/* The encoder checks every range the daemon would: a bad field never leaves the process. */
	ret = call(c, &req, &rep, NULL, 0, NULL);
	if (ret == -EINVAL && !c->last_error[0])
		snprintf(c->last_error, sizeof(c->last_error), "model description out of range");
	if (ret < 0)
		return ret;
	if (rep.type != LBP_MODEL)
		return -EPROTO;
	return lbi_client_model(c, r, rep.u.model.model_id, model_id);
}

const struct lbp_register_model *lbi_model_desc(const struct lb_client *c, uint32_t app_id)
{
	for (unsigned i = 0; i < c->n_models; i++)
		if (c->models[i].app_id == app_id)
			return &c->models[i].msg;
	return NULL;
}

int lbi_client_model(struct lb_client *c, const struct lbp_register_model *r, uint32_t id,
		     uint32_t *model_id)
{
	/* Kept to be registered again after a reconnect; the daemon gives one model one id. */
	for (unsigned i = 0; i < c->n_models; i++) {
		if (c->models[i].cur_id == id) {
			*model_id = c->models[i].app_id;
			return 0;
		}
	}
	struct lbi_model *m = realloc(c->models, (c->n_models + 1) * sizeof(*m));
	if (!m)
		return -ENOMEM;
	c->models = m;
	/* After a reconnect the daemon may give a new model an id the application already knows
	 * for another one: the application then gets an unused one, translated on each request. */
	uint32_t app = id, top = 0;
	for (unsigned i = 0; i < c->n_models; i++) {
		top = m[i].app_id > top ? m[i].app_id : top;
		if (m[i].app_id == id)
			app = 0;
	}
	if (!app)
		app = top + 1;
	c->remapped |= app != id;
	m[c->n_models++] = (struct lbi_model){ *r, app, id };
	*model_id = app;
	return 0;
}

void lbi_stats_from_reply(const struct lbp_stats_reply *r, struct lb_stats *st)
{
	memset(st, 0, sizeof(*st));
	st->page_size = r->page_size;
	st->arena_bytes = r->arena_bytes;
	st->numa_nodes = r->numa_nodes;
	st->hugepages = r->hugepages;
	st->clients = r->clients;
	st->models = r->models;
	st->uptime_s = r->uptime_s;
	st->threads = r->threads;
	memcpy(st->policy, r->policy, sizeof(st->policy));
	st->hits = r->hits;
	st->misses = r->misses;
	st->inserts = r->inserts;
	st->evictions = r->evictions;
	st->expirations = r->expirations;
	st->invalidations = r->invalidations;
	st->entries = r->entries;
	st->leases = r->leases;
	st->bytes_used = r->bytes_used;
	st->bytes_budget = r->bytes_budget;
	st->fragmentation = r->fragmentation_ppm / 1e6;
	st->quota_refusals = r->quota_refusals;
	st->blocks = r->blocks;
	st->prefix_hits = r->prefix_hits;
	st->prefix_misses = r->prefix_misses;
	st->blocks_served = r->blocks_served;
	_Static_assert(sizeof(st->l2) == sizeof(r->l2), "the tier's state, NUL included");
	memcpy(st->l2, r->l2, sizeof(st->l2));
	st->l2_queue_bytes = r->l2_queue_bytes;
	st->l2_queue_records = r->l2_queue_records;
	st->l2_fetches_waiting = r->l2_fetches_waiting;
	st->l2_written = r->l2_written;
	st->l2_dropped = r->l2_dropped;
	st->l2_write_errors = r->l2_write_errors;
	st->l2_fetched = r->l2_fetched;
	st->l2_fetch_misses = r->l2_fetch_misses;
	st->l2_rejected = r->l2_rejected;
	st->l2_fetch_errors = r->l2_fetch_errors;
	st->tenants = r->tenants;
	_Static_assert(LB_MAX_NODES == LBP_MAX_NODES, "every row the protocol can carry");
	st->n_nodes = r->n_nodes < LB_MAX_NODES ? r->n_nodes : LB_MAX_NODES; /* the decoder's range */
	for (uint32_t i = 0; i < st->n_nodes; i++) {
		const struct lbp_node_stats *n = &r->nodes[i];
		st->nodes[i] = (struct lb_node_stats){ .node = n->node, .clients = n->clients,
							.arena_bytes = n->arena_bytes,
							.bytes_used = n->bytes_used,
							.entries = n->entries, .hits = n->hits,
							.inserts = n->inserts,
							.remote_inserts = n->remote_inserts };
	}
}

LB_EXPORT int lb_stats(struct lb_client *c, struct lb_stats *out, size_t size)
{
	struct lbp_msg req = { .type = LBP_STATS }, rep;
	struct lb_stats st;
	int ret;

	if (!out || size < offsetof(struct lb_stats, uptime_s) + sizeof(out->uptime_s))
		return -EINVAL;
	ret = call(c, &req, &rep, NULL, 0, NULL);
	if (ret < 0)
		return ret;
	if (rep.type != LBP_STATS_REPLY)
		return -EPROTO;
	lbi_stats_from_reply(&rep.u.stats, &st);
	memcpy(out, &st, size < sizeof(st) ? size : sizeof(st));
	return 0;
}

/* What one MODEL_STATS_REPLY layer gives the caller: layer i of out. */
typedef void (*layer_fill_fn)(void *out, uint32_t i, const struct lbp_layer_stats *l);

static void fill_stats(void *out, uint32_t i, const struct lbp_layer_stats *l)
{
	((struct lb_layer_stats *)out)[i] = (struct lb_layer_stats){ l->hits, l->misses, l->inserts,
								     l->evictions, l->entries,
								     l->bytes, l->leases };
}

static void fill_tau(void *out, uint32_t i, const struct lbp_layer_stats *l)
{
	((struct lb_layer_tau *)out)[i] = (struct lb_layer_tau){
		.tau = lb_fp_similarity((uint32_t)l->max_hamming),
		.max_hamming = (uint32_t)l->max_hamming,
		.reports = l->reports,
		.reports_over = l->reports_over,
		.drift_sum = (double)l->drift_micro * 1e-6,
	};
}

/* Every page of MODEL_STATS_REPLY up to max layers, each layer through fill into out.
 * @return the model's layer count, or as lb_model_stats. */
static int model_layers(struct lb_client *c, uint32_t model_id, char *name, void *out,
			uint32_t max, layer_fill_fn fill)
{
	struct lbp_msg req = { .type = LBP_MODEL_STATS }, rep;
	uint32_t first = 0, n_layers = 0;
	int ret;

	if (model_id == 0 || (max && !out))
		return -EINVAL;
	/* The daemon answers in pages of at most LBP_MAX_STATS_LAYERS layers. */
	do {
		req.u.mstats.model_id = lbi_model_id(c, model_id); /* the daemon's, after a reconnect */
		req.u.mstats.first_layer = first;
		ret = call(c, &req, &rep, NULL, 0, NULL);
		if (ret < 0)
			return ret;
		if (rep.type != LBP_MODEL_STATS_REPLY || rep.u.mstats_reply.first_layer != first)
			return -EPROTO;
		const struct lbp_model_stats_reply *r = &rep.u.mstats_reply;
		n_layers = r->n_layers;
		if (first == 0 && name)
			memcpy(name, r->name, LB_NAME_MAX + 1);
		for (uint32_t i = 0; i < r->n && first + i < max; i++)
			fill(out, first + i, &r->layers[i]);
		if (r->n == 0)
			break;
		first += r->n;
	} while (first < n_layers && first < max);
	return (int)n_layers;
}

LB_EXPORT int lb_model_stats(struct lb_client *c, uint32_t model_id, char *name,
			     struct lb_layer_stats *out, uint32_t max)
{
	return model_layers(c, model_id, name, out, max, fill_stats);
}

LB_EXPORT int lb_model_taus(struct lb_client *c, uint32_t model_id, struct lb_layer_tau *out,
			    uint32_t max)
{
	return model_layers(c, model_id, NULL, out, max, fill_tau);
}

LB_EXPORT int lb_snapshot(struct lb_client *c, struct lb_snapshot_info *out)
{
	struct lbp_msg req = { .type = LBP_SNAPSHOT }, rep;
	int ret;

	if (!c)
		return -EINVAL;
	/* The daemon answers once the file is on disk: a large arena takes a while. */
	if (c->fd >= 0)
		set_timeouts(c->fd, LB_SNAPSHOT_TIMEOUT_NS);
	ret = call(c, &req, &rep, NULL, 0, NULL);
	if (c->fd >= 0)
		set_timeouts(c->fd, LB_REPLY_TIMEOUT_NS);
	if (ret < 0)
		return ret;
	if (rep.type != LBP_SNAPSHOT_REPLY)
		return -EPROTO;
	if (out) {
		out->entries = rep.u.snapshot_reply.entries;
		out->bytes = rep.u.snapshot_reply.bytes;
		out->ms = rep.u.snapshot_reply.ms;
	}
	return 0;
}

LB_EXPORT int lb_flush(struct lb_client *c, uint32_t model_id, int32_t layer,
		       struct lb_flush_result *out)
{
	struct lbp_msg req = { .type = LBP_FLUSH }, rep;
	int ret;

	c->last_error[0] = '\0';
	if (layer < -1 || layer >= (int32_t)LBP_MAX_LAYERS || (model_id == 0 && layer != -1)) {
		if (model_id)
			snprintf(c->last_error, sizeof(c->last_error),
				 "layer %d is not -1 (every layer) or 0..%u", (int)layer,
				 LBP_MAX_LAYERS - 1);
		else
			snprintf(c->last_error, sizeof(c->last_error),
				 "layer %d of no model: model 0 means every layer of every model",
				 (int)layer);
		return -EINVAL;
	}
	/* The application's id, as lb_register_model gave it; the daemon's may differ after a
	 * reconnect. */
	req.u.flush.model_id = model_id ? lbi_model_id(c, model_id) : 0;
	req.u.flush.layer = layer;
	ret = call(c, &req, &rep, NULL, 0, NULL);
	if (ret < 0)
		return ret;
	if (rep.type != LBP_FLUSH_REPLY)
		return -EPROTO;
	if (out)
		*out = (struct lb_flush_result){ rep.u.flush_reply.entries, rep.u.flush_reply.bytes,
						 rep.u.flush_reply.leased };
	return 0;
}

_Static_assert(LB_CONFIG_KEY_MAX == LBP_MAX_CONFIG_KEY, "config key sizes");
_Static_assert(LB_CONFIG_VALUE_MAX == LBP_MAX_CONFIG_VALUE, "config value sizes");

/* A CONFIG_REPLY must be the page asked for, within its own total. */
static int config_reply_ok(const struct lbp_msg *rep, uint32_t first)
{
	const struct lbp_config_reply *r = &rep->u.config_reply;

	return rep->type == LBP_CONFIG_REPLY && r->first == first &&
	       (r->n == 0 || (first < r->total && r->n <= r->total - first));
}

LB_EXPORT int lb_config_get(struct lb_client *c, const char *key, struct lb_config_item *out,
			    uint32_t max)
{
	struct lbp_msg req = { .type = LBP_CONFIG_GET }, rep;
	uint32_t first = 0, total;
	int ret;

	c->last_error[0] = '\0';
	if (!key)
		key = "";
	if (strlen(key) > LBP_MAX_CONFIG_KEY || (max && !out)) {
		snprintf(c->last_error, sizeof(c->last_error), "a setting's name is at most %u bytes",
			 LBP_MAX_CONFIG_KEY);
		return -EINVAL;
	}
	memcpy(req.u.config_get.key, key, strlen(key) + 1);
	/* The daemon answers in pages of at most LBP_MAX_CONFIG_ITEMS. */
	do {
		req.u.config_get.first = first;
		ret = call(c, &req, &rep, NULL, 0, NULL);
		if (ret < 0)
			return ret;
		if (!config_reply_ok(&rep, first))
			return -EPROTO;
		const struct lbp_config_reply *r = &rep.u.config_reply;
		total = r->total;
		for (uint32_t i = 0; i < r->n && first + i < max; i++) {
			memcpy(out[first + i].key, r->items[i].key, sizeof(out->key));
			memcpy(out[first + i].value, r->items[i].value, sizeof(out->value));
		}
		if (r->n == 0)
			break;
		first += r->n;
	} while (first < total && first < max);
	return total > INT32_MAX ? INT32_MAX : (int)total;
}

LB_EXPORT int lb_config_set(struct lb_client *c, const char *key, const char *value,
			    struct lb_config_item *now)
{
	struct lbp_msg req = { .type = LBP_CONFIG_SET }, rep;
	int ret;

	c->last_error[0] = '\0';
	if (!key || !value || !*key || !*value || strlen(key) > LBP_MAX_CONFIG_KEY ||
	    strlen(value) > LBP_MAX_CONFIG_VALUE) {
		snprintf(c->last_error, sizeof(c->last_error),
			 "a setting's name is 1..%u bytes and its value 1..%u", LBP_MAX_CONFIG_KEY,
			 LBP_MAX_CONFIG_VALUE);
		return -EINVAL;
	}
	memcpy(req.u.config_set.key, key, strlen(key) + 1);
	memcpy(req.u.config_set.value, value, strlen(value) + 1);
	ret = call(c, &req, &rep, NULL, 0, NULL);
	if (ret < 0)
		return ret;
	if (!config_reply_ok(&rep, 0) || rep.u.config_reply.n != 1)
		return -EPROTO;
	if (now) {
		memcpy(now->key, rep.u.config_reply.items[0].key, sizeof(now->key));
		memcpy(now->value, rep.u.config_reply.items[0].value, sizeof(now->value));
	}
	return 0;
}

LB_EXPORT unsigned lb_arena_count(const struct lb_client *c)
{
	return c->n_arenas;
}

LB_EXPORT const void *lb_arena_base(const struct lb_client *c, unsigned i, size_t *bytes)
{
	if (i >= c->n_arenas)
		return NULL;
	if (bytes)
		*bytes = c->arenas[i].bytes;
	return c->arenas[i].base;
}

LB_EXPORT int lb_arena_fd(const struct lb_client *c, unsigned i)
{
	if (i >= c->n_arenas)
		return -EINVAL;
	return c->arenas[i].fd >= 0 ? c->arenas[i].fd : -EACCES;
}
