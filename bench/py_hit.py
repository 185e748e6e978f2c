"""layerbank-bench python's Python side: the hit its C side times, from Python.

    py_hit.py SOCKET ITERS FP0 FP1 FP2 FP3

registers the model bench_python.c registered (same description), then times ITERS hits of the
entry it inserted: Model.lookup_deepest, Hit.array(), Hit.release(), each hit timed alone after
ITERS/10 of warm-up: with the input's Model.key made once, as the C side makes its key once,
then with token ids and fingerprint given to every lookup (hashed each time). Prints one JSON
line: iters, p50_us, p99_us, p50_us_with_hashing, p99_us_with_hashing.
"""
import json
import sys
import time

import numpy as np

import layerbank as lb

SEQ, HIDDEN, LAYERS = 128, 768, 12  # bench_python.c: a BERT-base layer's output


def main():
    sock, iters = sys.argv[1], int(sys.argv[2])
    fp = np.array([int(x) for x in sys.argv[3:7]], dtype=np.uint64)
    tokens = np.arange(SEQ, dtype=np.int32)
    with lb.Client(sock, name="py_hit", wait_us=1000000) as c:
        m = c.register_model("layerbank-bench-python", n_layers=LAYERS, hidden=HIDDEN,
                             weights_hash=0x707974686F6E, max_seq=512)
        # as the C side times it: the input's key made once (Model.key), then each hit
        key = m.key(tokens, fp)
        res = {"iters": iters}
        for name, args in (("", (key,)), ("_with_hashing", (tokens, fp))):
            times = []
            clock = time.perf_counter_ns
            for i in range(iters + iters // 10):
                t0 = clock()
                h = m.lookup_deepest(*args)
                a = h.array()
                h.release()
                t1 = clock()
                if h.layer != LAYERS - 1 or a.shape != (SEQ, HIDDEN):
                    sys.exit("py_hit: not the entry bench_python.c inserted")
                if i >= iters // 10:
                    times.append((t1 - t0) / 1e3)
            times.sort()
            res["p50_us" + name] = times[len(times) // 2]
            res["p99_us" + name] = times[min(len(times) - 1, len(times) * 99 // 100)]
        print(json.dumps(res))


if __name__ == "__main__":
    main()
