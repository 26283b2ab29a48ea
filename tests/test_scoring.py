"""The harness scores, and checks what it scores (trainer/scoring.py), against a hostile model.

Each attack class is tried in several forms, as a proposer writing train.py would: models that
read the future, that keep state or train while being scored, that hand back a Tensor subclass,
and code that patches what the harness scores with. A plain causal model passes, as does one
with its own causal mask.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainer import prepare
from trainer.scoring import ScoringError


@pytest.fixture
def tokenizer(prepared_cpu, monkeypatch):
    monkeypatch.setenv("NIGHTLAB_CACHE", str(prepared_cpu))
    return prepare.Tokenizer.from_directory()


class Unigram(torch.nn.Module):
    """Causal by construction: the logits at t depend on token t only."""

    def __init__(self, vocab: int):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(vocab, 16)
        self.head = torch.nn.Linear(16, vocab)

    def forward(self, x):
        return self.head(self.emb(x))


class MaskedAttention(Unigram):
    """Legitimate: attention with its own explicit lower-triangular mask."""

    def forward(self, x):
        h = self.emb(x)
        T = x.size(1)
        mask = torch.ones(T, T, dtype=torch.bool).tril()
        return self.head(F.scaled_dot_product_attention(h, h, h, attn_mask=mask))


def score(model, tokenizer) -> float:
    return prepare.evaluate_bpb(model.eval(), tokenizer, 32)


def test_causal_models_pass_and_score_the_same_every_time(tokenizer):
    vocab = tokenizer.get_vocab_size()
    a, b = score(Unigram(vocab), tokenizer), score(Unigram(vocab), tokenizer)
    assert a == b and 1.0 < a < 20.0
    assert 1.0 < score(MaskedAttention(vocab), tokenizer) < 20.0


class PeekNext(Unigram):
    def forward(self, x):  # the next token, through a roll
        return self.head(self.emb(x) + self.emb(torch.roll(x, -1, dims=1)))


class BidirectionalInEval(Unigram):
    def forward(self, x):  # causal while training, full attention when scored
        h = self.emb(x)
        return self.head(F.scaled_dot_product_attention(h, h, h, is_causal=self.training))


class ReverseCumsum(Unigram):
    def forward(self, x):  # a summary of everything to the right
        h = self.emb(x)
        return self.head(h + h.flip(1).cumsum(1).flip(1) / x.size(1))


@pytest.mark.parametrize("cheat", [PeekNext, BidirectionalInEval, ReverseCumsum])
def test_a_model_that_reads_the_future_is_refused(tokenizer, cheat):
    with pytest.raises(ScoringError, match="causality check") as err:
        score(cheat(tokenizer.get_vocab_size()), tokenizer)
    assert err.value.check == "causality"


class TrainsWhileScored(Unigram):
    def forward(self, x):  # a gradient step on the bigram objective inside every call
        with torch.enable_grad():
            loss = F.cross_entropy(self.head(self.emb(x[:, :-1])).reshape(-1, self.head.out_features),
                                   x[:, 1:].reshape(-1))
            loss.backward()
        with torch.no_grad():
            for p in self.parameters():
                p -= 0.5 * p.grad
                p.grad = None
        return self.head(self.emb(x))


class Counter(Unigram):
    def __init__(self, vocab: int):
        super().__init__(vocab)
        self.calls = 0

    def forward(self, x):  # state outside the parameters: a python attribute
        self.calls += 1
        return self.head(self.emb(x)) * (1.0 + 0.5 * (self.calls > 5))  # after the probes


class SharpensWithABuffer(Unigram):
    def __init__(self, vocab: int):
        super().__init__(vocab)
        self.register_buffer("seen", torch.zeros(vocab))

    def forward(self, x):  # a unigram prior learned from the scored text itself
        self.seen += torch.bincount(x.reshape(-1), minlength=self.seen.numel())
        return self.head(self.emb(x)) + torch.log1p(self.seen)


@pytest.mark.parametrize("cheat,check", [(TrainsWhileScored, "causality"), (Counter, "(statelessness|causality)"),
                                         (SharpensWithABuffer, "causality")])
def test_a_model_that_learns_or_keeps_state_while_scored_is_refused(tokenizer, cheat, check):
    """Whichever check first sees the model change catches it: one that changes from its first
    call on fails the causality probe (its second call), one that waits fails the re-score."""
    with pytest.raises(ScoringError, match=f"{check} check"):
        score(cheat(tokenizer.get_vocab_size()), tokenizer)


class Shrinking(torch.Tensor):
    """A Tensor subclass that scales down whatever loss is computed from it."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        out = super().__torch_function__(func, types, args, kwargs or {})
        return out * 0.5 if func is F.cross_entropy else out


