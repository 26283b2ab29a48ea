"""
==============================================================================================
 nightlab default target: small-GPT pretraining. THIS FILE IS THE ONE AGENTS EDIT.

 Everything fixed (data, tokenizer, time budget, the val_bpb metric) lives in trainer/prepare.py,
 which agents never edit. Change knobs below or any code in this file; keep the final summary.
==============================================================================================

    python -m trainer.prepare --preset cpu && python -m trainer.train      # ~1-2M params, ~10 s
    NIGHTLAB_PRESET=gpu python -m trainer.train    # 300 s; the knobs below are the cpu model: the
                                                   # ~50M gpu model is programs/h100.md's `knobs:`

The run ends with `---` and `key: value` lines; a NaN or exploding loss prints FAIL and exits 1.
"""

import copy
import math
import os
import resource
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer.prepare import EVAL_SEPARATE, MAX_SEQ_LEN, Budget, DataError, Tokenizer, evaluate_bpb, make_dataloader

# ---- Knobs: model ----
DEPTH = 4  # transformer blocks
ASPECT_RATIO = 32  # model_dim = DEPTH * ASPECT_RATIO, rounded up to a multiple of HEAD_DIM
HEAD_DIM = 32  # attention head size; heads = model_dim // HEAD_DIM
MLP_RATIO = 4  # MLP hidden = MLP_RATIO * model_dim
USE_VALUE_EMBEDS = True  # value embeddings mixed into attention values on alternate layers
LOGIT_SOFTCAP = 15.0  # logits = cap * tanh(logits / cap)
ROPE_BASE = 10000.0  # rotary embedding base frequency

# ---- Knobs: optimisation ----
TOTAL_BATCH_TOKENS = 2**12  # tokens per optimizer step (gradient accumulation fills it)
DEVICE_BATCH_SIZE = 16  # most rows of MAX_SEQ_LEN per forward/backward (a memory knob)
MATRIX_LR = 0.02  # Muon learning rate for 2-D block matrices
EMBEDDING_LR = 0.3  # AdamW learning rate for token and value embeddings
UNEMBEDDING_LR = 0.004  # AdamW learning rate for the lm_head
SCALAR_LR = 0.05  # AdamW learning rate for per-layer residual scalars (0.5 spiked some seeds at step 6)
WEIGHT_DECAY = 0.0  # Muon decoupled weight decay
MUON_MOMENTUM = 0.95  # Muon momentum
ADAM_BETA1 = 0.8  # AdamW beta1
ADAM_BETA2 = 0.95  # AdamW beta2
WARMUP_RATIO = 0.0  # fraction of the budget spent warming the learning rate up
WARMDOWN_RATIO = 0.5  # fraction of the budget spent decaying to FINAL_LR_FRAC
FINAL_LR_FRAC = 0.0  # final learning rate as a fraction of the peak

# ---- Knobs: run ----
SEED = 42  # torch seed for init (the data order is the harness's)
COMPILE = True  # torch.compile on CUDA (CPU always runs eager)
EVAL_BATCH_SIZE = 32  # rows per forward during the final evaluation
FUSED_HEAD = True  # CPU training: forward()'s softcapped cross-entropy in fused chunks (speed only; see fused_head_agrees)
HEAD_CHUNK = 256  # rows per chunk of the fused head


# ---- Model ----


@dataclass
class GPTConfig:
    sequence_len: int
    vocab_size: int
    n_layer: int
    n_head: int
    n_embd: int
    mlp_ratio: int
    value_embeds: bool
    softcap: float
    rope_base: float


def norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


