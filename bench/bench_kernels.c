/* layerbank-bench kernels: packed GEMM against OpenBLAS and oneDNN, the bf16 GEMM against
 * oneDNN's bf16 matmul, the lbk_* kernels one by one on each instruction-set tier, the BERT-base
 * forward against PyTorch and stories260K generation against the plain-C forward. */
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "kernels.h"
#include "model_bert.h"
#include "model_llama.h"
#include "tokenizer.h"
#ifdef LB_HAVE_OPENBLAS
#include <cblas.h>
#endif

#define SEQ 128
#define HIDDEN 768

static char dir[64];

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Median seconds of one call of fn(arg) over at least min_reps calls and min_s seconds. */
static double time_median(void (*fn)(void *), void *arg, int min_reps, double min_s)
{
	enum { MAX_REPS = 4096 };
	static double t[MAX_REPS];
	int n = 0;
	fn(arg); /* warm-up */
	double start = now_s();
	while (n < MAX_REPS && (n < min_reps || now_s() - start < min_s)) {
		double t0 = now_s();
		fn(arg);
		t[n++] = now_s() - t0;
	}
	return lbb_median(t, (size_t)n);
}

struct gemm_arg {
	float *y;
	const float *x, *w;
	const struct lbk_packed *p;
	int64_t m, n, k;
	int threads;
};

static void run_ours(void *a)
{
	struct gemm_arg *g = a;
	lbk_gemm(g->y, g->x, g->p, NULL, g->m, g->threads);
}

struct bf16_arg {
	float *y;
	const float *x;
	const struct lbk_packed_bf16 *p;
	int64_t m;
};

static void run_ours_bf16(void *a)
{
	struct bf16_arg *g = a;
	lbk_gemm_bf16(g->y, g->x, g->p, NULL, g->m, 1);
}

#ifdef LB_HAVE_DNNL
struct dnnl_arg {
	struct lbb_dnnl_mm *d;
	int threads;
};

static void run_dnnl(void *a)
{
	struct dnnl_arg *g = a;
	if (lbb_dnnl_mm_run(g->d, g->threads) != 0)
		lbb_die("kernels", "oneDNN matmul", EIO);
}

/* The largest |a - b| over n floats. */
static double max_diff(const float *a, const float *b, int64_t n)
{
	double worst = 0;
	for (int64_t i = 0; i < n; i++)
		worst = fmax(worst, fabs(a[i] - b[i]));
	return worst;
}
#endif

#ifdef LB_HAVE_OPENBLAS
static void run_openblas(void *a)
{
	struct gemm_arg *g = a;
	/* y[m][n] = x[m][k] . W[n][k]^T, the same product as lbk_gemm */
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)g->m, (blasint)g->n,
		    (blasint)g->k, 1.0f, g->x, (blasint)g->k, g->w, (blasint)g->k, 0.0f, g->y,
		    (blasint)g->n);
}
#endif

struct fwd_arg {
	const struct lbw_bert *m;
	const int32_t *tok;
	float *out;
	int threads;
};

static void run_forward(void *a)
{
	struct fwd_arg *f = a;
	if (lbw_bert_forward(f->m, SEQ, f->tok, f->out, f->threads) != 0)
		lbb_die("kernels", "lbw_bert_forward", EINVAL);
}

/* BERT-base shaped, random weights, post-LN encoder layers as torch.nn builds them. */
static const char torch_script[] =
	"import sys, time, statistics, torch\n"
	"from torch import nn\n"
	"threads = int(sys.argv[1])\n"
	"torch.set_num_threads(threads)\n"
	"torch.manual_seed(0)\n"
	"class Bert(nn.Module):\n"
	"    def __init__(s):\n"
	"        super().__init__()\n"
	"        s.tok = nn.Embedding(30522, 768); s.pos = nn.Embedding(512, 768)\n"
	"        s.ln = nn.LayerNorm(768, eps=1e-12)\n"
	"        s.layers = nn.ModuleList([nn.TransformerEncoderLayer(768, 12, 3072, dropout=0.0,\n"
	"            activation='gelu', layer_norm_eps=1e-12, batch_first=True, norm_first=False)\n"
	"            for _ in range(12)])\n"
	"    def forward(s, ids):\n"
	"        x = s.ln(s.tok(ids) + s.pos(torch.arange(ids.shape[1]).unsqueeze(0)))\n"
	"        for l in s.layers:\n"
	"            x = l(x)\n"
	"        return x\n"
	"m = Bert().eval()\n"
	"ids = torch.randint(0, 30522, (1, 128))\n"
	"with torch.no_grad():\n"
	"    for _ in range(2): m(ids)\n"
	"    t = []\n"
	"    for _ in range(7):\n"
	"        t0 = time.perf_counter(); m(ids); t.append(time.perf_counter() - t0)\n"
	"import ctypes\n"
	"core = 'unknown'\n"
	"try:\n"
	"    f = ctypes.CDLL('libopenblas.so.0').openblas_get_corename\n"
	"    f.restype = ctypes.c_char_p\n"
	"    core = f().decode()\n"
	"except Exception:\n"
	"    pass\n"
	"print('%.3f %s' % (statistics.median(t) * 1e3, core))\n";

