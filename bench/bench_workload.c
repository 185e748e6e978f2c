/* layerbank-bench, workload module: prints the fleet benchmark's request stream (one request a
 * line: id, kind, doc, mutation, text, tab-separated) or, with --summary, its make-up. */
#include "bench.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "workload.h"

#define DATA_FILE "tinystories_val.txt"
#define USAGE                                                                                 \
	"usage: layerbank-bench workload [--requests N] [--exact P] [--near P] [--zipf S] "     \
	"[--seed N] [--data FILE] [--min-chars N] [--max-chars N] [--summary]"

/* One line on stderr and the exit status of a bad command line. */
static int bad_usage(const char *what, const char *arg)
{
	fprintf(stderr, "layerbank-bench workload: %s%s%s%s\n", what, arg ? " '" : "", arg ? arg : "",
		arg ? "'" : "");
	return 2;
}

/* Decimal in [lo, hi], the whole string. @return 0, or -EINVAL. */
static int parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *v)
{
	char *end;
	if (!*s || *s == '-' || *s == '+' || *s == ' ')
		return -EINVAL;
	errno = 0;
	unsigned long long x = strtoull(s, &end, 10);
	if (errno || *end || x < lo || x > hi)
		return -EINVAL;
	*v = x;
	return 0;
}

/* A finite number in [lo, hi], the whole string. @return 0, or -EINVAL. */
static int parse_double(const char *s, double lo, double hi, double *v)
{
	char *end;
	errno = 0;
	double x = strtod(s, &end);
	if (!*s || errno || *end || !(x >= lo && x <= hi))
		return -EINVAL;
	*v = x;
	return 0;
}

static int cmp_desc(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return (x < y) - (x > y);
}

static int print_summary(const struct lbw_workload *w, const struct lbw_paragraphs *p)
{
	uint32_t muts[LBW_MUT_COUNT] = { 0 };
	uint32_t *per_para = calloc(p->n, sizeof(uint32_t)); /* [p->n] requests per paragraph */
	uint32_t *per_doc = malloc(((size_t)w->docs + 1) * sizeof(uint32_t)); /* [docs] */
	if (!per_para || !per_doc) {
		free(per_para);
		free(per_doc);
		fprintf(stderr, "layerbank-bench workload: out of memory\n");
		return 1;
	}
	for (uint32_t i = 0; i < w->n; i++) {
		muts[w->r[i].mut]++;
		per_para[w->r[i].doc]++;
	}
	uint32_t d = 0;
	for (uint32_t i = 0; i < p->n; i++)
		if (per_para[i])
			per_doc[d++] = per_para[i];
	qsort(per_doc, d, sizeof(uint32_t), cmp_desc);
	uint32_t top = (d + 9) / 10;
	uint64_t top_req = 0;
	for (uint32_t i = 0; i < top; i++)
		top_req += per_doc[i];

	printf("requests %u\n", w->n);
	for (int k = 0; k < 3; k++)
		printf("  %-9s %7u  %5.1f%%\n", lbw_req_kind_name((enum lbw_req_kind)k), w->count[k],
		       100.0 * w->count[k] / w->n);
	printf("near-duplicates by mutation\n");
	for (int m = 1; m < LBW_MUT_COUNT; m++)
		printf("  %-9s %7u\n", lbw_mutation_name((enum lbw_mutation)m), muts[m]);
	printf("distinct docs %u\n", w->docs);
	printf("top 10%% of docs (%u of %u, by request count, fresh included): %.1f%% of requests\n",
	       top, d, 100.0 * (double)top_req / w->n);
	free(per_para);
	free(per_doc);
	return 0;
}

