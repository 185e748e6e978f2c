/* layerbankd limits per uid: how many connections each peer uid (SO_PEERCRED) holds and how
 * much staging its connections were granted, against max-connections-per-uid and
 * staging-per-uid (tests/fault/ISOLATION.md, "Limits per uid"). The insert quota per uid is
 * the store's account of the uid (lbd_store_account_join). */
#ifndef LAYERBANK_DAEMON_UIDS_H
#define LAYERBANK_DAEMON_UIDS_H

#include <stdbool.h>
#include <stdint.h>

/* Connections of one uid past its limit that may wait for their HELLO to be told why they are
 * refused; one more is closed at once (after a best-effort ERROR). A client that sends HELLO
 * right after connecting, as liblayerbank does, waits microseconds there. */
#define LBD_UID_REFUSING_MAX 16u

/* The least staging a connection is granted: one page. */
#define LBD_STAGING_MIN 4096u

/* One uid with connections. Owned by the control thread, like the connections. */
struct lbd_uid_use {
	uint32_t uid;
	uint32_t conns;    /* accepted and not ended, HELLO or not: counted against the limit */
	uint32_t refusing; /* accepted past the limit, waiting for their HELLO to be refused */
	uint64_t staging;  /* bytes granted to its connections that have a region */
	struct lbd_uid_use *next;
};

struct lbd_uids {
	struct lbd_uid_use *head; /* the uids with a connection (counted or refusing) */
	uint32_t n;
};

enum lbd_uid_verdict {
	LBD_UID_ADMIT,  /* counted in conns */
	LBD_UID_REFUSE, /* counted in refusing: answer its HELLO with EUSERS, then close */
	LBD_UID_DROP,   /* LBD_UID_REFUSING_MAX are waiting already: close it now, not counted */
};

/*
 * A connection of uid was accepted: admitted while uid holds fewer than max connections, else
 * to be refused. @return uid's use: with ADMIT and REFUSE the connection keeps it and gives it
 * back with lbd_uids_leave; with DROP it is not counted and must not be given back. NULL (and
 * DROP): no memory.
 */
struct lbd_uid_use *lbd_uids_admit(struct lbd_uids *t, uint32_t uid, uint32_t max,
				   enum lbd_uid_verdict *verdict);

/* The connection ends: u counts it no longer (verdict: lbd_uids_admit's, ADMIT or REFUSE) and
 * gets staging bytes back; u is freed with the uid's last connection. */
void lbd_uids_leave(struct lbd_uids *t, struct lbd_uid_use *u, enum lbd_uid_verdict verdict,
		    uint64_t staging);

/*
 * Staging for a new region of u's: want (the connection's wish, already clamped to the
 * daemon's bounds and rounded up to whole pages: lbd_region_staging) cut to what cap leaves
 * of it. The caller adds what it grants to u->staging once the region exists, and
 * lbd_uids_leave takes it back. @return the bytes to grant (a multiple of 4096, at least
 * LBD_STAGING_MIN), or 0 when less than LBD_STAGING_MIN is left.
 */
uint64_t lbd_uids_staging_grant(const struct lbd_uid_use *u, uint64_t cap, uint64_t want);

/* Free every entry (the server's teardown). */
void lbd_uids_free(struct lbd_uids *t);

#endif
