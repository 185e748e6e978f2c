/* bplot: rasterises line and bar panels into an RGB canvas (5x7 font, clipped primitives, nice
 * 1/2/5 ticks) and writes it as a PNG with zlib, via a temporary file renamed into place. */
#include "plot.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "errf.h"

/* ---- font: printable ASCII 32..126, 5x7 plus a descender row (g j p q y , ;); row 0 on top,
 * bit 4 is the leftmost column ---- */

#define GLYPH_W 5
#define GLYPH_H 8
#define ADVANCE 6 /* pixels from one character to the next at scale 1 */

static const uint8_t font5x7[95][GLYPH_H] = {
	{ 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00 }, /* ' ' */
	{ 0x04, 0x04, 0x04, 0x04, 0x04, 0x00, 0x04, 0x00 }, /* '!' */
	{ 0x0a, 0x0a, 0x0a, 0x00, 0x00, 0x00, 0x00, 0x00 }, /* '"' */
	{ 0x0a, 0x0a, 0x1f, 0x0a, 0x1f, 0x0a, 0x0a, 0x00 }, /* '#' */
	{ 0x04, 0x0f, 0x14, 0x0e, 0x05, 0x1e, 0x04, 0x00 }, /* '$' */
	{ 0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03, 0x00 }, /* '%' */
	{ 0x0c, 0x12, 0x14, 0x08, 0x15, 0x12, 0x0d, 0x00 }, /* '&' */
	{ 0x04, 0x04, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00 }, /* '\'' */
	{ 0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02, 0x00 }, /* '(' */
	{ 0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08, 0x00 }, /* ')' */
	{ 0x00, 0x04, 0x15, 0x0e, 0x15, 0x04, 0x00, 0x00 }, /* '*' */
	{ 0x00, 0x04, 0x04, 0x1f, 0x04, 0x04, 0x00, 0x00 }, /* '+' */
	{ 0x00, 0x00, 0x00, 0x00, 0x00, 0x0c, 0x04, 0x08 }, /* ',' */
	{ 0x00, 0x00, 0x00, 0x1f, 0x00, 0x00, 0x00, 0x00 }, /* '-' */
	{ 0x00, 0x00, 0x00, 0x00, 0x00, 0x0c, 0x0c, 0x00 }, /* '.' */
	{ 0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00, 0x00 }, /* '/' */
	{ 0x0e, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0e, 0x00 }, /* '0' */
	{ 0x04, 0x0c, 0x04, 0x04, 0x04, 0x04, 0x0e, 0x00 }, /* '1' */
	{ 0x0e, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1f, 0x00 }, /* '2' */
	{ 0x1f, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0e, 0x00 }, /* '3' */
	{ 0x02, 0x06, 0x0a, 0x12, 0x1f, 0x02, 0x02, 0x00 }, /* '4' */
	{ 0x1f, 0x10, 0x1e, 0x01, 0x01, 0x11, 0x0e, 0x00 }, /* '5' */
	{ 0x06, 0x08, 0x10, 0x1e, 0x11, 0x11, 0x0e, 0x00 }, /* '6' */
	{ 0x1f, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08, 0x00 }, /* '7' */
	{ 0x0e, 0x11, 0x11, 0x0e, 0x11, 0x11, 0x0e, 0x00 }, /* '8' */
	{ 0x0e, 0x11, 0x11, 0x0f, 0x01, 0x02, 0x0c, 0x00 }, /* '9' */
	{ 0x00, 0x0c, 0x0c, 0x00, 0x0c, 0x0c, 0x00, 0x00 }, /* ':' */
	{ 0x00, 0x0c, 0x0c, 0x00, 0x00, 0x0c, 0x04, 0x08 }, /* ';' */
	{ 0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02, 0x00 }, /* '<' */
	{ 0x00, 0x00, 0x1f, 0x00, 0x1f, 0x00, 0x00, 0x00 }, /* '=' */
	{ 0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08, 0x00 }, /* '>' */
	{ 0x0e, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04, 0x00 }, /* '?' */
	{ 0x0e, 0x11, 0x01, 0x0d, 0x15, 0x15, 0x0e, 0x00 }, /* '@' */
	{ 0x0e, 0x11, 0x11, 0x1f, 0x11, 0x11, 0x11, 0x00 }, /* 'A' */
	{ 0x1e, 0x11, 0x11, 0x1e, 0x11, 0x11, 0x1e, 0x00 }, /* 'B' */
	{ 0x0e, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0e, 0x00 }, /* 'C' */
	{ 0x1c, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1c, 0x00 }, /* 'D' */
	{ 0x1f, 0x10, 0x10, 0x1e, 0x10, 0x10, 0x1f, 0x00 }, /* 'E' */
	{ 0x1f, 0x10, 0x10, 0x1e, 0x10, 0x10, 0x10, 0x00 }, /* 'F' */
	{ 0x0e, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0f, 0x00 }, /* 'G' */
	{ 0x11, 0x11, 0x11, 0x1f, 0x11, 0x11, 0x11, 0x00 }, /* 'H' */
	{ 0x0e, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0e, 0x00 }, /* 'I' */
	{ 0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0c, 0x00 }, /* 'J' */
	{ 0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11, 0x00 }, /* 'K' */
	{ 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1f, 0x00 }, /* 'L' */
	{ 0x11, 0x1b, 0x15, 0x15, 0x11, 0x11, 0x11, 0x00 }, /* 'M' */
	{ 0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11, 0x00 }, /* 'N' */
	{ 0x0e, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0e, 0x00 }, /* 'O' */
	{ 0x1e, 0x11, 0x11, 0x1e, 0x10, 0x10, 0x10, 0x00 }, /* 'P' */
	{ 0x0e, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0d, 0x00 }, /* 'Q' */
	{ 0x1e, 0x11, 0x11, 0x1e, 0x14, 0x12, 0x11, 0x00 }, /* 'R' */
	{ 0x0f, 0x10, 0x10, 0x0e, 0x01, 0x01, 0x1e, 0x00 }, /* 'S' */
	{ 0x1f, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x00 }, /* 'T' */
	{ 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0e, 0x00 }, /* 'U' */
	{ 0x11, 0x11, 0x11, 0x11, 0x11, 0x0a, 0x04, 0x00 }, /* 'V' */
	{ 0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0a, 0x00 }, /* 'W' */
	{ 0x11, 0x11, 0x0a, 0x04, 0x0a, 0x11, 0x11, 0x00 }, /* 'X' */
	{ 0x11, 0x11, 0x0a, 0x04, 0x04, 0x04, 0x04, 0x00 }, /* 'Y' */
	{ 0x1f, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1f, 0x00 }, /* 'Z' */
	{ 0x0e, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0e, 0x00 }, /* '[' */
	{ 0x00, 0x10, 0x08, 0x04, 0x02, 0x01, 0x00, 0x00 }, /* '\\' */
	{ 0x0e, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0e, 0x00 }, /* ']' */
	{ 0x04, 0x0a, 0x11, 0x00, 0x00, 0x00, 0x00, 0x00 }, /* '^' */
	{ 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1f, 0x00 }, /* '_' */
	{ 0x08, 0x04, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00 }, /* '`' */
	{ 0x00, 0x00, 0x0e, 0x01, 0x0f, 0x11, 0x0f, 0x00 }, /* 'a' */
	{ 0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1e, 0x00 }, /* 'b' */
	{ 0x00, 0x00, 0x0e, 0x10, 0x10, 0x11, 0x0e, 0x00 }, /* 'c' */
	{ 0x01, 0x01, 0x0d, 0x13, 0x11, 0x11, 0x0f, 0x00 }, /* 'd' */
	{ 0x00, 0x00, 0x0e, 0x11, 0x1f, 0x10, 0x0e, 0x00 }, /* 'e' */
	{ 0x06, 0x09, 0x08, 0x1c, 0x08, 0x08, 0x08, 0x00 }, /* 'f' */
	{ 0x00, 0x00, 0x0f, 0x11, 0x11, 0x0f, 0x01, 0x0e }, /* 'g' */
	{ 0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11, 0x00 }, /* 'h' */
	{ 0x04, 0x00, 0x0c, 0x04, 0x04, 0x04, 0x0e, 0x00 }, /* 'i' */
	{ 0x02, 0x00, 0x06, 0x02, 0x02, 0x02, 0x12, 0x0c }, /* 'j' */
	{ 0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12, 0x00 }, /* 'k' */
	{ 0x0c, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0e, 0x00 }, /* 'l' */
	{ 0x00, 0x00, 0x1a, 0x15, 0x15, 0x11, 0x11, 0x00 }, /* 'm' */
	{ 0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11, 0x00 }, /* 'n' */
	{ 0x00, 0x00, 0x0e, 0x11, 0x11, 0x11, 0x0e, 0x00 }, /* 'o' */
	{ 0x00, 0x00, 0x1e, 0x11, 0x11, 0x1e, 0x10, 0x10 }, /* 'p' */
	{ 0x00, 0x00, 0x0f, 0x11, 0x11, 0x0f, 0x01, 0x01 }, /* 'q' */
	{ 0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10, 0x00 }, /* 'r' */
	{ 0x00, 0x00, 0x0e, 0x10, 0x0e, 0x01, 0x1e, 0x00 }, /* 's' */
	{ 0x08, 0x08, 0x1c, 0x08, 0x08, 0x09, 0x06, 0x00 }, /* 't' */
	{ 0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0d, 0x00 }, /* 'u' */
	{ 0x00, 0x00, 0x11, 0x11, 0x11, 0x0a, 0x04, 0x00 }, /* 'v' */
	{ 0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0a, 0x00 }, /* 'w' */
	{ 0x00, 0x00, 0x11, 0x0a, 0x04, 0x0a, 0x11, 0x00 }, /* 'x' */
	{ 0x00, 0x00, 0x11, 0x11, 0x11, 0x0f, 0x01, 0x0e }, /* 'y' */
	{ 0x00, 0x00, 0x1f, 0x02, 0x04, 0x08, 0x1f, 0x00 }, /* 'z' */
	{ 0x02, 0x04, 0x04, 0x08, 0x04, 0x04, 0x02, 0x00 }, /* '{' */
	{ 0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x00 }, /* '|' */
	{ 0x08, 0x04, 0x04, 0x02, 0x04, 0x04, 0x08, 0x00 }, /* '}' */
	{ 0x00, 0x00, 0x08, 0x15, 0x02, 0x00, 0x00, 0x00 }, /* '~' */
};

