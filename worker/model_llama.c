/*
 * Llama checkpoint loader (llama2.c legacy format), the generator of checkpoints from a seed, and
 * the reference fp32 forward pass.
 * Two forwards: the plain C of llama2.c (m->reference, the kernels' baseline and what they are
 * held to) and the same math on the lbk_* kernels (the default).
 */
#include "model_llama.h"

#include "kernels.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "errf.h"
#include "randn.h"

/* Floats the file holds after the header, in llama2.c's order. */
static uint64_t weight_floats(const struct lbw_llama_config *c)
{
	uint64_t dim = (uint64_t)c->dim, hid = (uint64_t)c->hidden_dim, L = (uint64_t)c->n_layers;
	uint64_t kv = (uint64_t)c->kv_dim, V = (uint64_t)c->vocab_size;
	uint64_t n = V * dim;          /* token_embedding */
	n += L * dim;                  /* rms_att */
	n += L * dim * dim;            /* wq */
	n += 2 * (uint64_t)c->kv_layers * kv * dim; /* wk, wv */
	n += L * dim * dim;            /* wo */
	n += L * dim;                  /* rms_ffn */
	n += 3 * L * hid * dim;        /* w1, w2, w3 */
	n += dim;                      /* rms_final */
	n += (uint64_t)c->seq_len * (uint64_t)c->head_size; /* freq_cis real + imag, [seq][hs/2] each */
	if (!c->shared_classifier)
		n += V * dim;          /* wcls */
	if (c->kv_mode == LBW_KV_FUSED)
		n += (L - (uint64_t)c->kv_layers) * 3 * kv; /* kv_coef */
	return n;
}

/* The shape a header describes, checked against the caps and shape rules (not the size). */
static int parse_header(const int32_t hdr[7], struct lbw_llama_config *cfg, char *err,
			size_t errlen)
{
	struct lbw_llama_config c;
	memset(&c, 0, sizeof(c));
	c.dim = hdr[0];
	c.hidden_dim = hdr[1];
	c.n_layers = hdr[2];
	c.n_heads = hdr[3];
	c.n_kv_heads = hdr[4];
	c.shared_classifier = hdr[5] > 0;
	c.vocab_size = hdr[5] == INT32_MIN ? 0 : (hdr[5] < 0 ? -hdr[5] : hdr[5]);
	c.seq_len = hdr[6];

	struct {
		const char *name;
		int32_t v, max;
	} f[] = {
		{ "dim", c.dim, LBW_LLAMA_MAX_DIM },
		{ "hidden_dim", c.hidden_dim, LBW_LLAMA_MAX_HIDDEN },
		{ "n_layers", c.n_layers, LBW_LLAMA_MAX_LAYERS },
		{ "n_heads", c.n_heads, LBW_LLAMA_MAX_DIM },
		{ "n_kv_heads", c.n_kv_heads, LBW_LLAMA_MAX_DIM },
		{ "vocab_size", c.vocab_size, LBW_LLAMA_MAX_VOCAB },
		{ "seq_len", c.seq_len, LBW_LLAMA_MAX_SEQ },
	};
	for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
		if (f[i].v <= 0 || f[i].v > f[i].max) {
			lbu_errf(err, errlen, "bad checkpoint header: %s = %d (must be 1..%d)", f[i].name,
				(int)f[i].v, (int)f[i].max);
			return -EINVAL;
		}
	}
	if (c.dim % c.n_heads) {
		lbu_errf(err, errlen, "bad checkpoint header: dim %d not a multiple of n_heads %d",
			(int)c.dim, (int)c.n_heads);
		return -EINVAL;
	}
	if (c.n_kv_heads > c.n_heads || c.n_heads % c.n_kv_heads) {
		lbu_errf(err, errlen, "bad checkpoint header: n_heads %d not a multiple of n_kv_heads %d",
			(int)c.n_heads, (int)c.n_kv_heads);
		return -EINVAL;
	}
	c.head_size = c.dim / c.n_heads;
	if (c.head_size % 2) {
		lbu_errf(err, errlen, "bad checkpoint header: head_size %d is odd (RoPE needs pairs)",
			(int)c.head_size);
		return -EINVAL;
	}
	c.kv_dim = c.n_kv_heads * c.head_size;
	c.kv_mode = LBW_KV_PLAIN;
	c.kv_layers = c.n_layers;
	*cfg = c;
	return 0;
}

/* The FusedKV footer (model_llama.h) into c: its mode and storage layers. */
static int parse_footer(const uint8_t *footer, struct lbw_llama_config *c, char *err,
			size_t errlen)
{
	uint32_t version, mode, n;
	memcpy(&version, footer + 4, 4);
	memcpy(&mode, footer + 8, 4);
	memcpy(&n, footer + 12, 4);
	if (version != LBW_FUSEDKV_VERSION) {
		lbu_errf(err, errlen, "FusedKV section version %u: this build reads version %d",
			 version, LBW_FUSEDKV_VERSION);
		return -EINVAL;
	}
	if (mode != LBW_KV_LITE && mode != LBW_KV_FUSED) {
		lbu_errf(err, errlen, "FusedKV section: mode %u (must be 1 lite or 2 fused)", mode);
		return -EINVAL;
	}
	if (n < 1 || n >= (uint32_t)c->n_layers) {
		lbu_errf(err, errlen, "FusedKV section: %u storage layers (must be 1..%d for %d layers)",
			 n, (int)c->n_layers - 1, (int)c->n_layers);
		return -EINVAL;
	}
	c->kv_mode = (int)mode;
	c->kv_layers = (int32_t)n;
	return 0;
}

int lbw_llama_check_header(const int32_t hdr[7], const uint8_t *footer, uint64_t file_size,
			   struct lbw_llama_config *cfg, char *err, size_t errlen)
{
	struct lbw_llama_config c;
	int rc = parse_header(hdr, &c, err, errlen);
	if (rc < 0)
		return rc;
	uint64_t want = LBW_LLAMA_HEADER_BYTES + 4 * weight_floats(&c);
	if (file_size != want && footer && !memcmp(footer, LBW_FUSEDKV_MAGIC, 4)) {
		rc = parse_footer(footer, &c, err, errlen);
		if (rc < 0)
			return rc;
		want = LBW_LLAMA_HEADER_BYTES + 4 * weight_floats(&c) + LBW_FUSEDKV_FOOTER_BYTES;
		if (file_size != want) {
			lbu_errf(err, errlen,
				 "FusedKV checkpoint size %llu bytes, but its header and section (%s, %d "
				 "of %d layers storing K and V) imply %llu: truncated or damaged",
				 (unsigned long long)file_size, c.kv_mode == LBW_KV_LITE ? "lite" : "fused",
				 (int)c.kv_layers, (int)c.n_layers, (unsigned long long)want);
			return -EINVAL;
		}
	}
	if (file_size != want) {
		lbu_errf(err, errlen,
			"checkpoint size %llu bytes, but its header (dim %d hidden %d layers %d heads %d/%d "
			"vocab %d seq %d) implies %llu: truncated or not a llama2.c checkpoint",
			(unsigned long long)file_size, (int)c.dim, (int)c.hidden_dim, (int)c.n_layers,
			(int)c.n_heads, (int)c.n_kv_heads, (int)hdr[5], (int)c.seq_len,
			(unsigned long long)want);
		return -EINVAL;
	}
	*cfg = c;
	return 0;
}

