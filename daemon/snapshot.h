/* layerbankd snapshot: the cached entries and the models they belong to in one file, written
 * with io_uring at stop (and on SNAPSHOT) and read back at start, so that a restart keeps the
 * cache warm. The format is specified in proto/PROTOCOL.md, "Snapshot file". */
#ifndef LAYERBANK_DAEMON_SNAPSHOT_H
#define LAYERBANK_DAEMON_SNAPSHOT_H

#include <stddef.h>
#include <stdint.h>

#include "models.h"
#include "store.h"

/* The file format (PROTOCOL.md, "Snapshot file"): little-endian fixed-width fields. */
#define LBD_SNAP_MAGIC "LBSNAPSH"     /* the first 8 bytes */
#define LBD_SNAP_VERSION 6u           /* 2: prefix blocks; 3: approx; 4: token ids;
				       * 5: the thresholds' controllers; 6: kv_layers */
#define LBD_SNAP_HDR_SIZE 128u
#define LBD_SNAP_MODEL_SIZE 128u
#define LBD_SNAP_ENTRY_SIZE 128u
#define LBD_SNAP_ALIGN 64u            /* entry records start at multiples of this */
#define LBD_SNAP_THR_SIZE 32u         /* a layer's record in a threshold block (version 5) */

/* The writer: chunks of this size, this many in flight at once. */
#define LBD_SNAP_CHUNK (4u << 20)
#define LBD_SNAP_DEPTH 4u

/* What a write or a load did. */
struct lbd_snapshot_stats {
	uint32_t models;          /* model records in the file */
	uint32_t models_skipped;  /* load: refused by the registry (a name taken by another
				   * description) or without memory for their bank */
	uint64_t entries;         /* entries written, or restored (layer entries and blocks) */
	uint64_t blocks;          /* of those, prefix blocks */
	uint64_t entries_skipped; /* load: over the budget, no block, expired, of a skipped model,
				   * a prefix block whose parent was skipped */
	uint64_t data_bytes;      /* entry data bytes written, or restored, token ids included
				   * (lbd_store_item_body) */
	uint64_t file_bytes;      /* size of the file */
	uint64_t written_s;       /* load: when the file was written (Unix time, from its header) */
	uint64_t ms;              /* time taken, in milliseconds */
};

/* Called by the writer between batches of chunks, with the bytes written so far and the
 * file's size: the daemon keeps systemd's watchdog and stop timeout fed from it. */
typedef void (*lbd_snapshot_progress_fn)(void *ctx, uint64_t done, uint64_t total);

/*
 * Write every live entry of st (layer entries and prefix blocks; a block whose parent is still
 * being copied waits for the next snapshot: lbd_store_hold_all), with the models of m it
 * belongs to (retired ones left out), to path: first to "path.tmp" (created anew, mode 0600)
 * in LBD_SNAP_CHUNK writes through an io_uring, LBD_SNAP_DEPTH in flight, then fsync, rename
 * onto path and fsync of the folder, so that path is always either the old file or the whole
 * new one. Runs on the caller's thread,
 * which must own m (the daemon's loop thread); the service threads go on serving meanwhile:
 * the entries are held with leases for the write (lbd_store_hold_all). progress may be NULL.
 * @return 0 with *out filled (may be NULL); -errno with one line in err (errlen bytes), path
 *         untouched and path.tmp removed: -ENAMETOOLONG, -ENOMEM, or what open, write, fsync
 *         or rename said (-ENOSPC, -EACCES, -EIO, ...).
 */
int lbd_snapshot_write(const char *path, const struct lbd_models *m, struct lbd_store *st,
		       const uint8_t boot_id[16], lbd_snapshot_progress_fn progress, void *ctx,
		       struct lbd_snapshot_stats *out, char *err, size_t errlen);

/*
 * The loader's core, on a memory image of a file: check all of it first — the header, every
 * record, every checksum and range, the data of every entry, and that the entries agree with
 * each other and with their models, every prefix block's parent in the file — and only then,
 * when m and st are not NULL, register its models in m (provisionally: lbd_models_restore) and
 * in st, and restore its entries into st, the most valuable first by st's policy
 * (lbd_store_item_value; a block counts as the most valuable block of its subtree, and a
 * parent goes before its children), each that still fits within the budget; a block whose
 * parent was left out is left out too. A file that fails a check changes nothing. buf need
 * not be aligned. With m and st NULL it only checks (a fuzzer's entry point).
 * @return 0 with *out filled (may be NULL); -EBADMSG (truncated, corrupted or inconsistent),
 *         -EPROTO (another format version or arena ABI), -ENOMEM; err (errlen bytes) then holds
 *         one line saying what is wrong and where.
 */
int lbd_snapshot_load_mem(const void *buf, size_t len, struct lbd_models *m, struct lbd_store *st,
			  struct lbd_snapshot_stats *out, char *err, size_t errlen);

/*
 * lbd_snapshot_load_mem on the file at path, mapped read-only.
 * @return as lbd_snapshot_load_mem; -ENOENT when there is no file (nothing said in err);
 *         -EINVAL when it is not a regular file; -errno of open, fstat or mmap.
 */
int lbd_snapshot_load(const char *path, struct lbd_models *m, struct lbd_store *st,
		      struct lbd_snapshot_stats *out, char *err, size_t errlen);

#endif
