/* layerbankd control server: socket setup, connection lifecycle and message handling.
 * A connection has at most two ops in flight: a recv or the send of its reply, and a poll on
 * its client process's pidfd. Whichever learns first that the client is gone ends it
 * (conn_end) and cancels the other; the struct is freed by the last completion. */
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <numa.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include "errf.h"
#include "l2.h" /* struct lbd_l2_stats: the tier's code is not linked here */
#include "log.h"
#include "sd.h"
#include "snapshot.h"
#include "uids.h"

struct lbd_conn {
	struct lbd_op op;      /* the connection's recv or send: one at a time */
	struct lbd_op pid_op;  /* the poll on pidfd: completes when the client's process exits */
	struct lbd_server *s;
	struct lbd_conn *prev, *next;
	int fd;
	int pidfd;             /* -1: not watched; the socket's hang-up alone ends the client */
	bool io_busy;          /* op is in flight */
	bool pid_busy;         /* pid_op is in flight */
	bool ended;            /* conn_end ran: freed once neither op is in flight */
	bool sending;          /* op is the reply's send, else a recv */
	bool close_after_send; /* the reply reports a protocol violation: hang up after it */
	bool hello;
	uint64_t client_id;
	struct ucred cred;
	bool cred_ok;          /* SO_PEERCRED answered: cred is the peer's, not a placeholder */
	char name[LBP_MAX_NAME + 1];
	struct lbd_dpclient *dp; /* its data plane, once HELLO made one */
	struct lbd_uid_use *uid_use;       /* its uid's counts, given back by conn_end; NULL: none */
	enum lbd_uid_verdict uid_verdict;  /* counted as a connection, or to be refused at HELLO */
	uint64_t staging;                  /* its region's staging, counted in uid_use->staging */
	struct lbd_leases sock_leases; /* LOOKUP over the socket: taken and ended at once */
	struct msghdr msg;
	struct iovec iov;
	_Alignas(struct cmsghdr) char cmsg[CMSG_SPACE(sizeof(int) * (LBD_MAX_ARENAS + 1))];
	uint8_t rx[LBP_MAX_FRAME + 1]; /* one byte more than a frame may be: tells oversize apart */
	uint8_t tx[LBP_MAX_FRAME];
};

#define container_of(p, type, member) ((type *)(void *)((char *)(p)-offsetof(type, member)))

static void conn_on_op(struct lbd_op *op, int res);
static void conn_on_exit(struct lbd_op *op, int res);

/* ---- connection lifecycle ---- */

/* Free an ended connection once none of its ops is in flight: until then the kernel may still
 * write into c->rx or read c->pidfd. */
static void conn_release(struct lbd_conn *c)
{
	struct lbd_server *s = c->s;
	if (!c->ended || c->io_busy || c->pid_busy)
		return;
	if (c->prev)
		c->prev->next = c->next;
	else
		s->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	s->n_conns--;
	if (c->pidfd >= 0)
		close(c->pidfd);
	close(c->fd);
	free(c);
}

/*
 * End the client, once, however we learnt that it is gone (hang-up, BYE, its process's exit,
 * a protocol violation, a full submission queue): it stops counting as a client, its service
 * thread ends its leases and frees its region (ring requests not yet taken are dropped), and
 * its ops still in flight are cancelled; the last of them to complete frees the struct.
 * c must not be used after this call.
 */
static void conn_end(struct lbd_conn *c)
{
	struct lbd_server *s = c->s;

	c->ended = true;
	if (c->hello)
		s->n_clients--;
	lbd_uids_leave(&s->uids, c->uid_use, c->uid_verdict, c->staging);
	c->uid_use = NULL;
	if (c->dp)
		lbd_service_detach(&s->service, c->dp);
	c->dp = NULL;
	lbd_leases_free(&c->sock_leases);
	if (c->io_busy) {
		/* The socket may live on in another process: tell it the session is over, and
		 * shutdown also ends the recv or send should the cancel find no slot. */
		shutdown(c->fd, SHUT_RDWR);
		lbd_loop_cancel(&s->loop, &c->op, &s->cancel_op);
	}
	/* Without a slot for this cancel the poll ends when the process does. */
	if (c->pid_busy && lbd_loop_cancel(&s->loop, &c->pid_op, &s->cancel_op) < 0)
		lbd_warn("client %" PRIu64 ": submission queue full: its connection is freed when "
			 "pid %d exits", c->client_id, (int)c->cred.pid);
	conn_release(c);
}

static void conn_recv(struct lbd_conn *c)
{
	c->sending = false;
	if (lbd_loop_recv(&c->s->loop, c->fd, c->rx, sizeof(c->rx), &c->op) < 0) {
		lbd_warn("client %" PRIu64 " (pid %d): submission queue full, dropping it", c->client_id,
			 (int)c->cred.pid);
		conn_end(c);
		return;
	}
	c->io_busy = true;
}

/* Encode m and send it, with fds when n_fds > 0. */
static void conn_reply(struct lbd_conn *c, const struct lbp_msg *m, const int *fds, unsigned n_fds)
{
	int len = lbp_encode(m, c->tx, sizeof(c->tx));
	if (len < 0) {
		/* Our own message out of range: an internal bug, but one client's, not the daemon's. */
		lbd_err("cannot encode %s for client %" PRIu64 ": %s", lbp_type_name(m->type),
			c->client_id, strerror(-len));
		conn_end(c);
		return;
	}
	memset(&c->msg, 0, sizeof(c->msg));
	c->iov.iov_base = c->tx;
	c->iov.iov_len = (size_t)len;
	c->msg.msg_iov = &c->iov;
	c->msg.msg_iovlen = 1;
	if (n_fds) {
		struct cmsghdr *cm;
		c->msg.msg_control = c->cmsg;
		c->msg.msg_controllen = CMSG_SPACE(sizeof(int) * n_fds);
		cm = CMSG_FIRSTHDR(&c->msg);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int) * n_fds);
		memcpy(CMSG_DATA(cm), fds, sizeof(int) * n_fds);
	}
	c->sending = true;
	if (lbd_loop_sendmsg(&c->s->loop, c->fd, &c->msg, &c->op) < 0) {
		lbd_warn("client %" PRIu64 ": submission queue full, dropping it", c->client_id);
		conn_end(c);
		return;
	}
	c->io_busy = true;
}

/* Reply with an ERROR; fatal ones (protocol violations) close the connection after the send. */
static void conn_error(struct lbd_conn *c, bool fatal, int code, const char *field, const char *text)
{
	struct lbp_msg m;
	lbp_make_error(&m, code, field, "%s", text);
	if (fatal)
		lbd_warn("client %" PRIu64 " (pid %d uid %u): %s%s%s; closing its connection",
			 c->client_id, (int)c->cred.pid, (unsigned)c->cred.uid, field,
			 *field ? ": " : "", text);
	c->close_after_send = fatal;
	conn_reply(c, &m, NULL, 0);
}

/* ---- messages ---- */

void lbd_server_set_tier(struct lbd_server *s, struct lbd_l2 *t, lbd_l2_stats_fn stats)
{
	s->l2 = t && stats ? t : NULL;
	s->l2_stats = s->l2 ? stats : NULL;
}

/* The second tier's part of STATS: "off" and zeros without one. */
static void fill_l2_stats(const struct lbd_server *s, struct lbp_stats_reply *r)
{
	struct lbd_l2_stats l2;

	if (!s->l2) {
		snprintf(r->l2, sizeof(r->l2), "off");
		return;
	}
	s->l2_stats(s->l2, &l2);
	snprintf(r->l2, sizeof(r->l2), "%s", l2.up ? "up" : "down");
	r->l2_queue_bytes = l2.queue_bytes;
	r->l2_queue_records = l2.queue_records;
	r->l2_fetches_waiting = l2.fetches_waiting;
	r->l2_written = l2.written;
	r->l2_dropped = l2.dropped;
	r->l2_write_errors = l2.write_errors;
	r->l2_fetched = l2.fetched;
	r->l2_fetch_misses = l2.fetch_misses;
	r->l2_rejected = l2.rejected;
	r->l2_fetch_errors = l2.fetch_errors;
}

