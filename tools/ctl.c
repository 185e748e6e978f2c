/* layerbank-ctl: what the commands share (ctl.h): where they connect, their error lines, and
 * one reading of the daemon's figures. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"

const char *ctl_socket_path(const char *sock)
{
	const char *env = getenv(LB_SOCKET_ENV);

	if (sock)
		return sock;
	return env && *env ? env : LB_DEFAULT_SOCKET;
}

int ctl_connect(const char *sock, struct lb_client **c)
{
	int ret = lb_connect(sock, "layerbank-ctl", c);

	if (ret < 0) {
		const char *why = lb_last_error(NULL); /* the daemon's refusal, as EUSERS's */
		fprintf(stderr, "layerbank-ctl: cannot connect to %s: %s%s%s%s\n", ctl_socket_path(sock),
			strerror(-ret),
			ret == -ENOENT || ret == -ECONNREFUSED ? " (is layerbankd running?)" :
			ret == -EACCES ? " (join the socket's group, usually layerbank)" : "",
			*why ? ": " : "", why);
		return CTL_FAIL;
	}
	return CTL_OK;
}

int ctl_fail(struct lb_client *c, const char *cmd, int ret)
{
	const char *why = c ? lb_last_error(c) : "";

	/* liblayerbank would reconnect on the next call; a one-shot command has none. */
	if (ret == -ECONNRESET || ret == -ENOTCONN || ret == -EPIPE)
		why = "layerbankd went away";
	/* A FLUSH or a lower budget on a huge cache can outlast the library's wait for a reply;
	 * the daemon still finishes it. */
	if (ret == -ETIMEDOUT)
		why = "no answer within 5 s; the daemon may still be at it (its log says when done)";

	fprintf(stderr, "layerbank-ctl: %s: %s\n", cmd, *why ? why : strerror(-ret));
	return CTL_FAIL;
}

int ctl_usage_error(const char *cmd, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "layerbank-ctl: %s: ", cmd);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, " (see --help)\n");
	return CTL_USAGE;
}

void ctl_view_free(struct ctl_view *v)
{
	for (uint32_t i = 0; i < v->n_models; i++) {
		free(v->models[i].layer);
		free(v->models[i].tau);
	}
	free(v->models);
	memset(v, 0, sizeof(*v));
}

int ctl_view_read(struct lb_client *c, struct ctl_view *v)
{
	static struct lb_layer_stats scratch[1024]; /* LBP_MAX_LAYERS: the most a model has */
	static struct lb_layer_tau taus[1024];
	int ret;

	ctl_view_free(v);
	ret = lb_stats(c, &v->st, sizeof(v->st));
	if (ret < 0)
		return ret;
	v->models = calloc(v->st.models ? v->st.models : 1, sizeof(*v->models));
	if (!v->models)
		return -ENOMEM;
	/* Model ids are 1..models, never reused. */
	for (uint32_t id = 1; id <= v->st.models; id++) {
		struct ctl_model *m = &v->models[v->n_models];
		ret = lb_model_stats(c, id, m->name, scratch, 1024);
		if (ret == -ESRCH)
			continue; /* registered, but its bank could not be made */
		if (ret < 0)
			return ret;
		m->layer = malloc(sizeof(*m->layer) * (size_t)(ret ? ret : 1));
		m->tau = calloc((size_t)(ret ? ret : 1), sizeof(*m->tau));
		if (!m->layer || !m->tau) {
			free(m->layer);
			free(m->tau);
			return -ENOMEM;
		}
		m->id = id;
		m->n_layers = (uint32_t)ret;
		memcpy(m->layer, scratch, sizeof(*m->layer) * m->n_layers);
		v->n_models++;
		ret = lb_model_taus(c, id, taus, 1024);
		if (ret < 0 && ret != -ESRCH)
			return ret;
		if (ret == (int)m->n_layers)
			memcpy(m->tau, taus, sizeof(*m->tau) * m->n_layers);
	}
	return 0;
}

const struct ctl_model *ctl_view_model(const struct ctl_view *v, const char *name)
{
	char *end;
	unsigned long id;

	for (uint32_t i = 0; i < v->n_models; i++)
		if (strcmp(v->models[i].name, name) == 0)
			return &v->models[i];
	errno = 0;
	id = strtoul(name, &end, 10);
	if (*name < '0' || *name > '9' || *end || errno)
		return NULL;
	for (uint32_t i = 0; i < v->n_models; i++)
		if (v->models[i].id == id)
			return &v->models[i];
	return NULL;
}
