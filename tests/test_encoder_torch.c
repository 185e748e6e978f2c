/*
 * The committed encoder, models/tinystories-mlm.safetensors, against the torch model of the
 * script that trained it: the C worker's corpus split, tokens, masks, hidden states and logits
 * written to a folder of the test's own, which `tools/train_encoder.py --check` reads and
 * compares with its own (the forward within 1e-4). SKIP (77) where /usr/bin/python3 has no
 * torch or numpy.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mlm.h"
#include "scorer.h"
#include "testutil.h"
#include "tokenizer.h"
#include "workload.h"

#define MODEL LB_SOURCE_DIR "/models/tinystories-mlm.safetensors"
#define SCRIPT LB_SOURCE_DIR "/tools/train_encoder.py"
#define PYTHON LBT_PYTHON
#define VAL LB_DATA_DIR "/tinystories_val.txt"
#define TOK LB_DATA_DIR "/tok512.bin"
#define VOCAB 512

/* Texts beyond the corpus for the tokenizer: characters outside the vocabulary, broken UTF-8,
 * the pieces' own spellings of BOS, EOS, <unk> and a byte token, runs of spaces. */
static const char *const odd_texts[] = {
	"",
	"a",
	"   three spaces, then two  and tabs\tbetween\twords",
	"caf\xc3\xa9 na\xc3\xafve \xe2\x9c\x93 \xf0\x9f\x98\x80 \xe6\x97\xa5\xe6\x9c\xac",
	"broken \xff\xfe utf-8 \xc3 and \x80 a lone continuation",
	"<unk> <s> </s> <0x0A> <0x41>",
	"\"Quotes,\" she said; (brackets) [and] {more}... 42 + 17 = 59!",
};

static char dir[256];

static void path_in(char *out, size_t n, const char *name)
{
	snprintf(out, n, "%s/%s", dir, name);
}

static FILE *create(const char *name)
{
	char p[320];
	path_in(p, sizeof(p), name);
	FILE *f = fopen(p, "wb");
	assert_non_null(f);
	return f;
}

static void put_record(FILE *f, const int32_t *v, int32_t n)
{
	assert_int_equal(fwrite(&n, sizeof(n), 1, f), 1);
	assert_int_equal(fwrite(v, sizeof(*v), (size_t)n, f), (size_t)n);
}

/* eval.txt: the corpus's evaluation part as the loader has it, one paragraph a line. texts.txt,
 * tokens.bin and masks.bin: those paragraphs and odd_texts, their tokens (BOS first) and the
 * positions lbw_mlm_select masks of them cut to positions tokens. *para gets the loader's part. */
static void write_tokens(const struct lbw_tokenizer *t, int32_t positions,
			 struct lbw_paragraphs *para)
{
	char err[256];
	assert_int_equal(lbw_paragraphs_load(VAL, 0, 0, para, err, sizeof(err)), 0);
	FILE *ev = create("eval.txt"), *tx = create("texts.txt"), *tk = create("tokens.bin");
	FILE *mk = create("masks.bin");
	size_t n_odd = sizeof(odd_texts) / sizeof(odd_texts[0]);
	for (size_t i = 0; i < para->n + n_odd; i++) {
		const char *s = i < para->n ? para->p[i] : odd_texts[i - para->n];
		if (i < para->n)
			fprintf(ev, "%s\n", s);
		fprintf(tx, "%s\n", s);
		int32_t *tok = malloc((strlen(s) + 3) * sizeof(int32_t)), pos[1024];
		assert_non_null(tok);
		int n = lbw_tokenizer_encode(t, s, 1, 0, tok);
		assert_true(n >= 1);
		for (int k = 0; k < n; k++)
			assert_true(tok[k] != LBW_MLM_MASK_ID); /* the mask token never comes from text */
		put_record(tk, tok, n);
		int m = lbw_mlm_select(tok, n < positions ? n : positions, LBW_MLM_SEED, pos);
		assert_true(m >= 0 && m < 1024);
		put_record(mk, pos, m);
		free(tok);
	}
	assert_int_equal(fclose(ev), 0);
	assert_int_equal(fclose(tx), 0);
	assert_int_equal(fclose(tk), 0);
	assert_int_equal(fclose(mk), 0);
}

