/* layerbankd logging: one line per event, to stderr in the foreground (with journald's <N>
 * priority prefixes when stderr is the journal), syslog otherwise; repeats are rate-limited. */
#ifndef LAYERBANK_DAEMON_LOG_H
#define LAYERBANK_DAEMON_LOG_H

#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>

enum lbd_log_level { LBD_LOG_ERROR = 0, LBD_LOG_WARN = 1, LBD_LOG_INFO = 2, LBD_LOG_DEBUG = 3 };

/* How a line is written: PLAIN "2026-01-01T00:00:00.000Z layerbankd info: text" for a
 * terminal or file, JOURNAL "<6>text" (sd-daemon(3) prefixes; journald adds the time),
 * SYSLOG through syslog(3) once detached. */
enum lbd_log_style { LBD_LOG_PLAIN, LBD_LOG_JOURNAL, LBD_LOG_SYSLOG };

/* Repeats of one event (one format string) beyond LBD_LOG_BURST lines within
 * LBD_LOG_WINDOW_NS are dropped; when the window has ended, one line says how many were. */
#define LBD_LOG_BURST 10u
#define LBD_LOG_WINDOW_NS (5ull * 1000000000ull)
#define LBD_LOG_SLOTS 16u /* distinct formats tracked at once */

struct lbd_log_slot {
	const char *fmt;         /* the event's identity: the call site's format string */
	enum lbd_log_level level;
	uint64_t window_start;   /* now_ns() at its first line of this window */
	unsigned lines;          /* lines in this window, printed or not */
	unsigned suppressed;     /* lines dropped in this window */
};

/* A log destination. The daemon uses one global logger (lbd_log_setup); tests make their own
 * with a FILE and a fake clock. lock guards everything below it: any thread may log. */
struct lbd_logger {
	FILE *out;               /* PLAIN and JOURNAL styles */
	enum lbd_log_style style;
	enum lbd_log_level level; /* lines above it are not written (and not counted) */
	uint64_t (*now_ns)(void); /* CLOCK_MONOTONIC nanoseconds */
	pthread_mutex_t lock;
	struct lbd_log_slot slots[LBD_LOG_SLOTS];
};

/* The style stderr (fd) needs: JOURNAL when journal_stream ($JOURNAL_STREAM, "DEV:INO" as
 * systemd.exec(5) sets it) names fd's device and inode, PLAIN otherwise (NULL included). */
enum lbd_log_style lbd_log_detect(int fd, const char *journal_stream);

void lbd_logger_init(struct lbd_logger *lg, FILE *out, enum lbd_log_style style,
		     enum lbd_log_level level, uint64_t (*now_ns)(void));
/* Write one event (rate-limited); first any summary of a window that has ended. */
void lbd_logger_vlog(struct lbd_logger *lg, enum lbd_log_level level, const char *fmt, va_list ap)
	__attribute__((format(printf, 3, 0)));
/* Write the summaries of ended windows (all of them when all is nonzero, as at exit). */
void lbd_logger_flush(struct lbd_logger *lg, int all);

/* The global logger: stderr with the style lbd_log_detect picks, or syslog. */
void lbd_log_setup(enum lbd_log_level level, int use_syslog);
/* @return 0 and *out set, or -1 when name is none of error|warn|info|debug. */
int lbd_log_level_parse(const char *name, enum lbd_log_level *out);
void lbd_log(enum lbd_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* lbd_logger_flush on the global logger. */
void lbd_log_flush(int all);

#define lbd_err(...) lbd_log(LBD_LOG_ERROR, __VA_ARGS__)
#define lbd_warn(...) lbd_log(LBD_LOG_WARN, __VA_ARGS__)
#define lbd_info(...) lbd_log(LBD_LOG_INFO, __VA_ARGS__)
#define lbd_debug(...) lbd_log(LBD_LOG_DEBUG, __VA_ARGS__)

#endif
