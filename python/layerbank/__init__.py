"""layerbank from Python: the same bank as liblayerbank's C API, zero-copy.

    import layerbank
    with layerbank.Client() as c:                       # $LAYERBANK_SOCKET, else the default
        m = c.register_model("my-model", n_layers=12, hidden=768, weights_hash=h)
        fp = layerbank.fingerprint(embeddings)          # [tokens][hidden] float32
        with m.lookup_deepest(tokens, fp) as hit:       # None on a miss
            x = hit.array()                             # read-only view of the arena

A hit's views are valid until hit.release() (or the end of its with block): using one after
that raises layerbank.Released, since its place in the arena may hold another entry by then.
Every failure raises layerbank.Error (with .errno) or one of its subclasses.
"""
import ctypes as _ct
import errno as _errno
import os as _os
import threading as _threading
from typing import Iterable, List, Optional, Sequence

import numpy as _np

from . import _lib

_c = _lib.lib

__all__ = ["Client", "Model", "Key", "Hit", "PrefixHit", "Projection", "fingerprint", "token_hash",
           "hash64", "embedding_center", "Error", "ConnectError", "DaemonGone", "Timeout",
           "AccessDenied", "AlreadyCached", "NoSpace", "InvalidArgument", "Released",
           "WORKER_FP_SEED", "DEFAULT_SOCKET"]

DEFAULT_SOCKET = "/run/layerbank/layerbankd.sock"
# The fingerprint seed layerbank-worker uses (worker/cache.c): the default here, so that a
# Python client and the C worker compute the same bits for the same embeddings.
WORKER_FP_SEED = 0x6C61796572
_DTYPES = {"f32": (1, _np.dtype("<f4")), "f16": (2, _np.dtype("<f2")),
           "bf16": (3, _np.dtype("<u2"))}  # bf16: numpy has none; its raw 16-bit words
_DTYPE_OF = {code: dt for code, dt in _DTYPES.values()}
_U8 = _np.dtype("u1")


# ---- errors ----

class Error(Exception):
    """A layerbank call failed: .errno is the positive errno value the C library returned."""

    def __init__(self, err: int, message: str):
        super().__init__(message)
        self.errno = err


class ConnectError(Error):
    """No daemon could be reached (ENOENT, ECONNREFUSED, EACCES on the socket...)."""


class DaemonGone(Error):
    """The daemon went away (EPIPE, ECONNRESET, ENOTCONN); the client reconnects by itself."""


class Timeout(Error):
    """The daemon did not answer in time (ETIMEDOUT)."""


class AccessDenied(Error):
    """EACCES: a model's allow-list, or a model this client did not register."""


class AlreadyCached(Error):
    """EEXIST where it is an error: a model name registered with another description."""


class NoSpace(Error):
    """ENOSPC or EDQUOT: no room in the bank, or this user's insert quota is used up."""


class InvalidArgument(Error, ValueError):
    """EINVAL: an argument out of range, or refused by the daemon."""


class Released(Error):
    """A view used after its hit was released (ESTALE)."""


_CLASSES = {_errno.EPIPE: DaemonGone, _errno.ECONNRESET: DaemonGone,
            _errno.ENOTCONN: DaemonGone, _errno.ETIMEDOUT: Timeout,
            _errno.EACCES: AccessDenied, _errno.EEXIST: AlreadyCached,
            _errno.ENOSPC: NoSpace, _errno.EDQUOT: NoSpace, _errno.EINVAL: InvalidArgument,
            _errno.ESTALE: Released}


def _error(rc: int, what: str, client=None, cls=None) -> Error:
    err = -rc if rc < 0 else rc
    msg = f"{what}: {_os.strerror(err)}"
    if client is not None and client._c:
        last = _c.lb_last_error(client._c)
        if last:
            msg += f" ({last.decode(errors='replace')})"
    return (cls or _CLASSES.get(err, Error))(err, msg)


# ---- keys ----

