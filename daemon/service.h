/* layerbankd service threads: each polls the request rings of its clients, serves them from
 * the store and answers on their completion rings; spins a bounded time, then sleeps on the
 * rings' doorbells. */
#ifndef LAYERBANK_DAEMON_SERVICE_H
#define LAYERBANK_DAEMON_SERVICE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "layerbank/ring.h"
#include "models.h"
#include "store.h"

/*
 * A LOOKUP_DEEPEST held while another client computes its input (single-flight, PROTOCOL.md
 * Ring protocol 15): taken off the ring, answered later. While one is held none of the client's
 * later requests is taken, so that its completions stay in ring order; the service thread
 * serves its other clients meanwhile and looks at this one again when a claim ends or at
 * wake_ns. Owned by the client's service thread.
 */
struct lbd_held {
	bool on;
	struct lb_req r;
	struct lb_query q;             /* the payload as copied out when the request was taken */
	float thr[LBP_MAX_LAYERS];     /* q.n_thr of them */
	uint64_t since_ns;             /* when it was taken */
	uint64_t until_ns;             /* since_ns + its bound (aux us): held no longer */
	uint64_t wake_ns;              /* look again by then: until_ns, or the claim's bound */
	uint32_t seq;                  /* the store's claim sequence when it was held */
	bool tier_asked;               /* lbd_hold's: the second tier was asked for its input */
};

/* One client's data plane: its region and leases. Created by the control thread at HELLO,
 * then owned by one service thread until lbd_service_detach hands it back for freeing. */
struct lbd_dpclient {
	/* Bit id - 1: the model ids the client registered on its connection, the only ones its
	 * requests may name (a guessed id gets -EACCES, so the allow-lists cannot be got round).
	 * Set by the control thread (lbd_dpclient_allow), read by the service thread. */
	_Atomic uint64_t models[LBD_MAX_MODELS / 64];
	int fd;              /* region memfd, passed in WELCOME */
	uint8_t *base;       /* daemon's read-write mapping */
	uint64_t bytes;
	struct lb_region_hdr layout; /* our own copy: never read back from the region */
	struct lb_ring_view req;     /* we consume */
	struct lb_ring_view cpl;     /* we produce */
	struct lbd_leases leases;
	uint32_t account;    /* its uid's insert account in the store (insert-bytes-per-uid,
			      * lbd_store_account_join); 0: none */
	int node;            /* the NUMA node it runs on (HELLO), its inserts' home; -1: unknown */
	uint64_t client_id;
	pid_t pid;
	struct lbd_dpclient *next_pending;
	unsigned thread;
	/* Set when a service thread serves it (lbd_service_attach): only then may a request be
	 * held, as only a service thread comes back to it. A client pumped by its own thread
	 * (lbd_dpclient_pump, the in-process bank) gets its answers at once. */
	bool may_hold;
	struct lbd_held held;
};

struct lbd_svc_thread;

struct lbd_service {
	struct lbd_store *store;
	/* The reaper: unmaps, closes and frees the regions of clients that went away. Freeing an
	 * 8 MiB region takes milliseconds (the kernel frees its pages), which a service thread
	 * would otherwise spend not serving its other clients. */
	pthread_t reaper;
	bool reaper_started;
	pthread_mutex_t reap_mu;
	pthread_cond_t reap_cv;
	struct lbd_dpclient *to_reap; /* under reap_mu, linked by next_pending */
	bool reap_stop;               /* under reap_mu */
	/* Written by the control thread (lbd_service_set_spin), read by every service thread at
	 * each idle poll: relaxed, as nothing else is published with it. */
	_Atomic uint64_t spin_ns;
	unsigned n_threads;
	struct lbd_svc_thread *t;
	unsigned next; /* round-robin placement */
};

/* Region sizes the daemon grants: wished sizes (0: default) clamped to these bounds. */
struct lbd_region_limits {
	uint32_t ring_default, ring_max;
	uint64_t staging_default, staging_max;
};

/* The staging a wish of staging_bytes (0: the default) is granted within lim: clamped, then
 * rounded up to whole pages. */
uint64_t lbd_region_staging(const struct lbd_region_limits *lim, uint64_t staging_bytes);

/* Create a client's region (memfd, mapped, rings initialised); its staging as
 * lbd_region_staging grants it. @return NULL with errno. */
struct lbd_dpclient *lbd_dpclient_new(const struct lbd_region_limits *lim, uint32_t req_entries,
				      uint32_t cpl_entries, uint64_t staging_bytes, uint64_t client_id,
				      pid_t pid);

/* c registered model_id: its requests may name it from now on. Called before the MODEL reply
 * goes out, so the client's next request already sees it. */
void lbd_dpclient_allow(struct lbd_dpclient *c, uint32_t model_id);

/* Whether c may name model_id in a request (it registered it). */
bool lbd_dpclient_may_use(const struct lbd_dpclient *c, uint32_t model_id);

/* Free a client no service thread holds (lbd_dpclient_pump's): its leases end first, and its
 * insert account is closed (its entries keep their charge until they go). */
void lbd_dpclient_free(struct lbd_store *st, struct lbd_dpclient *c);

/* Serve every request waiting on c's ring, on the caller's thread: an in-process bank
 * (inproc/inproc.h) runs the daemon's own validation and store code this way. No request is
 * held (single-flight answers at once). @return requests served. */
unsigned lbd_dpclient_pump(struct lbd_store *st, struct lbd_dpclient *c);

/* nodes[n_nodes]: the NUMA nodes with arenas (-1: not bound). With at least one thread per node,
 * thread i serves the clients of nodes[i % n_nodes] and runs on that node's CPUs; with fewer,
 * every thread serves every client, unpinned. @return 0, or -errno (threads could not start). */
int lbd_service_start(struct lbd_service *s, struct lbd_store *st, unsigned n_threads,
		      uint64_t spin_ns, const int *nodes, unsigned n_nodes);
/* How long an idle thread spins before it sleeps, from its next idle poll on (a sleeping
 * thread keeps sleeping until a doorbell rings). */
void lbd_service_set_spin(struct lbd_service *s, uint64_t spin_ns);
uint64_t lbd_service_spin(const struct lbd_service *s);

/* Stop and join the threads, freeing every client still attached. */
void lbd_service_stop(struct lbd_service *s);

/* Hand c to a service thread: one of c->node's, if any. */
void lbd_service_attach(struct lbd_service *s, struct lbd_dpclient *c);
/* The client went away: its thread releases its leases and frees it. c must not be used
 * after this call. */
void lbd_service_detach(struct lbd_service *s, struct lbd_dpclient *c);

#endif