/* ---- canvas and clipped primitives ---- */

struct rgb {
	uint8_t r, g, b;
};

static const struct rgb palette[8] = {
	{ 31, 119, 180 }, { 255, 127, 14 }, { 44, 160, 44 },  { 214, 39, 40 },
	{ 148, 103, 189 }, { 140, 86, 75 }, { 227, 119, 194 }, { 23, 190, 207 },
};
static const struct rgb ink = { 40, 40, 40 };    /* text */
static const struct rgb axis_ink = { 90, 90, 90 };
static const struct rgb grid_ink = { 228, 228, 228 };

/* A half-open pixel rectangle [x0, x1) x [y0, y1). */
struct rect {
	int x0, y0, x1, y1;
};

struct canvas {
	uint8_t *px;    /* [h][w][3] RGB */
	int w, h;
	struct rect clip; /* every primitive draws only inside this; always within the canvas */
};

static void set_clip(struct canvas *c, struct rect r, struct rect within)
{
	c->clip.x0 = r.x0 > within.x0 ? r.x0 : within.x0;
	c->clip.y0 = r.y0 > within.y0 ? r.y0 : within.y0;
	c->clip.x1 = r.x1 < within.x1 ? r.x1 : within.x1;
	c->clip.y1 = r.y1 < within.y1 ? r.y1 : within.y1;
	if (c->clip.x0 < 0)
		c->clip.x0 = 0;
	if (c->clip.y0 < 0)
		c->clip.y0 = 0;
	if (c->clip.x1 > c->w)
		c->clip.x1 = c->w;
	if (c->clip.y1 > c->h)
		c->clip.y1 = c->h;
}