/* A row per node: its arenas over all tenants, and the clients that said they run on it. */
static void fill_node_stats(const struct lbd_server *s, struct lbp_stats_reply *r)
{
	struct lbd_arena_counts ac[LBD_MAX_ARENAS];

	lbd_store_arena_counts(s->store, ac);
	r->n_nodes = s->n_nodes < LBP_MAX_NODES ? s->n_nodes : LBP_MAX_NODES;
	for (unsigned k = 0; k < r->n_nodes; k++) {
		struct lbp_node_stats *n = &r->nodes[k];
		n->node = s->nodes[k];
		for (unsigned i = 0; i < s->n_arenas; i++) {
			if (s->arenas[i].node != n->node)
				continue;
			n->arena_bytes += s->arenas[i].bytes;
			n->bytes_used += ac[i].bytes_used;
			n->entries += ac[i].entries;
			n->hits += ac[i].hits;
			n->inserts += ac[i].inserts;
			n->remote_inserts += ac[i].remote;
		}
		for (const struct lbd_conn *c = s->conns; c; c = c->next)
			n->clients += c->hello && !c->ended && c->dp && c->dp->node == n->node;
	}
}

static void fill_stats(const struct lbd_server *s, struct lbp_stats_reply *r)
{
	struct timespec now;
	memset(r, 0, sizeof(*r));
	r->page_size = s->arenas[0].page_size;
	r->hugepages = true;
	for (unsigned i = 0; i < s->n_arenas; i++) {
		r->arena_bytes += s->arenas[i].bytes;
		if (s->arenas[i].page_size < r->page_size)
			r->page_size = s->arenas[i].page_size;
		r->hugepages = r->hugepages && s->arenas[i].huge;
	}
	r->numa_nodes = s->n_arenas;
	r->tenants = lbd_config_tenants(s->cfg);
	fill_node_stats(s, r);
	r->clients = s->n_clients;
	r->models = s->models.count;
	r->threads = s->threads;
	lbd_store_stats(s->store, r);
	fill_l2_stats(s, r);
	clock_gettime(CLOCK_MONOTONIC, &now);
	r->uptime_s = (uint64_t)(now.tv_sec - s->started.tv_sec);
}

/* The node a client says it runs on, if it has arenas here; else -1 (no preference). */
static int home_node(const struct lbd_server *s, int32_t node)
{
	for (unsigned k = 0; node >= 0 && k < s->n_nodes; k++)
		if (s->nodes[k] == node)
			return node;
	return -1;
}

/* ---- limits per uid (uids.h; tests/fault/ISOLATION.md) ---- */

/* Why a connection past max-connections-per-uid is refused. */
static void uid_limit_text(const struct lbd_conn *c, char *text, size_t n)
{
	unsigned max = c->s->cfg->conns_per_uid;
	snprintf(text, n, "uid %u already holds %u connection%s, the most one uid may hold "
		 "(max-connections-per-uid = %u)", (unsigned)c->cred.uid, max, max == 1 ? "" : "s",
		 max);
}

/* A connection accepted past its uid's limit: its first frame gets the refusal. @return true
 * when c was refused. */
static bool refuse_past_uid_limit(struct lbd_conn *c)
{
	char text[LBP_MAX_ERRMSG];

	if (c->uid_verdict != LBD_UID_REFUSE)
		return false;
	uid_limit_text(c, text, sizeof(text));
	conn_error(c, true, EUSERS, "", text);
	return true;
}

/* The staging c's region is granted: its wish within the daemon's bounds, cut to what its
 * uid's staging-per-uid leaves. @return the bytes, or 0 when too little is left and c was
 * refused (ENOBUFS). */
static uint64_t grant_staging(struct lbd_conn *c, uint64_t wish)
{
	const struct lbd_server *s = c->s;
	uint64_t cap = s->cfg->staging_per_uid;
	uint64_t grant = lbd_uids_staging_grant(c->uid_use, cap, lbd_region_staging(&s->limits, wish));
	char text[LBP_MAX_ERRMSG];

	if (grant)
		return grant;
	snprintf(text, sizeof(text), "uid %u's connections hold %" PRIu64 " of the %" PRIu64
		 " staging bytes one uid may have (staging-per-uid); a connection needs %u",
		 (unsigned)c->cred.uid, c->uid_use->staging, cap, LBD_STAGING_MIN);
	conn_error(c, true, ENOBUFS, "staging_bytes", text);
	return 0;
}

static void on_hello(struct lbd_conn *c, const struct lbp_hello *h)
{
	struct lbd_server *s = c->s;
	struct lbp_msg m = { .type = LBP_WELCOME };
	int fds[LBD_MAX_ARENAS + 1];
	char text[128];

	if (c->hello) {
		conn_error(c, true, EPROTO, "type", "HELLO sent twice");
		return;
	}
	if (refuse_past_uid_limit(c))
		return;
	if (h->shm_abi != LB_SHM_ABI_VERSION) {
		snprintf(text, sizeof(text), "arena ABI %u is not supported; this daemon has ABI %u",
			 h->shm_abi, LB_SHM_ABI_VERSION);
		conn_error(c, true, EPROTO, "shm_abi", text);
		return;
	}
	uint64_t staging = grant_staging(c, h->staging_bytes);
	if (!staging)
		return;
	c->dp = lbd_dpclient_new(&s->limits, h->req_entries, h->cpl_entries, staging,
				 s->next_client_id, c->cred.pid);
	if (!c->dp) {
		int e = errno ? errno : ENOMEM;
		snprintf(text, sizeof(text), "cannot make the client's rings: %s", strerror(e));
		conn_error(c, true, e, "staging_bytes", text);
		return;
	}
	/* Every client has an account, limited or not: its entries' bytes are counted alike. One
	 * per uid (the key uid + 1), which a new connection of the uid opens again while its
	 * entries are charged to it. */
	c->dp->account = lbd_store_account_join(s->store, (uint64_t)c->cred.uid + 1,
						s->cfg->insert_bytes_per_uid);
	if (!c->dp->account) {
		lbd_dpclient_free(s->store, c->dp);
		c->dp = NULL;
		conn_error(c, true, ENOMEM, "staging_bytes", "cannot make the client's insert account");
		return;
	}
	c->hello = true;
	c->client_id = s->next_client_id++;
	s->n_clients++;
	c->staging = staging;
	c->uid_use->staging += staging;
	memcpy(c->name, h->name, sizeof(c->name));
	c->dp->node = home_node(s, h->numa_node);
	lbd_info("client %" PRIu64 " '%s' (pid %d uid %u node %d) said HELLO", c->client_id, c->name,
		 (int)c->cred.pid, (unsigned)c->cred.uid, c->dp->node);

	struct lbp_welcome *w = &m.u.welcome;
	w->client_id = c->client_id;
	memcpy(w->boot_id, s->boot_id, sizeof(s->boot_id));
	/* The arenas of the tenants the peer may read, and no others: it can map nothing else. */
	for (unsigned i = 0; i < s->n_arenas; i++) {
		const struct lbd_arena *a = &s->arenas[i];
		if (!lbd_config_tenant_admits(s->cfg, a->tenant, (uint32_t)c->cred.uid))
			continue;
		w->arenas[w->n_arenas] = (struct lbp_arena_desc){
			.bytes = a->bytes, .numa_node = a->node, .index = i, .tenant = a->tenant };
		fds[w->n_arenas++] = a->fd;
	}
	w->page_size = s->arenas[w->arenas[0].index].page_size;
	w->region.req_entries = c->dp->layout.req_entries;
	w->region.cpl_entries = c->dp->layout.cpl_entries;
	w->region.staging_bytes = c->dp->layout.staging_bytes;
	w->region.bytes = c->dp->bytes;
	fds[w->n_arenas] = c->dp->fd;
	lbd_service_attach(&s->service, c->dp);
	conn_reply(c, &m, fds, w->n_arenas + 1);
}

