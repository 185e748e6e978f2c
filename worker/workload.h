/*
 * The fleet benchmark's request streams, each from one seed: the scoring stream (paragraphs of a
 * text corpus issued as fresh documents, exact repeats and near-duplicates, with Zipf
 * popularity) and the chat stream (multi-turn conversations on shared system prompts, tokenized).
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

/*
 * The corpus split. A corpus file's paragraphs are its non-blank lines (as lbw_paragraphs_load
 * reads them), numbered from 0 in file order. The first LBW_EVAL_PARAGRAPHS are its evaluation
 * part, the only ones lbw_paragraphs_load keeps, so the only ones any request stream (and so any
 * benchmark or end-to-end run) is made of; the rest are the training part, the text the shipped
 * encoder was trained on (tools/train_encoder.py takes the same split). tinystories_val.txt has
 * 4,356 paragraphs: 2,000 for evaluation (1,623 of them of 100..600 chars) and 2,356 for
 * training. A corpus of at most LBW_EVAL_PARAGRAPHS paragraphs is all evaluation.
 */
#define LBW_EVAL_PARAGRAPHS 2000u

/* The corpus: immutable after lbw_paragraphs_load; freed by lbw_paragraphs_free. */
struct lbw_paragraphs {
	char **p;   /* [n] NUL-terminated lines, in file order; point into mem */
	uint32_t n;
	char *mem;  /* owns the text of every p[i] */
};

/*
 * Read a text file (at most LBW_CORPUS_MAX_BYTES) and keep the lines of its evaluation part
 * (the first LBW_EVAL_PARAGRAPHS non-blank lines) of min_chars..max_chars bytes (max_chars 0: no
 * upper bound), in file order; the training part after them is never kept. Every '\r' is
 * removed and every '\t' and NUL byte becomes a space before a line is measured; lines of
 * spaces only count as empty (blank: they are dropped and not numbered). A kept line holds no
 * '\n', '\r' or '\t'.
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

/* n_requests 400, p_exact 0.30, p_near 0.45 (fresh 0.25), zipf_s 1.0, seed 1: the design's
 * realistic mix (DESIGN.md section 6: at most 30% exact repeats, at least 25% fresh). */
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

/* ---- the chat stream (workload_chat.c) ---- */

struct lbw_tokenizer;

/* Bounds of lbw_chat_cfg. */
#define LBW_CHAT_MAX_CONVS 1000000u
#define LBW_CHAT_MAX_SYSTEMS 1024u
#define LBW_CHAT_MAX_SYS_TOKENS 4096u
#define LBW_CHAT_MAX_TURNS 64u
#define LBW_CHAT_MAX_GEN 4096u
#define LBW_CHAT_MAX_OPEN 4096u
#define LBW_CHAT_MAX_TOKENS 1048576u
/* depends_on of a conversation's first turn. */
#define LBW_CHAT_NONE UINT32_MAX

/* Each MIN..MAX pair is drawn uniformly, both ends included; every count is at least 1. */
struct lbw_chat_cfg {
	uint32_t conversations;  /* 1..LBW_CHAT_MAX_CONVS */
	uint32_t systems;        /* system prompts, 1..LBW_CHAT_MAX_SYSTEMS */
	uint32_t sys_tokens_min; /* a system prompt's token count: min <= max <= */
	uint32_t sys_tokens_max; /* LBW_CHAT_MAX_SYS_TOKENS */
	uint32_t turns_min;      /* turns of a conversation: min <= max <= LBW_CHAT_MAX_TURNS */
	uint32_t turns_max;
	uint32_t gen_min;        /* tokens to generate per turn: min <= max <= LBW_CHAT_MAX_GEN */
	uint32_t gen_max;
	uint32_t open;           /* conversations open at once, 1..LBW_CHAT_MAX_OPEN */
	uint32_t max_tokens;     /* a model's context, 0..LBW_CHAT_MAX_TOKENS: a turn's prompt and
				  * generation (answers as long as drawn) fit in it; 0: no limit */
	double zipf_s;           /* system prompt popularity exponent, in [0, LBW_MAX_ZIPF_S] */
	uint64_t seed;           /* every random choice follows from it */
};

/* conversations 114 (about 400 requests), systems 4 of 100..300 tokens, turns 1..6,
 * gen 8..32, open 8, zipf_s 1.0, seed 1. */
struct lbw_chat_cfg lbw_chat_defaults(void);

/* A system prompt: whole corpus paragraphs joined by single spaces. Its tokens are its
 * paragraphs' encodings one after the other, as a prompt joins pieces: decoded after BOS they
 * give text back, but merges never cross a paragraph's start (encoding text whole may differ
 * there). */
struct lbw_chat_sys {
	char *text;         /* NUL-terminated; owned by the stream */
	int32_t *tokens;    /* [n_tokens] each paragraph encoded without BOS or EOS, in order;
			     * owned by the stream */
	uint32_t n_tokens;  /* in sys_tokens_min..sys_tokens_max */
	uint32_t target;    /* the drawn target count (see lbw_chat_make) */
	uint32_t *paras;    /* [n_paras] indices in lbw_paragraphs.p, in text order; owned */
	uint32_t n_paras;
	uint32_t convs;     /* conversations that use it */
};

