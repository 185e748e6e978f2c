#!/usr/bin/python3
"""Uptrain stories260K into FusedKV checkpoints, convert it training-free, and evaluate.

  nice -n 19 /usr/bin/python3 tools/train_fusedkv.py --mode lite|fused|control --out FILE
             [--steps N] [--seed S] [--data DIR]
  /usr/bin/python3 tools/train_fusedkv.py --convert-lite IN OUT
  /usr/bin/python3 tools/train_fusedkv.py --eval FILE [--data DIR]
  /usr/bin/python3 tools/train_fusedkv.py --eval-text FILE.txt CHECKPOINT [--data DIR]

The network is llama2.c's (run.c; worker/model_llama.c computes the same), here in torch,
float32, batched over sequences with full causal attention: RMSNorm (eps 1e-5), RoPE on the
channel pairs (i, i + 1) of q and k with freq 1 / 10000 ** ((i % head_size) / head_size),
grouped-query attention (query head h reads kv head h // (n_heads / n_kv_heads)) scaled by
1/sqrt(head_size), SwiGLU FFN w2(silu(w1 x) * w3 x), final RMSNorm, the classifier the token
embedding (or wcls when the header's vocab_size is negative). FusedKV checkpoints are the format
of worker/model_llama.h ("FusedKV checkpoints"), with n = L // 2 storage layers (stories260K:
L = 5, n = 2; layers 2..4 rebuild their K and V from layers 0 and 1):
  plain    the legacy checkpoint, every layer with its own K and V;
  lite     K_i = K_{n-1}, V_i = V_0 (no wk, wv for layers n..L-1);
  fused    K_i = a_i K_0 + a'_i K_{n-1} (post-RoPE, one weight per rotary pair),
           V_i = b_i V_0 + b'_i V_{n-1}, learnt; they start as lite (a 0, a' 1, b 1, b' 0).

Data: tinystories_val.txt, split as tools/train_encoder.py and worker/workload.h split it (its
split(), imported): the first EVAL_PARAGRAPHS (2,000) paragraphs are held out and only
evaluated; the rest, less the paragraphs whose text is also held out, are the training text
(2,336 paragraphs, 413 KB, 205,963 tokens with BOS; 88 on average, 419 at most). Every
paragraph is tokenized as `layerbank-worker score` does (BOS, then worker/tokenizer.c's encode,
train_encoder.py's port) and cut to seq_len (512), so a sequence starts at BOS as it is scored.

Uptraining (--mode) starts from stories260K's weights (lite and fused drop wk and wv of the
reconstruction layers) and trains every weight on
  loss = (1 - DISTILL) * CE + DISTILL * KL,   DISTILL = 0.5,
CE the next-token cross-entropy of the training text, KL(p_original || p_student) the
distillation to the original stories260K's next-token distribution at the same positions
(temperature 1), both means over the predicted tokens (every position but the last of each
sequence). control trains the plain model on the same objective with the same optimizer,
steps, batches and seed: the fair control, which tells what the extra training alone buys
(scoring paragraphs that start at BOS, which the original never saw mid-story, is learnt
fast: 30 steps took the original's held-out 1.534 to 1.454). AdamW, lr 5e-4 (COEF_LR_MULT = 20
times that for fused's coefficients, which start at 0 and 1 and must move by tenths), betas
0.9/0.95, no weight decay, WARMUP (60) steps of warm-up then a linear decay to 0, gradients
clipped to norm 1; batches of at most BATCH_TOKENS (4,096) tokens, padding included, of
paragraphs of similar length, reshuffled every epoch from the seed (53 batches an epoch).

Budget: STEPS = 1,500 by default, 6.0 M tokens with padding, 28 epochs of the training text.
A step (student forward and backward, the original's forward) took 0.37-0.45 s on this
machine's 2 vCPUs, 0.7 s while other builds loaded it (load 5): 10-18 minutes, within 30 on a
busy machine. libgomp's waiting threads spin by default, and two of them sharing loaded vCPUs
ran a step at 2.4 s (one thread 0.76 s): main() sets OMP_WAIT_POLICY=PASSIVE unless the
environment chose. The learning rate, DISTILL and the epochs were not swept: only short runs
were made while this was written (30 steps, from the training-free figures to the held-out
NLL after them: lite 3.109 -> 2.223, fused 3.109 -> 2.189, control 1.534 -> 1.454; 150 steps:
lite 2.010, control 1.441). 28 epochs of 206,000 tokens may overfit a 260K-parameter model;
the KL term holds it near the original, and --eval after the run tells.

--eval prints the held-out NLL in nats per predicted token: every held-out paragraph scored as
`layerbank-worker score` scores one text (BOS + tokens, NLL of tokens[1..n-1], the text cut to
seq_len tokens as serve cuts it), the paragraphs combined as total NLL / total predicted
tokens (the mean of the per-paragraph figures is printed beside it, and the figure of the
paragraphs of 50..300 tokens, tests/test_llama.c's window). stories260K: 1.5339 over the 2,000
paragraphs' 177,815 predicted tokens (1.4981 over the 1,654 of 50..300 tokens: short
paragraphs have little context; the first 32 of 50..300 tokens that test_llama.c scores give
1.334, the 1.3-1.45 of shared/data/README.md); training-free lite 3.1089. The worker's score
run paragraph by paragraph and summed gives the same to 4 decimals. --eval-text prints the
line `layerbank-worker score --text-file` prints for one file, with its refusals: on held-out
paragraphs the two agreed within 1e-6 for plain, lite and fused files (fused at
lite's start and after training).
--convert-lite writes training-free lite: the original weights without the reconstruction
layers' wk and wv. Fixed seeds, 2 threads: the same command writes the same file.
A checkpoint that is neither legacy for its header nor a valid FusedKV file is refused with
a message and exit status 1.
"""
import argparse
import math
import os
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.dont_write_bytecode = True  # importing the sibling script leaves nothing in tools/
sys.path.insert(0, HERE)
import train_encoder as enc  # noqa: E402  Tokenizer, split, need_torch, sha256, batches