/* The model's allow-list (model-allow) names the peer's uid, or the model has none. Root and
 * the daemon's own user are not special: a list that wants them names them. */
static bool may_register(const struct lbd_conn *c, const char *model)
{
	const struct lbd_model_allow *a = lbd_config_model_allow(c->s->cfg, model);

	if (!a)
		return true;
	for (uint32_t i = 0; i < a->n_uids; i++)
		if (a->uids[i] == (uint32_t)c->cred.uid && c->cred.uid != (uid_t)-1)
			return true;
	return false;
}

static void on_register(struct lbd_conn *c, const struct lbp_register_model *d)
{
	struct lbp_msg m = { .type = LBP_MODEL };
	const char *field = "";
	char why[LBP_MAX_ERRMSG];
	uint32_t id = 0;

	/* Before the registry: a user who may not use a model may not create it either (and so
	 * cannot take its name with other weights first, nor retire a snapshot's model). */
	if (!may_register(c, d->name)) {
		snprintf(why, sizeof(why), "model '%s' is not open to uid %u (model-allow)", d->name,
			 (unsigned)c->cred.uid);
		lbd_info("client %" PRIu64 " (pid %d): REGISTER_MODEL refused: %s", c->client_id,
			 (int)c->cred.pid, why);
		conn_error(c, false, EACCES, "name", why);
		return;
	}
	if (lbd_models_valid(d, &field, why, sizeof(why)) < 0) {
		conn_error(c, false, EINVAL, field, why);
		return;
	}
	/* A model restored from a snapshot is taken back when its first client disagrees. */
	uint32_t retired = lbd_models_settle(&c->s->models, d, why, sizeof(why));
	if (retired) {
		int64_t n = lbd_store_drop_model(c->s->store, retired);
		lbd_warn("client %" PRIu64 ": %s; the snapshot's model %u retired, its %" PRId64
			 " entries dropped", c->client_id, why, retired, n > 0 ? n : 0);
	}
	int ret = lbd_models_register(&c->s->models, d, &id, &field, why, sizeof(why));
	if (ret < 0) {
		lbd_info("client %" PRIu64 ": REGISTER_MODEL refused: %s", c->client_id, why);
		conn_error(c, false, -ret, field, why);
		return;
	}
	m.u.model.created = ret == 1;
	/* Every time, not only at creation: it is idempotent and retries a bank that failed. */
	ret = lbd_store_add_model(c->s->store, id, d);
	if (ret < 0) {
		conn_error(c, false, -ret, "name", "cannot make the model's bank");
		return;
	}
	if (m.u.model.created)
		lbd_info("model %u '%s' registered: %u layers, hidden %u, weights 0x%016" PRIx64, id,
			 d->name, d->n_layers, d->hidden, d->weights_hash);
	lbd_dpclient_allow(c->dp, id);
	m.u.model.model_id = id;
	conn_reply(c, &m, NULL, 0);
}

/* The ring's LOOKUP_DEEPEST, served on the control thread. */
static void on_lookup(struct lbd_conn *c, const struct lbp_lookup *l)
{
	struct lbp_msg m = { .type = LBP_LOOKUP_REPLY };
	struct lb_req r = { .opcode = LB_OP_LOOKUP_DEEPEST, .model_id = l->model_id, .seq_len = l->seq_len };
	struct lb_query q = { .fp = { l->fp0, l->fp1, l->fp2, l->fp3 }, .exact = { l->exact_lo, l->exact_hi } };
	struct lb_cpl cpl = { 0 };

	/* As on the rings: a model this connection did not register is refused. */
	if (!lbd_dpclient_may_use(c->dp, l->model_id))
		cpl.status = lbd_store_has_model(c->s->store, l->model_id) ? -EACCES : -ESRCH;
	else
		lbd_store_lookup(c->s->store, &c->sock_leases, &r, &q, NULL, &cpl);
	if (cpl.status == 0)
		lbd_store_release(c->s->store, &c->sock_leases, cpl.lease, &cpl);
	m.u.lookup_reply.status = cpl.status;
	m.u.lookup_reply.layer = cpl.layer;
	m.u.lookup_reply.hamming = cpl.hamming;
	m.u.lookup_reply.arena = cpl.arena;
	m.u.lookup_reply.entry_off = cpl.entry_off;
	conn_reply(c, &m, NULL, 0);
}

/* Keep systemd content while a long snapshot is written: the watchdog, and when stopping,
 * the stop timeout (EXTEND_TIMEOUT_USEC pushes it 30 s ahead of each ping). */
static void snapshot_progress(void *ctx, uint64_t done, uint64_t total)
{
	struct lbd_server *s = ctx;
	uint64_t now = lb_now_ns();

	if (now - s->snap_ping_ns < 1000000000ull)
		return;
	s->snap_ping_ns = now;
	if (s->watchdog_ns)
		lbd_sd_notify("WATCHDOG=1");
	if (s->stopping)
		lbd_sd_notify("EXTEND_TIMEOUT_USEC=30000000\nSTATUS=writing the snapshot: %" PRIu64
			      " of %" PRIu64 " MiB", done >> 20, total >> 20);
}

/* Write the snapshot file now. @return 0 or -errno, with one line in err. */
static int write_snapshot(struct lbd_server *s, struct lbd_snapshot_stats *st, char *err, size_t errlen)
{
	s->snap_ping_ns = 0; /* the first chunk written feeds systemd at once */
	int ret = lbd_snapshot_write(s->cfg->snapshot_path, &s->models, s->store, s->boot_id,
				     snapshot_progress, s, st, err, errlen);
	if (ret < 0) {
		lbd_err("%s", err);
		return ret;
	}
	if (*err)
		lbd_warn("%s", err); /* written, with a warning */
	lbd_info("snapshot %s: %" PRIu64 " entries (%" PRIu64 " of them prefix blocks, %.1f MiB of"
		 " data) of %u models written, %" PRIu64 " bytes, in %" PRIu64 " ms",
		 s->cfg->snapshot_path, st->entries, st->blocks, (double)st->data_bytes / (1 << 20),
		 st->models, st->file_bytes, st->ms);
	return 0;
}

/* SNAPSHOT: administrative, so only root and the daemon's own user may ask. */
static void on_snapshot(struct lbd_conn *c)
{
	struct lbd_server *s = c->s;
	struct lbp_msg m = { .type = LBP_SNAPSHOT_REPLY };
	struct lbd_snapshot_stats st;
	char text[LBP_MAX_ERRMSG], err[PATH_MAX + 200];
	uid_t me = geteuid();

	if (c->cred.uid != 0 && c->cred.uid != me) {
		snprintf(text, sizeof(text), "SNAPSHOT is for root and the daemon's user (uid %u), not uid %u",
			 (unsigned)me, (unsigned)c->cred.uid);
		lbd_warn("client %" PRIu64 " (pid %d): %s", c->client_id, (int)c->cred.pid, text);
		conn_error(c, false, EPERM, "", text);
		return;
	}
	if (!s->cfg->snapshot_path[0]) {
		conn_error(c, false, EOPNOTSUPP, "", "no snapshot file: layerbankd runs without --snapshot");
		return;
	}
	lbd_info("client %" PRIu64 " (pid %d uid %u) asked for a snapshot", c->client_id,
		 (int)c->cred.pid, (unsigned)c->cred.uid);
	int ret = write_snapshot(s, &st, err, sizeof(err));
	if (ret < 0) {
		conn_error(c, false, -ret, "", err);
		return;
	}
	m.u.snapshot_reply.entries = st.entries;
	m.u.snapshot_reply.bytes = st.file_bytes;
	m.u.snapshot_reply.ms = st.ms;
	conn_reply(c, &m, NULL, 0);
}

/* ---- administrative messages ---- */

