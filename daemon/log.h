/* layerbankd logging: one line per event, to stderr in the foreground, syslog otherwise. */
#ifndef LAYERBANK_DAEMON_LOG_H
#define LAYERBANK_DAEMON_LOG_H

enum lbd_log_level { LBD_LOG_ERROR = 0, LBD_LOG_WARN = 1, LBD_LOG_INFO = 2, LBD_LOG_DEBUG = 3 };

void lbd_log_setup(enum lbd_log_level level, int use_syslog);
/* @return 0 and *out set, or -1 when name is none of error|warn|info|debug. */
int lbd_log_level_parse(const char *name, enum lbd_log_level *out);
void lbd_log(enum lbd_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define lbd_err(...) lbd_log(LBD_LOG_ERROR, __VA_ARGS__)
#define lbd_warn(...) lbd_log(LBD_LOG_WARN, __VA_ARGS__)
#define lbd_info(...) lbd_log(LBD_LOG_INFO, __VA_ARGS__)
#define lbd_debug(...) lbd_log(LBD_LOG_DEBUG, __VA_ARGS__)

#endif
