/* layerbankd configuration: one checker per key, shared by the command line (getopt_long)
 * and the "key = value" config file, which is applied first so the command line wins. */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "errf.h"
#include "size.h"

#define LBD_MAX_NUMA_NODE 1023
/* Longest config-file line, without its newline. */
#define LBD_CONFIG_LINE_MAX 1024

void lbd_config_defaults(struct lbd_config *c)
{
	memset(c, 0, sizeof(*c));
	/* memcpy of the whole literal, NUL included, is safe: the assert checks it fits. */
	_Static_assert(sizeof(LBD_DEFAULT_SOCKET) <= sizeof(c->socket_path), "default socket too long");
	memcpy(c->socket_path, LBD_DEFAULT_SOCKET, sizeof(LBD_DEFAULT_SOCKET));
	c->arena_size = LBD_DEFAULT_ARENA_SIZE;
	c->hugepages = LBD_HP_TRY;
	c->numa_node = LBD_NUMA_ALL;
	c->foreground = false;
	c->log_level = LBD_LOG_INFO;
	c->threads = LBD_DEFAULT_THREADS;
	c->spin_us = LBD_DEFAULT_SPIN_US;
	c->policy = LBD_DEFAULT_POLICY;
	c->ttl_s = LBD_DEFAULT_TTL_S;
	c->half_life_s = LBD_DEFAULT_HALF_LIFE_S;
	c->drift_max = LBD_DEFAULT_DRIFT_MAX;
	c->drift_target = LBD_DEFAULT_DRIFT_TARGET;
	c->tau = LBD_DEFAULT_TAU;
	c->budget = 0;
	c->socket_mode = LBD_DEFAULT_SOCKET_MODE;
	c->socket_gid = LBD_SOCKET_GROUP_OWN;
	c->n_allow = 0;
	c->staging_per_uid = LBD_DEFAULT_STAGING_MAX;
	c->insert_bytes_per_uid = 0;
	c->conns_per_uid = LBD_DEFAULT_CONNS_PER_UID;
}

void lbd_config_store_cfg(const struct lbd_config *c, struct lbd_store_cfg *out)
{
	*out = (struct lbd_store_cfg){
		.budget = c->budget,
		.policy = c->policy,
		.ttl_ns = (uint64_t)c->ttl_s * 1000000000ull,
		.half_life_ns = (uint64_t)c->half_life_s * 1000000000ull,
		.drift_max = c->drift_max,
		.drift_target = c->drift_target,
		.tau = c->tau,
	};
}

/*
 * Per-key checkers. who names the source for the message: "--hugepages" on the command
 * line, "FILE:LINE: hugepages" in a config file. They write c only when the value is good.
 */
typedef int (*setter_fn)(struct lbd_config *c, const char *v, const char *who, char *err,
			 size_t errlen);

static int set_socket(struct lbd_config *c, const char *v, const char *who, char *err, size_t errlen)
{
	size_t len = strlen(v);

	if (len == 0) {
		lbu_errf(err, errlen, "%s: the socket path is empty", who);
		return -EINVAL;
	}
	if (len >= sizeof(c->socket_path)) {
		/* Reason before the value, so a cut-off line still says what is wrong. */
		lbu_errf(err, errlen, "%s: path is %zu bytes, a socket path holds at most %zu: '%s'",
			who, len, sizeof(c->socket_path) - 1, v);
		return -EINVAL;
	}
	memcpy(c->socket_path, v, len + 1);
	return 0;
}

static int set_arena_size(struct lbd_config *c, const char *v, const char *who, char *err,
			  size_t errlen)
{
	char max[32];
	uint64_t size;
	int rc = lbu_parse_size(v, &size);

	lbu_format_size(max, sizeof(max), LBD_MAX_ARENA_SIZE);
	if (rc == -EINVAL) {
		lbu_errf(err, errlen, "%s: '%s' is not a size (examples: 4096, 512K, 64M, 1G)", who, v);
		return -EINVAL;
	}
	if (rc == -ERANGE || size == 0 || size > LBD_MAX_ARENA_SIZE) {
		lbu_errf(err, errlen, "%s: '%s' is out of range (1 byte to %s)", who, v, max);
		return -EINVAL;
	}
	c->arena_size = size;
	return 0;
}

static int set_hugepages(struct lbd_config *c, const char *v, const char *who, char *err,
			 size_t errlen)
{
	if (strcmp(v, "require") == 0)
		c->hugepages = LBD_HP_REQUIRE;
	else if (strcmp(v, "try") == 0)
		c->hugepages = LBD_HP_TRY;
	else if (strcmp(v, "off") == 0)
		c->hugepages = LBD_HP_OFF;
	else {
		lbu_errf(err, errlen, "%s: '%s' is not one of require|try|off", who, v);
		return -EINVAL;
	}
	return 0;
}

static int set_numa_node(struct lbd_config *c, const char *v, const char *who, char *err,
			 size_t errlen)
{
	const char *p = v;
	int node = 0;

	if (strcmp(v, "all") == 0) {
		c->numa_node = LBD_NUMA_ALL;
		return 0;
	}
	/* Digits only: strtol would take signs, spaces and hex. Stop before node overflows. */
	for (; *p >= '0' && *p <= '9' && node <= LBD_MAX_NUMA_NODE; p++)
		node = node * 10 + (*p - '0');
	if (p == v || *p || node > LBD_MAX_NUMA_NODE) {
		lbu_errf(err, errlen, "%s: '%s' is not a node number 0..%d or 'all'", who, v,
			LBD_MAX_NUMA_NODE);
		return -EINVAL;
	}
	c->numa_node = node;
	return 0;
}

