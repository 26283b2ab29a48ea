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
        raise ScoringError("output", f"model(x) must return a plain tensor of logits of shape {(*x.shape, vocab)}")
    if not bool(torch.isfinite(logits.float()).all()):  # NaN, or a float64 past float32: poisons a sum or comparison
        raise ScoringError("output", "model(x) returned logits that are not finite (NaN or inf)")
    return logits


LOGPROB_FLOOR = -50.0  # log-probabilities below this (p < 2e-22) are compared as equal: they move no loss


def _tolerance(low: bool) -> float:
    return 1e-2 if low else 1e-3


def _gap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per position (every dim but the last), the largest difference between the two predictions'
    log-probabilities, floored at LOGPROB_FLOOR."""
    la = torch.log_softmax(a.float(), dim=-1).clamp_(min=LOGPROB_FLOOR)
    lb = torch.log_softmax(b.float(), dim=-1).clamp_(min=LOGPROB_FLOOR)
    return la.sub_(lb).abs_().amax(dim=-1)


def _close(a: torch.Tensor, b: torch.Tensor, low: bool = False) -> bool:
    """The same predictions up to float noise: log-probabilities (floored) within 1e-3 nats, or
    1e-2 where the harness itself computes in bf16 (`low`: autocast on GPU). Compared after
    log_softmax with a fixed tolerance, so nothing the model returns (a huge logit on a token never
    scored, a dtype of its choosing) can widen it."""
    return bool(_gap(a, b).max() <= _tolerance(low))


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


def _low() -> bool:
    """Does the harness compute logits in bf16? On GPU it does (autocast, as train.py evaluates);
    the scorer decides, never the model."""
    return torch.cuda.is_available()


def _causal(model, x: torch.Tensor, logits: torch.Tensor, vocab: int) -> None:
    """Changing each row's tokens from a random k_i on must leave its logits before k_i as they were."""
    later, cuts = _probe(x, vocab)
    again = _logits(model, later, vocab)
    dev = again.device
    before = torch.arange(x.size(1), device=dev).unsqueeze(0) < torch.tensor(cuts, device=dev).unsqueeze(1)
    changed = ~(_gap(again, logits) <= _tolerance(_low())) & before  # NaN is a change; one pass, as _close per row
    if bool(changed.any()):
        k = cuts[int(changed.any(dim=1).nonzero()[0])]
        raise ScoringError("causality", f"the logits before position {k} changed when only tokens from it "
                           "on changed: the model reads the future (or is not deterministic)")  # fmt: skip


class Checks:
    """What `measure` kept for the checks: the probed batches and the one to score again, with the
    logits the scored model gave. `run(checker)` asks `checker` (the model itself, or a fresh copy
    of it started only now: trainer/remote.py) and raises ScoringError on a difference."""

    def __init__(self, vocab: int):
        self.vocab, self.probes, self.replay = vocab, [], None

    @torch.no_grad()
    def run(self, checker, fresh: bool) -> None:
        for x, logits in self.probes:
            _causal(checker, x, logits, self.vocab)
        x, logits = self.replay
        if not _close(_logits(checker, x, self.vocab), logits, _low()):
            what = "a fresh copy of the model" if fresh else "the model, at the end"
            raise ScoringError("statelessness", f"a batch scored again by {what} gave other logits (state kept "
                               "between calls, or a model that is not deterministic)")  # fmt: skip


@torch.no_grad()
def measure(model, batches: Iterator[tuple[torch.Tensor, torch.Tensor, int]], rows: int,
            token_bytes: torch.Tensor) -> tuple[float, Checks]:  # fmt: skip
    """Bits per byte over exactly `rows` rows of `batches` whatever their batch size (the last batch
    is cut), so an eval batch size changes speed only, never which tokens are scored; and the
    checks still to run (`Checks`): PROBES batches drawn at random for causality, one for
    statelessness, each with the logits `model` gave."""
    _unpatched()
    vocab = token_bytes.numel()  # the cache's tokenizer
    first = next(batches)
    n_batches = math.ceil(max(1, rows) / first[0].size(0))
    # which batches are probed and which is scored again: drawn afresh, never the same pattern
    probed = set(_random.sample(range(n_batches), min(PROBES, n_batches)))
    replayed = _random.randrange(n_batches)
    checks = Checks(vocab)
    total_nats, total_bytes, rows_left, index, pending = 0.0, 0, max(1, rows), 0, [first]
    while rows_left > 0:
        x, y, _ = pending.pop() if pending else next(batches)
        x, y = x[:rows_left].clone(), y[:rows_left].clone()  # x shares no storage with the targets
        logits = _logits(model, x, vocab)
        if index in probed:
            checks.probes.append((x, logits))
        if index == replayed:
            checks.replay = (x, logits)
        with torch._C.DisableTorchFunctionSubclass():
            losses = F.cross_entropy(logits.float().reshape(-1, vocab), y.reshape(-1), reduction="none")
        nats, nbytes = bits_per_byte(losses, y, token_bytes)
        _unpatched()  # after every batch: a patch the model makes and undoes within the loop
        total_nats += nats
        total_bytes += nbytes
        rows_left -= len(y)
        index += 1
    return total_nats / (math.log(2) * total_bytes), checks


@torch.no_grad()
def score(model, batches: Iterator[tuple[torch.Tensor, torch.Tensor, int]], rows: int, token_bytes: torch.Tensor,
          verifier=None) -> float:  # fmt: skip
    """`measure`, then its checks. `model` is a torch module in this process, or a model in another
    (trainer/remote.py). With a `verifier` (a callable that returns a fresh copy of the model, in
    a process of its own started only after `model` is done) the checks ask it instead: a model
    that keeps state (to replay its answers when it recognises a probe, or to learn the scored
    text) cannot share it with a copy that starts after it is gone."""
    params = _fingerprint(model) if isinstance(model, torch.nn.Module) else None
    bpb, checks = measure(model, batches, rows, token_bytes)
    checks.run(verifier() if verifier is not None else model, fresh=verifier is not None)
    if params is not None and not torch.equal(_fingerprint(model), params):
        raise ScoringError("statelessness", "the model's parameters changed while it was being scored")
    _unpatched()
    return bpb