/* inputs.bin and outputs.f32: masked inputs as the worker scores them and, for each, the last
 * layer's output [n][hidden] and the logits [n][VOCAB] through the worker's scorer (embed,
 * every layer, the tied head). Inputs: the first paragraphs of the corpus, its longest (cut to
 * the model's positions) and BOS with one token. */
static void write_forward(struct lbw_scorer *sc, const struct lbw_tokenizer *t,
			  const struct lbw_paragraphs *para)
{
	FILE *in = create("inputs.bin"), *out = create("outputs.f32");
	uint32_t longest = 0;
	for (uint32_t i = 1; i < para->n; i++)
		if (strlen(para->p[i]) > strlen(para->p[longest]))
			longest = i;
	const char *texts[] = { para->p[0], para->p[1], para->p[2], para->p[3], para->p[4],
				para->p[5], para->p[longest], "Lily" };
	for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
		int32_t *tok = malloc((strlen(texts[i]) + 3) * sizeof(int32_t));
		int32_t pos[1024];
		assert_non_null(tok);
		int n = lbw_tokenizer_encode(t, texts[i], 1, 0, tok);
		if (n > sc->max_seq)
			n = sc->max_seq;
		int m = lbw_mlm_select(tok, n, LBW_MLM_SEED, pos);
		assert_true(m >= 1);
		for (int k = 0; k < m; k++)
			tok[pos[k]] = LBW_MLM_MASK_ID;
		float *h = malloc((size_t)n * (size_t)sc->hidden * sizeof(float));
		assert_non_null(h);
		lbw_scorer_embed(sc, tok, n, h);
		for (int32_t l = 0; l < sc->n_layers; l++)
			assert_int_equal(lbw_scorer_layer(sc, (uint32_t)l, h, h), 0);
		const float *logits = lbw_scorer_logits(sc, h, n);
		put_record(in, tok, n);
		assert_int_equal(fwrite(h, sizeof(float), (size_t)n * (size_t)sc->hidden, out),
				 (size_t)n * (size_t)sc->hidden);
		assert_int_equal(fwrite(logits, sizeof(float), (size_t)n * VOCAB, out),
				 (size_t)n * VOCAB);
		free(h);
		free(tok);
	}
	assert_int_equal(fclose(in), 0);
	assert_int_equal(fclose(out), 0);
}

static void test_c_matches_torch(void **state)
{
	(void)state;
	static char out[1 << 16];
	char err[512];
	struct lbw_tokenizer t;
	struct lbw_scorer sc;
	struct lbw_paragraphs para;
	lbt_mkdtemp(dir, sizeof(dir));
	assert_int_equal(lbw_tokenizer_load(&t, TOK, VOCAB, err, sizeof(err)), 0);
	if (lbw_scorer_open_safetensors(&sc, MODEL, VOCAB, err, sizeof(err)) < 0)
		fail_msg("%s", err);
	assert_true(sc.mlm);
	write_tokens(&t, sc.max_seq, &para);
	write_forward(&sc, &t, &para);
	const char *argv[] = { PYTHON, SCRIPT, "--check", dir, "--model", MODEL, "--data",
			       LB_DATA_DIR, NULL };
	int st = lbt_run(argv, out, sizeof(out));
	printf("%s", out);
	lbu_rmtree(dir);
	lbw_paragraphs_free(&para);
	lbw_scorer_close(&sc);
	lbw_tokenizer_free(&t);
	assert_true(WIFEXITED(st));
	if (WEXITSTATUS(st) == LBT_SKIP_CODE)
		skip();
	assert_int_equal(WEXITSTATUS(st), 0);
}

int main(void)
{
	if (access(MODEL, R_OK) || access(VAL, R_OK) || access(TOK, R_OK))
		LBT_SKIP("%s or the shipped data in %s is absent", MODEL, LB_DATA_DIR);
	lbt_need_torch();
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_c_matches_torch),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
