/* Tests for daemon/log.c: journald detection through $JOURNAL_STREAM, the <N> prefixes and the
 * plain format, the level filter, and the rate limit on repeated events with its summary. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "testutil.h"

static uint64_t fake_now;
static uint64_t fake_clock(void)
{
	return fake_now;
}

struct capture {
	char *buf;
	size_t len;
	FILE *f;
	struct lbd_logger lg;
};

static void capture_open(struct capture *c, enum lbd_log_style style, enum lbd_log_level level)
{
	memset(c, 0, sizeof(*c));
	c->f = open_memstream(&c->buf, &c->len);
	assert_non_null(c->f);
	fake_now = 1000;
	lbd_logger_init(&c->lg, c->f, style, level, fake_clock);
}

static const char *capture_text(struct capture *c)
{
	fflush(c->f);
	return c->buf;
}

static void capture_close(struct capture *c)
{
	fclose(c->f);
	free(c->buf);
	pthread_mutex_destroy(&c->lg.lock);
}

static unsigned count_lines(const char *s)
{
	unsigned n = 0;
	for (; *s; s++)
		n += *s == '\n';
	return n;
}

static void lg(struct lbd_logger *l, enum lbd_log_level level, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void lg(struct lbd_logger *l, enum lbd_log_level level, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	lbd_logger_vlog(l, level, fmt, ap);
	va_end(ap);
}

/* JOURNAL only when $JOURNAL_STREAM names exactly this fd's device and inode. */
static void test_journal_detected_by_dev_ino_only(void **state)
{
	(void)state;
	char dir[200], path[256], env[64];
	struct stat st;
	lbt_mkdtemp(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/stream", dir);
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	assert_int_equal(fstat(fileno(f), &st), 0);

	snprintf(env, sizeof(env), "%llu:%llu", (unsigned long long)st.st_dev,
		 (unsigned long long)st.st_ino);
	assert_int_equal(lbd_log_detect(fileno(f), env), LBD_LOG_JOURNAL);
	snprintf(env, sizeof(env), "%llu:%llu", (unsigned long long)st.st_dev,
		 (unsigned long long)st.st_ino + 1);
	assert_int_equal(lbd_log_detect(fileno(f), env), LBD_LOG_PLAIN);
	snprintf(env, sizeof(env), "%llu:%llu", (unsigned long long)st.st_dev + 1,
		 (unsigned long long)st.st_ino);
	assert_int_equal(lbd_log_detect(fileno(f), env), LBD_LOG_PLAIN);
	assert_int_equal(lbd_log_detect(fileno(f), NULL), LBD_LOG_PLAIN);
	assert_int_equal(lbd_log_detect(fileno(f), ""), LBD_LOG_PLAIN);
	assert_int_equal(lbd_log_detect(fileno(f), "garbage"), LBD_LOG_PLAIN);
	snprintf(env, sizeof(env), "%llu:%llux", (unsigned long long)st.st_dev,
		 (unsigned long long)st.st_ino);
	assert_int_equal(lbd_log_detect(fileno(f), env), LBD_LOG_PLAIN);
	fclose(f);
	lbu_rmtree(dir);
}

/* Journal lines carry sd-daemon's <N> and no timestamp; plain lines a timestamp and level. */
static void test_journal_prefixes_and_plain_format(void **state)
{
	(void)state;
	struct capture c;

	capture_open(&c, LBD_LOG_JOURNAL, LBD_LOG_DEBUG);
	lg(&c.lg, LBD_LOG_ERROR, "e %d", 1);
	lg(&c.lg, LBD_LOG_WARN, "w %d", 2);
	lg(&c.lg, LBD_LOG_INFO, "i %d", 3);
	lg(&c.lg, LBD_LOG_DEBUG, "d %d", 4);
	assert_string_equal(capture_text(&c), "<3>e 1\n<4>w 2\n<6>i 3\n<7>d 4\n");
	capture_close(&c);

	capture_open(&c, LBD_LOG_PLAIN, LBD_LOG_INFO);
	lg(&c.lg, LBD_LOG_WARN, "client %s said %s", "a\nb", "hi");
	const char *t = capture_text(&c);
	/* 2026-01-01T00:00:00.000Z layerbankd warn: ... */
	assert_int_equal(t[4], '-');
	assert_int_equal(t[10], 'T');
	assert_int_equal(t[23], 'Z');
	/* A newline in a value cannot start a second line. */
	assert_string_equal(t + 24, " layerbankd warn: client a?b said hi\n");
	capture_close(&c);
}

/* Lines above the configured level are neither written nor counted. */
static void test_level_filter(void **state)
{
	(void)state;
	struct capture c;
	capture_open(&c, LBD_LOG_JOURNAL, LBD_LOG_WARN);
	lg(&c.lg, LBD_LOG_INFO, "info");
	lg(&c.lg, LBD_LOG_DEBUG, "debug");
	lg(&c.lg, LBD_LOG_WARN, "warn");
	lg(&c.lg, LBD_LOG_ERROR, "error");
	assert_string_equal(capture_text(&c), "<4>warn\n<3>error\n");
	capture_close(&c);
}

/* A flood of one event: LBD_LOG_BURST lines, then silence, then one summary line when the
 * window ends; other events are not held back meanwhile. */
static void test_rate_limit_burst_then_summary(void **state)
{
	(void)state;
	static const char flood[] = "client %d: recv failed";
	struct capture c;
	capture_open(&c, LBD_LOG_JOURNAL, LBD_LOG_INFO);

	for (int i = 0; i < 1000; i++) {
		lg(&c.lg, LBD_LOG_WARN, flood, i);
		fake_now += 1000000; /* 1 ms apart: 1 s in all, inside one window */
	}
	lg(&c.lg, LBD_LOG_INFO, "another event");
	const char *t = capture_text(&c);
	assert_int_equal(count_lines(t), LBD_LOG_BURST + 1);
	assert_non_null(strstr(t, "<4>client 9: recv failed\n"));
	assert_null(strstr(t, "client 10:"));
	assert_null(strstr(t, "suppressed"));
	assert_non_null(strstr(t, "<6>another event\n"));

	/* The window ends: the next line of any event brings the summary first. */
	fake_now += LBD_LOG_WINDOW_NS;
	lg(&c.lg, LBD_LOG_INFO, "later");
	t = capture_text(&c);
	printf("%s", t);
	assert_non_null(strstr(t, "<4>... suppressed 990 similar messages (\"client %d: recv failed\")\n<6>later\n"));

	/* A fresh window: the event is printed again. */
	lg(&c.lg, LBD_LOG_WARN, flood, 5000);
	assert_non_null(strstr(capture_text(&c), "<4>client 5000: recv failed\n"));
	capture_close(&c);
}

/* At exit (flush all) a window still open is summarised; an event under the burst never is. */
static void test_rate_limit_flush_at_exit(void **state)
{
	(void)state;
	static const char ev[] = "tick %d";
	struct capture c;
	capture_open(&c, LBD_LOG_JOURNAL, LBD_LOG_INFO);
	for (int i = 0; i < (int)LBD_LOG_BURST; i++)
		lg(&c.lg, LBD_LOG_INFO, ev, i);
	lbd_logger_flush(&c.lg, 1);
	assert_int_equal(count_lines(capture_text(&c)), LBD_LOG_BURST);
	assert_null(strstr(capture_text(&c), "suppressed"));
	for (int i = 0; i < 15; i++)
		lg(&c.lg, LBD_LOG_INFO, ev, i);
	lbd_logger_flush(&c.lg, 0); /* window not over: nothing yet */
	assert_null(strstr(capture_text(&c), "suppressed"));
	lbd_logger_flush(&c.lg, 1);
	assert_non_null(strstr(capture_text(&c), "suppressed 5 similar messages"));
	capture_close(&c);
}

/* More distinct events than slots: each still gets its burst, none is lost silently. */
static void test_rate_limit_many_events(void **state)
{
	(void)state;
	static const char *const fmts[] = { "a%d", "b%d", "c%d", "d%d", "e%d", "f%d", "g%d",
					    "h%d", "i%d", "j%d", "k%d", "l%d", "m%d", "n%d",
					    "o%d", "p%d", "q%d", "r%d", "s%d", "t%d" };
	struct capture c;
	capture_open(&c, LBD_LOG_JOURNAL, LBD_LOG_INFO);
	for (size_t i = 0; i < sizeof(fmts) / sizeof(fmts[0]); i++) {
		for (int k = 0; k < 12; k++) {
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
			lg(&c.lg, LBD_LOG_INFO, fmts[i], k); /* each a distinct event, as call sites are */
#pragma GCC diagnostic pop
			fake_now++;
		}
	}
	lbd_logger_flush(&c.lg, 1);
	/* 20 events: 10 lines and one summary (2 dropped) each. */
	const char *t = capture_text(&c);
	assert_int_equal(count_lines(t), 20 * (LBD_LOG_BURST + 1));
	assert_non_null(strstr(t, "suppressed 2 similar messages (\"t%d\")"));
	assert_non_null(strstr(t, "suppressed 2 similar messages (\"a%d\")"));
	capture_close(&c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_journal_detected_by_dev_ino_only),
		cmocka_unit_test(test_journal_prefixes_and_plain_format),
		cmocka_unit_test(test_level_filter),
		cmocka_unit_test(test_rate_limit_burst_then_summary),
		cmocka_unit_test(test_rate_limit_flush_at_exit),
		cmocka_unit_test(test_rate_limit_many_events),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
