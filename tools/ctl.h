/* layerbank-ctl: what its commands share (the connection, error lines, one reading of the
 * daemon's figures: ctl.c), the commands themselves, one file each, and the views they draw
 * of a reading, which test_ctl also draws of readings made up. Together the library lbctl;
 * layerbank-ctl.c is the command line. */
#ifndef LAYERBANK_TOOLS_CTL_H
#define LAYERBANK_TOOLS_CTL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "layerbank/layerbank.h"

/* Exit statuses (layerbank-ctl(1)). */
#define CTL_OK 0
#define CTL_FAIL 1  /* the daemon could not be reached, refused, or went away */
#define CTL_USAGE 2 /* bad command line */

/* One model's per-layer counters. */
struct ctl_model {
	uint32_t id, n_layers;
	char name[LB_NAME_MAX + 1];
	struct lb_layer_stats *layer; /* [n_layers], owned */
	struct lb_layer_tau *tau;     /* [n_layers], owned: thresholds and drift reports */
};

/* The daemon's figures at one moment: STATS, then MODEL_STATS of every model. */
struct ctl_view {
	struct lb_stats st;
	struct ctl_model *models; /* [n_models], owned */
	uint32_t n_models;
};

/* Where a command connects: --socket, else $LAYERBANK_SOCKET, else the default. */
const char *ctl_socket_path(const char *sock);

/* Connect as "layerbank-ctl". @return 0, or CTL_FAIL after printing one line saying why. */
int ctl_connect(const char *sock, struct lb_client **c);

/* Print "layerbank-ctl: CMD: why" for a failed call (the daemon's message when it sent one).
 * @return CTL_FAIL. */
int ctl_fail(struct lb_client *c, const char *cmd, int ret);

/* Print "layerbank-ctl: CMD: ..." for a bad command line. @return CTL_USAGE. */
int ctl_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Read the figures into v (whose old contents are freed). @return 0, or a negative errno. */
int ctl_view_read(struct lb_client *c, struct ctl_view *v);
void ctl_view_free(struct ctl_view *v);

/* The model named name, else the one whose id name spells in decimal. NULL: none. */
const struct ctl_model *ctl_view_model(const struct ctl_view *v, const char *name);

/* The views of a reading, as the commands print them: stats as a table or as one JSON object
 * (--json); metrics in the Prometheus text format. */
void ctl_stats_print(FILE *out, const struct ctl_view *v, bool json);
void ctl_metrics_print(FILE *out, const struct ctl_view *v);

/* One frame of top for a terminal of rows x cols, as drawn for the daemon at sock (NULL: the
 * default path) read every interval seconds: cur's figures, with rates against prev over dt
 * seconds (prev NULL: none yet). @return the frame, cursor moves and text, NUL-terminated and
 * to be freed; NULL without memory. */
char *ctl_top_frame(const char *sock, double interval, const struct ctl_view *cur,
		    const struct ctl_view *prev, double dt, int rows, int cols);

/* The commands: argv[0] is the command's name. @return the exit status. */
int ctl_cmd_stats(const char *sock, int argc, char **argv);
int ctl_cmd_flush(const char *sock, int argc, char **argv);
int ctl_cmd_config(const char *sock, int argc, char **argv);
int ctl_cmd_metrics(const char *sock, int argc, char **argv);
int ctl_cmd_top(const char *sock, int argc, char **argv);
int ctl_cmd_snapshot(const char *sock, int argc, char **argv);

#endif