static void put(struct canvas *c, int x, int y, struct rgb col)
{
	if (x < c->clip.x0 || x >= c->clip.x1 || y < c->clip.y0 || y >= c->clip.y1)
		return;
	uint8_t *p = c->px + ((size_t)y * (size_t)c->w + (size_t)x) * 3;
	p[0] = col.r;
	p[1] = col.g;
	p[2] = col.b;
}

/* Fill [x0, x1) x [y0, y1), clipped. */
static void fill(struct canvas *c, int x0, int y0, int x1, int y1, struct rgb col)
{
	if (x0 < c->clip.x0)
		x0 = c->clip.x0;
	if (y0 < c->clip.y0)
		y0 = c->clip.y0;
	if (x1 > c->clip.x1)
		x1 = c->clip.x1;
	if (y1 > c->clip.y1)
		y1 = c->clip.y1;
	for (int y = y0; y < y1; y++)
		for (int x = x0; x < x1; x++)
			put(c, x, y, col);
}

/* A pixel coordinate from a mapped value: far-off values are pinned so int and the segment
 * clipper never see infinities (the direction error at 1e9 px is far below a pixel). */
static double pin(double v)
{
	return v < -1e9 ? -1e9 : v > 1e9 ? 1e9 : v;
}

/* Liang-Barsky: cut segment a-b to the box; @return 0 when nothing of it is inside. */
static int clip_segment(double *ax, double *ay, double *bx, double *by, const struct rect *box)
{
	double dx = *bx - *ax, dy = *by - *ay, t0 = 0, t1 = 1;
	const double p[4] = { -dx, dx, -dy, dy };
	const double q[4] = { *ax - box->x0, (box->x1 - 1) - *ax, *ay - box->y0, (box->y1 - 1) - *ay };
	for (int i = 0; i < 4; i++) {
		if (p[i] == 0) {
			if (q[i] < 0)
				return 0;
			continue;
		}
		double t = q[i] / p[i];
		if (p[i] < 0) {
			if (t > t1)
				return 0;
			if (t > t0)
				t0 = t;
		} else {
			if (t < t0)
				return 0;
			if (t < t1)
				t1 = t;
		}
	}
	double x0 = *ax + t0 * dx, y0 = *ay + t0 * dy;
	*bx = *ax + t1 * dx;
	*by = *ay + t1 * dy;
	*ax = x0;
	*ay = y0;
	return 1;
}

