/* layerbankd fingerprint index: multi-index hashing (Norouzi et al.) over m substrings of w bits,
 * one Robin Hood table of entry slots per substring (plus one by id), every candidate verified
 * by a 256-bit popcount. Exact within the radius: searches widen until nothing nearer can hide. */
#include "fpindex.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/*
 * Entries live in dense slots [0, count): fp, ids and stamp are indexed by slot, and a removal
 * moves the last slot into the hole, so verification reads a packed array and a rebuild walks
 * it in order.
 *
 * Table t < m indexes substring t, bits [t*w, t*w + w) of the fingerprint; the 256 - m*w bits
 * left over belong to no substring, which keeps the pigeonhole bound (an entry within d of the
 * query still matches some substring within floor(d/m) bits) and are checked by the popcount.
 * Table m maps ids to slots.
 *
 * A table is ncells 32-bit cells, Robin Hood linear probing. A cell holds a slot (24 bits), the
 * low TAG_BITS of its key (the tag) and its displacement from its home (6 bits, saturated at
 * DISP_SAT and then recomputed from the entry), so a lookup walks only the cells of its own
 * home, skips the other tags, and reads no fingerprint but its true candidates'. A key's home is
 * (key >> TAG_BITS) * ncells / 2^(w - TAG_BITS): order-preserving, and one-to-one when
 * ncells >= 2^(w - TAG_BITS), which rebuild() arranges from about 13,000 entries of capacity
 * up; below that homes are shared, which costs a few more candidates, never correctness.
 */
#define W_MIN 16u
#define W_MAX 24u
#define M_MAX (256u / W_MIN)
#define SLOT_BITS 24u
#define SLOT_MASK ((1u << SLOT_BITS) - 1)
#define TAG_BITS 2u
#define TAG_MASK ((1u << TAG_BITS) - 1)
#define DISP_SHIFT (SLOT_BITS + TAG_BITS)
#define DISP_SAT ((1u << (32 - DISP_SHIFT)) - 1)
#define EMPTY UINT32_MAX /* slot SLOT_MASK: never a real cell */
#define NONE UINT32_MAX
/* Slot SLOT_MASK would read as EMPTY, so at most SLOT_MASK entries (16.7 million). */
#define MAX_ENTRIES SLOT_MASK
#define MIN_CAP 64u
/* Probes planned at once, probes and candidates in flight (see run_plan). */
#define PLAN_MAX 512u
#define PIPE 12u
#define CAND_PIPE 8u
#define CAND_RING 16u

_Static_assert(W_MAX <= 32 && W_MIN * M_MAX == 256, "keys fit 32 bits; W_MIN splits 256 evenly");
_Static_assert(CAND_PIPE < CAND_RING && (CAND_RING & (CAND_RING - 1)) == 0,
	       "the candidate queue is a power of two and holds the pipe");
_Static_assert(MAX_ENTRIES < EMPTY, "a full table cell never reads as EMPTY");

struct lbd_fpindex {
	uint32_t count;                  /* live entries, in slots [0, count) */
	uint32_t cap;                    /* slots allocated; growing past it rebuilds */
	uint32_t w, m;                   /* substring width and count */
	uint32_t ncells;                 /* cells per table, cap + cap/4 + 1 */
	uint16_t stamp;                  /* current search's mark in stamps[] */
	bool popcnt;                     /* the CPU has POPCNT: use the compiled-for-it search */
	uint64_t (*fp)[LBD_FP_WORDS];    /* [cap] fingerprints by slot */
	uint32_t *ids;                   /* [cap] caller's id by slot */
	uint16_t *stamps;                /* [cap] == stamp: accept() refused it in this search */
	uint32_t *cells;                 /* [m + 1][ncells], table m by id */
	uint32_t binom[W_MAX + 1];       /* C(w, r): keys at distance r from a w-bit key */
};

/* ---- bits ---- */

static inline uint32_t popcount_words(const uint64_t a[LBD_FP_WORDS],
				      const uint64_t b[LBD_FP_WORDS])
{
	return (uint32_t)(__builtin_popcountll(a[0] ^ b[0]) + __builtin_popcountll(a[1] ^ b[1]) +
			  __builtin_popcountll(a[2] ^ b[2]) + __builtin_popcountll(a[3] ^ b[3]));
}