/*
 * PyTorch's forward ms on threads threads, with the BLAS it links (Debian's: OpenBLAS, a pthread
 * pool of its own) on blas_threads and OPENBLAS_CORETYPE set to coretype (NULL: unset), or -1
 * when torch is missing or the run fails. core: the kernel OpenBLAS reports in that process.
 */
static double torch_forward_ms(int threads, int blas_threads, const char *coretype, char *core,
			       size_t corelen)
{
	char script[128], arg[16], line[256], prog[] = "python3";
	snprintf(script, sizeof(script), "%s/bert_torch.py", dir);
	FILE *f = fopen(script, "w");
	if (!f)
		return -1;
	fputs(torch_script, f);
	fclose(f);
	snprintf(arg, sizeof(arg), "%d", threads);
	/* The child's environment, built here: between fork and exec a threaded process (the GEMM
	 * pool) may only make async-signal-safe calls, which setenv is not. */
	extern char **environ;
	size_t ne = 0;
	while (environ[ne])
		ne++;
	char **envp = calloc(ne + 4, sizeof(char *));
	char omp[32], blas[32], ctv[96];
	if (!envp) {
		unlink(script);
		return -1;
	}
	static const char *const drop[] = { "OMP_NUM_THREADS=", "OPENBLAS_NUM_THREADS=",
					    "OPENBLAS_CORETYPE=", "LB_BENCH_REEXEC=",
					    "LB_BENCH_CORETYPE_WAS=" };
	size_t k = 0;
	for (size_t i = 0; i < ne; i++) {
		int keep = 1;
		for (size_t d = 0; d < sizeof(drop) / sizeof(drop[0]); d++)
			keep &= strncmp(environ[i], drop[d], strlen(drop[d])) != 0;
		if (keep)
			envp[k++] = environ[i];
	}
	snprintf(omp, sizeof(omp), "OMP_NUM_THREADS=%d", threads);
	snprintf(blas, sizeof(blas), "OPENBLAS_NUM_THREADS=%d", blas_threads);
	envp[k++] = omp;
	envp[k++] = blas;
	if (coretype) {
		snprintf(ctv, sizeof(ctv), "OPENBLAS_CORETYPE=%s", coretype);
		envp[k++] = ctv;
	}
	int fds[2];
	if (pipe(fds) != 0) {
		free(envp);
		unlink(script);
		return -1;
	}
	int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
	pid_t pid = fork();
	if (pid == 0) {
		dup2(fds[1], 1);
		if (null >= 0)
			dup2(null, 2);
		close(fds[0]);
		close(fds[1]);
		char *const av[] = { prog, script, arg, NULL };
		execve("/usr/bin/python3", av, envp);
		_exit(127);
	}
	if (null >= 0)
		close(null);
	free(envp);
	close(fds[1]);
	double ms = -1;
	FILE *p = pid > 0 ? fdopen(fds[0], "r") : NULL;
	if (p) {
		char name[64];
		if (fgets(line, sizeof(line), p) && sscanf(line, "%lf %63s", &ms, name) == 2)
			snprintf(core, corelen, "%s", name);
		else
			ms = -1;
		fclose(p);
	} else {
		close(fds[0]);
	}
	int st = 0;
	if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		ms = -1;
	unlink(script);
	return ms;
}

/*
 * The better of torch's figures with its OpenBLAS on threads threads and on 1: at 2 threads
 * torch's OpenMP threads and OpenBLAS's own pool contend (2 + 2 threads on 2 vCPUs).
 */
static double torch_best_ms(int threads, const char *coretype, char *core, size_t corelen)
{
	double ms = torch_forward_ms(threads, threads, coretype, core, corelen);
	if (threads > 1) {
		char alt_core[64];
		double alt = torch_forward_ms(threads, 1, coretype, alt_core, sizeof(alt_core));
		if (alt > 0 && (ms < 0 || alt < ms)) {
			ms = alt;
			snprintf(core, corelen, "%s", alt_core);
		}
	}
	return ms;
}

/* stories260K greedy generation: 256 steps from BOS (an empty prompt), stopping at BOS as
 * llama2.c does; tokens counts the steps run. */
struct gen_arg {
	const struct lbw_llama *m;
	struct lbw_llama_state *s;
	int tokens;
};

static void run_generate(void *a)
{
	struct gen_arg *g = a;
	int32_t tok = LBW_TOK_BOS;
	g->tokens = 0;
	for (int32_t pos = 0; pos < 256 && pos < g->m->cfg.seq_len; pos++) {
		int32_t next = lbw_llama_argmax(lbw_llama_forward(g->m, g->s, tok, pos),
						g->m->cfg.vocab_size);
		g->tokens++;
		if (next == LBW_TOK_BOS)
			break;
		tok = next;
	}
}

/* ---- the lbk_* kernels one by one, on each instruction-set tier ---- */

#define N_TIERS 3 /* LBK_ISA_SCALAR, LBK_ISA_AVX2, LBK_ISA_AVX512 */
#define HEADS 12
#define HS (HIDDEN / HEADS)
#define FFN 3072
/* One decode step: a row at position DEC_POS against its cache in blocks of 16 positions,
 * grouped-query HEADS / DEC_KV. */
#define DEC_POS 1023
#define DEC_KV 4
#define DEC_BLOCKS ((DEC_POS + 16) / 16)