/* A 2-pixel-wide line (Bresenham with a 2x2 brush), clipped to the clip rectangle. */
static void line2(struct canvas *c, double ax, double ay, double bx, double by, struct rgb col)
{
	ax = pin(ax), ay = pin(ay), bx = pin(bx), by = pin(by);
	if (!clip_segment(&ax, &ay, &bx, &by, &c->clip))
		return;
	int x0 = (int)lround(ax), y0 = (int)lround(ay), x1 = (int)lround(bx), y1 = (int)lround(by);
	int dx = abs(x1 - x0), dy = -abs(y1 - y0), sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
	int e = dx + dy;
	for (;;) {
		fill(c, x0, y0, x0 + 2, y0 + 2, col);
		if (x0 == x1 && y0 == y1)
			break;
		int e2 = 2 * e;
		if (e2 >= dy) {
			e += dy;
			x0 += sx;
		}
		if (e2 <= dx) {
			e += dx;
			y0 += sy;
		}
	}
}

/* A filled disc of radius 3 around (x, y): the point marker. */
static void marker(struct canvas *c, double x, double y, struct rgb col)
{
	int cx = (int)lround(pin(x)), cy = (int)lround(pin(y));
	for (int dy = -3; dy <= 3; dy++)
		for (int dx = -3; dx <= 3; dx++)
			if (dx * dx + dy * dy <= 10)
				put(c, cx + dx, cy + dy, col);
}

/* ---- text ---- */

/* Width in pixels of the first n characters at scale s. */
static int text_w(size_t n, int s)
{
	return n ? ((int)n * ADVANCE - 1) * s : 0;
}

/* How many leading characters of str fit in max_w pixels at scale s. */
static size_t text_fit(const char *str, int s, int max_w)
{
	size_t n = strlen(str), room = max_w < 0 ? 0 : (size_t)(max_w / s + 1) / ADVANCE;
	return n < room ? n : room;
}

/* Draw the first n characters of str with the top-left corner at (x, y). */
static void text_n(struct canvas *c, int x, int y, const char *str, size_t n, int s, struct rgb col)
{
	for (size_t i = 0; i < n; i++, x += ADVANCE * s) {
		unsigned char ch = (unsigned char)str[i];
		const uint8_t *g = font5x7[(ch < 32 || ch > 126 ? '?' : ch) - 32];
		for (int r = 0; r < GLYPH_H; r++)
			for (int b = 0; b < GLYPH_W; b++)
				if (g[r] & (0x10 >> b))
					fill(c, x + b * s, y + r * s, x + (b + 1) * s, y + (r + 1) * s, col);
	}
}

/* Draw str centred on column cx, cut to max_w pixels; @return its drawn width. */
static int text_centred(struct canvas *c, int cx, int y, const char *str, int s, int max_w)
{
	size_t n = text_fit(str, s, max_w);
	text_n(c, cx - text_w(n, s) / 2, y, str, n, s, ink);
	return text_w(n, s);
}

/* ---- axes: ranges, nice ticks, labels ---- */

struct axis {
	double lo, hi, step; /* the range and its tick step (1, 2 or 5 x 10^k) */
	double p0, p1;       /* pixel positions of lo and hi */
};

static double axis_px(const struct axis *a, double v)
{
	return a->p0 + (v - a->lo) / (a->hi - a->lo) * (a->p1 - a->p0);
}

static double nice_step(double span, int target)
{
	double raw = span / target, mag = pow(10, floor(log10(raw))), f = raw / mag;
	return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag;
}

/*
 * Set a's range and step. fixed: use [lo, hi] as given; otherwise round the data range
 * [lo, hi] (have: there was data) outward to whole steps, widened when it is one value.
 * @return 0, or -EINVAL when the range overflows a double.
 */
static int axis_range(struct axis *a, double lo, double hi, int have, int fixed, int target)
{
	if (!fixed) {
		if (!have)
			lo = 0, hi = 1;
		if (!(hi - lo > fabs(lo) * 1e-12)) { /* one value: widen by 10% of it, or by 1 */
			double d = lo != 0 ? fabs(lo) * 0.1 : 1;
			lo -= d, hi += d;
		}
	}
	if (!isfinite(hi - lo))
		return -EINVAL;
	a->step = nice_step(hi - lo, target < 2 ? 2 : target);
	if (!fixed) {
		lo = floor(lo / a->step) * a->step;
		hi = ceil(hi / a->step) * a->step;
		if (!isfinite(hi - lo))
			return -EINVAL;
	}
	a->lo = lo, a->hi = hi;
	return 0;
}

/* The first tick index (tick k sits at k * step) and the tick count, capped. */
static int axis_ticks(const struct axis *a, double *k0)
{
	*k0 = ceil(a->lo / a->step - 1e-9);
	double n = floor(a->hi / a->step + 1e-9) - *k0 + 1;
	return n < 0 ? 0 : n > 100 ? 100 : (int)n;
}

