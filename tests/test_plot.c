/* Tests for bench/plot.h: the PNG is well formed (signature, chunk CRCs, IHDR, IDAT inflating to
 * h * (1 + 3w)), series colours land in their own panels, lines slope the right way, NaN and
 * out-of-range values are skipped or clipped, bad arguments and file errors leave no file. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "plot.h"
#include "testutil.h"

/* The palette plot.h documents: series i is drawn in PAL[i % 8]. */
static const uint8_t PAL[8][3] = {
	{ 31, 119, 180 }, { 255, 127, 14 }, { 44, 160, 44 },  { 214, 39, 40 },
	{ 148, 103, 189 }, { 140, 86, 75 }, { 227, 119, 194 }, { 23, 190, 207 },
};

#define W 480
#define H 320

/* A decoded image: the inflated IDAT, one filter byte then RGB per row. */
struct img {
	int w, h;
	uint8_t *raw; /* [h][1 + 3w] */
};

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint8_t *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	assert_non_null(f);
	assert_int_equal(fseek(f, 0, SEEK_END), 0);
	long n = ftell(f);
	assert_true(n > 0);
	rewind(f);
	uint8_t *buf = malloc((size_t)n);
	assert_non_null(buf);
	assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
	fclose(f);
	*len = (size_t)n;
	return buf;
}

