/* layerbank-ctl top: a live view of the daemon, read and redrawn every interval: totals, the
 * second tier, a line per NUMA node, then per model and per layer the hit rate as a bar,
 * lookups/s, entries, bytes and leases.
 * Plain termios and ANSI escapes (alternate screen, cursor moves, erase line); it fits
 * whatever TIOCGWINSZ says and drops the bars, then cuts lines, when the terminal is small.
 * The terminal is put back on q, SIGINT, SIGTERM, SIGHUP, ^Z and on any error. A daemon that
 * goes away is waited for: liblayerbank reconnects, and the view goes on with the new one. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "ctl.h"
#include "errf.h"
#include "io.h"

/* Set by the signal handlers, read by the loop; poll returns EINTR when one arrives. */
static volatile sig_atomic_t got_quit, got_winch, got_tstp;

static void on_signal(int sig)
{
	if (sig == SIGWINCH)
		got_winch = 1;
	else if (sig == SIGTSTP)
		got_tstp = 1;
	else
		got_quit = 1;
}

static int handle_signals(void)
{
	static const int sigs[] = { SIGINT, SIGTERM, SIGHUP, SIGWINCH, SIGTSTP };
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		if (sigaction(sigs[i], &sa, NULL) < 0)
			return -errno;
	return 0;
}

/* ---- the terminal ---- */

struct term {
	struct termios saved;
	bool raw;
	int rows, cols;
};

static void term_size(struct term *t)
{
	struct winsize ws;

	if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_row && ws.ws_col) {
		t->rows = ws.ws_row;
		t->cols = ws.ws_col;
	} else {
		t->rows = 24;
		t->cols = 80;
	}
}

/* Keys one by one without echo; ISIG stays, so ^C is a SIGINT (handled) and ^Z a SIGTSTP. */
static int term_enter(struct term *t)
{
	static const char enter[] = "\033[?1049h\033[?25l\033[H\033[2J"; /* alt screen, no cursor */
	struct termios raw;

	if (tcgetattr(STDIN_FILENO, &t->saved) < 0)
		return -errno;
	raw = t->saved;
	raw.c_lflag &= ~(tcflag_t)(ICANON | ECHO);
	raw.c_cc[VMIN] = 0;
	raw.c_cc[VTIME] = 0;
	if (tcsetattr(STDIN_FILENO, TCSAFLUSH, &raw) < 0)
		return -errno;
	t->raw = true;
	term_size(t);
	return lbu_write_all(STDOUT_FILENO, enter, sizeof(enter) - 1);
}

static void term_leave(struct term *t)
{
	static const char leave[] = "\033[?25h\033[?1049l"; /* cursor back, main screen back */

	if (!t->raw)
		return;
	(void)lbu_write_all(STDOUT_FILENO, leave, sizeof(leave) - 1);
	tcsetattr(STDIN_FILENO, TCSAFLUSH, &t->saved);
	t->raw = false;
}

/* ---- a frame: rows of at most cols characters, drawn in one write ---- */

struct frame {
	char *buf;
	size_t len, cap;
	int row, rows, cols;
	int cut; /* rows that did not fit */
};

static void fb_put(struct frame *f, const char *s, size_t n)
{
	if (f->len + n > f->cap) {
		size_t cap = (f->len + n) * 2 + 4096;
		char *p = realloc(f->buf, cap);
		if (!p)
			return; /* a short frame; the next one tries again */
		f->buf = p;
		f->cap = cap;
	}
	memcpy(f->buf + f->len, s, n);
	f->len += n;
}

/* One row: placed with a cursor move (no newline, so the bottom row never scrolls), cut at
 * the terminal's width, the rest of the old row erased. Text here is ASCII only. */
__attribute__((format(printf, 2, 3)))
static void row(struct frame *f, const char *fmt, ...)
{
	char text[1024], at[32];
	va_list ap;
	int n;

	if (f->row >= f->rows) {
		f->cut++;
		return;
	}
	va_start(ap, fmt);
	n = vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	if (n > (int)sizeof(text) - 1)
		n = (int)sizeof(text) - 1;
	if (n > f->cols)
		n = f->cols;
	snprintf(at, sizeof(at), "\033[%d;1H", ++f->row);
	fb_put(f, at, strlen(at));
	fb_put(f, text, (size_t)n);
	fb_put(f, "\033[K", 3);
}