class SubclassLogits(Unigram):
    def forward(self, x):
        return super().forward(x).as_subclass(Shrinking)


class TupleOut(Unigram):
    def forward(self, x):
        return super().forward(x), None


class WrongVocab(Unigram):
    def forward(self, x):
        return super().forward(x)[..., :100]


class PastFloat32(Unigram):
    """float64 logits beyond float32's range once: finite as returned, inf (then NaN after
    log_softmax) where the harness compares in float32, which must not read as "unchanged"."""

    def forward(self, x):
        out = super().forward(x).double()
        out[..., 0] = 1e39
        return out


@pytest.mark.parametrize("cheat", [SubclassLogits, TupleOut, WrongVocab, PastFloat32])
def test_anything_but_a_plain_tensor_of_logits_is_refused(tokenizer, cheat):
    with pytest.raises(ScoringError, match="output check"):
        score(cheat(tokenizer.get_vocab_size()), tokenizer)


@pytest.mark.parametrize("owner,name", [(F, "cross_entropy"), (torch._C._nn, "cross_entropy_loss"),
                                        (torch.Tensor, "sum"), (torch, "allclose")])
def test_patching_what_the_harness_scores_with_is_refused(tokenizer, monkeypatch, owner, name):
    original = getattr(owner, name)

    def patched(*args, **kwargs):  # the real thing, scaled down where it can be
        out = original(*args, **kwargs)
        return out * 0.5 if isinstance(out, torch.Tensor) and out.is_floating_point() else out

    monkeypatch.setattr(owner, name, patched)
    with pytest.raises(ScoringError, match=f"harness check: .*{name} was replaced"):
        score(Unigram(tokenizer.get_vocab_size()), tokenizer)


class ChunkedBidirectional(Unigram):
    """Full attention inside aligned chunks of 128: a single probe at T // 2 cannot see it."""

    def forward(self, x):
        h = self.emb(x)
        chunk = torch.arange(x.size(1)) // 128
        return self.head(F.scaled_dot_product_attention(h, h, h, attn_mask=chunk[:, None] == chunk[None, :]))


def test_attention_that_reads_ahead_inside_aligned_chunks_is_refused(tokenizer):
    for _ in range(3):  # the probe positions are drawn afresh each time: never all on a boundary
        with pytest.raises(ScoringError, match="causality check"):
            score(ChunkedBidirectional(tokenizer.get_vocab_size()), tokenizer)