static void map_weights(struct lbw_llama *m)
{
	const struct lbw_llama_config *c = &m->cfg;
	uint64_t dim = (uint64_t)c->dim, hid = (uint64_t)c->hidden_dim, L = (uint64_t)c->n_layers;
	uint64_t kv = (uint64_t)c->kv_dim, V = (uint64_t)c->vocab_size;
	const float *p = (const float *)((const char *)m->data + LBW_LLAMA_HEADER_BYTES);
	m->w.token_embedding = p; p += V * dim;
	m->w.rms_att = p; p += L * dim;
	m->w.wq = p; p += L * dim * dim;
	m->w.wk = p; p += (uint64_t)c->kv_layers * kv * dim;
	m->w.wv = p; p += (uint64_t)c->kv_layers * kv * dim;
	m->w.wo = p; p += L * dim * dim;
	m->w.rms_ffn = p; p += L * dim;
	m->w.w1 = p; p += L * hid * dim;
	m->w.w2 = p; p += L * dim * hid;
	m->w.w3 = p; p += L * hid * dim;
	m->w.rms_final = p; p += dim;
	p += (uint64_t)c->seq_len * (uint64_t)c->head_size; /* freq_cis real + imag */
	m->w.wcls = c->shared_classifier ? m->w.token_embedding : p;
	if (!c->shared_classifier)
		p += V * dim;
	m->w.kv_coef = c->kv_mode == LBW_KV_FUSED ? p : NULL;
}

/* A fused model's weights per channel for the kernels (m->fused_w). @return 0, -ENOMEM. */
static int expand_fused(struct lbw_llama *m)
{
	const struct lbw_llama_config *c = &m->cfg;
	int64_t kv = c->kv_dim, nr = c->n_layers - c->kv_layers;
	if (c->kv_mode != LBW_KV_FUSED)
		return 0;
	m->fused_w = malloc((size_t)(nr * 4 * kv) * sizeof(float));
	if (!m->fused_w)
		return -ENOMEM;
	for (int64_t r = 0; r < nr; r++) {
		const float *in = m->w.kv_coef + r * 3 * kv;
		float *out = m->fused_w + r * 4 * kv;
		for (int64_t i = 0; i < kv; i++) {
			out[i] = in[i / 2];                  /* a */
			out[kv + i] = in[kv / 2 + i / 2];    /* a' */
		}
		memcpy(out + 2 * kv, in + kv, (size_t)(2 * kv) * sizeof(float)); /* b, b' */
	}
	return 0;
}

/* Pack every layer matrix once for lbk_gemm. Out of memory leaves m->packed NULL: the prefill
 * then runs position by position on the GEMV, which needs no packing. */
static void pack_weights(struct lbw_llama *m)
{
	const struct lbw_llama_config *c = &m->cfg;
	int64_t dim = c->dim, hid = c->hidden_dim, kv = c->kv_dim;
	int64_t nmat = (int64_t)c->n_layers * LBW_LLAMA_NMAT;
	m->packed = calloc((size_t)nmat, sizeof(*m->packed));
	if (!m->packed)
		return;
	for (int64_t l = 0; l < c->n_layers; l++) {
		struct lbk_packed **p = m->packed + l * LBW_LLAMA_NMAT;
		p[LBW_LLAMA_WQ] = lbk_pack(m->w.wq + l * dim * dim, dim, dim);
		if (l < c->kv_layers) { /* a reconstruction layer has no K and V of its own */
			p[LBW_LLAMA_WK] = lbk_pack(m->w.wk + l * kv * dim, kv, dim);
			p[LBW_LLAMA_WV] = lbk_pack(m->w.wv + l * kv * dim, kv, dim);
		}
		p[LBW_LLAMA_WO] = lbk_pack(m->w.wo + l * dim * dim, dim, dim);
		p[LBW_LLAMA_W1] = lbk_pack(m->w.w1 + l * hid * dim, hid, dim);
		p[LBW_LLAMA_W2] = lbk_pack(m->w.w2 + l * dim * hid, dim, hid);
		p[LBW_LLAMA_W3] = lbk_pack(m->w.w3 + l * hid * dim, hid, dim);
	}
	for (int64_t i = 0; i < nmat; i++) {
		int64_t l = i / LBW_LLAMA_NMAT, k = i % LBW_LLAMA_NMAT;
		bool none = l >= c->kv_layers && (k == LBW_LLAMA_WK || k == LBW_LLAMA_WV);
		if (!m->packed[i] && !none) {
			for (int64_t j = 0; j < nmat; j++)
				lbk_packed_free(m->packed[j]);
			free(m->packed);
			m->packed = NULL;
			return;
		}
	}
}

void lbw_llama_set_reference(struct lbw_llama *m, int on)
{
	m->reference = on != 0;
}

int lbw_llama_load(struct lbw_llama *m, const char *path, char *err, size_t errlen)
{
	struct stat st;
	int32_t hdr[7];
	uint8_t footer[LBW_FUSEDKV_FOOTER_BYTES];
	bool has_footer = false;
	int rc;

	memset(m, 0, sizeof(*m));
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		rc = -errno;
		lbu_errf(err, errlen, "cannot open checkpoint %s: %s", path, strerror(errno));
		return rc;
	}
	if (fstat(fd, &st) < 0) {
		rc = -errno;
		lbu_errf(err, errlen, "cannot stat checkpoint %s: %s", path, strerror(errno));
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		lbu_errf(err, errlen, "checkpoint %s is not a regular file", path);
		rc = -EINVAL;
		goto out;
	}
	if ((uint64_t)st.st_size < LBW_LLAMA_HEADER_BYTES) {
		lbu_errf(err, errlen, "checkpoint %s: %lld bytes, shorter than its 28-byte header", path,
			(long long)st.st_size);
		rc = -EINVAL;
		goto out;
	}
	ssize_t r = pread(fd, hdr, sizeof(hdr), 0);
	if (r != (ssize_t)sizeof(hdr)) {
		lbu_errf(err, errlen, "cannot read checkpoint header of %s", path);
		rc = -EIO;
		goto out;
	}
	if ((uint64_t)st.st_size >= LBW_LLAMA_HEADER_BYTES + sizeof(footer)) {
		r = pread(fd, footer, sizeof(footer), st.st_size - (off_t)sizeof(footer));
		if (r != (ssize_t)sizeof(footer)) {
			lbu_errf(err, errlen, "cannot read the end of checkpoint %s", path);
			rc = -EIO;
			goto out;
		}
		has_footer = true;
	}
	rc = lbw_llama_check_header(hdr, has_footer ? footer : NULL, (uint64_t)st.st_size, &m->cfg,
				    err, errlen);
	if (rc < 0)
		goto out;
	m->data_size = (size_t)st.st_size;
	m->data = malloc(m->data_size);
	if (!m->data) {
		lbu_errf(err, errlen, "out of memory for a %zu-byte checkpoint", m->data_size);
		rc = -ENOMEM;
		goto out;
	}
	size_t got = 0;
	while (got < m->data_size) {
		r = pread(fd, (char *)m->data + got, m->data_size - got, (off_t)got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			lbu_errf(err, errlen, "checkpoint %s: read failed after %zu of %zu bytes%s%s", path,
				got, m->data_size, r < 0 ? ": " : " (file shrank)",
				r < 0 ? strerror(errno) : "");
			rc = -EIO;
			goto out;
		}
		got += (size_t)r;
	}
	/* The header and footer read first must be those loaded (the file may change under us). */
	if (memcmp(m->data, hdr, sizeof(hdr)) ||
	    (has_footer && memcmp((char *)m->data + m->data_size - sizeof(footer), footer,
				  sizeof(footer)))) {
		lbu_errf(err, errlen, "checkpoint %s changed while being read", path);
		rc = -EIO;
		goto out;
	}
	map_weights(m);
	pack_weights(m);
	rc = expand_fused(m);
	if (rc < 0)
		lbu_errf(err, errlen, "out of memory for a FusedKV model's weights");
