/* In-process cache bank: one arena, the store and a client region made as layerbankd makes
 * them; the client's requests are served by lbd_dpclient_pump inside each call. */
#include "inproc.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "arena.h"
#include "client_local.h"
#include "config.h"
#include "lbp.h"
#include "log.h"
#include "models.h"
#include "service.h"
#include "store.h"

#define LOCAL_MAX_BUDGET (1ull << 40)
#define LOCAL_STAGING (8u << 20) /* the daemon's default staging */

struct lbip_bank {
	struct lbd_arena arena;
	bool have_arena;
	struct lbd_store *store;
	struct lbd_models models;
	struct lbd_dpclient *dp;
	struct lb_client *client;
};

static void pump(void *ctx)
{
	struct lbip_bank *l = ctx;
	lbd_dpclient_pump(l->store, l->dp);
}

struct lbip_bank *lbip_bank_new(uint64_t budget, const struct lbd_store_cfg *cfg, char *err,
				size_t errlen)
{
	uint8_t boot_id[16];
	int fds[2] = { -1, -1 }, ret;

	/* The daemon's code logs through the process's one logger: its start-up lines are not the
	 * host program's business, its warnings are. */
	lbd_log_setup(LBD_LOG_WARN, 0);
	if (!budget || budget > LOCAL_MAX_BUDGET) {
		snprintf(err, errlen, "in-process bank: budget must be 1 byte .. 1 TiB");
		errno = EINVAL;
		return NULL;
	}
	struct lbip_bank *l = calloc(1, sizeof(*l));
	if (!l) {
		snprintf(err, errlen, "in-process bank: out of memory");
		errno = ENOMEM;
		return NULL;
	}
	if (getrandom(boot_id, sizeof(boot_id), 0) != (ssize_t)sizeof(boot_id)) {
		ret = -EIO;
		snprintf(err, errlen, "in-process bank: getrandom failed");
		goto fail;
	}
	/* The header and the allocator's rounding come on top of the entries' budget. */
	ret = lbd_arena_create(&l->arena, (size_t)(budget + budget / 16 + (1u << 20)), -1, LBD_HP_OFF,
			       boot_id, 0, err, errlen);
	if (ret < 0)
		goto fail;
	l->have_arena = true;
	struct lbd_store_cfg sc;
	if (cfg) {
		sc = *cfg;
	} else {
		struct lbd_config d;
		lbd_config_defaults(&d);
		lbd_config_store_cfg(&d, &sc);
	}
	sc.budget = budget;
	l->store = lbd_store_new(&l->arena, 1, &sc);
	if (!l->store) {
		ret = -errno;
		snprintf(err, errlen, "in-process bank: cannot set up the store: %s", strerror(errno));
		goto fail;
	}
	struct lbd_region_limits lim = { .ring_default = 256, .ring_max = 256,
					 .staging_default = LOCAL_STAGING, .staging_max = LOCAL_STAGING };
	l->dp = lbd_dpclient_new(&lim, 0, 0, 0, 1, getpid());
	if (!l->dp) {
		ret = -errno;
		snprintf(err, errlen, "in-process bank: cannot make the client region: %s", strerror(errno));
		goto fail;
	}
	struct lbp_welcome w = { .client_id = 1, .page_size = l->arena.page_size, .n_arenas = 1 };
	memcpy(w.boot_id, boot_id, sizeof(boot_id));
	w.arenas[0].bytes = l->arena.bytes;
	w.arenas[0].numa_node = -1;
	w.region.req_entries = l->dp->layout.req_entries;
	w.region.cpl_entries = l->dp->layout.cpl_entries;
	w.region.staging_bytes = l->dp->layout.staging_bytes;
	w.region.bytes = l->dp->bytes;
	/* The client owns its fds, as after WELCOME: give it copies. */
	fds[0] = fcntl(l->arena.fd, F_DUPFD_CLOEXEC, 0);
	fds[1] = fcntl(l->dp->fd, F_DUPFD_CLOEXEC, 0);
	if (fds[0] < 0 || fds[1] < 0) {
		ret = -errno;
		if (fds[0] >= 0)
			close(fds[0]);
		if (fds[1] >= 0)
			close(fds[1]);
		snprintf(err, errlen, "in-process bank: dup: %s", strerror(-ret));
		goto fail;
	}
	ret = lbi_client_local(&w, fds, 2, pump, l, &l->client);
	if (ret < 0) {
		snprintf(err, errlen, "in-process bank: cannot map it: %s", strerror(-ret));
		goto fail;
	}
	return l;
fail:
	lbip_bank_free(l);
	errno = -ret;
	return NULL;
}

struct lb_client *lbip_bank_client(struct lbip_bank *l)
{
	return l->client;
}

int lbip_bank_register(struct lbip_bank *l, const struct lb_model_desc *d, uint32_t *model_id)
{
	struct lbp_msg m = { .type = LBP_REGISTER_MODEL }, back;
	struct lbp_fault fault;
	uint8_t buf[LBP_MAX_FRAME];
	const char *field;
	char why[LBP_MAX_ERRMSG];
	uint32_t id;

	if (!model_id || lbp_register_from_desc(d, &m.u.reg) < 0)
		return -EINVAL;
	/* Through the wire format: the bank accepts exactly what the daemon would. */
	int len = lbp_encode(&m, buf, sizeof(buf));
	if (len < 0)
		return -EINVAL;
	if (lbp_decode(buf, (size_t)len, &back, &fault) < 0 || back.type != LBP_REGISTER_MODEL)
		return -EINVAL;
	int ret = lbd_models_valid(&back.u.reg, &field, why, sizeof(why));
	if (ret == 0)
		ret = lbd_models_register(&l->models, &back.u.reg, &id, &field, why, sizeof(why));
	if (ret < 0)
		return ret;
	ret = lbd_store_add_model(l->store, id, &back.u.reg);
	if (ret < 0)
		return ret;
	lbd_dpclient_allow(l->dp, id);
	return lbi_client_model(l->client, &back.u.reg, id, model_id);
}

void lbip_bank_stats(struct lbip_bank *l, struct lbp_stats_reply *out)
{
	memset(out, 0, sizeof(*out));
	lbd_store_stats(l->store, out);
}

int lbip_bank_model_stats(struct lbip_bank *l, uint32_t model_id, uint32_t first_layer,
			  struct lbp_model_stats_reply *out)
{
	memset(out, 0, sizeof(*out));
	return lbd_store_model_stats(l->store, model_id, first_layer, out);
}

int lbip_bank_clear(struct lbip_bank *l)
{
	lbd_store_release_all(l->store, &l->dp->leases);
	lbd_leases_free(&l->dp->leases);
	return lbd_store_clear(l->store);
}

struct lbd_store *lbip_bank_store(struct lbip_bank *l)
{
	return l->store;
}

void lbip_bank_free(struct lbip_bank *l)
{
	if (!l)
		return;
	lb_close(l->client);
	if (l->dp)
		lbd_dpclient_free(l->store, l->dp);
	lbd_store_free(l->store);
	if (l->have_arena)
		lbd_arena_destroy(&l->arena);
	free(l);
}
