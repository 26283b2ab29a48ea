"""
==============================================================================================
 nightlab FIXED HARNESS: the metric and the checks around it. AGENTS NEVER EDIT THIS FILE.
==============================================================================================

Bits per byte = summed next-token cross-entropy (nats) / (ln 2 * UTF-8 bytes of the targets),
special tokens excluded. The model is given tokens only: `model(x)` returns logits and the
harness computes the cross-entropy, so targets never reach model code. Before a score counts:

- the logits are a plain tensor of the right shape (a Tensor subclass could rewrite the loss);
- causality: changing every token of a row from position t on leaves the row's logits before t
  unchanged, with t drawn at random for every row of a probed batch (a fixed t would let
  attention that reads ahead within aligned chunks through);
- statelessness: a batch scored again gives the same logits, and no parameter changed while
  scoring. With a model in another process (trainer/remote.py) these two checks ask a fresh copy
  of it (the verifier), so a model cannot answer them from what it remembers;
- the functions the harness scores with are the ones it imported (not patched since: the torch
  namespaces it uses and its own modules' globals, compared value by value), and no torch
  function or dispatch mode is active.

A failed check raises ScoringError naming it. In a process that runs train.py's code these checks
are hints (its code could undo anything here); the boundary is a scorer that never runs it,
asking model servers in sandboxes of their own (trainer/heldout.py, trainer/serve.py).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from trainer.corpus import DataError

PROBES = 3  # causality probes, at positions drawn afresh for every evaluation

# What the harness scores with, as imported: a later reassignment is caught before a score counts.
# Whole namespaces where nothing legitimate reassigns anything (the harness's own modules are added
# by `pin`), single attributes of the classes torch itself may extend.
_PINNED = [(torch, "allclose"), (torch, "equal"), (torch.Tensor, "float"), (torch.Tensor, "reshape"),
           (torch.Tensor, "sum"), (torch.Tensor, "__mul__"), (torch.Tensor, "__getitem__"),
           (torch.Tensor, "numel"), (torch.Tensor, "clone"), (torch.nn.Module, "__call__")]  # fmt: skip
_ORIGINALS = [getattr(owner, name) for owner, name in _PINNED]
_NAMESPACES: list[tuple[str, object, dict[str, object]]] = []
_random = random.SystemRandom()  # probe positions the model cannot predict from a seed


def pin(module: object) -> None:
    """Record every global of `module` as it is now; `score` refuses to count if any was replaced."""
    _NAMESPACES.append((getattr(module, "__name__", str(module)), module, dict(vars(module))))


pin(F)
pin(torch._C._nn)


class ScoringError(DataError):
    """The model failed one of the harness's checks: the score would not mean what it says."""

    def __init__(self, check: str, message: str):
        self.check = check
        super().__init__("model", f"{check} check: {message}")


@torch.no_grad()
def bits_per_byte(losses: torch.Tensor, targets: torch.Tensor, token_bytes: torch.Tensor) -> tuple[float, int]:
    """Sum of per-token cross-entropy (nats) over non-special targets and their UTF-8 byte count."""
    nbytes = token_bytes[targets.reshape(-1)]
    mask = nbytes > 0
    return float((losses.reshape(-1).float() * mask).sum()), int(nbytes.sum())


def _unpatched() -> None:
    for (owner, name), original in zip(_PINNED, _ORIGINALS, strict=True):
        if getattr(owner, name) is not original:
            raise ScoringError("harness", f"{getattr(owner, '__name__', owner)}.{name} was replaced after the "
                               "harness imported it")  # fmt: skip
    for label, module, snapshot in _NAMESPACES:
        now = vars(module)
        for name, value in snapshot.items():
            if now.get(name) is not value:
                raise ScoringError("harness", f"{label}.{name} was replaced after the harness imported it")
    # a TorchFunctionMode / TorchDispatchMode left active would see (and could rewrite) every op
    if torch._C._is_torch_function_mode_enabled() or torch._C._len_torch_dispatch_stack():
        raise ScoringError("harness", "a torch function or dispatch mode is active while scoring")


def _logits(model, x: torch.Tensor, vocab: int) -> torch.Tensor:
    logits = model(x)
    if type(logits) is not torch.Tensor or logits.shape != (*x.shape, vocab) or not logits.is_floating_point():
        raise ScoringError("output", f"model(x) must return a plain tensor of logits of shape {(*x.shape, vocab)}, "
                           f"got {type(logits).__name__} {tuple(getattr(logits, 'shape', ()))}")  # fmt: skip
    return logits


def _close(a: torch.Tensor, b: torch.Tensor, low: bool = False) -> bool:
    """Equal up to float noise, far below what a leak or an update moves: 1e-4 in fp32, 1e-2 for
    logits computed in bf16/fp16 (autocast on GPU; the same kernels usually agree to the bit;
    `low`: a model server computed them so)."""
    tol = 1e-4 if a.dtype in (torch.float32, torch.float64) and not low else 1e-2
    a, b = a.float(), b.float()
    return bool(torch.allclose(a, b, rtol=tol, atol=tol * (1.0 + float(a.abs().max()))))