out:
	close(fd);
	if (rc < 0)
		lbw_llama_free(m);
	return rc;
}

struct lbw_llama_config lbw_llama_config_110m(void)
{
	return (struct lbw_llama_config){ .dim = 768, .hidden_dim = 2048, .n_layers = 12,
					  .n_heads = 12, .n_kv_heads = 4, .vocab_size = 512,
					  .seq_len = 2048, .head_size = 64, .kv_dim = 256,
					  .shared_classifier = 1, .kv_layers = 12 };
}

/* Every float after the header, in the file's order: matrices and the embedding drawn from
 * ~N(0, LBW_LLAMA_GEN_STD), RMSNorm gains 1, the unused freq_cis tables 0, a fused model's
 * K and V weights from ~N(0, 1). */
static void fill_weights(struct lbw_llama *m, uint64_t seed)
{
	const struct lbw_llama_config *c = &m->cfg;
	uint64_t dim = (uint64_t)c->dim, hid = (uint64_t)c->hidden_dim, L = (uint64_t)c->n_layers;
	uint64_t kv = (uint64_t)c->kv_dim, V = (uint64_t)c->vocab_size, S = (uint64_t)c->kv_layers;
	const float sd = LBW_LLAMA_GEN_STD;
	const struct {
		uint64_t n;
		float std;   /* > 0: drawn */
		float value; /* else this */
	} part[] = {
		{ V * dim, sd, 0 },       /* token_embedding, also the classifier */
		{ L * dim, 0, 1 },        /* rms_att */
		{ L * dim * dim, sd, 0 }, /* wq */
		{ S * kv * dim, sd, 0 },  /* wk */
		{ S * kv * dim, sd, 0 },  /* wv */
		{ L * dim * dim, sd, 0 }, /* wo */
		{ L * dim, 0, 1 },        /* rms_ffn */
		{ L * hid * dim, sd, 0 }, /* w1 */
		{ L * dim * hid, sd, 0 }, /* w2 */
		{ L * hid * dim, sd, 0 }, /* w3 */
		{ dim, 0, 1 },            /* rms_final */
		{ (uint64_t)c->seq_len * (uint64_t)c->head_size, 0, 0 }, /* freq_cis real + imag */
		{ c->kv_mode == LBW_KV_FUSED ? (L - S) * 3 * kv : 0, 1, 0 }, /* kv_coef */
	};
	float *p = (float *)((char *)m->data + LBW_LLAMA_HEADER_BYTES);
	uint64_t state = seed;
	for (size_t i = 0; i < sizeof(part) / sizeof(part[0]); i++) {
		if (part[i].std > 0.0f) {
			lbw_randn(p, (int64_t)part[i].n, part[i].std, &state);
		} else {
			for (uint64_t j = 0; j < part[i].n; j++)
				p[j] = part[i].value;
		}
		p += part[i].n;
	}
}

/*
 * Fault in the whole pages of [p, p + n) in one call, before the generator writes every one of
 * them: on a virtual machine where a page fault costs ~20 us, 300 MB faulted one write at a time
 * take 1.3 s, in one MADV_POPULATE_WRITE 0.05 s. A hint: where it fails (a kernel before 5.14),
 * the writes fault the pages in as usual.
 */
static void prefault(void *p, size_t n)
{
	uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
	uintptr_t a = ((uintptr_t)p + page - 1) & ~(page - 1), e = ((uintptr_t)p + n) & ~(page - 1);
	if (e > a)
		(void)madvise((void *)a, e - a, MADV_POPULATE_WRITE);
}

/* m's image for the shape of hdr (llama2.c's seven header fields) and cfg's kv_mode and
 * kv_layers: the header and a FusedKV model's footer written, the weights left to the caller.
 * @return 0; -EINVAL; -ENOMEM (m freed). */
static int image_new(struct lbw_llama *m, const int32_t hdr[7], const struct lbw_llama_config *cfg,
		     char *err, size_t errlen)
{
	memset(m, 0, sizeof(*m));
	int rc = parse_header(hdr, &m->cfg, err, errlen);
	if (rc < 0)
		return rc;
	bool fkv = cfg->kv_mode != LBW_KV_PLAIN;
	uint8_t footer[LBW_FUSEDKV_FOOTER_BYTES] = LBW_FUSEDKV_MAGIC;
	if (fkv) {
		uint32_t f[3] = { LBW_FUSEDKV_VERSION, (uint32_t)cfg->kv_mode, (uint32_t)cfg->kv_layers };
		memcpy(footer + 4, f, sizeof(f));
		rc = parse_footer(footer, &m->cfg, err, errlen);
		if (rc < 0)
			return rc;
	}
	m->data_size = LBW_LLAMA_HEADER_BYTES + 4 * weight_floats(&m->cfg) +
		       (fkv ? sizeof(footer) : 0);
	m->data = malloc(m->data_size);
	if (!m->data) {
		lbu_errf(err, errlen, "out of memory for %zu bytes of weights", m->data_size);
		lbw_llama_free(m);
		return -ENOMEM;
	}
	prefault(m->data, m->data_size);
	memcpy(m->data, hdr, 7 * sizeof(int32_t));
	if (fkv) /* the file's image, footer included: it can be written out and loaded back */
		memcpy((char *)m->data + m->data_size - sizeof(footer), footer, sizeof(footer));
	return 0;
}

/* m's weights written: point into them, pack them. @return 0; -ENOMEM (m freed). */
static int image_finish(struct lbw_llama *m, char *err, size_t errlen)
{
	map_weights(m);
	pack_weights(m);
	if (expand_fused(m) < 0) {
		lbu_errf(err, errlen, "out of memory for a FusedKV model's weights");
		lbw_llama_free(m);
		return -ENOMEM;
	}
	return 0;
}