static void bar(char *out, int width, double frac)
{
	int fill = isnan(frac) ? 0 : (int)lround(frac * width);

	out[0] = '[';
	for (int i = 0; i < width; i++)
		out[1 + i] = i < fill ? '#' : '.';
	out[width + 1] = ']';
	out[width + 2] = '\0';
}

static void fmt_pct(char *out, size_t n, uint64_t hits, uint64_t lookups)
{
	if (lookups)
		snprintf(out, n, "%5.1f%%", 100.0 * (double)hits / (double)lookups);
	else
		snprintf(out, n, "-");
}

static void fmt_rate(char *out, size_t n, uint64_t now, uint64_t before, double dt, bool have)
{
	if (have && dt > 0 && now >= before)
		snprintf(out, n, "%.1f", (double)(now - before) / dt);
	else
		snprintf(out, n, "-");
}

static void fmt_uptime(char *out, size_t n, uint64_t s)
{
	if (s >= 86400)
		snprintf(out, n, "%" PRIu64 "d%02" PRIu64 "h", s / 86400, s % 86400 / 3600);
	else if (s >= 3600)
		snprintf(out, n, "%" PRIu64 "h%02" PRIu64 "m", s / 3600, s % 3600 / 60);
	else if (s >= 60)
		snprintf(out, n, "%" PRIu64 "m%02" PRIu64 "s", s / 60, s % 60);
	else
		snprintf(out, n, "%" PRIu64 "s", s);
}

static double mono_s(void);

/* ---- the view ---- */

struct top {
	struct term term;
	const char *sock;
	double interval;
	struct ctl_view cur, prev;
	bool have_prev;
	double t_cur; /* when cur was read (CLOCK_MONOTONIC seconds) */
	double dt;    /* seconds between prev and cur */
	bool away;        /* the daemon went away: the library is reconnecting */
	double away_since;
	struct frame f;
};

/* The model of cur in prev, when its layers can be compared. */
static const struct ctl_model *prev_model(const struct top *tp, const struct ctl_model *m)
{
	if (!tp->have_prev)
		return NULL;
	for (uint32_t i = 0; i < tp->prev.n_models; i++)
		if (tp->prev.models[i].id == m->id && tp->prev.models[i].n_layers == m->n_layers)
			return &tp->prev.models[i];
	return NULL;
}

#define LABEL_W 8                         /* "  L1023", "  all" */
#define RIGHT_FMT " %6s %6s %10s %8s %8s %7s" /* hit%, now%, lookups/s, entries, MiB, leases */
#define RIGHT_W 52                        /* the width RIGHT_FMT prints, at least */
#define BAR_MAX 200

/* The hit-rate bar's width between the label and the figures; below 4 there is none. */
static int bar_width(const struct frame *f)
{
	int w = f->cols - LABEL_W - RIGHT_W - 4;
	return w < 4 ? 0 : w > BAR_MAX ? BAR_MAX : w;
}

/* One line of a model or a layer: the label, a bar of the hit rate since start, then hit%
 * since start, hit% over the last interval, lookups/s, entries, MiB, leases. */
static void stat_row(struct top *tp, const char *label, const struct lb_layer_stats *x,
		     const struct lb_layer_stats *before)
{
	char b[BAR_MAX + 3] = "", pct[16], now[16], rate[32], ent[24], mib[24], lea[24];
	uint64_t lookups = x->hits + x->misses;
	int bw = bar_width(&tp->f);

	if (bw)
		bar(b, bw, lookups ? (double)x->hits / (double)lookups : NAN);
	fmt_pct(pct, sizeof(pct), x->hits, lookups);
	if (before && lookups >= before->hits + before->misses && x->hits >= before->hits)
		fmt_pct(now, sizeof(now), x->hits - before->hits,
			lookups - before->hits - before->misses);
	else
		snprintf(now, sizeof(now), "-");
	fmt_rate(rate, sizeof(rate), lookups, before ? before->hits + before->misses : 0, tp->dt,
		 before != NULL);
	snprintf(ent, sizeof(ent), "%" PRIu64, x->entries);
	snprintf(mib, sizeof(mib), "%.1f", (double)x->bytes / (1 << 20));
	snprintf(lea, sizeof(lea), "%" PRIu64, x->leases);
	row(&tp->f, "%-*s %s" RIGHT_FMT, LABEL_W, label, b, pct, now, rate, ent, mib, lea);
}