/* FLUSH and CONFIG_SET change what every client gets: only root and the daemon's own user may
 * send them (the socket's group is for workers). @return true when c was refused. */
static bool refuse_unless_admin(struct lbd_conn *c, enum lbp_type t)
{
	char text[LBP_MAX_ERRMSG];

	if (c->cred_ok && (c->cred.uid == 0 || c->cred.uid == c->s->uid))
		return false;
	if (c->cred_ok)
		snprintf(text, sizeof(text), "%s needs root or the daemon's user (uid %u); this "
			 "connection is uid %u", lbp_type_name(t), (unsigned)c->s->uid,
			 (unsigned)c->cred.uid);
	else
		snprintf(text, sizeof(text), "%s needs root or the daemon's user (uid %u); this "
			 "connection's credentials are unknown", lbp_type_name(t), (unsigned)c->s->uid);
	lbd_info("client %" PRIu64 " (pid %d uid %u): %s refused: not root or the daemon's user",
		 c->client_id, (int)c->cred.pid, (unsigned)c->cred.uid, lbp_type_name(t));
	conn_error(c, false, EPERM, "", text);
	return true;
}

static struct lbd_runtime runtime_of(struct lbd_server *s)
{
	return (struct lbd_runtime){ s->store, &s->service, &s->models };
}

static void on_flush(struct lbd_conn *c, const struct lbp_flush *f)
{
	struct lbp_msg m = { .type = LBP_FLUSH_REPLY };
	struct lbd_server *s = c->s;
	struct lbd_flush_result r;
	char text[LBP_MAX_ERRMSG], what[96];
	int ret;

	if (refuse_unless_admin(c, LBP_FLUSH))
		return;
	ret = lbd_store_flush(s->store, f->model_id, f->layer, &r);
	if (ret == -ESRCH) {
		snprintf(text, sizeof(text), "no model with id %u", f->model_id);
		conn_error(c, false, ESRCH, "model_id", text);
		return;
	}
	if (ret < 0) {
		if (f->model_id == 0)
			snprintf(text, sizeof(text), "layer %d of no model: model_id 0 flushes every "
				 "layer of every model", f->layer);
		else
			snprintf(text, sizeof(text), "model %u has layers 0..%u, not %d", f->model_id,
				 s->models.desc[f->model_id - 1].n_layers - 1, f->layer);
		conn_error(c, false, EINVAL, "layer", text);
		return;
	}
	if (f->model_id == 0)
		snprintf(what, sizeof(what), "every model");
	else if (f->layer < 0)
		snprintf(what, sizeof(what), "model %u", f->model_id);
	else
		snprintf(what, sizeof(what), "model %u layer %d", f->model_id, f->layer);
	lbd_info("client %" PRIu64 " (pid %d uid %u): FLUSH %s: %" PRIu64 " entries, %" PRIu64
		 " bytes dropped (%" PRIu64 " under lease, freed when released)", c->client_id,
		 (int)c->cred.pid, (unsigned)c->cred.uid, what, r.entries, r.bytes, r.leased);
	m.u.flush_reply.entries = r.entries;
	m.u.flush_reply.bytes = r.bytes;
	m.u.flush_reply.leased = r.leased;
	conn_reply(c, &m, NULL, 0);
}

static void on_config_get(struct lbd_conn *c, const struct lbp_config_get *g)
{
	struct lbp_msg m = { .type = LBP_CONFIG_REPLY };
	struct lbd_runtime rt = runtime_of(c->s);
	char text[LBP_MAX_ERRMSG];

	if (lbd_runtime_get(&rt, g->key, g->first, &m.u.config_reply, text, sizeof(text)) < 0) {
		conn_error(c, false, ENOENT, "key", text);
		return;
	}
	conn_reply(c, &m, NULL, 0);
}

static void arm_sweep(struct lbd_server *s);

static void on_config_set(struct lbd_conn *c, const struct lbp_config_set *set)
{
	struct lbp_msg m = { .type = LBP_CONFIG_REPLY };
	struct lbd_runtime rt = runtime_of(c->s);
	struct lbp_config_reply *r = &m.u.config_reply;
	char text[LBP_MAX_ERRMSG], key[LBP_MAX_CONFIG_KEY + 1];
	struct lbd_store_cfg sc;
	uint64_t evicted;
	int ret;

	if (refuse_unless_admin(c, LBP_CONFIG_SET))
		return;
	ret = lbd_runtime_set(&rt, set->key, set->value, &r->items[0], &evicted, text, sizeof(text));
	if (ret < 0) {
		conn_error(c, false, -ret, ret == -ENOENT ? "key" : "value", text);
		return;
	}
	r->total = r->n = 1;
	lbd_info("client %" PRIu64 " (pid %d uid %u): CONFIG_SET %s = %s", c->client_id,
		 (int)c->cred.pid, (unsigned)c->cred.uid, lbu_printable(r->items[0].key, key, sizeof(key)),
		 r->items[0].value);
	if (evicted)
		lbd_info("budget lowered to %s: %" PRIu64 " entries evicted", r->items[0].value, evicted);
	/* The TTL sweep runs while the policy is ttl: a switch to it starts the timer. */
	lbd_store_get_cfg(c->s->store, &sc);
	if (sc.policy == LBD_POLICY_TTL && !c->s->sweep_armed)
		arm_sweep(c->s);
	conn_reply(c, &m, NULL, 0);
}

static void on_frame(struct lbd_conn *c, size_t len)
{
	struct lbp_msg m;
	struct lbp_fault fault = { "", "" };
	char text[LBP_MAX_ERRMSG];
	int ret;

	if (len > LBP_MAX_FRAME) {
		snprintf(text, sizeof(text), "frame longer than %u bytes", LBP_MAX_FRAME);
		conn_error(c, true, EMSGSIZE, "frame", text);
		return;
	}
	ret = lbp_decode(c->rx, len, &m, &fault);
	if (ret == -EPROTO) {
		snprintf(text, sizeof(text), "unsupported protocol version (this daemon speaks %u)",
			 LBP_VERSION);
		conn_error(c, true, EPROTO, "version", text);
		return;
	}
	if (ret < 0) {
		conn_error(c, true, -ret, fault.field, fault.reason[0] ? fault.reason : strerror(-ret));
		return;
	}
	if (!c->hello && m.type != LBP_HELLO) {
		conn_error(c, true, EPROTO, "type", "HELLO expected first");
		return;
	}
	switch (m.type) {
	case LBP_HELLO:
		on_hello(c, &m.u.hello);
		return;
	case LBP_REGISTER_MODEL:
		on_register(c, &m.u.reg);
		return;
	case LBP_STATS: {
		struct lbp_msg r = { .type = LBP_STATS_REPLY };
		fill_stats(c->s, &r.u.stats);
		conn_reply(c, &r, NULL, 0);
		return;
	}
	case LBP_BYE:
		lbd_info("client %" PRIu64 " said BYE", c->client_id);
		conn_end(c);
		return;
	case LBP_WELCOME:
	case LBP_MODEL:
	case LBP_STATS_REPLY:
	case LBP_ERROR:
	case LBP_MODEL_STATS_REPLY:
	case LBP_LOOKUP_REPLY:
	case LBP_FLUSH_REPLY:
	case LBP_CONFIG_REPLY:
	case LBP_SNAPSHOT_REPLY:
		break;
	case LBP_FLUSH:
		on_flush(c, &m.u.flush);
		return;
	case LBP_CONFIG_GET:
		on_config_get(c, &m.u.config_get);
		return;
	case LBP_CONFIG_SET:
		on_config_set(c, &m.u.config_set);
		return;
	case LBP_SNAPSHOT:
		on_snapshot(c);
		return;
	case LBP_LOOKUP:
		on_lookup(c, &m.u.lookup);
		return;
	case LBP_MODEL_STATS: {
		struct lbp_msg r = { .type = LBP_MODEL_STATS_REPLY };
		if (lbd_store_model_stats(c->s->store, m.u.mstats.model_id, m.u.mstats.first_layer,
					  &r.u.mstats_reply) < 0) {
			conn_error(c, false, ESRCH, "model_id", "no such model");
			return;
		}
		conn_reply(c, &r, NULL, 0);
		return;
	}
	}
	snprintf(text, sizeof(text), "%s is not a request", lbp_type_name(m.type));
	conn_error(c, true, EPROTO, "type", text);
}