int lbw_llama_generate(struct lbw_llama *m, const struct lbw_llama_config *cfg, uint64_t seed,
		       char *err, size_t errlen)
{
	int32_t hdr[7] = { cfg->dim,        cfg->hidden_dim, cfg->n_layers, cfg->n_heads,
			   cfg->n_kv_heads, cfg->vocab_size, cfg->seq_len };
	memset(m, 0, sizeof(*m));
	if (cfg->vocab_size <= 0) {
		lbu_errf(err, errlen, "bad shape: vocab_size = %d (must be 1..%d)",
			 (int)cfg->vocab_size, LBW_LLAMA_MAX_VOCAB);
		return -EINVAL;
	}
	int rc = image_new(m, hdr, cfg, err, errlen);
	if (rc < 0)
		return rc;
	fill_weights(m, seed);
	return image_finish(m, err, errlen);
}

int lbw_llama_lite(struct lbw_llama *m, const struct lbw_llama *in, int32_t n, char *err,
		   size_t errlen)
{
	const struct lbw_llama_config *c = &in->cfg;
	memset(m, 0, sizeof(*m));
	if (c->kv_mode != LBW_KV_PLAIN || n < 1 || n >= c->n_layers) {
		lbu_errf(err, errlen, "training-free Lite needs a plain model and 1 <= n < %d "
			 "storage layers (n = %d)", (int)c->n_layers, (int)n);
		return -EINVAL;
	}
	struct lbw_llama_config lite = *c;
	lite.kv_mode = LBW_KV_LITE;
	lite.kv_layers = n;
	int rc = image_new(m, (const int32_t *)in->data, &lite, err, errlen);
	if (rc < 0)
		return rc;
	/* In the file's order, each part of in's image copied; of wk and wv the first n layers. */
	uint64_t dim = (uint64_t)c->dim, hid = (uint64_t)c->hidden_dim, L = (uint64_t)c->n_layers;
	uint64_t kv = (uint64_t)c->kv_dim, V = (uint64_t)c->vocab_size;
	const struct {
		uint64_t out, in;
	} part[] = {
		{ V * dim, V * dim },                   /* token_embedding */
		{ L * dim, L * dim },                   /* rms_att */
		{ L * dim * dim, L * dim * dim },       /* wq */
		{ n * kv * dim, L * kv * dim },         /* wk */
		{ n * kv * dim, L * kv * dim },         /* wv */
		{ L * dim * dim, L * dim * dim },       /* wo */
		{ L * dim, L * dim },                   /* rms_ffn */
		{ 3 * L * hid * dim, 3 * L * hid * dim }, /* w1, w2, w3 */
		{ dim, dim },                           /* rms_final */
		{ (uint64_t)c->seq_len * (uint64_t)c->head_size,
		  (uint64_t)c->seq_len * (uint64_t)c->head_size }, /* freq_cis */
		{ c->shared_classifier ? 0 : V * dim, c->shared_classifier ? 0 : V * dim }, /* wcls */
	};
	float *o = (float *)((char *)m->data + LBW_LLAMA_HEADER_BYTES);
	const float *i = (const float *)((const char *)in->data + LBW_LLAMA_HEADER_BYTES);
	for (size_t k = 0; k < sizeof(part) / sizeof(part[0]); k++) {
		memcpy(o, i, part[k].out * sizeof(float));
		o += part[k].out;
		i += part[k].in;
	}
	m->reference = in->reference;
	return image_finish(m, err, errlen);
}

void lbw_llama_free(struct lbw_llama *m)
{
	if (m->packed) {
		for (int64_t i = 0; i < (int64_t)m->cfg.n_layers * LBW_LLAMA_NMAT; i++)
			lbk_packed_free(m->packed[i]);
		free(m->packed);
	}
	free(m->fused_w);
	free(m->data);
	memset(m, 0, sizeof(*m));
}

int lbw_llama_state_init(struct lbw_llama_state *s, const struct lbw_llama_config *c)
{
	size_t dim = (size_t)c->dim, hid = (size_t)c->hidden_dim;

	memset(s, 0, sizeof(*s));
	s->n_blocks = (c->seq_len + LBW_LLAMA_BLOCK - 1) / LBW_LLAMA_BLOCK;
	s->block_floats = (uint64_t)c->kv_layers * 2 * LBW_LLAMA_BLOCK * (uint64_t)c->kv_dim;
	s->x = calloc(dim, sizeof(float));
	s->xb = calloc(dim, sizeof(float));
	s->xb2 = calloc(dim, sizeof(float));
	s->hb = calloc(hid, sizeof(float));
	s->hb2 = calloc(hid, sizeof(float));
	s->q = calloc(dim, sizeof(float));
	s->att = calloc((size_t)c->n_heads * (size_t)c->seq_len, sizeof(float));
	s->logits = calloc((size_t)c->vocab_size, sizeof(float));
	s->kv = calloc((size_t)s->n_blocks * s->block_floats, sizeof(float));
	s->table = calloc((size_t)s->n_blocks, sizeof(*s->table));
	s->blk = calloc(2 * (size_t)s->n_blocks, sizeof(*s->blk));
	s->krow = calloc((size_t)c->kv_dim, sizeof(float));
	s->blk2 = calloc(2 * (size_t)s->n_blocks, sizeof(*s->blk2));
	if (!s->x || !s->xb || !s->xb2 || !s->hb || !s->hb2 || !s->q || !s->att || !s->logits ||
	    !s->kv || !s->table || !s->blk || !s->krow || !s->blk2) {
		lbw_llama_state_free(s);
		return -ENOMEM;
	}
	lbw_llama_state_reset(s);
	return 0;
}

void lbw_llama_state_reset(struct lbw_llama_state *s)
{
	for (int32_t i = 0; i < s->n_blocks; i++)
		s->table[i] = s->kv + (size_t)i * s->block_floats;
}

void lbw_llama_state_free(struct lbw_llama_state *s)
{
	free(s->x);
	free(s->xb);
	free(s->xb2);
	free(s->hb);
	free(s->hb2);
	free(s->q);
	free(s->att);
	free(s->logits);
	free(s->kv);
	free(s->table);
	free(s->blk);
	free(s->krow);
	free(s->blk2);
	free(s->scratch);
	memset(s, 0, sizeof(*s));
}

/* ---- K and V rows through the table ---- */

/* The row (v: 0 K, 1 V) of layer l, position t, to read. */
static const float *kv_row(const struct lbw_llama_state *s, int64_t kv_dim, int64_t l, int v,
			   int64_t t)
{
	int64_t B = LBW_LLAMA_BLOCK;
	return s->table[t / B] + ((2 * l + v) * B + t % B) * kv_dim;
}

/* The same row to write: the state's own block, which the table must point at (a cached block
 * is never written: lbw_llama_rows' callers compute only positions past a hit). */
static float *kv_row_own(const struct lbw_llama_state *s, int64_t kv_dim, int64_t l, int v,
			 int64_t t)
{
	int64_t B = LBW_LLAMA_BLOCK;
	float *own = s->kv + (size_t)(t / B) * s->block_floats;
	if (s->table[t / B] != own)
		abort(); /* a write into a cached block: the caller broke the contract above */
	return own + ((2 * l + v) * B + t % B) * kv_dim;
}