#if defined(__x86_64__) || defined(__i386__)
#define HAVE_POPCNT_DISPATCH 1
/* Without -mpopcnt gcc calls a libgcc routine per word; the attribute gets the instruction. */
__attribute__((target("popcnt"))) static uint32_t hamming_popcnt(const uint64_t a[LBD_FP_WORDS],
								  const uint64_t b[LBD_FP_WORDS])
{
	return popcount_words(a, b);
}

static bool cpu_has_popcnt(void)
{
	__builtin_cpu_init();
	return __builtin_cpu_supports("popcnt");
}
#else
#define HAVE_POPCNT_DISPATCH 0
static bool cpu_has_popcnt(void)
{
	return false;
}
#endif

uint32_t lbd_fp_hamming(const uint64_t a[LBD_FP_WORDS], const uint64_t b[LBD_FP_WORDS])
{
#if HAVE_POPCNT_DISPATCH
	if (__builtin_cpu_supports("popcnt"))
		return hamming_popcnt(a, b);
#endif
	return popcount_words(a, b);
}

static inline uint32_t sub_key(const struct lbd_fpindex *ix, const uint64_t fp[LBD_FP_WORDS],
			       uint32_t t)
{
	uint32_t off = t * ix->w, wd = off >> 6, sh = off & 63;
	uint64_t v = fp[wd] >> sh;
	if (sh + ix->w > 64) /* straddles two words; then sh > 40, so the shift is defined */
		v |= fp[wd + 1] << (64 - sh);
	return (uint32_t)v & ((1u << ix->w) - 1);
}

/* A table's view of an entry: its key (the substring, or a hash of the id), whose low bits are
 * the tag and high bits give the home. */
static inline uint32_t code_home(const struct lbd_fpindex *ix, uint32_t t, uint32_t code)
{
	uint32_t bits = t < ix->m ? ix->w : 32;
	return (uint32_t)(((uint64_t)(code >> TAG_BITS) * ix->ncells) >> (bits - TAG_BITS));
}

/* murmur3's finaliser: ids are often consecutive, homes must not be. */
static inline uint32_t id_code(uint32_t id)
{
	id ^= id >> 16;
	id *= 0x85ebca6bu;
	id ^= id >> 13;
	id *= 0xc2b2ae35u;
	id ^= id >> 16;
	return id;
}

static inline uint32_t slot_code(const struct lbd_fpindex *ix, uint32_t t, uint32_t slot)
{
	return t < ix->m ? sub_key(ix, ix->fp[slot], t) : id_code(ix->ids[slot]);
}

/* ---- Robin Hood tables ---- */

static inline uint32_t *table(const struct lbd_fpindex *ix, uint32_t t)
{
	return ix->cells + (size_t)t * ix->ncells;
}

/* body: the slot and tag bits of a cell. */
static inline uint32_t cell_make(uint32_t body, uint32_t disp)
{
	return body | (disp < DISP_SAT ? disp : DISP_SAT) << DISP_SHIFT;
}

static inline uint32_t cell_body(uint32_t slot, uint32_t code)
{
	return slot | (code & TAG_MASK) << SLOT_BITS;
}

static inline uint32_t cell_disp(const struct lbd_fpindex *ix, uint32_t t, uint32_t pos, uint32_t v)
{
	uint32_t d = v >> DISP_SHIFT, h;
	if (d < DISP_SAT)
		return d;
	h = code_home(ix, t, slot_code(ix, t, v & SLOT_MASK));
	return pos >= h ? pos - h : pos + ix->ncells - h;
}

static inline uint32_t next_pos(const struct lbd_fpindex *ix, uint32_t p)
{
	return p + 1 == ix->ncells ? 0 : p + 1;
}

static void rh_insert(struct lbd_fpindex *ix, uint32_t t, uint32_t slot)
{
	uint32_t *c = table(ix, t);
	uint32_t code = slot_code(ix, t, slot), p = code_home(ix, t, code), d = 0;
	uint32_t body = cell_body(slot, code);
	/* The table always has an empty cell: count <= cap < ncells. */
	for (;;) {
		uint32_t v = c[p], vd;
		if (v == EMPTY) {
			c[p] = cell_make(body, d);
			return;
		}
		vd = cell_disp(ix, t, p, v);
		if (vd < d) { /* v's home is after ours: we take its cell, it moves on */
			c[p] = cell_make(body, d);
			body = v & ((1u << DISP_SHIFT) - 1);
			d = vd;
		}
		d++;
		p = next_pos(ix, p);
	}
}

