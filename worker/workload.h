/*
 * The fleet benchmark's request stream: paragraphs of a text corpus issued as fresh documents,
 * exact repeats and near-duplicates, with Zipf popularity, all from one seed.
 */
#ifndef LAYERBANK_WORKER_WORKLOAD_H
#define LAYERBANK_WORKER_WORKLOAD_H

#include <stddef.h>
#include <stdint.h>

/* Cap on the corpus file read by lbw_paragraphs_load. */
#define LBW_CORPUS_MAX_BYTES (64u << 20)
/* Bounds of lbw_workload_cfg. */
#define LBW_MAX_REQUESTS 10000000u
#define LBW_MAX_ZIPF_S 10.0

enum lbw_req_kind { LBW_REQ_FRESH = 0, LBW_REQ_EXACT = 1, LBW_REQ_NEAR = 2 };

/*
 * How a NEAR request's text was made from its document. A "word" is a run of ASCII letters;
 * bytes outside ASCII are never split or changed.
 *   WORD_SWAP  one word replaced by a different word drawn from the corpus, its first letter
 *              cased like the word it replaces;
 *   TYPO       inside one word of >= 3 letters: two adjacent (different) letters swapped, or
 *              one letter dropped, or one letter doubled;
 *   PUNCT      one of , . ! ? removed, or one inserted right after a word;
 *   CASE       the first letter of one word flipped between upper and lower case;
 *   APPEND     " w1 .. wk" appended, k in 1..4 words drawn from the corpus;
 *   REMOVE     the text cut right after its (w-k)-th word, w >= 4 its word count,
 *              k in 1..min(4, w-3): the last k words go, at least 3 stay.
 */
enum lbw_mutation {
	LBW_MUT_NONE = 0,
	LBW_MUT_WORD_SWAP,
	LBW_MUT_TYPO,
	LBW_MUT_PUNCT,
	LBW_MUT_CASE,
	LBW_MUT_APPEND,
	LBW_MUT_REMOVE,
	LBW_MUT_COUNT
};

/* The corpus: immutable after lbw_paragraphs_load; freed by lbw_paragraphs_free. */
struct lbw_paragraphs {
	char **p;   /* [n] NUL-terminated lines, in file order; point into mem */
	uint32_t n;
	char *mem;  /* owns the text of every p[i] */
};

/*
 * Read a text file (at most LBW_CORPUS_MAX_BYTES) and keep its lines of min_chars..max_chars
 * bytes (max_chars 0: no upper bound), in file order. Every '\r' is removed and every '\t' and
 * NUL byte becomes a space before a line is measured; lines of spaces only count as empty and
 * are dropped. A kept line holds no '\n', '\r' or '\t'.
 * err (may be NULL) receives one line saying what is wrong. On failure *out is zeroed.
 * @return 0; -EINVAL NULL argument, min_chars > max_chars (max_chars != 0), or no line in the
 * window; -errno from open, fstat or read; -EFBIG file larger than LBW_CORPUS_MAX_BYTES;
 * -ENOMEM.
 */
int lbw_paragraphs_load(const char *path, uint32_t min_chars, uint32_t max_chars,
			struct lbw_paragraphs *out, char *err, size_t errlen);
/* Free what lbw_paragraphs_load made and zero *p; NULL or a zeroed struct is fine. */
void lbw_paragraphs_free(struct lbw_paragraphs *p);

struct lbw_workload_cfg {
	uint32_t n_requests; /* 1..LBW_MAX_REQUESTS */
	double p_exact;      /* share of EXACT requests, in [0, 1] */
	double p_near;       /* share of NEAR requests, in [0, 1]; FRESH: 1 - p_exact - p_near */
	double zipf_s;       /* popularity exponent, in [0, LBW_MAX_ZIPF_S]; 0: uniform */
	uint64_t seed;       /* every random choice follows from it */
};

/* n_requests 400, p_exact 0.65, p_near 0.20 (fresh 0.15), zipf_s 1.0, seed 1. */
struct lbw_workload_cfg lbw_workload_defaults(void);

/* One request of the stream. */
struct lbw_request {
	uint32_t id;            /* its position in the stream, from 0 */
	enum lbw_req_kind kind;
	uint32_t doc;           /* index in lbw_paragraphs.p of the document's paragraph */
	enum lbw_mutation mut;  /* LBW_MUT_NONE unless kind is NEAR */
	char *text;             /* owned by the workload; NUL-terminated, no '\n', '\r', '\t' */
};

/* A generated stream; owns every request and text until lbw_workload_free. */
struct lbw_workload {
	struct lbw_request *r; /* [n] */
	uint32_t n;
	uint32_t count[3];     /* requests by enum lbw_req_kind */
	uint32_t docs;         /* distinct documents: equals count[LBW_REQ_FRESH] */
};

/*
 * Generate cfg->n_requests requests from p. Every choice comes from a xoshiro256** generator
 * seeded through splitmix64 with cfg->seed, so the same p and cfg give a byte-identical stream.
 * Request i draws its kind with probabilities (p_exact, p_near, 1 - p_exact - p_near); while no
 * document has been issued (request 0) it is FRESH whatever the draw.
 *   FRESH  the next paragraph of a seeded random permutation of p (each paragraph is used at
 *          most once) becomes a document; documents are ranked by first appearance, rank 0
 *          first. text: the paragraph.
 *   EXACT  a document drawn over the D issued so far with P(rank k) proportional to
 *          1/(k+1)^zipf_s (a growing cumulative table and a binary search: O(log D)).
 *          text: its paragraph, unchanged.
 *   NEAR   a document drawn as for EXACT, and a mutation drawn uniformly among the six kinds
 *          of enum lbw_mutation. A kind that cannot apply (no word of >= 3 letters for TYPO,
 *          fewer than 4 words for REMOVE, ...) or leaves the text unchanged after 8 tries
 *          gives way to the next kind in enum order (after REMOVE: WORD_SWAP); PUNCT always
 *          applies. text: always differs from the paragraph; mut says which kind made it.
 * Sums p_exact + p_near up to 1 + 1e-9 are accepted (rounding); the FRESH share is then 0.
 * err (may be NULL) receives one line saying what is wrong. On failure *out is zeroed and
 * nothing is left allocated.
 * @return 0; -EINVAL NULL argument, empty p, or cfg out of range (a probability or zipf_s not
 * finite or out of its interval, p_exact + p_near > 1, n_requests 0 or above
 * LBW_MAX_REQUESTS); -ENOSPC a FRESH request found every paragraph used; -ENOMEM.
 */
int lbw_workload_make(const struct lbw_paragraphs *p, const struct lbw_workload_cfg *cfg,
		      struct lbw_workload *out, char *err, size_t errlen);
/* Free every text and the request array, and zero *w; NULL or a zeroed struct is fine. */
void lbw_workload_free(struct lbw_workload *w);

/* "fresh", "exact", "near"; "?" for a value outside the enum. */
const char *lbw_req_kind_name(enum lbw_req_kind k);
/* "none", "word_swap", "typo", "punct", "case", "append", "remove"; "?" outside the enum. */
const char *lbw_mutation_name(enum lbw_mutation m);
/* The kind named s (as lbw_req_kind_name spells it). @return the kind; -EINVAL unknown or NULL. */
int lbw_req_kind_parse(const char *s);

#endif