HEADER_BYTES = 28
FOOTER = struct.Struct("<4siii")       # magic, version, mode, n
MAGIC, VERSION = b"LBFK", 1
PLAIN, LITE, FUSED = 0, 1, 2           # worker/model_llama.h: enum lbw_kv_mode
MODE_NAMES = {PLAIN: "plain", LITE: "lite", FUSED: "fused"}
EPS, THETA = 1e-5, 10000.0

SEED = 1
STEPS = 1500
BATCH_TOKENS = enc.BATCH_TOKENS  # train_encoder.batches cuts the batches: 4,096
LR, COEF_LR_MULT, WARMUP = 5e-4, 20.0, 60
DISTILL = 0.5
EVAL_BATCH_TOKENS = 8192
MID_TOKENS = (50, 300)  # tests/test_llama.c's window for the 1.3-1.45 of shared/data/README.md


class CheckpointError(Exception):
    pass


# ---- the file: legacy llama2.c and FusedKV ----


class Config:
    """The header's shape, checked as worker/model_llama.c's parse_header checks it."""

    FIELDS = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")
    CAPS = (1 << 16, 1 << 18, 1024, 1 << 16, 1 << 16, 1 << 20, 1 << 20)

    def __init__(self, hdr):
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
            raise CheckpointError(f"FusedKV footer: version {version}, this script reads {VERSION}")
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
    first n are written). Written whole to path.tmp, then renamed."""
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


def model_class():
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    def rmsnorm(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * w

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

        def kv_of(self, l, ks, vs):
            """K and V [b][t][kv_dim] layer l attends over, from the storage layers' ks, vs."""
            n = self.n
            if l < n:
                return ks[l], vs[l]
            if self.mode == LITE:
                return ks[n - 1], vs[0]
            i = l - n
            a, a2 = self.a[i].repeat_interleave(2), self.a2[i].repeat_interleave(2)
            return a * ks[0] + a2 * ks[n - 1], self.b[i] * vs[0] + self.b2[i] * vs[n - 1]

        def forward(self, toks):
            """toks [b][t] -> logits [b][t][vocab]. Causal: padding after a sequence's end
            changes none of its positions."""
            c = self.cfg
            b, t = toks.shape
            H, KVH, hs = c.n_heads, c.n_kv_heads, c.head_size
            causal = torch.ones(t, t, dtype=torch.bool).triu(1)
            x = self.token_embedding[toks]
            ks, vs = [], []
            for l in range(c.n_layers):
                xb = rmsnorm(x, self.rms_att[l])
                q = self.rope((xb @ self.wq[l].T).view(b, t, H, hs), t)
                if l < self.n:
                    k = self.rope((xb @ self.wk[l].T).view(b, t, KVH, hs), t).reshape(b, t, -1)
                    ks.append(k)
                    vs.append(xb @ self.wv[l].T)
                k, v = self.kv_of(l, ks, vs)
                # query head h = g * (H / KVH) + r reads kv head g: [b][g][r][t][hs] against
                # [b][g][1][t][hs], broadcast
                q = q.view(b, t, KVH, H // KVH, hs).permute(0, 2, 3, 1, 4)
                k = k.view(b, t, KVH, 1, hs).permute(0, 2, 3, 4, 1)
                v = v.view(b, t, KVH, 1, hs).permute(0, 2, 3, 1, 4)
                s = (q @ k).div_(math.sqrt(hs)).masked_fill_(causal, float("-inf"))
                a = s.softmax(-1) @ v
                x = x + a.permute(0, 3, 1, 2, 4).reshape(b, t, c.dim) @ self.wo[l].T
                xb = rmsnorm(x, self.rms_ffn[l])
                x = x + (F.silu(xb @ self.w1[l].T) * (xb @ self.w3[l].T)) @ self.w2[l].T
            x = rmsnorm(x, self.rms_final)
            return x @ (self.token_embedding if c.shared_classifier else self.wcls).T

    return Llama


def load_model(path):
    cfg, t, mode, n = read_checkpoint(path)
    return model_class()(cfg, t, mode, n)


def to_lite_or_fused(cfg, t, mode):
    """The plain tensors t made mode's (lite or fused) with n = L // 2: the reconstruction
    layers' wk and wv dropped, fused's coefficients at lite's behaviour."""
    import numpy as np
    L, n, kv = cfg.n_layers, storage_layers(cfg.n_layers), cfg.kv_dim
    out = dict(t)
    out["wk"], out["wv"] = t["wk"][:n].copy(), t["wv"][:n].copy()
    if mode == FUSED:
        out["a"] = np.zeros((L - n, kv // 2), np.float32)
        out["a2"] = np.ones((L - n, kv // 2), np.float32)
        out["b"] = np.ones((L - n, kv), np.float32)
        out["b2"] = np.zeros((L - n, kv), np.float32)
    return out, n


# ---- scoring as layerbank-worker does ----


def tokenizer(data, cfg):
    """tok512.bin of data for a model of cfg's vocabulary."""
    path = os.path.join(data, "tok512.bin")
    try:
        return enc.Tokenizer(path, cfg.vocab_size)
    except (ValueError, struct.error) as e:
        raise CheckpointError(f"{path} is not a tokenizer of the model's {cfg.vocab_size} "
                              f"tokens: {e}")


def score_tokens(text, tok, cfg, cut):
    """The tokens lbw_score_text scores for text (bytes): BOS + encode, cut (serve) or refused
    (score) beyond seq_len. @return the list, or a str saying why score refuses it."""
    per = max(tok.max_token_length, 4)
    limit = per * cfg.seq_len
    if len(text) > limit:
        if not cut:
            return f"longer than the model's {cfg.seq_len} tokens can hold"
        text = text[:limit]
    toks = tok.encode(text)
    if len(toks) < 2:
        return "no text to score"
    if len(toks) > cfg.seq_len:
        if not cut:
            return f"{len(toks)} tokens, more than the model's {cfg.seq_len}"
        toks = toks[:cfg.seq_len]
    return toks


def nll_sums(model, seqs):
    """Summed NLL (nats, float64 over float32 logits, as the worker sums) of each sequence's
    tokens[1..], batched by length."""
    import torch
    out = [0.0] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    with torch.no_grad():
        i = 0
        while i < len(order):
            j = i
            while j < len(order) and (j - i + 1) * len(seqs[order[j]]) <= EVAL_BATCH_TOKENS:
                j += 1
            j = max(j, i + 1)
            t = len(seqs[order[j - 1]])
            x = torch.zeros(j - i, t, dtype=torch.long)
            for r, k in enumerate(order[i:j]):
                x[r, :len(seqs[k])] = torch.tensor(seqs[k])
            lp = model(x).double().log_softmax(-1)
            for r, k in enumerate(order[i:j]):
                m = len(seqs[k])
                out[k] = -float(lp[r, :m - 1].gather(1, x[r, 1:m, None]).sum())
            i = j
    return out


def evaluate(path, data):
    enc.need_torch()
    model = load_model(path).eval()
    cfg = model.cfg
    tok = tokenizer(data, cfg)
    held_out, _ = enc.split(os.path.join(data, "tinystories_val.txt"))
    seqs = [s for s in (score_tokens(p, tok, cfg, True) for p in held_out) if isinstance(s, list)]
    sums = nll_sums(model, seqs)
    predicted = sum(len(s) - 1 for s in seqs)
    nll = sum(sums) / predicted
    per_para = sum(x / (len(s) - 1) for x, s in zip(sums, seqs)) / len(seqs)
    mid = [(x, len(s) - 1) for x, s in zip(sums, seqs) if MID_TOKENS[0] <= len(s) <= MID_TOKENS[1]]
    print(f"{path}: {MODE_NAMES[model.mode]}" + (f" n {model.n}" if model.mode else "") +
          f"; held-out: {len(seqs)} paragraphs of tinystories_val.txt, {predicted} predicted "
          f"tokens: nll_per_token {nll:.4f} (total / tokens; mean of the paragraphs' "
          f"{per_para:.4f}; the {len(mid)} of {MID_TOKENS[0]}..{MID_TOKENS[1]} tokens "
          f"{sum(x for x, _ in mid) / sum(k for _, k in mid):.4f})", flush=True)
    return nll


def eval_text(text_path, path, data):
    """The line `layerbank-worker score --text-file text_path` prints. @return exit status."""
    try:
        text = open(text_path, "rb").read()
    except OSError as e:
        print(f"train_fusedkv.py: cannot open {text_path}: {e.strerror}", file=sys.stderr)
        return 1
    if b"\0" in text:
        print(f"train_fusedkv.py: {text_path} contains a NUL byte", file=sys.stderr)
        return 1
    if text.endswith(b"\n"):  # main.c's read_text drops one final newline
        text = text[:-1]
    enc.need_torch()
    model = load_model(path).eval()
    tok = tokenizer(data, model.cfg)
    toks = score_tokens(text, tok, model.cfg, False)
    if isinstance(toks, str):
        print(f"train_fusedkv.py: {text_path}: {toks}", file=sys.stderr)
        return 1
    (nll,) = nll_sums(model, [toks])
    print(f"tokens {len(toks)} predicted {len(toks) - 1} nll_per_token "
          f"{nll / (len(toks) - 1):.6f}")
    return 0


# ---- training ----


def padded(batch):
    """(tokens [b][t], mask [b][t - 1] of the positions that predict a real token)."""
    import torch
    t = max(len(s) for s in batch)
    x = torch.zeros(len(batch), t, dtype=torch.long)
    m = torch.zeros(len(batch), t - 1, dtype=torch.bool)
    for r, s in enumerate(batch):
        x[r, :len(s)] = torch.tensor(s)
        m[r, :len(s) - 1] = True
    return x, m


def train(args):
    enc.need_torch()
    import torch
    import torch.nn.functional as F
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    t0 = time.time()
    mode = {"control": PLAIN, "lite": LITE, "fused": FUSED}[args.mode]
    base = os.path.join(args.data, "stories260K.bin")
    cfg, t, base_mode, _ = read_checkpoint(base)
    if base_mode != PLAIN:
        raise CheckpointError(f"{base}: uptraining starts from a plain checkpoint")
    Llama = model_class()
    teacher = Llama(cfg, t, PLAIN, cfg.n_layers).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    n = cfg.n_layers
    if mode != PLAIN:
        t, n = to_lite_or_fused(cfg, t, mode)
    model = Llama(cfg, t, mode, n)

    tok = tokenizer(args.data, cfg)
    held_out, train_part = enc.split(os.path.join(args.data, "tinystories_val.txt"))
    seqs = [s for s in (score_tokens(p, tok, cfg, True) for p in train_part)
            if isinstance(s, list)]
    n_tok = sum(len(s) for s in seqs)
    print(f"{args.mode}: {MODE_NAMES[mode]}" + (f" with n = {n} storage layers of "
          f"{cfg.n_layers}" if mode else f", {cfg.n_layers} layers") +
          f"; text: {len(seqs)} training paragraphs of tinystories_val.txt ({n_tok} tokens, "
          f"{len(held_out)} held out); {args.steps} steps of at most {BATCH_TOKENS} tokens, "
          f"seed {args.seed}; {time.time() - t0:.0f} s", flush=True)

    gen = torch.Generator().manual_seed(args.seed)
    coef = [p for nm, p in model.named_parameters() if nm in ("a", "a2", "b", "b2")]
    rest = [p for nm, p in model.named_parameters() if nm not in ("a", "a2", "b", "b2")]
    groups = [{"params": rest, "lr": LR}]
    if coef:
        groups.append({"params": coef, "lr": LR * COEF_LR_MULT})
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.95), weight_decay=0.0, foreach=True)
    steps, warm = args.steps, max(1, min(WARMUP, args.steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm))))
    every = max(1, min(100, steps // 10))
    step, queue, seen, epoch = 0, [], 0, 0
    ce_sum = kl_sum = 0.0
    count = 0
    model.train()
    while step < steps:
        if not queue:
            queue = enc.batches(seqs, gen)  # length-sorted runs, shuffled
            epoch += 1
        x, m = padded(queue.pop())
        logits = model(x)[:, :-1][m]
        with torch.no_grad():
            ref = teacher(x)[:, :-1][m].log_softmax(-1)
        lp = logits.log_softmax(-1)
        ce = F.nll_loss(lp, x[:, 1:][m])
        kl = F.kl_div(lp, ref, log_target=True, reduction="batchmean")
        loss = (1 - DISTILL) * ce + DISTILL * kl
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        seen += x.numel()
        k = int(m.sum())
        ce_sum, kl_sum, count = ce_sum + float(ce) * k, kl_sum + float(kl) * k, count + k
        if step % every == 0 or step == steps or step == 1:
            print(f"step {step}/{steps} (epoch {epoch}): CE {ce_sum / count:.4f} KL "
                  f"{kl_sum / count:.4f} nats/token, {seen} tokens, {time.time() - t0:.0f} s "
                  f"({time.process_time():.0f} s of CPU)", flush=True)
            ce_sum = kl_sum = 0.0
            count = 0
    size = write_checkpoint(args.out, cfg, model.tensors(), mode, n)
    if mode == FUSED:
        for i in range(cfg.n_layers - n):
            a, a2 = model.a[i].detach(), model.a2[i].detach()
            b, b2 = model.b[i].detach(), model.b2[i].detach()
            print(f"layer {n + i}: K weights on layer 0 mean {float(a.mean()):+.3f}, on layer "
                  f"{n - 1} {float(a2.mean()):+.3f}; V on layer 0 {float(b.mean()):+.3f}, on "
                  f"layer {n - 1} {float(b2.mean()):+.3f}")
    evaluate(args.out, args.data)
    cmd = ["nice -n 19 /usr/bin/python3 tools/train_fusedkv.py", "--mode", args.mode,
           "--steps", str(args.steps), "--seed", str(args.seed), "--out", args.out]
    if os.path.abspath(args.data) != os.path.abspath(default_data()):
        cmd += ["--data", args.data]
    print(f"wrote {args.out}: {size} bytes, sha256 {enc.sha256(args.out)}; "
          f"{time.time() - t0:.0f} s ({time.process_time():.0f} s of CPU)")
    print("reproduce: " + " ".join(cmd), flush=True)


def convert_lite(src, dst):
    cfg, t, mode, _ = read_checkpoint(src)
    if mode != PLAIN:
        raise CheckpointError(f"{src} is already {MODE_NAMES[mode]}: --convert-lite takes a "
                              "plain checkpoint")
    lite, n = to_lite_or_fused(cfg, t, LITE)
    size = write_checkpoint(dst, cfg, lite, LITE, n)
    print(f"wrote {dst}: lite, n = {n} of {cfg.n_layers} layers, {size} bytes "
          f"({cfg.size(PLAIN, cfg.n_layers)} plain), sha256 {enc.sha256(dst)}")


def default_data():
    return os.environ.get("LAYERBANK_DATA") or os.path.join(ROOT, "..", "shared", "data")


def main():
    # libgomp's threads spin while they wait for work: on a shared 2-vCPU machine two threads
    # ran a training step 3 times slower than one (2.4 s against 0.76), passive 0.71 s
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=default_data(), help="folder of tok512.bin, "
                    "tinystories_val.txt, stories260K.bin (default $LAYERBANK_DATA, then "
                    "../shared/data)")
    ap.add_argument("--mode", choices=("lite", "fused", "control"), help="uptrain into --out")
    ap.add_argument("--out", help="the checkpoint --mode writes")
    ap.add_argument("--steps", type=int, default=STEPS, help=f"optimizer steps ({STEPS})")
    ap.add_argument("--seed", type=int, default=SEED, help=f"torch and data order ({SEED})")
    ap.add_argument("--convert-lite", nargs=2, metavar=("IN", "OUT"),
                    help="write training-free lite of the plain checkpoint IN")
    ap.add_argument("--eval", metavar="FILE", help="print FILE's held-out NLL")
    ap.add_argument("--eval-text", nargs=2, metavar=("TEXT", "CHECKPOINT"),
                    help="print what `layerbank-worker score` prints for TEXT")
    args = ap.parse_args()
    chosen = [x for x in (args.mode, args.convert_lite, args.eval, args.eval_text) if x]
    if len(chosen) != 1:
        ap.error("one of --mode, --convert-lite, --eval, --eval-text")
    if args.mode and not args.out:
        ap.error("--mode needs --out")
    if args.steps < 1:
        ap.error("--steps must be at least 1")
    try:
        if args.eval_text:
            return eval_text(args.eval_text[0], args.eval_text[1], args.data)
        if args.convert_lite:
            convert_lite(*args.convert_lite)
        elif args.eval:
            evaluate(args.eval, args.data)
        else:
            train(args)
    except CheckpointError as e:
        print(f"train_fusedkv.py: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # the tokenizer or the corpus
        print(f"train_fusedkv.py: {e.filename}: {e.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
