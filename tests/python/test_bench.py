"""layerbank-bench python: its report holds together (a short run; the figures are in
bench/README.md)."""
import json
import os
import subprocess
import unittest

BENCH = os.environ.get("LB_BENCH", "")


class TestBench(unittest.TestCase):
    def test_python_hit_report(self):
        r = subprocess.run([BENCH, "python", "--iters", "300", "--json"], capture_output=True,
                           text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        j = json.loads(r.stdout[r.stdout.index("{"):])
        self.assertEqual((j["iters"], j["entry_bytes"]), (300, 128 * 768 * 4))
        for k in ("c_hit_us", "c_hit_p99_us", "python_hit_us", "python_hit_p99_us",
                  "python_hit_with_hashing_us"):
            self.assertGreater(j[k], 0, k)
        self.assertGreaterEqual(j["c_hit_p99_us"], j["c_hit_us"])
        self.assertAlmostEqual(j["python_extra_us"], j["python_hit_us"] - j["c_hit_us"], 6)

    def test_bad_option(self):
        r = subprocess.run([BENCH, "python", "--iters", "0"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 2)
        self.assertIn("--iters", r.stderr)


if __name__ == "__main__":
    unittest.main()
