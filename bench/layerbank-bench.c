/* layerbank-bench: benchmarks that measure their baselines in the same run and print ratios.
 *   layerbank-bench ring [--json] [--iters N] (bench_ring.c)
 *   layerbank-bench kernels [--json] [--only LIST] (bench_kernels.c)
 *   layerbank-bench rows [--json] [--reps N] [--only MODEL] (bench_rows.c)
 *   layerbank-bench workload ...   (bench_workload.c)
 *   layerbank-bench e2e ...        (bench_e2e.c)
 *   layerbank-bench prefix ...     (bench_prefix.c, bench_prefix_lookup.c)
 *   layerbank-bench gen-near ...   (bench_gen_near.c)
 *   layerbank-bench fusedkv ...    (bench_fusedkv.c)
 *   layerbank-bench python ...     (bench_python.c, py_hit.py)
 *   layerbank-bench snapshot ...   (bench_snapshot.c)
 *   layerbank-bench flush ...      (bench_flush.c)
 *   layerbank-bench churn ...      (bench_churn.c)
 * This file only dispatches; the helpers they share are in bench_util.c, the fleet of serve
 * workers e2e and prefix run in bench_fleet.c. */
#include <stdio.h>
#include <string.h>

#include "bench.h"

int main(int argc, char **argv)
{
	if (argc >= 2 && strcmp(argv[1], "ring") == 0)
		return bench_ring_main(argc - 1, argv + 1);
	if (argc >= 2 && strcmp(argv[1], "kernels") == 0)
		return bench_kernels_main(argc - 1, argv + 1);
	if (argc >= 2 && strcmp(argv[1], "rows") == 0)
		return bench_rows_main(argc - 1, argv + 1);
	if (argc >= 2 && strcmp(argv[1], "workload") == 0)
		return bench_workload_main(argc - 1, argv + 1);
	if (argc >= 2 && strcmp(argv[1], "e2e") == 0)
		return bench_e2e_main(argc - 1, argv + 1);
	if (argc >= 2 && strcmp(argv[1], "prefix") == 0)
		return bench_prefix_main(argc - 1, argv + 1);
	if (argc >= 2 && strcmp(argv[1], "python") == 0)
		return bench_python_main(argc - 1, argv + 1);
	if (argc >= 2 && strcmp(argv[1], "fusedkv") == 0)
		return bench_fusedkv_main(argc - 1, argv + 1);
	if (argc >= 2 && strcmp(argv[1], "gen-near") == 0)
		return bench_gen_near_main(argc - 1, argv + 1);
	if (argc >= 2 && strcmp(argv[1], "snapshot") == 0)
		return bench_snapshot_main(argc - 1, argv + 1);
	if (argc >= 2 && strcmp(argv[1], "flush") == 0)
		return bench_flush_main(argc - 1, argv + 1);
	if (argc >= 2 && strcmp(argv[1], "churn") == 0)
		return bench_churn_main(argc - 1, argv + 1);
	if (argc >= 2 && strcmp(argv[1], "l2") == 0)
		return bench_l2_main(argc - 1, argv + 1);
	fprintf(stderr, "usage: layerbank-bench ring [--json] [--iters N] [--no-index]\n"
			"       layerbank-bench kernels [--json] [--only gemm,ops,bert,stories]\n"
			"       layerbank-bench rows [--json] [--reps N] [--only bert-base|llama-110m]\n"
			"       layerbank-bench workload [--chat] [--summary] "
			"[options: see --help]\n"
			"       layerbank-bench e2e [--json] [--plot FILE] [options: see --help]\n"
			"       layerbank-bench prefix [--model stories260k|llama-110m] [--json] "
			"[options: see --help]\n"
			"       layerbank-bench gen-near [--model stories260k|llama-110m] [--json] "
			"[options: see --help]\n"
			"       layerbank-bench fusedkv [--json] [options: see --help]\n"
			"       layerbank-bench python [--iters N] [--json]\n"
			"       layerbank-bench snapshot [--arena-size SIZE] [--dir DIR] [--json]\n"
			"       layerbank-bench flush [--entries N] [--json]\n"
			"       layerbank-bench churn [--json]\n"
			"       layerbank-bench l2 [--json] [--entries N] [--requests N] [--seed S] [--fleet M]\n");
	return 2;
}
