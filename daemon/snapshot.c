/* layerbankd snapshot: the file's records, the io_uring writer, and the loader that checks a
 * whole image before it restores anything from it. */
#include "snapshot.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <liburing.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "errf.h"
#include "layerbank/ring.h"

/* Byte offsets in the header, a model record and an entry record (PROTOCOL.md). */
enum {
	SH_MAGIC = 0, SH_VERSION = 8, SH_HDR_SIZE = 12, SH_SHM_ABI = 16, SH_N_MODELS = 20,
	SH_N_ENTRIES = 24, SH_DATA_BYTES = 32, SH_FILE_BYTES = 40, SH_WRITTEN_S = 48,
	SH_BOOT_ID = 56, SH_MODEL_SIZE = 72, SH_ENTRY_SIZE = 76, SH_THR_BYTES = 80,
	SH_RESERVED = 88, SH_RESERVED_V4 = 80, /* version 5 took 80..87 of the reserved bytes */
};
/* A threshold block's layer record (version 5): a controller (adapt.h). */
enum { ST_RADIUS = 0, ST_REPORTS = 8, ST_OVER = 16, ST_DRIFT_SUM = 24 };
enum {
	SM_NAME = 0, SM_WEIGHTS = 64, SM_N_LAYERS = 72, SM_HIDDEN = 76, SM_DTYPE = 80,
	SM_MAX_SEQ = 84, SM_FP_CHUNKS = 88, SM_FP_BITS = 92, SM_FP_SEED = 96, SM_N_ENTRIES = 104,
	SM_KV_DIM = 112, SM_BLOCK_TOKENS = 116,
	SM_KV_LAYERS = 118, /* version 6; before it, the high half of a 4-byte block_tokens */
};
enum {
	SE_MODEL = 0, SE_LAYER = 4, SE_DTYPE = 6, SE_SEQ_LEN = 8, SE_NDIM = 12, SE_FLAGS = 13,
	SE_APPROX = 14, SE_SHAPE = 16, SE_BYTES = 32, SE_FP = 40, SE_EXACT = 72, SE_DATA_SUM = 88,
	SE_IDLE = 96, SE_AGE = 104, SE_SCORE = 112,
	/* A block record (layer LB_ENTRY_LAYER_BLOCK) has these where a layer entry's fp is. */
	SE_PARENT = 40, SE_INDEX = 56, SE_BLOCK_ZERO = 60,
};
/* An entry record's flags (version 4; before it, byte 13 was the high byte of a 16-bit ndim,
 * so always 0). */
#define SE_F_TOKENS 0x01u /* a layer entry's seq_len token ids follow its data */
#define SE_F_MASK SE_F_TOKENS
/* Every record ends with the XXH3-64 of the bytes before it. */
#define REC_SUM 120u
#define NAME_FIELD 64u

_Static_assert(LBD_SNAP_HDR_SIZE == 128 && LBD_SNAP_MODEL_SIZE == 128 && LBD_SNAP_ENTRY_SIZE == 128,
	       "every record is 128 bytes, its checksum in the last 8");
_Static_assert(LBD_SNAP_HDR_SIZE % LBD_SNAP_ALIGN == 0 && LBD_SNAP_MODEL_SIZE % LBD_SNAP_ALIGN == 0,
	       "entry records start aligned");
_Static_assert(LBP_MAX_NAME < NAME_FIELD, "a name and its NUL fit the name field");
_Static_assert(LBP_MAX_LAYERS <= UINT16_MAX + 1u, "a layer fits the 16-bit field");
_Static_assert(LBP_MAX_LAYERS <= LB_ENTRY_LAYER_BLOCK, "no layer entry has a block's layer");
_Static_assert(SE_BLOCK_ZERO + 12 == SE_EXACT && SE_FP + 8 * LB_FP_WORDS == SE_EXACT,
	       "a block's parent, index and zero bytes fill the fingerprint's 32 bytes");
_Static_assert(LB_MAX_NDIM <= UINT8_MAX, "ndim fits its byte");