static int set_foreground(struct lbd_config *c, const char *v, const char *who, char *err,
			  size_t errlen)
{
	static const char *const yes[] = { "true", "yes", "1" };
	static const char *const no[] = { "false", "no", "0" };

	for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
		if (strcmp(v, yes[i]) == 0) {
			c->foreground = true;
			return 0;
		}
		if (strcmp(v, no[i]) == 0) {
			c->foreground = false;
			return 0;
		}
	}
	lbu_errf(err, errlen, "%s: '%s' is not one of true|false|yes|no|1|0", who, v);
	return -EINVAL;
}

static int set_log_level(struct lbd_config *c, const char *v, const char *who, char *err,
			 size_t errlen)
{
	enum lbd_log_level level;

	if (lbd_log_level_parse(v, &level) < 0) {
		lbu_errf(err, errlen, "%s: '%s' is not one of error|warn|info|debug", who, v);
		return -EINVAL;
	}
	c->log_level = level;
	return 0;
}

/* A whole number in min..max, digits only. */
static int set_uint(unsigned *out, const char *v, unsigned min, unsigned max, const char *who,
		    char *err, size_t errlen)
{
	uint64_t n = 0;
	const char *p = v;

	for (; *p >= '0' && *p <= '9' && n <= max; p++)
		n = n * 10 + (uint64_t)(*p - '0');
	if (p == v || *p || n < min || n > max) {
		lbu_errf(err, errlen, "%s: '%s' is not a whole number %u..%u", who, v, min, max);
		return -EINVAL;
	}
	*out = (unsigned)n;
	return 0;
}

/* A decimal number in min..max ("0.85", "1e-2"); no NaN, no infinity, nothing after it. */
static int set_real(double *out, const char *v, double min, double max, const char *who,
		    char *err, size_t errlen)
{
	char *end;
	double d;

	errno = 0;
	d = strtod(v, &end);
	if (end == v || *end || errno || !(d >= min && d <= max) || *v == ' ' || *v == '\t') {
		lbu_errf(err, errlen, "%s: '%s' is not a number %g..%g", who, v, min, max);
		return -EINVAL;
	}
	*out = d;
	return 0;
}

static int set_threads(struct lbd_config *c, const char *v, const char *who, char *err, size_t errlen)
{
	if (strcmp(v, "auto") == 0) {
		c->threads = LBD_THREADS_AUTO;
		return 0;
	}
	int ret = set_uint(&c->threads, v, 1, LBD_MAX_THREADS, who, err, errlen);
	if (ret < 0)
		lbu_errf(err, errlen, "%s: '%s' is not a whole number 1..%u, nor 'auto'", who, v,
			 LBD_MAX_THREADS);
	return ret;
}

static int set_spin_us(struct lbd_config *c, const char *v, const char *who, char *err, size_t errlen)
{
	return set_uint(&c->spin_us, v, 0, LBD_MAX_SPIN_US, who, err, errlen);
}

static int set_ttl(struct lbd_config *c, const char *v, const char *who, char *err, size_t errlen)
{
	return set_uint(&c->ttl_s, v, 1, 365u * 24 * 3600, who, err, errlen);
}

static int set_half_life(struct lbd_config *c, const char *v, const char *who, char *err, size_t errlen)
{
	return set_uint(&c->half_life_s, v, 1, 365u * 24 * 3600, who, err, errlen);
}

static int set_drift_max(struct lbd_config *c, const char *v, const char *who, char *err, size_t errlen)
{
	return set_real(&c->drift_max, v, 0, 1e9, who, err, errlen);
}

static int set_drift_target(struct lbd_config *c, const char *v, const char *who, char *err,
			    size_t errlen)
{
	return set_real(&c->drift_target, v, 0, 1, who, err, errlen);
}

static int set_tau(struct lbd_config *c, const char *v, const char *who, char *err, size_t errlen)
{
	return set_real(&c->tau, v, -1, 1, who, err, errlen);
}

static int set_policy(struct lbd_config *c, const char *v, const char *who, char *err, size_t errlen)
{
	if (lbd_policy_parse(v, &c->policy) < 0) {
		lbu_errf(err, errlen, "%s: '%s' is not one of lru|decay|ttl", who, v);
		return -EINVAL;
	}
	return 0;
}

static int set_budget(struct lbd_config *c, const char *v, const char *who, char *err, size_t errlen)
{
	uint64_t size;
	int rc = lbu_parse_size(v, &size);

	if (rc < 0 || size > LBD_MAX_ARENA_SIZE) {
		lbu_errf(err, errlen, "%s: '%s' is not a size up to the arena's (0: all of it)", who, v);
		return -EINVAL;
	}
	c->budget = size;
	return 0;
}

/* Octal permission bits: the owner keeps read and write, or the daemon's own user (and a
 * second daemon checking whether this one is live) could not connect. */
static int set_socket_mode(struct lbd_config *c, const char *v, const char *who, char *err,
			   size_t errlen)
{
	unsigned mode = 0;
	const char *p = v;

	for (; *p >= '0' && *p <= '7' && p - v < 4; p++)
		mode = mode * 8 + (unsigned)(*p - '0');
	if (p == v || *p || mode > 0777) {
		lbu_errf(err, errlen, "%s: '%s' is not an octal mode 0600..0777 (such as 0660)", who, v);
		return -EINVAL;
	}
	if ((mode & 0600) != 0600) {
		lbu_errf(err, errlen, "%s: '%s' leaves the owner without read and write (0600)", who, v);
		return -EINVAL;
	}
	c->socket_mode = mode;
	return 0;
}

