/*
 * safetensors: mapping and validating the file (every field of the header checked before any
 * tensor is read), and loading GPT-2 / BERT tensors into struct lbw_bert.
 */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "errf.h"

void lbw_st_close(struct lbw_st *st)
{
	if (!st)
		return;
	if (st->map)
		munmap(st->map, st->map_size);
	free(st->t);
	free(st);
}

static int cmp_begin(const void *a, const void *b)
{
	const struct lbw_st_tensor *x = a, *y = b;
	return x->data < y->data ? -1 : x->data > y->data;
}

/* One entry of the header into t; data is the start of the data section of data_len bytes. */
static int parse_tensor(const char *name, json_object *v, const unsigned char *data,
			uint64_t data_len, struct lbw_st_tensor *t, char *err, size_t errlen)
{
	json_object *dt, *shape, *offs;
	if (strlen(name) >= LBW_ST_MAX_NAME)
		return lbu_fail(err, errlen, -EINVAL, "tensor name longer than %d bytes", LBW_ST_MAX_NAME - 1);
	snprintf(t->name, sizeof(t->name), "%s", name);
	if (!json_object_is_type(v, json_type_object) ||
	    !json_object_object_get_ex(v, "dtype", &dt) || !json_object_is_type(dt, json_type_string) ||
	    !json_object_object_get_ex(v, "shape", &shape) || !json_object_is_type(shape, json_type_array) ||
	    !json_object_object_get_ex(v, "data_offsets", &offs) ||
	    !json_object_is_type(offs, json_type_array))
		return lbu_fail(err, errlen, -EINVAL, "%s: needs dtype, shape and data_offsets", name);
	const char *dtype = json_object_get_string(dt);
	if (strcmp(dtype, "F32") != 0)
		return lbu_fail(err, errlen, -ENOTSUP, "%s: dtype %s not supported (only F32)", name, dtype);
	size_t nd = json_object_array_length(shape);
	if (nd > LBW_ST_MAX_DIMS)
		return lbu_fail(err, errlen, -EINVAL, "%s: %zu dimensions (at most %d)", name, nd, LBW_ST_MAX_DIMS);
	t->ndim = (int)nd;
	uint64_t count = 1;
	for (size_t i = 0; i < nd; i++) {
		json_object *d = json_object_array_get_idx(shape, i);
		if (!json_object_is_type(d, json_type_int) || json_object_get_int64(d) < 0)
			return lbu_fail(err, errlen, -EINVAL, "%s: shape[%zu] not a non-negative integer", name, i);
		t->shape[i] = json_object_get_int64(d);
		uint64_t dim = (uint64_t)t->shape[i];
		if (dim && count > UINT64_MAX / 4 / dim)
			return lbu_fail(err, errlen, -EINVAL, "%s: shape overflows", name);
		count *= dim;
	}
	if (json_object_array_length(offs) != 2)
		return lbu_fail(err, errlen, -EINVAL, "%s: data_offsets needs two integers", name);
	json_object *b = json_object_array_get_idx(offs, 0), *e = json_object_array_get_idx(offs, 1);
	if (!json_object_is_type(b, json_type_int) || !json_object_is_type(e, json_type_int) ||
	    json_object_get_int64(b) < 0 || json_object_get_int64(e) < 0)
		return lbu_fail(err, errlen, -EINVAL, "%s: data_offsets not non-negative integers", name);
	uint64_t begin = (uint64_t)json_object_get_int64(b), end = (uint64_t)json_object_get_int64(e);
	if (begin > end)
		return lbu_fail(err, errlen, -EINVAL, "%s: data_offsets [%llu, %llu) reversed",
				name, (unsigned long long)begin, (unsigned long long)end);
	if (end > data_len)
		return lbu_fail(err, errlen, -EINVAL,
				"%s: ends at byte %llu of %llu bytes of data: file truncated?",
				name, (unsigned long long)end, (unsigned long long)data_len);
	if (end - begin != count * 4)
		return lbu_fail(err, errlen, -EINVAL, "%s: shape needs %llu bytes, data_offsets give %llu",
			    name, (unsigned long long)(count * 4), (unsigned long long)(end - begin));
	t->data = (const float *)(const void *)(data + begin);
	t->bytes = end - begin;
	return 0;
}