/* ---- little-endian fields ---- */

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint16_t get16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t get32(const uint8_t *p)
{
	uint32_t v = 0;
	for (int i = 3; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static uint64_t get64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static uint64_t dbl_bits(double d)
{
	uint64_t v;
	memcpy(&v, &d, sizeof(v));
	return v;
}

static double bits_dbl(uint64_t v)
{
	double d;
	memcpy(&d, &v, sizeof(d));
	return d;
}

static void seal(uint8_t *rec)
{
	put64(rec + REC_SUM, XXH3_64bits(rec, REC_SUM));
}

static bool sealed(const uint8_t *rec)
{
	return get64(rec + REC_SUM) == XXH3_64bits(rec, REC_SUM);
}

static bool zero(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return false;
	return true;
}

static uint64_t pad(uint64_t n)
{
	return (n + LBD_SNAP_ALIGN - 1) & ~(uint64_t)(LBD_SNAP_ALIGN - 1);
}

static uint64_t ms_since(uint64_t t0)
{
	return (lb_now_ns() - t0) / 1000000u;
}

/* ---- records ---- */

static void encode_header(uint8_t *h, uint32_t n_models, uint64_t thr_bytes, uint64_t n_entries,
			  uint64_t data_bytes, uint64_t file_bytes, const uint8_t boot_id[16])
{
	memset(h, 0, LBD_SNAP_HDR_SIZE);
	memcpy(h + SH_MAGIC, LBD_SNAP_MAGIC, 8);
	put32(h + SH_VERSION, LBD_SNAP_VERSION);
	put32(h + SH_HDR_SIZE, LBD_SNAP_HDR_SIZE);
	put32(h + SH_SHM_ABI, LB_SHM_ABI_VERSION);
	put32(h + SH_N_MODELS, n_models);
	put64(h + SH_N_ENTRIES, n_entries);
	put64(h + SH_DATA_BYTES, data_bytes);
	put64(h + SH_FILE_BYTES, file_bytes);
	put64(h + SH_WRITTEN_S, (uint64_t)time(NULL));
	if (boot_id)
		memcpy(h + SH_BOOT_ID, boot_id, 16);
	put32(h + SH_MODEL_SIZE, LBD_SNAP_MODEL_SIZE);
	put32(h + SH_ENTRY_SIZE, LBD_SNAP_ENTRY_SIZE);
	put64(h + SH_THR_BYTES, thr_bytes);
	seal(h);
}

/* A model's threshold block: its layers' controllers, their checksum, zeros to 64 bytes. */
static uint64_t thr_block_bytes(uint32_t n_layers)
{
	return pad((uint64_t)n_layers * LBD_SNAP_THR_SIZE + 8);
}

/* The block of n controllers a into b (thr_block_bytes(n) bytes). */
static void encode_thr(uint8_t *b, const struct lbd_adapt *a, uint32_t n)
{
	uint64_t len = (uint64_t)n * LBD_SNAP_THR_SIZE;
	memset(b, 0, thr_block_bytes(n));
	for (uint32_t l = 0; l < n; l++) {
		uint8_t *r = b + (uint64_t)l * LBD_SNAP_THR_SIZE;
		put64(r + ST_RADIUS, dbl_bits(a[l].radius));
		put64(r + ST_REPORTS, a[l].reports);
		put64(r + ST_OVER, a[l].over);
		put64(r + ST_DRIFT_SUM, dbl_bits(a[l].drift_sum));
	}
	put64(b + len, XXH3_64bits(b, len));
}

static void encode_model(uint8_t *r, const struct lbp_register_model *d, uint64_t n_entries)
{
	memset(r, 0, LBD_SNAP_MODEL_SIZE);
	memcpy(r + SM_NAME, d->name, strnlen(d->name, LBP_MAX_NAME));
	put64(r + SM_WEIGHTS, d->weights_hash);
	put32(r + SM_N_LAYERS, d->n_layers);
	put32(r + SM_HIDDEN, d->hidden);
	put32(r + SM_DTYPE, d->dtype);
	put32(r + SM_MAX_SEQ, d->max_seq);
	put32(r + SM_FP_CHUNKS, d->fp.chunks);
	put32(r + SM_FP_BITS, d->fp.bits);
	put64(r + SM_FP_SEED, d->fp.seed);
	put64(r + SM_N_ENTRIES, n_entries);
	put32(r + SM_KV_DIM, d->kv.dim);
	put16(r + SM_BLOCK_TOKENS, (uint16_t)d->kv.block_tokens);
	put16(r + SM_KV_LAYERS, (uint16_t)d->kv.layers);
	seal(r);
}

static void encode_entry(uint8_t *r, uint32_t model, const struct lbd_store_item *it)
{
	memset(r, 0, LBD_SNAP_ENTRY_SIZE);
	put32(r + SE_MODEL, model);
	put16(r + SE_LAYER, (uint16_t)it->layer);
	put16(r + SE_DTYPE, (uint16_t)it->dtype);
	put32(r + SE_SEQ_LEN, it->seq_len);
	r[SE_NDIM] = (uint8_t)it->ndim;
	r[SE_FLAGS] = it->tokens ? SE_F_TOKENS : 0;
	put16(r + SE_APPROX, (uint16_t)it->approx);
	for (int i = 0; i < LB_MAX_NDIM; i++)
		put32(r + SE_SHAPE + 4 * i, it->shape[i]);
	put64(r + SE_BYTES, it->bytes);
	if (it->layer == LB_ENTRY_LAYER_BLOCK) {
		put64(r + SE_PARENT, it->parent[0]);
		put64(r + SE_PARENT + 8, it->parent[1]);
		put32(r + SE_INDEX, it->index);
	} else {
		for (int i = 0; i < LB_FP_WORDS; i++)
			put64(r + SE_FP + 8 * i, it->fp[i]);
	}
	put64(r + SE_EXACT, it->exact[0]);
	put64(r + SE_EXACT + 8, it->exact[1]);
	put64(r + SE_DATA_SUM, it->checksum);
	put64(r + SE_IDLE, it->idle_ns);
	put64(r + SE_AGE, it->age_ns);
	put64(r + SE_SCORE, dbl_bits(isfinite(it->score) && it->score > 0 ? it->score : 0));
	seal(r);
}

/* ---- the writer: chunks through an io_uring ---- */

struct wbuf {
	uint8_t *p;     /* LBD_SNAP_CHUNK bytes, page-aligned */
	uint64_t off;   /* file offset of p[0] */
	uint32_t len;   /* bytes to write */
	uint32_t done;  /* written so far (short writes are resumed) */
	bool busy;      /* in flight: the kernel reads it */
};

struct writer {
	struct io_uring ring;
	bool ring_ok;
	int fd;
	struct wbuf b[LBD_SNAP_DEPTH];
	unsigned cur;      /* the buffer being filled */
	uint32_t fill;     /* bytes in it */
	uint64_t pos;      /* file offset of the next byte emitted */
	uint64_t written;  /* bytes the kernel confirmed */
	uint64_t total;    /* the file's size */
	unsigned inflight;
	lbd_snapshot_progress_fn progress;
	void *ctx;
};

#define FSYNC_TAG LBD_SNAP_DEPTH /* user_data of the fsync; buffers are 0..DEPTH-1 */

static int w_submit(struct writer *w, unsigned i)
{
	struct wbuf *b = &w->b[i];
	struct io_uring_sqe *sqe = io_uring_get_sqe(&w->ring);
	int ret;

	if (!sqe)
		return -EBUSY; /* cannot happen: the ring has a slot per buffer and the fsync */
	io_uring_prep_write(sqe, w->fd, b->p + b->done, b->len - b->done, b->off + b->done);
	io_uring_sqe_set_data64(sqe, i);
	ret = io_uring_submit(&w->ring);
	return ret < 0 ? ret : 0;
}

/* Wait for one completion. @return its tag and *res, or -errno from io_uring. */
static int w_wait(struct writer *w, int *res)
{
	struct io_uring_cqe *cqe;
	int ret;

	do
		ret = io_uring_wait_cqe(&w->ring, &cqe);
	while (ret == -EINTR);
	if (ret < 0)
		return ret;
	uint64_t tag = io_uring_cqe_get_data64(cqe);
	*res = cqe->res;
	io_uring_cqe_seen(&w->ring, cqe);
	return tag <= FSYNC_TAG ? (int)tag : -EIO;
}

/* Take one write's completion: resume a short one, free the buffer of a whole one. */
static int w_reap(struct writer *w)
{
	int res, i = w_wait(w, &res);

	if (i < 0)
		return i;
	if (i == FSYNC_TAG)
		return -EIO; /* no fsync is in flight while writes are */
	struct wbuf *b = &w->b[i];
	if (res == -EINTR || res == -EAGAIN)
		return w_submit(w, (unsigned)i);
	if (res < 0 || res == 0) {
		/* The buffer is no longer in flight even though the write failed. */
		b->busy = false;
		w->inflight--;
		return res < 0 ? res : -EIO; /* 0 bytes: the file system takes no more */
	}
	b->done += (uint32_t)res;
	w->written += (uint64_t)res;
	if (b->done < b->len)
		return w_submit(w, (unsigned)i);
	b->busy = false;
	w->inflight--;
	if (w->progress)
		w->progress(w->ctx, w->written, w->total);
	return 0;
}

/* Send the buffer being filled, then make a free one current (waiting for one if need be). */
static int w_flush(struct writer *w)
{
	struct wbuf *b = &w->b[w->cur];
	int ret;

	if (w->fill == 0)
		return 0;
	b->off = w->pos - w->fill;
	b->len = w->fill;
	b->done = 0;
	b->busy = true;
	w->inflight++;
	w->fill = 0;
	ret = w_submit(w, w->cur);
	if (ret < 0) {
		b->busy = false;
		w->inflight--;
		return ret;
	}
	for (;;) {
		for (unsigned k = 0; k < LBD_SNAP_DEPTH; k++)
			if (!w->b[k].busy) {
				w->cur = k;
				return 0;
			}
		ret = w_reap(w);
		if (ret < 0)
			return ret;
	}
}

/* Append n bytes of src (NULL: zeros) to the file. */
static int w_emit(struct writer *w, const void *src, uint64_t n)
{
	const uint8_t *s = src;

	while (n) {
		uint32_t room = LBD_SNAP_CHUNK - w->fill;
		uint32_t k = n < room ? (uint32_t)n : room;
		if (s) {
			memcpy(w->b[w->cur].p + w->fill, s, k);
			s += k;
		} else {
			memset(w->b[w->cur].p + w->fill, 0, k);
		}
		w->fill += k;
		w->pos += k;
		n -= k;
		if (w->fill == LBD_SNAP_CHUNK) {
			int ret = w_flush(w);
			if (ret < 0)
				return ret;
		}
	}
	return 0;
}

/* The last buffer, every completion, then fsync, also through the ring. */
static int w_finish(struct writer *w)
{
	struct io_uring_sqe *sqe;
	int ret = w_flush(w), res;

	while (ret == 0 && w->inflight)
		ret = w_reap(w);
	if (ret < 0)
		return ret;
	if (w->written != w->total)
		return -EIO;
	sqe = io_uring_get_sqe(&w->ring);
	if (!sqe)
		return -EBUSY;
	io_uring_prep_fsync(sqe, w->fd, 0);
	io_uring_sqe_set_data64(sqe, FSYNC_TAG);
	ret = io_uring_submit(&w->ring);
	if (ret < 0)
		return ret;
	ret = w_wait(w, &res);
	if (ret < 0)
		return ret;
	return ret == FSYNC_TAG ? (res < 0 ? res : 0) : -EIO;
}

/* Wait out whatever is still in flight (after an error), so no buffer is freed under the
 * kernel, then free everything. */
static void w_free(struct writer *w)
{
	if (w->ring_ok) {
		while (w->inflight) {
			int res, i = w_wait(w, &res);
			if (i < 0)
				break;
			if (i < (int)LBD_SNAP_DEPTH && w->b[i].busy) {
				w->b[i].busy = false;
				w->inflight--;
			}
		}
		io_uring_queue_exit(&w->ring);
	}
	for (unsigned k = 0; k < LBD_SNAP_DEPTH; k++)
		free(w->b[k].p);
}

/* fsync the folder holding path, so that the rename itself is on disk. */
static int fsync_dir(const char *path)
{
	char dir[PATH_MAX];
	const char *slash = strrchr(path, '/');
	int fd, ret = 0;

	if (!slash)
		snprintf(dir, sizeof(dir), ".");
	else if (slash == path)
		snprintf(dir, sizeof(dir), "/");
	else
		snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path), path);
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fsync(fd) < 0)
		ret = -errno;
	close(fd);
	return ret;
}

