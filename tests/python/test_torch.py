"""The torch port of stories260K (layerbank.llama) and LayerCache, against the C worker and a real
layerbankd: NLL equal to layerbank-worker score's within 1e-5 a token; a cached run's output
equal to the uncached one's on an exact repeat; entries the C worker inserted hit from Python
and the reverse, with identical bytes (the same fingerprint bits and keys); a killed daemon
(every layer computed, the same output), then a new one (the bank used again)."""
import math
import os
import subprocess
import sys
import tempfile
import time
import unittest

import numpy as np
import torch

import layerbank as lb
import layerbank.llama as llama
import layerbank.torch as lbt
from lbfix import DATA, SOURCE, WORKER, Daemon

MODEL = os.path.join(DATA, "stories260K.bin")
TOK = os.path.join(DATA, "tok512.bin")
# The name layerbank-worker registers a decoder under: its file and the kernels' tier.
TIER = "avx512" if " avx512f " in open("/proc/cpuinfo").read().replace("\n", " ") else None


def tokenizer():
    sys.path.insert(0, os.path.join(SOURCE, "tools"))
    import train_encoder as enc  # worker/tokenizer.c's encoding, in Python
    return enc.Tokenizer(TOK, 512)


def paragraphs(n, skip=0):
    out = []
    with open(os.path.join(DATA, "tinystories_val.txt"), "rb") as f:
        for line in f:
            line = line.strip()
            if 200 <= len(line) <= 600:
                out.append(line)
    return out[skip:skip + n]


def worker_score(text: bytes, *cache):
    """layerbank-worker score of text: (nll_per_token, the cache line or None)."""
    with tempfile.NamedTemporaryFile(suffix=".txt") as f:
        f.write(text)
        f.flush()
        r = subprocess.run([WORKER, "score", "--model", MODEL, "--tokenizer", TOK,
                            "--text-file", f.name, *cache], capture_output=True, text=True)
    if r.returncode:
        raise AssertionError(r.stdout + r.stderr)
    nll = float(r.stdout.split("nll_per_token")[1].split()[0])
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("cache ")]
    return nll, line[0] if line else None


def nll_of(model, x, ids):
    """Mean NLL of ids[1:] from the last layer's output x [tokens][dim], as the worker sums it
    (float64 over the float32 logits)."""
    logits = model.head(x[None])[0].double()
    lp = logits.log_softmax(-1)
    return float(-lp[torch.arange(len(ids) - 1), torch.as_tensor(ids[1:])].sum()) / (len(ids) - 1)


@unittest.skipUnless(os.path.exists(MODEL) and os.path.exists(TOK), "stories260K is needed")
class TestTorch(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.model = llama.load(MODEL)
        cls.tok = tokenizer()
        cls.hash = lb.hash64(open(MODEL, "rb").read())
        cls.d = Daemon()

    @classmethod
    def tearDownClass(cls):
        cls.d.close()

    def ids(self, text):
        return self.tok.encode(text)  # BOS first, as worker/tokenizer.c encodes for score

    def cache(self, client, **kw):
        return lbt.for_llama(client, self.model, f"stories260K.bin@{TIER}", self.hash, **kw)

    def test_nll_equals_the_c_workers(self):
        plain = self.cache(None)
        for text in paragraphs(5):
            ids = self.ids(text)
            want, _ = worker_score(text)
            got = nll_of(self.model, plain(ids), ids)
            self.assertLess(abs(got - want), 1e-5, f"torch {got:.7f}, C worker {want:.6f}")

    def test_exact_repeat_gives_the_same_output(self):
        with lb.Client(self.d.sock, wait_us=1000000) as c:
            lc = self.cache(c)
            ids = self.ids(paragraphs(1, 10)[0])
            first = lc(ids)
            self.assertEqual((lc.last["hit_layer"], lc.last["computed"], lc.last["inserted"]),
                             (-1, 5, 5))
            again = lc(ids)
            self.assertEqual((lc.last["hit_layer"], lc.last["distance"], lc.last["computed"]),
                             (4, 0, 0))
            self.assertTrue(torch.equal(first, again))
            self.assertTrue(torch.equal(first, self.cache(None)(ids)))

    @unittest.skipUnless(TIER, "the C worker's name for this CPU's kernels")
    def test_hits_across_languages(self):
        text_c, text_py = paragraphs(2, 20)
        with lb.Client(self.d.sock, wait_us=1000000) as c:
            lc = self.cache(c)
            # C inserts, Python hits: the same keys, so an exact hit of the last layer, whose
            # bytes are those the daemon checksummed when C inserted them
            worker_score(text_c, "--cache", self.d.sock)
            ids = self.ids(text_c)
            x = lc(ids)
            self.assertEqual((lc.last["hit_layer"], lc.last["distance"], lc.last["computed"]),
                             (4, 0, 0))
            emb = self.model.embed(torch.tensor([ids]))[0].detach().numpy()
            key = lc.model.key(ids, lc.fingerprint(emb))
            with lc.model.lookup(4, key) as hit:
                view = hit.array()
                self.assertEqual(hit.checksum, lb.hash64(view.tobytes()))
                self.assertTrue(np.array_equal(view, x.numpy()))
            # and the C worker's NLL from its own states, as Python's head reads them
            self.assertLess(abs(nll_of(self.model, x, ids) - worker_score(text_c)[0]), 1e-5)
            # Python inserts, C hits: every layer reused, the NLL Python's states give
            ids = self.ids(text_py)
            x = lc(ids)
            self.assertEqual(lc.last["inserted"], 5)
            nll, line = worker_score(text_py, "--cache", self.d.sock)
            self.assertIn("hit_layer 4 computed 0", line)
            self.assertLess(abs(nll - nll_of(self.model, x, ids)), 1e-5)

    def test_killed_daemon_then_a_new_one(self):
        d = Daemon()
        try:
            c = lb.Client(d.sock, wait_us=200000)
            lc = self.cache(c)
            ids = self.ids(paragraphs(1, 30)[0])
            want = lc(ids)
            self.assertEqual(lc.last["inserted"], 5)
            d.kill()
            got = lc(ids)  # pass-through: every layer computed, the same output
            self.assertTrue(torch.equal(got, want))
            self.assertEqual(lc.last["computed"], 5)
            self.assertIsNotNone(lc.last["error"])
            d.start()  # the same socket: the client connects again by itself
            for _ in range(50):
                time.sleep(0.1)
                got = lc(ids)
                if lc.last["inserted"] == 5:
                    break
            self.assertEqual(lc.last["inserted"], 5, lc.last)
            self.assertTrue(torch.equal(lc(ids), want))
            self.assertEqual(lc.last["hit_layer"], 4)
            self.assertGreaterEqual(c.reconnects, 1)
            c.close()
        finally:
            d.close()

    def test_fusedkv_models_are_refused(self):
        fused = llama.load(os.path.join(SOURCE, "models", "stories260K-fused.bin"))
        with self.assertRaises(lb.InvalidArgument):
            lbt.for_llama(None, fused, "fused", 1)


if __name__ == "__main__":
    unittest.main()