static int parse_header(struct lbw_st *st, const char *json, size_t len, const unsigned char *data,
			uint64_t data_len, char *err, size_t errlen)
{
	json_tokener *tok = json_tokener_new();
	if (!tok)
		return lbu_fail(err, errlen, -ENOMEM, "out of memory parsing the header");
	json_object *root = json_tokener_parse_ex(tok, json, (int)len);
	enum json_tokener_error jerr = json_tokener_get_error(tok);
	size_t used = json_tokener_get_parse_end(tok);
	json_tokener_free(tok);
	int rc = 0;
	if (!root || jerr != json_tokener_success) {
		rc = lbu_fail(err, errlen, -EINVAL, "header is not valid JSON: %s",
			  json_tokener_error_desc(jerr));
		goto out;
	}
	for (size_t i = used; i < len; i++) /* the format pads the header with spaces */
		if (json[i] != ' ') {
			rc = lbu_fail(err, errlen, -EINVAL, "bytes after the header's JSON object");
			goto out;
		}
	if (!json_object_is_type(root, json_type_object)) {
		rc = lbu_fail(err, errlen, -EINVAL, "header is not a JSON object");
		goto out;
	}
	int n = json_object_object_length(root);
	if (n > LBW_ST_MAX_TENSORS) {
		rc = lbu_fail(err, errlen, -EINVAL, "%d tensors (at most %d)", n, LBW_ST_MAX_TENSORS);
		goto out;
	}
	st->t = calloc((size_t)n + 1, sizeof(*st->t));
	if (!st->t) {
		rc = lbu_fail(err, errlen, -ENOMEM, "out of memory for %d tensors", n);
		goto out;
	}
	json_object_object_foreach(root, key, val)
	{
		if (strcmp(key, "__metadata__") == 0) {
			if (!json_object_is_type(val, json_type_object)) {
				rc = lbu_fail(err, errlen, -EINVAL, "__metadata__ is not an object");
				goto out;
			}
			continue;
		}
		rc = parse_tensor(key, val, data, data_len, &st->t[st->n], err, errlen);
		if (rc)
			goto out;
		st->n++;
	}
	/* No two tensors share a byte (empty tensors take none). */
	struct lbw_st_tensor *s = malloc((size_t)st->n * sizeof(*s) + 1);
	if (!s) {
		rc = lbu_fail(err, errlen, -ENOMEM, "out of memory for %d tensors", st->n);
		goto out;
	}
	memcpy(s, st->t, (size_t)st->n * sizeof(*s));
	qsort(s, (size_t)st->n, sizeof(*s), cmp_begin);
	const unsigned char *prev_end = data;
	const char *prev = NULL;
	for (int i = 0; i < st->n && !rc; i++) {
		const unsigned char *b = (const unsigned char *)s[i].data;
		if (s[i].bytes == 0)
			continue;
		if (b < prev_end)
			rc = lbu_fail(err, errlen, -EINVAL, "tensors %s and %s overlap", prev, s[i].name);
		prev_end = b + s[i].bytes;
		prev = s[i].name;
	}
	free(s);
out:
	json_object_put(root);
	return rc;
}

