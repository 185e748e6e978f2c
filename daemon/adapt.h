/* layerbankd threshold controller: one per layer of each model. Revalidated reuses (REPORT:
 * the drift of a reused state from the state computing it gives) move the layer's fingerprint
 * radius so that the mean drift of its approximate reuses settles at a target. */
#ifndef LAYERBANK_DAEMON_ADAPT_H
#define LAYERBANK_DAEMON_ADAPT_H

#include <stdbool.h>
#include <stdint.h>

/* Where a controller starts: permissive. Unrelated TinyStories paragraphs of one token count
 * reach similarity 0.82 and near-duplicates stay above 0.91 (config.h); 0.90 admits the
 * near-duplicates and lets the reports show which of them drift. */
#define LBD_ADAPT_START_TAU 0.90
/* Bits the radius moves per report at a relative error of 1 (drift 0 loosens by this much;
 * drift twice the target tightens by as much): from the start (36 bits) to tau 0.98's radius
 * (16 bits) takes 80 reports at twice the target, 10 at nine times it. */
#define LBD_ADAPT_GAIN 0.25
/* A report's relative error is clamped to [-LBD_ADAPT_MAX_TIGHTEN, 1]: one far-off reuse
 * tightens by at most 8 bits. Drift is heavy-tailed (most approximate reuses drift by almost
 * nothing, a few by tens of times the target), and a tighter clamp would count those few as
 * smaller than they are: the mean it settles at would be above the target (with 4, 133% of
 * it on test_adapt's heavy-tailed stream at target 0.0005, which that test then fails). */
#define LBD_ADAPT_MAX_TIGHTEN 32.0
/* The loosest radius a controller reaches: similarity cos(pi/4) = 0.71, well below where
 * unrelated texts sit, so a stream of drift-free reports cannot open a layer to everything. */
#define LBD_ADAPT_MAX_RADIUS 64.0

struct lbd_adapt {
	double radius;      /* fingerprint bits a lookup of this layer may be from an entry */
	uint64_t reports;   /* approximate reuses reported (distance >= 1) */
	uint64_t over;      /* of them, drifting past the target in force then (none without) */
	double drift_sum;   /* the sum of their drifts */
};

/* A controller at the start: LBD_ADAPT_START_TAU's radius, no reports. */
void lbd_adapt_init(struct lbd_adapt *a);

/*
 * Feed one revalidated reuse: the fingerprint distance it was served at (hamming, 0..256; 0,
 * an exact reuse, says nothing about the threshold and is ignored) and its drift (finite,
 * >= 0). It is counted; with a target (> 0) it moves the radius, and counts as over when its
 * drift is past the target. @return true when the radius in force (lbd_adapt_max_hamming)
 * changed.
 */
bool lbd_adapt_report(struct lbd_adapt *a, uint32_t hamming, double drift, double target);

/* The radius in force: the largest distance a lookup of this layer accepts. */
uint32_t lbd_adapt_max_hamming(const struct lbd_adapt *a);

/* A controller's state read back (a snapshot): a radius in [0, LBD_ADAPT_MAX_RADIUS], over <=
 * reports, a finite drift_sum >= 0 that is 0 when reports is. */
bool lbd_adapt_valid(const struct lbd_adapt *a);

#endif