def _tokens(tokens) -> _np.ndarray:
    t = _np.ascontiguousarray(tokens, dtype=_np.int32)
    if t.ndim != 1:
        raise InvalidArgument(_errno.EINVAL, f"tokens: a sequence of ids, not shape {t.shape}")
    return t


_FLOATP = _ct.POINTER(_ct.c_float)


def _i32p(t: _np.ndarray):
    return t.ctypes.data_as(_ct.POINTER(_ct.c_int32))


def token_hash(tokens) -> _np.ndarray:
    """The exact-match key of a token sequence: XXH3-128 of the ids, as lb_token_hash gives
    it ([low, high] uint64)."""
    t = _tokens(tokens)
    out = _np.zeros(2, _np.uint64)
    _c.lb_token_hash(_i32p(t), len(t), out.ctypes.data_as(_ct.POINTER(_ct.c_uint64)))
    return out


def hash64(data) -> int:
    """XXH3-64 of bytes (bytes, bytearray, a numpy array): what layerbank-worker registers as a
    checkpoint file's weights_hash."""
    b = _np.frombuffer(memoryview(data).cast("B"), _np.uint8)
    return int(_c.lb_hash64(b.ctypes.data if len(b) else None, len(b)))


def embedding_center(table) -> _np.ndarray:
    """The mean of an embedding table's rows [vocab][hidden], summed in float64 row by row and
    rounded to float32, as layerbank-worker computes the fingerprint's center."""
    t = _np.asarray(table, dtype=_np.float32)
    acc = _np.zeros(t.shape[1], _np.float64)
    for row in t:
        acc += row
    return (acc / t.shape[0]).astype(_np.float32)


class Projection:
    """lb_fp_proj_new: the fingerprint projection for embeddings of width dim, pooled into
    chunks chunks, its PRNG seeded by seed, center (None, or dim floats) subtracted."""

    def __init__(self, dim: int, chunks: int = 4, seed: int = WORKER_FP_SEED, center=None):
        self.dim, self.chunks, self.seed = int(dim), int(chunks), int(seed)
        c = None
        if center is not None:
            self._center = _np.ascontiguousarray(center, dtype=_np.float32)
            if self._center.shape != (self.dim,):
                raise InvalidArgument(_errno.EINVAL, f"center: {self.dim} floats, not shape "
                                      f"{self._center.shape}")
            c = self._center.ctypes.data_as(_ct.POINTER(_ct.c_float))
        self._p = _c.lb_fp_proj_new(self.dim, self.chunks, self.seed & (2**64 - 1), c)
        if not self._p:
            err = _ct.get_errno() or _errno.EINVAL
            raise _error(err, f"projection of dim {dim}, {chunks} chunks")

    def fingerprint(self, embeddings) -> _np.ndarray:
        """The 256-bit SimHash of embeddings [tokens][dim] float32, as lb_fingerprint: 4 uint64."""
        e = _np.ascontiguousarray(embeddings, dtype=_np.float32)
        if e.ndim != 2 or e.shape[1] != self.dim or e.shape[0] < 1:
            raise InvalidArgument(_errno.EINVAL, f"embeddings: [tokens][{self.dim}] float32, "
                                  f"not shape {e.shape}")
        out = _np.zeros(4, _np.uint64)
        rc = _c.lb_fingerprint(self._p, e.ctypes.data_as(_ct.POINTER(_ct.c_float)), e.shape[0],
                               out.ctypes.data_as(_ct.POINTER(_ct.c_uint64)))
        if rc < 0:
            raise _error(rc, "fingerprint")
        return out

    def __del__(self):
        if getattr(self, "_p", None):
            _c.lb_fp_proj_free(self._p)
            self._p = None


_projections = {}
_projections_lock = _threading.Lock()