/* Digits only, below the invalid id (uid_t)-1. @return 0, or -1 when v is not that. */
static int parse_id(const char *v, uint32_t *out)
{
	uint64_t n = 0;
	const char *p = v;

	for (; *p >= '0' && *p <= '9' && n < UINT32_MAX; p++)
		n = n * 10 + (uint64_t)(*p - '0');
	if (p == v || *p || n >= UINT32_MAX)
		return -1;
	*out = (uint32_t)n;
	return 0;
}

/* A group name or gid, resolved now, so that --check-config catches an unknown one; 'none'
 * keeps the daemon's own group. */
static int set_socket_group(struct lbd_config *c, const char *v, const char *who, char *err,
			    size_t errlen)
{
	struct group gr, *res = NULL;
	char buf[4096];
	uint32_t gid;

	if (strcmp(v, "none") == 0) {
		c->socket_gid = LBD_SOCKET_GROUP_OWN;
		return 0;
	}
	if (parse_id(v, &gid) == 0) {
		c->socket_gid = gid;
		return 0;
	}
	int rc = getgrnam_r(v, &gr, buf, sizeof(buf), &res);
	if (!res) {
		lbu_errf(err, errlen, "%s: '%s' is not a group name or gid%s%s", who, v,
			 rc ? ": " : "", rc ? strerror(rc) : "");
		return -EINVAL;
	}
	c->socket_gid = gr.gr_gid;
	return 0;
}

/* One user of a model-allow list: a uid, or a name resolved now. */
static int allow_user(const char *item, uint32_t *uid, const char *who, char *err, size_t errlen)
{
	struct passwd pw, *res = NULL;
	char buf[4096];

	if (parse_id(item, uid) == 0)
		return 0;
	int rc = getpwnam_r(item, &pw, buf, sizeof(buf), &res);
	if (!res) {
		lbu_errf(err, errlen, "%s: '%s' is not a user name or uid%s%s", who, item,
			 rc ? ": " : "", rc ? strerror(rc) : "");
		return -EINVAL;
	}
	*uid = pw.pw_uid;
	return 0;
}

/*
 * "MODEL USER[,USER...]": the model name is everything before the last blank (it may hold
 * blanks), the users a comma list without blanks. 'none' adds nothing: the example config's
 * default. The users are resolved now, so that --check-config catches an unknown one.
 */
static int set_model_allow(struct lbd_config *c, const char *v, const char *who, char *err,
			   size_t errlen)
{
	struct lbd_model_allow a;
	const char *sp = NULL;

	if (strcmp(v, "none") == 0)
		return 0;
	memset(&a, 0, sizeof(a));
	for (const char *p = v; *p; p++)
		if (*p == ' ' || *p == '\t')
			sp = p;
	const char *list = sp ? sp + 1 : v;
	const char *end = sp;
	while (end && end > v && (end[-1] == ' ' || end[-1] == '\t'))
		end--;
	size_t len = end ? (size_t)(end - v) : 0;
	if (!sp || len == 0 || *list == '\0') {
		lbu_errf(err, errlen, "%s: '%s' is not 'MODEL USER[,USER...]'", who, v);
		return -EINVAL;
	}
	if (len > LBP_MAX_NAME) {
		lbu_errf(err, errlen, "%s: model name of %zu bytes, at most %u: '%.*s'", who, len,
			 LBP_MAX_NAME, (int)len, v);
		return -EINVAL;
	}
	memcpy(a.model, v, len);
	for (const char *p = list; *p;) {
		char item[256];
		size_t n = strcspn(p, ",");
		if (n == 0 || n >= sizeof(item)) {
			lbu_errf(err, errlen, "%s: '%s': %s user in the list", who, list,
				 n ? "too long a" : "an empty");
			return -EINVAL;
		}
		if (a.n_uids == LBD_MAX_ALLOW_UIDS) {
			lbu_errf(err, errlen, "%s: more than %u users for model '%s'", who,
				 LBD_MAX_ALLOW_UIDS, a.model);
			return -EINVAL;
		}
		memcpy(item, p, n);
		item[n] = '\0';
		int rc = allow_user(item, &a.uids[a.n_uids], who, err, errlen);
		if (rc < 0)
			return rc;
		a.n_uids++;
		p += n;
		if (*p == ',' && *++p == '\0') {
			lbu_errf(err, errlen, "%s: '%s': an empty user in the list", who, list);
			return -EINVAL;
		}
	}
	if (lbd_config_model_allow(c, a.model)) {
		lbu_errf(err, errlen, "%s: model '%s' has an allow-list already (one line per model)",
			 who, a.model);
		return -EINVAL;
	}
	if (c->n_allow == LBD_MAX_ALLOW_MODELS) {
		lbu_errf(err, errlen, "%s: more than %u models with an allow-list", who,
			 LBD_MAX_ALLOW_MODELS);
		return -EINVAL;
	}
	c->allow[c->n_allow++] = a;
	return 0;
}

const struct lbd_model_allow *lbd_config_model_allow(const struct lbd_config *c, const char *model)
{
	for (unsigned i = 0; i < c->n_allow; i++)
		if (strcmp(c->allow[i].model, model) == 0)
			return &c->allow[i];
	return NULL;
}

static bool lists_name(const struct lbd_model_allow *a, uint32_t uid)
{
	for (uint32_t i = 0; i < a->n_uids; i++)
		if (a->uids[i] == uid)
			return true;
	return false;
}

static bool same_users(const struct lbd_model_allow *a, const struct lbd_model_allow *b)
{
	for (uint32_t i = 0; i < a->n_uids; i++)
		if (!lists_name(b, a->uids[i]))
			return false;
	for (uint32_t i = 0; i < b->n_uids; i++)
		if (!lists_name(a, b->uids[i]))
			return false;
	return true;
}

/* The tenant of allow line i: 1 + the lists before the first one with i's users that are the
 * first of theirs. */
