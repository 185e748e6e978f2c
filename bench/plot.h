/* bplot: PNG charts (line and grouped-bar panels in a grid) for the benchmarks' --plot, drawn in
 * memory with an embedded 5x7 font and written with zlib: no plotting tools needed. */
#ifndef LAYERBANK_BENCH_PLOT_H
#define LAYERBANK_BENCH_PLOT_H

#include <stddef.h>

enum bplot_kind { BPLOT_LINES = 0, BPLOT_BARS = 1 };

/* Panel and figure size limits, in pixels and panels. */
#define BPLOT_MIN_SIDE 100
#define BPLOT_MAX_SIDE 4000
#define BPLOT_MAX_PANELS 64
#define BPLOT_MAX_PIXELS (32L * 1024 * 1024) /* whole figure: 96 MiB of RGB at most */

/*
 * One data series. Series i of a panel is drawn in palette colour i % 8, in this order (RGB):
 * (31,119,180) blue, (255,127,14) orange, (44,160,44) green, (214,39,40) red,
 * (148,103,189) purple, (140,86,75) brown, (227,119,194) pink, (23,190,207) cyan.
 * The pointers are read during bplot_write_png only.
 */
struct bplot_series {
	const char *label;      /* legend text; NULL: no legend entry */
	const double *y;        /* [n] values; NaN or +-inf: no point (a gap in a line, no bar) */
	const double *x;        /* [n] for LINES (NULL: 0..n-1); ignored for BARS */
	int n;
};

struct bplot_panel {
	const char *title, *xlabel, *ylabel; /* each may be NULL: not drawn */
	enum bplot_kind kind;
	const struct bplot_series *series; /* [n_series] */
	int n_series;
	const char *const *categories; /* BARS: [n] labels under the groups, NULL or NULL entries:
					* none. series[i].y[j] is bar i of group j. */
	double ymin, ymax;      /* both 0: automatic from the data (with 0 included for bars);
				 * otherwise finite with ymin < ymax, and data outside is clipped */
};

/*
 * Draw n_panels panels side by side in a grid of min(cols, n_panels) columns, filled row by
 * row, each panel w x h pixels, and write the figure to path as an 8-bit RGB PNG. The file
 * appears complete or not at all: it is written to a temporary file in path's folder, synced
 * and renamed into place; on failure the temporary file is removed. Text is printable ASCII
 * (other bytes draw as '?'); text that does not fit is cut.
 *
 * err: NULL, or errlen bytes that get a one-line reason on failure.
 * @return 0 on success;
 *   -EINVAL bad arguments: NULL path or panels, n_panels outside 1..BPLOT_MAX_PANELS, cols < 1,
 *           w or h outside BPLOT_MIN_SIDE..BPLOT_MAX_SIDE, a figure over BPLOT_MAX_PIXELS,
 *           an unknown kind, n_series < 0, NULL series with n_series > 0, n < 0, NULL y with
 *           n > 0, series of different lengths in a BARS panel, a bad ymin/ymax pair, or
 *           finite data whose range overflows a double;
 *   -ENOMEM out of memory;
 *   -errno  from creating, writing, syncing or renaming the file (-ENOENT: no such folder).
 */
int bplot_write_png(const char *path, const struct bplot_panel *panels, int n_panels, int cols,
		    int w, int h, char *err, size_t errlen);

#endif