/* The buffers every op reads and writes: one BERT-base layer's worth at seq 128. */
struct op_bufs {
	float *q, *k, *v, *o;	  /* [SEQ][HEADS][HS] */
	float *x, *gamma, *beta; /* [SEQ][HIDDEN], [HIDDEN], [HIDDEN] */
	float *ff;		  /* [SEQ][FFN] */
	float *w;		  /* [FFN][HIDDEN] */
	struct lbk_packed *pw[2]; /* w packed as [HIDDEN][HIDDEN] and [FFN][HIDDEN] */
	float *dk, *dv;		  /* [DEC_POS + 1][DEC_KV][HS]: a decoder's K and V cache */
	const float *kb[DEC_BLOCKS], *vb[DEC_BLOCKS]; /* their blocks of 16 positions */
};

static struct op_bufs ob;

static void op_attention(void *a)
{
	(void)a;
	lbk_attention(ob.o, ob.q, ob.k, ob.v, SEQ, HEADS, HEADS, HS, 0);
}

static void op_attention_causal(void *a)
{
	(void)a;
	lbk_attention(ob.o, ob.q, ob.k, ob.v, SEQ, HEADS, HEADS, HS, 1);
}

static void op_attention_decode(void *a)
{
	(void)a;
	lbk_attention_paged(ob.o, HIDDEN, ob.q, HIDDEN, DEC_POS, 1, ob.kb, ob.vb, DEC_KV * HS,
			    DEC_KV * HS, 4, HEADS, DEC_KV, HS);
}

static void op_layernorm(void *a)
{
	(void)a;
	for (int64_t t = 0; t < SEQ; t++)
		lbk_layernorm(ob.o + t * HIDDEN, ob.x + t * HIDDEN, ob.gamma, ob.beta, HIDDEN, 1e-12f);
}

static void op_gelu(void *a)
{
	(void)a;
	/* from the same input each time: GELU iterated in place shrinks it into denormals */
	memcpy(ob.ff, ob.w, (size_t)SEQ * FFN * sizeof(float));
	lbk_gelu(ob.ff, (int64_t)SEQ * FFN);
}

static void op_softmax(void *a)
{
	(void)a;
	for (int64_t t = 0; t < SEQ; t++) {
		memcpy(ob.o + t * SEQ, ob.x + t * SEQ, SEQ * sizeof(float));
		lbk_softmax(ob.o + t * SEQ, SEQ);
	}
}

static void op_gemm_768(void *a)
{
	(void)a;
	lbk_gemm(ob.o, ob.x, ob.pw[0], ob.gamma, SEQ, 1);
}

static void op_gemm_3072(void *a)
{
	(void)a;
	lbk_gemm(ob.ff, ob.x, ob.pw[1], NULL, SEQ, 1);
}

/* One row of the per-kernel table: median µs per call (or GFLOP/s when flop > 0) per tier,
 * -1 where the CPU lacks the tier. */
struct op_row {
	const char *name, *shape;
	void (*fn)(void *);
	double flop;
	double val[N_TIERS];
};

static struct op_row op_rows[] = {
	{ "attention", "12 heads x 128 x 64, bidirectional", op_attention, 0, { 0 } },
	{ "attention_causal", "12 heads x 128 x 64, causal", op_attention_causal, 0, { 0 } },
	{ "attention_decode", "1 row at 1023, 12/4 heads x 64, B=16", op_attention_decode, 0, { 0 } },
	{ "layernorm", "128 rows x 768", op_layernorm, 0, { 0 } },
	{ "gelu", "128 x 3072 (and a copy of it)", op_gelu, 0, { 0 } },
	{ "softmax", "128 rows x 128", op_softmax, 0, { 0 } },
	{ "gemm", "128 x 768 x 768 (GFLOP/s)", op_gemm_768, 2.0 * SEQ * HIDDEN * HIDDEN, { 0 } },
	{ "gemm", "128 x 3072 x 768 (GFLOP/s)", op_gemm_3072, 2.0 * SEQ * FFN * HIDDEN, { 0 } },
};
#define N_OPS ((int)(sizeof(op_rows) / sizeof(op_rows[0])))

static float *op_alloc(int64_t n, uint64_t *r)
{
	float *p = malloc((size_t)n * sizeof(float));
	if (!p)
		lbb_die("kernels", "malloc", ENOMEM);
	for (int64_t i = 0; i < n; i++)
		p[i] = (float)((*r = *r * 6364136223846793005ull + 1) >> 40) / 8388608.0f - 1.0f;
	return p;
}