/* Position of slot's cell in table t, or NONE. */
static uint32_t rh_find(const struct lbd_fpindex *ix, uint32_t t, uint32_t slot)
{
	const uint32_t *c = table(ix, t);
	uint32_t p = code_home(ix, t, slot_code(ix, t, slot));
	for (uint32_t i = 0;; i++) {
		uint32_t v = c[p], vd;
		if (v == EMPTY)
			return NONE;
		vd = cell_disp(ix, t, p, v);
		if (vd < i)
			return NONE;
		if (vd == i && (v & SLOT_MASK) == slot)
			return p;
		p = next_pos(ix, p);
	}
}

/* Backward shift: no tombstones, so lookups never walk over dead cells. */
static void rh_erase(struct lbd_fpindex *ix, uint32_t t, uint32_t p)
{
	uint32_t *c = table(ix, t);
	for (;;) {
		uint32_t q = next_pos(ix, p), v = c[q], vd;
		if (v == EMPTY)
			break;
		vd = cell_disp(ix, t, q, v);
		if (vd == 0)
			break;
		c[p] = cell_make(v & ((1u << DISP_SHIFT) - 1), vd - 1);
		p = q;
	}
	c[p] = EMPTY;
}

static uint32_t find_id(const struct lbd_fpindex *ix, uint32_t id)
{
	const uint32_t *c = table(ix, ix->m);
	uint32_t code = id_code(id), p = code_home(ix, ix->m, code), tag = code & TAG_MASK;
	for (uint32_t i = 0;; i++) {
		uint32_t v = c[p], vd;
		if (v == EMPTY)
			return NONE;
		vd = cell_disp(ix, ix->m, p, v);
		if (vd < i)
			return NONE;
		if (vd == i && (v >> SLOT_BITS & TAG_MASK) == tag && ix->ids[v & SLOT_MASK] == id)
			return v & SLOT_MASK;
		p = next_pos(ix, p);
	}
}

/*
 * Fill table t from slots [0, count) in one pass, as if inserted in home order: a counting sort
 * gives each home's run its first cell, then every slot is written once. Runs pushed past the
 * end wrap, and those few cells take the ordinary insert. start: [ncells] scratch.
 */
static int bulk_build(struct lbd_fpindex *ix, uint32_t t, uint32_t *start)
{
	uint32_t *c = table(ix, t), *spill = NULL;
	uint64_t pos = 0;
	uint32_t nspill = 0;

	memset(start, 0, (size_t)ix->ncells * sizeof(*start));
	for (uint32_t s = 0; s < ix->count; s++)
		start[code_home(ix, t, slot_code(ix, t, s))]++;
	for (uint32_t h = 0; h < ix->ncells; h++) {
		uint32_t n = start[h];
		if (pos < h)
			pos = h;
		start[h] = (uint32_t)pos;
		pos += n;
	}
	if (pos > ix->ncells) {
		spill = malloc((size_t)(pos - ix->ncells) * sizeof(*spill));
		if (!spill)
			return -ENOMEM;
	}
	memset(c, 0xff, (size_t)ix->ncells * sizeof(*c));
	for (uint32_t s = 0; s < ix->count; s++) {
		uint32_t code = slot_code(ix, t, s), h = code_home(ix, t, code), p = start[h]++;
		if (p < ix->ncells)
			c[p] = cell_make(cell_body(s, code), p - h);
		else
			spill[nspill++] = s;
	}
	for (uint32_t i = 0; i < nspill; i++)
		rh_insert(ix, t, spill[i]);
	free(spill);
	return 0;
}

static uint64_t binom(uint32_t n, uint32_t k)
{
	uint64_t c = 1;
	for (uint32_t i = 1; i <= k; i++)
		c = c * (n - k + i) / i;
	return c;
}

