/* layerbankd threshold controller: a stochastic approximation (Robbins-Monro, fixed gain) of
 * the radius at which the mean drift of a layer's approximate reuses equals the target. */
#include "adapt.h"

#include <math.h>

#include "lbp.h"

void lbd_adapt_init(struct lbd_adapt *a)
{
	*a = (struct lbd_adapt){ .radius = lbp_fp_max_hamming(LBD_ADAPT_START_TAU) };
}

bool lbd_adapt_report(struct lbd_adapt *a, uint32_t hamming, double drift, double target)
{
	if (hamming == 0 || !isfinite(drift) || drift < 0)
		return false;
	a->reports++;
	a->drift_sum += drift;
	if (!(target > 0))
		return false;
	uint32_t before = lbd_adapt_max_hamming(a);
	a->over += drift > target;
	/* Reuses farther than the radius (a client's own thresholds) move it too: they say as
	 * much about the drift at their distance. */
	double e = 1.0 - drift / target;
	e = e < -LBD_ADAPT_MAX_TIGHTEN ? -LBD_ADAPT_MAX_TIGHTEN : e;
	double r = a->radius + LBD_ADAPT_GAIN * e;
	a->radius = r < 0 ? 0 : r > LBD_ADAPT_MAX_RADIUS ? LBD_ADAPT_MAX_RADIUS : r;
	return lbd_adapt_max_hamming(a) != before;
}

uint32_t lbd_adapt_max_hamming(const struct lbd_adapt *a)
{
	return (uint32_t)floor(a->radius);
}

bool lbd_adapt_valid(const struct lbd_adapt *a)
{
	return a->radius >= 0 && a->radius <= LBD_ADAPT_MAX_RADIUS && a->over <= a->reports &&
	       isfinite(a->drift_sum) && a->drift_sum >= 0 && (a->reports || a->drift_sum == 0);
}