/* What one snapshot writes: the entries it holds and the file's layout. */
struct plan {
	int32_t rec_of[LBD_MAX_MODELS + 1]; /* model id -> its model record; -1: left out */
	uint64_t per_model[LBD_MAX_MODELS]; /* entries per model record */
	uint32_t n_models;
	struct lbd_adapt *thr[LBD_MAX_MODELS]; /* per model record: its layers' controllers */
	uint64_t thr_bytes;                 /* the threshold blocks' */
	struct lbd_leases held;             /* until plan_release: the entries stay unchanged */
	struct lbd_store_item *items;
	uint32_t n_items;
	uint64_t n_entries, n_blocks, data_bytes, file_bytes;
};

/* Model records in registry order, retired models (empty names) left out. */
static void plan_models(struct plan *p, const struct lbd_models *m)
{
	p->rec_of[0] = -1;
	for (uint32_t i = 0; i < LBD_MAX_MODELS; i++)
		p->rec_of[i + 1] = i < m->count && m->desc[i].name[0] ? (int32_t)p->n_models++ : -1;
}

/* The model record of an entry; -1 for a retired model's entry, inserted while it was retired. */
static int32_t plan_record_of(const struct plan *p, const struct lbd_store_item *it)
{
	return it->model_id > LBD_MAX_MODELS ? -1 : p->rec_of[it->model_id];
}

/* Each model record's controllers, as the store has them now (a model without a bank: as
 * they start). @return 0, -ENOMEM. */
static int plan_thresholds(struct plan *p, const struct lbd_models *m, struct lbd_store *st)
{
	for (uint32_t i = 0; i < m->count; i++) {
		int32_t r = p->rec_of[i + 1];
		uint32_t n = m->desc[i].n_layers;
		if (r < 0)
			continue;
		p->thr[r] = malloc(sizeof(*p->thr[r]) * n);
		if (!p->thr[r])
			return -ENOMEM;
		if (lbd_store_layer_taus(st, i + 1, NULL, NULL, p->thr[r], n) < 0)
			for (uint32_t l = 0; l < n; l++)
				lbd_adapt_init(&p->thr[r][l]);
		p->thr_bytes += thr_block_bytes(n);
	}
	return 0;
}

/* The layout is known before the first byte: the header can say how long the file is. */
static void plan_layout(struct plan *p)
{
	p->file_bytes = LBD_SNAP_HDR_SIZE + (uint64_t)p->n_models * LBD_SNAP_MODEL_SIZE +
			p->thr_bytes;
	for (uint32_t k = 0; k < p->n_items; k++) {
		const struct lbd_store_item *it = &p->items[k];
		int32_t r = plan_record_of(p, it);
		if (r < 0)
			continue;
		p->per_model[r]++;
		p->n_entries++;
		p->n_blocks += it->layer == LB_ENTRY_LAYER_BLOCK;
		p->data_bytes += lbd_store_item_body(it);
		p->file_bytes += LBD_SNAP_ENTRY_SIZE + pad(lbd_store_item_body(it));
	}
}

static void plan_release(struct plan *p, struct lbd_store *st)
{
	lbd_store_release_all(st, &p->held);
	lbd_leases_free(&p->held);
	free(p->items);
	for (uint32_t r = 0; r < p->n_models; r++)
		free(p->thr[r]);
}

/* Name the step that failed, for the message. @return -errno. */
static int failed_at(const char **step, const char *what)
{
	*step = what;
	return -errno;
}

/* The buffers and the ring. @return 0, or -errno with *step set. */
static int w_init(struct writer *w, const char **step)
{
	int ret;

	for (unsigned k = 0; k < LBD_SNAP_DEPTH; k++)
		if (posix_memalign((void **)&w->b[k].p, 4096, LBD_SNAP_CHUNK)) {
			*step = "buffers";
			return -ENOMEM;
		}
	ret = io_uring_queue_init(LBD_SNAP_DEPTH + 1, &w->ring, 0);
	if (ret < 0) {
		*step = "io_uring_queue_init";
		return ret;
	}
	w->ring_ok = true;
	return 0;
}

/* The temporary file, with room for the whole image. @return 0, or -errno with *step set. */
static int w_create(struct writer *w, const char *tmp, const char **step)
{
	/* A new file, never one that is there: O_EXCL does not follow a planted symlink. */
	if (unlink(tmp) < 0 && errno != ENOENT)
		return failed_at(step, "unlink");
	w->fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (w->fd < 0)
		return failed_at(step, "open");
	/* Room up front: a full disk fails here, before anything is written. */
	if (fallocate(w->fd, 0, 0, (off_t)w->total) < 0 && errno != EOPNOTSUPP && errno != ENOSYS)
		return failed_at(step, "fallocate");
	return 0;
}

/* One entry: its record, its data, its token ids (if any) after the zeros up to
 * lb_tokens_off, then zeros up to a multiple of LBD_SNAP_ALIGN. it is held: its data and ids
 * do not change while they are read from the arena. */
static int emit_entry(struct writer *w, uint32_t model, const struct lbd_store_item *it)
{
	uint8_t rec[LBD_SNAP_ENTRY_SIZE];
	uint64_t body = lbd_store_item_body(it);
	int ret;

	encode_entry(rec, model, it);
	ret = w_emit(w, rec, LBD_SNAP_ENTRY_SIZE);
	if (ret == 0)
		ret = w_emit(w, it->data, it->bytes);
	if (ret == 0 && it->tokens) {
		ret = w_emit(w, NULL, lb_tokens_off(it->bytes) - it->bytes);
		if (ret == 0)
			ret = w_emit(w, it->tokens, (uint64_t)it->seq_len * sizeof(int32_t));
	}
	return ret < 0 ? ret : w_emit(w, NULL, pad(body) - body);
}

/* The header, the model records, each entry, then the models' threshold blocks. */
static int emit_image(struct writer *w, const struct plan *p, const struct lbd_models *m,
		      const uint8_t boot_id[16])
{
	static uint8_t thr[LBP_MAX_LAYERS * LBD_SNAP_THR_SIZE + LBD_SNAP_ALIGN]; /* the loop thread's */
	uint8_t rec[LBD_SNAP_ENTRY_SIZE];
	int ret;

	encode_header(rec, p->n_models, p->thr_bytes, p->n_entries, p->data_bytes, p->file_bytes,
		      boot_id);
	ret = w_emit(w, rec, LBD_SNAP_HDR_SIZE);
	for (uint32_t i = 0; ret == 0 && i < m->count; i++) {
		if (p->rec_of[i + 1] < 0)
			continue;
		encode_model(rec, &m->desc[i], p->per_model[p->rec_of[i + 1]]);
		ret = w_emit(w, rec, LBD_SNAP_MODEL_SIZE);
	}
	for (uint32_t k = 0; ret == 0 && k < p->n_items; k++) {
		int32_t r = plan_record_of(p, &p->items[k]);
		if (r >= 0)
			ret = emit_entry(w, (uint32_t)r, &p->items[k]);
	}
	for (uint32_t i = 0; ret == 0 && i < m->count; i++) {
		if (p->rec_of[i + 1] < 0)
			continue;
		encode_thr(thr, p->thr[p->rec_of[i + 1]], m->desc[i].n_layers);
		ret = w_emit(w, thr, thr_block_bytes(m->desc[i].n_layers));
	}
	return ret;
}