def fingerprint(embeddings, chunks: int = 4, seed: int = WORKER_FP_SEED,
                center=None) -> _np.ndarray:
    """lb_fingerprint of embeddings [tokens][hidden] float32 (the embedding layer's output):
    256 bits as 4 uint64, the same bits as the C library's for the same projection (chunks,
    seed, center). The projection is built once per parameters and kept."""
    e = _np.asarray(embeddings)
    if e.ndim != 2:
        raise InvalidArgument(_errno.EINVAL, f"embeddings: [tokens][hidden], not shape {e.shape}")
    ck = None if center is None else _np.ascontiguousarray(center, _np.float32).tobytes()
    k = (e.shape[1], chunks, seed, ck)
    with _projections_lock:
        p = _projections.get(k)
        if p is None:
            if len(_projections) >= 16:
                _projections.clear()
            p = _projections[k] = Projection(e.shape[1], chunks, seed, center)
    return p.fingerprint(e)


class Key:
    """What identifies an input (struct lb_key): its token ids, their exact hash, its
    fingerprint. Made once by Model.key (or layerbank.Key(tokens, fingerprint)), it saves the
    hashing when one input is looked up and inserted several times."""

    __slots__ = ("tokens", "c")

    def __init__(self, tokens, fingerprint):
        self.tokens = _tokens(tokens)
        f = _np.ascontiguousarray(fingerprint, dtype=_np.uint64)
        if f.shape != (4,):
            raise InvalidArgument(_errno.EINVAL, f"fingerprint: 4 uint64 (fingerprint()), not "
                                  f"shape {f.shape}")
        k = self.c = _lib.Key()
        _ct.memmove(k.fp, f.ctypes.data, 32)
        _c.lb_token_hash(_i32p(self.tokens), len(self.tokens), k.exact)
        k.seq_len = len(self.tokens)

    @property
    def fingerprint(self) -> _np.ndarray:
        return _np.array(self.c.fp, dtype=_np.uint64)

    @property
    def exact(self) -> _np.ndarray:
        return _np.array(self.c.exact, dtype=_np.uint64)


def _key(tokens, fp) -> Key:
    """tokens and fp as a Key; tokens a Key already (fp None) as it is."""
    if isinstance(tokens, Key):
        if fp is not None:
            raise InvalidArgument(_errno.EINVAL, "a Key carries its fingerprint: pass no other")
        return tokens
    if fp is None:
        raise InvalidArgument(_errno.EINVAL, "a fingerprint is needed with token ids")
    return Key(tokens, fp)


# ---- views that end with their lease ----

class _Interface:
    """What numpy builds a view from: an address in the client's arena mapping, shape, type."""

    __slots__ = ("__array_interface__",)

    def __init__(self, addr: int, shape, dtype: _np.dtype):
        self.__array_interface__ = {"data": (addr, True), "shape": shape,
                                    "typestr": dtype.str, "version": 3}


def _view(lease: "_Lease", addr: int, shape, dtype: _np.dtype) -> "LeasedArray":
    a = _np.asarray(_Interface(addr, shape, dtype)).view(LeasedArray)
    a._lease = lease
    return a


def _check(a):
    lz = getattr(a, "_lease", None)
    if lz is not None and lz.lease is None:
        raise Released(_errno.ESTALE, "a view used after its hit was released")


