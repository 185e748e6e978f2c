"""llama2.c checkpoints, legacy and FusedKV, and the network in torch: stories260K's.

Importing this module needs numpy alone (and only to read or write a file); torch is imported
when a model is first made (model_class, load). tools/train_fusedkv.py trains and evaluates
with it; worker/model_llama.c computes the same network in C (test_fusedkv_torch holds the two
together).

The network is llama2.c's (run.c), float32, batched over sequences with full causal attention:
RMSNorm (eps 1e-5), RoPE on the channel pairs (i, i + 1) of q and k with freq
1 / 10000 ** ((i % head_size) / head_size), grouped-query attention (query head h reads kv head
h // (n_heads / n_kv_heads)) scaled by 1/sqrt(head_size), SwiGLU FFN w2(silu(w1 x) * w3 x),
final RMSNorm, the classifier the token embedding (or wcls when the header's vocab_size is
negative). FusedKV checkpoints are the format of worker/model_llama.h ("FusedKV checkpoints"):
a legacy file without the reconstruction layers' wk and wv, then (fused) their coefficients,
then a footer; n storage layers keep their own K and V (tools/train_fusedkv.py makes
n = L // 2: stories260K, L = 5, n = 2, layers 2..4 rebuild theirs from layers 0 and 1):
  plain    the legacy checkpoint, every layer with its own K and V;
  lite     K_i = K_{n-1}, V_i = V_0 (no wk, wv for layers n..L-1);
  fused    K_i = a_i K_0 + a'_i K_{n-1} (post-RoPE, one weight per rotary pair),
           V_i = b_i V_0 + b'_i V_{n-1}, learnt (a, a2, b, b2 in the file).

The committed checkpoints (models/stories260K-*.bin) were trained with this forward: its
floating-point operations, and their order, are what reproduces them bit for bit.
"""
import functools
import math
import os
import struct

__all__ = ["HEADER_BYTES", "FOOTER", "MAGIC", "VERSION", "PLAIN", "LITE", "FUSED", "MODE_NAMES",
           "EPS", "THETA", "CheckpointError", "Config", "storage_layers", "read_checkpoint",
           "parse_checkpoint", "write_checkpoint", "model_class", "load"]

HEADER_BYTES = 28
FOOTER = struct.Struct("<4siii")       # magic, version, mode, n
MAGIC, VERSION = b"LBFK", 1
PLAIN, LITE, FUSED = 0, 1, 2           # worker/model_llama.h: enum lbw_kv_mode
MODE_NAMES = {PLAIN: "plain", LITE: "lite", FUSED: "fused"}
EPS, THETA = 1e-5, 10000.0


class CheckpointError(Exception):
    """A file that is neither a legacy checkpoint for its header nor a valid FusedKV one (or
    cannot be read); the message says which field or size is wrong."""


# ---- the file: legacy llama2.c and FusedKV ----


