"""liblayerbank.so.0 through ctypes: where it is found, and the C declarations the package calls.

ctypes rather than cffi: it is in the standard library, so a user needs no compiler and no
package beyond Debian's python3 (and numpy, torch for the arrays); every struct here is pinned
by LB_ABI_FIELD in include/layerbank/layerbank.h, so the layouts below cannot drift silently
(tests/python/test_api.py checks their sizes against the header's).
"""
import ctypes
import os

LB_FP_BITS = 256
LB_NAME_MAX = 63
LB_PREFIX_MAX_BLOCKS = 256
LB_MAX_NODES = 16


class Key(ctypes.Structure):
    _fields_ = [("fp", ctypes.c_uint64 * 4), ("exact", ctypes.c_uint64 * 2),
                ("seq_len", ctypes.c_uint32)]


class HitC(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("bytes", ctypes.c_uint64),
                ("lease", ctypes.c_uint64), ("checksum", ctypes.c_uint64),
                ("layer", ctypes.c_uint32), ("hamming", ctypes.c_uint32),
                ("dtype", ctypes.c_int), ("ndim", ctypes.c_uint32),
                ("shape", ctypes.c_uint32 * 4)]


class Shape(ctypes.Structure):
    _fields_ = [("dtype", ctypes.c_int), ("ndim", ctypes.c_uint32),
                ("dims", ctypes.c_uint32 * 4)]


class ModelDesc(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("weights_hash", ctypes.c_uint64),
                ("n_layers", ctypes.c_uint32), ("hidden", ctypes.c_uint32),
                ("dtype", ctypes.c_int), ("max_seq", ctypes.c_uint32),
                ("fp_chunks", ctypes.c_uint32), ("fp_seed", ctypes.c_uint64),
                ("kv_dim", ctypes.c_uint32), ("block_tokens", ctypes.c_uint32),
                ("kv_layers", ctypes.c_uint32)]


class NodeStats(ctypes.Structure):
    _fields_ = [("node", ctypes.c_int32), ("clients", ctypes.c_uint32),
                ("arena_bytes", ctypes.c_uint64), ("bytes_used", ctypes.c_uint64),
                ("entries", ctypes.c_uint64), ("hits", ctypes.c_uint64),
                ("inserts", ctypes.c_uint64), ("remote_inserts", ctypes.c_uint64)]


class Stats(ctypes.Structure):
    _fields_ = [("page_size", ctypes.c_uint64), ("arena_bytes", ctypes.c_uint64),
                ("numa_nodes", ctypes.c_uint32), ("hugepages", ctypes.c_bool),
                ("clients", ctypes.c_uint32), ("models", ctypes.c_uint32),
                ("uptime_s", ctypes.c_uint64), ("threads", ctypes.c_uint32),
                ("policy", ctypes.c_char * 16), ("hits", ctypes.c_uint64),
                ("misses", ctypes.c_uint64), ("inserts", ctypes.c_uint64),
                ("evictions", ctypes.c_uint64), ("expirations", ctypes.c_uint64),
                ("invalidations", ctypes.c_uint64), ("entries", ctypes.c_uint64),
                ("leases", ctypes.c_uint64), ("bytes_used", ctypes.c_uint64),
                ("bytes_budget", ctypes.c_uint64), ("fragmentation", ctypes.c_double),
                ("quota_refusals", ctypes.c_uint64), ("blocks", ctypes.c_uint64),
                ("prefix_hits", ctypes.c_uint64), ("prefix_misses", ctypes.c_uint64),
                ("blocks_served", ctypes.c_uint64), ("l2", ctypes.c_char * 8),
                ("l2_queue_bytes", ctypes.c_uint64), ("l2_queue_records", ctypes.c_uint64),
                ("l2_fetches_waiting", ctypes.c_uint64), ("l2_written", ctypes.c_uint64),
                ("l2_dropped", ctypes.c_uint64), ("l2_write_errors", ctypes.c_uint64),
                ("l2_fetched", ctypes.c_uint64), ("l2_fetch_misses", ctypes.c_uint64),
                ("l2_rejected", ctypes.c_uint64), ("l2_fetch_errors", ctypes.c_uint64),
                ("tenants", ctypes.c_uint32), ("n_nodes", ctypes.c_uint32),
                ("nodes", NodeStats * LB_MAX_NODES)]

    def to_dict(self) -> dict:
        """Every figure by its name; strings as str; "nodes" a list of the n_nodes rows in use,
        each a dict of NodeStats' fields (n_nodes itself is that list's length)."""
        out = {}
        for name, _ in self._fields_:
            if name == "n_nodes":
                continue
            v = getattr(self, name)
            if name == "nodes":
                v = [{k: getattr(n, k) for k, _ in NodeStats._fields_}
                     for n in v[:min(self.n_nodes, LB_MAX_NODES)]]
            out[name] = v.decode() if isinstance(v, bytes) else v
        return out