def _fingerprint(model) -> torch.Tensor:
    """Sum, sum of squares and a position-weighted sum of every parameter: an update moves one."""
    parts = [torch.zeros(3, dtype=torch.double)]
    for p in model.parameters():
        v = p.detach().double().flatten()
        ramp = torch.linspace(1.0, 2.0, v.numel(), dtype=torch.double, device=v.device)
        parts.append(torch.stack([v.sum(), (v * v).sum(), (v * ramp).sum()]).cpu())
    return torch.stack(parts)


def _probe(x: torch.Tensor, vocab: int) -> tuple[torch.Tensor, list[int]]:
    """`x` with every token from a random position k_i on changed in each row i: spliced from the
    next row where there is one (real text: harder to tell from a real row), shifted otherwise."""
    later, cuts = x.clone(), []
    for i in range(x.size(0)):
        k = _random.randrange(1, x.size(1))
        if x.size(0) > 1:
            later[i, k:] = x[(i + 1) % x.size(0), k:]
        same = later[i, k:] == x[i, k:]
        later[i, k:][same] = (x[i, k:][same] + 1 + _random.randrange(vocab - 1)) % vocab  # every one differs
        cuts.append(k)
    return later, cuts


def _low(*models) -> bool:
    return any(getattr(m, "low_precision", False) for m in models)


def _causal(model, x: torch.Tensor, logits: torch.Tensor, vocab: int, low: bool) -> None:
    """Changing each row's tokens from a random k_i on must leave its logits before k_i as they were."""
    later, cuts = _probe(x, vocab)
    again = _logits(model, later, vocab)
    for i, k in enumerate(cuts):
        if not _close(again[i, :k], logits[i, :k], low or _low(model)):
            raise ScoringError("causality", f"the logits before position {k} changed when only tokens from it "
                               "on changed: the model reads the future (or is not deterministic)")  # fmt: skip


@torch.no_grad()
def score(model, batches: Iterator[tuple[torch.Tensor, torch.Tensor, int]], rows: int, token_bytes: torch.Tensor,
          verifier=None) -> float:  # fmt: skip
    """Bits per byte over exactly `rows` rows of `batches` whatever their batch size (the last batch
    is cut), so an eval batch size changes speed only, never which tokens are scored.

    `model` is a torch module in this process, or a model in another (trainer/remote.py). With a
    `verifier`, a fresh copy of the same model in a process of its own that saw nothing else,
    the checks ask it instead: PROBES batches drawn at random are probed for causality, and
    another is scored again, against what `model` answered. A model that keeps state between
    calls (to replay its answers when it recognises a probe, or to learn the scored text) cannot
    share it with the verifier."""
    _unpatched()
    vocab = token_bytes.numel()  # the cache's tokenizer
    params = _fingerprint(model) if isinstance(model, torch.nn.Module) else None
    first = next(batches)
    x0 = first[0]
    n_batches = math.ceil(max(1, rows) / x0.size(0))
    probed = set(_random.sample(range(n_batches), min(PROBES, n_batches))) if verifier is not None else {0}
    replayed = _random.randrange(n_batches // 2, n_batches) if verifier is not None else 0
    checker = verifier if verifier is not None else model
    total_nats, total_bytes, rows_left, kept, index = 0.0, 0, max(1, rows), None, 0
    pending = [first]
    while rows_left > 0:
        x, y, _ = pending.pop() if pending else next(batches)
        x, y = x[:rows_left].clone(), y[:rows_left].clone()  # x shares no storage with the targets
        logits = _logits(model, x, vocab)
        if index in probed:
            _causal(checker, x, logits, vocab, _low(model))
        if index == replayed:
            kept = (x, logits)
        with torch._C.DisableTorchFunctionSubclass():
            losses = F.cross_entropy(logits.float().reshape(-1, vocab), y.reshape(-1), reduction="none")
        nats, nbytes = bits_per_byte(losses, y, token_bytes)
        _unpatched()  # after every batch: a patch the model makes and undoes within the loop
        total_nats += nats
        total_bytes += nbytes
        rows_left -= len(y)
        index += 1
    assert kept is not None
    if not _close(_logits(checker, kept[0], vocab), kept[1], _low(model, checker)):
        what = "a fresh copy of the model" if verifier is not None else "the model, at the end"
        raise ScoringError("statelessness", f"a batch scored again by {what} gave other logits (state kept "
                           "between calls, or a model that is not deterministic)")  # fmt: skip
    if params is not None and not torch.equal(_fingerprint(model), params):
        raise ScoringError("statelessness", "the model's parameters changed while it was being scored")
    _unpatched()
    return total_nats / (math.log(2) * total_bytes)