class Config:
    """The header's shape, checked as worker/model_llama.c's parse_header checks it."""

    FIELDS = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")
    CAPS = (1 << 16, 1 << 18, 1024, 1 << 16, 1 << 16, 1 << 20, 1 << 20)

    def __init__(self, hdr):
        """hdr: the header's seven ints; raises CheckpointError naming a field out of range."""
        self.hdr = tuple(hdr)
        self.dim, self.hidden_dim, self.n_layers, self.n_heads, self.n_kv_heads, v, \
            self.seq_len = hdr
        self.shared_classifier = v > 0
        self.vocab_size = abs(v)
        for name, cap in zip(self.FIELDS, self.CAPS):
            x = getattr(self, name)
            if not 1 <= x <= cap:
                raise CheckpointError(f"bad checkpoint header: {name} = {x} (must be 1..{cap})")
        if self.dim % self.n_heads:
            raise CheckpointError(f"bad checkpoint header: dim {self.dim} not a multiple of "
                                  f"n_heads {self.n_heads}")
        if self.n_kv_heads > self.n_heads or self.n_heads % self.n_kv_heads:
            raise CheckpointError(f"bad checkpoint header: n_heads {self.n_heads} not a multiple "
                                  f"of n_kv_heads {self.n_kv_heads}")
        self.head_size = self.dim // self.n_heads
        if self.head_size % 2:
            raise CheckpointError(f"bad checkpoint header: head_size {self.head_size} is odd "
                                  "(RoPE needs pairs)")
        self.kv_dim = self.n_kv_heads * self.head_size

    def layout(self, kv_layers):
        """(name, shape) of every tensor in file order, wk and wv for kv_layers layers."""
        d, h, L, kv, V = self.dim, self.hidden_dim, self.n_layers, self.kv_dim, self.vocab_size
        out = [("token_embedding", (V, d)), ("rms_att", (L, d)), ("wq", (L, d, d)),
               ("wk", (kv_layers, kv, d)), ("wv", (kv_layers, kv, d)), ("wo", (L, d, d)),
               ("rms_ffn", (L, d)), ("w1", (L, h, d)), ("w2", (L, d, h)), ("w3", (L, h, d)),
               ("rms_final", (d,)), ("freq_cis", (2, self.seq_len, self.head_size // 2))]
        if not self.shared_classifier:
            out.append(("wcls", (V, d)))
        return out

    def coef_layout(self):
        """(name, shape) of one reconstruction layer's coefficients (fused), in file order."""
        kv = self.kv_dim
        return [("a", (kv // 2,)), ("a2", (kv // 2,)), ("b", (kv,)), ("b2", (kv,))]

    def size(self, mode, n):
        """Bytes of the file of mode with n storage layers."""
        L = self.n_layers
        floats = sum(math.prod(s) for _, s in self.layout(L if mode == PLAIN else n))
        if mode == FUSED:
            floats += (L - n) * 3 * self.kv_dim
        return HEADER_BYTES + 4 * floats + (FOOTER.size if mode != PLAIN else 0)


def storage_layers(n_layers):
    """The n storage layers tools/train_fusedkv.py gives a model of n_layers: n_layers // 2."""
    return n_layers // 2


def read_checkpoint(path):
    """(cfg, tensors {name: float32 array}, mode, n) of a legacy or FusedKV file; a file that is
    neither raises CheckpointError naming path. Fused's coefficients are a, a2, b, b2
    [L - n][...]."""
    try:
        data = open(path, "rb").read()
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror}")
    try:
        return parse_checkpoint(data)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}")


def parse_checkpoint(data):
    """read_checkpoint of the file's bytes data; CheckpointError without a path."""
    import numpy as np
    if len(data) < HEADER_BYTES:
        raise CheckpointError(f"{len(data)} bytes, shorter than the 28-byte header")
    cfg = Config(struct.unpack_from("<7i", data, 0))
    L = cfg.n_layers
    legacy = cfg.size(PLAIN, L)
    if len(data) == legacy:
        mode, n = PLAIN, L
    else:
        if len(data) < HEADER_BYTES + FOOTER.size:
            raise CheckpointError(f"{len(data)} bytes: not the {legacy} its header implies for a "
                                  "legacy checkpoint, and too short for a FusedKV footer")
        magic, version, mode, n = FOOTER.unpack_from(data, len(data) - FOOTER.size)
        if magic != MAGIC:
            raise CheckpointError(f"{len(data)} bytes, but its header implies {legacy} for a "
                                  f"legacy checkpoint and it has no FusedKV footer (magic "
                                  f"{magic!r}, not {MAGIC!r}): truncated or not a checkpoint")
        if version != VERSION:
            raise CheckpointError(f"FusedKV footer: version {version}, this module reads "
                                  f"{VERSION}")
        if mode not in (LITE, FUSED):
            raise CheckpointError(f"FusedKV footer: mode {mode} (must be 1 lite or 2 fused)")
        if not 1 <= n <= L - 1:
            raise CheckpointError(f"FusedKV footer: n {n} (must be 1..{L - 1} for {L} layers)")
        want = cfg.size(mode, n)
        if len(data) != want:
            raise CheckpointError(f"{len(data)} bytes, but a {MODE_NAMES[mode]} checkpoint of "
                                  f"this header with n = {n} has {want}")
    t, off = {}, HEADER_BYTES
    for name, shape in cfg.layout(n if mode != PLAIN else L):
        k = math.prod(shape)
        t[name] = np.frombuffer(data, "<f4", k, off).reshape(shape).copy()
        off += 4 * k
    if mode == FUSED:
        coef = {name: [] for name, _ in cfg.coef_layout()}
        for _ in range(n, L):
            for name, shape in cfg.coef_layout():
                coef[name].append(np.frombuffer(data, "<f4", shape[0], off).copy())
                off += 4 * shape[0]
        for name, rows in coef.items():
            t[name] = np.stack(rows)
    return cfg, t, mode, n


def write_checkpoint(path, cfg, t, mode, n):
    """t as read_checkpoint returns it; wk and wv hold L layers (plain) or at least n (their
    first n are written). Written whole to path.tmp, then renamed. @return the file's bytes;
    ValueError when a tensor's shape is not the file's."""
    L = cfg.n_layers
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<7i", *cfg.hdr))
        for name, shape in cfg.layout(L if mode == PLAIN else n):
            a = t[name][:shape[0]] if name in ("wk", "wv") else t[name]
            if tuple(a.shape) != shape:
                raise ValueError(f"{name} has shape {a.shape}, the file wants {shape}")
            f.write(a.astype("<f4").tobytes())
        if mode == FUSED:
            for i in range(L - n):
                for name, _ in cfg.coef_layout():
                    f.write(t[name][i].astype("<f4").tobytes())
        if mode != PLAIN:
            f.write(FOOTER.pack(MAGIC, VERSION, mode, n))
    os.replace(tmp, path)
    size, want = os.path.getsize(path), cfg.size(mode, n)
    if size != want:
        raise ValueError(f"{path}: wrote {size} bytes, the format says {want}")
    return size


# ---- the model ----


@functools.lru_cache(maxsize=None)
def model_class():
    """The class Llama (torch imported here, once):

      Llama(cfg, t, mode, n)   the model of read_checkpoint's four values (t is copied)
      .embed(toks) -> x        toks [b][t] (long) -> x [b][t][dim]
      .layers                  nn.ModuleList of the n_layers blocks; layers[l](x, kv) -> x
      .new_kv()                the kv a forward passes its blocks: kv.k[j], kv.v[j]
                               [b][t][kv_dim] of storage layer j (K after RoPE), None until
                               block j has run; a reconstruction layer reads layers 0 and n-1's
      .head(x) -> logits       final RMSNorm and classifier: [b][t][vocab]
      forward(toks)            embed, every block in order, head
      .tensors()               {name: float32 array} in the file's naming, for write_checkpoint

    The parameters are the file's stacked tensors (token_embedding, rms_att [L][d], wq [L][d][d],
    wk and wv [n][kv_dim][d], ..., fused's a, a2 [L - n][kv_dim / 2] and b, b2 [L - n][kv_dim]),
    registered on the Llama under those names; a block reads its layer's rows of them and holds
    no parameters of its own. Split per layer, the same training would round differently
    (gradient clipping's norm is summed per tensor), and the committed checkpoints would no
    longer reproduce."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    def rmsnorm(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * w

    class KV:
        """The storage layers' K (after RoPE) and V [b][t][kv_dim] of one forward."""

        __slots__ = ("k", "v")

        def __init__(self, n):
            self.k, self.v = [None] * n, [None] * n

    class Block(nn.Module):
        """Layer l of a Llama: attention (its own K and V, or rebuilt from kv's) and the FFN."""

        def __init__(self, model, l):
            super().__init__()
            self.l = l
            # the weights are model's; not registered, so that the block is no second owner of
            # them (and model.parameters() holds each once, in the file's order)
            object.__setattr__(self, "model", model)

        def extra_repr(self):
            m = self.model
            if self.l < m.n:
                return f"layer {self.l}, its own K and V"
            return f"layer {self.l}, K and V {MODE_NAMES[m.mode]} from layers 0 and {m.n - 1}"

        def kv_of(self, kv):
            """K and V [b][t][kv_dim] this layer attends over, from the storage layers'."""
            m, l = self.model, self.l
            n = m.n
            if l < n:
                return kv.k[l], kv.v[l]
            if m.mode == LITE:
                return kv.k[n - 1], kv.v[0]
            i = l - n
            a, a2 = m.a[i].repeat_interleave(2), m.a2[i].repeat_interleave(2)
            return a * kv.k[0] + a2 * kv.k[n - 1], m.b[i] * kv.v[0] + m.b2[i] * kv.v[n - 1]

        def forward(self, x, kv):
            """x [b][t][dim] -> x [b][t][dim]; a storage layer stores its K and V in kv."""
            m, l, c = self.model, self.l, self.model.cfg
            b, t = x.shape[0], x.shape[1]
            H, KVH, hs = c.n_heads, c.n_kv_heads, c.head_size
            causal = torch.ones(t, t, dtype=torch.bool).triu(1)
            xb = rmsnorm(x, m.rms_att[l])
            q = m.rope((xb @ m.wq[l].T).view(b, t, H, hs), t)
            if l < m.n:
                kv.k[l] = m.rope((xb @ m.wk[l].T).view(b, t, KVH, hs), t).reshape(b, t, -1)
                kv.v[l] = xb @ m.wv[l].T
            k, v = self.kv_of(kv)
            # query head h = g * (H / KVH) + r reads kv head g: [b][g][r][t][hs] against
            # [b][g][1][t][hs], broadcast
            q = q.view(b, t, KVH, H // KVH, hs).permute(0, 2, 3, 1, 4)
            k = k.view(b, t, KVH, 1, hs).permute(0, 2, 3, 4, 1)
            v = v.view(b, t, KVH, 1, hs).permute(0, 2, 3, 1, 4)
            s = (q @ k).div_(math.sqrt(hs)).masked_fill_(causal, float("-inf"))
            a = s.softmax(-1) @ v
            x = x + a.permute(0, 3, 1, 2, 4).reshape(b, t, c.dim) @ m.wo[l].T
            xb = rmsnorm(x, m.rms_ffn[l])
            return x + (F.silu(xb @ m.w1[l].T) * (xb @ m.w3[l].T)) @ m.w2[l].T

    class Llama(nn.Module):
        """llama2.c's forward over batches of sequences; mode and n as in the file."""

        def __init__(self, cfg, t, mode, n):
            super().__init__()
            self.cfg, self.mode = cfg, mode
            self.n = n if mode != PLAIN else cfg.n_layers
            names = [nm for nm, _ in cfg.layout(self.n)]
            if mode == FUSED:
                names += [nm for nm, _ in cfg.coef_layout()]
            for nm in names:
                if nm == "freq_cis":  # unused by the forward, kept for the file
                    self.register_buffer(nm, torch.from_numpy(t[nm].copy()))
                else:
                    setattr(self, nm, nn.Parameter(torch.from_numpy(t[nm].copy())))
            hs = cfg.head_size
            # llama2.c in float: 1.0f / powf(10000.0f, (float)head_dim / (float)hs)
            i = torch.arange(0, hs, 2, dtype=torch.float32)
            self.register_buffer("freq", 1.0 / torch.pow(torch.tensor(THETA), i / hs))
            self.layers = nn.ModuleList(Block(self, l) for l in range(cfg.n_layers))

        def tensors(self):
            """{name: float32 array} for write_checkpoint."""
            return {k: v.detach().numpy() for k, v in
                    list(self.named_parameters()) + [("freq_cis", self.freq_cis)]}

        def rope(self, x, t):
            """x [b][t][heads][hs] rotated by position: pairs (2j, 2j+1) of every head."""
            val = torch.arange(t, dtype=torch.float32)[:, None] * self.freq  # [t][hs/2]
            c, s = val.cos()[None, :, None, :], val.sin()[None, :, None, :]
            x0, x1 = x[..., 0::2], x[..., 1::2]
            return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), -1).flatten(-2)

        def new_kv(self):
            """An empty kv for one forward through the blocks (KV(n): k, v of n None)."""
            return KV(self.n)

        def embed(self, toks):
            """toks [b][t] -> x [b][t][dim], the token embedding's rows."""
            return self.token_embedding[toks]

        def head(self, x):
            """x [b][t][dim] after the last block -> logits [b][t][vocab]."""
            x = rmsnorm(x, self.rms_final)
            return x @ (self.token_embedding if self.cfg.shared_classifier else self.wcls).T

        def forward(self, toks):
            """toks [b][t] -> logits [b][t][vocab]. Causal: padding after a sequence's end
            changes none of its positions."""
            x, kv = self.embed(toks), self.new_kv()
            for layer in self.layers:
                x = layer(x, kv)
            return self.head(x)

    Llama.Block, Llama.KV = Block, KV
    return Llama


def load(path):
    """The torch model (model_class()'s Llama, in eval mode) of the checkpoint at path, legacy
    or FusedKV; CheckpointError when the file is neither (or cannot be read)."""
    cfg, t, mode, n = read_checkpoint(path)
    return model_class()(cfg, t, mode, n).eval()


def __getattr__(name):
    """layerbank.llama.Llama: model_class(), torch imported on first use."""
    if name == "Llama":
        return model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
