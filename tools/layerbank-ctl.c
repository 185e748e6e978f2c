/* layerbank-ctl: talk to a running layerbankd from the command line. This file: the command
 * line; the commands are in the library lbctl (ctl.h), one file each.
 * Exit status: 0 done, 1 the daemon could not be reached or refused, 2 bad usage. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "ctl.h"

static void usage(FILE *out)
{
	fprintf(out,
		"usage: layerbank-ctl [--socket PATH] COMMAND [ARGS]\n"
		"\n"
		"commands:\n"
		"  stats [--json]                    the daemon's counters, as a table or one JSON object\n"
		"  top [--interval SECS]             a live view, refreshed every SECS (default 1); q quits\n"
		"  metrics                           the counters in Prometheus text format 0.0.4\n"
		"  flush [--model M [--layer L]]     drop cached entries: all, one model's (name or id),\n"
		"                                    or one layer's; leased ones when released\n"
		"  config get [KEY]                  run-time settings: every one, or KEY\n"
		"  config set KEY VALUE              change one: tau, tau.MODEL.LAYER, budget, policy,\n"
		"                                    spin-us, ttl, half-life, drift-max\n"
		"  snapshot                          write the snapshot file now (the daemon must run\n"
		"                                    with --snapshot FILE)\n"
		"\n"
		"flush, config set and snapshot need root or the daemon's user.\n"
		"\n"
		"options:\n"
		"  -s, --socket PATH  daemon socket (default: $" LB_SOCKET_ENV " or " LB_DEFAULT_SOCKET ")\n"
		"  -h, --help         this text\n"
		"\n"
		"exit status: 0 done, 1 the daemon could not be reached or refused, 2 bad usage\n");
}

/* ---- the command line ---- */

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	static const struct {
		const char *name;
		int (*run)(const char *sock, int argc, char **argv);
	} cmds[] = {
		{ "stats", ctl_cmd_stats },	{ "top", ctl_cmd_top },
		{ "metrics", ctl_cmd_metrics }, { "flush", ctl_cmd_flush },
		{ "config", ctl_cmd_config },	{ "snapshot", ctl_cmd_snapshot },
	};
	const char *sock = NULL;
	int ch;

	opterr = 0;
	/* '+': stop at the command, whose own options follow it. */
	while ((ch = getopt_long(argc, argv, "+:s:h", opts, NULL)) != -1) {
		switch (ch) {
		case 's':
			sock = optarg;
			break;
		case 'h':
			usage(stdout);
			return CTL_OK;
		default:
			fprintf(stderr, "layerbank-ctl: %s '%s'; see --help\n",
				ch == ':' ? "missing value for" : "unknown option", argv[optind - 1]);
			return CTL_USAGE;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return CTL_USAGE;
	}
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		if (strcmp(argv[optind], cmds[i].name) == 0)
			return cmds[i].run(sock, argc - optind, argv + optind);
	fprintf(stderr, "layerbank-ctl: unknown command '%s'; see --help\n", argv[optind]);
	return CTL_USAGE;
}
