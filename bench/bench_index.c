/* layerbank-bench, index module: fingerprint index lookups (near-duplicate hits and misses)
 * against a brute-force popcount scan of the same fingerprints, measured in the same run. */
#include "bench.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fpindex.h"

#define NONE UINT32_MAX
typedef uint64_t fp_t[LBD_FP_WORDS];
/* Near-duplicate queries flip d distinct bits of a stored fingerprint, d uniform in
 * 0..HIT_MAX_FLIPS: the near-duplicate inputs of our workload (a word swapped, a typo, casing)
 * land well inside 24 bits of their original's SimHash, and 24 is still well inside the radii
 * that tau 0.82-0.88 give (40-49 bits). Misses are uniformly random fingerprints: nothing lies
 * within such a radius of one (almost surely). */
#define HIT_MAX_FLIPS 24u
#define HIT_QUERIES 20000u
#define MISS_QUERIES 500u
/* Brute-force queries: about this many entry visits, so the scan costs the same at any size. */
#define BRUTE_VISITS 100000000ull
#define BRUTE_MIN 100u
/* Each timing is the best of REPS passes (see lbb_index_run): the machines are shared, and
 * other tenants only ever add time. */
#define REPS 5

static uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static double now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static void random_fp(uint64_t *rng, uint64_t fp[LBD_FP_WORDS])
{
	for (int i = 0; i < LBD_FP_WORDS; i++)
		fp[i] = splitmix(rng);
}

static void near_fp(uint64_t *rng, const uint64_t in[LBD_FP_WORDS], uint64_t out[LBD_FP_WORDS])
{
	uint32_t k = (uint32_t)(splitmix(rng) % (HIT_MAX_FLIPS + 1));
	memcpy(out, in, LBD_FP_WORDS * sizeof(uint64_t));
	while (k) {
		uint32_t b = (uint32_t)(splitmix(rng) % 256);
		uint64_t bit = 1ull << (b & 63);
		if ((out[b >> 6] ^ in[b >> 6]) & bit)
			continue;
		out[b >> 6] ^= bit;
		k--;
	}
}

/* The baseline: the best distance within max_d over every fingerprint, NONE if none. */
static inline __attribute__((always_inline)) uint32_t scan_impl(const fp_t *fps, uint32_t n,
								 const uint64_t *q, uint32_t max_d)
{
	uint32_t best = max_d + 1;
	for (uint32_t i = 0; i < n; i++) {
		uint32_t d = (uint32_t)(__builtin_popcountll(fps[i][0] ^ q[0]) +
					__builtin_popcountll(fps[i][1] ^ q[1]) +
					__builtin_popcountll(fps[i][2] ^ q[2]) +
					__builtin_popcountll(fps[i][3] ^ q[3]));
		if (d < best)
			best = d;
	}
	return best <= max_d ? best : NONE;
}

#if defined(__x86_64__) || defined(__i386__)
/* The index gets the POPCNT instruction by dispatch; the baseline must too, to be fair. */
__attribute__((target("popcnt"))) static uint32_t scan_popcnt(const fp_t *fps, uint32_t n,
							       const uint64_t *q, uint32_t max_d)
{
	return scan_impl(fps, n, q, max_d);
}
#endif

static uint32_t scan(const fp_t *fps, uint32_t n, const uint64_t *q, uint32_t max_d)
{
#if defined(__x86_64__) || defined(__i386__)
	if (__builtin_cpu_supports("popcnt"))
		return scan_popcnt(fps, n, q, max_d);
#endif
	return scan_impl(fps, n, q, max_d);
}

/* One index under test with its fingerprints and queries. */
struct sized {
	uint32_t n;
	uint32_t nbrute; /* hit queries also run through the brute-force scan */
	fp_t *fps;       /* [n], entry i has id i */
	fp_t *hits;      /* [HIT_QUERIES] */
	fp_t *misses;    /* [MISS_QUERIES] */
	uint32_t *got;   /* [HIT_QUERIES] distances the index found, NONE for none */
	uint32_t *got_exact; /* the same, exact searches */
	struct lbd_fpindex *ix;
};

static void sized_free(struct sized *z)
{
	lbd_fpindex_free(z->ix);
	free(z->fps);
	free(z->hits);
	free(z->misses);
	free(z->got);
	free(z->got_exact);
}