/* While the daemon is away: what happened, and that top waits for it. */
static void draw_away(struct top *tp)
{
	struct frame *f = &tp->f;

	row(f, "layerbankd %s  every %gs  q quits", ctl_socket_path(tp->sock), tp->interval);
	row(f, "layerbankd went away %.0f s ago: waiting for it to come back",
	    mono_s() - tp->away_since);
}

/* The second tier: its state and queue, what it writes and reads per second, and what it
 * lost (dropped, failed, rejected: totals, which should stay 0). */
static void l2_row(struct top *tp)
{
	const struct lb_stats *st = &tp->cur.st;
	const struct lb_stats *ps = tp->have_prev ? &tp->prev.st : NULL;
	char state[sizeof(st->l2)], wr[24], rd[24], ms[24];

	lbu_printable(st->l2, state, sizeof(state));
	if (strcmp(state, "off") == 0) {
		row(&tp->f, "second tier off");
		return;
	}
	fmt_rate(wr, sizeof(wr), st->l2_written, ps ? ps->l2_written : 0, tp->dt, ps);
	fmt_rate(rd, sizeof(rd), st->l2_fetched, ps ? ps->l2_fetched : 0, tp->dt, ps);
	fmt_rate(ms, sizeof(ms), st->l2_fetch_misses, ps ? ps->l2_fetch_misses : 0, tp->dt, ps);
	row(&tp->f, "second tier %s  queue %" PRIu64 " (%.1f MiB)  written/s %s  fetched/s %s"
	    "  missed/s %s  dropped %" PRIu64 "  failed %" PRIu64 "  rejected %" PRIu64, state,
	    st->l2_queue_records, (double)st->l2_queue_bytes / (1 << 20), wr, rd, ms,
	    st->l2_dropped, st->l2_write_errors + st->l2_fetch_errors, st->l2_rejected);
}

/* The row of node in an earlier reading, for rates; NULL when it had none. */
static const struct lb_node_stats *prev_node(const struct lb_stats *ps, int32_t node)
{
	for (uint32_t i = 0; ps && i < ps->n_nodes && i < LB_MAX_NODES; i++)
		if (ps->nodes[i].node == node)
			return &ps->nodes[i];
	return NULL;
}

/* One row per NUMA node when the daemon has more than one: its arenas' use, entries, hits and
 * inserts per second, the inserts its clients had to place elsewhere (a total, which should
 * stay 0) and its clients. */
static void node_rows(struct top *tp)
{
	const struct lb_stats *st = &tp->cur.st;
	const struct lb_stats *ps = tp->have_prev ? &tp->prev.st : NULL;

	/* One node's row would repeat the cache row: rows only where there is a choice. */
	for (uint32_t i = 0; st->n_nodes > 1 && i < st->n_nodes && i < LB_MAX_NODES; i++) {
		const struct lb_node_stats *n = &st->nodes[i], *pn = prev_node(ps, n->node);
		char hits[24], ins[24];

		fmt_rate(hits, sizeof(hits), n->hits, pn ? pn->hits : 0, tp->dt, pn != NULL);
		fmt_rate(ins, sizeof(ins), n->inserts, pn ? pn->inserts : 0, tp->dt, pn != NULL);
		row(&tp->f, "node %-3d  %.1f of %.1f MiB  entries %" PRIu64 "  hits/s %s  inserts/s %s"
		    "  remote %" PRIu64 "  clients %u", n->node, (double)n->bytes_used / (1 << 20),
		    (double)n->arena_bytes / (1 << 20), n->entries, hits, ins, n->remote_inserts,
		    n->clients);
	}
}