/* Close the written file and put it in place of the old one. @return 0, or -errno with *step set. */
static int w_publish(struct writer *w, const char *tmp, const char *path, const char **step)
{
	int fd = w->fd;

	w->fd = -1;
	if (close(fd) < 0)
		return failed_at(step, "close");
	if (rename(tmp, path) < 0)
		return failed_at(step, "rename");
	return 0;
}

/* After a failure: the half-written file closed and removed, but not when unlink or open failed,
 * for then the file at tmp is not one this write made. */
static void w_abandon(struct writer *w, const char *tmp, const char *step)
{
	if (w->fd >= 0)
		close(w->fd);
	if (strcmp(step, "unlink") != 0 && strcmp(step, "open") != 0)
		unlink(tmp);
}

/* The new file is whole and in place; a lost folder fsync only risks the old one coming back
 * after a crash, so it is reported but not a failure of the write. */
static void report_written(const char *path, const struct plan *p, uint64_t t0,
			  struct lbd_snapshot_stats *out, char *err, size_t errlen)
{
	int ret = fsync_dir(path);

	if (out) {
		memset(out, 0, sizeof(*out));
		out->models = p->n_models;
		out->entries = p->n_entries;
		out->blocks = p->n_blocks;
		out->data_bytes = p->data_bytes;
		out->file_bytes = p->file_bytes;
		out->written_s = (uint64_t)time(NULL);
		out->ms = ms_since(t0);
	}
	if (ret < 0)
		lbu_errf(err, errlen, "snapshot %s: written, but fsync of its folder failed: %s", path,
			 strerror(-ret));
	else
		lbu_errf(err, errlen, "%s", "");
}

int lbd_snapshot_write(const char *path, const struct lbd_models *m, struct lbd_store *st,
		       const uint8_t boot_id[16], lbd_snapshot_progress_fn progress, void *ctx,
		       struct lbd_snapshot_stats *out, char *err, size_t errlen)
{
	uint64_t t0 = lb_now_ns();
	struct plan p = { .n_models = 0 };
	struct writer w = { .fd = -1, .progress = progress, .ctx = ctx };
	char tmp[PATH_MAX];
	const char *step = "";
	int ret;

	if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= sizeof(tmp))
		return lbu_fail(err, errlen, -ENAMETOOLONG, "snapshot not written: path too long (%s)", path);
	plan_models(&p, m);
	ret = lbd_store_hold_all(st, &p.held, &p.items, &p.n_items);
	if (ret < 0)
		return lbu_fail(err, errlen, ret, "snapshot not written: cannot hold the entries: %s (%s)",
				strerror(-ret), path);
	ret = plan_thresholds(&p, m, st);
	if (ret < 0) {
		plan_release(&p, st);
		return lbu_fail(err, errlen, ret, "snapshot not written: no memory for the thresholds (%s)",
				path);
	}
	plan_layout(&p);
	w.total = p.file_bytes;
	ret = w_init(&w, &step);
	if (ret == 0)
		ret = w_create(&w, tmp, &step);
	if (ret == 0) {
		step = "write";
		ret = emit_image(&w, &p, m, boot_id);
	}
	if (ret == 0) {
		step = "write or fsync";
		ret = w_finish(&w);
	}
	if (ret == 0)
		ret = w_publish(&w, tmp, path, &step);
	w_free(&w);
	if (ret < 0)
		w_abandon(&w, tmp, step);
	plan_release(&p, st);
	if (ret == 0) {
		report_written(path, &p, t0, out, err, errlen);
		return 0;
	}
	/* The reason first: a long path cut off at the end of an ERROR message loses less. */
	return lbu_fail(err, errlen, ret, "snapshot not written: %s (%s %s)", strerror(-ret), step,
			strcmp(step, "buffers") == 0 ? path : tmp);
}

/* ---- the loader ---- */

struct lmodel {
	struct lbp_register_model d;
	const uint8_t *thr; /* its threshold block in the image (version 5); NULL: none */
	uint64_t n_entries; /* as the record says; checked against the entries */
	uint64_t seen;
	uint32_t id;        /* in the registry, once restored; 0: skipped */
};

struct lentry {
	struct lbd_store_item it; /* data and tokens point into the image */
	uint32_t model;           /* index of its model record */
	uint8_t flags;            /* SE_F_*, as the record says */
	uint64_t off;             /* of its record in the image, for messages */
	struct lentry *up;        /* a block's parent's record (check_chains); NULL: none */
	double value;             /* to the store's policy */
};

/* An image as the loader reads it. */
struct image {
	const uint8_t *img;
	size_t len;
	uint32_t version;                          /* 2..LBD_SNAP_VERSION */
	uint32_t n_models;
	uint64_t thr_bytes;                        /* as the header says (version 5), else 0 */
	uint64_t n_entries, data_bytes, written_s; /* as the header says */
	uint64_t n_blocks;                         /* block records */
	struct lmodel *models;                     /* [n_models] */
	struct lentry *ents;                       /* [n_entries], in file order */
	struct lentry **by;                        /* [n_entries]: the orders the checks need */
	int32_t *ids;                              /* [ids_cap]: an entry's token ids, aligned */
	uint32_t ids_cap;
};

/* The model record at r, index i, into *lm. @return 0, or -EBADMSG with err set. */
static int check_model(const uint8_t *r, uint32_t version, uint32_t i, struct lmodel *lm, char *err,
		       size_t errlen)
{
	struct lbp_register_model *d = &lm->d;
	size_t name_len = strnlen((const char *)r + SM_NAME, NAME_FIELD);
	const char *field = NULL;
	char why[LBP_MAX_ERRMSG];

	if (!sealed(r))
		return lbu_fail(err, errlen, -EBADMSG, "model record %u: checksum mismatch", i);
	if (name_len == 0 || name_len > LBP_MAX_NAME || !zero(r + SM_NAME + name_len, NAME_FIELD - name_len))
		return lbu_fail(err, errlen, -EBADMSG, "model record %u: name not 1..%u bytes padded with NULs",
				i, LBP_MAX_NAME);
	memset(lm, 0, sizeof(*lm));
	memcpy(d->name, r + SM_NAME, name_len);
	d->weights_hash = get64(r + SM_WEIGHTS);
	d->n_layers = get32(r + SM_N_LAYERS);
	d->hidden = get32(r + SM_HIDDEN);
	d->dtype = get32(r + SM_DTYPE);
	d->max_seq = get32(r + SM_MAX_SEQ);
	d->fp.chunks = get32(r + SM_FP_CHUNKS);
	d->fp.bits = get32(r + SM_FP_BITS);
	d->fp.seed = get64(r + SM_FP_SEED);
	lm->n_entries = get64(r + SM_N_ENTRIES);
	d->kv.dim = get32(r + SM_KV_DIM);
	/* Before version 6 a model's blocks held all its layers. */
	d->kv.block_tokens = version >= 6 ? get16(r + SM_BLOCK_TOKENS) : get32(r + SM_BLOCK_TOKENS);
	d->kv.layers = version >= 6 ? get16(r + SM_KV_LAYERS) : d->kv.dim ? d->n_layers : 0;
	/* The ranges of REGISTER_MODEL (PROTOCOL.md 4.3): what a client could have registered. */
	const char *bad = d->n_layers < 1 || d->n_layers > LBP_MAX_LAYERS ? "n_layers"
			  : d->hidden < 1 || d->hidden > LBP_MAX_HIDDEN  ? "hidden"
			  : !lbp_dtype_size(d->dtype)                    ? "dtype"
			  : d->max_seq < 1 || d->max_seq > LBP_MAX_SEQ   ? "max_seq"
			  : d->fp.chunks < 1 || d->fp.chunks > LBP_MAX_FP_CHUNKS ? "fp.chunks"
			  : d->fp.bits != LBP_FP_BITS                    ? "fp.bits"
			  : d->kv.dim > LBP_MAX_HIDDEN                   ? "kv.dim"
			  : d->kv.block_tokens > LBP_MAX_BLOCK_TOKENS    ? "kv.block_tokens"
			  : d->kv.layers > LBP_MAX_LAYERS                ? "kv.layers"
			  : lbd_models_valid(d, &field, why, sizeof(why)) < 0 ? field
									 : NULL;
	if (bad)
		return lbu_fail(err, errlen, -EBADMSG, "model record %u ('%s'): %s out of range", i,
				d->name, bad);
	return 0;
}

