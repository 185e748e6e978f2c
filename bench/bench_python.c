/*
 * layerbank-bench python: a hit from Python against the same hit from C, in one run. A
 * layerbankd of its own holds one entry, a BERT-base layer's output ([128][768] f32, layer 11 of
 * 12); C times lb_lookup_deepest, a read of the hit's pointer and lb_release; then bench/py_hit.py
 * (/usr/bin/python3 with the build's package) times Model.lookup_deepest, Hit.array() and
 * Hit.release() on the same entry. Each hit timed alone; p50 and p99 of each, and the difference.
 */
#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include "bench.h"
#include "layerbank/layerbank.h"

#define NAME "layerbank-bench python"
#define SEQ 128
#define HIDDEN 768
#define LAYERS 12

struct opts {
	int iters;
	int json;
};

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The model and its one entry; *key the entry's. @return 0, or -errno after a message. */
static int fill(struct lb_client *c, uint32_t *model, struct lb_key *key)
{
	struct lb_model_desc d = { .name = "layerbank-bench-python", .weights_hash = 0x707974686F6E,
				   .n_layers = LAYERS, .hidden = HIDDEN, .dtype = LB_DTYPE_F32,
				   .max_seq = 512, .fp_seed = 0x6C61796572 };
	int32_t tokens[SEQ];
	for (int i = 0; i < SEQ; i++)
		tokens[i] = i;
	memset(key, 0, sizeof(*key));
	key->fp[0] = 0x0123456789abcdefull;
	key->fp[1] = 0xfedcba9876543210ull;
	key->fp[2] = 0x0f1e2d3c4b5a6978ull;
	key->fp[3] = 0x8796a5b4c3d2e1f0ull;
	lb_token_hash(tokens, SEQ, key->exact);
	key->seq_len = SEQ;
	int rc = lb_register_model(c, &d, model);
	float *buf = rc ? NULL : lb_insert_reserve(c, SEQ * HIDDEN * sizeof(float));
	if (!rc && !buf)
		rc = -errno;
	if (buf) {
		for (int i = 0; i < SEQ * HIDDEN; i++)
			buf[i] = (float)i;
		struct lb_shape s = { LB_DTYPE_F32, 2, { SEQ, HIDDEN } };
		rc = lb_insert_commit(c, *model, LAYERS - 1, key, &s);
	}
	if (rc < 0)
		fprintf(stderr, NAME ": the entry: %s\n", strerror(-rc));
	return rc;
}

static volatile float read_sink;

/* p50, p99 of the C hits. @return 0, or -errno after a message. */
static int c_hits(struct lb_client *c, uint32_t model, const struct lb_key *key, int iters,
		  double *p50, double *p99)
{
	double *us = malloc((size_t)iters * sizeof(double));
	if (!us)
		return -ENOMEM;
	for (int i = 0; i < iters + iters / 10; i++) {
		struct lb_hit hit;
		uint64_t t0 = now_ns();
		int rc = lb_lookup_deepest(c, model, key, NULL, 0, &hit);
		if (rc == 0) {
			read_sink = ((const float *)hit.data)[1]; /* a read of the view */
			rc = lb_release(c, hit.lease);
		}
		uint64_t t1 = now_ns();
		if (rc < 0) {
			fprintf(stderr, NAME ": a C hit: %s\n", strerror(-rc));
			free(us);
			return rc;
		}
		if (i >= iters / 10)
			us[i - iters / 10] = (double)(t1 - t0) / 1e3;
	}
	qsort(us, (size_t)iters, sizeof(double), lbb_cmp_double);
	*p50 = lbb_pct(us, (size_t)iters, 0.50);
	*p99 = lbb_pct(us, (size_t)iters, 0.99);
	free(us);
	return 0;
}

/* The Python side's JSON line, from py_hit.py run on sock. @return it (json_object_put), or
 * NULL after a message and its output. */
