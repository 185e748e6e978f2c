/*
 * layerbank-bench kernels --only gemm --json: every GEMM row has its figures (OpenBLAS's and
 * oneDNN's where the benchmark was built with them), the FMA and vdpbf16ps peaks are there, and
 * on a CPU with AVX512_BF16 gemm_bf16 has the three BERT-base shapes, one thread, ours and
 * oneDNN's bf16 matmul with their ratio and the implementation oneDNN chose. Figures are checked
 * for presence and sense, not speed. SKIP (77) in sanitizer builds.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>

#include "kernels.h"
#include "testutil.h"

static struct json_object *get(struct json_object *j, const char *key)
{
	struct json_object *v;
	if (!json_object_object_get_ex(j, key, &v))
		fail_msg("no '%s' in the report", key);
	return v;
}

static double num(struct json_object *j, const char *key)
{
	return json_object_get_double(get(j, key));
}

static void test_gemm_report(void **state)
{
	(void)state;
	static char out[1 << 16];
	const char *argv[] = { LB_BENCH_PATH, "kernels", "--only", "gemm", "--json", NULL };
	int st = lbt_run(argv, out, sizeof(out));
	if (!WIFEXITED(st) || WEXITSTATUS(st))
		fail_msg("layerbank-bench kernels: %s", out);
	const char *report = strstr(out, "{\""); /* after any notes on stderr */
	assert_non_null(report);
	struct json_object *j = json_tokener_parse(report);
	assert_non_null(j);

	struct json_object *g = get(j, "gemm");
	assert_int_equal(json_object_array_length(g), 6);
	for (size_t i = 0; i < 6; i++) {
		struct json_object *r = json_object_array_get_idx(g, i);
		assert_true(num(r, "ours_gflops") > 0);
		get(r, "openblas_gflops");
		double d = num(r, "onednn_gflops");
#ifdef LB_HAVE_DNNL
		assert_true(d > 0);
		assert_true(fabs(num(r, "ratio_onednn") - num(r, "ours_gflops") / d) < 1e-9 * (1 + d));
#else
		assert_true(d == 0); /* null */
#endif
	}
#ifdef LB_HAVE_DNNL
	const char *f32_impl = json_object_get_string(get(j, "onednn_f32_impl"));
	assert_true(f32_impl && strlen(f32_impl) > 0);
#endif
	if (lbk_isa() != LBK_ISA_SCALAR)
		assert_true(num(j, "fma_peak_gflops") > 0);

	struct json_object *b = get(j, "gemm_bf16");
	double bpeak = num(j, "bf16_peak_gflops");
	if (!lbk_has_bf16()) {
		printf("no AVX512_BF16 here: gemm_bf16 is empty, bf16_peak_gflops null\n");
		assert_int_equal(json_object_array_length(b), 0);
		assert_true(bpeak == 0);
		json_object_put(j);
		return;
	}
	assert_true(bpeak > 0);
	static const int64_t shapes[3][2] = { { 768, 768 }, { 3072, 768 }, { 768, 3072 } };
	assert_int_equal(json_object_array_length(b), 3);
	for (size_t i = 0; i < 3; i++) {
		struct json_object *r = json_object_array_get_idx(b, i);
		assert_int_equal((int64_t)num(r, "m"), 128);
		assert_int_equal((int64_t)num(r, "n"), shapes[i][0]);
		assert_int_equal((int64_t)num(r, "k"), shapes[i][1]);
		assert_int_equal((int)num(r, "threads"), 1);
		double ours = num(r, "ours_gflops"), d = num(r, "onednn_gflops");
		assert_true(ours > 0);
		/* below the peak it is measured against (with room for a clock that moved) */
		assert_true(ours < 1.2 * bpeak);
		printf("bf16 %lld x %lld: ours %.0f, oneDNN %.0f GFLOP/s, peak %.0f\n",
		       (long long)shapes[i][0], (long long)shapes[i][1], ours, d, bpeak);
#ifdef LB_HAVE_DNNL
		assert_true(d > 0);
		assert_true(fabs(num(r, "ratio") - ours / d) < 1e-9 * (1 + ours));
#else
		assert_true(d == 0);
#endif
	}
#ifdef LB_HAVE_DNNL
	const char *impl = json_object_get_string(get(j, "onednn_bf16_impl"));
	printf("oneDNN bf16 implementation: %s\n", impl);
	assert_true(impl && strlen(impl) > 0);
#endif
	json_object_put(j);
}

int main(void)
{
	if (LB_SANITIZED) {
		printf("SKIP: a sanitizer build; the debug build runs it\n");
		return 77;
	}
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_gemm_report),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