static unsigned line_tenant(const struct lbd_config *c, unsigned i)
{
	unsigned t = 0;

	for (unsigned j = 0; j <= i; j++) {
		bool first = true;
		for (unsigned k = 0; k < j && first; k++)
			first = !same_users(&c->allow[k], &c->allow[j]);
		if (!first)
			continue;
		t++;
		if (same_users(&c->allow[j], &c->allow[i]))
			return t;
	}
	return t; /* not reached: line i is the first of its users or follows one */
}

unsigned lbd_config_tenants(const struct lbd_config *c)
{
	unsigned n = 1;

	for (unsigned i = 0; i < c->n_allow; i++)
		if (line_tenant(c, i) == n)
			n++;
	return n;
}

unsigned lbd_config_tenant_of(const struct lbd_config *c, const char *model)
{
	const struct lbd_model_allow *a = lbd_config_model_allow(c, model);
	return a ? line_tenant(c, (unsigned)(a - c->allow)) : 0;
}

bool lbd_config_tenant_admits(const struct lbd_config *c, unsigned t, uint32_t uid)
{
	if (t == 0)
		return true;
	for (unsigned i = 0; i < c->n_allow; i++)
		if (line_tenant(c, i) == t)
			return lists_name(&c->allow[i], uid);
	return false;
}

/* Whole pages, within what HELLO can ask for (LBP_MAX_STAGING). */
static int set_staging_max(struct lbd_config *c, const char *v, const char *who, char *err,
			   size_t errlen)
{
	uint64_t size;
	int rc = lbu_parse_size(v, &size);

	if (rc < 0 || size < 4096 || size > LBD_MAX_STAGING_MAX || size % 4096) {
		lbu_errf(err, errlen, "%s: '%s' is not a multiple of 4096 from 4096 to 4G", who, v);
		return -EINVAL;
	}
	c->staging_per_uid = size;
	return 0;
}

static int set_insert_bytes(struct lbd_config *c, const char *v, const char *who, char *err,
			    size_t errlen)
{
	uint64_t size;
	int rc = lbu_parse_size(v, &size);

	if (rc < 0 || size > LBD_MAX_ARENA_SIZE) {
		lbu_errf(err, errlen, "%s: '%s' is not a size up to 1T (0: no limit)", who, v);
		return -EINVAL;
	}
	c->insert_bytes_per_uid = size;
	return 0;
}

static int set_conns_per_uid(struct lbd_config *c, const char *v, const char *who, char *err,
			     size_t errlen)
{
	return set_uint(&c->conns_per_uid, v, 1, LBD_MAX_CONNS_PER_UID, who, err, errlen);
}

/* A file the daemon writes at stop and reads at start; "none" for no snapshot. A relative
 * path is made absolute here: the daemon leaves its working folder when it detaches. */
static int set_snapshot(struct lbd_config *c, const char *v, const char *who, char *err,
			size_t errlen)
{
	char path[PATH_MAX], cwd[PATH_MAX];
	size_t len = strlen(v);
	int n;

	if (strcmp(v, "none") == 0) {
		c->snapshot_path[0] = '\0';
		return 0;
	}
	if (len == 0 || v[len - 1] == '/') {
		lbu_errf(err, errlen, "%s: '%s' is not a file path (or 'none')", who, v);
		return -EINVAL;
	}
	if (v[0] == '/') {
		n = snprintf(path, sizeof(path), "%s", v);
	} else {
		if (!getcwd(cwd, sizeof(cwd))) {
			lbu_errf(err, errlen, "%s: '%s' is relative and the working folder is unknown: %s",
				 who, v, strerror(errno));
			return -EINVAL;
		}
		n = snprintf(path, sizeof(path), "%s/%s", strcmp(cwd, "/") ? cwd : "", v);
	}
	/* Room for the ".tmp" the writer appends. */
	if (n < 0 || (size_t)n + 4 >= sizeof(c->snapshot_path)) {
		lbu_errf(err, errlen, "%s: path longer than %zu bytes: '%s'", who,
			 sizeof(c->snapshot_path) - 5, v);
		return -EINVAL;
	}
	memcpy(c->snapshot_path, path, (size_t)n + 1);
	return 0;
}

/* The second tier's seed nodes, "redis-cluster://host:port[,host:port...]", or "none". Only
 * the form is checked here: the tier (l2_cluster.c) reads the list when the daemon starts. */
static int set_l2(struct lbd_config *c, const char *v, const char *who, char *err, size_t errlen)
{
	static const char scheme[] = "redis-cluster://";
	if (strcmp(v, "none") == 0) {
		c->l2[0] = '\0';
		return 0;
	}
	if (strncmp(v, scheme, sizeof(scheme) - 1) || !v[sizeof(scheme) - 1] ||
	    strlen(v) >= sizeof(c->l2) || !strchr(v + sizeof(scheme) - 1, ':')) {
		lbu_errf(err, errlen, "%s: '%.200s' is not redis-cluster://HOST:PORT[,HOST:PORT...] "
			 "(under %zu bytes) or 'none'", who, v, sizeof(c->l2));
		return -EINVAL;
	}
	memcpy(c->l2, v, strlen(v) + 1);
	return 0;
}

/* getopt_long values for options without a short form: above any char. */
enum {
	OPT_ARENA_SIZE = 256,
	OPT_HUGEPAGES,
	OPT_NUMA_NODE,
	OPT_LOG_LEVEL,
	OPT_VERSION,
	OPT_THREADS,
	OPT_SPIN_US,
	OPT_POLICY,
	OPT_TTL,
	OPT_HALF_LIFE,
	OPT_DRIFT_MAX,
	OPT_DRIFT_TARGET,
	OPT_TAU,
	OPT_BUDGET,
	OPT_SNAPSHOT,
	OPT_CHECK_CONFIG,
	OPT_SOCKET_MODE,
	OPT_SOCKET_GROUP,
	OPT_MODEL_ALLOW,
	OPT_STAGING_MAX,
	OPT_INSERT_BYTES,
	OPT_L2,
	OPT_CONNS_PER_UID,
};

