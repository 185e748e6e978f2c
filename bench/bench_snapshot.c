/* layerbank-bench snapshot: what a warm restart costs with a full arena. It runs a layerbankd of
 * its own (--snapshot in a temporary folder), fills the arena with 384 KiB entries (a BERT-base
 * layer at 128 tokens) up to its budget, then times SNAPSHOT against a plain write + fsync +
 * rename of as many bytes, and the restore at start against a plain read of the file, with the
 * file in the page cache and out of it. Everything it starts it stops; the folder goes too. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "io.h"
#include "layerbank/layerbank.h"
#include "layerbank/ring.h"
#include "size.h"

#define SNAP_SEQ 128
#define SNAP_HIDDEN 768
#define SNAP_LAYERS 12
#define SNAP_ACT ((uint64_t)SNAP_SEQ * SNAP_HIDDEN * sizeof(float))
#define REPS 3
#define CHUNK (4u << 20)

static char sdir[256], ssock[300], slog[300], spath[300];
static pid_t sdaemon = -1;

static double now_ms(void)
{
	return (double)lb_now_ns() / 1e6;
}

static void scleanup(void)
{
	lbb_stop(&sdaemon);
	lbu_rmtree(sdir);
}

/* Start the daemon; @return ms from fork to its first answer (it answers after the restore). */
static double start_daemon(const char *arena, const char *snapshot)
{
	const char *argv[] = { LB_DAEMON_PATH, "--foreground", "--socket", ssock, "--arena-size",
			       arena, "--hugepages", "try", "--snapshot", snapshot, NULL };
	double t0 = now_ms();
	struct lb_client *c = NULL;
	struct lb_stats st;

	unlink(ssock);
	sdaemon = lbb_spawn(argv, slog);
	if (sdaemon < 0)
		lbb_die("snapshot", "fork", errno);
	for (int i = 0; i < 60000; i++) {
		if (lb_connect(ssock, "bench", &c) == 0 && lb_stats(c, &st, sizeof(st)) == 0) {
			double ms = now_ms() - t0;
			lb_close(c);
			return ms;
		}
		lb_close(c);
		c = NULL;
		if (waitpid(sdaemon, NULL, WNOHANG) == sdaemon) {
			sdaemon = -1;
			lbb_die("snapshot", "layerbankd exited at start (its log: see --keep)", EIO);
		}
		struct timespec ts = { 0, 1000000 };
		nanosleep(&ts, NULL);
	}
	lbb_die("snapshot", "layerbankd did not answer within 60 s", ETIMEDOUT);
	return 0;
}

/* The daemon's own figure for the restore, from its log. */
static double restore_ms(uint64_t *entries)
{
	FILE *f = fopen(slog, "r");
	char line[4096];
	double ms = -1;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		/* "snapshot PATH: N entries (...) of M models restored in T ms, ..." */
		const char *p = strstr(line, "models restored in ");
		const char *e = strstr(line, ".snap: ");
		unsigned long long v, n;
		if (p && sscanf(p, "models restored in %llu ms", &v) == 1) {
			ms = (double)v;
			if (e && sscanf(e, ".snap: %llu entries", &n) == 1)
				*entries = n;
		}
	}
	fclose(f);
	return ms;
}

/* Drop the file's pages from the page cache (clean after the writer's fsync). */
static void uncache(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		lbb_die("snapshot", path, errno);
	fdatasync(fd);
	posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
	close(fd);
}

/* The baseline of the write: as many bytes, from the arena (this client's read-only mapping
 * of the same memory the daemon copies from), in the same chunks, write + fsync + rename. */
static double plain_write_ms(uint64_t bytes, const uint8_t *arena, uint64_t arena_bytes)
{
	char tmp[320], dst[320];
	snprintf(tmp, sizeof(tmp), "%s/plain.tmp", sdir);
	snprintf(dst, sizeof(dst), "%s/plain", sdir);
	double t0 = now_ms();
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		lbb_die("snapshot", tmp, errno);
	for (uint64_t off = 0; off < bytes;) {
		size_t n = bytes - off < CHUNK ? (size_t)(bytes - off) : CHUNK;
		ssize_t w = pwrite(fd, arena + off % (arena_bytes - CHUNK), n, (off_t)off);
		if (w <= 0)
			lbb_die("snapshot", "write", w < 0 ? errno : EIO);
		off += (uint64_t)w;
	}
	if (fsync(fd) < 0)
		lbb_die("snapshot", "fsync", errno);
	close(fd);
	if (rename(tmp, dst) < 0)
		lbb_die("snapshot", "rename", errno);
	return now_ms() - t0;
}

/* The baseline of the load: read the whole file into memory never written before, as the
 * restore copies into an arena never written since it was made. */
static double plain_read_ms(const char *path, uint64_t bytes)
{
	double t0 = now_ms();
	uint8_t *buf = malloc(bytes);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || !buf)
		lbb_die("snapshot", path, fd < 0 ? errno : ENOMEM);
	for (uint64_t off = 0; off < bytes;) {
		ssize_t r = pread(fd, buf + off, bytes - off, (off_t)off);
		if (r <= 0)
			lbb_die("snapshot", "read", r < 0 ? errno : EIO);
		off += (uint64_t)r;
	}
	close(fd);
	free(buf);
	return now_ms() - t0;
}