/* The fields of the entry record r into *e: a block's parent and index where a layer entry's
 * fingerprint is. */
static void decode_entry(const uint8_t *r, struct lentry *e)
{
	struct lbd_store_item *it = &e->it;

	e->model = get32(r + SE_MODEL);
	it->layer = get16(r + SE_LAYER);
	it->dtype = get16(r + SE_DTYPE);
	it->seq_len = get32(r + SE_SEQ_LEN);
	it->ndim = r[SE_NDIM];
	e->flags = r[SE_FLAGS];
	it->approx = get16(r + SE_APPROX);
	for (int i = 0; i < LB_MAX_NDIM; i++)
		it->shape[i] = get32(r + SE_SHAPE + 4 * i);
	it->bytes = get64(r + SE_BYTES);
	if (it->layer == LB_ENTRY_LAYER_BLOCK) {
		it->parent[0] = get64(r + SE_PARENT);
		it->parent[1] = get64(r + SE_PARENT + 8);
		it->index = get32(r + SE_INDEX);
	} else {
		for (int i = 0; i < LB_FP_WORDS; i++)
			it->fp[i] = get64(r + SE_FP + 8 * i);
	}
	it->exact[0] = get64(r + SE_EXACT);
	it->exact[1] = get64(r + SE_EXACT + 8);
	it->checksum = get64(r + SE_DATA_SUM);
	it->idle_ns = get64(r + SE_IDLE);
	it->age_ns = get64(r + SE_AGE);
	it->score = bits_dbl(get64(r + SE_SCORE));
}

/* A block record r against its model d: the model's geometry, ending within max_seq at a place
 * LOOKUP_PREFIX reaches, a key,
 * a parent exactly when it is not block 0, the zero bytes. @return the field out of range, or
 * NULL. */
static const char *block_bad(const struct lbp_register_model *d, const struct lbd_store_item *it,
			     const uint8_t *r)
{
	uint64_t end = ((uint64_t)it->index + 1) * d->kv.block_tokens;

	if (!d->kv.dim)
		return "layer"; /* a block of a model without prefix blocks */
	if (it->dtype != d->dtype)
		return "dtype";
	if (it->ndim != 4)
		return "ndim";
	if (it->shape[0] != d->kv.layers || it->shape[1] != 2 ||
	    it->shape[2] != d->kv.block_tokens || it->shape[3] != d->kv.dim)
		return "shape";
	if (end > d->max_seq || it->index >= LB_PREFIX_MAX_BLOCKS)
		return "index";
	if (it->seq_len != end)
		return "seq_len";
	if (!it->exact[0] && !it->exact[1])
		return "key";
	if ((it->index == 0) != (!it->parent[0] && !it->parent[1]))
		return "parent";
	if (!zero(r + SE_BLOCK_ZERO, SE_EXACT - SE_BLOCK_ZERO))
		return "reserved";
	return NULL;
}

/* Every field of the decoded record r against its model and itself. @return the field out of
 * range, or NULL. */
static const char *entry_bad(const struct image *im, const struct lentry *e, const uint8_t *r)
{
	const struct lbd_store_item *it = &e->it;
	const char *bad = NULL;
	uint64_t elems = 1;

	if (e->model >= im->n_models)
		return "model index";
	const struct lbp_register_model *d = &im->models[e->model].d;
	if (it->layer == LB_ENTRY_LAYER_BLOCK)
		bad = block_bad(d, it, r);
	else if (it->layer >= d->n_layers)
		bad = "layer";
	else if (it->seq_len < 1 || it->seq_len > d->max_seq)
		bad = "seq_len";
	if (!bad && !lbp_dtype_size(it->dtype))
		bad = "dtype";
	/* Before version 4 the flags byte was ndim's high byte: 0 for any ndim in range. */
	if (!bad && (it->ndim < 1 || it->ndim > LB_MAX_NDIM || (im->version < 4 && e->flags)))
		bad = "ndim";
	if (!bad && (e->flags & ~SE_F_MASK))
		bad = "flags (unknown bits)";
	if (!bad && (e->flags & SE_F_TOKENS) && it->layer == LB_ENTRY_LAYER_BLOCK)
		bad = "flags (token ids on a prefix block)";
	if (!bad && (it->layer == LB_ENTRY_LAYER_BLOCK ? it->approx != 0 : it->approx > LB_FP_BITS))
		bad = "approx";
	/* The store's shape check (shape_ok, which lbd_store_restore applies again), step by step
	 * so that the reason names the field. */
	for (uint32_t i = 0; !bad && i < LB_MAX_NDIM; i++) {
		if (i >= it->ndim ? it->shape[i] != 0 : it->shape[i] == 0)
			bad = "shape";
		else if (i < it->ndim && elems > UINT64_MAX / 8 / it->shape[i])
			bad = "shape";
		else if (i < it->ndim)
			elems *= it->shape[i];
	}
	if (!bad && elems * (uint64_t)lbp_dtype_size(it->dtype) != it->bytes)
		bad = "bytes (not the shape's)";
	if (!bad && !(isfinite(it->score) && it->score >= 0))
		bad = "score";
	return bad;
}

/* Whether the n token ids at p (any alignment: the image's) hash to key; they are copied to
 * im->ids first, for lbp_token_hash reads int32s. @return 1, 0, or -ENOMEM. */
static int tokens_match(struct image *im, const uint8_t *p, uint32_t n, const uint64_t key[2])
{
	uint64_t h[2];

	if (n > im->ids_cap) {
		int32_t *ids = realloc(im->ids, (size_t)n * sizeof(*ids));
		if (!ids)
			return -ENOMEM;
		im->ids = ids;
		im->ids_cap = n;
	}
	memcpy(im->ids, p, (size_t)n * sizeof(*im->ids));
	lbp_token_hash(im->ids, n, h);
	return h[0] == key[0] && h[1] == key[1];
}

/* The data section of entry k (record at off, fields in range): its data against
 * data_checksum, its token ids against its exact key, the zeros around them. @return 0, or
 * -EBADMSG or -ENOMEM with err set. */