/*
 * Where layer l attends: the storage layers its K and V rows are read from (kl, vl: l itself,
 * or for a reconstruction layer kv_layers - 1 and 0, FusedKV-Lite's remap), and a fused
 * reconstruction layer's weights (coef: a, a' [kv_dim / 2], b, b' [kv_dim]; else NULL).
 */
struct kv_src {
	int64_t kl, vl;
	const float *coef;
};

static struct kv_src kv_src_of(const struct lbw_llama *m, int64_t l)
{
	const struct lbw_llama_config *c = &m->cfg;
	if (l < c->kv_layers)
		return (struct kv_src){ l, l, NULL };
	const float *coef = c->kv_mode == LBW_KV_FUSED
				    ? m->w.kv_coef + (l - c->kv_layers) * 3 * (int64_t)c->kv_dim
				    : NULL;
	return (struct kv_src){ c->kv_layers - 1, 0, coef };
}

/* Channels c0..c0+len-1 of a fused reconstruction layer's K (v 0: a K_0 + a' K_{n-1}, one
 * weight per rotary pair) or V (v 1: b V_0 + b' V_{n-1}) at position t, into out. */
static void fused_row(const struct lbw_llama_state *s, int64_t kv_dim, const struct kv_src *src,
		      int v, int64_t t, int64_t c0, int64_t len, float *out)
{
	const float *r0 = kv_row(s, kv_dim, 0, v, t) + c0;
	const float *rn = kv_row(s, kv_dim, src->kl, v, t) + c0;
	/* each product a statement of its own: never contracted into an FMA, so these round as
	 * the fused attention kernel does (lbk_attention_paged_fused) */
	for (int64_t i = 0; i < len; i++) {
		float p = v ? src->coef[kv_dim + c0 + i] * r0[i] : src->coef[(c0 + i) / 2] * r0[i];
		float r = v ? src->coef[2 * kv_dim + c0 + i] * rn[i]
			    : src->coef[kv_dim / 2 + (c0 + i) / 2] * rn[i];
		out[i] = p + r;
	}
}

/* RoPE exactly as llama2.c computes it (float powf/cosf/sinf): the reference path's. */
static void rope_llama2c(float *q, float *k, int64_t pos, int64_t n_heads, int64_t n_kv_heads,
			 int64_t hs, float theta)
{
	int64_t dim = n_heads * hs, kv_dim = n_kv_heads * hs;
	for (int64_t i = 0; i < dim; i += 2) {
		int64_t head_dim = i % hs;
		float freq = 1.0f / powf(theta, (float)head_dim / (float)hs);
		float val = (float)pos * freq;
		float fcr = cosf(val), fci = sinf(val);
		int rotn = i < kv_dim ? 2 : 1;
		for (int r = 0; r < rotn; r++) {
			float *vec = r == 0 ? q : k;
			float v0 = vec[i], v1 = vec[i + 1];
			vec[i] = v0 * fcr - v1 * fci;
			vec[i + 1] = v0 * fci + v1 * fcr;
		}
	}
}

/* SiLU gate as llama2.c writes it: the reference path's. */
static void silu_mul_llama2c(float *h, const float *g, int64_t n)
{
	for (int64_t i = 0; i < n; i++) {
		float val = h[i];
		val *= 1.0f / (1.0f + expf(-val));
		val *= g[i];
		h[i] = val;
	}
}

/* The kernels a token-by-token layer runs on: the plain-C reference (the benchmark's
 * baseline, llama2.c's arithmetic) or the lbk_* dispatchers. */
struct llama_ops {
	void (*rmsnorm)(float *o, const float *x, const float *w, int64_t n, float eps);
	void (*matmul)(float *y, const float *x, const float *w, const float *bias, int64_t m,
		       int64_t n, int64_t k);
	void (*rope)(float *q, float *k, int64_t pos, int64_t n_heads, int64_t n_kv_heads,
		     int64_t hs, float theta);
	void (*softmax)(float *x, int64_t n);
	void (*silu_mul)(float *h, const float *g, int64_t n);
};

static const struct llama_ops ops_ref = { lbk_rmsnorm_ref, lbk_matmul_ref, rope_llama2c,
					  lbk_softmax_ref, silu_mul_llama2c };
static const struct llama_ops ops_lbk = { lbk_rmsnorm, lbk_matmul, lbk_rope, lbk_softmax,
					  lbk_silu_mul };

static const struct llama_ops *ops_of(const struct lbw_llama *m)
{
	return m->reference ? &ops_ref : &ops_lbk;
}

void lbw_llama_embed(const struct lbw_llama *m, struct lbw_llama_state *s, int32_t token)
{
	size_t dim = (size_t)m->cfg.dim;
	memcpy(s->x, m->w.token_embedding + (size_t)token * dim, dim * sizeof(float));
}

/* Layer l at position pos on the residual stream x ([dim], updated in place). The per-head
 * scores and the weighted sum of V stay loops: one query row against the cache, where
 * lbk_attention wants every query row of the sequence. */
static void layer_at(const struct lbw_llama *m, struct lbw_llama_state *s, float *x, int32_t l,
		     int32_t pos)
{
	const struct llama_ops *k_ = ops_of(m);
	const struct lbw_llama_config *c = &m->cfg;
	const struct lbw_llama_weights *w = &m->w;
	int64_t dim = c->dim, hid = c->hidden_dim, kv_dim = c->kv_dim, hs = c->head_size;
	int64_t kv_mul = c->n_heads / c->n_kv_heads;
	int64_t L = l;
	struct kv_src src = kv_src_of(m, L);

	/* attention: QKV of the normed stream, K and V straight into the cache (a reconstruction
	 * layer: Q alone) */
	k_->rmsnorm(s->xb, x, w->rms_att + L * dim, dim, 1e-5f);
	k_->matmul(s->q, s->xb, w->wq + L * dim * dim, NULL, 1, dim, dim);
	if (L < c->kv_layers) {
		float *k = kv_row_own(s, kv_dim, L, 0, pos), *v = kv_row_own(s, kv_dim, L, 1, pos);
		k_->matmul(k, s->xb, w->wk + L * kv_dim * dim, NULL, 1, kv_dim, dim);
		k_->matmul(v, s->xb, w->wv + L * kv_dim * dim, NULL, 1, kv_dim, dim);
		k_->rope(s->q, k, pos, c->n_heads, c->n_kv_heads, hs, 10000.0f);
	} else {
		k_->rope(s->q, NULL, pos, c->n_heads, 0, hs, 10000.0f);
	}

	/* grouped-query attention over positions 0..pos */
	float scale = sqrtf((float)hs);
	for (int64_t h = 0; h < c->n_heads; h++) {
		const float *q = s->q + h * hs;
		float *att = s->att + h * (int64_t)c->seq_len;
		int64_t koff = (h / kv_mul) * hs;
		for (int64_t t = 0; t <= pos; t++) {
			const float *kt = kv_row(s, kv_dim, src.kl, 0, t) + koff;
			if (src.coef) {
				fused_row(s, kv_dim, &src, 0, t, koff, hs, s->krow);
				kt = s->krow;
			}
			float score = 0.0f;
			for (int64_t i = 0; i < hs; i++)
				score += q[i] * kt[i];
			att[t] = score / scale;
		}
		k_->softmax(att, (int64_t)pos + 1);
		float *xb = s->xb + h * hs;
		memset(xb, 0, (size_t)hs * sizeof(float));
		for (int64_t t = 0; t <= pos; t++) {
			const float *vt = kv_row(s, kv_dim, src.vl, 1, t) + koff;
			if (src.coef) {
				fused_row(s, kv_dim, &src, 1, t, koff, hs, s->krow);
				vt = s->krow;
			}
			float a = att[t];
			for (int64_t i = 0; i < hs; i++)
				xb[i] += a * vt[i];
		}
	}
	k_->matmul(s->xb2, s->xb, w->wo + L * dim * dim, NULL, 1, dim, dim);
	for (int64_t i = 0; i < dim; i++)
		x[i] += s->xb2[i];

	/* FFN: w2(silu(w1 x) * w3 x) */
	k_->rmsnorm(s->xb, x, w->rms_ffn + L * dim, dim, 1e-5f);
	k_->matmul(s->hb, s->xb, w->w1 + L * hid * dim, NULL, 1, hid, dim);
	k_->matmul(s->hb2, s->xb, w->w3 + L * hid * dim, NULL, 1, hid, dim);
	k_->silu_mul(s->hb, s->hb2, hid);
	k_->matmul(s->xb, s->hb, w->w2 + L * dim * hid, NULL, 1, dim, hid);
	for (int64_t i = 0; i < dim; i++)
		x[i] += s->xb[i];
}