static void draw(struct top *tp)
{
	const struct lb_stats *st = &tp->cur.st;
	const struct lb_stats *ps = tp->have_prev ? &tp->prev.st : NULL;
	struct frame *f = &tp->f;
	char up[32], rate[24], ins[24], evi[24], pct[16], now[16], b[128] = "";
	uint64_t lookups = st->hits + st->misses;

	f->len = 0;
	f->row = 0;
	f->cut = 0;
	f->rows = tp->term.rows;
	f->cols = tp->term.cols;
	if (f->rows < 3 || f->cols < 20) {
		row(f, "too small: %dx%d", f->cols, f->rows);
		goto out;
	}
	if (tp->away) {
		draw_away(tp);
		goto out;
	}
	fmt_uptime(up, sizeof(up), st->uptime_s);
	row(f, "layerbankd %s  up %s  policy %s  threads %u  every %gs  q quits",
	    ctl_socket_path(tp->sock), up, st->policy, st->threads, tp->interval);
	fmt_rate(rate, sizeof(rate), lookups, ps ? ps->hits + ps->misses : 0, tp->dt, ps);
	fmt_rate(ins, sizeof(ins), st->inserts, ps ? ps->inserts : 0, tp->dt, ps);
	fmt_rate(evi, sizeof(evi), st->evictions, ps ? ps->evictions : 0, tp->dt, ps);
	fmt_pct(pct, sizeof(pct), st->hits, lookups);
	if (ps && lookups >= ps->hits + ps->misses && st->hits >= ps->hits)
		fmt_pct(now, sizeof(now), st->hits - ps->hits, lookups - ps->hits - ps->misses);
	else
		snprintf(now, sizeof(now), "-");
	row(f, "clients %u  models %u  lookups/s %s  hit %s (now %s)  inserts/s %s  evictions/s %s",
	    st->clients, st->models, rate, pct + strspn(pct, " "), now + strspn(now, " "), ins, evi);
	if (f->cols >= 90) {
		b[0] = ' ';
		bar(b + 1, 20, st->bytes_budget ? (double)st->bytes_used / (double)st->bytes_budget
						: NAN);
	}
	row(f, "cache %" PRIu64 " entries  %.1f of %.1f MiB%s  leases %" PRIu64
	    "  fragmentation %.1f%%", st->entries, (double)st->bytes_used / (1 << 20),
	    (double)st->bytes_budget / (1 << 20), b, st->leases, 100.0 * st->fragmentation);
	l2_row(tp);
	node_rows(tp);
	row(f, "%s", "");
	row(f, "%-*s %-*s" RIGHT_FMT, LABEL_W, "", bar_width(f) ? bar_width(f) + 2 : 0,
	    bar_width(f) ? "hit rate since start" : "", "hit%", "now%", "lookups/s", "entries",
	    "MiB", "leases");
	for (uint32_t i = 0; i < tp->cur.n_models; i++) {
		const struct ctl_model *m = &tp->cur.models[i], *pm = prev_model(tp, m);
		struct lb_layer_stats sum = { 0 }, psum = { 0 };
		char name[LB_NAME_MAX + 1], label[32];

		/* A model's lookups are its layer 0's: every lookup of the model counts there,
		 * as a hit or a miss (a LOOKUP of one layer counts at that layer only). */
		for (uint32_t l = 0; l < m->n_layers; l++) {
			sum.entries += m->layer[l].entries;
			sum.bytes += m->layer[l].bytes;
			sum.leases += m->layer[l].leases;
		}
		sum.hits = m->layer[0].hits;
		sum.misses = m->layer[0].misses;
		if (pm) {
			psum.hits = pm->layer[0].hits;
			psum.misses = pm->layer[0].misses;
		}
		row(f, "model %s (id %u, %u layers)", lbu_printable(m->name, name, sizeof(name)),
		    m->id, m->n_layers);
		stat_row(tp, "  all", &sum, pm ? &psum : NULL);
		for (uint32_t l = 0; l < m->n_layers; l++) {
			snprintf(label, sizeof(label), "  L%u", l);
			stat_row(tp, label, &m->layer[l], pm ? &pm->layer[l] : NULL);
		}
	}
	if (f->cut && f->rows >= 1) {
		/* The last row says what did not fit, instead of what it held. */
		int cut = f->cut + 1;
		f->row = f->rows - 1;
		row(f, "... %d more rows: enlarge the terminal", cut);
	}
out:
	fb_put(f, "\033[J", 3); /* erase below the last row */
}

char *ctl_top_frame(const char *sock, double interval, const struct ctl_view *cur,
		    const struct ctl_view *prev, double dt, int rows, int cols)
{
	/* The views are copied shallowly: draw reads them, nothing here frees them. */
	struct top tp = { .sock = sock, .interval = interval, .cur = *cur, .dt = dt,
			  .term = { .rows = rows, .cols = cols } };

	if (prev) {
		tp.prev = *prev;
		tp.have_prev = true;
	}
	draw(&tp);
	fb_put(&tp.f, "", 1);
	if (tp.f.len && tp.f.buf[tp.f.len - 1] == '\0')
		return tp.f.buf;
	free(tp.f.buf); /* a short frame: realloc failed on the way */
	return NULL;
}

static double mono_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The library's answers while the daemon is away and it reconnects (liblayerbank(3)). */
static bool daemon_away(int ret)
{
	return ret == -ECONNRESET || ret == -ENOTCONN || ret == -EPIPE || ret == -ETIMEDOUT;
}