static int check_body(struct image *im, uint64_t off, uint64_t k, char *err, size_t errlen)
{
	struct lbd_store_item *it = &im->ents[k].it;
	uint64_t body = lbd_store_item_body(it);
	const uint8_t *d = it->data;
	int match;

	if (XXH3_64bits(d, it->bytes) != it->checksum)
		return lbu_fail(err, errlen, -EBADMSG, "entry %" PRIu64 " (offset %" PRIu64
				"): data checksum mismatch", k, off);
	if (it->tokens) {
		if (!zero(d + it->bytes, lb_tokens_off(it->bytes) - it->bytes))
			return lbu_fail(err, errlen, -EBADMSG, "entry %" PRIu64 " (offset %" PRIu64
					"): padding before its token ids not zero", k, off);
		match = tokens_match(im, it->tokens, it->seq_len, it->exact);
		if (match < 0)
			return lbu_fail(err, errlen, match, "out of memory for the %u token ids of entry %"
					PRIu64, it->seq_len, k);
		if (!match)
			return lbu_fail(err, errlen, -EBADMSG, "entry %" PRIu64 " (offset %" PRIu64
					"): token ids that do not hash to its exact key", k, off);
	}
	if (!zero(d + body, pad(body) - body))
		return lbu_fail(err, errlen, -EBADMSG, "entry %" PRIu64 " (offset %" PRIu64
				"): padding not zero", k, off);
	return 0;
}

/* Entry k, whose record is at off, into ents[k]. @return 0, or -EBADMSG or -ENOMEM with err
 * set. */
static int check_entry(struct image *im, uint64_t off, uint64_t k, char *err, size_t errlen)
{
	const uint8_t *r = im->img + off;
	struct lentry *e = &im->ents[k];
	struct lbd_store_item *it = &e->it;
	size_t len = im->len - im->thr_bytes; /* the entries' end (check_head: no wrap) */

	if (len - off < LBD_SNAP_ENTRY_SIZE)
		return lbu_fail(err, errlen, -EBADMSG, "truncated in entry %" PRIu64 " (offset %" PRIu64
				"): %zu bytes left for its 128-byte record", k, off, (size_t)(len - off));
	if (!sealed(r))
		return lbu_fail(err, errlen, -EBADMSG, "entry %" PRIu64 " (offset %" PRIu64
				"): record checksum mismatch", k, off);
	memset(e, 0, sizeof(*e));
	e->off = off;
	decode_entry(r, e);
	it->model_id = e->model; /* a record index until restored */
	const char *bad = entry_bad(im, e, r);
	if (bad)
		return lbu_fail(err, errlen, -EBADMSG, "entry %" PRIu64 " (offset %" PRIu64 "): %s out of range",
				k, off, bad);
	/* In range: bytes below 2^63, seq_len at most LBP_MAX_SEQ; body and its padding cannot wrap. */
	uint64_t left = len - off - LBD_SNAP_ENTRY_SIZE;
	it->data = r + LBD_SNAP_ENTRY_SIZE;
	if (e->flags & SE_F_TOKENS)
		it->tokens = it->data + lb_tokens_off(it->bytes);
	uint64_t body = lbd_store_item_body(it);
	if (body > left || pad(body) > left)
		return lbu_fail(err, errlen, -EBADMSG, "truncated in entry %" PRIu64 " (offset %" PRIu64
				"): %" PRIu64 " data bytes%s, %" PRIu64 " left", k, off, body,
				it->tokens ? " with its token ids" : "", left);
	return check_body(im, off, k, err, errlen);
}

/* The entry an element of a struct lentry * array points to: for qsort and bsearch. */
static const struct lentry *deref(const void *p)
{
	return *(const struct lentry *const *)p;
}

static int cmp_off(const struct lentry *x, const struct lentry *y)
{
	return x->off < y->off ? -1 : x->off > y->off;
}

/* Layer entries by model, input (token hash), layer: one input's entries side by side. */
static int cmp_key(const void *a, const void *b)
{
	const struct lentry *x = deref(a), *y = deref(b);
	if (x->model != y->model)
		return x->model < y->model ? -1 : 1;
	for (int i = 0; i < 2; i++)
		if (x->it.exact[i] != y->it.exact[i])
			return x->it.exact[i] < y->it.exact[i] ? -1 : 1;
	if (x->it.layer != y->it.layer)
		return x->it.layer < y->it.layer ? -1 : 1;
	return cmp_off(x, y);
}

/* Blocks by model and key (only: what a parent is looked up by). */
static int cmp_block(const void *a, const void *b)
{
	const struct lentry *x = deref(a), *y = deref(b);
	if (x->model != y->model)
		return x->model < y->model ? -1 : 1;
	for (int i = 0; i < 2; i++)
		if (x->it.exact[i] != y->it.exact[i])
			return x->it.exact[i] < y->it.exact[i] ? -1 : 1;
	return 0;
}

/* Blocks by model, key, then file order: one model's blocks of one key side by side. */
static int cmp_block_off(const void *a, const void *b)
{
	int c = cmp_block(a, b);
	return c ? c : cmp_off(deref(a), deref(b));
}

/* Deepest block first. */
static int cmp_deep(const void *a, const void *b)
{
	const struct lentry *x = deref(a), *y = deref(b);
	if (x->it.index != y->it.index)
		return x->it.index > y->it.index ? -1 : 1;
	return cmp_off(x, y);
}

/* Most valuable first; ties parent first (a block's index is above its parent's; a layer
 * entry's is 0), then in file order. */
static int cmp_value(const void *a, const void *b)
{
	const struct lentry *x = deref(a), *y = deref(b);
	if (x->value != y->value)
		return x->value > y->value ? -1 : 1;
	if (x->it.index != y->it.index)
		return x->it.index < y->it.index ? -1 : 1;
	return cmp_off(x, y);
}

/* The layer entries of one input must agree on its length and fingerprint, and name each
 * layer once: a file whose writer broke that is not trusted at all. */
static int check_inputs(struct lentry **by, uint64_t n, char *err, size_t errlen)
{
	qsort(by, n, sizeof(*by), cmp_key);
	for (uint64_t k = 1; k < n; k++) {
		const struct lentry *p = by[k - 1], *e = by[k];
		if (p->model != e->model || memcmp(p->it.exact, e->it.exact, sizeof(e->it.exact)))
			continue;
		if (p->it.layer == e->it.layer)
			return lbu_fail(err, errlen, -EBADMSG, "entries at offsets %" PRIu64 " and %" PRIu64
					": the same input and layer twice", p->off, e->off);
		if (p->it.seq_len != e->it.seq_len || memcmp(p->it.fp, e->it.fp, sizeof(e->it.fp)))
			return lbu_fail(err, errlen, -EBADMSG, "entries at offsets %" PRIu64 " and %" PRIu64
					": one input with two lengths or fingerprints", p->off, e->off);
	}
	return 0;
}

/* The blocks of one model name each key once, and each block's parent (its model's block of
 * its parent key, one place up) is in the file: no chain has a hole. by[0, n): the blocks;
 * reasons name the first in file order. Sets each block's up. */
static int check_chains(const struct image *im, struct lentry **by, uint64_t n, char *err,
			size_t errlen)
{
	qsort(by, n, sizeof(*by), cmp_block_off);
	for (uint64_t k = 1; k < n; k++)
		if (cmp_block(&by[k - 1], &by[k]) == 0)
			return lbu_fail(err, errlen, -EBADMSG, "entries at offsets %" PRIu64
					" and %" PRIu64 ": the same block twice", by[k - 1]->off,
					by[k]->off);
	for (uint64_t k = 0; k < im->n_entries; k++) {
		struct lentry *e = &im->ents[k], want = { .model = e->model }, *w = &want, **p;
		if (e->it.layer != LB_ENTRY_LAYER_BLOCK || e->it.index == 0)
			continue;
		memcpy(want.it.exact, e->it.parent, sizeof(want.it.exact));
		p = bsearch(&w, by, n, sizeof(*by), cmp_block);
		if (!p)
			return lbu_fail(err, errlen, -EBADMSG, "entry at offset %" PRIu64
					": block %u without its parent in the file (a hole)",
					e->off, e->it.index);
		if ((*p)->it.index + 1 != e->it.index)
			return lbu_fail(err, errlen, -EBADMSG, "entry at offset %" PRIu64
					": block %u under block %u (offset %" PRIu64
					"), not one place up", e->off, e->it.index, (*p)->it.index,
					(*p)->off);
		e->up = *p;
	}
	return 0;
}