/* Room for n floats of the state's scratch. @return it, or NULL (no memory). */
static float *scratch(struct lbw_llama_state *s, size_t n)
{
	if (n > s->scratch_floats) {
		/* calloc, not realloc: GCC flags memory passed as const before its writes */
		float *p = calloc(n, sizeof(float));
		if (!p)
			return NULL;
		free(s->scratch);
		s->scratch = p;
		s->scratch_floats = n;
	}
	return s->scratch;
}

/* Attention of rows q [n][dim] at positions pos0.. over layer l's K and V through the table,
 * into ao [n][dim]. */
static void attention_rows(const struct lbw_llama *m, struct lbw_llama_state *s, int64_t l,
			   int64_t pos0, int64_t n, const float *q, float *ao)
{
	const struct lbw_llama_config *c = &m->cfg;
	int64_t B = LBW_LLAMA_BLOCK, kv_dim = c->kv_dim, blocks = (pos0 + n + B - 1) / B;
	const float **kb = s->blk, **vb = s->blk + s->n_blocks;
	struct kv_src src = kv_src_of(m, l);

	for (int64_t i = 0; i < blocks; i++) {
		kb[i] = s->table[i] + 2 * src.kl * B * kv_dim;
		vb[i] = s->table[i] + (2 * src.vl + 1) * B * kv_dim;
	}
	_Static_assert(LBW_LLAMA_BLOCK == 16, "bshift below");
	if (!src.coef) {
		lbk_attention_paged(ao, c->dim, q, c->dim, pos0, n, kb, vb, kv_dim, kv_dim, 4,
				    c->n_heads, c->n_kv_heads, c->head_size);
		return;
	}
	/* fused: K_0 and V_0 (kb, vb), K_{n-1} and V_{n-1} (blk2), rebuilt in the kernel */
	const float **k2 = s->blk2, **v2 = s->blk2 + s->n_blocks;
	const float *w = m->fused_w + (l - c->kv_layers) * 4 * kv_dim;
	for (int64_t i = 0; i < blocks; i++) {
		k2[i] = kb[i]; /* K_{n-1}; vb is V_0 already */
		v2[i] = s->table[i] + (2 * src.kl + 1) * B * kv_dim;
		kb[i] = s->table[i];
	}
	struct lbk_fused f = { k2, v2, w, w + kv_dim, w + 2 * kv_dim, w + 3 * kv_dim };
	lbk_attention_paged_fused(ao, c->dim, q, c->dim, pos0, n, kb, vb, kv_dim, kv_dim, 4,
				  c->n_heads, c->n_kv_heads, c->head_size, &f);
}

/*
 * The FFN half of layer L for n rows x [n][dim] on the kernels: out = x + W2 (SiLU(W1 t) * W3 t),
 * t = RMSNorm(x). Scratch t [n][dim], hb hb2 [n][hidden_dim]; out may be x. The whole layer and
 * the layer for chosen rows share it, so both sum alike.
 */
static void ffn_lbk(const struct lbw_llama *m, int64_t L, int64_t n, const float *x, float *t,
		    float *hb, float *hb2, float *out)
{
	int64_t dim = m->cfg.dim, hid = m->cfg.hidden_dim;
	struct lbk_packed *const *P = m->packed + L * LBW_LLAMA_NMAT;

	for (int64_t r = 0; r < n; r++)
		lbk_rmsnorm(t + r * dim, x + r * dim, m->w.rms_ffn + L * dim, dim, 1e-5f);
	lbk_gemm(hb, t, P[LBW_LLAMA_W1], NULL, n, 1);
	lbk_gemm(hb2, t, P[LBW_LLAMA_W3], NULL, n, 1);
	for (int64_t r = 0; r < n; r++)
		lbk_silu_mul(hb + r * hid, hb2 + r * hid, hid);
	lbk_gemm(t, hb, P[LBW_LLAMA_W2], NULL, n, 1);
	for (int64_t i = 0; i < n * dim; i++)
		out[i] = x[i] + t[i];
}

/*
 * Layer l of rows x [n][dim] at positions pos0.. on the kernels: the packed lbk_gemm for every
 * matrix (for one row too: a decode step sums as a prefill row does), row by row what is per
 * row (norms, RoPE, SiLU), K and V into the own blocks, lbk_attention_paged.
 * @return 0; -1 when the scratch could not be allocated (nothing was changed).
 */
static int rows_lbk(const struct lbw_llama *m, struct lbw_llama_state *s, int32_t l, int32_t pos0,
		    int32_t n, float *x)
{
	const struct lbw_llama_config *c = &m->cfg;
	int64_t dim = c->dim, hid = c->hidden_dim, kv_dim = c->kv_dim, hs = c->head_size;
	int64_t N = n, L = l;
	float *buf = scratch(s, (size_t)(N * (3 * dim + 2 * hid + 2 * kv_dim)));
	if (!buf)
		return -1;
	float *xb = buf, *q = xb + N * dim, *ao = q + N * dim, *hb = ao + N * dim, *hb2 = hb + N * hid;
	float *kn = hb2 + N * hid, *vn = kn + N * kv_dim;
	struct lbk_packed *const *P = m->packed + L * LBW_LLAMA_NMAT;

	for (int64_t t = 0; t < N; t++)
		lbk_rmsnorm(xb + t * dim, x + t * dim, m->w.rms_att + L * dim, dim, 1e-5f);
	lbk_gemm(q, xb, P[LBW_LLAMA_WQ], NULL, N, 1);
	if (L < c->kv_layers) {
		lbk_gemm(kn, xb, P[LBW_LLAMA_WK], NULL, N, 1);
		lbk_gemm(vn, xb, P[LBW_LLAMA_WV], NULL, N, 1);
	}
	for (int64_t t = 0; t < N; t++) {
		if (L >= c->kv_layers) { /* a reconstruction layer: Q alone */
			lbk_rope(q + t * dim, NULL, pos0 + t, c->n_heads, 0, hs, 10000.0f);
			continue;
		}
		lbk_rope(q + t * dim, kn + t * kv_dim, pos0 + t, c->n_heads, c->n_kv_heads, hs,
			 10000.0f);
		memcpy(kv_row_own(s, kv_dim, L, 0, pos0 + t), kn + t * kv_dim,
		       (size_t)kv_dim * sizeof(float));
		memcpy(kv_row_own(s, kv_dim, L, 1, pos0 + t), vn + t * kv_dim,
		       (size_t)kv_dim * sizeof(float));
	}
	attention_rows(m, s, L, pos0, N, q, ao);
	lbk_gemm(xb, ao, P[LBW_LLAMA_WO], NULL, N, 1);
	for (int64_t i = 0; i < N * dim; i++)
		x[i] += xb[i];

	ffn_lbk(m, L, N, x, xb, hb, hb2, x);
	return 0;
}