static uint64_t le64(const unsigned char *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

/* Put "path: " before the message in err. */
static void name_file(char *err, size_t errlen, const char *path)
{
	char msg[512];
	if (!err || !errlen)
		return;
	snprintf(msg, sizeof(msg), "%s", err);
	lbu_errf(err, errlen, "%s: %s", path, msg);
}

/* The mapped file's header: its length field, then the JSON. */
static int read_header(struct lbw_st *st, char *err, size_t errlen)
{
	const unsigned char *p = st->map;
	uint64_t size = st->map_size, hlen = le64(p);
	if (hlen > LBW_ST_MAX_HEADER)
		return lbu_fail(err, errlen, -EINVAL, "header length %llu above the cap of %u",
				(unsigned long long)hlen, LBW_ST_MAX_HEADER);
	if (hlen > size - 8)
		return lbu_fail(err, errlen, -EINVAL,
				"header length %llu, but %llu bytes follow it: file truncated?",
				(unsigned long long)hlen, (unsigned long long)(size - 8));
	return parse_header(st, (const char *)p + 8, (size_t)hlen, p + 8 + hlen, size - 8 - hlen,
			    err, errlen);
}

int lbw_st_open(const char *path, struct lbw_st **out, char *err, size_t errlen)
{
	*out = NULL;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return lbu_fail(err, errlen, -errno, "%s: %s", path, strerror(errno));
	struct stat sb;
	if (fstat(fd, &sb) != 0) {
		int e = errno;
		close(fd);
		return lbu_fail(err, errlen, -e, "%s: %s", path, strerror(e));
	}
	uint64_t size = (uint64_t)sb.st_size;
	if (size < 8) {
		close(fd);
		return lbu_fail(err, errlen, -EINVAL, "%s: %llu bytes, shorter than the 8-byte length", path,
			    (unsigned long long)size);
	}
	struct lbw_st *st = calloc(1, sizeof(*st));
	if (!st) {
		close(fd);
		return lbu_fail(err, errlen, -ENOMEM, "%s: out of memory", path);
	}
	st->map_size = (size_t)size;
	st->map = mmap(NULL, st->map_size, PROT_READ, MAP_PRIVATE, fd, 0);
	int e = errno;
	close(fd);
	if (st->map == MAP_FAILED) {
		st->map = NULL;
		lbw_st_close(st);
		return lbu_fail(err, errlen, -e, "%s: mmap: %s", path, strerror(e));
	}
	int rc = read_header(st, err, errlen);
	if (rc) {
		name_file(err, errlen, path);
		lbw_st_close(st);
		return rc;
	}
	*out = st;
	return 0;
}

int lbw_st_sniff(const char *path)
{
	unsigned char b[9];
	/* O_NONBLOCK: a FIFO given by mistake must not hang the open */
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return -errno;
	ssize_t r = pread(fd, b, sizeof(b), 0);
	int e = errno;
	close(fd);
	if (r < 0)
		return -e;
	if (r < (ssize_t)sizeof(b))
		return 0;
	uint64_t hlen = le64(b);
	return hlen >= 2 && hlen <= LBW_ST_MAX_HEADER && b[8] == '{';
}

const struct lbw_st_tensor *lbw_st_find(const struct lbw_st *st, const char *name)
{
	static const char *const prefixes[] = { "", "bert.", "transformer.", "model." };
	char full[LBW_ST_MAX_NAME + 16];
	for (size_t p = 0; p < sizeof(prefixes) / sizeof(prefixes[0]); p++) {
		snprintf(full, sizeof(full), "%s%s", prefixes[p], name);
		for (int i = 0; i < st->n; i++)
			if (strcmp(st->t[i].name, full) == 0)
				return &st->t[i];
	}
	return NULL;
}

/* ---- loading a model ---- */

struct loader {
	const struct lbw_st *st;
	char *err;
	size_t errlen;
};

/* The tensor name (printf format) with exactly the given shape (d1 0: a vector). */
__attribute__((format(printf, 4, 5))) static const struct lbw_st_tensor *need(struct loader *ld, int64_t d0, int64_t d1,
					const char *fmt, ...)
{
	char name[LBW_ST_MAX_NAME];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(name, sizeof(name), fmt, ap);
	va_end(ap);
	const struct lbw_st_tensor *t = lbw_st_find(ld->st, name);
	if (!t) {
		lbu_fail(ld->err, ld->errlen, -EINVAL, "missing tensor %s", name);
		return NULL;
	}
	int ok = d1 ? t->ndim == 2 && t->shape[0] == d0 && t->shape[1] == d1
		    : t->ndim == 1 && t->shape[0] == d0;
	if (!ok) {
		if (d1)
			lbu_fail(ld->err, ld->errlen, -EINVAL, "%s: shape is not [%lld, %lld]", t->name,
			     (long long)d0, (long long)d1);
		else
			lbu_fail(ld->err, ld->errlen, -EINVAL, "%s: shape is not [%lld]", t->name,
			     (long long)d0);
		return NULL;
	}
	return t;
}

/* dst[rows][cols] = src; or with transpose, src is [cols][rows]. */
static void copy(float *dst, const struct lbw_st_tensor *t, int transpose)
{
	if (!transpose) {
		memcpy(dst, t->data, t->bytes);
		return;
	}
	int64_t in = t->shape[0], outd = t->shape[1]; /* src [in][out] -> dst [out][in] */
	const unsigned char *src = (const unsigned char *)t->data;
	for (int64_t i = 0; i < in; i++)
		for (int64_t o = 0; o < outd; o++)
			memcpy(&dst[o * in + i], src + ((size_t)(i * outd + o)) * 4, 4);
}

#define NEED(var, d0, d1, ...)                                 \
	do {                                                   \
		if (!((var) = need(&ld, (d0), (d1), __VA_ARGS__))) \
			goto bad;                              \
	} while (0)

/* Layers present: the first n for which pre{n}suf exists. */
static int count_layers(const struct lbw_st *st, const char *pre, const char *suf)
{
	char name[LBW_ST_MAX_NAME];
	int n = 0;
	for (;; n++) {
		snprintf(name, sizeof(name), "%s%d%s", pre, n, suf);
		if (!lbw_st_find(st, name) || n > LBW_BERT_MAX_LAYERS)
			return n;
	}
}

/*
 * The model's shape from its tensors: vocab and width from the token embeddings, positions
 * from the position embeddings, FFN width from the first FFN weight's dimension ffn_dim, the
 * layer count from the names, heads as given (0: width / 64). Then allocate.
 * @return 0 with *out set, or -EINVAL/-ENOMEM with the loader's error set.
 */
static int alloc_shaped(struct loader *ld, struct lbw_bert_config *c, const struct lbw_st_tensor *wte,
			const struct lbw_st_tensor *wpe, const struct lbw_st_tensor *fc, int ffn_dim,
			const char *layer_pre, const char *layer_suf, int heads, const char *what,
			struct lbw_bert **out)
{
	if (!wte || !wpe || !fc || wte->ndim != 2 || wpe->ndim != 2 || fc->ndim != 2)
		return lbu_fail(ld->err, ld->errlen, -EINVAL,
			    "%s: token or position embeddings or the first FFN weight missing or not 2-D",
			    what);
	if (wte->shape[0] > LBW_BERT_MAX_VOCAB || wte->shape[1] > LBW_BERT_MAX_HIDDEN ||
	    wpe->shape[0] > LBW_BERT_MAX_SEQ || fc->shape[ffn_dim] > LBW_BERT_MAX_FFN)
		return lbu_fail(ld->err, ld->errlen, -EINVAL, "%s: shape out of range", what);
	c->vocab = (int32_t)wte->shape[0];
	c->hidden = (int32_t)wte->shape[1];
	c->max_seq = (int32_t)wpe->shape[0];
	c->ffn = (int32_t)fc->shape[ffn_dim];
	c->n_layers = count_layers(ld->st, layer_pre, layer_suf);
	c->heads = heads ? heads : (c->hidden >= 64 ? c->hidden / 64 : 1);
	errno = EINVAL; /* unless lbw_bert_alloc says otherwise */
	*out = lbw_bert_alloc(c);
	if (!*out)
		return lbu_fail(ld->err, ld->errlen, errno == ENOMEM ? -ENOMEM : -EINVAL,
			    "%s: shape out of range", what);
	return 0;
}

static int load_gpt2(struct loader *pl, int heads, struct lbw_bert **out)
{
	struct loader ld = *pl;
	const struct lbw_st_tensor *t, *wte = lbw_st_find(ld.st, "wte.weight"),
				       *wpe = lbw_st_find(ld.st, "wpe.weight"),
				       *fc = lbw_st_find(ld.st, "h.0.mlp.c_fc.weight");
	struct lbw_bert *m = NULL;
	struct lbw_bert_config c = lbw_bert_config_gpt2();
	/* Conv1D weights are [in][out]: the FFN width is c_fc's second dimension. */
	int rc = alloc_shaped(&ld, &c, wte, wpe, fc, 1, "h.", ".ln_1.weight", heads, "GPT-2", &m);
	if (rc < 0)
		return rc;
	const int64_t h = c.hidden, f = c.ffn;
	NEED(t, c.vocab, h, "wte.weight");
	copy(m->wte, t, 0);
	NEED(t, c.max_seq, h, "wpe.weight");
	copy(m->wpe, t, 0);
	NEED(t, h, 0, "ln_f.weight");
	copy(m->lnf_g, t, 0);
	NEED(t, h, 0, "ln_f.bias");
	copy(m->lnf_b, t, 0);
	for (int l = 0; l < c.n_layers; l++) {
		struct lbw_bert_layer_w *w = &m->layers[l];
		NEED(t, h, 0, "h.%d.ln_1.weight", l);
		copy(w->ln1_g, t, 0);
		NEED(t, h, 0, "h.%d.ln_1.bias", l);
		copy(w->ln1_b, t, 0);
		NEED(t, h, 3 * h, "h.%d.attn.c_attn.weight", l);
		copy(w->wqkv, t, 1);
		NEED(t, 3 * h, 0, "h.%d.attn.c_attn.bias", l);
		copy(w->bqkv, t, 0);
		NEED(t, h, h, "h.%d.attn.c_proj.weight", l);
		copy(w->wo, t, 1);
		NEED(t, h, 0, "h.%d.attn.c_proj.bias", l);
		copy(w->bo, t, 0);
		NEED(t, h, 0, "h.%d.ln_2.weight", l);
		copy(w->ln2_g, t, 0);
		NEED(t, h, 0, "h.%d.ln_2.bias", l);
		copy(w->ln2_b, t, 0);
		NEED(t, h, f, "h.%d.mlp.c_fc.weight", l);
		copy(w->w1, t, 1);
		NEED(t, f, 0, "h.%d.mlp.c_fc.bias", l);
		copy(w->b1, t, 0);
		NEED(t, f, h, "h.%d.mlp.c_proj.weight", l);
		copy(w->w2, t, 1);
		NEED(t, h, 0, "h.%d.mlp.c_proj.bias", l);
		copy(w->b2, t, 0);
	}
	*out = m;
	return 0;
bad:
	lbw_bert_free(m);
	return -EINVAL;
}

static int load_bert(struct loader *pl, int heads, struct lbw_bert **out)
{
	struct loader ld = *pl;
	const struct lbw_st_tensor *t,
		*wte = lbw_st_find(ld.st, "embeddings.word_embeddings.weight"),
		*wpe = lbw_st_find(ld.st, "embeddings.position_embeddings.weight"),
		*fc = lbw_st_find(ld.st, "encoder.layer.0.intermediate.dense.weight");
	struct lbw_bert *m = NULL;
	struct lbw_bert_config c = lbw_bert_config_base();
	int rc = alloc_shaped(&ld, &c, wte, wpe, fc, 0, "encoder.layer.",
			      ".attention.self.query.weight", heads, "BERT", &m);
	if (rc < 0)
		return rc;
	const int64_t h = c.hidden, f = c.ffn;
	NEED(t, c.vocab, h, "embeddings.word_embeddings.weight");
	copy(m->wte, t, 0);
	NEED(t, c.max_seq, h, "embeddings.position_embeddings.weight");
	copy(m->wpe, t, 0);
	/* token type 0 only; checkpoints without the table (none known) add nothing */
	t = lbw_st_find(ld.st, "embeddings.token_type_embeddings.weight");
	if (t) {
		if (t->ndim != 2 || t->shape[0] < 1 || t->shape[1] != h) {
			lbu_fail(ld.err, ld.errlen, -EINVAL, "%s: shape is not [types, %lld]", t->name,
			     (long long)h);
			goto bad;
		}
		memcpy(m->wtt, t->data, (size_t)h * 4);
	}
	NEED(t, h, 0, "embeddings.LayerNorm.weight");
	copy(m->emb_ln_g, t, 0);
	NEED(t, h, 0, "embeddings.LayerNorm.bias");
	copy(m->emb_ln_b, t, 0);
	static const char *const qkv[3] = { "query", "key", "value" };
	for (int l = 0; l < c.n_layers; l++) {
		struct lbw_bert_layer_w *w = &m->layers[l];
		for (int i = 0; i < 3; i++) {
			NEED(t, h, h, "encoder.layer.%d.attention.self.%s.weight", l, qkv[i]);
			copy(w->wqkv + i * h * h, t, 0);
			NEED(t, h, 0, "encoder.layer.%d.attention.self.%s.bias", l, qkv[i]);
			copy(w->bqkv + i * h, t, 0);
		}
		NEED(t, h, h, "encoder.layer.%d.attention.output.dense.weight", l);
		copy(w->wo, t, 0);
		NEED(t, h, 0, "encoder.layer.%d.attention.output.dense.bias", l);
		copy(w->bo, t, 0);
		NEED(t, h, 0, "encoder.layer.%d.attention.output.LayerNorm.weight", l);
		copy(w->ln1_g, t, 0);
		NEED(t, h, 0, "encoder.layer.%d.attention.output.LayerNorm.bias", l);
		copy(w->ln1_b, t, 0);
		NEED(t, f, h, "encoder.layer.%d.intermediate.dense.weight", l);
		copy(w->w1, t, 0);
		NEED(t, f, 0, "encoder.layer.%d.intermediate.dense.bias", l);
		copy(w->b1, t, 0);
		NEED(t, h, f, "encoder.layer.%d.output.dense.weight", l);
		copy(w->w2, t, 0);
		NEED(t, h, 0, "encoder.layer.%d.output.dense.bias", l);
		copy(w->b2, t, 0);
		NEED(t, h, 0, "encoder.layer.%d.output.LayerNorm.weight", l);
		copy(w->ln2_g, t, 0);
		NEED(t, h, 0, "encoder.layer.%d.output.LayerNorm.bias", l);
		copy(w->ln2_b, t, 0);
	}
	*out = m;
	return 0;
bad:
	lbw_bert_free(m);
	return -EINVAL;
}

int lbw_bert_load_safetensors(const char *path, int heads, struct lbw_bert **out, char *err,
			      size_t errlen)
{
	*out = NULL;
	if (heads < 0)
		return lbu_fail(err, errlen, -EINVAL, "heads %d is negative", heads);
	struct lbw_st *st;
	int rc = lbw_st_open(path, &st, err, errlen);
	if (rc)
		return rc;
	struct loader ld = { st, err, errlen };
	if (lbw_st_find(st, "wte.weight"))
		rc = load_gpt2(&ld, heads, out);
	else if (lbw_st_find(st, "embeddings.word_embeddings.weight"))
		rc = load_bert(&ld, heads, out);
	else
		rc = lbu_fail(err, errlen, -EINVAL, "neither GPT-2 (wte.weight) nor BERT (embeddings.*) tensors");
	if (rc)
		name_file(err, errlen, path);
	lbw_st_close(st);
	if (rc == 0 && (rc = lbw_bert_pack(*out)) != 0) {
		lbw_bert_free(*out);
		*out = NULL;
		lbu_fail(err, errlen, rc, "%s: out of memory packing the weights", path);
	}
	return rc;
}