def test_a_torch_function_mode_left_active_is_refused(tokenizer):
    from torch.overrides import TorchFunctionMode

    class Shrink(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            return out * 0.97 if func is F.cross_entropy else out

    mode = Shrink()
    mode.__enter__()  # as train.py's module code could, and never leave
    try:
        with pytest.raises(ScoringError, match="harness check: a torch function or dispatch mode is active"):
            score(Unigram(tokenizer.get_vocab_size()), tokenizer)
    finally:
        mode.__exit__(None, None, None)


@pytest.mark.parametrize("how", ["setattr", "dunder", "globals"])
def test_replacing_the_harness_own_functions_is_refused(tokenizer, how):
    """The harness's modules' globals are compared value by value, however they were replaced."""
    import trainer.prepare as hp
    import trainer.scoring as hs

    target, name = (hp, "score") if how != "globals" else (hs, "bits_per_byte")
    real = getattr(target, name)
    def fake(*args, **kwargs):  # the real thing: only its identity gives it away
        return real(*args, **kwargs)

    try:
        if how == "setattr":
            setattr(target, name, fake)
        elif how == "dunder":
            [target][0].__setattr__(name, fake)
        else:
            vars(target)[name] = fake
        with pytest.raises(ScoringError, match=f"harness check: trainer\\.\\w+\\.{name} was replaced"):
            score(Unigram(tokenizer.get_vocab_size()), tokenizer)
    finally:
        setattr(target, name, real)


# ---- a model in another process: the checks ask a fresh copy (trainer/remote.py) --------------


class Replayer(Unigram):
    """Puts its mass on the next input token (reads the future), and remembers every row it
    answered: a row sharing at least `prefix` leading tokens with one it saw (a causality probe,
    a statelessness re-check) gets the remembered logits up to where the two differ, so a check
    that asks the same process always agrees with the cheat."""

    def __init__(self, vocab: int, prefix: int):
        super().__init__(vocab)
        self.prefix, self.seen = prefix, []

    def forward(self, x):
        nxt = torch.roll(x, -1, dims=1).unsqueeze(-1)
        out = super().forward(x).scatter_add(2, nxt, torch.full(nxt.shape, 20.0))
        for i, row in enumerate(x):
            best, best_out = 0, None  # the remembered row sharing the longest prefix with this one
            for old_row, old_out in self.seen:
                diff = (old_row != row).nonzero()
                same = int(diff[0]) if len(diff) else row.numel()
                if same > best:
                    best, best_out = same, old_out
            if best >= self.prefix:
                out[i, :best] = best_out[:best]
            self.seen.append((row.clone(), out[i].clone()))
        return out


def _val_score(model, verifier=None) -> float:
    return prepare.score_split(model.eval(), "val", 32, verifier)


def test_a_model_that_replays_its_answers_fools_checks_that_ask_it(tokenizer):
    """Why the scorer asks a fresh copy: the cheating process's memory answers every check put
    to it (a replay from one shared token on: every row starts with BOS)."""
    vocab = tokenizer.get_vocab_size()
    assert _val_score(Replayer(vocab, 1)) < 0.5 * _val_score(Unigram(vocab))  # far "better": it reads the future


@pytest.mark.parametrize("prefix", [1, 8, 64])
def test_a_model_that_replays_its_answers_to_checks_is_caught_by_a_fresh_copy(tokenizer, prefix):
    vocab = tokenizer.get_vocab_size()
    with pytest.raises(ScoringError, match="causality check"):
        _val_score(Replayer(vocab, prefix), verifier=lambda: Replayer(vocab, prefix).eval())


def test_an_honest_model_and_its_fresh_copy_agree(tokenizer):
    vocab = tokenizer.get_vocab_size()
    assert _val_score(MaskedAttention(vocab), verifier=lambda: MaskedAttention(vocab).eval()) == _val_score(MaskedAttention(vocab))


class LearnsTheScoredText(Unigram):
    """Dynamic evaluation: a bias toward every token it has been shown, kept across calls."""

    def __init__(self, vocab: int):
        super().__init__(vocab)
        self.counts = torch.zeros(vocab)

    def forward(self, x):
        out = super().forward(x) + torch.log1p(self.counts)
        self.counts += torch.bincount(x.flatten(), minlength=self.counts.numel()).float()
        return out


def test_a_model_that_learns_from_what_it_scores_is_caught_by_a_fresh_copy(tokenizer):
    vocab = tokenizer.get_vocab_size()
    with pytest.raises(ScoringError, match="(statelessness|causality) check"):
        _val_score(LearnsTheScoredText(vocab), verifier=lambda: LearnsTheScoredText(vocab).eval())


# ---- what a model server says reaches no prompt (trainer/remote.py) ---------------------------


class Exfiltrates(Unigram):
    """Raises with the text it is being scored on in its message, in the forms an attacker would
    pick: the message, an exception class named after the text, a wrong shape carrying bytes."""

    def __init__(self, vocab: int, tokenizer, how: str):
        super().__init__(vocab)
        self.tokenizer, self.how = tokenizer, how

    def forward(self, x):
        text = "".join(self.tokenizer.decode(row.tolist()) for row in x[:4])
        if self.how == "message":
            raise ValueError(repr(text))
        if self.how == "class_name":
            raise type("Leak_" + "".join(c for c in text[:200] if c.isalnum()), (Exception,), {})()
        return torch.zeros(x.size(0), x.size(1), 1 + sum(text[:3].encode()))  # the shape carries bytes


@pytest.mark.parametrize("how", ["message", "class_name", "shape"])
def test_a_model_servers_errors_carry_none_of_the_scored_text(tokenizer, how, capfd):
    import socket
    import threading

    from trainer import remote

    vocab = tokenizer.get_vocab_size()
    mine, theirs = socket.socketpair()
    server = threading.Thread(target=remote.serve, daemon=True, args=(
        theirs, Exfiltrates(vocab, tokenizer, how).eval(), torch.device("cpu"), torch.autocast("cpu", enabled=False)))
    server.start()
    model = remote.RemoteModel(mine, "model 1", vocab, strict=True)
    x = next(iter(prepare.make_dataloader(tokenizer, 4, prepare.MAX_SEQ_LEN, "val")))[0]
    scored = tokenizer.decode(x[0].tolist())
    with pytest.raises(ScoringError) as caught:
        model(x)
    model.close()
    server.join(10)
    message = str(caught.value)
    assert "model 1" in message and len(message) < 200, message
    words = {w for w in scored.split() if len(w) >= 6 and w.isidentifier()}
    assert words and not any(w in message for w in words), message
    if how != "shape":  # the traceback is the server's: in its own log, for people
        assert "Traceback" in capfd.readouterr().err