/* Every op on every tier the CPU has, one thread; the dispatch ceiling is restored after. */
static void ops_run(void)
{
	uint64_t r = 7;
	const int64_t act = (int64_t)SEQ * HIDDEN;
	ob.q = op_alloc(act, &r);
	ob.k = op_alloc(act, &r);
	ob.v = op_alloc(act, &r);
	ob.o = op_alloc(act > (int64_t)SEQ * SEQ ? act : (int64_t)SEQ * SEQ, &r);
	ob.x = op_alloc(act, &r);
	ob.gamma = op_alloc(FFN, &r);
	ob.beta = op_alloc(HIDDEN, &r);
	ob.ff = op_alloc((int64_t)SEQ * FFN, &r);
	ob.w = op_alloc((int64_t)FFN * HIDDEN, &r);
	ob.dk = op_alloc((DEC_POS + 1) * DEC_KV * HS, &r);
	ob.dv = op_alloc((DEC_POS + 1) * DEC_KV * HS, &r);
	for (int b = 0; b < DEC_BLOCKS; b++) {
		ob.kb[b] = ob.dk + (int64_t)b * 16 * DEC_KV * HS;
		ob.vb[b] = ob.dv + (int64_t)b * 16 * DEC_KV * HS;
	}
	ob.pw[0] = lbk_pack(ob.w, HIDDEN, HIDDEN);
	ob.pw[1] = lbk_pack(ob.w, FFN, HIDDEN);
	if (!ob.pw[0] || !ob.pw[1])
		lbb_die("kernels", "lbk_pack", errno);
	for (int64_t i = 0; i < act; i++)
		ob.q[i] *= 3.0f; /* scores of a few units, as trained attention has */
	enum lbk_isa best = lbk_isa();
	for (int i = 0; i < N_OPS; i++) {
		for (int t = 0; t < N_TIERS; t++) {
			op_rows[i].val[t] = -1;
			if (t > (int)best)
				continue;
			lbk_force_isa((enum lbk_isa)t);
			/* the scalar tier is slow: fewer repetitions */
			double sec = time_median(op_rows[i].fn, NULL, t == LBK_ISA_SCALAR ? 3 : 11,
						 t == LBK_ISA_SCALAR ? 0.1 : 0.3);
			op_rows[i].val[t] = op_rows[i].flop > 0 ? op_rows[i].flop / sec * 1e-9 : sec * 1e6;
		}
	}
	lbk_force_isa(LBK_ISA_AVX512);
	lbk_packed_free(ob.pw[0]);
	lbk_packed_free(ob.pw[1]);
	free(ob.q);
	free(ob.k);
	free(ob.v);
	free(ob.o);
	free(ob.x);
	free(ob.gamma);
	free(ob.beta);
	free(ob.ff);
	free(ob.w);
	free(ob.dk);
	free(ob.dv);
}

static json_object *ops_json(void)
{
	json_object *a = json_object_new_array();
	for (int i = 0; i < N_OPS; i++) {
		json_object *r = json_object_new_object();
		json_object_object_add(r, "name", json_object_new_string(op_rows[i].name));
		json_object_object_add(r, "shape", json_object_new_string(op_rows[i].shape));
		json_object_object_add(r, "unit", json_object_new_string(op_rows[i].flop > 0 ? "gflops" : "us"));
		for (int t = 0; t < N_TIERS; t++)
			json_object_object_add(r, lbk_isa_name((enum lbk_isa)t), op_rows[i].val[t] >= 0
						     ? json_object_new_double(op_rows[i].val[t]) : NULL);
		json_object_array_add(a, r);
	}
	return a;
}

static void ops_print(void)
{
	printf("lbk_* kernels at BERT-base layer shapes, 1 thread, each tier forced (median µs a call):\n");
	printf("  %-17s %-36s %10s %10s %10s\n", "kernel", "shape", "avx512", "avx2", "scalar");
	for (int i = 0; i < N_OPS; i++) {
		printf("  %-17s %-36s", op_rows[i].name, op_rows[i].shape);
		for (int t = N_TIERS - 1; t >= 0; t--) {
			if (op_rows[i].val[t] < 0)
				printf(" %10s", "-");
			else
				printf(" %10.1f", op_rows[i].val[t]);
		}
		printf("\n");
	}
}

enum { PART_GEMM = 1, PART_OPS = 2, PART_BERT = 4, PART_STORIES = 8, PART_ALL = 15 };

/* --only LIST: a comma list of gemm, ops, bert, stories. @return the parts, or 0 when bad. */
static unsigned parse_parts(const char *list)
{
	static const struct {
		const char *name;
		unsigned bit;
	} tab[] = { { "gemm", PART_GEMM }, { "ops", PART_OPS }, { "bert", PART_BERT },
		    { "stories", PART_STORIES } };
	unsigned parts = 0;
	const char *p = list;
	while (*p) {
		size_t len = strcspn(p, ",");
		unsigned bit = 0;
		for (size_t i = 0; i < sizeof(tab) / sizeof(tab[0]); i++)
			if (len == strlen(tab[i].name) && !strncmp(p, tab[i].name, len))
				bit = tab[i].bit;
		if (!bit)
			return 0;
		parts |= bit;
		p += len;
		if (*p == ',' && *++p == '\0')
			return 0;
	}
	return parts;
}

static json_object *json_num(double v)
{
	return v > 0 ? json_object_new_double(v) : NULL;
}

int bench_kernels_main(int argc, char **argv)
{
	int json = 0;
	unsigned parts = PART_ALL;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--json")) {
			json = 1;
		} else if (!strcmp(argv[i], "--only") && i + 1 < argc) {
			parts = parse_parts(argv[++i]);
			if (!parts) {
				fprintf(stderr, "layerbank-bench kernels: bad --only '%s' (a comma list of "
						"gemm, ops, bert, stories)\n", argv[i]);
				return 2;
			}
		} else {
			fprintf(stderr, "usage: layerbank-bench kernels [--json] [--only gemm,ops,bert,stories]\n");
			return 2;
		}
	}
	/*
	 * The OPENBLAS_CORETYPE this benchmark was started with (NULL: unset): PyTorch's baseline
	 * as the machine's default environment gives it runs with it, whatever is set below for
	 * the tuned OpenBLAS. Across the re-exec it travels in LB_BENCH_CORETYPE_WAS.
	 */
	const char *ct = getenv("OPENBLAS_CORETYPE");
	const char *default_ct = getenv("LB_BENCH_REEXEC") ? getenv("LB_BENCH_CORETYPE_WAS") : ct;