static void key_of(uint64_t i, struct lb_key *k)
{
	uint64_t s = i * 0x9e3779b97f4a7c15ull + 1;
	for (int w = 0; w < 4; w++) {
		s ^= s << 13;
		s ^= s >> 7;
		s ^= s << 17;
		k->fp[w] = s;
	}
	k->exact[0] = i + 1;
	k->exact[1] = ~i;
	k->seq_len = SNAP_SEQ;
}

/* Fill to the budget: entries that all fit, none evicted. @return entries inserted. */
static uint64_t fill(uint64_t *data_bytes)
{
	const struct lb_model_desc d = { .name = "bench-bert", .weights_hash = 1, .n_layers = SNAP_LAYERS,
					 .hidden = SNAP_HIDDEN, .dtype = LB_DTYPE_F32,
					 .max_seq = SNAP_SEQ, .fp_chunks = 4, .fp_seed = 1 };
	const struct lb_shape sh = { LB_DTYPE_F32, 2, { SNAP_SEQ, SNAP_HIDDEN, 0, 0 } };
	struct lb_client *c;
	struct lb_stats st;
	uint32_t model;
	int ret;

	if ((ret = lb_connect(ssock, "bench-fill", &c)) < 0)
		lbb_die("snapshot", "connect", -ret);
	if ((ret = lb_register_model(c, &d, &model)) < 0 || (ret = lb_stats(c, &st, sizeof(st))) < 0)
		lbb_die("snapshot", "register", -ret);
	uint64_t need = (LB_ENTRY_HDR_SIZE + SNAP_ACT + 63) & ~63ull;
	uint64_t n = st.bytes_budget / need;
	for (uint64_t i = 0; i < n; i++) {
		struct lb_key k;
		float *p = lb_insert_reserve(c, SNAP_ACT);
		if (!p)
			lbb_die("snapshot", "lb_insert_reserve", errno);
		for (uint64_t j = 0; j < SNAP_ACT / sizeof(float); j++)
			p[j] = (float)(i * 31 + j % 977) * 0.001f;
		key_of(i / SNAP_LAYERS, &k);
		ret = lb_insert_commit(c, model, (uint32_t)(i % SNAP_LAYERS), &k, &sh);
		if (ret < 0)
			lbb_die("snapshot", "lb_insert_commit", -ret);
	}
	if ((ret = lb_stats(c, &st, sizeof(st))) < 0)
		lbb_die("snapshot", "stats", -ret);
	lb_close(c);
	if (st.evictions || st.entries != n)
		fprintf(stderr, "layerbank-bench snapshot: %" PRIu64 " entries, %" PRIu64 " evicted\n",
			st.entries, st.evictions);
	*data_bytes = st.bytes_used;
	return st.entries;
}