/* A tick label: plain decimals for ordinary numbers, %g with just enough digits otherwise. */
static void tick_label(char *buf, size_t n, double v, double step)
{
	if (fabs(v) < step * 1e-6)
		v = 0; /* no "-0" or "1e-17" where a tick means zero */
	double a = fabs(v);
	int dec = step >= 1 ? 0 : (int)ceil(-log10(step) - 1e-9);
	if (a >= 1e6 || (a != 0 && a < 1e-4) || dec > 6) {
		int prec = (a != 0 ? (int)floor(log10(a)) : 0) - (int)floor(log10(step)) + 1;
		snprintf(buf, n, "%.*g", prec < 1 ? 1 : prec > 12 ? 12 : prec, v);
	} else {
		snprintf(buf, n, "%.*f", dec, v);
	}
}

/* ---- panels ---- */

#define PAD 8       /* panel margin */
#define TICK 4      /* tick length */
#define LINE_H 7    /* text height at scale 1, above the baseline (descenders add 1) */
#define INSET 6     /* LINES: gap between the axes and the data range, so markers stay whole */

static int finite_pt(const struct bplot_series *s, int j, double *x)
{
	*x = s->x ? s->x[j] : j;
	return isfinite(s->y[j]) && isfinite(*x);
}

/* The legend: one swatch and label per labelled series, wrapped into rows in [x0, x1).
 * @return the first row below it. */
static int draw_legend(struct canvas *c, const struct bplot_panel *p, int x0, int x1, int y)
{
	int x = x0, row = y, any = 0;
	for (int i = 0; i < p->n_series; i++) {
		const char *label = p->series[i].label;
		struct rgb col = palette[i % 8];
		if (!label || !*label)
			continue;
		size_t n = text_fit(label, 1, x1 - x0 - 20);
		int iw = 20 + text_w(n, 1);
		if (x > x0 && x + iw > x1)
			x = x0, row += LINE_H + 5;
		if (p->kind == BPLOT_LINES) {
			fill(c, x, row + 3, x + 16, row + 5, col);
			marker(c, x + 8, row + 3.5, col);
		} else {
			fill(c, x + 3, row, x + 13, row + LINE_H, col);
		}
		text_n(c, x + 20, row, label, n, 1, ink);
		x += iw + 14;
		any = 1;
	}
	return any ? row + LINE_H + 7 : y;
}

/* The data range of a panel's finite values (y, and x for LINES). */
static void data_range(const struct bplot_panel *p, double r[4], int *have)
{
	*have = 0;
	for (int i = 0; i < p->n_series; i++) {
		const struct bplot_series *s = &p->series[i];
		for (int j = 0; j < s->n; j++) {
			double x;
			if (p->kind == BPLOT_BARS ? !isfinite(s->y[j]) : !finite_pt(s, j, &x))
				continue;
			if (p->kind == BPLOT_BARS)
				x = 0;
			if (!*have)
				r[0] = r[1] = x, r[2] = r[3] = s->y[j];
			r[0] = fmin(r[0], x), r[1] = fmax(r[1], x);
			r[2] = fmin(r[2], s->y[j]), r[3] = fmax(r[3], s->y[j]);
			*have = 1;
		}
	}
}

static void draw_lines(struct canvas *c, const struct bplot_panel *p, const struct axis *ax,
		       const struct axis *ay)
{
	for (int i = 0; i < p->n_series; i++) {
		const struct bplot_series *s = &p->series[i];
		struct rgb col = palette[i % 8];
		double px = 0, py = 0, x;
		int prev = 0;
		for (int j = 0; j < s->n; j++) {
			if (!finite_pt(s, j, &x)) {
				prev = 0; /* a gap */
				continue;
			}
			double qx = axis_px(ax, x), qy = axis_px(ay, s->y[j]);
			if (prev)
				line2(c, px, py, qx, qy, col);
			px = qx, py = qy, prev = 1;
		}
		/* Markers closer than 8 px would merge into a band: then only lone points get one. */
		int dense = s->n > (int)fabs(ax->p1 - ax->p0) / 8;
		for (int j = 0; j < s->n; j++) {
			double xn;
			int lone = (j == 0 || !finite_pt(s, j - 1, &xn)) && (j == s->n - 1 || !finite_pt(s, j + 1, &xn));
			if (finite_pt(s, j, &x) && (!dense || lone))
				marker(c, axis_px(ax, x), axis_px(ay, s->y[j]), col);
		}
	}
}

/* Bars: group j takes 1/n of the width; 70% of it holds the n_series bars side by side. */
static void draw_bars(struct canvas *c, const struct bplot_panel *p, const struct rect *plot,
		      const struct axis *ay)
{
	int n = p->n_series ? p->series[0].n : 0;
	double gw = (double)(plot->x1 - plot->x0) / (n ? n : 1);
	double bw = gw * 0.7 / (p->n_series ? p->n_series : 1);
	double base = axis_px(ay, fmin(fmax(0, ay->lo), ay->hi));
	for (int j = 0; j < n; j++)
		for (int i = 0; i < p->n_series; i++) {
			double v = p->series[i].y[j];
			if (!isfinite(v))
				continue;
			double xa = plot->x0 + j * gw + gw * 0.15 + i * bw;
			int x0 = (int)lround(xa), x1 = (int)lround(xa + bw), top = (int)lround(pin(axis_px(ay, v)));
			if (x1 <= x0)
				x1 = x0 + 1;
			int b = (int)lround(base);
			fill(c, x0, top < b ? top : b, x1, (top < b ? b : top) + 1, palette[i % 8]);
		}
}