int lbw_llama_rows(const struct lbw_llama *m, struct lbw_llama_state *s, int32_t l, int32_t pos0,
		   int32_t n, float *x)
{
	size_t dim = (size_t)m->cfg.dim;

	if (!m->reference && m->packed)
		return rows_lbk(m, s, l, pos0, n, x) == 0 ? 0 : -ENOMEM;
	/* The reference, and the kernels without packed weights: position by position. */
	for (int32_t t = 0; t < n; t++)
		layer_at(m, s, x + (size_t)t * dim, l, pos0 + t);
	return 0;
}

void lbw_llama_layer(const struct lbw_llama *m, struct lbw_llama_state *s, int32_t l, int32_t pos)
{
	if (lbw_llama_rows(m, s, l, pos, 1, s->x) < 0)
		layer_at(m, s, s->x, l, pos); /* no scratch: the GEMV */
}

void lbw_llama_layer_seq(const struct lbw_llama *m, struct lbw_llama_state *s, int32_t l, int32_t n,
			 const float *in, float *out)
{
	size_t dim = (size_t)m->cfg.dim;
	if (out != in)
		memmove(out, in, (size_t)n * dim * sizeof(float));
	if (lbw_llama_rows(m, s, l, 0, n, out) < 0)
		for (int32_t pos = 0; pos < n; pos++) /* no scratch: position by position */
			layer_at(m, s, out + (size_t)pos * dim, l, pos);
}

/*
 * lbw_llama_layer_rows on the kernels, the layer of rows_lbk cut in two: K and V of positions
 * 0..nk-1 from all of in, then the rest for the R gathered rows. @return 0; -1 when the scratch
 * could not be allocated (nothing was changed).
 */
static int layer_rows_lbk(const struct lbw_llama *m, struct lbw_llama_state *s, int32_t l,
			  const float *in, const uint32_t *rows, int32_t n_rows, float *out)
{
	const struct lbw_llama_config *c = &m->cfg;
	int64_t dim = c->dim, hid = c->hidden_dim, kv_dim = c->kv_dim, hs = c->head_size;
	int64_t L = l, R = n_rows, nk = (int64_t)rows[n_rows - 1] + 1;
	/* pos [R] int64 (2 floats each), then xb [nk][dim], kn vn [nk][kv_dim], x g q ao [R][dim],
	 * hb hb2 [R][hid] */
	float *buf = scratch(s, (size_t)(2 * R + nk * (dim + 2 * kv_dim) + R * (4 * dim + 2 * hid)));
	if (!buf)
		return -1;
	int64_t *pos = (int64_t *)buf;
	float *xb = buf + 2 * R, *kn = xb + nk * dim, *vn = kn + nk * kv_dim, *x = vn + nk * kv_dim;
	float *g = x + R * dim, *q = g + R * dim, *ao = q + R * dim, *hb = ao + R * dim;
	float *hb2 = hb + R * hid;
	struct lbk_packed *const *P = m->packed + L * LBW_LLAMA_NMAT;

	for (int64_t t = 0; t < nk; t++)
		lbk_rmsnorm(xb + t * dim, in + t * dim, m->w.rms_att + L * dim, dim, 1e-5f);
	if (L >= c->kv_layers) { /* a reconstruction layer reads the storage layers' */
		struct kv_src src = kv_src_of(m, L);
		for (int64_t t = 0; t < nk; t++) {
			if (src.coef) {
				fused_row(s, kv_dim, &src, 0, t, 0, kv_dim, kn + t * kv_dim);
				fused_row(s, kv_dim, &src, 1, t, 0, kv_dim, vn + t * kv_dim);
				continue;
			}
			memcpy(kn + t * kv_dim, kv_row(s, kv_dim, src.kl, 0, t),
			       (size_t)kv_dim * sizeof(float));
			memcpy(vn + t * kv_dim, kv_row(s, kv_dim, src.vl, 1, t),
			       (size_t)kv_dim * sizeof(float));
		}
	} else {
		lbk_gemm(kn, xb, P[LBW_LLAMA_WK], NULL, nk, 1);
		lbk_gemm(vn, xb, P[LBW_LLAMA_WV], NULL, nk, 1);
	}
	for (int64_t t = 0; t < nk && L < c->kv_layers; t++) { /* K alone: n_heads 0 */
		lbk_rope(NULL, kn + t * kv_dim, t, 0, c->n_kv_heads, hs, 10000.0f);
		/* the state's, as layer_seq leaves them: a decoder may continue from here */
		memcpy(kv_row_own(s, kv_dim, L, 0, t), kn + t * kv_dim, (size_t)kv_dim * sizeof(float));
		memcpy(kv_row_own(s, kv_dim, L, 1, t), vn + t * kv_dim, (size_t)kv_dim * sizeof(float));
	}
	for (int64_t r = 0; r < R; r++) {
		pos[r] = rows[r];
		memcpy(x + r * dim, in + pos[r] * dim, (size_t)dim * sizeof(float));
		memcpy(g + r * dim, xb + pos[r] * dim, (size_t)dim * sizeof(float));
	}
	/* every read of in is done: out may be in from here on */
	lbk_gemm(q, g, P[LBW_LLAMA_WQ], NULL, R, 1);
	for (int64_t r = 0; r < R; r++) /* Q alone: n_kv_heads 0 */
		lbk_rope(q + r * dim, NULL, pos[r], c->n_heads, 0, hs, 10000.0f);
	lbk_attention_rows(ao, dim, q, dim, pos, R, kn, kv_dim, vn, kv_dim, nk, c->n_heads,
			   c->n_kv_heads, hs, 1);
	lbk_gemm(g, ao, P[LBW_LLAMA_WO], NULL, R, 1);
	for (int64_t i = 0; i < R * dim; i++)
		x[i] += g[i];

	ffn_lbk(m, L, R, x, g, hb, hb2, out);
	return 0;
}