static void conn_on_op(struct lbd_op *op, int res)
{
	struct lbd_conn *c = container_of(op, struct lbd_conn, op);

	c->io_busy = false;
	if (c->ended) {
		conn_release(c);
		return;
	}
	if (c->sending) {
		if (res < 0 || c->close_after_send) {
			if (res < 0)
				lbd_info("client %" PRIu64 ": send failed: %s", c->client_id,
					 strerror(-res));
			conn_end(c);
			return;
		}
		conn_recv(c);
		return;
	}
	if (res <= 0) {
		if (res < 0 && res != -ECONNRESET)
			lbd_info("client %" PRIu64 ": recv failed: %s", c->client_id, strerror(-res));
		else if (c->hello)
			lbd_info("client %" PRIu64 " disconnected", c->client_id);
		conn_end(c);
		return;
	}
	on_frame(c, (size_t)res);
}

/* The client's process exited: it is gone even if its socket lives on in a process that
 * inherited it, and nobody is left to hang up. */
static void conn_on_exit(struct lbd_op *op, int res)
{
	struct lbd_conn *c = container_of(op, struct lbd_conn, pid_op);

	c->pid_busy = false;
	if (c->ended) {
		conn_release(c); /* the cancel of conn_end, or an exit that raced it */
		return;
	}
	if (res < 0) {
		lbd_warn("client %" PRIu64 " (pid %d): watching its process failed: %s; its socket "
			 "alone tells when it is gone", c->client_id, (int)c->cred.pid, strerror(-res));
		return;
	}
	if (c->hello)
		lbd_info("client %" PRIu64 " (pid %d) exited: ending its session", c->client_id,
			 (int)c->cred.pid);
	conn_end(c);
}

static int pidfd_open_pid(pid_t pid)
{
#ifdef SYS_pidfd_open
	int fd = (int)syscall(SYS_pidfd_open, pid, 0); /* always close-on-exec */
	return fd < 0 ? -errno : fd;
#else
	(void)pid;
	return -ENOSYS;
#endif
}

/*
 * Watch the process that connected (SO_PEERCRED's pid, taken at connect time) through a pidfd.
 * A pid that exited and was reused before this call names a stranger: then the socket's
 * hang-up still ends the client, as it does without pidfds. @return false when the process is
 * gone already and c was ended.
 */
static bool conn_watch_pid(struct lbd_conn *c)
{
	struct lbd_server *s = c->s;
	int fd;

	/* pid 0: the peer is in a pid namespace we cannot see. */
	if (!s->pidfd_ok || c->cred.pid <= 0)
		return true;
	fd = pidfd_open_pid(c->cred.pid);
	if (fd == -ESRCH) {
		lbd_debug("pid %d exited before its connection was accepted", (int)c->cred.pid);
		conn_end(c);
		return false;
	}
	if (fd < 0) {
		lbd_warn("pid %d: pidfd_open: %s; its socket alone tells when it is gone",
			 (int)c->cred.pid, strerror(-fd));
		return true;
	}
	if (lbd_loop_poll(&s->loop, fd, POLLIN, &c->pid_op) < 0) {
		lbd_warn("pid %d: submission queue full: its socket alone tells when it is gone",
			 (int)c->cred.pid);
		close(fd);
		return true;
	}
	c->pidfd = fd;
	c->pid_busy = true;
	return true;
}

/* ---- accept and signals ---- */

/*
 * Count c, just accepted, against its uid's max-connections-per-uid. One past the limit is
 * kept, unwatched (no pidfd), until its HELLO, which refuse_past_uid_limit answers; when
 * LBD_UID_REFUSING_MAX of its uid wait already, or without memory, it is told at once as far
 * as its socket takes it (its HELLO may not have come yet) and closed.
 * @return false when c was closed and freed.
 */
static bool conn_admit(struct lbd_conn *c)
{
	struct lbd_server *s = c->s;
	char text[LBP_MAX_ERRMSG];
	struct lbp_msg m;

	c->uid_use = lbd_uids_admit(&s->uids, (uint32_t)c->cred.uid, s->cfg->conns_per_uid,
				    &c->uid_verdict);
	if (c->uid_verdict != LBD_UID_DROP)
		return true;
	if (c->uid_use)
		uid_limit_text(c, text, sizeof(text));
	else
		snprintf(text, sizeof(text), "out of memory");
	lbd_warn("connection of pid %d uid %u refused at once: %s", (int)c->cred.pid,
		 (unsigned)c->cred.uid, text);
	lbp_make_error(&m, c->uid_use ? EUSERS : ENOMEM, "", "%s", text);
	int len = lbp_encode(&m, c->tx, sizeof(c->tx));
	if (len > 0)
		(void)!send(c->fd, c->tx, (size_t)len, MSG_DONTWAIT | MSG_NOSIGNAL);
	close(c->fd);
	free(c);
	return false;
}

static void arm_accept(struct lbd_server *s)
{
	if (lbd_loop_accept(&s->loop, s->listen_fd, &s->accept_op) < 0) {
		lbd_err("cannot queue accept: stopping");
		s->loop.stop = true;
	}
}

/* Accept again in LBD_ACCEPT_PAUSE_MS. */
static void arm_accept_later(struct lbd_server *s)
{
	s->accept_pause_ts.tv_sec = 0;
	s->accept_pause_ts.tv_nsec = LBD_ACCEPT_PAUSE_MS * 1000000ll;
	if (lbd_loop_timeout(&s->loop, &s->accept_pause_ts, &s->accept_pause_op) < 0)
		arm_accept(s);
}

static void on_accept_pause(struct lbd_op *op, int res)
{
	(void)res; /* -ETIME: the pause is over */
	arm_accept(container_of(op, struct lbd_server, accept_pause_op));
}

static void on_accept(struct lbd_op *op, int res)
{
	struct lbd_server *s = container_of(op, struct lbd_server, accept_op);
	struct lbd_conn *c;
	socklen_t len = sizeof(c->cred);

	if (res < 0) {
		/* EMFILE and friends: the pending connection stays queued; say so and go on, after
		 * a pause when descriptors or memory ran out: accepting again at once would fail at
		 * once, a busy loop (100% of a CPU) until a connection ends. */
		lbd_warn("accept failed: %s", strerror(-res));
		if (res == -EMFILE || res == -ENFILE || res == -ENOBUFS || res == -ENOMEM)
			arm_accept_later(s);
		else
			arm_accept(s);
		return;
	}
	arm_accept(s);
	if (s->n_conns >= LBD_MAX_CONNS || !(c = calloc(1, sizeof(*c)))) {
		lbd_warn("refusing a connection: %u connections open", s->n_conns);
		close(res);
		return;
	}
	c->op.fn = conn_on_op;
	c->pid_op.fn = conn_on_exit;
	c->s = s;
	c->fd = res;
	c->pidfd = -1;
	if (getsockopt(res, SOL_SOCKET, SO_PEERCRED, &c->cred, &len) == 0) {
		c->cred_ok = true;
	} else {
		/* Not uid 0 by accident of calloc: an unknown peer is nobody's. */
		c->cred.pid = -1;
		c->cred.uid = (uid_t)-1;
		c->cred.gid = (gid_t)-1;
	}
	if (!conn_admit(c))
		return;
	c->next = s->conns;
	if (s->conns)
		s->conns->prev = c;
	s->conns = c;
	s->n_conns++;
	lbd_debug("connection from pid %d uid %u gid %u", (int)c->cred.pid, (unsigned)c->cred.uid,
		  (unsigned)c->cred.gid);
	if (c->uid_verdict == LBD_UID_REFUSE || conn_watch_pid(c))
		conn_recv(c);
}