static int render_panel(struct canvas *c, const struct bplot_panel *p, struct rect pr, char *err,
			size_t errlen)
{
	struct rect plot;
	struct axis ax = { 0 }, ay = { 0 };
	double r[4] = { 0 };
	int have, y = pr.y0 + PAD, inset = p->kind == BPLOT_LINES ? INSET : 0;
	char buf[64];

	set_clip(c, pr, pr);
	if (p->title && *p->title) {
		text_centred(c, (pr.x0 + pr.x1) / 2, y, p->title, 2, pr.x1 - pr.x0 - 2 * PAD);
		y += 2 * LINE_H + 7;
	}
	y = draw_legend(c, p, pr.x0 + PAD, pr.x1 - PAD, y);
	if (p->ylabel && *p->ylabel) {
		text_n(c, pr.x0 + PAD, y, p->ylabel, text_fit(p->ylabel, 1, pr.x1 - pr.x0 - 2 * PAD), 1, ink);
		y += LINE_H + 5;
	}
	plot.y0 = y + LINE_H / 2 + 1; /* room for half of the top tick label */
	plot.y1 = pr.y1 - PAD - (p->xlabel && *p->xlabel ? LINE_H + 6 : 0) - (TICK + 3 + LINE_H);
	if (plot.y1 < plot.y0 + 10)
		plot.y1 = plot.y0 + 10; /* a cramped panel: the clip keeps it inside */

	data_range(p, r, &have);
	int fixed = !(p->ymin == 0 && p->ymax == 0);
	if (p->kind == BPLOT_BARS && have)
		r[2] = fmin(r[2], 0), r[3] = fmax(r[3], 0);
	if (axis_range(&ay, fixed ? p->ymin : r[2], fixed ? p->ymax : r[3], have, fixed,
		       (plot.y1 - plot.y0) / 40))
		return lbu_fail(err, errlen, -EINVAL, "panel '%s': the y values span more than a double",
			    p->title ? p->title : "");
	ay.p0 = plot.y1 - 1 - inset;
	ay.p1 = plot.y0 + inset;

	/* The y tick labels' width sets the left edge of the plot area. */
	double k0;
	int nt = axis_ticks(&ay, &k0), lw = 0;
	for (int k = 0; k < nt; k++) {
		tick_label(buf, sizeof(buf), (k0 + k) * ay.step, ay.step);
		int tw = text_w(strlen(buf), 1);
		lw = tw > lw ? tw : lw;
	}
	if (lw > (pr.x1 - pr.x0) / 3)
		lw = (pr.x1 - pr.x0) / 3;
	plot.x0 = pr.x0 + PAD + lw + 3 + TICK;
	plot.x1 = pr.x1 - PAD - 8;
	if (p->kind == BPLOT_LINES) {
		if (axis_range(&ax, r[0], r[1], have, 0, (plot.x1 - plot.x0) / 80))
			return lbu_fail(err, errlen, -EINVAL, "panel '%s': the x values span more than a double",
				    p->title ? p->title : "");
		ax.p0 = plot.x0 + inset;
		ax.p1 = plot.x1 - 1 - inset;
	}

	/* Grid, axes, ticks and their labels (a label that would touch the one below is left out). */
	for (int k = 0, below = INT32_MAX; k < nt; k++) {
		double v = (k0 + k) * ay.step;
		int row = (int)lround(axis_px(&ay, v));
		fill(c, plot.x0 + 1, row, plot.x1, row + 1, grid_ink);
		fill(c, plot.x0 - TICK, row, plot.x0, row + 1, axis_ink);
		if (below - row < LINE_H + 3)
			continue;
		below = row;
		tick_label(buf, sizeof(buf), v, ay.step);
		size_t n = text_fit(buf, 1, lw);
		text_n(c, plot.x0 - TICK - 3 - text_w(n, 1), row - LINE_H / 2, buf, n, 1, ink);
	}
	if (p->kind == BPLOT_BARS && ay.lo < 0 && ay.hi > 0) {
		int row = (int)lround(axis_px(&ay, 0));
		fill(c, plot.x0, row, plot.x1, row + 1, axis_ink);
	}
	fill(c, plot.x0, plot.y0, plot.x0 + 1, plot.y1, axis_ink);
	fill(c, plot.x0, plot.y1 - 1, plot.x1, plot.y1, axis_ink);
	int ly = plot.y1 + TICK + 2;
	if (p->kind == BPLOT_LINES) {
		int right = INT32_MIN;
		nt = axis_ticks(&ax, &k0);
		for (int k = 0; k < nt; k++) {
			double v = (k0 + k) * ax.step;
			int col = (int)lround(axis_px(&ax, v));
			fill(c, col, plot.y1, col + 1, plot.y1 + TICK, axis_ink);
			tick_label(buf, sizeof(buf), v, ax.step);
			int tw = text_w(strlen(buf), 1);
			if (col - tw / 2 < right + 6)
				continue; /* would touch the previous label */
			text_n(c, col - tw / 2, ly, buf, strlen(buf), 1, ink);
			right = col - tw / 2 + tw;
		}
	} else if (p->categories && p->n_series) {
		int n = p->series[0].n;
		double gw = (double)(plot.x1 - plot.x0) / (n ? n : 1);
		for (int j = 0; j < n; j++)
			if (p->categories[j])
				text_centred(c, (int)lround(plot.x0 + (j + 0.5) * gw), ly, p->categories[j], 1,
					     (int)gw - 4);
	}
	if (p->xlabel && *p->xlabel)
		text_centred(c, (plot.x0 + plot.x1) / 2, pr.y1 - PAD - LINE_H, p->xlabel, 1,
			     pr.x1 - pr.x0 - 2 * PAD);

	/* The data, inside the axes only. */
	struct rect inner = { plot.x0 + 1, plot.y0, plot.x1, plot.y1 - 1 };
	set_clip(c, inner, pr);
	if (p->kind == BPLOT_LINES)
		draw_lines(c, p, &ax, &ay);
	else
		draw_bars(c, p, &inner, &ay);
	return 0;
}