/* The keys a config file may set, which are also the options taking a value or a flag. */
struct config_key {
	const char *name; /* long option and config-file key */
	int val;          /* getopt_long value */
	int has_arg;      /* on the command line; in the file every key takes a value */
	const char *what; /* named in "missing value" messages */
	setter_fn set;
};

/* A list: may appear on several lines (and options), one per model. */
#define KEY_REPEATS(k) ((k)->val == OPT_MODEL_ALLOW)

static const struct config_key keys[] = {
	{ "socket", 's', required_argument, "a socket path", set_socket },
	{ "arena-size", OPT_ARENA_SIZE, required_argument, "a size such as 64M or 1G", set_arena_size },
	{ "hugepages", OPT_HUGEPAGES, required_argument, "require|try|off", set_hugepages },
	{ "numa-node", OPT_NUMA_NODE, required_argument, "a node number 0..1023 or 'all'", set_numa_node },
	{ "foreground", 'f', no_argument, "true|false|yes|no|1|0", set_foreground },
	{ "log-level", OPT_LOG_LEVEL, required_argument, "error|warn|info|debug", set_log_level },
	{ "threads", OPT_THREADS, required_argument, "a number of threads or 'auto'", set_threads },
	{ "spin-us", OPT_SPIN_US, required_argument, "microseconds", set_spin_us },
	{ "policy", OPT_POLICY, required_argument, "lru|decay|ttl", set_policy },
	{ "ttl", OPT_TTL, required_argument, "seconds", set_ttl },
	{ "half-life", OPT_HALF_LIFE, required_argument, "seconds", set_half_life },
	{ "drift-max", OPT_DRIFT_MAX, required_argument, "a number", set_drift_max },
	{ "drift-target", OPT_DRIFT_TARGET, required_argument, "a number 0..1", set_drift_target },
	{ "tau", OPT_TAU, required_argument, "a similarity -1..1", set_tau },
	{ "budget", OPT_BUDGET, required_argument, "a size", set_budget },
	{ "snapshot", OPT_SNAPSHOT, required_argument, "a file path or 'none'", set_snapshot },
	{ "socket-mode", OPT_SOCKET_MODE, required_argument, "an octal mode such as 0660", set_socket_mode },
	{ "socket-group", OPT_SOCKET_GROUP, required_argument, "a group name or gid", set_socket_group },
	{ "model-allow", OPT_MODEL_ALLOW, required_argument, "MODEL USER[,USER...]", set_model_allow },
	{ "staging-per-uid", OPT_STAGING_MAX, required_argument, "a size", set_staging_max },
	{ "insert-bytes-per-uid", OPT_INSERT_BYTES, required_argument, "a size", set_insert_bytes },
	{ "max-connections-per-uid", OPT_CONNS_PER_UID, required_argument, "a number of connections",
	  set_conns_per_uid },
	{ "l2", OPT_L2, required_argument, "redis-cluster://HOST:PORT[,...] or 'none'", set_l2 },
	/* Synonyms: the names of the first two before they were per uid. Not listed, and the same
	 * key as the name above them (a file may set only one of the two). */
	{ "client-staging-max", OPT_STAGING_MAX, required_argument, "a size", set_staging_max },
	{ "client-insert-bytes", OPT_INSERT_BYTES, required_argument, "a size", set_insert_bytes },
};
#define N_KEYS (sizeof(keys) / sizeof(keys[0]))

static const struct config_key *key_by_name(const char *name)
{
	for (size_t i = 0; i < N_KEYS; i++)
		if (strcmp(keys[i].name, name) == 0)
			return &keys[i];
	return NULL;
}

static const struct config_key *key_by_val(int val)
{
	for (size_t i = 0; i < N_KEYS; i++)
		if (keys[i].val == val)
			return &keys[i];
	return NULL;
}

static const struct option long_options[] = {
	{ "socket", required_argument, NULL, 's' },
	{ "arena-size", required_argument, NULL, OPT_ARENA_SIZE },
	{ "hugepages", required_argument, NULL, OPT_HUGEPAGES },
	{ "numa-node", required_argument, NULL, OPT_NUMA_NODE },
	{ "foreground", no_argument, NULL, 'f' },
	{ "log-level", required_argument, NULL, OPT_LOG_LEVEL },
	{ "threads", required_argument, NULL, OPT_THREADS },
	{ "spin-us", required_argument, NULL, OPT_SPIN_US },
	{ "policy", required_argument, NULL, OPT_POLICY },
	{ "ttl", required_argument, NULL, OPT_TTL },
	{ "half-life", required_argument, NULL, OPT_HALF_LIFE },
	{ "drift-max", required_argument, NULL, OPT_DRIFT_MAX },
	{ "drift-target", required_argument, NULL, OPT_DRIFT_TARGET },
	{ "tau", required_argument, NULL, OPT_TAU },
	{ "budget", required_argument, NULL, OPT_BUDGET },
	{ "snapshot", required_argument, NULL, OPT_SNAPSHOT },
	{ "socket-mode", required_argument, NULL, OPT_SOCKET_MODE },
	{ "socket-group", required_argument, NULL, OPT_SOCKET_GROUP },
	{ "model-allow", required_argument, NULL, OPT_MODEL_ALLOW },
	{ "staging-per-uid", required_argument, NULL, OPT_STAGING_MAX },
	{ "insert-bytes-per-uid", required_argument, NULL, OPT_INSERT_BYTES },
	{ "max-connections-per-uid", required_argument, NULL, OPT_CONNS_PER_UID },
	{ "client-staging-max", required_argument, NULL, OPT_STAGING_MAX },
	{ "client-insert-bytes", required_argument, NULL, OPT_INSERT_BYTES },
	{ "l2", required_argument, NULL, OPT_L2 },
	{ "config", required_argument, NULL, 'c' },
	{ "help", no_argument, NULL, 'h' },
	{ "version", no_argument, NULL, OPT_VERSION },
	{ "check-config", no_argument, NULL, OPT_CHECK_CONFIG },
	{ NULL, 0, NULL, 0 },
};
/* '+': stop at the first operand and never permute the caller's argv; ':': report a
 * missing argument as ':' rather than '?'. */