/* Read the figures (the previous reading kept for rates) and draw them. @return 0, -errno. */
static int refresh(struct top *tp, struct lb_client *c)
{
	struct ctl_view old = tp->prev;
	double t = mono_s();
	int ret;

	tp->prev = tp->cur;
	tp->cur = old;
	tp->have_prev = tp->prev.models != NULL;
	ret = ctl_view_read(c, &tp->cur);
	if (daemon_away(ret)) {
		/* A new daemon's counters start again: no rates across the gap. */
		ctl_view_free(&tp->cur);
		ctl_view_free(&tp->prev);
		if (!tp->away)
			tp->away_since = t;
		tp->away = true;
	} else if (ret < 0) {
		return ret;
	} else {
		tp->away = false;
	}
	tp->dt = t - tp->t_cur;
	tp->t_cur = t;
	draw(tp);
	return lbu_write_all(STDOUT_FILENO, tp->f.buf, tp->f.len);
}

/* ^Z: give the terminal back, stop, and take it again when continued. */
static int suspend(struct top *tp)
{
	struct sigaction sa, old;

	got_tstp = 0;
	term_leave(&tp->term);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_DFL;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTSTP, &sa, &old);
	raise(SIGTSTP); /* stops here until SIGCONT */
	sigaction(SIGTSTP, &old, NULL);
	return term_enter(&tp->term);
}

/* SECS: a decimal number of seconds, 0.1..3600. */
static int parse_interval(const char *s, double *out)
{
	char *end;
	double d;

	errno = 0;
	d = strtod(s, &end);
	if (end == s || *end || errno || !(d >= 0.1 && d <= 3600))
		return -1;
	*out = d;
	return 0;
}

int ctl_cmd_top(const char *sock, int argc, char **argv)
{
	struct top tp = { .sock = sock, .interval = 1.0 };
	struct lb_client *c;
	double next;
	int ret = 0;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--interval") == 0 && i + 1 < argc) {
			if (parse_interval(argv[++i], &tp.interval) < 0)
				return ctl_usage_error("top", "--interval '%s' is not 0.1..3600 seconds",
						       argv[i]);
		} else if (strcmp(argv[i], "--interval") == 0) {
			return ctl_usage_error("top", "--interval needs SECS");
		} else {
			return ctl_usage_error("top", "unknown argument '%s'", argv[i]);
		}
	}
	if (!isatty(STDIN_FILENO) || !isatty(STDOUT_FILENO))
		return ctl_usage_error("top", "needs a terminal on stdin and stdout (stats and metrics "
					      "print once)");
	if (ctl_connect(sock, &c))
		return CTL_FAIL;
	ret = handle_signals();
	if (ret == 0)
		ret = term_enter(&tp.term);
	next = mono_s();
	while (ret == 0 && !got_quit) {
		struct pollfd p = { .fd = STDIN_FILENO, .events = POLLIN };
		double now = mono_s();
		char keys[64];
		int n;

		if (got_tstp && (ret = suspend(&tp)) < 0)
			break;
		if (got_winch) {
			got_winch = 0;
			term_size(&tp.term);
			if (tp.cur.models || tp.away) {
				draw(&tp);
				if ((ret = lbu_write_all(STDOUT_FILENO, tp.f.buf, tp.f.len)) < 0)
					break;
			}
		}
		if (now >= next) {
			if ((ret = refresh(&tp, c)) < 0)
				break;
			next += tp.interval;
			if (next <= now)
				next = now + tp.interval; /* a slow reading: do not try to catch up */
			continue;
		}
		n = poll(&p, 1, (int)ceil((next - now) * 1000));
		if (n < 0 && errno != EINTR) {
			ret = -errno;
			break;
		}
		if (n <= 0)
			continue;
		n = (int)read(STDIN_FILENO, keys, sizeof(keys));
		if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN))
			break; /* the terminal went away */
		for (int k = 0; k < n; k++) {
			if (keys[k] == 'q' || keys[k] == 'Q')
				got_quit = 1;
			else if (keys[k] == ' ')
				next = now; /* redraw at once */
		}
	}
	term_leave(&tp.term);
	if (ret < 0)
		ret = ctl_fail(c, "top", ret);
	ctl_view_free(&tp.cur);
	ctl_view_free(&tp.prev);
	free(tp.f.buf);
	lb_close(c);
	return ret < 0 ? CTL_FAIL : ret;
}