/* ---- arguments ---- */

static int check_panel(const struct bplot_panel *p, int i, char *err, size_t errlen)
{
	if (p->kind != BPLOT_LINES && p->kind != BPLOT_BARS)
		return lbu_fail(err, errlen, -EINVAL, "panel %d: unknown kind %d", i, (int)p->kind);
	if (p->n_series < 0 || (p->n_series > 0 && !p->series))
		return lbu_fail(err, errlen, -EINVAL, "panel %d: n_series %d with series %p", i, p->n_series,
			    (const void *)p->series);
	int autoy = p->ymin == 0 && p->ymax == 0;
	if (!autoy && !(isfinite(p->ymin) && isfinite(p->ymax) && p->ymin < p->ymax))
		return lbu_fail(err, errlen, -EINVAL,
			    "panel %d: ymin %g, ymax %g: need finite ymin < ymax (or both 0)", i, p->ymin,
			    p->ymax);
	for (int k = 0; k < p->n_series; k++) {
		const struct bplot_series *s = &p->series[k];
		if (s->n < 0 || (s->n > 0 && !s->y))
			return lbu_fail(err, errlen, -EINVAL, "panel %d series %d: n %d with y %p", i, k, s->n,
				    (const void *)s->y);
		if (p->kind == BPLOT_BARS && s->n != p->series[0].n)
			return lbu_fail(err, errlen, -EINVAL, "panel %d: bar series %d has %d values, series 0 has %d",
				    i, k, s->n, p->series[0].n);
	}
	return 0;
}

static int check_args(const char *path, const struct bplot_panel *panels, int n_panels, int cols,
		      int w, int h, char *err, size_t errlen)
{
	if (!path || !*path)
		return lbu_fail(err, errlen, -EINVAL, "no output path");
	if (!panels || n_panels < 1 || n_panels > BPLOT_MAX_PANELS)
		return lbu_fail(err, errlen, -EINVAL, "need 1..%d panels, have %d", BPLOT_MAX_PANELS,
			    panels ? n_panels : 0);
	if (cols < 1)
		return lbu_fail(err, errlen, -EINVAL, "cols %d: need at least 1", cols);
	if (w < BPLOT_MIN_SIDE || w > BPLOT_MAX_SIDE || h < BPLOT_MIN_SIDE || h > BPLOT_MAX_SIDE)
		return lbu_fail(err, errlen, -EINVAL, "panel size %dx%d: each side must be %d..%d", w, h,
			    BPLOT_MIN_SIDE, BPLOT_MAX_SIDE);
	long ncols = cols < n_panels ? cols : n_panels, nrows = (n_panels + ncols - 1) / ncols;
	if (ncols * w * nrows * h > BPLOT_MAX_PIXELS)
		return lbu_fail(err, errlen, -EINVAL, "figure %ldx%ld is over %ld pixels", ncols * w, nrows * h,
			    BPLOT_MAX_PIXELS);
	for (int i = 0; i < n_panels; i++) {
		int rc = check_panel(&panels[i], i, err, errlen);
		if (rc)
			return rc;
	}
	return 0;
}

/* ---- PNG file ---- */

static void be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}

static int write_all(int fd, const void *buf, size_t n)
{
	const uint8_t *p = buf;
	while (n) {
		ssize_t k = write(fd, p, n);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return k < 0 ? -errno : -EIO;
		p += k, n -= (size_t)k;
	}
	return 0;
}