/*
 * Substring width for cap entries; hb = floor(log2(cells per table)), at least W_MIN. A wider
 * w brings fewer candidates per probe (cap / 2^w) but more probes per round (C(w, r)) and fewer
 * substrings (m = 256 / w), and each substring is one step of reach per round. w is the one
 * with the least (probes + candidates) over near-duplicate hits at distances 0..HIT_D, the
 * workload the index is for (bench_index measures the same): w = hb or a bit or two more, so
 * 16 bits at 10^4 entries, 18 at 10^5, 21 at 10^6. Past hb + TAG_BITS homes would be shared.
 */
#define HIT_D 24u
static uint32_t pick_w(uint32_t cap, uint32_t hb)
{
	uint32_t best_w = hb;
	double best_cost = 0;
	for (uint32_t w = hb; w <= hb + TAG_BITS && w <= W_MAX; w++) {
		uint32_t m = 256 / w;
		uint64_t probes = 0;
		double cost;
		/* A hit at distance d is certified when the steps with index < d are done;
		 * round 0, all m steps, is always run. */
		for (uint32_t d = 0; d <= HIT_D; d++) {
			probes += m;
			for (uint32_t step = m; step < d; step++)
				probes += binom(w, step / m);
		}
		cost = (double)probes * (1.0 + (double)cap / (double)(1u << w));
		if (w == hb || cost < best_cost) {
			best_w = w;
			best_cost = cost;
		}
	}
	return best_w;
}

/* Resize to cap slots, choosing w and m for it, and re-hash every entry. On failure the index
 * is left as it was. */
static int rebuild(struct lbd_fpindex *ix, uint32_t cap)
{
	struct lbd_fpindex old = *ix;
	uint32_t ncells = cap + cap / 4 + 1, hb = W_MIN, w, *start; /* hb: floor(log2(ncells)) */
	int rc = 0;

	while (hb < W_MAX && (2ull << hb) <= ncells)
		hb++;
	w = pick_w(cap, hb);
	ix->cap = cap;
	ix->ncells = ncells;
	ix->w = w;
	ix->m = 256 / w;
	ix->fp = malloc((size_t)cap * sizeof(*ix->fp));
	ix->ids = malloc((size_t)cap * sizeof(*ix->ids));
	ix->stamps = malloc((size_t)cap * sizeof(*ix->stamps));
	ix->cells = malloc((size_t)(ix->m + 1) * ncells * sizeof(*ix->cells));
	start = malloc((size_t)ncells * sizeof(*start));
	if (!ix->fp || !ix->ids || !ix->stamps || !ix->cells || !start) {
		rc = -ENOMEM;
		goto fail;
	}
	if (ix->count) {
		memcpy(ix->fp, old.fp, (size_t)ix->count * sizeof(*ix->fp));
		memcpy(ix->ids, old.ids, (size_t)ix->count * sizeof(*ix->ids));
	}
	memset(ix->stamps, 0, (size_t)cap * sizeof(*ix->stamps));
	ix->stamp = 0;
	for (uint32_t r = 0; r <= W_MAX; r++)
		ix->binom[r] = r <= w ? (uint32_t)binom(w, r) : 0;
	for (uint32_t t = 0; t <= ix->m; t++) {
		rc = bulk_build(ix, t, start);
		if (rc < 0)
			goto fail;
	}
	free(start);
	free(old.fp);
	free(old.ids);
	free(old.stamps);
	free(old.cells);
	return 0;
fail:
	free(start);
	free(ix->fp);
	free(ix->ids);
	free(ix->stamps);
	free(ix->cells);
	*ix = old;
	return rc;
}

/* ---- public: lifetime, insert, remove ---- */

struct lbd_fpindex *lbd_fpindex_new(uint32_t capacity_hint)
{
	struct lbd_fpindex *ix = calloc(1, sizeof(*ix));
	uint32_t cap = capacity_hint < MIN_CAP ? MIN_CAP : capacity_hint;
	int rc;
	if (!ix)
		return NULL;
	if (cap > MAX_ENTRIES)
		cap = MAX_ENTRIES;
	ix->popcnt = cpu_has_popcnt();
	rc = rebuild(ix, cap);
	if (rc < 0) {
		free(ix);
		errno = -rc;
		return NULL;
	}
	return ix;
}

