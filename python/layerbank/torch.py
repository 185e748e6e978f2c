"""layerbank for PyTorch: run a model's layer loop from the deepest cached layer.

Hooks cannot skip a module's forward, so LayerCache owns the loop: it embeds the input,
fingerprints the embeddings, asks the bank for the deepest cached layer, runs the layers after
it and inserts what it computed. When the daemon is away it runs every layer itself (the C
library reconnects by itself, so the bank is used again once a daemon is back).
"""
import errno
from typing import Callable, Optional, Sequence

import numpy as np
import torch

import layerbank as _lb


class LeasedTensor(torch.Tensor):
    """A tensor over a hit's memory: an operation on it raises layerbank.Released once the hit is
    released (on views and slices taken from it too), since its place in the arena may hold
    another entry by then."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        lease = None
        for a in list(args) + list(kwargs.values()):
            for x in (a if isinstance(a, (list, tuple)) else (a,)):
                lz = getattr(x, "_lb_lease", None)
                if lz is not None:
                    if lz.lease is None:
                        raise _lb.Released(errno.ESTALE, "a tensor used after its hit was "
                                           "released")
                    lease = lz
        with torch._C.DisableTorchFunction():
            ret = func(*args, **kwargs)
            view = lease is not None and isinstance(ret, torch.Tensor) and ret.numel() and \
                lease.lo <= ret.data_ptr() < lease.hi
        return leased(ret, lease) if view else ret  # a view of the hit ends with it


def leased(t: torch.Tensor, lease) -> LeasedTensor:
    with torch._C.DisableTorchFunction():
        lt = t.as_subclass(LeasedTensor)
    lt._lb_lease = lease
    return lt


class LayerCache:
    """Run layers (a sequence of modules, each x [tokens][hidden] -> the same shape; an
    nn.ModuleList) for token ids, from the deepest layer the bank holds for them.

    client: a layerbank.Client, or None (every layer computed). embed: tokens (LongTensor
    [tokens]) -> embeddings [tokens][hidden] float32, the input of layer 0, which the
    fingerprint is made from. The model is registered as model_name with the description given
    (registering what layerbank-worker registers for a checkpoint shares its entries with it).
    center: the fingerprint's center (layerbank.embedding_center of the embedding table, as the
    worker uses), or None. taus: per-layer lookup thresholds (None: the daemon's).
    last: what the latest call did ({hit_layer, distance, computed, inserted, error}).
    """

    def __init__(self, client: Optional["_lb.Client"], model_name: str,
                 layers: Sequence[Callable], embed: Callable, *, hidden: int,
                 weights_hash: int = 0, max_seq: int = 512, center=None, taus=None,
                 fp_chunks: int = 4, fp_seed: int = _lb.WORKER_FP_SEED, kv_dim: int = 0,
                 block_tokens: int = 0, kv_layers: int = 0, insert: bool = True,
                 new_state: Optional[Callable] = None):
        self.layers, self.embed, self.hidden = layers, embed, hidden
        self.new_state = new_state
        self.center = None if center is None else np.asarray(center, np.float32)
        self.taus, self.insert = taus, insert
        self.fp_chunks, self.fp_seed = fp_chunks, fp_seed
        self.client, self.model = client, None
        self.last = {}
        if client is not None:
            try:
                self.model = client.register_model(
                    model_name, n_layers=len(layers), hidden=hidden, weights_hash=weights_hash,
                    max_seq=max_seq, fp_chunks=fp_chunks, fp_seed=fp_seed, kv_dim=kv_dim,
                    block_tokens=block_tokens, kv_layers=kv_layers)
            except (_lb.DaemonGone, _lb.Timeout) as e:
                self.last = {"error": str(e)}  # no bank this time: plain runs

    def fingerprint(self, emb: np.ndarray) -> np.ndarray:
        return _lb.fingerprint(emb, self.fp_chunks, self.fp_seed, self.center)

    @torch.no_grad()
    def __call__(self, tokens) -> torch.Tensor:
        """The last layer's output [tokens][hidden] for tokens (a sequence of ids)."""
        ids = np.ascontiguousarray(tokens, dtype=np.int32)
        x = self.embed(torch.from_numpy(ids.astype(np.int64)))
        last = {"hit_layer": -1, "distance": 0, "computed": 0, "inserted": 0, "error": None}
        self.last = last
        state = self.new_state() if self.new_state else None
        run = (lambda l, x: self.layers[l](x, state)) if self.new_state else \
            (lambda l, x: self.layers[l](x))
        if self.model is None:
            for l in range(len(self.layers)):
                x = run(l, x)
            last["computed"] = len(self.layers)
            return x
        key = self.model.key(ids, self.fingerprint(x.detach().numpy()))
        start, approx = 0, 0
        try:
            hit = self.model.lookup_deepest(key, None, self.taus)
        except (_lb.DaemonGone, _lb.Timeout) as e:
            hit, last["error"] = None, str(e)
        if hit is not None:
            with hit:
                x = torch.from_numpy(hit.array().copy()).reshape(x.shape)
            start, approx = hit.layer + 1, hit.distance
            last["hit_layer"], last["distance"] = hit.layer, hit.distance
        for l in range(start, len(self.layers)):
            x = run(l, x)
            last["computed"] += 1
            if self.insert and last["error"] is None:
                try:
                    if self.model.insert(key, None, l, x.detach().numpy(), approx):
                        last["inserted"] += 1
                except (_lb.DaemonGone, _lb.Timeout, _lb.NoSpace) as e:
                    last["error"] = str(e)
        return x


class _OneSequence(torch.nn.Module):
    """A llama block on one sequence: x [tokens][dim] -> [tokens][dim], as the bank holds it."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, x, kv):
        return self.block(x[None], kv)[0]


def for_llama(client: Optional["_lb.Client"], model, name: str, weights_hash: int,
              **kw) -> LayerCache:
    """A LayerCache over a layerbank.llama model (a plain one: a FusedKV model's later layers
    need the storage layers' K and V of every position, which a resume from a cached layer
    would skip), registered as layerbank-worker registers a checkpoint: give name (the worker's
    "FILE@TIER", for example "stories260K.bin@avx512", to share its entries) and weights_hash
    (layerbank.hash64 of the file's bytes). The center and the description follow the model."""
    from . import llama
    if model.mode != llama.PLAIN:
        raise _lb.InvalidArgument(errno.EINVAL, f"a {llama.MODE_NAMES[model.mode]} model's "
                                  "hidden states are not cached (its reconstruction layers need "
                                  "K and V that a resume would skip)")
    c = model.cfg
    return LayerCache(client, name, [_OneSequence(b) for b in model.layers],
                      lambda ids: model.embed(ids[None])[0], hidden=c.dim,
                      weights_hash=weights_hash, max_seq=c.seq_len,
                      center=_lb.embedding_center(model.token_embedding.detach().numpy()),
                      kv_dim=c.kv_dim, block_tokens=16, kv_layers=c.n_layers,
                      new_state=model.new_kv, **kw)