class LeasedArray(_np.ndarray):
    """A read-only numpy view of a hit, over the arena's memory: indexing it, numpy functions
    and ufuncs on it, printing or copying it raise Released once the hit is released (so do the
    views and slices taken from it), since its place may hold another entry by then. A plain
    ndarray made from it (.view(numpy.ndarray), memoryview) escapes that check: copy what you
    keep instead."""

    def __array_finalize__(self, obj):
        self._lease = getattr(obj, "_lease", None)

    def __getitem__(self, i):
        _check(self)
        return super().__getitem__(i)

    def __array__(self, dtype=None, *args, **kwargs):
        _check(self)
        a = self.view(_np.ndarray)
        return a if dtype is None else a.astype(dtype)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        for x in inputs + tuple(kwargs.get("out", ())):
            _check(x)
        args = [x.view(_np.ndarray) if isinstance(x, LeasedArray) else x for x in inputs]
        return getattr(ufunc, method)(*args, **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        _check(self)
        return super().__array_function__(func, types, args, kwargs)

    def __repr__(self):
        _check(self)
        return repr(self.view(_np.ndarray)).replace("array(", "LeasedArray(", 1)

    def __str__(self):
        _check(self)
        return str(self.view(_np.ndarray))

    def tolist(self):
        _check(self)
        return self.view(_np.ndarray).tolist()

    def tobytes(self, order="C"):
        _check(self)
        return self.view(_np.ndarray).tobytes(order)

    def copy(self, order="C"):
        _check(self)
        return self.view(_np.ndarray).copy(order)


def _leased_tensor(a: LeasedArray):
    import warnings

    import torch

    from . import torch as _lbtorch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns that the array is not writable
        t = torch.from_numpy(a.view(_np.ndarray))
    return _lbtorch.leased(t, a._lease)


class _Lease:
    """What a hit holds: the lease (None once released) and the span [lo, hi) of the arena its
    views point into."""

    __slots__ = ("client", "lease", "lo", "hi", "__weakref__")

    def __init__(self, client: "Client", lease: int, lo: int, hi: int):
        self.client, self.lease, self.lo, self.hi = client, lease, lo, hi

    def release(self) -> None:
        if self.lease is None:
            return
        lease, self.lease = self.lease, None
        self.client._leases.discard(self)
        if self.client._c:
            rc = _c.lb_release(self.client._c, lease)
            # The daemon gone: its leases went with it. A time-out: the release is on the ring
            # and the daemon carries it out when it gets to it.
            if rc < 0 and -rc not in (_errno.EPIPE, _errno.ECONNRESET, _errno.ENOTCONN,
                                      _errno.ETIMEDOUT):
                raise _error(rc, "release", self.client)


class _Leased:
    """What a hit and a prefix hit share: a lease given back by release(), at the end of a with
    block, or when the object is collected."""

    __slots__ = ()

    @property
    def released(self) -> bool:
        return self._lease.lease is None

    def release(self) -> None:
        """Give the lease back: the views raise Released from now on."""
        self._lease.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def __del__(self):
        try:
            self.release()
        except Exception:
            pass


class Hit(_Leased):
    """A cached layer output for an input: .layer, .distance (fingerprint bits from exact; 0:
    exact), .shape, .dtype; array() and tensor() view it without a copy until release()."""

    __slots__ = ("model", "_lease", "_addr", "layer", "distance", "checksum", "dtype", "shape",
                 "nbytes")

    def __init__(self, model: "Model", h: _lib.HitC, lease: _Lease, addr: int):
        self.model, self._lease, self._addr = model, lease, addr
        self.layer = h.layer
        self.distance = h.hamming
        self.checksum = h.checksum
        self.dtype = _DTYPE_OF.get(h.dtype, _U8)
        self.shape = tuple(h.shape[:h.ndim])
        self.nbytes = h.bytes

    def array(self, layer: Optional[int] = None) -> LeasedArray:
        """The hit's data as a read-only numpy array over the arena (no copy). layer: None or
        the hit's own (other layers: look them up with Model.lookup)."""
        if layer is not None and layer != self.layer:
            raise InvalidArgument(_errno.EINVAL, f"this hit holds layer {self.layer}, not "
                                  f"{layer} (Model.lookup finds another layer)")
        if self.released:
            raise Released(_errno.ESTALE, "the hit was released")
        return _view(self._lease, self._addr, self.shape, self.dtype)

    def tensor(self, layer: Optional[int] = None):
        """array(layer) as a torch tensor over the same memory (read it, never write it)."""
        return _leased_tensor(self.array(layer))


class PrefixHit(_Leased):
    """The longest cached prefix of a token sequence: .blocks (found), .tokens (positions
    covered), block(i) a read-only view [kv_layers][2][block_tokens][kv_dim] of block i."""

    def __init__(self, model: "Model", lease: _Lease, addrs: List[int]):
        self.model, self._lease, self._addrs = model, lease, addrs
        self.blocks = len(addrs)
        self.tokens = self.blocks * model.block_tokens

    def block(self, i: int) -> LeasedArray:
        if self.released:
            raise Released(_errno.ESTALE, "the hit was released")
        m = self.model
        shape = (m.kv_layers, 2, m.block_tokens, m.kv_dim)
        return _view(self._lease, self._addrs[i], shape, m.np_dtype)

    def arrays(self) -> List[LeasedArray]:
        return [self.block(i) for i in range(self.blocks)]


# ---- the client ----

class Client:
    """A connection to layerbankd (lb_connect). socket: None for $LAYERBANK_SOCKET, else
    DEFAULT_SOCKET. Use it as a context manager, or close() it."""

    def __init__(self, socket: Optional[str] = None, name: Optional[str] = None,
                 wait_us: Optional[int] = None):
        self._c = None
        self._leases = set()
        p = _ct.c_void_p()
        rc = _c.lb_connect(socket.encode() if socket else None,
                           name.encode() if name else b"python", _ct.byref(p))
        if rc < 0:
            cls = ConnectError if -rc not in (_errno.EINVAL, _errno.ENAMETOOLONG) else None
            err = _error(rc, f"connect to {socket or _os.environ.get('LAYERBANK_SOCKET') or DEFAULT_SOCKET}",
                         cls=cls)
            why = _c.lb_last_error(None)  # the daemon's refusal (EUSERS...), if it gave one
            if why:
                err = type(err)(err.errno, f"{err} ({why.decode(errors='replace')})")
            raise err
        self._c = p.value
        if wait_us is not None:
            _c.lb_set_wait_us(self._c, int(wait_us))

    # lifetime
    def close(self) -> None:
        """Release every hit still held (their views raise from now on) and disconnect."""
        for lease in list(self._leases):
            try:
                lease.release()
            except Error:
                pass
        if self._c:
            _c.lb_close(self._c)
            self._c = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()

    def _live(self):
        if not self._c:
            raise Error(_errno.EBADF, "the client is closed")
        return self._c

    # control
    def ping(self) -> None:
        rc = _c.lb_ping(self._live())
        if rc < 0:
            raise _error(rc, "ping", self)

    @property
    def connected(self) -> bool:
        return bool(self._c) and bool(_c.lb_connected(self._c))

    @property
    def reconnects(self) -> int:
        return int(_c.lb_reconnects(self._live()))

    def stats(self) -> dict:
        """The daemon's counters (lb_stats) as a dict: "tenants", and "nodes" a list of one
        dict per NUMA node (node, clients, arena_bytes, bytes_used, entries, hits, inserts,
        remote_inserts), empty when the daemon keeps no per-node figures."""
        s = _lib.Stats()
        rc = _c.lb_stats(self._live(), _ct.byref(s), _ct.sizeof(s))
        if rc < 0:
            raise _error(rc, "stats", self)
        return s.to_dict()

    def register_model(self, name: str, n_layers: int, hidden: int, dtype: str = "f32",
                       weights_hash: int = 0, max_seq: int = 512, fp_chunks: int = 4,
                       fp_seed: int = WORKER_FP_SEED, kv_dim: int = 0, block_tokens: int = 0,
                       kv_layers: int = 0) -> "Model":
        """Register a model (or find it registered with the same description): see
        lb_register_model. Raises AlreadyCached when the name is taken by another description,
        AccessDenied for a model whose allow-list does not name this uid."""
        if dtype not in _DTYPES:
            raise InvalidArgument(_errno.EINVAL, f"dtype {dtype!r}: one of {sorted(_DTYPES)}")
        d = _lib.ModelDesc(name.encode(), weights_hash & (2**64 - 1), n_layers, hidden,
                           _DTYPES[dtype][0], max_seq, fp_chunks, fp_seed & (2**64 - 1), kv_dim,
                           block_tokens, kv_layers)
        mid = _ct.c_uint32()
        rc = _c.lb_register_model(self._live(), _ct.byref(d), _ct.byref(mid))
        if rc < 0:
            raise _error(rc, f"register model {name!r}", self)
        return Model(self, int(mid.value), name, n_layers, hidden, dtype, max_seq, kv_dim,
                     block_tokens or (16 if kv_dim else 0), kv_layers or (n_layers if kv_dim else 0))

    def _lease(self, lease: int, addrs: Sequence[int], nbytes: int) -> _Lease:
        lz = _Lease(self, lease, min(addrs), max(addrs) + nbytes)
        self._leases.add(lz)
        return lz


class Model:
    """A registered model: lookups and inserts under its id."""

    def __init__(self, client: Client, model_id: int, name: str, n_layers: int, hidden: int,
                 dtype: str, max_seq: int, kv_dim: int, block_tokens: int, kv_layers: int):
        self.client, self.id, self.name = client, model_id, name
        self.n_layers, self.hidden, self.dtype, self.max_seq = n_layers, hidden, dtype, max_seq
        self.np_dtype = _DTYPES[dtype][1]
        self.kv_dim, self.block_tokens, self.kv_layers = kv_dim, block_tokens, kv_layers

    def _taus(self, taus):
        if taus is None:
            return None, 0
        t = _np.ascontiguousarray(taus, dtype=_np.float32)
        if t.shape != (self.n_layers,):
            raise InvalidArgument(_errno.EINVAL, f"taus: {self.n_layers} thresholds, one a layer")
        return t, self.n_layers

    def _hit(self, rc: int, h: _lib.HitC, what: str) -> Optional[Hit]:
        if rc == -_errno.ENOENT:
            return None
        if rc < 0:
            raise _error(rc, what, self.client)
        return Hit(self, h, self.client._lease(h.lease, (h.data,), h.bytes), h.data)

    def key(self, tokens, fingerprint) -> Key:
        """The Key of an input, for lookups and inserts of it that hash it once."""
        return Key(tokens, fingerprint)

    def lookup_deepest(self, tokens, fingerprint=None, taus=None) -> Optional[Hit]:
        """The deepest cached layer for this input (lb_lookup_deepest): a Hit, or None on a
        miss. tokens and fingerprint, or a Key alone. taus: None for the daemon's thresholds,
        else one per layer."""
        k = _key(tokens, fingerprint)
        ta, n = self._taus(taus)
        h = _lib.HitC()
        rc = _c.lb_lookup_deepest(self.client._live(), self.id, k.c,
                                  None if ta is None else ta.ctypes.data_as(_FLOATP), n, h)
        return self._hit(rc, h, "lookup_deepest")

    def lookup(self, layer: int, tokens, fingerprint=None, taus=None) -> Optional[Hit]:
        """One layer's cached output for this input (lb_lookup), or None."""
        k = _key(tokens, fingerprint)
        ta, n = self._taus(taus)
        h = _lib.HitC()
        rc = _c.lb_lookup(self.client._live(), self.id, layer, k.c,
                          None if ta is None else ta.ctypes.data_as(_FLOATP), n, h)
        return self._hit(rc, h, "lookup")

    def insert(self, tokens, fingerprint, layer: int, array, approx: int = 0) -> bool:
        """Insert layer's output for this input, with its token ids (so that lookups of other
        lengths can align with it). tokens and fingerprint, or a Key and None. array: [tokens]
        [hidden] of the model's dtype. approx: how far from exact it may be (the hamming of the
        hit it was computed on; 0: exact).
        @return True; False when that layer of this input is cached already."""
        k = _key(tokens, fingerprint)
        t = k.tokens
        a = _np.ascontiguousarray(array, dtype=self.np_dtype)
        if a.ndim < 1 or a.ndim > 4:
            raise InvalidArgument(_errno.EINVAL, f"array: 1 to 4 dimensions, not {a.ndim}")
        c = self.client._live()
        need = _c.lb_insert_tokens_bytes(a.nbytes, len(t))
        buf = _c.lb_insert_reserve(c, need)
        if not buf:
            raise _error(_ct.get_errno() or _errno.ENOBUFS, "insert_reserve", self.client)
        _ct.memmove(buf, a.ctypes.data, a.nbytes)
        s = _lib.Shape(_DTYPES[self.dtype][0], a.ndim, (_ct.c_uint32 * 4)(*a.shape))
        rc = _c.lb_insert_commit_tokens(c, self.id, layer, k.c, s, approx, _i32p(t))
        if rc == -_errno.EEXIST:
            return False
        if rc < 0:
            raise _error(rc, f"insert layer {layer}", self.client)
        return True

    # prefix blocks
    def _need_blocks(self):
        if not self.kv_dim:
            raise InvalidArgument(_errno.EINVAL, f"model {self.name!r} was registered without "
                                  "kv_dim: it has no prefix blocks")

    def block_keys(self, tokens) -> _np.ndarray:
        """The chained keys of the full blocks of tokens (lb_block_keys): [blocks][2] uint64."""
        self._need_blocks()
        t = _tokens(tokens)
        n = min(len(t) // self.block_tokens, _lib.LB_PREFIX_MAX_BLOCKS)
        keys = _np.zeros((max(n, 1), 2), _np.uint64)
        _c.lb_block_keys(_i32p(t), len(t), self.block_tokens,
                         keys.ctypes.data_as(_ct.POINTER(_ct.c_uint64)), n)
        return keys[:n]

    def lookup_prefix(self, tokens) -> Optional[PrefixHit]:
        """The longest cached run of blocks from the start of tokens (lb_lookup_prefix): a
        PrefixHit whose block(i) views block i's K and V, or None."""
        keys = self.block_keys(tokens)
        if not len(keys):
            return None
        blocks = (_ct.c_void_p * len(keys))()
        lease = _ct.c_uint64()
        rc = _c.lb_lookup_prefix(self.client._live(), self.id,
                                 keys.ctypes.data_as(_ct.POINTER(_ct.c_uint64)), len(keys),
                                 blocks, _ct.byref(lease))
        if rc == -_errno.ENOENT:
            return None
        if rc < 0:
            raise _error(rc, "lookup_prefix", self.client)
        nbytes = self.kv_layers * 2 * self.block_tokens * self.kv_dim * self.np_dtype.itemsize
        addrs = [blocks[i] for i in range(rc)]
        return PrefixHit(self, self.client._lease(lease.value, addrs, nbytes), addrs)

    def insert_blocks(self, tokens, blocks: Iterable, first: int = 0) -> int:
        """Insert the full blocks [first, len(blocks)) of tokens: blocks[i] is block i's
        [kv_layers][2][block_tokens][kv_dim] K and V. A block cached already is skipped.
        @return the blocks inserted."""
        keys = self.block_keys(tokens)
        c = self.client._live()
        nbytes = self.kv_layers * 2 * self.block_tokens * self.kv_dim * self.np_dtype.itemsize
        done = 0
        for i, b in enumerate(blocks):
            if i >= len(keys):
                raise InvalidArgument(_errno.EINVAL, f"block {i}: tokens hold {len(keys)} full "
                                      "blocks")
            if i < first:
                continue
            a = _np.ascontiguousarray(b, dtype=self.np_dtype)
            if a.nbytes != nbytes:
                raise InvalidArgument(_errno.EINVAL, f"block {i}: {a.nbytes} bytes, the model's "
                                      f"blocks have {nbytes}")
            buf = _c.lb_insert_reserve(c, nbytes)
            if not buf:
                raise _error(_ct.get_errno() or _errno.ENOBUFS, "insert_reserve", self.client)
            _ct.memmove(buf, a.ctypes.data, nbytes)
            parent = keys[i - 1] if i else _np.zeros(2, _np.uint64)
            rc = _c.lb_insert_block(c, self.id, keys[i].ctypes.data_as(_ct.POINTER(_ct.c_uint64)),
                                    parent.ctypes.data_as(_ct.POINTER(_ct.c_uint64)), i)
            if rc == -_errno.EEXIST:
                continue
            if rc < 0:
                raise _error(rc, f"insert block {i}", self.client)
            done += 1
        return done