/* Read path as a PNG and check it chunk by chunk; fills im. */
static void png_load(const char *path, struct img *im)
{
	static const uint8_t sig[8] = { 0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n' };
	size_t len, off = 8, zlen = 0;
	uint8_t *buf = slurp(path, &len), *z = NULL;
	int seen_ihdr = 0, seen_iend = 0;

	assert_true(len > 8);
	assert_memory_equal(buf, sig, 8);
	while (off < len && !seen_iend) {
		assert_true(len - off >= 12);
		uint32_t n = get32(buf + off);
		assert_true(n <= len - off - 12);
		const uint8_t *type = buf + off + 4, *data = buf + off + 8;
		uint32_t crc = (uint32_t)crc32(crc32(0, NULL, 0), type, n + 4);
		assert_int_equal(get32(data + n), crc);
		if (!memcmp(type, "IHDR", 4)) {
			assert_int_equal(off, 8); /* IHDR comes first */
			assert_int_equal(n, 13);
			im->w = (int)get32(data);
			im->h = (int)get32(data + 4);
			assert_int_equal(data[8], 8); /* bit depth */
			assert_int_equal(data[9], 2); /* colour type RGB */
			assert_int_equal(data[10] | data[11] | data[12], 0);
			seen_ihdr = 1;
		} else if (!memcmp(type, "IDAT", 4)) {
			assert_true(seen_ihdr);
			z = realloc(z, zlen + n);
			assert_non_null(z);
			memcpy(z + zlen, data, n);
			zlen += n;
		} else if (!memcmp(type, "IEND", 4)) {
			assert_int_equal(n, 0);
			seen_iend = 1;
		}
		off += 12 + n;
	}
	assert_true(seen_iend);
	assert_int_equal(off, len); /* nothing after IEND */
	assert_non_null(z);

	size_t want = (size_t)im->h * (1 + 3 * (size_t)im->w);
	uLongf got = want + 64; /* room for a too-long stream to show itself */
	im->raw = malloc(got);
	assert_non_null(im->raw);
	assert_int_equal(uncompress(im->raw, &got, z, zlen), Z_OK);
	assert_int_equal(got, want);
	for (int y = 0; y < im->h; y++)
		assert_int_equal(im->raw[(size_t)y * (1 + 3 * (size_t)im->w)], 0); /* filter none */
	free(z);
	free(buf);
}

static const uint8_t *px(const struct img *im, int x, int y)
{
	return im->raw + (size_t)y * (1 + 3 * (size_t)im->w) + 1 + 3 * (size_t)x;
}

static int is(const uint8_t *p, const uint8_t rgb[3])
{
	return p[0] == rgb[0] && p[1] == rgb[1] && p[2] == rgb[2];
}

/* Pixels of colour rgb in columns [x0, x1) of the image. */
static long count(const struct img *im, int x0, int x1, const uint8_t rgb[3])
{
	long n = 0;
	for (int y = 0; y < im->h; y++)
		for (int x = x0; x < x1; x++)
			n += is(px(im, x, y), rgb);
	return n;
}

static const uint8_t WHITE[3] = { 255, 255, 255 };

/* Files in dir, other than . and .. */
static int entries(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int n = 0;
	assert_non_null(d);
	while ((e = readdir(d)))
		n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
	closedir(d);
	return n;
}

static int cmp_int(const void *a, const void *b)
{
	return *(const int *)a - *(const int *)b;
}

/*
 * Where a line of colour rgb sits at the left and at the right of columns [x0, x1): per column
 * its lowest pixel (largest row), then the median over the first and the last third of the
 * columns that have it. The median keeps a legend swatch from mattering.
 */
static void line_ends(const struct img *im, int x0, int x1, const uint8_t rgb[3], int *left,
		      int *right)
{
	int rows[4000], n = 0;
	for (int x = x0; x < x1; x++) {
		int low = -1;
		for (int y = 0; y < im->h; y++)
			if (is(px(im, x, y), rgb))
				low = y;
		if (low >= 0)
			rows[n++] = low;
	}
	assert_true(n >= 30);
	int third = n / 3, a[1400], b[1400];
	memcpy(a, rows, sizeof(int) * (size_t)third);
	memcpy(b, rows + n - third, sizeof(int) * (size_t)third);
	qsort(a, (size_t)third, sizeof(int), cmp_int);
	qsort(b, (size_t)third, sizeof(int), cmp_int);
	*left = a[third / 2];
	*right = b[third / 2];
}

/* Runs of consecutive columns in [x0, x1) that hold colour rgb. */
static int column_runs(const struct img *im, int x0, int x1, const uint8_t rgb[3])
{
	int runs = 0, in = 0;
	for (int x = x0; x < x1; x++) {
		int has = 0;
		for (int y = 0; y < im->h && !has; y++)
			has = is(px(im, x, y), rgb);
		runs += has && !in;
		in = has;
	}
	return runs;
}

/* Each test gets a fresh folder in *state; teardown removes it, also after a failed assertion. */
static int make_dir(void **state)
{
	char *dir = malloc(256);
	assert_non_null(dir);
	lbt_mkdtemp(dir, 256);
	*state = dir;
	return 0;
}

static int remove_dir(void **state)
{
	lbu_rmtree(*state);
	free(*state);
	return 0;
}

/* ---- a two-panel figure: lines (up and down) beside grouped bars ---- */

static void test_two_panels(void **state)
{
	const char *dir = *state;
	char path[300];
	double xs[20], up[20], down[20];
	for (int i = 0; i < 20; i++)
		xs[i] = i * 0.5, up[i] = i * i, down[i] = 380 - 20 * i;
	const struct bplot_series lines[2] = {
		{ "rising", up, xs, 20 },
		{ "falling", down, xs, 20 },
	};
	const double b0[4] = { 3, 5, 2, 8 }, b1[4] = { 4, 1, 6, 7 }, b2[4] = { 2, 2, 9, 1 };
	const struct bplot_series bars[3] = {
		{ "p50", b0, NULL, 4 }, { "p99", b1, NULL, 4 }, { "max", b2, NULL, 4 },
	};
	const char *const cats[4] = { "1 kB", "64 kB", "1 MB", "16 MB" };
	const struct bplot_panel panels[2] = {
		{ .title = "Lookup latency", .xlabel = "clients", .ylabel = "us", .kind = BPLOT_LINES,
		  .series = lines, .n_series = 2 },
		{ .title = "Throughput", .xlabel = "value size", .ylabel = "GB/s", .kind = BPLOT_BARS,
		  .series = bars, .n_series = 3, .categories = cats },
	};
	char err[200] = "";
	struct img im;

	snprintf(path, sizeof(path), "%s/fig.png", dir);
	assert_int_equal(bplot_write_png(path, panels, 2, 2, W, H, err, sizeof(err)), 0);
	assert_int_equal(entries(dir), 1); /* the PNG, no temporary file left */
	png_load(path, &im);
	assert_int_equal(im.w, 2 * W);
	assert_int_equal(im.h, H);

	/* Each series' colour inside its panel; series 2 exists only in the right one. */
	assert_true(count(&im, 0, W, PAL[0]) > 200);
	assert_true(count(&im, 0, W, PAL[1]) > 200);
	assert_int_equal(count(&im, 0, W, PAL[2]), 0);
	for (int i = 0; i < 3; i++)
		assert_true(count(&im, W, 2 * W, PAL[i]) > 500);
	/* Mostly white, but with text and axes drawn in each panel. */
	for (int p = 0; p < 2; p++) {
		long white = count(&im, p * W, (p + 1) * W, WHITE);
		assert_true(white > (long)W * H * 6 / 10);
		assert_true(white < (long)W * H - 2000);
	}

	/* The rising line ends higher (a smaller row) than it starts, the falling one lower. */
	int l, r;
	line_ends(&im, 0, W, PAL[0], &l, &r);
	assert_true(r < l - 50);
	line_ends(&im, 0, W, PAL[1], &l, &r);
	assert_true(r > l + 50);

	/* Bars grow with their values: the column with the most pixels of series 2 is in its bar of
	 * 9, in group 2 of 4 (the third quarter of the panel, give or take the margins). */
	int top_col = -1;
	long top_n = 0;
	for (int x = W; x < 2 * W; x++) {
		long n = count(&im, x, x + 1, PAL[2]);
		if (n > top_n)
			top_n = n, top_col = x;
	}
	assert_true(top_col > W + W / 2 && top_col < W + W * 3 / 4 + W / 8);

	free(im.raw);
}

/* ---- NaN, inf and values outside a fixed range ---- */

static void test_nan_and_inf_skipped(void **state)
{
	const char *dir = *state;
	char path[300], err[200] = "";
	const double gap[6] = { 1, 1, NAN, NAN, 9, 9 };
	const double none[4] = { NAN, INFINITY, -INFINITY, NAN };
	const double wild[5] = { -1e300, 1e300, 5, 1e308, -INFINITY };
	const double bars_y[4] = { NAN, 2, INFINITY, -NAN };
	/* Labels NULL: no legend swatch, so every pixel of a colour is data. The gapped series is
	 * drawn last, so that no other line paints over it and splits it. */
	const struct bplot_series lines[3] = {
		{ NULL, wild, NULL, 5 }, { NULL, none, NULL, 4 }, { NULL, gap, NULL, 6 },
	};
	const struct bplot_series bars[2] = { { NULL, none, NULL, 4 }, { NULL, bars_y, NULL, 4 } };
	const struct bplot_series all_nan = { "nothing", none, NULL, 4 };
	const struct bplot_panel panels[3] = {
		{ .title = "gaps", .kind = BPLOT_LINES, .series = lines, .n_series = 3, .ymin = 0, .ymax = 10 },
		{ .title = "bars", .kind = BPLOT_BARS, .series = bars, .n_series = 2 },
		{ .title = "empty", .kind = BPLOT_LINES, .series = &all_nan, .n_series = 1 },
	};
	struct img im;

	snprintf(path, sizeof(path), "%s/nan.png", dir);
	assert_int_equal(bplot_write_png(path, panels, 3, 3, 300, 200, err, sizeof(err)), 0);
	png_load(path, &im);
	assert_int_equal(im.w, 900);
	assert_int_equal(im.h, 200);

	/* The NaNs cut the gapped series in two: two runs of columns, not one line through. */
	assert_int_equal(column_runs(&im, 0, 300, PAL[2]), 2);
	/* No finite value, no pixel: series 1 of the lines, series 0 of the bars. */
	assert_int_equal(count(&im, 0, 300, PAL[1]), 0);
	assert_int_equal(count(&im, 300, 600, PAL[0]), 0);
	/* The wild values (+-1e300, 1e308 against 0..10) are drawn but clipped to the plot area:
	 * nothing in the title rows or the tick-label rows. */
	long wild_px = 0;
	for (int y = 0; y < im.h; y++)
		for (int x = 0; x < 300; x++)
			if (is(px(&im, x, y), PAL[0])) {
				assert_true(y >= 30 && y < im.h - 20);
				wild_px++;
			}
	assert_true(wild_px > 50);
	/* The bar panel draws exactly one bar: the finite 2. */
	assert_int_equal(column_runs(&im, 300, 600, PAL[1]), 1);

	free(im.raw);
}

/* ---- bad arguments: -EINVAL, a reason, no file ---- */

static void test_bad_arguments(void **state)
{
	const char *dir = *state;
	char path[300], err[200];
	const double y3[3] = { 1, 2, 3 }, y2[2] = { 1, 2 };
	struct bplot_series s = { "s", y3, NULL, 3 };
	struct bplot_series two[2] = { { "a", y3, NULL, 3 }, { "b", y2, NULL, 2 } };
	struct bplot_panel ok = { .kind = BPLOT_LINES, .series = &s, .n_series = 1 };

	snprintf(path, sizeof(path), "%s/bad.png", dir);

#define BAD(call)                                                      \
	do {                                                           \
		err[0] = 0;                                            \
		assert_int_equal((call), -EINVAL);                     \
		assert_true(strlen(err) > 0);                          \
		assert_null(strchr(err, '\n'));                        \
		assert_int_equal(entries(dir), 0);                     \
	} while (0)

	BAD(bplot_write_png(NULL, &ok, 1, 1, W, H, err, sizeof(err)));
	BAD(bplot_write_png("", &ok, 1, 1, W, H, err, sizeof(err)));
	BAD(bplot_write_png(path, NULL, 1, 1, W, H, err, sizeof(err)));
	BAD(bplot_write_png(path, &ok, 0, 1, W, H, err, sizeof(err)));
	BAD(bplot_write_png(path, &ok, BPLOT_MAX_PANELS + 1, 1, W, H, err, sizeof(err)));
	BAD(bplot_write_png(path, &ok, 1, 0, W, H, err, sizeof(err)));
	BAD(bplot_write_png(path, &ok, 1, 1, BPLOT_MIN_SIDE - 1, H, err, sizeof(err)));
	BAD(bplot_write_png(path, &ok, 1, 1, W, BPLOT_MAX_SIDE + 1, err, sizeof(err)));

	struct bplot_panel p = ok;
	p.kind = (enum bplot_kind)7;
	BAD(bplot_write_png(path, &p, 1, 1, W, H, err, sizeof(err)));
	p = ok, p.n_series = -1;
	BAD(bplot_write_png(path, &p, 1, 1, W, H, err, sizeof(err)));
	p = ok, p.series = NULL;
	BAD(bplot_write_png(path, &p, 1, 1, W, H, err, sizeof(err)));
	p = ok, p.ymin = 5, p.ymax = 5;
	BAD(bplot_write_png(path, &p, 1, 1, W, H, err, sizeof(err)));
	p = ok, p.ymin = NAN, p.ymax = 1;
	BAD(bplot_write_png(path, &p, 1, 1, W, H, err, sizeof(err)));
	s.n = -1;
	BAD(bplot_write_png(path, &ok, 1, 1, W, H, err, sizeof(err)));
	s.n = 3, s.y = NULL;
	BAD(bplot_write_png(path, &ok, 1, 1, W, H, err, sizeof(err)));
	s.y = y3;
	p = ok, p.kind = BPLOT_BARS, p.series = two, p.n_series = 2; /* lengths 3 and 2 */
	BAD(bplot_write_png(path, &p, 1, 1, W, H, err, sizeof(err)));
	/* The same lengths as lines are fine; so is err == NULL on a failure. */
	p.kind = BPLOT_LINES;
	assert_int_equal(bplot_write_png(path, &p, 1, 1, W, H, err, sizeof(err)), 0);
	assert_int_equal(bplot_write_png(path, &p, 1, 0, W, H, NULL, 0), -EINVAL);
#undef BAD
}

/* ---- file errors: -errno and no temporary file left behind ---- */

static void test_file_errors_leave_no_temporary(void **state)
{
	const char *dir = *state;
	char path[300], err[200] = "";
	const double y[3] = { 1, 2, 3 };
	const struct bplot_series s = { "s", y, NULL, 3 };
	const struct bplot_panel p = { .title = "t", .kind = BPLOT_LINES, .series = &s, .n_series = 1 };

	snprintf(path, sizeof(path), "%s/missing/fig.png", dir);
	assert_int_equal(bplot_write_png(path, &p, 1, 1, W, H, err, sizeof(err)), -ENOENT);
	assert_true(strlen(err) > 0);
	assert_int_equal(entries(dir), 0);

	/* A folder where the file should go: the temporary file is written, the rename fails. */
	snprintf(path, sizeof(path), "%s/sub", dir);
	assert_int_equal(mkdir(path, 0700), 0);
	err[0] = 0;
	assert_int_equal(bplot_write_png(path, &p, 1, 1, W, H, err, sizeof(err)), -EISDIR);
	assert_true(strlen(err) > 0);
	assert_int_equal(entries(dir), 1); /* only sub */
	assert_int_equal(entries(path), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_two_panels, make_dir, remove_dir),
		cmocka_unit_test_setup_teardown(test_nan_and_inf_skipped, make_dir, remove_dir),
		cmocka_unit_test_setup_teardown(test_bad_arguments, make_dir, remove_dir),
		cmocka_unit_test_setup_teardown(test_file_errors_leave_no_temporary, make_dir, remove_dir),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
