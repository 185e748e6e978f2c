/*
 * safetensors reader: the header (u64 little-endian length, JSON {name: {dtype, shape,
 * data_offsets}}) checked in full against the file, and GPT-2 / BERT checkpoints loaded into
 * struct lbw_bert by their Hugging Face tensor names.
 */
#ifndef LAYERBANK_WORKER_SAFETENSORS_H
#define LAYERBANK_WORKER_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "model_bert.h"

/* Caps: a header beyond them is rejected as hostile (-EINVAL). */
#define LBW_ST_MAX_HEADER (100u << 20)
#define LBW_ST_MAX_TENSORS 100000
#define LBW_ST_MAX_DIMS 8
#define LBW_ST_MAX_NAME 256

struct lbw_st_tensor {
	char name[LBW_ST_MAX_NAME];
	int ndim;
	int64_t shape[LBW_ST_MAX_DIMS];
	const float *data; /* [shape...] F32, inside the mapping; 4-byte alignment not promised */
	uint64_t bytes;
};

/* An open file: read-only mapping and its tensor table. */
struct lbw_st {
	struct lbw_st_tensor *t; /* [n] */
	int n;
	void *map;
	size_t map_size;
};

/*
 * Map and validate path: header length within the file and the cap, JSON an object of tensors
 * (plus an optional "__metadata__" object), each dtype F32 with a shape of non-negative
 * integers whose element count times 4 is its byte length, data_offsets inside the data section
 * and not overlapping another tensor's.
 * err gets one line, starting with path.
 * @return 0 with *out set; -errno from open/fstat/mmap; -EINVAL (malformed, reason in err);
 * -ENOTSUP (a dtype other than F32, such as F16 or BF16); -ENOMEM.
 */
int lbw_st_open(const char *path, struct lbw_st **out, char *err, size_t errlen);
/*
 * Whether path begins as a safetensors file: a little-endian u64 header length of 2 up to
 * LBW_ST_MAX_HEADER, then '{'. No llama2.c checkpoint does (its second int32, hidden_dim, would
 * have to be 0), nor a llama2.c tokenizer (byte 8 is the length of its first token). Only the
 * first 9 bytes are read: lbw_st_open checks the rest.
 * @return 1 when it does; 0 when not (or shorter than 9 bytes); -errno from open or read.
 */
int lbw_st_sniff(const char *path);
/* The tensor called name, or with a "bert.", "transformer." or "model." prefix; NULL if none. */
const struct lbw_st_tensor *lbw_st_find(const struct lbw_st *st, const char *name);
void lbw_st_close(struct lbw_st *st);

/*
 * Load a GPT-2 (wte.weight, h.{i}.*, ln_f) or BERT (embeddings.*, encoder.layer.{i}.*)
 * checkpoint; the style comes from the names, the shape from the tensors, heads from the caller
 * (0: hidden / 64, the head size of every published GPT-2 and BERT size). GPT-2's Conv1D
 * weights ([in][out]) are transposed to [out][in]. err gets one line, starting with path.
 * @return 0 with *out a packed model; -EINVAL (missing tensor, wrong shape, reason in err) and
 * the errors of lbw_st_open.
 */
int lbw_bert_load_safetensors(const char *path, int heads, struct lbw_bert **out, char *err,
			      size_t errlen);

#endif
