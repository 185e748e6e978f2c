/*
 * FusedKV checkpoints, the C worker against the torch model of tools/train_fusedkv.py, two
 * implementations of the format (worker/model_llama.h) written apart: the same
 * `nll_per_token` within 1e-4 from `layerbank-worker score` and the script's `--eval-text`, on
 * stories260K, on its training-free lite conversion (the script's `--convert-lite`), on the
 * committed uptrained checkpoints (models/stories260K-{control,lite,fused}.bin), and on models
 * the C generator writes (plain, lite, fused with weights ~N(0, 1), an odd shape).
 * SKIP (77) where /usr/bin/python3 has no torch or numpy.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "model_llama.h"
#include "testutil.h"

#define SCRIPT LB_SOURCE_DIR "/tools/train_fusedkv.py"
#define PYTHON LBT_PYTHON
#define MODEL LB_DATA_DIR "/stories260K.bin"
#define TOK LB_DATA_DIR "/tok512.bin"

/* Texts of a few dozen tokens (the generated models hold 64 positions). */
static const char *const texts[] = {
	"Once upon a time, there was a little girl named Lily. She loved to play outside.",
	"Tom had a red ball. He threw it high and his dog ran to get it.",
	"caf\xc3\xa9, na\xc3\xafve: odd bytes \xff too",
};

static void spit(const char *path, const void *data, size_t len)
{
	FILE *f = fopen(path, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(data, 1, len, f), len);
	assert_int_equal(fclose(f), 0);
}

/* The nll_per_token argv prints (a score line), or fail. */
static double nll_of(const char *const *argv)
{
	static char out[8192];
	int st = lbt_run(argv, out, sizeof(out));
	const char *at = strstr(out, "nll_per_token ");
	double x = NAN;
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0 || !at || sscanf(at, "nll_per_token %lf", &x) != 1)
		fail_msg("%s %s: status %d: %s", argv[0], argv[1], st, out);
	return x;
}

/* Every text scored by both on checkpoint path, within 1e-4. */
static void both_agree(const char *dir, const char *path, const char *what)
{
	char txt[400];
	snprintf(txt, sizeof(txt), "%s/text.txt", dir);
	for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
		spit(txt, texts[i], strlen(texts[i]));
		const char *c_argv[] = { LB_WORKER_PATH, "score", "--model", path, "--tokenizer", TOK,
					 "--text-file", txt, NULL };
		const char *py_argv[] = { PYTHON, SCRIPT, "--eval-text", txt, path, NULL };
		double c = nll_of(c_argv), py = nll_of(py_argv);
		printf("%s, text %zu: C %.6f, torch %.6f\n", what, i, c, py);
		if (fabs(c - py) > 1e-4)
			fail_msg("%s, text %zu: C %.6f, torch %.6f", what, i, c, py);
	}
}

static void test_c_matches_torch(void **state)
{
	(void)state;
	char dir[256], path[320];
	static char out[4096];
	lbt_mkdtemp(dir, sizeof(dir));

	both_agree(dir, MODEL, "stories260K");
	snprintf(path, sizeof(path), "%s/lite.bin", dir);
	const char *conv[] = { PYTHON, SCRIPT, "--convert-lite", MODEL, path, NULL };
	int st = lbt_run(conv, out, sizeof(out));
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		fail_msg("--convert-lite: %s", out);
	both_agree(dir, path, "stories260K, training-free lite");
	/* The C conversion (lbw_llama_lite, which layerbank-bench fusedkv makes) writes the same
	 * bytes as the script's. */
	struct lbw_llama plain, lite, file;
	char why[256];
	assert_int_equal(lbw_llama_load(&plain, MODEL, why, sizeof(why)), 0);
	assert_int_equal(lbw_llama_lite(&lite, &plain, plain.cfg.n_layers / 2, why, sizeof(why)), 0);
	assert_int_equal(lbw_llama_load(&file, path, why, sizeof(why)), 0);
	assert_int_equal(lite.data_size, file.data_size);
	assert_memory_equal(lite.data, file.data, file.data_size);
	lbw_llama_free(&file);
	assert_int_equal(lbw_llama_lite(&file, &lite, 1, why, sizeof(why)), -EINVAL); /* not plain */
	assert_int_equal(lbw_llama_lite(&file, &plain, 0, why, sizeof(why)), -EINVAL);
	assert_int_equal(lbw_llama_lite(&file, &plain, plain.cfg.n_layers, why, sizeof(why)),
			 -EINVAL);
	lbw_llama_free(&plain);
	lbw_llama_free(&lite);
	static const char *const trained[] = { "control", "lite", "fused" };
	for (int i = 0; i < 3; i++) {
		char what[64];
		snprintf(path, sizeof(path), LB_SOURCE_DIR "/models/stories260K-%s.bin", trained[i]);
		snprintf(what, sizeof(what), "uptrained %s", trained[i]);
		both_agree(dir, path, what);
	}

	static const char *const names[] = { "generated plain", "generated lite", "generated fused" };
	for (int mode = LBW_KV_PLAIN; mode <= LBW_KV_FUSED; mode++) {
		struct lbw_llama_config c = { .dim = 48, .hidden_dim = 70, .n_layers = 5,
					      .n_heads = 6, .n_kv_heads = 3, .vocab_size = 512,
					      .seq_len = 64, .kv_mode = mode, .kv_layers = 2 };
		struct lbw_llama m;
		char err[256];
		if (lbw_llama_generate(&m, &c, 11, err, sizeof(err)) < 0)
			fail_msg("%s", err);
		snprintf(path, sizeof(path), "%s/gen%d.bin", dir, mode);
		spit(path, m.data, m.data_size);
		lbw_llama_free(&m);
		both_agree(dir, path, names[mode]);
	}
	lbu_rmtree(dir);
}

int main(void)
{
	if (access(MODEL, R_OK) || access(TOK, R_OK))
		LBT_SKIP("the shipped data in %s is absent", LB_DATA_DIR);
	lbt_need_torch();
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_c_matches_torch),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