static void arm_signal(struct lbd_server *s)
{
	if (lbd_loop_read(&s->loop, s->signal_fd, &s->siginfo, sizeof(s->siginfo), &s->signal_op) < 0)
		s->loop.stop = true;
}

static void on_signal(struct lbd_op *op, int res)
{
	struct lbd_server *s = container_of(op, struct lbd_server, signal_op);
	if (res == (int)sizeof(s->siginfo)) {
		lbd_info("%s received: shutting down", strsignal((int)s->siginfo.ssi_signo));
		lbd_sd_notify("STOPPING=1\nSTATUS=shutting down");
		s->stopping = true;
		s->loop.stop = true;
		return;
	}
	lbd_warn("signalfd read returned %d", res);
	arm_signal(s);
}

static void arm_sweep(struct lbd_server *s)
{
	s->sweep_ts.tv_sec = 1;
	s->sweep_ts.tv_nsec = 0;
	s->sweep_armed = lbd_loop_timeout(&s->loop, &s->sweep_ts, &s->sweep_op) == 0;
	if (!s->sweep_armed)
		lbd_warn("cannot queue the TTL sweep");
}

static void on_sweep(struct lbd_op *op, int res)
{
	struct lbd_server *s = container_of(op, struct lbd_server, sweep_op);
	struct lbd_store_cfg sc;
	(void)res; /* -ETIME: the second passed */
	s->sweep_armed = false;
	lbd_store_expire(s->store);
	/* Only while the policy is ttl (CONFIG_SET may have changed it): an idle daemon with
	 * another policy never wakes up. */
	lbd_store_get_cfg(s->store, &sc);
	if (sc.policy == LBD_POLICY_TTL)
		arm_sweep(s);
}

/* A cancel's own completion: the op it cancelled completes too and does the work. */
static void on_cancelled(struct lbd_op *op, int res)
{
	(void)op;
	if (res < 0 && res != -ENOENT && res != -EALREADY)
		lbd_warn("cancel failed: %s", strerror(-res));
}

/* ---- systemd: status and watchdog ---- */

static void send_status(struct lbd_server *s)
{
	struct lbp_stats_reply st;
	uint64_t lookups;

	fill_stats(s, &st);
	lookups = st.hits + st.misses;
	if (lookups)
		lbd_sd_notify("STATUS=clients %u, lookups %" PRIu64 ", hit rate %.1f%%, entries %" PRIu64
			      ", cached %" PRIu64 " MiB", st.clients, lookups,
			      100.0 * (double)st.hits / (double)lookups, st.entries, st.bytes_used >> 20);
	else
		lbd_sd_notify("STATUS=clients %u, lookups 0, hit rate -, entries %" PRIu64, st.clients,
			      st.entries);
}

static void arm_status(struct lbd_server *s)
{
	s->status_ts.tv_sec = LBD_STATUS_PERIOD_S;
	s->status_ts.tv_nsec = 0;
	if (lbd_loop_timeout(&s->loop, &s->status_ts, &s->status_op) < 0)
		lbd_warn("cannot queue the status timer");
}

static void on_status(struct lbd_op *op, int res)
{
	struct lbd_server *s = container_of(op, struct lbd_server, status_op);
	(void)res; /* -ETIME: the period passed */
	send_status(s);
	lbd_log_flush(0); /* rate-limit summaries of quiet events come out here */
	arm_status(s);
}

/* Pinged from the loop itself: a loop that stops turning stops the pings, and systemd
 * restarts the daemon (WatchdogSec= with Restart=on-failure). */
static void arm_watchdog(struct lbd_server *s)
{
	uint64_t half = s->watchdog_ns / 2;
	s->watchdog_ts.tv_sec = (long long)(half / 1000000000u);
	s->watchdog_ts.tv_nsec = (long long)(half % 1000000000u);
	if (lbd_loop_timeout(&s->loop, &s->watchdog_ts, &s->watchdog_op) < 0)
		lbd_warn("cannot queue the watchdog timer");
}

static void on_watchdog(struct lbd_op *op, int res)
{
	struct lbd_server *s = container_of(op, struct lbd_server, watchdog_op);
	(void)res;
	lbd_sd_notify("WATCHDOG=1");
	arm_watchdog(s);
}

/* ---- setup ---- */

static unsigned tenant_of(const void *cfg, const char *model)
{
	return lbd_config_tenant_of(cfg, model);
}

/* One arena per tenant and node, tenant-major (arena t * n_nodes + k is tenant t's on node k),
 * each an even share of arena-size. */
static int setup_arenas(struct lbd_server *s, char *err, size_t errlen)
{
	unsigned n = 0, tenants = lbd_config_tenants(s->cfg);

	if (s->cfg->numa_node != LBD_NUMA_ALL) {
		s->nodes[n++] = s->cfg->numa_node;
	} else if (numa_available() < 0) {
		s->nodes[n++] = -1; /* no NUMA support: unbound arenas */
	} else {
		for (int node = 0; node <= numa_max_node() && n < LBD_MAX_ARENAS; node++)
			if (numa_bitmask_isbitset(numa_all_nodes_ptr, (unsigned)node))
				s->nodes[n++] = node;
		if (n == 0)
			s->nodes[n++] = -1;
	}
	s->n_nodes = n;
	if (tenants * n > LBD_MAX_ARENAS) {
		snprintf(err, errlen, "%u tenants (the shared one and %u distinct model-allow lists) on "
			 "%u NUMA nodes make %u arenas, at most %u: give models that may share memory "
			 "one list, or use --numa-node", tenants, tenants - 1, n, tenants * n,
			 LBD_MAX_ARENAS);
		return -EINVAL;
	}
	/* The size is the total: each arena gets its share, rounded up by the arena. */
	size_t share = (size_t)((s->cfg->arena_size + tenants * n - 1) / (tenants * n));
	for (unsigned t = 0; t < tenants; t++)
		for (unsigned k = 0; k < n; k++) {
			struct lbd_arena *a = &s->arenas[s->n_arenas];
			int ret = lbd_arena_create(a, share, s->nodes[k], s->cfg->hugepages,
						   s->boot_id, s->n_arenas, err, errlen);
			if (ret < 0)
				return ret;
			a->tenant = t;
			s->n_arenas++;
		}
	if (tenants > 1)
		lbd_info("%u tenants (models without an allow-list, and %u lists): %zu MiB of arena "
			 "each on each of %u nodes", tenants, tenants - 1, s->arenas[0].bytes >> 20, n);
	return 0;
}

/* Refuse to steal a live daemon's socket; remove a stale one left by a crash. */
static int claim_socket_path(const char *path, char *err, size_t errlen)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct stat st;
	int fd, live;

	if (lstat(path, &st) < 0)
		return errno == ENOENT ? 0 : -errno;
	if (!S_ISSOCK(st.st_mode)) {
		snprintf(err, errlen, "%s exists and is not a socket; not touching it", path);
		return -EEXIST;
	}
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	live = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
	if (live) {
		/* A daemon killed a moment ago can still accept (its io_uring is torn down
		 * asynchronously): it is live only if the process that listens still exists. */
		struct ucred cred;
		socklen_t len = sizeof(cred);
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 &&
		    kill(cred.pid, 0) < 0 && errno == ESRCH)
			live = 0;
	}
	close(fd);
	if (live) {
		snprintf(err, errlen, "another layerbankd is listening on %s", path);
		return -EADDRINUSE;
	}
	lbd_info("removing stale socket %s", path);
	unlink(path);
	return 0;
}

/* socket-group and socket-mode on the file bind made. chown only when the group is not
 * already right: layerbankd.service forbids chown (SystemCallFilter=~@privileged) and keeps
 * the default, the daemon's own group. chmod as well as the umask: a default ACL on the
 * folder would have replaced the umask's mask. @return 0 or -errno. */