void lbd_fpindex_free(struct lbd_fpindex *ix)
{
	if (!ix)
		return;
	free(ix->fp);
	free(ix->ids);
	free(ix->stamps);
	free(ix->cells);
	free(ix);
}

uint32_t lbd_fpindex_count(const struct lbd_fpindex *ix)
{
	return ix->count;
}

int lbd_fpindex_insert(struct lbd_fpindex *ix, const uint64_t fp[LBD_FP_WORDS], uint32_t id)
{
	uint32_t s;
	if (find_id(ix, id) != NONE)
		return -EEXIST;
	if (ix->count == ix->cap) {
		/* x1.5 rather than x2: the tables are most of the memory and are sized by cap,
		 * so this keeps them between 53% and 80% full; rebuilds stay amortised O(1). */
		uint64_t cap = (uint64_t)ix->cap + ix->cap / 2;
		int rc;
		if (ix->cap >= MAX_ENTRIES)
			return -ENOMEM;
		rc = rebuild(ix, cap > MAX_ENTRIES ? MAX_ENTRIES : (uint32_t)cap);
		if (rc < 0)
			return rc;
	}
	s = ix->count++;
	memcpy(ix->fp[s], fp, sizeof(ix->fp[s]));
	ix->ids[s] = id;
	ix->stamps[s] = 0;
	for (uint32_t t = 0; t <= ix->m; t++)
		rh_insert(ix, t, s);
	return 0;
}

int lbd_fpindex_remove(struct lbd_fpindex *ix, const uint64_t fp[LBD_FP_WORDS], uint32_t id)
{
	uint32_t s = find_id(ix, id), last;
	/* The index keeps its own copy of fp and removes by that: a caller passing another
	 * fingerprint by mistake would otherwise leave cells pointing at a reused slot. */
	(void)fp;
	if (s == NONE)
		return -ENOENT;
	for (uint32_t t = 0; t <= ix->m; t++)
		rh_erase(ix, t, rh_find(ix, t, s));
	last = --ix->count;
	if (s != last) { /* keep slots dense: the last entry takes the hole, its cells follow */
		for (uint32_t t = 0; t <= ix->m; t++) {
			uint32_t *c = table(ix, t), p = rh_find(ix, t, last);
			c[p] = (c[p] & ~SLOT_MASK) | s;
		}
		memcpy(ix->fp[s], ix->fp[last], sizeof(ix->fp[s]));
		ix->ids[s] = ix->ids[last];
		ix->stamps[s] = ix->stamps[last];
	}
	return 0;
}

/* ---- search ---- */

/*
 * A search walks the probes (table t, key at exactly r bits from the query's substring t) in
 * the order of the rounds, r = 0, 1, ..., and within a round t = 0 .. m-1: the step (r, t).
 * cursor is the next probe; step index r*m + t is also the distance below which nothing can be
 * left unseen once the steps before it are done (see search_impl).
 */
struct cursor {
	uint32_t r, t;
	uint32_t x; /* w-bit mask of the r bits flipped */
};

struct search {
	const uint64_t *q;
	uint32_t best;      /* distance of best_slot; max_d + 1 while there is none */
	uint32_t best_slot; /* NONE until something within max_d is accepted */
	uint32_t good;      /* a best within this ends the search (good_d) */
	lbd_fpindex_accept_fn accept;
	void *ctx;
	uint32_t qk[M_MAX];
	uint32_t n;                 /* probes planned */
	uint32_t probe[PLAN_MAX];   /* table | tag << 8 */
	uint32_t home[PLAN_MAX];
	uint32_t head, tail;        /* candidates queued: cand[head .. tail), free-running */
	uint32_t cand[CAND_RING];
};

/*
 * Only a candidate nearer than the best so far is offered to accept(), so an entry found again
 * through another substring is popcounted again (cheaper than checking a mark first) but
 * accepted at most once; a refused one is marked so accept() is not asked twice.
 */
static inline __attribute__((always_inline)) void verify(struct lbd_fpindex *ix, struct search *s,
							   uint32_t slot)
{
	uint32_t d = popcount_words(ix->fp[slot], s->q);
	if (d >= s->best)
		return;
	if (s->accept) {
		if (ix->stamps[slot] == ix->stamp)
			return;
		if (!s->accept(s->ctx, ix->ids[slot])) {
			ix->stamps[slot] = ix->stamp;
			return;
		}
	}
	s->best = d;
	s->best_slot = slot;
}

