/* layerbank-bench, oneDNN module: the baseline of the kernels benchmark's GEMMs, a dnnl matmul
 * y[m][n] = x[m][k] . W^T, bf16 or f32 source and weights, f32 destination, weights reordered
 * once into the layout oneDNN picks (as lbk_pack packs ours once). Built with libdnnl-dev only. */
#include "bench.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <oneapi/dnnl/dnnl.h>

/* Debian's libdnnl runs on OpenMP (libgomp): its thread count is OpenMP's. */
void omp_set_num_threads(int n);

struct lbb_dnnl_mm {
	dnnl_engine_t eng;
	dnnl_stream_t st;
	dnnl_primitive_t mm;
	dnnl_memory_t src, wei, dst; /* [m][k] (bf16 or f32), W in oneDNN's layout, [m][n] f32 */
	char impl[128];
};

/* One reorder, run once: from a user buffer (f32, tag) into mem, whose layout is dst_md. */
static int reorder_in(dnnl_engine_t eng, dnnl_stream_t st, const float *data, int64_t d0,
		      int64_t d1, dnnl_format_tag_t tag, dnnl_memory_t to)
{
	dnnl_memory_desc_t umd;
	const dnnl_memory_desc_t *tmd;
	dnnl_dims_t dims = { d0, d1 };
	dnnl_memory_t um = NULL;
	dnnl_primitive_desc_t rpd = NULL;
	dnnl_primitive_t r = NULL;
	int ok = dnnl_memory_desc_init_by_tag(&umd, 2, dims, dnnl_f32, tag) == dnnl_success &&
		 dnnl_memory_get_memory_desc(to, &tmd) == dnnl_success &&
		 dnnl_memory_create(&um, &umd, eng, (void *)data) == dnnl_success &&
		 dnnl_reorder_primitive_desc_create(&rpd, &umd, eng, tmd, eng, NULL) == dnnl_success &&
		 dnnl_primitive_create(&r, rpd) == dnnl_success;
	if (ok) {
		dnnl_exec_arg_t args[2] = { { DNNL_ARG_FROM, um }, { DNNL_ARG_TO, to } };
		ok = dnnl_primitive_execute(r, st, 2, args) == dnnl_success &&
		     dnnl_stream_wait(st) == dnnl_success;
	}
	if (r)
		dnnl_primitive_destroy(r);
	if (rpd)
		dnnl_primitive_desc_destroy(rpd);
	if (um)
		dnnl_memory_destroy(um);
	return ok ? 0 : -1;
}

void lbb_dnnl_mm_free(struct lbb_dnnl_mm *d)
{
	if (!d)
		return;
	if (d->mm)
		dnnl_primitive_destroy(d->mm);
	if (d->src)
		dnnl_memory_destroy(d->src);
	if (d->wei)
		dnnl_memory_destroy(d->wei);
	if (d->dst)
		dnnl_memory_destroy(d->dst);
	if (d->st)
		dnnl_stream_destroy(d->st);
	if (d->eng)
		dnnl_engine_destroy(d->eng);
	free(d);
}

struct lbb_dnnl_mm *lbb_dnnl_mm_new(int64_t m, int64_t n, int64_t k, int bf16, const float *x,
				    const float *w)
{
	struct lbb_dnnl_mm *d = calloc(1, sizeof(*d));
	if (!d)
		return NULL;
	dnnl_data_type_t t = bf16 ? dnnl_bf16 : dnnl_f32;
	dnnl_memory_desc_t smd, wmd, dmd;
	dnnl_dims_t sd = { m, k }, wd = { k, n }, dd = { m, n };
	dnnl_matmul_desc_t desc;
	dnnl_primitive_desc_t pd = NULL;
	const char *impl = NULL;
	int ok = dnnl_engine_create(&d->eng, dnnl_cpu, 0) == dnnl_success &&
		 dnnl_stream_create(&d->st, d->eng, dnnl_stream_default_flags) == dnnl_success &&
		 dnnl_memory_desc_init_by_tag(&smd, 2, sd, t, dnnl_ab) == dnnl_success &&
		 dnnl_memory_desc_init_by_tag(&wmd, 2, wd, t, dnnl_format_tag_any) == dnnl_success &&
		 dnnl_memory_desc_init_by_tag(&dmd, 2, dd, dnnl_f32, dnnl_ab) == dnnl_success &&
		 dnnl_matmul_desc_init(&desc, &smd, &wmd, NULL, &dmd) == dnnl_success &&
		 dnnl_primitive_desc_create(&pd, &desc, NULL, d->eng, NULL) == dnnl_success &&
		 dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) == dnnl_success &&
		 dnnl_memory_create(&d->src, &smd, d->eng, DNNL_MEMORY_ALLOCATE) == dnnl_success &&
		 dnnl_memory_create(&d->wei, dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0),
				    d->eng, DNNL_MEMORY_ALLOCATE) == dnnl_success &&
		 dnnl_memory_create(&d->dst, &dmd, d->eng, DNNL_MEMORY_ALLOCATE) == dnnl_success &&
		 dnnl_primitive_create(&d->mm, pd) == dnnl_success;
	if (ok)
		snprintf(d->impl, sizeof(d->impl), "%s", impl ? impl : "?");
	if (pd)
		dnnl_primitive_desc_destroy(pd);
	/* x [m][k] row-major (ab); W [n][k] row-major is the [k][n] weights with tag ba */
	if (!ok || reorder_in(d->eng, d->st, x, m, k, dnnl_ab, d->src) != 0 ||
	    reorder_in(d->eng, d->st, w, k, n, dnnl_ba, d->wei) != 0) {
		lbb_dnnl_mm_free(d);
		errno = EINVAL;
		return NULL;
	}
	return d;
}

int lbb_dnnl_mm_run(struct lbb_dnnl_mm *d, int threads)
{
	omp_set_num_threads(threads);
	dnnl_exec_arg_t args[3] = { { DNNL_ARG_SRC, d->src }, { DNNL_ARG_WEIGHTS, d->wei },
				    { DNNL_ARG_DST, d->dst } };
	if (dnnl_primitive_execute(d->mm, d->st, 3, args) != dnnl_success ||
	    dnnl_stream_wait(d->st) != dnnl_success)
		return -EIO;
	return 0;
}

const char *lbb_dnnl_mm_impl(const struct lbb_dnnl_mm *d)
{
	return d->impl;
}

const float *lbb_dnnl_mm_y(const struct lbb_dnnl_mm *d)
{
	void *p = NULL;
	dnnl_memory_get_data_handle(d->dst, &p);
	return p;
}
