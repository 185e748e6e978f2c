"""README.md's "From Python" examples run as written, against a layerbankd of their own
($LAYERBANK_SOCKET), from the source tree (the data at ../shared/data or $LAYERBANK_DATA)."""
import os
import re
import subprocess
import sys
import unittest

from lbfix import DATA, SOURCE, Daemon


class TestReadme(unittest.TestCase):
    def test_from_python_examples_run(self):
        text = open(os.path.join(SOURCE, "README.md")).read()
        section = text.split("\n## From Python\n", 1)[1].split("\n## ", 1)[0]
        blocks = re.findall(r"```python\n(.*?)```", section, re.S)
        self.assertEqual(len(blocks), 2)
        d = Daemon()
        try:
            env = dict(os.environ, LAYERBANK_SOCKET=d.sock, LAYERBANK_DATA=DATA)
            for i, code in enumerate(blocks):
                r = subprocess.run([sys.executable, "-c", code], cwd=SOURCE, env=env,
                                   capture_output=True, text=True, timeout=120)
                self.assertEqual(r.returncode, 0, f"example {i + 1}:\n{r.stdout}{r.stderr}")
                if i == 0:
                    self.assertIn("layer 3 distance 0 equal: True", r.stdout)
                    self.assertIn("after release:", r.stdout)
                else:
                    self.assertIn("'hit_layer': 4", r.stdout)
                    self.assertTrue(r.stdout.strip().endswith("True"), r.stdout)
        finally:
            d.close()


if __name__ == "__main__":
    unittest.main()