/* Everything but the entries: the header and the model table. */
static int check_head(struct image *im, char *err, size_t errlen)
{
	const uint8_t *img = im->img;
	size_t len = im->len;

	if (len < LBD_SNAP_HDR_SIZE)
		return lbu_fail(err, errlen, -EBADMSG, "truncated: %zu bytes, shorter than the %u-byte header",
				len, LBD_SNAP_HDR_SIZE);
	if (memcmp(img + SH_MAGIC, LBD_SNAP_MAGIC, 8) != 0)
		return lbu_fail(err, errlen, -EBADMSG, "not a layerbank snapshot (no %s magic)", LBD_SNAP_MAGIC);
	/* The version before the checksum: another version may lay its header out otherwise. */
	/* Version 2 is version 3 with every approx 0: its 32-bit ndim (1..4) left those bytes 0.
	 * Version 3 is version 4 without token ids: its 16-bit ndim left the flags byte 0. */
	uint32_t version = get32(img + SH_VERSION);
	if (version < 2 || version > LBD_SNAP_VERSION)
		return lbu_fail(err, errlen, -EPROTO, "format version %u, this daemon reads versions 2 to %u",
				version, LBD_SNAP_VERSION);
	im->version = version;
	if (!sealed(img))
		return lbu_fail(err, errlen, -EBADMSG, "header checksum mismatch");
	uint32_t abi = get32(img + SH_SHM_ABI);
	if (abi != LB_SHM_ABI_VERSION)
		return lbu_fail(err, errlen, -EPROTO, "written by a daemon of arena ABI %u, this one has ABI %u",
				abi, LB_SHM_ABI_VERSION);
	unsigned reserved = version >= 5 ? SH_RESERVED : SH_RESERVED_V4;
	if (get32(img + SH_HDR_SIZE) != LBD_SNAP_HDR_SIZE || get32(img + SH_MODEL_SIZE) != LBD_SNAP_MODEL_SIZE ||
	    get32(img + SH_ENTRY_SIZE) != LBD_SNAP_ENTRY_SIZE || !zero(img + reserved, REC_SUM - reserved))
		return lbu_fail(err, errlen, -EBADMSG, "header: record sizes not 128, or reserved bytes not zero");
	im->thr_bytes = version >= 5 ? get64(img + SH_THR_BYTES) : 0;
	uint64_t file_bytes = get64(img + SH_FILE_BYTES);
	if (file_bytes != len)
		return lbu_fail(err, errlen, -EBADMSG, "%s: %zu bytes, the header says %" PRIu64,
				len < file_bytes ? "truncated" : "bytes past the end", len, file_bytes);
	im->n_models = get32(img + SH_N_MODELS);
	im->n_entries = get64(img + SH_N_ENTRIES);
	im->data_bytes = get64(img + SH_DATA_BYTES);
	im->written_s = get64(img + SH_WRITTEN_S);
	/* Counts capped by what the file can hold, before anything is allocated from them. */
	if (im->n_models > LBD_MAX_MODELS)
		return lbu_fail(err, errlen, -EBADMSG, "header: %u models, at most %u",
				im->n_models, LBD_MAX_MODELS);
	uint64_t head = LBD_SNAP_HDR_SIZE + (uint64_t)im->n_models * LBD_SNAP_MODEL_SIZE;
	if (head > len || im->thr_bytes > len - head ||
	    im->n_entries > (len - head - im->thr_bytes) / LBD_SNAP_ENTRY_SIZE)
		return lbu_fail(err, errlen, -EBADMSG, "header: %u models, %" PRIu64 " bytes of "
				"thresholds and %" PRIu64 " entries do not fit in %zu bytes",
				im->n_models, im->thr_bytes, im->n_entries, len);
	return 0;
}

/* Step 5 (version 5): the threshold blocks at the end of the file, one per model record in
 * its order, exactly thr_bytes long; each block's checksum, each controller in range, its
 * padding zero. */
static int check_thresholds(struct image *im, char *err, size_t errlen)
{
	uint64_t off = im->len - im->thr_bytes, want = 0;

	if (im->version < 5)
		return 0;
	for (uint32_t i = 0; i < im->n_models; i++)
		want += thr_block_bytes(im->models[i].d.n_layers);
	if (want != im->thr_bytes)
		return lbu_fail(err, errlen, -EBADMSG, "header: %" PRIu64 " bytes of thresholds, "
				"the models' layers take %" PRIu64, im->thr_bytes, want);
	for (uint32_t i = 0; i < im->n_models; i++) {
		uint32_t n = im->models[i].d.n_layers;
		uint64_t len = (uint64_t)n * LBD_SNAP_THR_SIZE;
		const uint8_t *b = im->img + off;
		if (get64(b + len) != XXH3_64bits(b, len))
			return lbu_fail(err, errlen, -EBADMSG, "model record %u ('%s'): threshold "
					"block checksum mismatch (offset %" PRIu64 ")", i,
					im->models[i].d.name, off);
		if (!zero(b + len + 8, thr_block_bytes(n) - len - 8))
			return lbu_fail(err, errlen, -EBADMSG, "model record %u ('%s'): threshold "
					"block padding not zero", i, im->models[i].d.name);
		for (uint32_t l = 0; l < n; l++) {
			const uint8_t *r = b + (uint64_t)l * LBD_SNAP_THR_SIZE;
			struct lbd_adapt a = { bits_dbl(get64(r + ST_RADIUS)), get64(r + ST_REPORTS),
					       get64(r + ST_OVER), bits_dbl(get64(r + ST_DRIFT_SUM)) };
			if (!lbd_adapt_valid(&a))
				return lbu_fail(err, errlen, -EBADMSG, "model record %u ('%s'): layer "
						"%u's threshold controller out of range", i,
						im->models[i].d.name, l);
		}
		im->models[i].thr = b;
		off += thr_block_bytes(n);
	}
	return 0;
}

/* Step 4: each model record, and no name twice. */
static int check_models(struct image *im, char *err, size_t errlen)
{
	for (uint32_t i = 0; i < im->n_models; i++) {
		const uint8_t *r = im->img + LBD_SNAP_HDR_SIZE + (size_t)i * LBD_SNAP_MODEL_SIZE;
		int ret = check_model(r, im->version, i, &im->models[i], err, errlen);
		if (ret < 0)
			return ret;
		for (uint32_t j = 0; j < i; j++)
			if (strcmp(im->models[j].d.name, im->models[i].d.name) == 0)
				return lbu_fail(err, errlen, -EBADMSG, "model records %u and %u:"
						" both '%s'", j, i, im->models[i].d.name);
	}
	return 0;
}

/* Steps 5 and 6: each entry, then the entries against the file's end, the header's and the
 * models' counts, and each other (layer entries by input, blocks by chain). */