static int set_socket_access(const struct lbd_config *cfg, const char *path, char *err, size_t errlen)
{
	gid_t gid = cfg->socket_gid == LBD_SOCKET_GROUP_OWN ? getegid() : (gid_t)cfg->socket_gid;
	struct stat st;
	int e;

	if (lstat(path, &st) < 0) {
		e = errno;
		snprintf(err, errlen, "%s: %s", path, strerror(e));
		return -e;
	}
	if (st.st_gid != gid && fchownat(AT_FDCWD, path, (uid_t)-1, gid, AT_SYMLINK_NOFOLLOW) < 0) {
		e = errno;
		snprintf(err, errlen, "cannot give %s to group %u: %s%s", path, (unsigned)gid,
			 strerror(e),
			 e == EPERM ? " (the daemon must be root or in that group; layerbankd.service "
				      "forbids chown: set the socket unit's SocketGroup= instead)" : "");
		return -e;
	}
	if (fchmodat(AT_FDCWD, path, (mode_t)cfg->socket_mode, 0) < 0) {
		e = errno;
		snprintf(err, errlen, "cannot set mode %04o on %s: %s", cfg->socket_mode, path, strerror(e));
		return -e;
	}
	lbd_debug("socket %s: mode %04o, group %u", path, cfg->socket_mode, (unsigned)gid);
	return 0;
}

/* Bind, set socket-group and socket-mode, listen: the socket at path is ready to accept under
 * its final permissions. *bound: the file was made (and is the caller's to remove).
 * @return 0 or -errno. */
static int bind_and_listen(struct lbd_server *s, const char *path, bool *bound, char *err,
			   size_t errlen)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	mode_t old;
	int ret;

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	/* The file never exists wider than socket-mode: the umask takes the other bits off at
	 * bind (no other thread runs yet to be surprised by the process-wide umask). */
	old = umask(~(mode_t)s->cfg->socket_mode & 0777);
	ret = bind(s->listen_fd, (struct sockaddr *)&sa, sizeof(sa));
	umask(old);
	if (ret < 0) {
		ret = -errno;
		snprintf(err, errlen, "cannot bind %s: %s%s", s->cfg->socket_path, strerror(-ret),
			 ret == -ENOENT ? " (does its folder exist? --socket picks another path)" : "");
		return ret;
	}
	*bound = true;
	/* Group and exact mode before listen: until then a connect is refused whatever the
	 * file's permissions, so nobody gets in under the wrong ones. */
	ret = set_socket_access(s->cfg, path, err, errlen);
	if (ret < 0)
		return ret;
	if (listen(s->listen_fd, 128) < 0) {
		ret = -errno;
		snprintf(err, errlen, "listen %s: %s", path, strerror(-ret));
		return ret;
	}
	return 0;
}

/*
 * The socket is made under a name of its own (PATH.PID) and renamed to PATH once it listens
 * with its final group and mode: a client that waits for PATH to appear never finds it
 * refusing connections, and nobody connects under other permissions. RENAME_NOREPLACE keeps
 * a second daemon started at the same moment from taking over the first one's path. When
 * PATH.PID does not fit in sun_path, PATH itself is bound (connections are refused for the
 * moment between bind and listen).
 */
static int setup_socket(struct lbd_server *s, char *err, size_t errlen)
{
	const char *path = s->cfg->socket_path;
	char staged[sizeof(((struct sockaddr_un *)0)->sun_path)];
	int ret;

	ret = claim_socket_path(path, err, errlen);
	if (ret < 0) {
		if (!*err)
			snprintf(err, errlen, "%s: %s", path, strerror(-ret));
		return ret;
	}
	s->listen_fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (s->listen_fd < 0) {
		ret = -errno;
		snprintf(err, errlen, "socket: %s", strerror(-ret));
		return ret;
	}
	int n = snprintf(staged, sizeof(staged), "%s.%d", path, (int)getpid());
	if (n < 0 || (size_t)n >= sizeof(staged)) {
		ret = bind_and_listen(s, path, &s->socket_bound, err, errlen);
		if (ret == 0)
			snprintf(s->listen_path, sizeof(s->listen_path), "%s", path);
		return ret;
	}
	unlink(staged); /* left by a daemon that crashed with our pid */
	bool bound = false;
	ret = bind_and_listen(s, staged, &bound, err, errlen);
	if (ret == 0 && renameat2(AT_FDCWD, staged, AT_FDCWD, path, RENAME_NOREPLACE) < 0) {
		ret = -errno;
		snprintf(err, errlen, "cannot rename %s to %s: %s", staged, path,
			 ret == -EEXIST ? "another layerbankd took the path meanwhile" : strerror(-ret));
	}
	if (ret < 0) {
		if (bound)
			unlink(staged);
		return ret;
	}
	s->socket_bound = true;
	snprintf(s->listen_path, sizeof(s->listen_path), "%s", path);
	return 0;
}

/* Each connection holds up to three descriptors (its socket, its process's pidfd, its region's
 * memfd): raise the soft RLIMIT_NOFILE toward what LBD_MAX_CONNS of them need, as far as the
 * hard limit lets (a login's soft limit is often 1024; layerbankd.service sets 8192). */
static void raise_fd_limit(void)
{
	const rlim_t need = LBD_MAX_CONNS * 3 + 64;
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur >= need)
		return;
	rl.rlim_cur = rl.rlim_max < need ? rl.rlim_max : need;
	if (setrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur < need)
		lbd_info("RLIMIT_NOFILE %llu: room for about %llu connections, not %u (raise the "
			 "hard limit: LimitNOFILE= under systemd)", (unsigned long long)rl.rlim_cur,
			 (unsigned long long)(rl.rlim_cur > 64 ? (rl.rlim_cur - 64) / 3 : 0),
			 LBD_MAX_CONNS);
}

/* Socket activation: systemd created, bound and owns the socket (layerbankd.socket); it
 * stays when we stop, so the next connection starts us again. @return 0 or -errno. */
static int take_inherited_socket(struct lbd_server *s, char *err, size_t errlen)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	socklen_t len = sizeof(sa);
	int fd = lbd_sd_listen_socket(err, errlen);

	if (fd == -ENOENT)
		return 0;
	if (fd < 0)
		return fd;
	s->listen_fd = fd;
	s->socket_inherited = true;
	if (getsockname(fd, (struct sockaddr *)&sa, &len) == 0 && len > offsetof(struct sockaddr_un, sun_path))
		snprintf(s->listen_path, sizeof(s->listen_path), "%.*s",
			 (int)(len - offsetof(struct sockaddr_un, sun_path)), sa.sun_path);
	if (strcmp(s->listen_path, s->cfg->socket_path) != 0)
		lbd_info("socket activation: listening on %s from systemd, not on %s", s->listen_path,
			 s->cfg->socket_path);
	if (s->cfg->socket_mode != LBD_DEFAULT_SOCKET_MODE || s->cfg->socket_gid != LBD_SOCKET_GROUP_OWN)
		lbd_info("socket activation: the socket's mode and group are the socket unit's "
			 "(SocketMode=, SocketGroup=), not socket-mode and socket-group");
	return 0;
}