#ifdef LB_HAVE_OPENBLAS
	/* OpenBLAS 0.3.21 misdetects these EPYC vCPUs (and these machines' environment presets
	 * Haswell, the AVX2 kernels): it reads the variable when it loads, so set it and start
	 * again (argv - 1: main's argv, "kernels" at argv[0] here). LB_BENCH_REEXEC stops a loop. */
	if ((!ct || strcmp(ct, "SkylakeX") != 0) && !getenv("LB_BENCH_REEXEC")) {
		if (ct) {
			fprintf(stderr, "layerbank-bench: OPENBLAS_CORETYPE=%s replaced by SkylakeX "
					"(PyTorch's default-environment run keeps it)\n", ct);
			setenv("LB_BENCH_CORETYPE_WAS", ct, 1);
		}
		setenv("OPENBLAS_CORETYPE", "SkylakeX", 1);
		setenv("LB_BENCH_REEXEC", "1", 1);
		execv("/proc/self/exe", argv - 1);
		lbb_die("kernels", "re-exec with OPENBLAS_CORETYPE", errno);
	}
	const char *core = openblas_get_corename();
#else
	const char *core = NULL;
#endif
	static const int64_t shapes[3][2] = { { 768, 768 }, { 3072, 768 }, { 768, 3072 } };
	struct row {
		int64_t n, k;
		int threads;
		double ours, blas, dnnl;
	} rows[6];
	/* bf16: lbk_gemm_bf16 against oneDNN's bf16 matmul, one thread (only where the CPU has
	 * AVX512_BF16: the fallback is a plain-C loop, not worth timing) */
	struct brow {
		int64_t n, k;
		double ours, dnnl;
	} brows[3];
	const int64_t m = SEQ;
	int nr = 0, nb = 0;
	char dnnl_f32_impl[128] = "", dnnl_bf16_impl[128] = "";
	/* The ceilings the GEMM figures are read against: one core's FMA and vdpbf16ps peaks,
	 * measured now (the clock of these vCPUs moves with what else runs); t threads have t
	 * times them. */
	double peak = (parts & PART_GEMM) ? lbb_fma_peak_gflops() : -1;
	double bf16_peak = (parts & PART_GEMM) ? lbb_bf16_peak_gflops() : -1;
	for (int s = 0; s < 3 && (parts & PART_GEMM); s++) {
		int64_t n = shapes[s][0], k = shapes[s][1];
		float *x = malloc((size_t)(m * k) * sizeof(float)), *w = malloc((size_t)(n * k) * sizeof(float));
		float *y = malloc((size_t)(m * n) * sizeof(float)), *y2 = malloc((size_t)(m * n) * sizeof(float));
		if (!x || !w || !y || !y2)
			lbb_die("kernels", "malloc", ENOMEM);
		uint64_t r = 1;
		for (int64_t i = 0; i < m * k; i++)
			x[i] = (float)((r = r * 6364136223846793005ull + 1) >> 40) / 8388608.0f - 1.0f;
		for (int64_t i = 0; i < n * k; i++)
			w[i] = (float)((r = r * 6364136223846793005ull + 1) >> 40) / 8388608.0f - 1.0f;
		struct lbk_packed *p = lbk_pack(w, n, k);
		if (!p)
			lbb_die("kernels", "lbk_pack", errno);
		for (int threads = 1; threads <= 2; threads++) {
			struct gemm_arg g = { y, x, w, p, m, n, k, threads };
			double flop = 2.0 * (double)m * (double)n * (double)k;
			struct row *rw = &rows[nr++];
			*rw = (struct row){ n, k, threads, flop / time_median(run_ours, &g, 20, 0.5) * 1e-9, -1, -1 };
#ifdef LB_HAVE_OPENBLAS
			openblas_set_num_threads(threads);
			g.y = y2;
			rw->blas = flop / time_median(run_openblas, &g, 20, 0.5) * 1e-9;
			double worst = 0;
			for (int64_t i = 0; i < m * n; i++)
				worst = fmax(worst, fabs(y[i] - y2[i]));
			if (worst > 1e-2)
				fprintf(stderr, "layerbank-bench: GEMM %lldx%lldx%lld differs from OpenBLAS by %g\n",
					(long long)m, (long long)n, (long long)k, worst);
#endif
#ifdef LB_HAVE_DNNL
			struct lbb_dnnl_mm *d = lbb_dnnl_mm_new(m, n, k, 0, x, w);
			if (d) {
				struct dnnl_arg da = { d, threads };
				rw->dnnl = flop / time_median(run_dnnl, &da, 20, 0.5) * 1e-9;
				snprintf(dnnl_f32_impl, sizeof(dnnl_f32_impl), "%s", lbb_dnnl_mm_impl(d));
				double dd = max_diff(y, lbb_dnnl_mm_y(d), m * n);
				if (dd > 1e-2)
					fprintf(stderr, "layerbank-bench: GEMM %lldx%lldx%lld differs from oneDNN by %g\n",
						(long long)m, (long long)n, (long long)k, dd);
				lbb_dnnl_mm_free(d);
			} else {
				fprintf(stderr, "layerbank-bench: oneDNN refused the f32 matmul\n");
			}
#endif
		}
		if (lbk_has_bf16()) {
			double flop = 2.0 * (double)m * (double)n * (double)k;
			struct lbk_packed_bf16 *pb = lbk_pack_bf16(w, n, k);
			if (!pb)
				lbb_die("kernels", "lbk_pack_bf16", errno);
			struct bf16_arg ba = { y, x, pb, m };
			struct brow *br = &brows[nb++];
			*br = (struct brow){ n, k, flop / time_median(run_ours_bf16, &ba, 20, 0.5) * 1e-9, -1 };
			lbk_packed_bf16_free(pb);
#ifdef LB_HAVE_DNNL
			struct lbb_dnnl_mm *d = lbb_dnnl_mm_new(m, n, k, 1, x, w);
			if (d) {
				struct dnnl_arg da = { d, 1 };
				br->dnnl = flop / time_median(run_dnnl, &da, 20, 0.5) * 1e-9;
				snprintf(dnnl_bf16_impl, sizeof(dnnl_bf16_impl), "%s", lbb_dnnl_mm_impl(d));
				/* the same bf16 inputs, fp32 sums in other orders */
				double worst = max_diff(y, lbb_dnnl_mm_y(d), m * n);
				if (worst > 1e-2)
					fprintf(stderr, "layerbank-bench: bf16 GEMM %lldx%lldx%lld differs from oneDNN by %g\n",
						(long long)m, (long long)n, (long long)k, worst);
				lbb_dnnl_mm_free(d);
			} else {
				fprintf(stderr, "layerbank-bench: oneDNN refused the bf16 matmul\n");
			}
#endif
		}
		lbk_packed_free(p);
		free(x);
		free(w);
		free(y);
		free(y2);
	}

	if (parts & PART_OPS)
		ops_run();

	/* BERT-base forward at seq 128: ours (generated weights), then PyTorch's twice: in the
	 * environment the benchmark was started with, and on the tuned OpenBLAS */
	double ours_ms[2] = { -1, -1 }, torch_ms[2] = { -1, -1 }, tuned_ms[2] = { -1, -1 };
	char torch_core[2][64] = { "", "" }, tuned_core[2][64] = { "", "" };
	int have_torch = 0;
	if (parts & PART_BERT) {
		struct lbw_bert_config cfg = lbw_bert_config_base();
		struct lbw_bert *model = lbw_bert_generate(&cfg, 1);
		if (!model)
			lbb_die("kernels", "lbw_bert_generate", errno);
		int32_t tok[SEQ];
		for (int i = 0; i < SEQ; i++)
			tok[i] = (int32_t)((i * 7919 + 101) % cfg.vocab);
		float *out = malloc((size_t)SEQ * HIDDEN * sizeof(float));
		if (!out)
			lbb_die("kernels", "malloc", ENOMEM);
		for (int t = 0; t < 2; t++) {
			struct fwd_arg fa = { model, tok, out, t + 1 };
			ours_ms[t] = time_median(run_forward, &fa, 7, 1.0) * 1e3;
		}
		free(out);
		lbw_bert_free(model);
		have_torch = system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") == 0;
	}
	if (have_torch) {
		snprintf(dir, sizeof(dir), "/tmp/lbbench.XXXXXX");
		if (!mkdtemp(dir))
			lbb_die("kernels", "mkdtemp", errno);
		for (int t = 0; t < 2; t++) {
			torch_ms[t] = torch_best_ms(t + 1, default_ct, torch_core[t], sizeof(torch_core[t]));
			tuned_ms[t] = torch_best_ms(t + 1, "SkylakeX", tuned_core[t], sizeof(tuned_core[t]));
		}
		rmdir(dir);
		have_torch = torch_ms[0] > 0 && torch_ms[1] > 0 && tuned_ms[0] > 0 && tuned_ms[1] > 0;
		if (!have_torch)
			fprintf(stderr, "layerbank-bench: PyTorch imports but its forward failed\n");
	}

	/* stories260K greedy tok/s: the lbk_* forward, then the plain-C reference, same run */
	double stories_tok_s = -1, reference_tok_s = -1;
	if (parts & PART_STORIES) {
		struct lbw_llama lm;
		struct lbw_llama_state ls;
		char err[256];
		if (access(LB_DATA_DIR "/stories260K.bin", R_OK) == 0 &&
		    access(LB_DATA_DIR "/tok512.bin", R_OK) == 0) {
			int rc = lbw_llama_load(&lm, LB_DATA_DIR "/stories260K.bin", err, sizeof(err));
			if (rc < 0) {
				fprintf(stderr, "layerbank-bench: %s\n", err);
				lbb_die("kernels", "lbw_llama_load", -rc);
			}
			if (lbw_llama_state_init(&ls, &lm.cfg) < 0)
				lbb_die("kernels", "lbw_llama_state_init", ENOMEM);
			struct gen_arg ga = { &lm, &ls, 0 };
			for (int ref = 0; ref <= 1; ref++) {
				lbw_llama_set_reference(&lm, ref);
				double sec = time_median(run_generate, &ga, 11, 1.0);
				*(ref ? &reference_tok_s : &stories_tok_s) = ga.tokens / sec;
			}
			lbw_llama_state_free(&ls);
			lbw_llama_free(&lm);
		}
	}

	if (json) {
		json_object *o = json_object_new_object(), *ga = json_object_new_array();
		for (int i = 0; i < nr; i++) {
			json_object *r = json_object_new_object();
			json_object_object_add(r, "m", json_object_new_int64(m));
			json_object_object_add(r, "n", json_object_new_int64(rows[i].n));
			json_object_object_add(r, "k", json_object_new_int64(rows[i].k));
			json_object_object_add(r, "threads", json_object_new_int(rows[i].threads));
			json_object_object_add(r, "ours_gflops", json_object_new_double(rows[i].ours));
			json_object_object_add(r, "openblas_gflops", json_num(rows[i].blas));
			json_object_object_add(r, "ratio", rows[i].blas > 0 ? json_object_new_double(rows[i].ours / rows[i].blas) : NULL);
			json_object_object_add(r, "onednn_gflops", json_num(rows[i].dnnl));
			json_object_object_add(r, "ratio_onednn",
					       rows[i].dnnl > 0 ? json_object_new_double(rows[i].ours / rows[i].dnnl) : NULL);
			double top = peak * rows[i].threads;
			json_object_object_add(r, "ours_of_peak", json_num(peak > 0 ? rows[i].ours / top : -1));
			json_object_object_add(r, "openblas_of_peak",
					       json_num(peak > 0 && rows[i].blas > 0 ? rows[i].blas / top : -1));
			json_object_array_add(ga, r);
		}
		json_object_object_add(o, "gemm", ga);
		json_object_object_add(o, "fma_peak_gflops", json_num(peak));
		json_object *gb = json_object_new_array();
		for (int i = 0; i < nb; i++) {
			json_object *r = json_object_new_object();
			json_object_object_add(r, "m", json_object_new_int64(m));
			json_object_object_add(r, "n", json_object_new_int64(brows[i].n));
			json_object_object_add(r, "k", json_object_new_int64(brows[i].k));
			json_object_object_add(r, "threads", json_object_new_int(1));
			json_object_object_add(r, "ours_gflops", json_object_new_double(brows[i].ours));
			json_object_object_add(r, "onednn_gflops", json_num(brows[i].dnnl));
			json_object_object_add(r, "ratio", brows[i].dnnl > 0 ? json_object_new_double(brows[i].ours / brows[i].dnnl) : NULL);
			json_object_object_add(r, "ours_of_peak", json_num(bf16_peak > 0 ? brows[i].ours / bf16_peak : -1));
			json_object_array_add(gb, r);
		}
		json_object_object_add(o, "gemm_bf16", gb);
		json_object_object_add(o, "bf16_peak_gflops", json_num(bf16_peak));
		json_object_object_add(o, "onednn_f32_impl", dnnl_f32_impl[0] ? json_object_new_string(dnnl_f32_impl) : NULL);
		json_object_object_add(o, "onednn_bf16_impl", dnnl_bf16_impl[0] ? json_object_new_string(dnnl_bf16_impl) : NULL);
		json_object_object_add(o, "openblas_coretype", core ? json_object_new_string(core) : NULL);
		json_object_object_add(o, "kernels", (parts & PART_OPS) ? ops_json() : NULL);
		json_object *bo = NULL, *to = NULL, *ro = NULL, *tto = NULL, *tro = NULL;
		if (parts & PART_BERT)
			bo = json_object_new_object();
		if (have_torch) {
			to = json_object_new_object();
			ro = json_object_new_object();
			tto = json_object_new_object();
			tro = json_object_new_object();
		}
		for (int t = 0; t < 2 && bo; t++) {
			char key[8];
			snprintf(key, sizeof(key), "%d", t + 1);
			json_object_object_add(bo, key, json_object_new_double(ours_ms[t]));
			if (have_torch) {
				json_object_object_add(to, key, json_object_new_double(torch_ms[t]));
				json_object_object_add(ro, key, json_object_new_double(torch_ms[t] / ours_ms[t]));
				json_object_object_add(tto, key, json_object_new_double(tuned_ms[t]));
				json_object_object_add(tro, key, json_object_new_double(tuned_ms[t] / ours_ms[t]));
			}
		}
		json_object_object_add(o, "seq", json_object_new_int(SEQ));
		json_object_object_add(o, "bert_forward_ms", bo);
		json_object_object_add(o, "torch_forward_ms", to);
		json_object_object_add(o, "ratio_torch", ro);
		json_object_object_add(o, "torch_openblas_coretype_env",
				       default_ct ? json_object_new_string(default_ct) : NULL);
		json_object_object_add(o, "torch_openblas_core",
				       have_torch ? json_object_new_string(torch_core[0]) : NULL);
		json_object_object_add(o, "torch_tuned_forward_ms", tto);
		json_object_object_add(o, "ratio_torch_tuned", tro);
		json_object_object_add(o, "torch_tuned_openblas_core",
				       have_torch ? json_object_new_string(tuned_core[0]) : NULL);
		int have_st = stories_tok_s > 0 && reference_tok_s > 0;
		json_object_object_add(o, "stories_tok_s", have_st ? json_object_new_double(stories_tok_s) : NULL);
		json_object_object_add(o, "reference_tok_s", have_st ? json_object_new_double(reference_tok_s) : NULL);
		json_object_object_add(o, "ratio_stories", have_st ? json_object_new_double(stories_tok_s / reference_tok_s) : NULL);
		puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
		json_object_put(o);
		return 0;
	}
	if (parts & PART_GEMM) {
		if (peak > 0)
			printf("FMA peak of one core (%s, independent FMA chains): %.1f GFLOP/s; %% peak: of "
			       "threads x that\n", lbk_isa() == LBK_ISA_AVX512 ? "AVX-512" : "AVX2", peak);
		else
			printf("FMA peak: none on the scalar tier\n");
		printf("GEMM y[M][N] = x[M][K] . W^T, M = %lld (BERT-base at seq %d); OpenBLAS core: %s\n",
		       (long long)m, SEQ, core ? core : "(not built with OpenBLAS)");
		printf("  %6s %6s %7s %12s %7s %16s %7s %8s %14s %8s\n", "N", "K", "threads", "ours GF/s", "% peak",
		       "OpenBLAS GF/s", "% peak", "ratio", "oneDNN GF/s", "ratio");
		for (int i = 0; i < nr; i++) {
			double top = peak * rows[i].threads;
			char ours_pc[16] = "      -", blas_pc[16] = "      -";
			if (peak > 0)
				snprintf(ours_pc, sizeof(ours_pc), "%6.1f%%", 100 * rows[i].ours / top);
			if (peak > 0 && rows[i].blas > 0)
				snprintf(blas_pc, sizeof(blas_pc), "%6.1f%%", 100 * rows[i].blas / top);
			printf("  %6lld %6lld %7d %12.1f %7s %16.1f %7s %7.2fx %14.1f %7.2fx\n", (long long)rows[i].n,
			       (long long)rows[i].k, rows[i].threads, rows[i].ours, ours_pc, rows[i].blas,
			       blas_pc, rows[i].blas > 0 ? rows[i].ours / rows[i].blas : 0.0, rows[i].dnnl,
			       rows[i].dnnl > 0 ? rows[i].ours / rows[i].dnnl : 0.0);
		}
		printf("oneDNN f32 implementation: %s\n", dnnl_f32_impl[0] ? dnnl_f32_impl : "(not built with oneDNN)");
		if (bf16_peak > 0)
			printf("vdpbf16ps peak of one core (independent chains, 64 flops an instruction): %.1f GFLOP/s\n",
			       bf16_peak);
		else
			printf("bf16 GEMM: skipped (no AVX512_BF16 on this tier: lbk_gemm_bf16 runs its plain-C fallback)\n");
		if (nb > 0) {
			printf("bf16 GEMM (lbk_gemm_bf16: x converted per call; oneDNN: bf16 x given), 1 thread; "
			       "oneDNN bf16 implementation: %s\n", dnnl_bf16_impl[0] ? dnnl_bf16_impl : "(not built with oneDNN)");
			printf("  %6s %6s %12s %7s %14s %8s\n", "N", "K", "ours GF/s", "% peak", "oneDNN GF/s", "ratio");
		}
		for (int i = 0; i < nb; i++)
			printf("  %6lld %6lld %12.1f %6.1f%% %14.1f %7.2fx\n", (long long)brows[i].n,
			       (long long)brows[i].k, brows[i].ours, 100 * brows[i].ours / bf16_peak, brows[i].dnnl,
			       brows[i].dnnl > 0 ? brows[i].ours / brows[i].dnnl : 0.0);
	}
	if (parts & PART_OPS)
		ops_print();
	if (parts & PART_BERT) {
		printf("BERT-base forward, seq %d (median ms); PyTorch in the environment this ran in "
		       "(OPENBLAS_CORETYPE %s) and on the tuned OpenBLAS (SkylakeX):\n", SEQ,
		       default_ct ? default_ct : "unset");
		for (int t = 0; t < 2; t++) {
			if (have_torch)
				printf("  %d thread(s): ours %7.1f   PyTorch %7.1f (%s) %5.2fx   PyTorch tuned %7.1f (%s) %5.2fx\n",
				       t + 1, ours_ms[t], torch_ms[t], torch_core[t], torch_ms[t] / ours_ms[t],
				       tuned_ms[t], tuned_core[t], tuned_ms[t] / ours_ms[t]);
			else
				printf("  %d thread(s): ours %8.1f   PyTorch: not installed (/usr/bin/python3 cannot import torch)\n",
				       t + 1, ours_ms[t]);
		}
	}
	if (parts & PART_STORIES) {
		printf("stories260K greedy generation (256 steps, empty prompt, 1 thread):\n");
		if (stories_tok_s > 0 && reference_tok_s > 0)
			printf("  lbk_* kernels %10.0f tok/s   plain-C reference %10.0f tok/s   ratio %.2fx\n",
			       stories_tok_s, reference_tok_s, stories_tok_s / reference_tok_s);
		else
			printf("  skipped: data absent (%s)\n", LB_DATA_DIR);
	}
	return 0;
}