int bench_workload_main(int argc, char **argv)
{
	static const struct option opts[] = { { "requests", required_argument, NULL, 'n' },
					      { "exact", required_argument, NULL, 'e' },
					      { "near", required_argument, NULL, 'r' },
					      { "zipf", required_argument, NULL, 'z' },
					      { "seed", required_argument, NULL, 's' },
					      { "data", required_argument, NULL, 'd' },
					      { "min-chars", required_argument, NULL, 'a' },
					      { "max-chars", required_argument, NULL, 'b' },
					      { "summary", no_argument, NULL, 'S' },
					      { "help", no_argument, NULL, 'h' },
					      { NULL, 0, NULL, 0 } };
	struct lbw_workload_cfg cfg = lbw_workload_defaults();
	uint64_t v, min_chars = 100, max_chars = 600;
	const char *data = NULL;
	int summary = 0, ch;

	optind = 1;
	opterr = 0;
	while ((ch = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
		switch (ch) {
		case 'n':
			if (parse_u64(optarg, 1, LBW_MAX_REQUESTS, &v))
				return bad_usage("--requests wants an integer in 1..10000000, got", optarg);
			cfg.n_requests = (uint32_t)v;
			break;
		case 'e':
			if (parse_double(optarg, 0, 1, &cfg.p_exact))
				return bad_usage("--exact wants a probability in [0, 1], got", optarg);
			break;
		case 'r':
			if (parse_double(optarg, 0, 1, &cfg.p_near))
				return bad_usage("--near wants a probability in [0, 1], got", optarg);
			break;
		case 'z':
			if (parse_double(optarg, 0, LBW_MAX_ZIPF_S, &cfg.zipf_s))
				return bad_usage("--zipf wants an exponent in [0, 10], got", optarg);
			break;
		case 's':
			if (parse_u64(optarg, 0, UINT64_MAX, &cfg.seed))
				return bad_usage("--seed wants an unsigned 64-bit integer, got", optarg);
			break;
		case 'd':
			data = optarg;
			break;
		case 'a':
			if (parse_u64(optarg, 0, UINT32_MAX, &min_chars))
				return bad_usage("--min-chars wants an integer in 0..4294967295, got", optarg);
			break;
		case 'b':
			if (parse_u64(optarg, 0, UINT32_MAX, &max_chars))
				return bad_usage("--max-chars wants an integer in 0..4294967295 (0: no limit), got",
						 optarg);
			break;
		case 'S':
			summary = 1;
			break;
		case 'h':
			printf("%s\n", USAGE);
			return 0;
		case ':':
			return bad_usage("missing value after", argv[optind - 1]);
		default:
			return bad_usage("unknown option (" USAGE "):", argv[optind - 1]);
		}
	}
	if (optind < argc)
		return bad_usage("unexpected argument (" USAGE "):", argv[optind]);
	if (cfg.p_exact + cfg.p_near > 1 + 1e-9)
		return bad_usage("--exact plus --near exceed 1", NULL);
	if (max_chars && min_chars > max_chars) {
		fprintf(stderr, "layerbank-bench workload: --min-chars %llu is above --max-chars %llu\n",
			(unsigned long long)min_chars, (unsigned long long)max_chars);
		return 2;
	}

	char path[4096];
	const char *dir = getenv("LAYERBANK_DATA");
	if (!data) {
		if ((size_t)snprintf(path, sizeof(path), "%s/" DATA_FILE,
				     dir && *dir ? dir : LB_DATA_DIR) >= sizeof(path))
			return bad_usage("LAYERBANK_DATA is too long", NULL);
		data = path;
	}

	char err[512];
	struct lbw_paragraphs p;
	struct lbw_workload w;
	int rc = lbw_paragraphs_load(data, (uint32_t)min_chars, (uint32_t)max_chars, &p, err,
				     sizeof(err));
	if (rc) {
		fprintf(stderr, "layerbank-bench: %s\n", err);
		return 1;
	}
	rc = lbw_workload_make(&p, &cfg, &w, err, sizeof(err));
	if (rc) {
		fprintf(stderr, "layerbank-bench: %s\n", err);
		lbw_paragraphs_free(&p);
		return rc == -EINVAL ? 2 : 1;
	}
	int status = 0;
	if (summary) {
		status = print_summary(&w, &p);
	} else {
		for (uint32_t i = 0; i < w.n; i++) {
			const struct lbw_request *r = &w.r[i];
			printf("%u\t%s\t%u\t%s\t%s\n", r->id, lbw_req_kind_name(r->kind), r->doc,
			       lbw_mutation_name(r->mut), r->text);
		}
	}
	if (fflush(stdout) != 0 || ferror(stdout)) {
		fprintf(stderr, "layerbank-bench workload: writing the stream: %s\n", strerror(errno));
		status = 1;
	}
	lbw_workload_free(&w);
	lbw_paragraphs_free(&p);
	return status;
}