int lbd_server_setup(struct lbd_server *s, const struct lbd_config *cfg, char *err, size_t errlen)
{
	int ret;

	memset(s, 0, sizeof(*s));
	s->cfg = cfg;
	s->listen_fd = -1;
	s->signal_fd = -1;
	s->next_client_id = 1;
	s->accept_op.fn = on_accept;
	s->accept_pause_op.fn = on_accept_pause;
	s->signal_op.fn = on_signal;
	s->sweep_op.fn = on_sweep;
	s->status_op.fn = on_status;
	s->watchdog_op.fn = on_watchdog;
	s->cancel_op.fn = on_cancelled;
	s->uid = geteuid();
	err[0] = '\0';
	clock_gettime(CLOCK_MONOTONIC, &s->started);
	/* From the moment the socket exists a SIGTERM must mean a clean stop, not death by the
	 * default action: hold it until the loop reads it from a signalfd. */
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0) {
		int e = errno; /* snprintf may change errno */
		snprintf(err, errlen, "sigprocmask: %s", strerror(e));
		return -e;
	}
	if (getrandom(s->boot_id, sizeof(s->boot_id), 0) != (ssize_t)sizeof(s->boot_id)) {
		snprintf(err, errlen, "getrandom: %s", strerror(errno));
		return -EIO;
	}
	raise_fd_limit();
	/* The inherited socket first: a wrong one is an error before any memory is taken. */
	ret = take_inherited_socket(s, err, errlen);
	if (ret < 0)
		return ret;
	ret = setup_arenas(s, err, errlen);
	if (ret < 0)
		return ret;
	struct lbd_store_cfg scfg;
	lbd_config_store_cfg(cfg, &scfg);
	s->store = lbd_store_new(s->arenas, s->n_arenas, &scfg);
	if (!s->store) {
		snprintf(err, errlen, "cannot set up the store: %s", strerror(errno));
		return -ENOMEM;
	}
	lbd_store_set_tenants(s->store, tenant_of, cfg);
	/* The default staging, 8 MiB, is clamped to staging-per-uid like any wish (and cut to
	 * what the uid's other connections leave of it: grant_staging). */
	s->limits = (struct lbd_region_limits){ .ring_default = 256, .ring_max = LBP_MAX_RING,
						 .staging_default = 8u << 20,
						 .staging_max = cfg->staging_per_uid };
	return s->socket_inherited ? 0 : setup_socket(s, err, errlen);
}

/* At start: the file's entries back into the store, or one line saying why not. */
static void restore_snapshot(struct lbd_server *s)
{
	const char *path = s->cfg->snapshot_path;
	struct lbd_snapshot_stats st;
	char err[PATH_MAX + 200];
	int ret = lbd_snapshot_load(path, &s->models, s->store, &st, err, sizeof(err));

	if (ret == -ENOENT) {
		lbd_info("snapshot %s: no such file yet, starting empty", path);
	} else if (ret < 0) {
		lbd_warn("snapshot %s rejected, starting empty: %s", path, err);
	} else {
		char out[128] = "";
		if (st.entries_skipped || st.models_skipped)
			snprintf(out, sizeof(out), "; left out: %" PRIu64 " entries (budget, room,"
				 " ttl, or a block's parent left out), %u models",
				 st.entries_skipped, st.models_skipped);
		lbd_info("snapshot %s: %" PRIu64 " entries (%" PRIu64 " of them prefix blocks, %.1f"
			 " MiB of data) of %u models restored in %" PRIu64 " ms, written %lld s"
			 " ago%s", path, st.entries, st.blocks, (double)st.data_bytes / (1 << 20),
			 st.models - st.models_skipped, st.ms,
			 (long long)(time(NULL) - (time_t)st.written_s), out);
	}
	/* Say now, not at stop, when the file cannot be written. */
	char dir[PATH_MAX];
	const char *slash = strrchr(path, '/'); /* the path is absolute (config.c) */
	snprintf(dir, sizeof(dir), "%.*s", slash ? (int)(slash - path) : 0, path);
	if (access(dir[0] ? dir : "/", W_OK) < 0)
		lbd_warn("snapshot %s: cannot write in %s (%s): the snapshot at stop will fail", path,
			 dir[0] ? dir : "/", strerror(errno));
}

int lbd_server_run(struct lbd_server *s)
{
	sigset_t mask;
	int ret;

	/* Blocked since lbd_server_setup: a SIGTERM that came during start-up is read now. */
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	s->signal_fd = signalfd(-1, &mask, SFD_CLOEXEC);
	if (s->signal_fd < 0)
		return -errno;
	signal(SIGPIPE, SIG_IGN);
	ret = lbd_loop_init(&s->loop, 256);
	if (ret < 0) {
		lbd_err("io_uring_queue_init: %s", strerror(-ret));
		return ret;
	}
	s->loop_ready = true;
	/* Before the service threads and the first accept: nobody sees a half-restored cache. */
	if (s->cfg->snapshot_path[0])
		restore_snapshot(s);
	/* Threads start here, after any detaching fork: a fork keeps only the calling thread. */
	s->threads = s->cfg->threads == LBD_THREADS_AUTO ? s->n_nodes : s->cfg->threads;
	if (s->threads < s->n_nodes)
		lbd_warn("%u service threads for %u NUMA nodes: threads are not pinned to nodes (give "
			 "--threads %u or more, or auto)", s->threads, s->n_nodes, s->n_nodes);
	ret = lbd_service_start(&s->service, s->store, s->threads,
				(uint64_t)s->cfg->spin_us * 1000, s->nodes, s->n_nodes);
	if (ret < 0) {
		lbd_err("cannot start service threads: %s", strerror(-ret));
		return ret;
	}
	s->service_running = true;
	/* Probe once: a kernel (or a seccomp filter) without pidfd_open gets one line, not one
	 * per client. */
	ret = pidfd_open_pid(getpid());
	s->pidfd_ok = ret >= 0;
	if (ret >= 0)
		close(ret);
	else
		lbd_warn("pidfd_open: %s: a client is ended by its socket's hang-up only, not while "
			 "another process holds its socket", strerror(-ret));
	arm_accept(s);
	arm_signal(s);
	if (s->cfg->policy == LBD_POLICY_TTL)
		arm_sweep(s);
	/* Timers only under systemd: an idle daemon outside it never wakes up. */
	if (lbd_sd_notify_enabled())
		arm_status(s);
	s->watchdog_ns = lbd_sd_watchdog_ns();
	if (s->watchdog_ns)
		arm_watchdog(s);
	struct lbp_stats_reply st;
	fill_stats(s, &st);
	lbd_info("ready on %s%s: %u arena(s), %" PRIu64 " MiB, %" PRIu64 "-byte pages%s",
		 s->listen_path, s->socket_inherited ? " (from systemd)" : "", st.numa_nodes,
		 st.arena_bytes >> 20, st.page_size, st.hugepages ? " (hugetlb)" : " (no hugepages)");
	/* The socket listens (connections queue until the loop accepts them) and the service
	 * threads run: clients can be served. */
	lbd_sd_notify("READY=1");
	send_status(s);
	ret = lbd_loop_run(&s->loop);
	if (ret < 0)
		lbd_err("event loop failed: %s", strerror(-ret));
	/* Even after a failed loop: the store is intact, and the next start can use it. */
	if (s->cfg->snapshot_path[0]) {
		struct lbd_snapshot_stats snap;
		char err[PATH_MAX + 200];
		s->stopping = true;
		write_snapshot(s, &snap, err, sizeof(err));
	}
	return ret;
}

void lbd_server_teardown(struct lbd_server *s)
{
	/* The ring goes first: once it is gone no completion can land in a freed buffer. */
	if (s->loop_ready)
		lbd_loop_exit(&s->loop);
	s->loop_ready = false;
	while (s->conns) {
		struct lbd_conn *c = s->conns;
		c->io_busy = c->pid_busy = false; /* the ring is gone: nothing will complete */
		if (c->ended)
			conn_release(c);
		else
			conn_end(c);
	}
	/* After the connections: their clients were handed to the threads, which free them. */
	if (s->service_running)
		lbd_service_stop(&s->service);
	s->service_running = false;
	lbd_uids_free(&s->uids);
	lbd_store_free(s->store);
	s->store = NULL;
	if (s->listen_fd >= 0)
		close(s->listen_fd);
	if (s->socket_bound)
		unlink(s->cfg->socket_path);
	if (s->signal_fd >= 0)
		close(s->signal_fd);
	for (unsigned i = 0; i < s->n_arenas; i++)
		lbd_arena_destroy(&s->arenas[i]);
	s->n_arenas = 0;
	s->listen_fd = -1;
	s->signal_fd = -1;
	s->socket_bound = false;
}
