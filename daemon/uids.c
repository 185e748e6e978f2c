/* layerbankd limits per uid: a short list of the uids that have connections, with their
 * connection counts and granted staging. A list: the uids connected at once are few, and the
 * control thread walks it once per accepted connection. */
#include "uids.h"

#include <stdlib.h>

struct lbd_uid_use *lbd_uids_admit(struct lbd_uids *t, uint32_t uid, uint32_t max,
				   enum lbd_uid_verdict *verdict)
{
	struct lbd_uid_use *u = t->head;

	while (u && u->uid != uid)
		u = u->next;
	if (!u) {
		u = calloc(1, sizeof(*u));
		if (!u) {
			*verdict = LBD_UID_DROP;
			return NULL;
		}
		u->uid = uid;
		u->next = t->head;
		t->head = u;
		t->n++;
	}
	if (u->conns < max) {
		u->conns++;
		*verdict = LBD_UID_ADMIT;
	} else if (u->refusing < LBD_UID_REFUSING_MAX) {
		u->refusing++;
		*verdict = LBD_UID_REFUSE;
	} else {
		*verdict = LBD_UID_DROP; /* not counted; u has connections, so it stays */
	}
	return u;
}

void lbd_uids_leave(struct lbd_uids *t, struct lbd_uid_use *u, enum lbd_uid_verdict verdict,
		    uint64_t staging)
{
	if (!u)
		return;
	if (verdict == LBD_UID_ADMIT && u->conns)
		u->conns--;
	else if (verdict == LBD_UID_REFUSE && u->refusing)
		u->refusing--;
	u->staging = u->staging > staging ? u->staging - staging : 0;
	if (u->conns || u->refusing)
		return;
	for (struct lbd_uid_use **p = &t->head; *p; p = &(*p)->next)
		if (*p == u) {
			*p = u->next;
			t->n--;
			break;
		}
	free(u);
}

uint64_t lbd_uids_staging_grant(const struct lbd_uid_use *u, uint64_t cap, uint64_t want)
{
	uint64_t left = u->staging < cap ? cap - u->staging : 0;

	left &= ~(uint64_t)(LBD_STAGING_MIN - 1);
	if (left < LBD_STAGING_MIN)
		return 0;
	return want < left ? want : left;
}

void lbd_uids_free(struct lbd_uids *t)
{
	while (t->head) {
		struct lbd_uid_use *u = t->head;
		t->head = u->next;
		free(u);
	}
	t->n = 0;
}
