#!/usr/bin/python3
"""Train, evaluate and check layerbank's small encoder, models/tinystories-mlm.safetensors.

  nice -n 19 /usr/bin/python3 tools/train_encoder.py [--data DIR] [--worker PATH] [--out FILE]
  /usr/bin/python3 tools/train_encoder.py --eval FILE [--data DIR]
  /usr/bin/python3 tools/train_encoder.py --check DIR [--model FILE]

A BERT-style masked-language model, exactly the network layerbank-worker runs for a BERT-style
safetensors file (worker/model_bert.c, worker/safetensors.c, worker/scorer.c):

  embeddings   token (512 rows, tok512.bin's vocabulary) + learned position (256 rows), then
               LayerNorm; no token type table (the worker adds nothing without one)
  4 layers     post-LN: x = LN(x + Wo attention(x)); x = LN(x + W2 gelu(W1 x)); attention
               bidirectional, 4 heads of 64 (the worker's heads = hidden / 64), scores scaled by
               1/8; FFN 1024; GELU the tanh approximation (lbk_gelu); LayerNorm eps 1e-12
               (the worker's for every BERT-style file)
  readout      logits = h W_tok^T over the 512 tokens: the tied embedding with no bias and no
               transform, the head the worker scores an encoder with, at the masked position

Training is masked-token prediction: 30% of the positions after BOS (at least one, drawn at
random each time a paragraph comes round) replaced by the mask token, id 0 (tok512.bin's <unk>,
which the tokenizer never gives), and the cross-entropy of the original tokens there, read out
through the tied embedding. The worker scores 15% (worker/mlm.h): training on twice as many
gives twice the predictions for the same work, and a model that fills 30% fills 15% better.
Text: the training part of tinystories_val.txt (its paragraphs from number 2,000 on, as
worker/workload.h splits a corpus: requests come only from the first 2,000; about 413 KB,
206,000 tokens) and 600 stories sampled from stories260K with `layerbank-worker generate`
(temperature 1, seeds 1..600, two at a time; about 217,000 tokens), about half of each. Every
paragraph is tokenized as the worker does (BOS, then worker/tokenizer.c's encode; ported here
and checked against the C tokenizer by test_encoder_torch), cut to 256 tokens.

The start is what makes it learn. From BERT's N(0, 0.02) initialisation a model of this size
sits at the unigram level (masked NLL 4.7-4.8 nats, accuracy 3-7%) for 500-700 steps of 4,096
tokens, post-LN or pre-LN, lr 1e-3 or 2e-3, init 0.02 or 0.088 alike (hidden 128 probes): the
masked position has to find its neighbours first, and learned positions give it nothing to find
them by (a model overfits 20 fixed paragraphs, so the pipeline itself is sound). So attention
starts local (local_start): the position table is a sinusoidal code in dimensions 0..63 (the
token embeddings start at 0 there), and head h of every layer reads only those dimensions, its
query rotated by LOCAL_OFFSETS[h] positions, so that it attends to position i + offset. Every
weight is trained from the first step. AdamW (lr 1e-3, betas 0.9/0.98, 100 steps of warm-up,
then linear decay to 0; weight decay 0.01 on matrices), 900 steps of at most 4,096 tokens
(padding included; about 3,900 real tokens a step), gradients clipped to norm 1.

Fixed seeds, 2 threads: the same command writes the same file. --eval prints the masked-token
accuracy on the evaluation part, masked as the worker masks (worker/mlm.c, ported here). --check
compares what test_encoder_torch's C side wrote to DIR (tokens, masks, hidden states and logits
of the committed model) with this script's tokenizer, masks and torch forward: exit 0 when all
agree (the forward within 1e-4), 1 when not, 77 when torch or numpy is missing.
"""
import argparse
import hashlib
import json
import math
import os
import struct
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LAYERS, HIDDEN, HEADS, FFN, VOCAB, POSITIONS, EPS = 4, 256, 4, 1024, 512, 256, 1e-12
MASK_ID, BOS = 0, 1
MASK_PERCENT, MASK_SEED = 15, 1          # worker/mlm.h: LBW_MLM_PERCENT, LBW_MLM_SEED
EVAL_PARAGRAPHS = 2000                   # worker/workload.h: LBW_EVAL_PARAGRAPHS
EVAL_MIN_CHARS, EVAL_MAX_CHARS = 100, 600  # the e2e benchmark's paragraph window