static const char short_options[] = "+:s:c:fh";

/* Cut a '#' comment: one at the start of the line or after whitespace. */
static void strip_comment(char *s)
{
	for (char *p = s; *p; p++) {
		if (*p == '#' && (p == s || p[-1] == ' ' || p[-1] == '\t')) {
			*p = '\0';
			return;
		}
	}
}

/* Skip leading and cut trailing blanks ('\r' too, for files written on Windows). */
static char *trim(char *s)
{
	char *end;

	while (*s == ' ' || *s == '\t')
		s++;
	end = s + strlen(s);
	while (end > s && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r'))
		*--end = '\0';
	return s;
}

enum { LINE_EOF = -1, LINE_LONG = -2, LINE_NUL = -3, LINE_IOERR = -4 };

/*
 * One line into buf (LBD_CONFIG_LINE_MAX + 1 bytes), without its newline.
 * @return its length, or LINE_EOF, LINE_LONG, LINE_NUL, LINE_IOERR (*ioerr set).
 */
static int read_line(FILE *f, char *buf, int *ioerr)
{
	size_t len = 0;
	int ch;

	while ((ch = getc(f)) != EOF && ch != '\n') {
		/* A NUL would silently cut the line short in every string function after. */
		if (ch == '\0')
			return LINE_NUL;
		if (len == LBD_CONFIG_LINE_MAX)
			return LINE_LONG;
		buf[len++] = (char)ch;
	}
	if (ferror(f)) {
		*ioerr = errno ? errno : EIO;
		return LINE_IOERR;
	}
	if (ch == EOF && len == 0)
		return LINE_EOF;
	buf[len] = '\0';
	return (int)len;
}

static int load_lines(struct lbd_config *c, FILE *f, const char *path, char *err, size_t errlen)
{
	char buf[LBD_CONFIG_LINE_MAX + 1];
	unsigned first_line[N_KEYS] = { 0 };
	unsigned lineno = 0;
	int ioerr = 0;
	int n;

	while ((n = read_line(f, buf, &ioerr)) >= 0) {
		lineno++;
		strip_comment(buf);
		char *line = trim(buf);
		if (*line == '\0')
			continue;
		char *eq = strchr(line, '=');
		if (!eq) {
			lbu_errf(err, errlen, "%s:%u: '%s' has no '=' (lines are 'key = value')", path,
				lineno, line);
			return -EINVAL;
		}
		*eq = '\0';
		char *name = trim(line);
		char *value = trim(eq + 1);
		const struct config_key *k = key_by_name(name);
		if (!k) {
			char list[512] = "";
			size_t used = 0;
			for (size_t i = 0; i < N_KEYS; i++) {
				if (key_by_val(keys[i].val) != &keys[i])
					continue; /* a synonym */
				int w = snprintf(list + used, sizeof(list) - used, "%s%s", i ? ", " : "",
						 keys[i].name);
				if (w > 0 && (size_t)w < sizeof(list) - used)
					used += (size_t)w;
			}
			lbu_errf(err, errlen, "%s:%u: unknown key '%s' (keys: %s)", path, lineno, name,
				list);
			return -EINVAL;
		}
		size_t ki = (size_t)(key_by_val(k->val) - keys); /* a synonym is its key */
		if (first_line[ki] && !KEY_REPEATS(k)) {
			lbu_errf(err, errlen, "%s:%u: %s: set again (first on line %u)", path, lineno,
				name, first_line[ki]);
			return -EINVAL;
		}
		first_line[ki] = lineno;
		if (*value == '\0') {
			lbu_errf(err, errlen, "%s:%u: %s: empty value (expected %s)", path, lineno, name,
				k->what);
			return -EINVAL;
		}
		char who[PATH_MAX + 64];
		snprintf(who, sizeof(who), "%s:%u: %s", path, lineno, name);
		int rc = k->set(c, value, who, err, errlen);
		if (rc < 0)
			return rc;
	}
	switch (n) {
	case LINE_LONG:
		lbu_errf(err, errlen, "%s:%u: line longer than %d bytes", path, lineno + 1,
			LBD_CONFIG_LINE_MAX);
		return -EINVAL;
	case LINE_NUL:
		lbu_errf(err, errlen, "%s:%u: NUL byte in the line", path, lineno + 1);
		return -EINVAL;
	case LINE_IOERR:
		lbu_errf(err, errlen, "%s: %s", path, strerror(ioerr));
		return -ioerr;
	default:
		return 0;
	}
}

int lbd_config_load_file(struct lbd_config *c, const char *path, char *err, size_t errlen)
{
	/* Work on a copy: a file with an error on line 9 leaves c as it was. */
	struct lbd_config tmp = *c;
	FILE *f;
	int rc;

	f = fopen(path, "re");
	if (!f) {
		rc = -errno;
		lbu_errf(err, errlen, "%s: %s", path, strerror(-rc));
		return rc;
	}
	errno = 0; /* getc may fail without setting it */
	rc = load_lines(&tmp, f, path, err, errlen);
	fclose(f);
	if (rc == 0)
		*c = tmp;
	return rc;
}

int lbd_config_set(struct lbd_config *c, const char *key, const char *value, const char *who,
		   char *err, size_t errlen)
{
	const struct config_key *k = key_by_name(key);

	if (!who)
		who = key;
	if (!k)
		return lbu_fail(err, errlen, -ENOENT, "unknown key '%s'", key);
	if (*value == '\0')
		return lbu_fail(err, errlen, -EINVAL, "%s: empty value (expected %s)", who, k->what);
	return k->set(c, value, who, err, errlen) < 0 ? -EINVAL : 0;
}

/* getopt_long takes unique prefixes; say which options a shared one could mean. */
static bool ambiguous(const char *name, size_t len, char *err, size_t errlen)
{
	char list[256] = "";
	size_t used = 0;
	int hits = 0;

	for (const struct option *o = long_options; o->name; o++) {
		if (len == 0 || strncmp(o->name, name, len) != 0)
			continue;
		int n = snprintf(list + used, sizeof(list) - used, "%s--%s", hits ? " or " : "",
				 o->name);
		if (n > 0 && (size_t)n < sizeof(list) - used)
			used += (size_t)n;
		hits++;
	}
	if (hits < 2)
		return false;
	lbu_errf(err, errlen, "option '--%.*s' is ambiguous: %s", (int)len, name, list);
	return true;
}

/*
 * Name the option getopt_long choked on. arg is the argv element it was reading: with '+'
 * in short_options nothing is permuted, so that is argv[optind before the call].
 */
static void bad_option(const char *arg, int ret, char *err, size_t errlen)
{
	const struct config_key *k;

	if (ret == ':') {
		if (optopt == 'c')
			lbu_errf(err, errlen, "--config: missing value (a file)");
		else if ((k = key_by_val(optopt)) && strncmp(arg, "--", 2) == 0)
			lbu_errf(err, errlen, "%s: missing value (%s)", arg, k->what); /* as given */
		else if (k)
			lbu_errf(err, errlen, "--%s: missing value (%s)", k->name, k->what);
		else
			lbu_errf(err, errlen, "'%s': missing value", arg);
		return;
	}
	if (strncmp(arg, "--", 2) == 0) {
		size_t namelen = strcspn(arg, "=");
		/* glibc sets optopt to the option's value for "--foreground=yes". */
		if (optopt != 0 && arg[namelen] == '=')
			lbu_errf(err, errlen, "%.*s: takes no value, got '%s'", (int)namelen, arg,
				arg + namelen + 1);
		else if (!ambiguous(arg + 2, namelen - 2, err, errlen))
			lbu_errf(err, errlen, "unknown option '%.*s' (see --help)", (int)namelen, arg);
		return;
	}
	lbu_errf(err, errlen, "unknown option '-%c' (see --help)", optopt);
}

/*
 * First pass: check the shape of argv, find --config, act on --help and --version.
 * @return 0, 1 (help or version printed), -EINVAL.
 */
static int scan_args(int argc, char **argv, const char **config, char *err, size_t errlen)
{
	int ret;

	optind = 0; /* glibc: reinitialise fully, so each call starts afresh */
	opterr = 0;
	*config = NULL;
	for (;;) {
		int at = optind ? optind : 1;
		ret = getopt_long(argc, argv, short_options, long_options, NULL);
		if (ret == -1)
			break;
		switch (ret) {
		case '?':
		case ':':
			bad_option(at < argc ? argv[at] : "", ret, err, errlen);
			return -EINVAL;
		case 'h':
			lbd_config_usage(stdout);
			return 1;
		case OPT_VERSION:
			printf("layerbankd %s\n", LBD_VERSION_STRING);
			return 1;
		case 'c':
			if (*config) {
				lbu_errf(err, errlen, "--config: given twice ('%s' and '%s')", *config,
					optarg);
				return -EINVAL;
			}
			if (*optarg == '\0') {
				lbu_errf(err, errlen, "--config: the file name is empty");
				return -EINVAL;
			}
			*config = optarg;
			break;
		default:
			break;
		}
	}
	if (optind < argc) {
		lbu_errf(err, errlen, "unexpected argument '%s' (layerbankd takes only options)",
			argv[optind]);
		return -EINVAL;
	}
	return 0;
}

int lbd_config_parse_args(struct lbd_config *c, int argc, char **argv, char *err, size_t errlen)
{
	struct lbd_config tmp;
	const char *config;
	int ret;

	if (err && errlen)
		err[0] = '\0';
	ret = scan_args(argc, argv, &config, err, errlen);
	if (ret != 0)
		return ret;

	lbd_config_defaults(&tmp);
	/* The header promises -EINVAL for any bad file, whatever errno the open gave. */
	if (config && lbd_config_load_file(&tmp, config, err, errlen) < 0)
		return -EINVAL;

	/* Second pass: the shape is known good, so only values can fail now. */
	optind = 0;
	opterr = 0;
	bool allow_from_cli = false;
	int idx = -1;
	while ((ret = getopt_long(argc, argv, short_options, long_options, &idx)) != -1) {
		const struct config_key *k = key_by_val(ret);
		char who[64];
		/* Named as given: a synonym's message names the synonym. */
		const char *given = idx >= 0 ? long_options[idx].name : k ? k->name : "";
		idx = -1;

		if (ret == OPT_CHECK_CONFIG) {
			tmp.check_only = true;
			continue;
		}
		if (!k)
			continue; /* --config, handled above */
		/* A list wins as a whole: the options replace the file's model-allow lines. */
		if (ret == OPT_MODEL_ALLOW && !allow_from_cli) {
			tmp.n_allow = 0;
			allow_from_cli = true;
		}
		snprintf(who, sizeof(who), "--%s", given);
		if (k->set(&tmp, k->has_arg ? optarg : "true", who, err, errlen) < 0)
			return -EINVAL;
	}
	*c = tmp;
	return 0;
}

void lbd_config_usage(FILE *out)
{
	char size[32], max[32], staging[32];

	lbu_format_size(size, sizeof(size), LBD_DEFAULT_ARENA_SIZE);
	lbu_format_size(max, sizeof(max), LBD_MAX_ARENA_SIZE);
	lbu_format_size(staging, sizeof(staging), LBD_DEFAULT_STAGING_MAX);
	fprintf(out,
		"Usage: layerbankd [OPTION]...\n"
		"Hold transformer layer activations in a shared-memory arena for local clients.\n"
		"\n"
		"  -s, --socket PATH        control socket (default %s)\n"
		"      --arena-size SIZE    arena bytes over all nodes, up to %s: 4096, 512K, 64M, 1G\n"
		"                           (K/M/G/T are binary; default %s)\n"
		"      --hugepages MODE     require|try|off: try falls back to 4 KiB pages (default try)\n"
		"      --numa-node N|all    one arena on node N (0..%d), or one per node (default all)\n"
		"  -f, --foreground         stay attached and log to stderr (default: detach, syslog)\n"
		"      --log-level LEVEL    error|warn|info|debug (default info)\n"
		"      --threads N|auto     service threads polling client rings; auto: one per NUMA\n"
		"                           node in use, each on its node's CPUs (default auto)\n"
		"      --spin-us N          a service thread spins up to N microseconds before it\n"
		"                           sleeps, 2 at most while all CPUs are busy; 0 sleeps at\n"
		"                           once: slower, no CPU while idle (default %u)\n"
		"      --policy P           eviction: lru|decay|ttl (default lru)\n"
		"      --ttl S              ttl policy: entries expire after S seconds (default %u)\n"
		"      --half-life S        decay policy: a hit counts half after S seconds (default %u)\n"
		"      --drift-max X        a REPORT above X invalidates the entry (default %g)\n"
		"      --drift-target X     adapt each layer's threshold so that the mean drift its\n"
		"                           REPORTed approximate reuses show settles at X, 0..1;\n"
		"                           0: --tau for every layer (default %g)\n"
		"      --tau X              similarity needed for reuse when a lookup brings no\n"
		"                           thresholds, -1..1 (default %g)\n"
		"      --budget SIZE        bytes entries may use (default 0: the whole arena)\n"
		"      --snapshot FILE      write the cache to FILE at stop (and on SNAPSHOT), restore\n"
		"                           it at start; 'none' for no snapshot (the default)\n"
		"      --socket-mode MODE   octal permissions of the socket it binds (default 0660)\n"
		"      --socket-group GROUP its group, a name or gid (default none: the daemon's)\n"
		"      --model-allow 'MODEL USER[,USER...]'\n"
		"                           only these users (names or uids) may register MODEL;\n"
		"                           repeat per model; a model without a list is open to all\n"
		"      --max-connections-per-uid N\n"
		"                           connections one user (uid) may hold at once, 1..%u; one\n"
		"                           more is refused at its HELLO with EUSERS (default %u)\n"
		"      --staging-per-uid SIZE\n"
		"                           staging buffers granted to one user's connections in all\n"
		"                           (one gets at most what is left; none left: ENOBUFS), a\n"
		"                           multiple of 4096 up to 4G (default %s; old name\n"
		"                           --client-staging-max)\n"
		"      --insert-bytes-per-uid SIZE\n"
		"                           arena bytes one user's entries may hold at once; more\n"
		"                           is refused with EDQUOT (default 0: no limit; old name\n"
		"                           --client-insert-bytes)\n"
		"      --l2 redis-cluster://HOST:PORT[,HOST:PORT...]\n"
		"                           a second tier on a Redis Cluster (its seed nodes): inserts\n"
		"                           are written behind to it, and a miss asks it for the next\n"
		"                           request (PROTOCOL.md, Second tier); 'none' (the default)\n"
		"  -c, --config FILE        read 'key = value' lines first; the keys are the long\n"
		"                           options above without dashes (foreground = true|false),\n"
		"                           and the command line wins over the file\n"
		"      --check-config       check the options and the config file, say so, exit 0\n"
		"                           (2 on a bad one, as at start)\n"
		"  -h, --help               print this help and exit\n"
		"      --version            print the version and exit\n"
		"\n"
		"Under systemd (layerbankd.service) it runs with --foreground: logs go to stderr with\n"
		"journald's <N> priority prefixes, and it reports READY, STATUS, WATCHDOG and STOPPING\n"
		"through $NOTIFY_SOCKET. With socket activation (layerbankd.socket) it takes the one\n"
		"listening SOCK_SEQPACKET unix socket systemd passes ($LISTEN_FDS=1) instead of binding\n"
		"--socket, and leaves the file in place at exit; any other passed fds are an error (1).\n"
		"Exit status: 0 clean stop, 1 start-up or runtime failure, 2 bad option or config.\n",
		LBD_DEFAULT_SOCKET, max, size, LBD_MAX_NUMA_NODE,
		LBD_DEFAULT_SPIN_US, LBD_DEFAULT_TTL_S, LBD_DEFAULT_HALF_LIFE_S, LBD_DEFAULT_DRIFT_MAX,
		LBD_DEFAULT_DRIFT_TARGET, LBD_DEFAULT_TAU, LBD_MAX_CONNS_PER_UID,
		LBD_DEFAULT_CONNS_PER_UID, staging);
}