# What each struct measures in include/layerbank/layerbank.h (LB_ABI_SIZE_LP64).
ABI_SIZES = {Key: 56, HitC: 64, Shape: 24, ModelDesc: 64, NodeStats: 56, Stats: 1184}


def _candidates():
    """Where the library may be, in order: $LAYERBANK_LIBRARY; the path the build or the
    install recorded beside this file (_libpath.py, relative to it); the loader's search."""
    env = os.environ.get("LAYERBANK_LIBRARY")
    if env:
        yield env
    try:
        from . import _libpath
        yield os.path.normpath(os.path.join(os.path.dirname(__file__), _libpath.LIBRARY))
    except ImportError:
        pass
    yield "liblayerbank.so.0"


def _load():
    tried = []
    for path in _candidates():
        try:
            return ctypes.CDLL(path, use_errno=True)
        except OSError as e:
            tried.append(f"{path}: {e}")
    raise ImportError("layerbank: cannot load liblayerbank.so.0 (set LAYERBANK_LIBRARY to its "
                      "path); tried " + "; ".join(tried))


lib = _load()

_P = ctypes.c_void_p
_U32, _U64, _INT = ctypes.c_uint32, ctypes.c_uint64, ctypes.c_int
_FLOATP = ctypes.POINTER(ctypes.c_float)
_I32P = ctypes.POINTER(ctypes.c_int32)
_U64P = ctypes.POINTER(ctypes.c_uint64)

for name, res, args in [
    ("lb_connect", _INT, [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(_P)]),
    ("lb_close", None, [_P]),
    ("lb_connected", ctypes.c_bool, [_P]),
    ("lb_reconnects", _U32, [_P]),
    ("lb_last_error", ctypes.c_char_p, [_P]),
    ("lb_ping", _INT, [_P]),
    ("lb_stats", _INT, [_P, ctypes.POINTER(Stats), ctypes.c_size_t]),
    ("lb_register_model", _INT, [_P, ctypes.POINTER(ModelDesc), ctypes.POINTER(_U32)]),
    ("lb_arena_count", ctypes.c_uint, [_P]),
    ("lb_arena_base", _P, [_P, ctypes.c_uint, ctypes.POINTER(ctypes.c_size_t)]),
    ("lb_arena_fd", _INT, [_P, ctypes.c_uint]),
    ("lb_fp_proj_new", _P, [_U32, _U32, _U64, _FLOATP]),
    ("lb_fp_proj_free", None, [_P]),
    ("lb_fingerprint", _INT, [_P, _FLOATP, _U32, _U64P]),
    ("lb_token_hash", None, [_I32P, _U32, _U64P]),
    ("lb_hash64", _U64, [_P, _U64]),
    ("lb_fp_hamming", _U32, [_U64P, _U64P]),
    ("lb_lookup_deepest", _INT, [_P, _U32, ctypes.POINTER(Key), _FLOATP, _U32,
                                 ctypes.POINTER(HitC)]),
    ("lb_lookup", _INT, [_P, _U32, _U32, ctypes.POINTER(Key), _FLOATP, _U32,
                         ctypes.POINTER(HitC)]),
    ("lb_insert_reserve", _P, [_P, _U64]),
    ("lb_insert_commit_tokens", _INT, [_P, _U32, _U32, ctypes.POINTER(Key),
                                       ctypes.POINTER(Shape), _U32, _I32P]),
    ("lb_insert_tokens_bytes", _U64, [_U64, _U32]),
    ("lb_release", _INT, [_P, _U64]),
    ("lb_set_wait_us", None, [_P, _U32]),
    ("lb_block_keys", _U32, [_I32P, _U32, _U32, _U64P, _U32]),
    ("lb_lookup_prefix", _INT, [_P, _U32, _U64P, _U32, ctypes.POINTER(_P), _U64P]),
    ("lb_insert_block", _INT, [_P, _U32, _U64P, _U64P, _U32]),
]:
    f = getattr(lib, name)
    f.restype = res
    f.argtypes = args