SEED = 1
THREADS = 2
STORIES = 600             # stories260K samples, seeds 1..STORIES
STORY_STEPS = 512
STEPS = 900               # optimizer steps
BATCH_TOKENS = 4096       # padded tokens per batch
TRAIN_MASK_PERCENT = 30   # masked in training: twice the predictions of 15% for the same work
LR, WARMUP, WEIGHT_DECAY = 1e-3, 100, 0.01
LOCAL_OFFSETS = (1, -1, 2, -2)  # head h of every layer starts attending to position i + offset[h]
LOCAL_SHARPNESS = 1.5     # scale of those heads' query and key weights
TOLERANCE = 1e-4          # --check: C against torch, max abs difference

# ---- tokenizer: worker/tokenizer.c's encode, byte for byte ----


class Tokenizer:
    def __init__(self, path, vocab_size=VOCAB):
        data = open(path, "rb").read()
        (self.max_token_length,) = struct.unpack_from("<i", data, 0)
        off, self.pieces, self.scores = 4, [], []
        for _ in range(vocab_size):
            score, n = struct.unpack_from("<fi", data, off)
            off += 8
            self.pieces.append(data[off:off + n])
            self.scores.append(score)
            off += n
        if off != len(data):
            raise ValueError(f"{path}: {len(data) - off} bytes after {vocab_size} tokens")
        self.ids = {}
        for i, p in enumerate(self.pieces):
            self.ids.setdefault(p, i)
        if len(self.ids) != vocab_size:
            raise ValueError(f"{path}: pieces repeat; the C lookup would pick any of them")
        # The mask token is safe: no character or pair of pieces spells it, so encode never
        # gives it (byte fallback covers unknown bytes with ids 3..258).
        m = self.pieces[MASK_ID]
        if any(m[:k] in self.ids and m[k:] in self.ids for k in range(1, len(m))):
            raise ValueError(f"{path}: the mask token {m!r} can be merged from two pieces")

    def encode(self, text, bos=True):
        """text (bytes) as lbw_tokenizer_encode(t, text, bos, 0, out)."""
        toks = [BOS] if bos else []
        if text:
            toks.append(self.ids.get(b" ", ord(" ") + 3))
        i, n = 0, len(text)
        while i < n:
            j = i + 1  # one UTF-8 character: a byte and its continuation bytes, at most 4
            while j < n and (text[j] & 0xC0) == 0x80 and j - i < 4:
                j += 1
            ch = text[i:j]
            if ch in self.ids:
                toks.append(self.ids[ch])
            else:
                toks.extend(b + 3 for b in ch)
            i = j
        while True:  # merge the first best-scoring pair until none is a piece
            best, best_i, best_id = -1e10, -1, -1
            for k in range(len(toks) - 1):
                t = self.ids.get(self.pieces[toks[k]] + self.pieces[toks[k + 1]])
                if t is not None and self.scores[t] > best:
                    best, best_i, best_id = self.scores[t], k, t
            if best_i < 0:
                return toks
            toks[best_i:best_i + 2] = [best_id]


# ---- corpus split: worker/workload.c's lbw_paragraphs_load ----


def paragraphs(path):
    """Every paragraph of a corpus file: its non-blank lines, '\\r' removed, tab and NUL as
    spaces. The first EVAL_PARAGRAPHS are the evaluation part, the rest the training part."""
    out = []
    for line in open(path, "rb").read().split(b"\n"):
        line = line.replace(b"\r", b"").replace(b"\t", b" ").replace(b"\0", b" ")
        if line.strip(b" "):
            out.append(line)
    return out


def split(path):
    """(evaluation part, training part); a training paragraph whose text is also in the
    evaluation part ("The end." in tinystories_val.txt) is left out of training."""
    p = paragraphs(path)
    held_out = p[:EVAL_PARAGRAPHS]
    seen = set(held_out)
    return held_out, [t for t in p[EVAL_PARAGRAPHS:] if t not in seen]


# ---- masks: worker/mlm.c's lbw_mlm_select ----

M64 = (1 << 64) - 1