/*
 * Run the planned probes as a pipeline: the cells of probe i + PIPE are fetched while probe i
 * is walked, and a candidate's fingerprint is fetched when it is queued and read CAND_PIPE
 * candidates later. Every access here is a likely cache miss; overlapped, they cost a fraction
 * of their latency each.
 */
static inline __attribute__((always_inline)) void run_plan(struct lbd_fpindex *ix, struct search *s)
{
	uint32_t n = s->n;
	for (uint32_t i = 0; i < n && i < PIPE; i++)
		__builtin_prefetch(table(ix, s->probe[i] & 0xff) + s->home[i]);
	for (uint32_t i = 0; i < n; i++) {
		uint32_t t = s->probe[i] & 0xff, tag = s->probe[i] >> 8, p = s->home[i];
		const uint32_t *c = table(ix, t);
		if (i + PIPE < n) {
			uint32_t ahead = i + PIPE;
			__builtin_prefetch(table(ix, s->probe[ahead] & 0xff) + s->home[ahead]);
		}
		/* Robin Hood order: cells of earlier homes (displacement > j), then this home's run
		 * (== j), then later homes' (< j) or an empty cell. */
		for (uint32_t j = 0;; j++) {
			uint32_t v = c[p], vd;
			if (v == EMPTY)
				break;
			vd = cell_disp(ix, t, p, v);
			if (vd < j)
				break;
			if (vd == j && (v >> SLOT_BITS & TAG_MASK) == tag) {
				uint32_t slot = v & SLOT_MASK;
				__builtin_prefetch(ix->fp[slot]);
				s->cand[s->tail++ % CAND_RING] = slot;
				if (s->tail - s->head > CAND_PIPE)
					verify(ix, s, s->cand[s->head++ % CAND_RING]);
			}
			p = next_pos(ix, p);
		}
	}
	while (s->head != s->tail)
		verify(ix, s, s->cand[s->head++ % CAND_RING]);
	s->n = 0;
}

/* Next w-bit mask with the same number of set bits (Gosper's hack; x != 0). */
static inline uint32_t next_comb(uint32_t x)
{
	uint32_t c = x & -x, r = x + c;
	return (((r ^ x) >> 2) >> __builtin_ctz(c)) | r;
}

static inline void cursor_advance(const struct lbd_fpindex *ix, struct cursor *cur)
{
	if (cur->r && (cur->x = next_comb(cur->x)) < 1u << ix->w)
		return;
	if (++cur->t < ix->m) {
		cur->x = (1u << cur->r) - 1;
		return;
	}
	cur->t = 0;
	cur->r++;
	cur->x = cur->r <= ix->w ? (1u << cur->r) - 1 : 0;
}

/*
 * Plan up to limit probes of the steps still needed if the best so far stands (step index <
 * best), stopping at the end of round last_round. Planning past a step that turns out to
 * improve the best wastes a few probes; not planning ahead would leave every step's misses to
 * wait for the previous step's.
 */
static inline __attribute__((always_inline)) void plan(struct lbd_fpindex *ix, struct search *s,
							 struct cursor *cur, uint32_t last_round,
							 uint32_t limit)
{
	while (s->n < limit && cur->r <= last_round && cur->r * ix->m + cur->t < s->best) {
		uint32_t key = s->qk[cur->t] ^ cur->x;
		s->probe[s->n] = cur->t | (key & TAG_MASK) << 8;
		s->home[s->n++] = code_home(ix, cur->t, key);
		cursor_advance(ix, cur);
	}
}

/*
 * Cost model for giving up on the tables, in entries of a linear scan (which streams 32 bytes
 * an entry): a probe costs PROBE_COST, plus CAND_COST for each candidate it brings (about
 * count / 2^w). Both are random reads: measured with bench_index, a probe with its candidates
 * cost as much as scanning 20 entries at 10^4 entries and 33 at 10^6.
 */
#define PROBE_COST 24u
#define CAND_COST 24u