/* One request: one turn of one conversation. */
struct lbw_chat_req {
	uint32_t id;         /* its position in the stream, from 0 */
	uint32_t conv;       /* its conversation, numbered from 0 in the order they open */
	uint32_t turn;       /* from 0 */
	uint32_t n_turns;    /* turns of the conversation: it closes after turn n_turns - 1 */
	uint32_t sys;        /* index in lbw_chat.sys of the conversation's system prompt */
	uint32_t depends_on; /* id of turn - 1 of the conversation, an earlier request whose
			      * answer this prompt holds; LBW_CHAT_NONE for turn 0 */
	uint32_t gen;        /* tokens to generate after the prompt */
	uint32_t para;       /* index in lbw_paragraphs.p of this turn's user paragraph */
	char *text;          /* a copy of that paragraph; owned by the stream */
	int32_t *tokens;     /* [n_tokens] text encoded without BOS or EOS; owned by the stream */
	uint32_t n_tokens;
};

/* A generated chat stream; immutable, owns every text and token array until lbw_chat_free. */
struct lbw_chat {
	struct lbw_chat_req *r;   /* [n] in issue order */
	uint32_t n;
	struct lbw_chat_sys *sys; /* [n_sys] */
	uint32_t n_sys;
	uint32_t n_convs;         /* equals cfg->conversations */
};

/*
 * Generate a chat stream from the paragraphs p, tokenized by t. Every choice comes from one
 * xoshiro256** generator seeded through splitmix64 with cfg->seed, drawn in this order, so the
 * same p, t and cfg give a byte-identical stream:
 *  1. System prompts 0..systems-1, each: a target token count uniform in
 *     sys_tokens_min..sys_tokens_max, then paragraphs drawn without replacement (one seeded
 *     shuffle of p serves the whole stream) and appended while the prompt's token count is
 *     below the target. A paragraph that would take the count past sys_tokens_max is passed
 *     over and stays in the pool; after 64 passes in a row the prompt ends as it is if it
 *     holds at least sys_tokens_min tokens (else -ENOSPC).
 *  2. Conversations 0..open-1 open (fewer when conversations < open). Opening one draws its
 *     system prompt, rank k with probability proportional to 1/(k+1)^zipf_s, then its turn
 *     count uniform in turns_min..turns_max.
 *  3. Each request: one of the open conversations drawn uniformly gives its next turn, which
 *     draws its tokens to generate (gen_min..gen_max) and then its user paragraph, the next of
 *     the shuffle, never used before by a turn or a system prompt. After its last turn the
 *     conversation closes and the next one opens in its place; the stream ends when none is
 *     left open.
 * Every paragraph (of a system prompt or a turn) is encoded on its own by
 * lbw_tokenizer_encode without BOS or EOS (with its dummy-prefix space), so prompts
 * concatenate exact token sequences: see lbw_chat_prompt.
 * err (may be NULL) receives one line saying what is wrong. On failure *out is zeroed and
 * nothing is left allocated.
 * @return 0; -EINVAL NULL argument, empty p, a tokenizer that was not loaded, cfg out of range
 * (a count 0 or above its bound, a MIN above its MAX, zipf_s not finite or out of
 * [0, LBW_MAX_ZIPF_S]); -ENOSPC every paragraph used up, or no paragraph fits a system prompt;
 * -ENOMEM.
 */
int lbw_chat_make(const struct lbw_paragraphs *p, const struct lbw_tokenizer *t,
		  const struct lbw_chat_cfg *cfg, struct lbw_chat *out, char *err, size_t errlen);
/* Free every text and array, and zero *c; NULL or a zeroed struct is fine. */
void lbw_chat_free(struct lbw_chat *c);

/*
 * The token prompt of request id, whose conversation's earlier turns 0..turn-1 were answered
 * with answers[i][0..answer_len[i]) (the tokens the model generated for turn i, any length,
 * copied as given):
 *   BOS, system prompt, paragraph 0, answer 0, paragraph 1, answer 1, ..., paragraph turn
 * So the prompt of turn k followed by answer k is an exact prefix of the prompt of turn k + 1,
 * and turn 0's prompts of every conversation on one system prompt share BOS + that prompt.
 * answers and answer_len may be NULL for turn 0; answers[i] may be NULL when answer_len[i] is 0.
 * out (cap entries) receives the prompt only when it fits (as snprintf, ask with cap 0 first).
 * @return the prompt's token count, also when it does not fit; -EINVAL NULL c, id out of
 * range, answers or answer_len NULL for a turn above 0, a NULL answer of nonzero length, out
 * NULL with cap above 0, or c not made by lbw_chat_make; -EOVERFLOW count above INT32_MAX.
 */
int lbw_chat_prompt(const struct lbw_chat *c, uint32_t id, const int32_t *const *answers,
		    const uint32_t *answer_len, int32_t *out, uint32_t cap);
/*
 * The token count of request id's prompt (as lbw_chat_prompt builds it) when answer i has
 * answer_len[i] tokens; answer_len NULL: each answer as long as its turn's gen.
 * @return the count; -EINVAL as for lbw_chat_prompt.
 */
int64_t lbw_chat_prompt_len(const struct lbw_chat *c, uint32_t id, const uint32_t *answer_len);

#endif