int bench_snapshot_main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "arena-size", required_argument, NULL, 'a' },
		{ "dir", required_argument, NULL, 'd' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *arena = "256M", *base = NULL;
	uint64_t arena_bytes;
	int json = 0, ch;

	optind = 1;
	while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (ch) {
		case 'a':
			arena = optarg;
			if (lbu_parse_size(arena, &arena_bytes) < 0 || arena_bytes < (16u << 20)) {
				fprintf(stderr, "layerbank-bench snapshot: --arena-size: '%s' is not a size of 16M or more\n", arena);
				return 2;
			}
			break;
		case 'd':
			base = optarg;
			break;
		case 'j':
			json = 1;
			break;
		case 'h':
			printf("usage: layerbank-bench snapshot [--arena-size SIZE (256M)] [--dir DIR] [--json]\n"
			       "  times SNAPSHOT and the restore at start of a full arena against plain\n"
			       "  file I/O of as many bytes; the files go in a new folder under DIR\n"
			       "  (default $TMPDIR, else /tmp)\n");
			return 0;
		default:
			fprintf(stderr, "layerbank-bench snapshot: bad option; see --help\n");
			return 2;
		}
	}
	lbb_tempdir(sdir, sizeof(sdir), base, "snapshot", scleanup);
	snprintf(ssock, sizeof(ssock), "%s/lb.sock", sdir);
	snprintf(slog, sizeof(slog), "%s/daemon.log", sdir);
	snprintf(spath, sizeof(spath), "%s/bench.snap", sdir);

	char none[320];
	snprintf(none, sizeof(none), "%s/no-such.snap", sdir);
	start_daemon(arena, spath);
	uint64_t data_bytes = 0, entries = fill(&data_bytes);

	/* Writes: SNAPSHOT, as the daemon times it and as the caller waits for it. */
	double w_daemon[REPS], w_wall[REPS], w_plain[REPS];
	struct lb_snapshot_info info = { 0 };
	struct lb_client *c;
	int ret = lb_connect(ssock, "bench", &c);
	if (ret < 0)
		lbb_die("snapshot", "connect", -ret);
	for (int r = 0; r < REPS; r++) {
		double t0 = now_ms();
		if ((ret = lb_snapshot(c, &info)) < 0)
			lbb_die("snapshot", "lb_snapshot", -ret);
		w_wall[r] = now_ms() - t0;
		w_daemon[r] = (double)info.ms;
	}
	size_t abytes;
	const uint8_t *abase = lb_arena_base(c, 0, &abytes);
	for (int r = 0; r < REPS; r++)
		w_plain[r] = plain_write_ms(info.bytes, abase, abytes);
	lb_close(c);

	/* Loads: restart with the file cached, and not; against a start without a file and a
	 * plain read. The stop before each start writes the file again (timed in the log). */
	double l_warm[REPS], l_cold[REPS], s_warm[REPS], s_cold[REPS], r_warm[REPS], r_cold[REPS],
		s_empty[REPS];
	uint64_t restored = 0;
	for (int r = 0; r < REPS; r++) {
		lbb_stop(&sdaemon);
		s_warm[r] = start_daemon(arena, spath);
		l_warm[r] = restore_ms(&restored);
		lbb_stop(&sdaemon);
		uncache(spath);
		s_cold[r] = start_daemon(arena, spath);
		l_cold[r] = restore_ms(&restored);
		lbb_stop(&sdaemon);
		s_empty[r] = start_daemon(arena, none);
		r_warm[r] = plain_read_ms(spath, info.bytes);
		uncache(spath);
		r_cold[r] = plain_read_ms(spath, info.bytes);
	}
	lbb_stop(&sdaemon);

	double mib = (double)info.bytes / (1 << 20);
	double wd = lbb_median(w_daemon, REPS), ww = lbb_median(w_wall, REPS), wp = lbb_median(w_plain, REPS);
	double lw = lbb_median(l_warm, REPS), lc = lbb_median(l_cold, REPS);
	double rw = lbb_median(r_warm, REPS), rc = lbb_median(r_cold, REPS);
	double sw = lbb_median(s_warm, REPS), sc = lbb_median(s_cold, REPS), se = lbb_median(s_empty, REPS);
	if (json) {
		json_object *o = json_object_new_object();
		json_object_object_add(o, "arena", json_object_new_string(arena));
		json_object_object_add(o, "entries", json_object_new_uint64(entries));
		json_object_object_add(o, "restored", json_object_new_uint64(restored));
		json_object_object_add(o, "file_bytes", json_object_new_uint64(info.bytes));
		json_object_object_add(o, "write_ms", json_object_new_double(wd));
		json_object_object_add(o, "write_wall_ms", json_object_new_double(ww));
		json_object_object_add(o, "plain_write_ms", json_object_new_double(wp));
		json_object_object_add(o, "restore_cached_ms", json_object_new_double(lw));
		json_object_object_add(o, "restore_uncached_ms", json_object_new_double(lc));
		json_object_object_add(o, "plain_read_cached_ms", json_object_new_double(rw));
		json_object_object_add(o, "plain_read_uncached_ms", json_object_new_double(rc));
		json_object_object_add(o, "start_empty_ms", json_object_new_double(se));
		json_object_object_add(o, "start_cached_ms", json_object_new_double(sw));
		json_object_object_add(o, "start_uncached_ms", json_object_new_double(sc));
		puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
		json_object_put(o);
		return 0;
	}
	printf("snapshot of a full %s arena: %" PRIu64 " entries of %" PRIu64 " KiB (%.1f MiB held),"
	       " file %.1f MiB; %" PRIu64 " restored; medians of %d\n\n", arena, entries, SNAP_ACT >> 10,
	       (double)data_bytes / (1 << 20), mib, restored, REPS);
	printf("| step | ms | MiB/s | vs plain file I/O |\n|---|---|---|---|\n");
	printf("| SNAPSHOT: write, fsync, rename (daemon's figure) | %.0f | %.0f | %.2fx |\n", wd,
	       mib / wd * 1e3, wd / wp);
	printf("| SNAPSHOT as the caller waits for it | %.0f | %.0f | %.2fx |\n", ww, mib / ww * 1e3, ww / wp);
	printf("| plain write + fsync + rename of as many arena bytes, 4 MiB chunks | %.0f | %.0f | 1.00x |\n", wp, mib / wp * 1e3);
	printf("| restore at start, file in the page cache (daemon's figure) | %.0f | %.0f | %.2fx |\n", lw,
	       mib / lw * 1e3, lw / rw);
	printf("| plain read of the file into fresh memory, in the page cache | %.0f | %.0f | 1.00x |\n", rw, mib / rw * 1e3);
	printf("| restore at start, file not cached (daemon's figure) | %.0f | %.0f | %.2fx |\n", lc,
	       mib / lc * 1e3, lc / rc);
	printf("| plain read of the file into fresh memory, not cached | %.0f | %.0f | 1.00x |\n", rc, mib / rc * 1e3);
	printf("\nstart to first answer: %.0f ms without a snapshot, %.0f ms restoring it cached "
	       "(+%.0f), %.0f ms uncached (+%.0f)\n", se, sw, sw - se, sc, sc - se);
	return 0;
}
