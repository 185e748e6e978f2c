"""Run the Python package's tests (test_*.py here) as one CTest test: exit 0 when they pass, 1
when one fails, 77 (CTest's skip) with the reason when /usr/bin/python3 lacks numpy or torch.
The environment (set by tests/CMakeLists.txt) names the build's binaries and the data:
LB_DAEMON, LB_WORKER, LB_BENCH, LB_DATA, LB_SOURCE, LB_BUILD, LB_PYTHON_DIR, LB_SANITIZE;
PYTHONPATH is the build tree's python/."""
import os
import sys
import unittest

if os.environ.get("LB_SANITIZE"):
    print(f"SKIP: a sanitizer build ({os.environ['LB_SANITIZE']}) makes a liblayerbank that "
          "/usr/bin/python3 cannot load without the sanitizer's runtime; the plain build runs "
          "these tests")
    sys.exit(77)
for mod in ("numpy", "torch"):
    try:
        __import__(mod)
    except ImportError as e:
        print(f"SKIP: /usr/bin/python3 cannot import {mod} ({e}); scripts/test installs "
              f"python3-{mod}")
        sys.exit(77)

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
names = sys.argv[1:] or sorted(f[:-3] for f in os.listdir(here)
                               if f.startswith("test_") and f.endswith(".py"))
suite = unittest.defaultTestLoader.loadTestsFromNames(names)
ok = unittest.TextTestRunner(verbosity=2).run(suite).wasSuccessful()
sys.exit(0 if ok else 1)