/* One chunk: length, type, data, CRC-32 of type and data. len < 2^31. */
static int write_chunk(int fd, const char type[4], const uint8_t *data, uint32_t len)
{
	uint8_t hdr[8], tail[4];
	be32(hdr, len);
	memcpy(hdr + 4, type, 4);
	uLong crc = crc32(0, hdr + 4, 4);
	if (len)
		crc = crc32(crc, data, len);
	be32(tail, (uint32_t)crc);
	int rc = write_all(fd, hdr, sizeof(hdr));
	if (!rc && len)
		rc = write_all(fd, data, len);
	return rc ? rc : write_all(fd, tail, sizeof(tail));
}

/* Compress the canvas (filter 0 on every row) into *z, *zlen. @return 0 or -ENOMEM. */
static int png_deflate(const struct canvas *c, uint8_t **z, uLongf *zlen)
{
	size_t stride = 1 + 3 * (size_t)c->w, rawlen = stride * (size_t)c->h;
	uint8_t *raw = malloc(rawlen);
	*zlen = compressBound(rawlen);
	*z = malloc(*zlen);
	int rc = raw && *z ? 0 : -ENOMEM;
	for (int y = 0; !rc && y < c->h; y++) {
		raw[(size_t)y * stride] = 0;
		memcpy(raw + (size_t)y * stride + 1, c->px + (size_t)y * c->w * 3, (size_t)c->w * 3);
	}
	/* compress2 fails only for want of memory: the buffer is compressBound, the level valid. */
	if (!rc && compress2(*z, zlen, raw, rawlen, 6) != Z_OK)
		rc = -ENOMEM;
	free(raw);
	if (rc) {
		free(*z);
		*z = NULL;
	}
	return rc;
}

static atomic_uint tmp_seq;

static int png_write(const char *path, const struct canvas *c, char *err, size_t errlen)
{
	static const uint8_t sig[8] = { 0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n' };
	uint8_t ihdr[13] = { 0 }, *z;
	uLongf zlen;
	int rc = png_deflate(c, &z, &zlen);
	if (rc)
		return lbu_fail(err, errlen, rc, "out of memory compressing a %dx%d image", c->w, c->h);
	be32(ihdr, (uint32_t)c->w);
	be32(ihdr + 4, (uint32_t)c->h);
	ihdr[8] = 8; /* bit depth; then colour type 2 (RGB), compression, filter, interlace 0 */
	ihdr[9] = 2;

	size_t tlen = strlen(path) + 48;
	char *tmp = malloc(tlen);
	int fd = -1;
	if (!tmp) {
		free(z);
		return lbu_fail(err, errlen, -ENOMEM, "out of memory");
	}
	for (int tries = 0; fd < 0 && tries < 100; tries++) {
		snprintf(tmp, tlen, "%s.tmp.%ld.%u", path, (long)getpid(), atomic_fetch_add(&tmp_seq, 1));
		fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
		if (fd < 0 && errno != EEXIST)
			break;
	}
	if (fd < 0) {
		rc = lbu_fail(err, errlen, -errno, "create %s: %s", tmp, strerror(errno));
		goto out;
	}
	const char *step = "write";
	rc = write_all(fd, sig, sizeof(sig));
	if (!rc)
		rc = write_chunk(fd, "IHDR", ihdr, sizeof(ihdr));
	if (!rc)
		rc = write_chunk(fd, "IDAT", z, (uint32_t)zlen);
	if (!rc)
		rc = write_chunk(fd, "IEND", NULL, 0);
	if (!rc && fsync(fd))
		rc = -errno, step = "fsync";
	if (close(fd) && !rc)
		rc = -errno, step = "close";
	if (!rc && rename(tmp, path))
		rc = -errno, step = "rename";
	if (rc) {
		lbu_fail(err, errlen, rc, "%s %s%s%s: %s", step, tmp, *step == 'r' ? " to " : "",
		     *step == 'r' ? path : "", strerror(-rc));
		unlink(tmp);
	}
out:
	free(tmp);
	free(z);
	return rc;
}

int bplot_write_png(const char *path, const struct bplot_panel *panels, int n_panels, int cols,
		    int w, int h, char *err, size_t errlen)
{
	int rc = check_args(path, panels, n_panels, cols, w, h, err, errlen);
	if (rc)
		return rc;
	int ncols = cols < n_panels ? cols : n_panels, nrows = (n_panels + ncols - 1) / ncols;
	struct canvas c = { .w = ncols * w, .h = nrows * h };
	c.px = malloc((size_t)c.w * (size_t)c.h * 3);
	if (!c.px)
		return lbu_fail(err, errlen, -ENOMEM, "out of memory for a %dx%d image", c.w, c.h);
	memset(c.px, 0xff, (size_t)c.w * (size_t)c.h * 3);
	for (int i = 0; i < n_panels && !rc; i++) {
		struct rect pr = { (i % ncols) * w, (i / ncols) * h, (i % ncols + 1) * w, (i / ncols + 1) * h };
		rc = render_panel(&c, &panels[i], pr, err, errlen);
	}
	if (!rc)
		rc = png_write(path, &c, err, errlen);
	free(c.px);
	return rc;
}
