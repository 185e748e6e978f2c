"""cmake --install puts the package on Debian's Python path: installed (DESTDIR) with prefix
/usr/local, its folder is one /usr/bin/python3 searches, and it imports from there with the
library it installed beside it, found through the relative path the install recorded."""
import os
import subprocess
import tempfile
import unittest

BUILD = os.environ.get("LB_BUILD", "")
PYDIR = os.environ.get("LB_PYTHON_DIR", "")


class TestInstall(unittest.TestCase):
    def test_install_then_import(self):
        if not BUILD or not PYDIR:
            self.skipTest("LB_BUILD and LB_PYTHON_DIR are set by CTest")
        with tempfile.TemporaryDirectory(prefix="layerbank-pyinstall.") as d:
            env = dict(os.environ, DESTDIR=d)
            r = subprocess.run(["cmake", "--install", BUILD, "--prefix", "/usr/local"], env=env,
                               capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            site = "/usr/local/" + PYDIR
            paths = subprocess.run(["/usr/bin/python3", "-I", "-c",
                                    "import sys; print(*sys.path, sep='\\n')"],
                                   capture_output=True, text=True, check=True).stdout.split()
            self.assertIn(site, paths, "the install folder is not on Debian's python3 path")
            staged = d + site
            self.assertTrue(os.path.exists(os.path.join(staged, "layerbank", "__init__.py")))
            clean = {k: v for k, v in os.environ.items()
                     if k not in ("PYTHONPATH", "LAYERBANK_LIBRARY")}
            clean["PYTHONPATH"] = staged
            r = subprocess.run(["/usr/bin/python3", "-c",
                                "import layerbank, layerbank.llama; "
                                "print(layerbank.__file__); print(layerbank._lib.lib._name)"],
                               env=clean, capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stderr)
            pkg, lib = r.stdout.split()
            self.assertTrue(pkg.startswith(staged), pkg)
            # the library the install put beside it, not the build's or the system's
            self.assertTrue(os.path.realpath(lib).startswith(os.path.realpath(d) + "/"), lib)
            self.assertTrue(os.path.exists(lib), lib)

if __name__ == "__main__":
    unittest.main()