static int sized_build(struct sized *z, uint32_t n, uint64_t seed)
{
	uint64_t rng = seed ^ ((uint64_t)n * 0x9e3779b97f4a7c15ull);
	uint64_t nb = BRUTE_VISITS / n;

	z->n = n;
	z->nbrute = nb < BRUTE_MIN ? BRUTE_MIN : nb < HIT_QUERIES ? (uint32_t)nb : HIT_QUERIES;
	z->fps = malloc((size_t)n * sizeof(*z->fps));
	z->hits = malloc(HIT_QUERIES * sizeof(*z->hits));
	z->misses = malloc(MISS_QUERIES * sizeof(*z->misses));
	z->got = malloc(HIT_QUERIES * sizeof(*z->got));
	z->got_exact = malloc(HIT_QUERIES * sizeof(*z->got_exact));
	z->ix = lbd_fpindex_new(n);
	if (!z->fps || !z->hits || !z->misses || !z->got || !z->got_exact || !z->ix)
		return -ENOMEM;
	for (uint32_t i = 0; i < n; i++) {
		int rc;
		random_fp(&rng, z->fps[i]);
		rc = lbd_fpindex_insert(z->ix, z->fps[i], i);
		if (rc < 0)
			return rc;
	}
	for (uint32_t i = 0; i < HIT_QUERIES; i++)
		near_fp(&rng, z->fps[splitmix(&rng) % n], z->hits[i]);
	for (uint32_t i = 0; i < MISS_QUERIES; i++)
		random_fp(&rng, z->misses[i]);
	return 0;
}

/* Mean µs per lookup of queries [0, nq); got: NULL, or [nq] distances found (NONE for none). */
static double time_index(struct lbd_fpindex *ix, const fp_t *qs, uint32_t nq, uint32_t max_d,
			 uint32_t good_d, uint32_t *got)
{
	double t0 = now_us();
	for (uint32_t i = 0; i < nq; i++) {
		uint32_t id, dist;
		int rc = lbd_fpindex_nearest(ix, qs[i], max_d, good_d, NULL, NULL, &id, &dist);
		if (got)
			got[i] = rc == 0 ? dist : NONE;
	}
	return (now_us() - t0) / nq;
}

/* Mean µs per brute-force scan of the first nbrute hit queries; both recalls into row. */
static double time_brute(const struct sized *z, uint32_t max_d, struct lbb_index_row *row)
{
	uint32_t found = 0, agreed = 0, agreed_exact = 0;
	double t0 = now_us(), us;
	for (uint32_t i = 0; i < z->nbrute; i++) {
		uint32_t d = scan((const fp_t *)z->fps, z->n, z->hits[i], max_d);
		found += d != NONE;
		agreed += d != NONE && z->got[i] == d;
		agreed_exact += d != NONE && z->got_exact[i] == d;
	}
	us = (now_us() - t0) / z->nbrute;
	row->recall = found ? (double)agreed / found : 1.0;
	row->exact_recall = found ? (double)agreed_exact / found : 1.0;
	return us;
}

static double min_of(int rep, double old, double now)
{
	return !rep || now < old ? now : old;
}

/*
 * All indexes are built first; then each pass times every size in turn and each figure is the
 * best of REPS passes, so a burst of noise from other tenants lands on one pass of every size
 * rather than on all passes of one, and the ratios between sizes hold.
 */
int lbb_index_run(const uint32_t *sizes, unsigned n, uint32_t max_d, uint64_t seed,
		  struct lbb_index_row *rows)
{
	struct sized *z = calloc(n ? n : 1, sizeof(*z));
	int rc = 0;

	if (!z)
		return -ENOMEM;
	if (max_d > 256)
		max_d = 256;
	for (unsigned i = 0; i < n && !rc; i++)
		rc = sizes[i] ? sized_build(&z[i], sizes[i], seed) : -EINVAL;
	for (int rep = 0; rep < REPS && !rc; rep++) {
		for (unsigned i = 0; i < n; i++) {
			struct lbb_index_row *row = &rows[i];
			double us;
			row->entries = z[i].n;
			us = time_index(z[i].ix, (const fp_t *)z[i].hits, HIT_QUERIES, max_d, max_d,
					rep ? NULL : z[i].got);
			row->lookup_us = min_of(rep, row->lookup_us, us);
			us = time_index(z[i].ix, (const fp_t *)z[i].hits, HIT_QUERIES, max_d, 0,
					rep ? NULL : z[i].got_exact);
			row->exact_us = min_of(rep, row->exact_us, us);
			us = time_index(z[i].ix, (const fp_t *)z[i].misses, MISS_QUERIES, max_d, max_d,
					NULL);
			row->miss_us = min_of(rep, row->miss_us, us);
			/* The same hit queries, fewer of them at large n. */
			row->brute_us = min_of(rep, row->brute_us, time_brute(&z[i], max_d, row));
		}
	}
	for (unsigned i = 0; i < n; i++)
		sized_free(&z[i]);
	free(z);
	return rc;
}