def has_ve(layer: int, n_layer: int) -> bool:
    return layer % 2 == (n_layer - 1) % 2  # alternate layers, always the last


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    d = x.size(-1) // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.n_embd // cfg.n_head
        self.c_q = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.c_k = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.c_v = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.ve_gate = nn.Linear(32, cfg.n_head, bias=False) if cfg.value_embeds and has_ve(layer, cfg.n_layer) else None

    def forward(self, x, ve, cos, sin):
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_head, self.head_dim)
        if ve is not None and self.ve_gate is not None:
            gate = 2 * torch.sigmoid(self.ve_gate(x[..., :32]))  # (B, T, heads), starts at 1
            v = v + gate.unsqueeze(-1) * ve.view(B, T, self.n_head, self.head_dim)
        q, k = norm(rotary(q, cos, sin)), norm(rotary(k, cos, sin))  # QK-norm after RoPE
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, cfg.mlp_ratio * cfg.n_embd, bias=False)
        self.c_proj = nn.Linear(cfg.mlp_ratio * cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())  # ReLU²


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        self.attn, self.mlp = Attention(cfg, layer), MLP(cfg)

    def forward(self, x, ve, cos, sin):
        x = x + self.attn(norm(x), ve, cos, sin)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.value_embeds = nn.ModuleDict({str(i): nn.Embedding(cfg.vocab_size, cfg.n_embd)
                                           for i in range(cfg.n_layer) if cfg.value_embeds and has_ve(i, cfg.n_layer)})
        self.resid_lambdas = nn.Parameter(torch.ones(cfg.n_layer))
        self.x0_lambdas = nn.Parameter(torch.zeros(cfg.n_layer))
        head_dim = cfg.n_embd // cfg.n_head
        inv_freq = 1.0 / (cfg.rope_base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        freqs = torch.outer(torch.arange(cfg.sequence_len, dtype=torch.float32), inv_freq)
        self.register_buffer("cos", freqs.cos()[None, :, None, :], persistent=False)
        self.register_buffer("sin", freqs.sin()[None, :, None, :], persistent=False)
        self.fused_head = False  # main() turns it on for CPU training when fused_head_agrees

    @torch.no_grad()
    def init_weights(self):
        s = 3**0.5 * self.cfg.n_embd**-0.5  # uniform bound with std 1/sqrt(d)
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        for block in self.blocks:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                nn.init.uniform_(lin.weight, -s, s)
            nn.init.zeros_(block.attn.c_proj.weight)  # each block starts as the identity
            nn.init.zeros_(block.mlp.c_proj.weight)
            if block.attn.ve_gate is not None:
                nn.init.zeros_(block.attn.ve_gate.weight)
        for ve in self.value_embeds.values():
            nn.init.uniform_(ve.weight, -s, s)
        self.resid_lambdas.fill_(1.0)
        self.x0_lambdas.fill_(0.1)

    def forward(self, idx, targets=None, reduction="mean"):
        T = idx.size(1)
        cos, sin = self.cos[:, :T], self.sin[:, :T]
        x = x0 = norm(self.wte(idx))
        for i, block in enumerate(self.blocks):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[str(i)](idx) if str(i) in self.value_embeds else None
            x = block(x, ve, cos, sin)
        if targets is not None and reduction == "mean" and self.fused_head:  # the same loss, faster on CPU
            h = norm(x)
            return SoftcapCrossEntropy.apply(h.reshape(-1, h.size(-1)), self.lm_head.weight, targets.reshape(-1),
                                             self.cfg.softcap)
        logits = self.lm_head(norm(x)).float()
        logits = self.cfg.softcap * torch.tanh(logits / self.cfg.softcap)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)
        return loss.view(targets.shape) if reduction == "none" else loss

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6 x non-embedding params + attention (PaLM appendix B)."""
        embed = self.wte.weight.numel() + sum(v.weight.numel() for v in self.value_embeds.values())
        n, L, T = self.num_params() - embed, self.cfg.n_layer, self.cfg.sequence_len
        return 6 * n + 12 * L * self.cfg.n_embd * T


class SoftcapCrossEntropy(torch.autograd.Function):
    """mean cross-entropy of cap * tanh(h @ w.T / cap), the same maths as GPT.forward's logits path,
    computed HEAD_CHUNK rows at a time with the gradients made in the forward pass (a fused linear
    cross-entropy): the (tokens x vocab) logits never exist whole, so each chunk stays in cache.
    On 2 CPU cores the head is ~2.5x faster; the matmuls, and so the counted FLOPs, are the same."""

    @staticmethod
    def forward(ctx, h, w, targets, cap):
        n = h.size(0)
        loss = torch.zeros((), dtype=torch.float32)
        grad_h, grad_w = torch.empty_like(h), torch.zeros_like(w)
        for s in range(0, n, HEAD_CHUNK):
            hc, tc = h[s:s + HEAD_CHUNK], targets[s:s + HEAD_CHUNK]
            t = torch.tanh_((hc @ w.t()).float().div_(cap))  # (chunk, vocab), in fp32 as forward()'s
            z = t * cap
            lse = torch.logsumexp(z, dim=-1)
            loss += (lse - z.gather(1, tc[:, None]).squeeze(1)).sum()
            g = z.sub_(lse[:, None]).exp_()  # softmax: d loss / d z, less the one-hot below
            g[torch.arange(g.size(0)), tc] -= 1
            g.mul_(t.square_().neg_().add_(1))  # through the tanh: d loss / d logits
            grad_h[s:s + HEAD_CHUNK] = g @ w
            grad_w += g.t() @ hc  # not addmm_: the harness's FLOP counter counts mm, as autograd's backward runs it
        ctx.save_for_backward(grad_h, grad_w)
        return loss / n

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        scale = grad_out / grad_h.size(0)
        return grad_h * scale, grad_w * scale, None, None


def fused_head_agrees(model: GPT, x: torch.Tensor, y: torch.Tensor, autocast) -> bool:
    """Does SoftcapCrossEntropy train what forward()'s logits path trains? Asked of a copy of the
    model with every weight moved off its init (at init the logits are ~1e-2, where a softcap or
    label smoothing changes almost nothing), on two rows, under the loop's autocast, with the same
    random state for both (dropout draws alike): the losses, which parameters get a gradient, and
    every gradient must match. An edit to the loss in forward() (a z-loss, label smoothing, a head
    bias or norm, another softcap) fails it, and training uses forward()'s own loss: slower, never
    different. A loss that changes during training cannot be seen here: set FUSED_HEAD = False."""
    x, y = x[:2], y[:2]
    if bool((y < 0).any()):  # ignored targets: F.cross_entropy's business, not the fused head's
        return False
    probe, results = copy.deepcopy(model), []
    with torch.random.fork_rng():  # the run's own random state is left as it was
        torch.manual_seed(0)
        with torch.no_grad():
            for p in probe.parameters():
                p.add_(0.1 * torch.randn_like(p))
        try:
            for fused in (True, False):
                probe.fused_head = fused
                probe.zero_grad(set_to_none=True)
                torch.manual_seed(1)
                with autocast:
                    loss = probe(x, y)
                loss.backward()
                results.append((loss.item(), [None if p.grad is None else p.grad.clone() for p in probe.parameters()]))
        except (RuntimeError, ValueError, IndexError):
            return False
    (lf, gf), (lp, gp) = results
    if not math.isfinite(lp) or abs(lf - lp) > 1e-5 * abs(lp) + 1e-6:
        return False
    return all((a is None) == (b is None) and (a is None or torch.allclose(a, b, rtol=1e-4, atol=1e-6))
               for a, b in zip(gf, gp, strict=True))  # fmt: skip


# ---- Optimizers: Muon for block matrices, AdamW for everything else ----


def newton_schulz_fp32(grad: torch.Tensor, ns_coefficients, ns_steps: int, eps: float) -> torch.Tensor:
    """torch.optim.Muon's quintic Newton-Schulz iteration, in fp32. torch runs it in bf16, which
    CPUs without native bf16 emulate ~10x slower; on CPU we swap this in (same maths)."""
    a, b, c = ns_coefficients
    tall = grad.size(0) > grad.size(1)
    x = grad.float().T if tall else grad.float()
    x = x / x.norm().clamp(min=eps)
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def build_optimizers(model: GPT) -> list[torch.optim.Optimizer]:
    matrices = [p for n, p in model.blocks.named_parameters() if p.ndim == 2 and "ve_gate" not in n]
    gates = [p for n, p in model.blocks.named_parameters() if "ve_gate" in n]
    scale = (model.cfg.n_embd / 768) ** -0.5  # embedding lrs were tuned at width 768
    adam_groups = [
        dict(params=[model.wte.weight, *[v.weight for v in model.value_embeds.values()]], lr=EMBEDDING_LR * scale),
        dict(params=[model.lm_head.weight], lr=UNEMBEDDING_LR * scale),
        dict(params=[model.resid_lambdas, model.x0_lambdas, *gates], lr=SCALAR_LR),
    ]
    fused = next(model.parameters()).is_cuda
    adam = torch.optim.AdamW(adam_groups, betas=(ADAM_BETA1, ADAM_BETA2), eps=1e-10, weight_decay=0.0, fused=fused)
    muon = torch.optim.Muon(matrices, lr=MATRIX_LR, momentum=MUON_MOMENTUM, weight_decay=WEIGHT_DECAY,
                            adjust_lr_fn="original")
    for opt in (adam, muon):
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    return [adam, muon]


def lr_multiplier(progress: float) -> float:
    if progress < WARMUP_RATIO:
        return progress / WARMUP_RATIO
    if progress < 1.0 - WARMDOWN_RATIO:
        return 1.0
    cooldown = (1.0 - progress) / WARMDOWN_RATIO
    return cooldown + (1.0 - cooldown) * FINAL_LR_FRAC


# ---- Training ----


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def fail(message: str) -> None:
    print(f"FAIL: {message}", flush=True)
    sys.exit(1)


def main() -> None:
    t_start = time.time()
    torch.manual_seed(SEED)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.set_float32_matmul_precision("high")
    else:
        torch.set_num_threads(len(os.sched_getaffinity(0)))  # the cores this run was given (a slot's share)
        torch.optim._muon._zeropower_via_newtonschulz = newton_schulz_fp32
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)

    try:
        tokenizer = Tokenizer.from_directory()
    except DataError as e:  # no cache, or one from another harness version: one line, not a traceback
        fail(str(e))
    model_dim = math.ceil(DEPTH * ASPECT_RATIO / HEAD_DIM) * HEAD_DIM
    cfg = GPTConfig(sequence_len=MAX_SEQ_LEN, vocab_size=tokenizer.get_vocab_size(), n_layer=DEPTH,
                    n_head=model_dim // HEAD_DIM, n_embd=model_dim, mlp_ratio=MLP_RATIO,
                    value_embeds=USE_VALUE_EMBEDS, softcap=LOGIT_SOFTCAP, rope_base=ROPE_BASE)
    model = GPT(cfg).to(device)
    model.init_weights()
    num_params = model.num_params()
    flops_per_token = model.flops_per_token()
    step_model = torch.compile(model) if cuda and COMPILE else model
    optimizers = build_optimizers(model)

    rows = min(DEVICE_BATCH_SIZE, TOTAL_BATCH_TOKENS // MAX_SEQ_LEN)  # a smaller step has fewer rows
    tokens_per_micro = rows * MAX_SEQ_LEN
    if rows < 1 or TOTAL_BATCH_TOKENS % tokens_per_micro:
        fail(f"TOTAL_BATCH_TOKENS={TOTAL_BATCH_TOKENS} is not a multiple of min(DEVICE_BATCH_SIZE, "
             f"TOTAL_BATCH_TOKENS // MAX_SEQ_LEN) * MAX_SEQ_LEN={tokens_per_micro} "
             "(for the gpu preset, start from programs/h100.md's knobs)")
    grad_accum = TOTAL_BATCH_TOKENS // tokens_per_micro
    loader = make_dataloader(tokenizer, rows, MAX_SEQ_LEN, "train", device=device)
    x, y, epoch = next(loader)
    if FUSED_HEAD and not cuda:
        model.fused_head = fused_head_agrees(model, x, y, autocast)
        if not model.fused_head:
            print("fused head: forward()'s loss differs from SoftcapCrossEntropy's; training with forward()'s "
                  "(slower)", flush=True)  # fmt: skip
    budget = Budget.for_model(model, x, y)  # the preset's: FLOPs (cpu) or seconds (gpu), never ours to change
    print(f"device {device.type} | params {num_params / 1e6:.2f}M | dim {model_dim} x {DEPTH} layers | "
          f"grad accum {grad_accum} | {budget.describe()}", flush=True)

    excluded = 10 if cuda else 1  # compile / warm-up steps are not timed
    step, smooth = 0, 0.0
    while True:
        t0 = time.time()
        for _ in range(grad_accum):
            with autocast:
                loss = step_model(x, y)
            (loss / grad_accum).backward()
            x, y, epoch = next(loader)
        progress = budget.progress
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * lr_multiplier(progress)
            opt.step()
        model.zero_grad(set_to_none=True)
        loss_f = loss.item()  # also synchronises the device before timing
        if not math.isfinite(loss_f) or loss_f > 100:
            fail(f"loss is {loss_f} at step {step}")
        dt = time.time() - t0
        budget.step(TOTAL_BATCH_TOKENS, dt, timed=step >= excluded)
        step += 1
        smooth = 0.9 * smooth + 0.1 * loss_f
        if step % 10 == 0:
            print(f"step {step:05d} | loss {smooth / (1 - 0.9**step):.4f} | lrm {lr_multiplier(progress):.2f} | "
                  f"{TOTAL_BATCH_TOKENS / dt:,.0f} tok/s | epoch {epoch} | {budget.left()}", flush=True)
        if budget.done:
            break

    model.eval()
    with autocast:
        val_bpb = evaluate_bpb(model, tokenizer, EVAL_BATCH_SIZE)  # NaN under nightlab: scored separately
    if not math.isfinite(val_bpb) and not EVAL_SEPARATE:
        fail(f"val_bpb is {val_bpb}")
    training_time, timed_steps = budget.seconds, budget.timed_steps
    mfu = 0.0
    if cuda and training_time > 0:
        mfu = 100 * flops_per_token * TOTAL_BATCH_TOKENS * timed_steps / training_time / 989.5e12  # H100 bf16 dense
    print("---")
    print(f"val_bpb:          {val_bpb:.6f}")
    print(f"training_seconds: {training_time:.1f}")
    print(f"total_seconds:    {time.time() - t_start:.1f}")
    print(f"peak_mem_mb:      {peak_memory_mb(device):.1f}")
    print(f"mfu_percent:      {mfu:.2f}")
    print(f"total_tokens_M:   {step * TOTAL_BATCH_TOKENS / 1e6:.1f}")
    print(f"num_steps:        {step}")
    print(f"num_params_M:     {num_params / 1e6:.1f}")
    print(f"depth:            {DEPTH}")


if __name__ == "__main__":
    main()