def mix64(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def mask_positions(toks, seed=MASK_SEED):
    n = len(toks)
    if n < 2:
        return []
    m = max(1, (MASK_PERCENT * (n - 1) + 50) // 100)
    keys = []
    for p in range(1, n):
        c = toks[p + 1] if p + 1 < n else 0x1FFFFF
        keys.append((mix64(seed ^ (toks[p - 1] | toks[p] << 21 | c << 42)), p))
    return sorted(p for _, p in sorted(keys)[:m])


# ---- safetensors (F32 only, as the worker reads them) ----


def tensor_names():
    """Name and shape of every tensor, in file order."""
    out = [("embeddings.word_embeddings.weight", (VOCAB, HIDDEN)),
           ("embeddings.position_embeddings.weight", (POSITIONS, HIDDEN)),
           ("embeddings.LayerNorm.weight", (HIDDEN,)), ("embeddings.LayerNorm.bias", (HIDDEN,))]
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."
        for w in ("query", "key", "value"):
            out += [(p + f"attention.self.{w}.weight", (HIDDEN, HIDDEN)),
                    (p + f"attention.self.{w}.bias", (HIDDEN,))]
        out += [(p + "attention.output.dense.weight", (HIDDEN, HIDDEN)),
                (p + "attention.output.dense.bias", (HIDDEN,)),
                (p + "attention.output.LayerNorm.weight", (HIDDEN,)),
                (p + "attention.output.LayerNorm.bias", (HIDDEN,)),
                (p + "intermediate.dense.weight", (FFN, HIDDEN)),
                (p + "intermediate.dense.bias", (FFN,)),
                (p + "output.dense.weight", (HIDDEN, FFN)), (p + "output.dense.bias", (HIDDEN,)),
                (p + "output.LayerNorm.weight", (HIDDEN,)), (p + "output.LayerNorm.bias", (HIDDEN,))]
    return out


def write_safetensors(path, tensors, metadata):
    """tensors: [(name, float32 numpy array)] in file order."""
    header, off, blobs = {"__metadata__": metadata}, 0, []
    for name, a in tensors:
        b = a.astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def read_safetensors(path):
    import numpy as np
    data = open(path, "rb").read()
    (n,) = struct.unpack_from("<Q", data, 0)
    header = json.loads(data[8:8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        if t["dtype"] != "F32":
            raise ValueError(f"{path}: {name} is {t['dtype']}, not F32")
        b, e = t["data_offsets"]
        out[name] = np.frombuffer(data[8 + n + b:8 + n + e], dtype="<f4").reshape(t["shape"])
    return out


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# ---- the model ----


def model_classes():
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.query, self.key, self.value = (nn.Linear(HIDDEN, HIDDEN) for _ in range(3))
            self.attn_out = nn.Linear(HIDDEN, HIDDEN)
            self.attn_ln = nn.LayerNorm(HIDDEN, eps=EPS)
            self.inter = nn.Linear(HIDDEN, FFN)
            self.out = nn.Linear(FFN, HIDDEN)
            self.out_ln = nn.LayerNorm(HIDDEN, eps=EPS)

        def forward(self, x, pad):
            b, t, _ = x.shape

            def heads(y):
                return y.view(b, t, HEADS, HIDDEN // HEADS).transpose(1, 2)

            q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
            s = q @ k.transpose(-1, -2) / (HIDDEN // HEADS) ** 0.5
            if pad is not None:  # padding keys (training batches only) are never attended to
                s = s.masked_fill(pad[:, None, None, :], float("-inf"))
            a = (s.softmax(-1) @ v).transpose(1, 2).reshape(b, t, HIDDEN)
            x = self.attn_ln(x + self.attn_out(a))
            return self.out_ln(x + self.out(F.gelu(self.inter(x), approximate="tanh")))

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok = nn.Embedding(VOCAB, HIDDEN)
            self.pos = nn.Embedding(POSITIONS, HIDDEN)
            self.emb_ln = nn.LayerNorm(HIDDEN, eps=EPS)
            self.layers = nn.ModuleList(Layer() for _ in range(LAYERS))

        def hidden(self, toks, pad=None):
            """The last layer's output [b][t][HIDDEN]: what the worker's head reads."""
            x = self.emb_ln(self.tok(toks) + self.pos(torch.arange(toks.shape[1]))[None])
            for layer in self.layers:
                x = layer(x, pad)
            return x

        def logits(self, h):
            return h @ self.tok.weight.T

        def init_bert(self, gen):
            """BERT's initialisation: N(0, 0.02) matrices and embeddings, zero biases."""
            for name, p in self.named_parameters():
                if "_ln" in name:
                    nn.init.ones_(p) if name.endswith("weight") else nn.init.zeros_(p)
                elif name.endswith("bias"):
                    nn.init.zeros_(p)
                else:
                    with torch.no_grad():
                        p.copy_(torch.randn(p.shape, generator=gen) * 0.02)

        def local_start(self):
            """Attention that starts local (see train()): the position table a sinusoidal code in
            dimensions 0..63 (the token embeddings start at 0 there), and head h of every layer
            reading only those dimensions, its query rotated by LOCAL_OFFSETS[h] positions, so
            that it attends to position i + offset (about 0.99 of its weight)."""
            f = torch.arange(32, dtype=torch.float64)
            w = math.pi * (f + 1) / 33
            p = torch.arange(POSITIONS, dtype=torch.float64)[:, None]
            code = torch.zeros(POSITIONS, 64, dtype=torch.float64)
            code[:, 0::2], code[:, 1::2] = torch.sin(p * w), torch.cos(p * w)
            with torch.no_grad():
                scale = float(self.tok.weight.norm(dim=1).mean()) / math.sqrt(32)
                self.pos.weight.zero_()
                self.pos.weight[:, :64] = (code * scale).float()
                self.tok.weight[:, :64] = 0
                for layer in self.layers:
                    for h in range(HEADS):
                        d = LOCAL_OFFSETS[h % len(LOCAL_OFFSETS)]
                        rot = torch.zeros(64, 64, dtype=torch.float64)
                        for k in range(32):
                            c, s_ = math.cos(d * w[k]), math.sin(d * w[k])
                            rot[2 * k:2 * k + 2, 2 * k:2 * k + 2] = torch.tensor([[c, s_], [-s_, c]])
                        rows = slice(h * 64, (h + 1) * 64)
                        layer.query.weight[rows] = 0
                        layer.query.weight[rows, :64] = (LOCAL_SHARPNESS * rot).float()
                        layer.key.weight[rows] = 0
                        layer.key.weight[rows, :64] = LOCAL_SHARPNESS * torch.eye(64)

        def tensors(self):
            """(name, array) in the file's order and Hugging Face names."""
            out = {"embeddings.word_embeddings.weight": self.tok.weight,
                   "embeddings.position_embeddings.weight": self.pos.weight,
                   "embeddings.LayerNorm.weight": self.emb_ln.weight,
                   "embeddings.LayerNorm.bias": self.emb_ln.bias}
            for i, l in enumerate(self.layers):
                p = f"encoder.layer.{i}."
                for w, m in (("attention.self.query", l.query), ("attention.self.key", l.key),
                             ("attention.self.value", l.value),
                             ("attention.output.dense", l.attn_out),
                             ("attention.output.LayerNorm", l.attn_ln),
                             ("intermediate.dense", l.inter), ("output.dense", l.out),
                             ("output.LayerNorm", l.out_ln)):
                    out[p + w + ".weight"] = m.weight
                    out[p + w + ".bias"] = m.bias
            return [(n, out[n].detach().numpy()) for n, _ in tensor_names()]

        def load(self, path):
            t = read_safetensors(path)
            want = tensor_names()
            if sorted(t) != sorted(n for n, _ in want):
                raise ValueError(f"{path}: not this script's tensors")
            own = dict((n, a) for n, a in self.tensors())
            with torch.no_grad():
                for n, shape in want:
                    if tuple(t[n].shape) != shape:
                        raise ValueError(f"{path}: {n} has shape {t[n].shape}, not {shape}")
                    torch.from_numpy(own[n]).copy_(torch.from_numpy(t[n].copy()))
            return self

    return Encoder


def need_torch():
    """Import torch on THREADS threads, or exit 77. Debian's torch runs its matrix products on
    OpenBLAS (oneDNN's, at 40% of its speed here, is switched off), which takes these machines'
    AVX-512 vCPUs for another core and their environment presets OPENBLAS_CORETYPE=Haswell:
    with AVX-512 it is told SkylakeX, twice as fast (bench/README.md, the kernels). glibc keeps
    freed activations instead of unmapping them: page faults took half the time."""
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    if " avx512f" in flags and os.environ.get("OPENBLAS_CORETYPE") != "SkylakeX":
        os.environ["OPENBLAS_CORETYPE"] = "SkylakeX"
    os.environ["OPENBLAS_NUM_THREADS"] = str(THREADS)
    try:
        import numpy  # noqa: F401
        import torch
    except ImportError as e:
        print(f"SKIP: {e.name} is not installed for /usr/bin/python3 "
              "(apt-get install python3-torch python3-numpy)")
        sys.exit(77)
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 30)   # M_TRIM_THRESHOLD
    except OSError:
        pass
    torch.set_num_threads(THREADS)
    torch.backends.mkldnn.enabled = False


# ---- training ----


def generated_stories(worker, data, n, held_out):
    """Lines of n stories sampled from stories260K (temperature 1, seeds 1..n; the scalar
    kernels, whose bits every machine shares), none of them a paragraph of held_out."""
    from concurrent.futures import ThreadPoolExecutor
    env = dict(os.environ, LBK_ISA="scalar")

    def one(seed):
        return subprocess.run([worker, "generate", "--model", os.path.join(data, "stories260K.bin"),
                               "--tokenizer", os.path.join(data, "tok512.bin"),
                               "--temperature", "1", "--seed", str(seed),
                               "--steps", str(STORY_STEPS)],
                              check=True, capture_output=True, env=env).stdout
    out = []
    with ThreadPoolExecutor(THREADS) as pool:  # in seed order whatever finishes first
        for text in pool.map(one, range(1, n + 1)):
            out += [l for l in paragraphs_of(text) if l not in held_out]
    return out


def paragraphs_of(text):
    return [l for l in text.replace(b"\r", b"").split(b"\n") if l.strip(b" ")]


def batches(seqs, gen):
    """seqs shuffled, then cut into runs of similar length whose padded size stays within
    BATCH_TOKENS: [(list of sequences)]. Deterministic for a generator state."""
    import torch
    order = torch.randperm(len(seqs), generator=gen).tolist()
    out = []
    for c in range(0, len(order), 4096):  # sort within windows: little padding, still mixed
        chunk = sorted(order[c:c + 4096], key=lambda i: len(seqs[i]))
        cur = []
        for i in chunk:
            if cur and (len(cur) + 1) * len(seqs[i]) > BATCH_TOKENS:
                out.append(cur)
                cur = []
            cur.append(seqs[i])
        if cur:
            out.append(cur)
    perm = torch.randperm(len(out), generator=gen).tolist()
    return [out[i] for i in perm]


def masked_batch(batch, gen):
    """Inputs with TRAIN_MASK_PERCENT of each sequence's positions after BOS masked (at least
    one, drawn at random), padding, and the masked positions' targets."""
    import torch
    t = max(len(s) for s in batch)
    toks = torch.zeros(len(batch), t, dtype=torch.long)
    pad = torch.ones(len(batch), t, dtype=torch.bool)
    where = torch.zeros(len(batch), t, dtype=torch.bool)
    for r, s in enumerate(batch):
        n = len(s)
        toks[r, :n] = torch.tensor(s)
        pad[r, :n] = False
        m = max(1, (TRAIN_MASK_PERCENT * (n - 1) + 50) // 100)
        where[r, 1 + torch.randperm(n - 1, generator=gen)[:m]] = True
    targets = toks[where]
    toks[where] = MASK_ID
    return toks, pad, where, targets


def train(args):
    need_torch()
    import torch
    import torch.nn.functional as F
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    t0 = time.time()
    tok = Tokenizer(os.path.join(args.data, "tok512.bin"))
    held_out, train_part = split(os.path.join(args.data, "tinystories_val.txt"))
    stories = generated_stories(args.worker, args.data, STORIES, set(held_out))
    seqs = [tok.encode(p)[:POSITIONS] for p in train_part + stories]
    n_real = sum(len(tok.encode(p)) for p in train_part)
    n_gen = sum(len(s) for s in seqs) - sum(len(s) for s in seqs[:len(train_part)])
    print(f"text: {len(train_part)} training paragraphs of tinystories_val.txt "
          f"({sum(map(len, train_part))} bytes, {n_real} tokens), {len(stories)} paragraphs of "
          f"{STORIES} stories260K samples ({sum(map(len, stories))} bytes, {n_gen} tokens); "
          f"{time.time() - t0:.0f} s", flush=True)

    gen = torch.Generator().manual_seed(SEED)
    model = model_classes()()
    model.init_bert(gen)
    model.local_start()
    decay = [p for n, p in model.named_parameters() if p.dim() == 2]
    rest = [p for n, p in model.named_parameters() if p.dim() != 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                             {"params": rest, "weight_decay": 0.0}], lr=LR, betas=(0.9, 0.98),
                            foreach=True)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / WARMUP, max(0.0, (STEPS - s) / (STEPS - WARMUP))))
    step, queue, seen, loss_sum, right, total = 0, [], 0, 0.0, 0, 0
    model.train()
    while step < STEPS:
        if not queue:
            queue = batches(seqs, gen)
        toks, pad, where, targets = masked_batch(queue.pop(), gen)
        logits = model.logits(model.hidden(toks, pad)[where])
        loss = F.cross_entropy(logits, targets)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        seen += int((~pad).sum())
        loss_sum += float(loss) * len(targets)
        right += int((logits.argmax(-1) == targets).sum())
        total += len(targets)
        if step % 100 == 0 or step == STEPS:
            print(f"step {step}/{STEPS}: masked loss {loss_sum / total:.3f}, accuracy "
                  f"{right / total:.3f}, {seen} tokens, {time.time() - t0:.0f} s "
                  f"({time.process_time():.0f} s of CPU)", flush=True)
            loss_sum, right, total = 0.0, 0, 0
    meta = {"format": "pt", "architecture": "bert post-LN, gelu tanh, LayerNorm eps 1e-12",
            "mask_token_id": str(MASK_ID), "tokenizer": "tok512.bin",
            "made_by": "tools/train_encoder.py"}
    write_safetensors(args.out, model.tensors(), meta)
    print(f"wrote {args.out}: sha256 {sha256(args.out)}; {time.time() - t0:.0f} s "
          f"({time.process_time():.0f} s of CPU)", flush=True)
    evaluate(args.out, args.data)


# ---- evaluation and the check against the C worker ----


def evaluate(path, data):
    """Masked-token accuracy and NLL on the evaluation part's paragraphs of 100..600 chars,
    masked as the worker masks them (the e2e benchmark's requests are these paragraphs)."""
    need_torch()
    import torch
    tok = Tokenizer(os.path.join(data, "tok512.bin"))
    held_out, _ = split(os.path.join(data, "tinystories_val.txt"))
    model = model_classes()().load(path).eval()
    right = total = 0
    nll = 0.0
    paras = [p for p in held_out if EVAL_MIN_CHARS <= len(p) <= EVAL_MAX_CHARS]
    with torch.no_grad():
        for p in paras:
            toks = tok.encode(p)[:POSITIONS]
            pos = mask_positions(toks)
            x = torch.tensor(toks)
            target = x[pos].clone()
            x[pos] = MASK_ID
            lp = model.logits(model.hidden(x[None])[0, pos]).log_softmax(-1)
            right += int((lp.argmax(-1) == target).sum())
            nll -= float(lp.gather(1, target[:, None]).sum())
            total += len(pos)
    print(f"held-out: {len(paras)} paragraphs of the evaluation part ({EVAL_MIN_CHARS}.."
          f"{EVAL_MAX_CHARS} chars), {total} masked tokens: accuracy {right / total:.4f}, "
          f"NLL {nll / total:.4f} nats")
    return right / total


def read_records(path):
    """int32 records: n, then n int32 values; repeated to the end of the file."""
    data, off, out = open(path, "rb").read(), 0, []
    while off < len(data):
        (n,) = struct.unpack_from("<i", data, off)
        out.append(list(struct.unpack_from(f"<{n}i", data, off + 4)))
        off += 4 + 4 * n
    return out


def check(args):
    """What test_encoder_torch's C side wrote to args.check against this script: the split, the
    tokenizer, the masks and the forward of the committed model. @return the exit status."""
    d, bad = args.check, 0
    held_out, train_part = split(os.path.join(args.data, "tinystories_val.txt"))
    c_eval = open(os.path.join(d, "eval.txt"), "rb").read().split(b"\n")[:-1]
    if c_eval != held_out:
        print(f"FAIL split: the C loader's evaluation part ({len(c_eval)} paragraphs) is not "
              f"this script's ({len(held_out)})")
        bad += 1
    overlap = set(c_eval) & set(train_part)
    if overlap:
        print(f"FAIL split: {len(overlap)} training paragraphs in the C evaluation part")
        bad += 1
    print(f"split: {len(held_out)} evaluation paragraphs as the C loader has them, "
          f"{len(train_part)} for training, none in both")

    tok = Tokenizer(os.path.join(args.data, "tok512.bin"))
    texts = open(os.path.join(d, "texts.txt"), "rb").read().split(b"\n")[:-1]
    c_toks = read_records(os.path.join(d, "tokens.bin"))
    c_masks = read_records(os.path.join(d, "masks.bin"))
    n_tok = n_mask = 0
    for i, text in enumerate(texts):
        t = tok.encode(text)
        if t != c_toks[i]:
            print(f"FAIL tokenizer: text {i} {text[:60]!r}: {t[:12]}... against C {c_toks[i][:12]}...")
            bad += 1
        if MASK_ID in t:
            print(f"FAIL tokenizer: text {i} gives the mask token")
            bad += 1
        n_tok += len(t)
        if mask_positions(c_toks[i][:POSITIONS]) != c_masks[i]:
            print(f"FAIL masks: text {i}: {mask_positions(c_toks[i][:POSITIONS])} against C "
                  f"{c_masks[i]}")
            bad += 1
        n_mask += len(c_masks[i])
    print(f"tokenizer: {len(texts)} texts, {n_tok} tokens as the C tokenizer gives them, no mask "
          f"token; masks: {n_mask} positions as the C worker picks them")

    need_torch()
    import numpy as np
    import torch
    digest = open(args.model + ".sha256").read().split()[0]
    if sha256(args.model) != digest:
        print(f"FAIL {args.model}: sha256 {sha256(args.model)}, its .sha256 file says {digest}")
        bad += 1
    model = model_classes()().load(args.model).eval()
    inputs = read_records(os.path.join(d, "inputs.bin"))
    out = np.fromfile(os.path.join(d, "outputs.f32"), dtype="<f4")
    off, worst_h, worst_l = 0, 0.0, 0.0
    with torch.no_grad():
        for x in inputs:
            n = len(x)
            ch = out[off:off + n * HIDDEN].reshape(n, HIDDEN)
            cl = out[off + n * HIDDEN:off + n * (HIDDEN + VOCAB)].reshape(n, VOCAB)
            off += n * (HIDDEN + VOCAB)
            h = model.hidden(torch.tensor(x)[None])[0]
            worst_h = max(worst_h, float(np.abs(h.numpy() - ch).max()))
            worst_l = max(worst_l, float(np.abs(model.logits(h).numpy() - cl).max()))
    if off != len(out):
        print(f"FAIL outputs.f32: {len(out) - off} floats left over")
        bad += 1
    print(f"forward: {len(inputs)} masked inputs of {min(map(len, inputs))}..{max(map(len, inputs))} "
          f"tokens, C against torch: max |diff| hidden {worst_h:.2e}, logits {worst_l:.2e} "
          f"(tolerance {TOLERANCE:.0e})")
    if not (worst_h <= TOLERANCE and worst_l <= TOLERANCE):
        print("FAIL forward: beyond the tolerance")
        bad += 1
    return 1 if bad else 0


def main():
    data = os.environ.get("LAYERBANK_DATA") or os.path.join(ROOT, "..", "shared", "data")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=data, help="folder of tok512.bin, tinystories_val.txt, "
                    "stories260K.bin (default $LAYERBANK_DATA, then ../shared/data)")
    ap.add_argument("--worker", default=os.path.join(ROOT, "build", "worker", "layerbank-worker"))
    ap.add_argument("--out", default=os.path.join(ROOT, "models", "tinystories-mlm.safetensors"))
    ap.add_argument("--eval", metavar="FILE", help="print FILE's held-out masked accuracy")
    ap.add_argument("--check", metavar="DIR", help="compare test_encoder_torch's C output")
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "tinystories-mlm.safetensors"))
    args = ap.parse_args()
    if args.check:
        return check(args)
    if args.eval:
        evaluate(args.eval, args.data)
        return 0
    train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