int lbw_llama_layer_rows(const struct lbw_llama *m, struct lbw_llama_state *s, int32_t l,
			 int32_t n, const float *in, const uint32_t *rows, int32_t n_rows,
			 float *out)
{
	(void)n; /* causal: positions past the last row are never read */
	if (!m->reference && m->packed)
		return layer_rows_lbk(m, s, l, in, rows, n_rows, out) == 0 ? 0 : -ENOMEM;
	/* The reference, and the kernels without packed weights: the whole layer, then the rows. */
	size_t dim = (size_t)m->cfg.dim, nk = (size_t)rows[n_rows - 1] + 1;
	float *all = malloc(nk * dim * sizeof(float));
	if (!all)
		return -ENOMEM;
	lbw_llama_layer_seq(m, s, l, (int32_t)nk, in, all);
	for (int32_t r = 0; r < n_rows; r++)
		memcpy(out + (size_t)r * dim, all + (size_t)rows[r] * dim, dim * sizeof(float));
	free(all);
	return 0;
}

int lbw_llama_prefill(const struct lbw_llama *m, struct lbw_llama_state *s, const int32_t *tokens,
		      int32_t pos0, int32_t n, float *x)
{
	if (n < 1 || pos0 < 0 || pos0 > m->cfg.seq_len - n)
		return -EINVAL;
	for (int32_t i = 0; i < n; i++)
		if (tokens[i] < 0 || tokens[i] >= m->cfg.vocab_size)
			return -EINVAL;
	lbw_llama_embed_seq(m, tokens, n, x);
	for (int32_t l = 0; l < m->cfg.n_layers; l++) {
		int rc = lbw_llama_rows(m, s, l, pos0, n, x);
		if (rc < 0)
			return rc;
	}
	return 0;
}

void lbw_llama_embed_seq(const struct lbw_llama *m, const int32_t *tokens, int32_t n, float *h)
{
	size_t dim = (size_t)m->cfg.dim;
	for (int32_t pos = 0; pos < n; pos++)
		memcpy(h + (size_t)pos * dim, m->w.token_embedding + (size_t)tokens[pos] * dim,
		       dim * sizeof(float));
}

/* lbw_llama_nll, and lbw_llama_argmax into *arg (when not NULL), in one pass over the logits
 * for both: the same values, bit for bit. */
static double nll_argmax(const float *logits, int32_t vocab, int32_t target, int32_t *arg)
{
	int32_t best = 0;
	for (int32_t i = 1; i < vocab; i++)
		if (logits[i] > logits[best])
			best = i;
	double max = logits[best], sum = 0.0;
	for (int32_t i = 0; i < vocab; i++)
		sum += exp((double)logits[i] - max);
	if (arg)
		*arg = best;
	return -((double)logits[target] - max - log(sum));
}

double lbw_llama_score_seq(const struct lbw_llama *m, struct lbw_llama_state *s,
			   const int32_t *tokens, int32_t n, const float *h, int32_t *top1)
{
	const struct llama_ops *k = ops_of(m);
	size_t dim = (size_t)m->cfg.dim, vocab = (size_t)m->cfg.vocab_size;
	size_t rows = n > 1 ? (size_t)n - 1 : 0;
	double sum = 0.0;
	/* The head of every position as one matrix product: a GEMV a position read the whole
	 * classifier once per token (it was the larger part of a stories260K worker's time). */
	float *x = rows ? malloc(rows * dim * sizeof(float)) : NULL;
	float *lg = rows ? malloc(rows * vocab * sizeof(float)) : NULL;
	if (!x || !lg) {
		free(x);
		free(lg);
		for (size_t pos = 0; pos < rows; pos++) {
			const float *l = lbw_llama_head_row(m, s, h + pos * dim);
			sum += lbw_llama_nll(l, m->cfg.vocab_size, tokens[pos + 1]);
			if (top1)
				top1[pos] = lbw_llama_argmax(l, m->cfg.vocab_size);
		}
		return sum;
	}
	for (size_t pos = 0; pos < rows; pos++)
		k->rmsnorm(x + pos * dim, h + pos * dim, m->w.rms_final, m->cfg.dim, 1e-5f);
	k->matmul(lg, x, m->w.wcls, NULL, (int64_t)rows, m->cfg.vocab_size, m->cfg.dim);
	for (size_t pos = 0; pos < rows; pos++)
		sum += nll_argmax(lg + pos * vocab, m->cfg.vocab_size, tokens[pos + 1],
				  top1 ? top1 + pos : NULL);
	free(x);
	free(lg);
	return sum;
}

float *lbw_llama_head_row(const struct lbw_llama *m, struct lbw_llama_state *s, const float *row)
{
	if (row != s->x)
		memcpy(s->x, row, (size_t)m->cfg.dim * sizeof(float));
	return lbw_llama_head(m, s);
}

float *lbw_llama_head(const struct lbw_llama *m, struct lbw_llama_state *s)
{
	const struct llama_ops *k = ops_of(m);
	k->rmsnorm(s->x, s->x, m->w.rms_final, m->cfg.dim, 1e-5f);
	k->matmul(s->logits, s->x, m->w.wcls, NULL, 1, m->cfg.vocab_size, m->cfg.dim);
	return s->logits;
}

float *lbw_llama_forward(const struct lbw_llama *m, struct lbw_llama_state *s, int32_t token,
			 int32_t pos)
{
	if (token < 0 || token >= m->cfg.vocab_size || pos < 0 || pos >= m->cfg.seq_len) {
		errno = EINVAL;
		return NULL;
	}
	lbw_llama_embed(m, s, token);
	for (int32_t l = 0; l < m->cfg.n_layers; l++)
		lbw_llama_layer(m, s, l, pos);
	return lbw_llama_head(m, s);
}

double lbw_llama_nll(const float *logits, int32_t vocab, int32_t target)
{
	double max = logits[0];
	for (int32_t i = 1; i < vocab; i++)
		if (logits[i] > max)
			max = logits[i];
	double sum = 0.0;
	for (int32_t i = 0; i < vocab; i++)
		sum += exp((double)logits[i] - max);
	return -((double)logits[target] - max - log(sum));
}

int32_t lbw_llama_argmax(const float *logits, int32_t vocab)
{
	int32_t best = 0;
	for (int32_t i = 1; i < vocab; i++)
		if (logits[i] > logits[best])
			best = i;
	return best;
}

int lbw_llama_prompt(const struct lbw_llama *m, struct lbw_llama_state *s, const int32_t *tokens,
		     int32_t n, float *logits, double *nll)
{
	int32_t V = m->cfg.vocab_size;
	if (n < 1 || n > m->cfg.seq_len)
		return -EINVAL;
	for (int32_t i = 0; i < n; i++)
		if (tokens[i] < 0 || tokens[i] >= V)
			return -EINVAL;
	double sum = 0.0;
	for (int32_t pos = 0; pos < n; pos++) {
		const float *lg = lbw_llama_forward(m, s, tokens[pos], pos);
		if (logits)
			memcpy(logits + (size_t)pos * (size_t)V, lg, (size_t)V * sizeof(float));
		if (pos + 1 < n)
			sum += lbw_llama_nll(lg, V, tokens[pos + 1]);
	}
	if (nll)
		*nll = sum;
	return 0;
}