static json_object *py_hits(const char *sock, const struct lb_key *key, int iters)
{
	char log[600], it[16], fp[4][24];
	snprintf(log, sizeof(log), "%s/py_hit.log", lbb_fleet_dir());
	snprintf(it, sizeof(it), "%d", iters);
	for (int i = 0; i < 4; i++)
		snprintf(fp[i], sizeof(fp[i]), "%llu", (unsigned long long)key->fp[i]);
	setenv("PYTHONPATH", LB_PYTHON_BUILD_DIR, 1);
	const char *argv[] = { "/usr/bin/python3", LB_SOURCE_DIR "/bench/py_hit.py", sock, it,
			       fp[0], fp[1], fp[2], fp[3], NULL };
	pid_t pid = lbb_spawn(argv, log);
	int st = 0;
	if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st)) {
		fprintf(stderr, NAME ": bench/py_hit.py failed (/usr/bin/python3 with numpy and the "
				"package of %s):\n", LB_PYTHON_BUILD_DIR);
		FILE *f = fopen(log, "r");
		char line[512];
		while (f && fgets(line, sizeof(line), f))
			fputs(line, stderr);
		if (f)
			fclose(f);
		return NULL;
	}
	json_object *j = json_object_from_file(log);
	if (!j)
		fprintf(stderr, NAME ": %s: not the JSON line py_hit.py prints\n", log);
	return j;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: layerbank-bench python [--iters N] [--json]\n"
		   "A hit of a BERT-base layer's output ([128][768] f32) through a layerbankd of\n"
		   "its own: lookup, a read of the view, release; --iters (20000) from C, then as\n"
		   "many from Python (bench/py_hit.py, /usr/bin/python3 with the build's package),\n"
		   "each after a tenth as many of warm-up. p50 and p99 of each, and the difference.\n");
}

static int parse(int argc, char **argv, struct opts *o)
{
	o->iters = 20000;
	o->json = 0;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--json")) {
			o->json = 1;
		} else if (!strcmp(argv[i], "--iters") && i + 1 < argc) {
			char *end;
			long v = strtol(argv[++i], &end, 10);
			if (*end || end == argv[i] || v < 10 || v > 10000000) {
				fprintf(stderr, NAME ": bad --iters '%s' (10..10000000)\n", argv[i]);
				return -1;
			}
			o->iters = (int)v;
		} else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			usage(stdout);
			exit(0);
		} else {
			fprintf(stderr, NAME ": unknown option '%s' (see --help)\n", argv[i]);
			return -1;
		}
	}
	return 0;
}

int bench_python_main(int argc, char **argv)
{
	struct opts o;
	if (parse(argc, argv, &o) < 0)
		return 2;
	lbb_fleet_init("python");
	struct lbb_fleet_cfg cfg = { .workers = 1, .budget = 64u << 20 };
	struct lb_client *c = NULL;
	struct lb_key key;
	uint32_t model = 0;
	double p50 = 0, p99 = 0;
	json_object *py = NULL;
	int rc = lbb_fleet_daemon_start(&cfg);
	if (rc == 0 && (rc = lb_connect(lbb_fleet_socket(), "layerbank-bench-python", &c)) < 0)
		fprintf(stderr, NAME ": connect: %s\n", strerror(-rc));
	if (rc == 0) {
		lb_set_wait_us(c, 1000000); /* a slow answer is timed, not a failure */
		rc = fill(c, &model, &key);
	}
	if (rc == 0)
		rc = c_hits(c, model, &key, o.iters, &p50, &p99);
	if (rc == 0 && !(py = py_hits(lbb_fleet_socket(), &key, o.iters)))
		rc = -EIO;
	lb_close(c);
	lbb_fleet_daemon_stop();
	if (rc < 0)
		return 1;
	json_object *v;
	double pp50 = json_object_object_get_ex(py, "p50_us", &v) ? json_object_get_double(v) : 0;
	double pp99 = json_object_object_get_ex(py, "p99_us", &v) ? json_object_get_double(v) : 0;
	double ph50 = json_object_object_get_ex(py, "p50_us_with_hashing", &v) ?
			      json_object_get_double(v) : 0;
	if (o.json) {
		json_object *j = json_object_new_object();
		json_object_object_add(j, "iters", json_object_new_int(o.iters));
		json_object_object_add(j, "entry_bytes", json_object_new_int(SEQ * HIDDEN * 4));
		json_object_object_add(j, "c_hit_us", lbb_json_num(p50));
		json_object_object_add(j, "c_hit_p99_us", lbb_json_num(p99));
		json_object_object_add(j, "python_hit_us", lbb_json_num(pp50));
		json_object_object_add(j, "python_hit_p99_us", lbb_json_num(pp99));
		json_object_object_add(j, "python_extra_us", lbb_json_num(pp50 - p50));
		json_object_object_add(j, "python_hit_with_hashing_us", lbb_json_num(ph50));
		puts(json_object_to_json_string_ext(j, JSON_C_TO_STRING_PLAIN));
		json_object_put(j);
	} else {
		printf("a hit of a [128][768] f32 entry (lookup, view, release), %d each, the key "
		       "made once:\n"
		       "  C      p50 %7.2f us  p99 %7.2f us\n"
		       "  Python p50 %7.2f us  p99 %7.2f us\n"
		       "  Python's extra cost at p50: %.2f us (%.2f us with the key hashed each "
		       "time)\n", o.iters, p50, p99, pp50, pp99, pp50 - p50, ph50 - p50);
	}
	json_object_put(py);
	return 0;
}
