"""PyTorch on the CPU, for context beside ulp's GPT step (BENCHMARKS.md, "GPT-2 small").

The same GPT as ulp's nn/gpt.ts (GPT-2's architecture, as nanoGPT: pre-norm blocks, fused
qkv projection, causal attention, 4x MLP with tanh GELU, tied LM head), batch 1, AdamW, fp32,
on N CPU threads. Prints one JSON line per model. Not part of the project's tests: run it
by hand where PyTorch is installed (Debian: apt-get install python3-torch).

usage: python3 bench/reference/torch_gpt_step.py [--threads 2] [--steps 3] [--context 64]
       [--model gpt2 | --layers 6 --width 512 --vocab 8000]
"""

import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {
    "gpt2": (12, 768, 50257),
    "gpt2-medium": (24, 1024, 50257),
}


class Block(nn.Module):
    def __init__(self, c, nh):
        super().__init__()
        self.nh = nh
        self.ln_1 = nn.LayerNorm(c)
        self.c_attn = nn.Linear(c, 3 * c)
        self.c_proj = nn.Linear(c, c)
        self.ln_2 = nn.LayerNorm(c)
        self.c_fc = nn.Linear(c, 4 * c)
        self.mlp_proj = nn.Linear(4 * c, c)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        hs = C // self.nh
        q, k, v = (t.view(B, T, self.nh, hs).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
        mask = torch.ones(T, T, dtype=torch.bool).tril()
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + self.c_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, layers, width, vocab, context):
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(context, width)
        self.h = nn.ModuleList(Block(width, width // 64) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)
        for p in self.parameters():  # GPT-2's initialisation, as ulp's GPT
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)
            elif p.dim() == 1 and p.shape[0] != width:
                nn.init.zeros_(p)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for b in self.h:
            x = b(x)
        logits = self.ln_f(x) @ self.wte.weight.T
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--model", default=None)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=8000)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    layers, width, vocab = PRESETS[a.model] if a.model else (a.layers, a.width, a.vocab)
    model = GPT(layers, width, vocab, max(a.context, 64))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    idx = torch.randint(0, vocab, (1, a.context + 1))
    x, y = idx[:, :-1], idx[:, 1:]
    times, losses = [], []
    for _ in range(a.steps + 1):  # the first step warms up
        t0 = time.perf_counter()
        loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        times.append(time.perf_counter() - t0)
    params = sum(p.numel() for p in model.parameters())
    ms = sorted(times[1:])[len(times[1:]) // 2] * 1000
    print(json.dumps({
        "torch": torch.__version__, "threads": a.threads, "params": params,
        "layers": layers, "width": width, "vocab": vocab, "context": a.context,
        "ms_per_step": round(ms, 1), "tokens_per_s": round(a.context / ms * 1000, 1),
        "losses": [round(l, 4) for l in losses],
    }))


if __name__ == "__main__":
    main()
