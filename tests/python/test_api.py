"""The package's API against a real layerbankd: keys, inserts and hits, errors, lease lifetime,
prefix blocks, and the structs' layouts against the C header's."""
import ctypes
import errno
import gc
import os
import unittest

import numpy as np

import layerbank as lb
from layerbank import _lib
from lbfix import Daemon


def toy_input(seed, n=10, dim=64):
    rs = np.random.RandomState(seed)
    return list(range(seed, seed + n)), rs.randn(n, dim).astype(np.float32)


class TestApi(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = Daemon()

    @classmethod
    def tearDownClass(cls):
        cls.d.close()

    def setUp(self):
        self.c = lb.Client(self.d.sock, name="test_api", wait_us=1000000)

    def tearDown(self):
        self.c.close()

    def test_struct_sizes_are_the_headers(self):
        for cls, size in _lib.ABI_SIZES.items():
            self.assertEqual(ctypes.sizeof(cls), size, cls.__name__)

    def test_no_daemon_is_a_connect_error(self):
        with self.assertRaises(lb.ConnectError) as e:
            lb.Client(os.path.join(self.d.dir, "nobody.sock"))
        self.assertEqual(e.exception.errno, errno.ENOENT)
        self.assertIn("nobody.sock", str(e.exception))

    def test_insert_then_hit_zero_copy(self):
        m = self.c.register_model("api-toy", n_layers=4, hidden=64, weights_hash=1)
        toks, emb = toy_input(1)
        fp = lb.fingerprint(emb)
        self.assertEqual(fp.dtype, np.uint64)
        self.assertEqual(fp.shape, (4,))
        self.assertIsNone(m.lookup_deepest(toks, fp))
        x = np.arange(640, dtype=np.float32).reshape(10, 64)
        self.assertTrue(m.insert(toks, fp, 2, x))
        self.assertFalse(m.insert(toks, fp, 2, x))  # cached already
        with m.lookup_deepest(toks, fp) as hit:
            self.assertEqual((hit.layer, hit.distance, hit.shape), (2, 0, (10, 64)))
            a = hit.array()
            self.assertFalse(a.flags.writeable)
            np.testing.assert_array_equal(a, x)
            self.assertEqual(hit.checksum, lb.hash64(np.asarray(a).tobytes()))
            with self.assertRaises(ValueError):
                a[0, 0] = 1
        with m.lookup(2, toks, fp) as hit:
            np.testing.assert_array_equal(hit.array(2), x)
            with self.assertRaises(lb.InvalidArgument):
                hit.array(1)
        self.assertIsNone(m.lookup(1, toks, fp))
        other, oemb = toy_input(50)
        self.assertIsNone(m.lookup_deepest(other, lb.fingerprint(oemb)))

    def test_keys_are_the_c_librarys(self):
        # token_hash: XXH3-128 of the int32 ids (PROTOCOL.md's vector: tokens 1..48 block keys
        # are in test_prefix.c; here the plain hash against a hand-made call of the library)
        t = np.arange(1, 49, dtype=np.int32)
        out = (ctypes.c_uint64 * 2)()
        _lib.lib.lb_token_hash(t.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)), 48, out)
        self.assertEqual(list(lb.token_hash(t)), [out[0], out[1]])
        self.assertEqual(lb.hash64(b""), lb.hash64(bytearray()))
        self.assertNotEqual(lb.hash64(b"a"), lb.hash64(b"b"))
        emb = np.random.RandomState(3).randn(7, 48).astype(np.float32)
        center = lb.embedding_center(emb)
        self.assertEqual(center.dtype, np.float32)
        p = lb.Projection(48, 4, lb.WORKER_FP_SEED, center)
        np.testing.assert_array_equal(p.fingerprint(emb), lb.fingerprint(emb, center=center))
        self.assertFalse(np.array_equal(lb.fingerprint(emb), lb.fingerprint(emb, center=center)))

    def test_errors_are_typed(self):
        m = self.c.register_model("api-errors", n_layers=3, hidden=8, weights_hash=7)
        self.assertEqual(self.c.register_model("api-errors", n_layers=3, hidden=8,
                                               weights_hash=7).id, m.id)
        with self.assertRaises(lb.AlreadyCached) as e:
            self.c.register_model("api-errors", n_layers=3, hidden=8, weights_hash=8)
        self.assertEqual(e.exception.errno, errno.EEXIST)
        self.assertIn("weights_hash", str(e.exception))
        with self.assertRaises(lb.InvalidArgument):
            self.c.register_model("api-bad-dtype", n_layers=3, hidden=8, dtype="f64")
        with self.assertRaises(lb.InvalidArgument):
            self.c.register_model("", n_layers=3, hidden=8)
        toks, emb = toy_input(2, dim=8)
        fp = lb.fingerprint(emb)
        with self.assertRaises(lb.InvalidArgument):
            m.lookup_deepest(toks, fp, taus=[0.9, 0.9])
        with self.assertRaises(lb.InvalidArgument):
            m.lookup_deepest(toks, fp[:3])
        with self.assertRaises(lb.InvalidArgument):
            lb.fingerprint(np.zeros((0, 8), np.float32))
        with self.assertRaises(lb.InvalidArgument):
            m.insert(toks, fp, 3, np.zeros((10, 8), np.float32))  # no layer 3
        with self.assertRaises(lb.InvalidArgument):
            m.lookup_prefix(toks)  # registered without kv_dim
        self.assertTrue(issubclass(lb.InvalidArgument, ValueError))
        c2 = lb.Client(self.d.sock)
        c2.close()
        with self.assertRaises(lb.Error) as e:
            c2.ping()
        self.assertEqual(e.exception.errno, errno.EBADF)

    def leases(self):
        with lb.Client(self.d.sock) as other:
            return other.stats()["leases"]

    def test_views_end_with_their_lease(self):
        m = self.c.register_model("api-lease", n_layers=2, hidden=16, weights_hash=3)
        toks, emb = toy_input(4, n=300, dim=16)
        fp = lb.fingerprint(emb)
        x = np.random.RandomState(5).randn(300, 16).astype(np.float32) + 1
        m.insert(toks, fp, 1, x)
        hit = m.lookup_deepest(toks, fp)
        a, t = hit.array(), hit.tensor()
        # zero copy: both point into the arena the client mapped
        n = ctypes.c_size_t()
        base = _lib.lib.lb_arena_base(self.c._c, 0, ctypes.byref(n))
        for addr in (a.__array_interface__["data"][0], t.data_ptr()):
            self.assertTrue(base <= addr and addr + x.nbytes <= base + n.value)
        row, trow = a[3], t[3]
        np.testing.assert_array_equal(row, x[3])
        self.assertEqual(self.leases(), 1)
        hit.release()
        self.assertEqual(self.leases(), 0)
        for use in (lambda: a[0], lambda: a + 1, lambda: np.sum(a), lambda: row[0],
                    lambda: repr(a), lambda: a.tolist(), lambda: a.copy(), lambda: t + 1,
                    lambda: trow.sum(), lambda: hit.array()):
            with self.assertRaises(lb.Released):
                use()
        hit.release()  # twice is fine
        # a with block, garbage collection and close each give the lease back
        with m.lookup_deepest(toks, fp) as h:
            self.assertEqual(self.leases(), 1)
        self.assertTrue(h.released)
        h = m.lookup_deepest(toks, fp)
        del h
        gc.collect()
        self.assertEqual(self.leases(), 0)
        c2 = lb.Client(self.d.sock)
        m2 = c2.register_model("api-lease", n_layers=2, hidden=16, weights_hash=3)
        kept = m2.lookup_deepest(toks, fp).array()
        c2.close()
        self.assertEqual(self.leases(), 0)
        with self.assertRaises(lb.Released):
            kept.sum()

    def test_prefix_blocks(self):
        m = self.c.register_model("api-prefix", n_layers=3, hidden=16, weights_hash=9,
                                  kv_dim=8, block_tokens=4, kv_layers=2)
        self.assertEqual((m.block_tokens, m.kv_layers), (4, 2))
        toks = list(range(100, 114))  # 3 full blocks and 2 tokens
        self.assertEqual(m.block_keys(toks).shape, (3, 2))
        self.assertIsNone(m.lookup_prefix(toks))
        blocks = [np.full((2, 2, 4, 8), i + 1, np.float32) for i in range(3)]
        self.assertEqual(m.insert_blocks(toks, blocks[:2]), 2)
        with m.lookup_prefix(toks) as p:
            self.assertEqual((p.blocks, p.tokens), (2, 8))
            for i, b in enumerate(p.arrays()):
                np.testing.assert_array_equal(b, blocks[i])
        self.assertEqual(m.insert_blocks(toks, blocks), 1)  # blocks 0 and 1 cached already
        with self.assertRaises(lb.InvalidArgument):
            m.insert_blocks(toks, [np.zeros((3, 2, 4, 8), np.float32)])  # kv_layers 2, not 3
        with m.lookup_prefix(toks + [7] * 6) as p:
            self.assertEqual(p.blocks, 3)

    def test_stats_and_ping(self):
        self.c.ping()
        s = self.c.stats()
        for k in ("entries", "hits", "misses", "leases", "bytes_used", "policy", "blocks"):
            self.assertIn(k, s)
        self.assertEqual(s["l2"], "off")  # no second tier: its counts are 0
        self.assertEqual(s["l2_written"] + s["l2_fetched"] + s["l2_queue_records"], 0)
        self.assertIsInstance(s["tenants"], int)
        self.assertIsInstance(s["nodes"], list)  # empty from a daemon without per-node figures
        self.assertNotIn("n_nodes", s)
        self.assertTrue(self.c.connected)
        self.assertEqual(self.c.reconnects, 0)

    def test_stats_dict_has_the_nodes_in_use(self):
        # A reply made here: the daemon may not report per-node figures yet.
        s = _lib.Stats()
        s.tenants, s.n_nodes = 3, 2
        s.nodes[0] = _lib.NodeStats(-1, 1, 4096, 0, 0, 0, 0, 0)
        s.nodes[1] = _lib.NodeStats(1, 2, 1 << 30, 1 << 20, 40, 900, 45, 2**64 - 1)
        s.nodes[2] = _lib.NodeStats(7, 9, 9, 9, 9, 9, 9, 9)  # past n_nodes: not shown
        d = s.to_dict()
        self.assertEqual(d["tenants"], 3)
        self.assertEqual(d["nodes"], [
            {"node": -1, "clients": 1, "arena_bytes": 4096, "bytes_used": 0, "entries": 0,
             "hits": 0, "inserts": 0, "remote_inserts": 0},
            {"node": 1, "clients": 2, "arena_bytes": 1 << 30, "bytes_used": 1 << 20,
             "entries": 40, "hits": 900, "inserts": 45, "remote_inserts": 2**64 - 1}])
        s.n_nodes = 0
        self.assertEqual(s.to_dict()["nodes"], [])
        s.n_nodes = 1000  # more than the struct holds: its rows only
        self.assertEqual(len(s.to_dict()["nodes"]), _lib.LB_MAX_NODES)


if __name__ == "__main__":
    unittest.main()