static int check_entries(struct image *im, char *err, size_t errlen)
{
	uint64_t off = LBD_SNAP_HDR_SIZE + (uint64_t)im->n_models * LBD_SNAP_MODEL_SIZE, sum = 0;
	uint64_t end = im->len - im->thr_bytes;
	uint64_t n = im->n_entries, n_layer = 0;
	int ret;

	for (uint64_t k = 0; k < n; k++) {
		ret = check_entry(im, off, k, err, errlen);
		if (ret < 0)
			return ret;
		im->models[im->ents[k].model].seen++;
		sum += lbd_store_item_body(&im->ents[k].it);
		off += LBD_SNAP_ENTRY_SIZE + pad(lbd_store_item_body(&im->ents[k].it));
	}
	if (off != end)
		return lbu_fail(err, errlen, -EBADMSG, "%zu bytes after the last entry (offset %"
				PRIu64 ")", (size_t)(end - off), off);
	if (sum != im->data_bytes)
		return lbu_fail(err, errlen, -EBADMSG, "the entries hold %" PRIu64 " data bytes,"
				" the header says %" PRIu64, sum, im->data_bytes);
	for (uint32_t i = 0; i < im->n_models; i++)
		if (im->models[i].seen != im->models[i].n_entries)
			return lbu_fail(err, errlen, -EBADMSG, "model record %u ('%s'): %" PRIu64
					" entries, the file has %" PRIu64, i, im->models[i].d.name,
					im->models[i].n_entries, im->models[i].seen);
	/* Layer entries in by[0, n_layer), blocks after them: neither is checked as the other. */
	for (uint64_t k = 0; k < n; k++)
		if (im->ents[k].it.layer != LB_ENTRY_LAYER_BLOCK)
			im->by[n_layer++] = &im->ents[k];
	im->n_blocks = n - n_layer;
	for (uint64_t k = 0, b = n_layer; k < n; k++)
		if (im->ents[k].it.layer == LB_ENTRY_LAYER_BLOCK)
			im->by[b++] = &im->ents[k];
	ret = check_inputs(im->by, n_layer, err, errlen);
	return ret < 0 ? ret : check_chains(im, im->by + n_layer, im->n_blocks, err, errlen);
}

/* Each block as valuable as the most valuable block under it, deepest first: a parent goes
 * back before its children whatever the file says of them (a daemon's file says so already). */
static void lift_values(struct image *im)
{
	struct lentry **by = im->by;
	uint64_t n = 0;

	for (uint64_t k = 0; k < im->n_entries; k++)
		if (im->ents[k].it.layer == LB_ENTRY_LAYER_BLOCK)
			by[n++] = &im->ents[k];
	qsort(by, n, sizeof(*by), cmp_deep);
	for (uint64_t k = 0; k < n; k++)
		if (by[k]->up && by[k]->up->value < by[k]->value)
			by[k]->up->value = by[k]->value;
}

/* A model's controllers from its threshold block (checked), when the file has one. */
static void restore_thresholds(const struct lmodel *lm, struct lbd_store *st)
{
	static struct lbd_adapt a[LBP_MAX_LAYERS]; /* the loop thread's */

	if (!lm->thr)
		return;
	for (uint32_t l = 0; l < lm->d.n_layers; l++) {
		const uint8_t *r = lm->thr + (uint64_t)l * LBD_SNAP_THR_SIZE;
		a[l] = (struct lbd_adapt){ bits_dbl(get64(r + ST_RADIUS)), get64(r + ST_REPORTS),
					   get64(r + ST_OVER), bits_dbl(get64(r + ST_DRIFT_SUM)) };
	}
	lbd_store_adapt_set(st, lm->id, a, lm->d.n_layers);
}

/* Register the image's models and restore its entries, most valuable first. */
static void restore(struct image *im, struct lbd_models *m, struct lbd_store *st,
		    struct lbd_snapshot_stats *out)
{
	for (uint32_t i = 0; i < im->n_models; i++) {
		const char *field;
		char why[LBP_MAX_ERRMSG];
		uint32_t id = 0;
		if (lbd_models_restore(m, &im->models[i].d, &id, &field, why, sizeof(why)) < 0 ||
		    lbd_store_add_model(st, id, &im->models[i].d) < 0) {
			out->models_skipped++;
			continue;
		}
		im->models[i].id = id;
		restore_thresholds(&im->models[i], st);
	}
	for (uint64_t k = 0; k < im->n_entries; k++) {
		im->ents[k].it.model_id = im->models[im->ents[k].model].id;
		im->ents[k].value = lbd_store_item_value(st, &im->ents[k].it);
	}
	lift_values(im);
	for (uint64_t k = 0; k < im->n_entries; k++)
		im->by[k] = &im->ents[k];
	qsort(im->by, im->n_entries, sizeof(*im->by), cmp_value);
	/* A block whose parent was left out (budget, ttl) is -ENOENT: left out too. */
	for (uint64_t k = 0; k < im->n_entries; k++) {
		const struct lbd_store_item *it = &im->by[k]->it;
		if (it->model_id && lbd_store_restore(st, it) == 0) {
			out->entries++;
			out->blocks += it->layer == LB_ENTRY_LAYER_BLOCK;
			out->data_bytes += lbd_store_item_body(it);
		} else {
			out->entries_skipped++;
		}
	}
}

int lbd_snapshot_load_mem(const void *buf, size_t len, struct lbd_models *m, struct lbd_store *st,
			  struct lbd_snapshot_stats *out, char *err, size_t errlen)
{
	uint64_t t0 = lb_now_ns();
	struct image im = { .img = buf, .len = len };
	struct lbd_snapshot_stats res = { 0 };
	int ret;

	if (!im.img && len)
		return lbu_fail(err, errlen, -EBADMSG, "no image");
	ret = check_head(&im, err, errlen);
	if (ret < 0)
		return ret;
	im.models = calloc(im.n_models ? im.n_models : 1, sizeof(*im.models));
	im.ents = calloc(im.n_entries ? im.n_entries : 1, sizeof(*im.ents));
	im.by = calloc(im.n_entries ? im.n_entries : 1, sizeof(*im.by));
	if (!im.models || !im.ents || !im.by) {
		ret = lbu_fail(err, errlen, -ENOMEM, "out of memory for %" PRIu64 " entries",
			       im.n_entries);
		goto out;
	}
	ret = check_models(&im, err, errlen);
	if (ret == 0)
		ret = check_thresholds(&im, err, errlen);
	if (ret == 0)
		ret = check_entries(&im, err, errlen);
	if (ret < 0)
		goto out;

	/* Everything checked: from here on nothing is refused for what the file says. */
	res.models = im.n_models;
	res.file_bytes = len;
	res.written_s = im.written_s;
	if (m && st) {
		restore(&im, m, st, &res);
	} else {
		res.entries = im.n_entries;
		res.blocks = im.n_blocks;
		res.data_bytes = im.data_bytes;
	}
	res.ms = ms_since(t0);
	if (out)
		*out = res;
	lbu_errf(err, errlen, "%s", "");
out:
	free(im.models);
	free(im.ents);
	free(im.by);
	free(im.ids);
	return ret;
}

int lbd_snapshot_load(const char *path, struct lbd_models *m, struct lbd_store *st,
		      struct lbd_snapshot_stats *out, char *err, size_t errlen)
{
	uint64_t t0 = lb_now_ns();
	struct stat sb;
	void *img = NULL;
	int fd, ret;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		ret = -errno;
		if (ret == -ENOENT)
			return ret;
		return lbu_fail(err, errlen, ret, "%s", strerror(-ret));
	}
	if (fstat(fd, &sb) < 0) {
		ret = -errno;
		close(fd);
		return lbu_fail(err, errlen, ret, "fstat: %s", strerror(-ret));
	}
	if (!S_ISREG(sb.st_mode)) {
		close(fd);
		return lbu_fail(err, errlen, -EINVAL, "not a regular file");
	}
	/* Mapped, not read: a large snapshot needs no second copy of itself in memory. The
	 * daemon replaces the file by rename, never truncates it, so the mapping stays whole. */
	if (sb.st_size > 0) {
		img = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
		if (img == MAP_FAILED) {
			ret = -errno;
			close(fd);
			return lbu_fail(err, errlen, ret, "mmap: %s", strerror(-ret));
		}
	}
	close(fd);
	ret = lbd_snapshot_load_mem(img, (size_t)sb.st_size, m, st, out, err, errlen);
	if (img)
		munmap(img, (size_t)sb.st_size);
	if (ret == 0 && out)
		out->ms = ms_since(t0);
	return ret;
}
