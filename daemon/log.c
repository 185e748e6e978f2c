/* layerbankd logging: level filter, per-event rate limit, and the line format for a terminal,
 * journald (stderr connected to the journal) or syslog. */
#include "log.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <systemd/sd-daemon.h>
#include <time.h>

static const char *const level_names[] = { "error", "warn", "info", "debug" };

static uint64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* out NULL stands for stderr, which is not a constant: lbd_log works before lbd_log_setup. */
static struct lbd_logger global = {
	.out = NULL,
	.style = LBD_LOG_PLAIN,
	.level = LBD_LOG_INFO,
	.now_ns = mono_ns,
	.lock = PTHREAD_MUTEX_INITIALIZER,
};

enum lbd_log_style lbd_log_detect(int fd, const char *journal_stream)
{
	unsigned long long dev, ino;
	struct stat st;
	int used = 0;

	if (!journal_stream)
		return LBD_LOG_PLAIN;
	if (sscanf(journal_stream, "%llu:%llu%n", &dev, &ino, &used) != 2 ||
	    journal_stream[used] != '\0')
		return LBD_LOG_PLAIN;
	if (fstat(fd, &st) < 0)
		return LBD_LOG_PLAIN;
	/* Inherited by a child whose stderr was redirected elsewhere: then it is not ours. */
	if ((unsigned long long)st.st_dev != dev || (unsigned long long)st.st_ino != ino)
		return LBD_LOG_PLAIN;
	return LBD_LOG_JOURNAL;
}

void lbd_logger_init(struct lbd_logger *lg, FILE *out, enum lbd_log_style style,
		     enum lbd_log_level level, uint64_t (*now_ns)(void))
{
	memset(lg, 0, sizeof(*lg));
	lg->out = out;
	lg->style = style;
	lg->level = level;
	lg->now_ns = now_ns ? now_ns : mono_ns;
	pthread_mutex_init(&lg->lock, NULL);
}

/* One finished line, lock held. Control characters (a client's name may hold a newline)
 * become '?', so one event is always one line. */
static void emit(struct lbd_logger *lg, enum lbd_log_level level, char *text)
{
	static const int prio[] = { LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG };
	static const char *const journal_prefix[] = { SD_ERR, SD_WARNING, SD_INFO, SD_DEBUG };
	FILE *out = lg->out ? lg->out : stderr;

	for (char *p = text; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = '?';
	switch (lg->style) {
	case LBD_LOG_SYSLOG:
		syslog(prio[level], "%s", text);
		return;
	case LBD_LOG_JOURNAL:
		/* journald stamps the time and the unit; the prefix carries the priority. */
		fprintf(out, "%s%s\n", journal_prefix[level], text);
		break;
	case LBD_LOG_PLAIN: {
		struct timespec ts;
		struct tm tm;
		clock_gettime(CLOCK_REALTIME, &ts);
		gmtime_r(&ts.tv_sec, &tm);
		fprintf(out, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ layerbankd %s: %s\n",
			tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
			ts.tv_nsec / 1000000L, level_names[level], text);
		break;
	}
	}
	fflush(out);
}

/* Say how many lines of slot's window were dropped, and free the slot. Lock held. */
static void close_slot(struct lbd_logger *lg, struct lbd_log_slot *slot)
{
	char line[256];

	if (slot->suppressed) {
		snprintf(line, sizeof(line), "... suppressed %u similar messages (\"%s\")",
			 slot->suppressed, slot->fmt);
		emit(lg, slot->level, line);
	}
	memset(slot, 0, sizeof(*slot));
}

static void flush_locked(struct lbd_logger *lg, uint64_t now, int all)
{
	for (unsigned i = 0; i < LBD_LOG_SLOTS; i++) {
		struct lbd_log_slot *slot = &lg->slots[i];
		if (slot->fmt && (all || now - slot->window_start >= LBD_LOG_WINDOW_NS))
			close_slot(lg, slot);
	}
}

/* fmt's slot; a new one (taking over the oldest window when all are busy) if it has none. */
static struct lbd_log_slot *slot_for(struct lbd_logger *lg, const char *fmt,
				     enum lbd_log_level level, uint64_t now)
{
	struct lbd_log_slot *free_slot = NULL, *oldest = &lg->slots[0];

	for (unsigned i = 0; i < LBD_LOG_SLOTS; i++) {
		struct lbd_log_slot *slot = &lg->slots[i];
		if (slot->fmt == fmt)
			return slot;
		if (!slot->fmt && !free_slot)
			free_slot = slot;
		if (slot->window_start < oldest->window_start)
			oldest = slot;
	}
	if (!free_slot) {
		close_slot(lg, oldest);
		free_slot = oldest;
	}
	free_slot->fmt = fmt;
	free_slot->level = level;
	free_slot->window_start = now;
	return free_slot;
}

void lbd_logger_vlog(struct lbd_logger *lg, enum lbd_log_level level, const char *fmt, va_list ap)
{
	char line[1024];
	uint64_t now;

	if (level > lg->level)
		return;
	pthread_mutex_lock(&lg->lock);
	now = lg->now_ns();
	flush_locked(lg, now, 0);
	struct lbd_log_slot *slot = slot_for(lg, fmt, level, now);
	if (++slot->lines > LBD_LOG_BURST) {
		slot->suppressed++;
		pthread_mutex_unlock(&lg->lock);
		return;
	}
	vsnprintf(line, sizeof(line), fmt, ap);
	emit(lg, level, line);
	pthread_mutex_unlock(&lg->lock);
}

void lbd_logger_flush(struct lbd_logger *lg, int all)
{
	pthread_mutex_lock(&lg->lock);
	flush_locked(lg, lg->now_ns(), all);
	pthread_mutex_unlock(&lg->lock);
}

void lbd_log_setup(enum lbd_log_level level, int use_syslog)
{
	pthread_mutex_lock(&global.lock);
	global.level = level;
	if (use_syslog) {
		openlog("layerbankd", LOG_PID, LOG_DAEMON);
		global.style = LBD_LOG_SYSLOG;
	} else {
		global.style = lbd_log_detect(2, getenv("JOURNAL_STREAM"));
	}
	pthread_mutex_unlock(&global.lock);
}

int lbd_log_level_parse(const char *name, enum lbd_log_level *out)
{
	for (unsigned i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
		if (strcmp(name, level_names[i]) == 0) {
			*out = (enum lbd_log_level)i;
			return 0;
		}
	}
	return -1;
}

void lbd_log(enum lbd_log_level level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	lbd_logger_vlog(&global, level, fmt, ap);
	va_end(ap);
}

void lbd_log_flush(int all)
{
	lbd_logger_flush(&global, all);
}