/* Probes of steps (r, t), (r, t+1), ... up to step index best - 1. */
static uint64_t probes_left(const struct lbd_fpindex *ix, const struct cursor *cur, uint32_t best)
{
	uint64_t cost = 0;
	uint32_t r = cur->r, t = cur->t, done = r * ix->m + t;
	uint32_t steps = best > done ? best - done : 0;
	while (steps && r <= ix->w) {
		uint32_t take = ix->m - t < steps ? ix->m - t : steps;
		cost += (uint64_t)take * ix->binom[r];
		steps -= take;
		r++;
		t = 0;
	}
	return cost;
}

/*
 * After step (r, t), an entry not seen yet differs by more than r bits in substrings 0..t and
 * by at least r in the others (else one of the probes so far was its key): it lies at
 * r*m + t + 1 or further. So once the best accepted distance is no more than the index of the
 * next step, nothing nearer remains; and with best starting at max_d + 1 the same test ends a
 * search that has seen everything within max_d. Near-duplicates end within a round or two.
 *
 * A miss with a wide radius can need more probes than a scan of every entry costs. The search
 * then scans instead, but only after spending an eighth of a scan on the tables: a query whose
 * near-duplicate did not turn up in round 0 usually finds it within a few steps, after which
 * what remains is cheap (rent, then buy).
 */
static inline __attribute__((always_inline)) void search_impl(struct lbd_fpindex *ix,
								struct search *s)
{
	struct cursor cur = { 0, 0, 0 };
	uint64_t per = PROBE_COST + (((uint64_t)CAND_COST * ix->count) >> ix->w);
	uint64_t rent = ix->count / 8 / per, spent = ix->m;

	if (ix->m * per > ix->count) /* a few entries: not worth one round */
		goto scan;
	for (uint32_t t = 0; t < ix->m; t++)
		s->qk[t] = sub_key(ix, s->q, t);
	/* Round 0 alone first: m independent lookups, and often the whole search. */
	plan(ix, s, &cur, 0, PLAN_MAX);
	run_plan(ix, s);
	while (s->best > s->good && cur.r <= ix->w && s->best > cur.r * ix->m + cur.t) {
		/* With a good_d, one step's probes at a time, so a find ends the search soon. */
		uint32_t limit = s->good && ix->binom[cur.r] < PLAN_MAX ? ix->binom[cur.r] : PLAN_MAX;
		if (probes_left(ix, &cur, s->best) * per > ix->count) {
			if (spent >= rent)
				goto scan;
			if (rent - spent < limit)
				limit = (uint32_t)(rent - spent);
		}
		plan(ix, s, &cur, ix->w, limit);
		spent += s->n;
		run_plan(ix, s);
	}
	return; /* done, or every key of every substring probed: everything was seen */
scan:
	for (uint32_t i = 0; i < ix->count; i++)
		verify(ix, s, i);
}

#if HAVE_POPCNT_DISPATCH
__attribute__((target("popcnt"))) static void search_popcnt(struct lbd_fpindex *ix,
							    struct search *s)
{
	search_impl(ix, s);
}
#endif

static void search_generic(struct lbd_fpindex *ix, struct search *s)
{
	search_impl(ix, s);
}

int lbd_fpindex_nearest(struct lbd_fpindex *ix, const uint64_t q[LBD_FP_WORDS], uint32_t max_d,
			uint32_t good_d, lbd_fpindex_accept_fn accept, void *ctx, uint32_t *id,
			uint32_t *dist)
{
	struct search s;

	if (!ix->count)
		return -ENOENT;
	s.q = q;
	s.best = (max_d < 256 ? max_d : 256) + 1;
	s.best_slot = NONE;
	s.good = good_d;
	s.accept = accept;
	s.ctx = ctx;
	s.n = s.head = s.tail = 0;
	/* Marks wrap once in 65535 searches: then forget them all. */
	if (accept && ++ix->stamp == 0) {
		memset(ix->stamps, 0, (size_t)ix->count * sizeof(*ix->stamps));
		ix->stamp = 1;
	}
#if HAVE_POPCNT_DISPATCH
	if (ix->popcnt)
		search_popcnt(ix, &s);
	else
#endif
		search_generic(ix, &s);
	if (s.best_slot == NONE)
		return -ENOENT;
	*id = ix->ids[s.best_slot];
	*dist = s.best;
	return 0;
}
