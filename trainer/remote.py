"""
==============================================================================================
 nightlab FIXED HARNESS: the wire between the scorer and a model server. AGENTS NEVER EDIT THIS.
==============================================================================================

The scorer (trainer/heldout.py) never runs train.py's code. A model server (trainer/serve.py)
runs it, in a sandbox of its own that reads no data, and answers one question over a socket the
harness created: the logits for these tokens. The scorer computes the metric from them and
runs the checks. Whatever the model's code does, it cannot reach the scorer's output, its
process or the tokens it was not sent.

Messages (little-endian): a request is b"NLX1", rows, columns (uint32) and rows*columns int32
tokens; a reply is b"NLL1", rows, columns, vocabulary, a low-precision flag (uint32: for the
log; the scorer decides the tolerance, never the model) and
rows*columns*vocabulary float32 logits, or b"NLE1" and a zero length (the model raised: the
traceback goes to the server's log, never to the scorer, whose messages reach prompts); b"NLQ1" ends.
"""

from __future__ import annotations

import socket
import struct
import traceback

import numpy as np
import torch

from trainer.corpus import DataError
from trainer.scoring import ScoringError

REQUEST, REPLY, ERROR, QUIT = b"NLX1", b"NLL1", b"NLE1", b"NLQ1"
MAX_REPLY_BYTES = 8 * 2**30  # one batch of logits; more is a broken or hostile server
_HEADER = struct.Struct("<4sII")
_REPLY = struct.Struct("<4sIIII")


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise EOFError(f"the peer closed the connection after {got} of {n} bytes")
        got += k
    return bytes(buf)


class RemoteModel:
    """A model in another process: `model(x)` sends the tokens and returns the logits it sent
    back (float32, on the scorer's CPU), of exactly `vocab` columns. A `strict` server that
    stops answering fails a check (a keep's test, where a model that cannot be scored cannot be
    kept); otherwise it is a crash (the run has no metric)."""

    def __init__(self, sock: socket.socket, name: str, vocab: int, strict: bool = False):
        self.sock, self.name, self.vocab, self.strict = sock, name, vocab, strict
        self.calls = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        try:
            return self._ask(x)
        except (EOFError, OSError) as e:
            if self.strict:  # a model that dies when it is checked (a keep's test) fails the check
                raise ScoringError("output", f"{self.name} stopped answering ({e}); see the model server's "
                                   "log") from e  # fmt: skip
            raise DataError(self.name, f"the model server stopped answering ({e}); see its log") from e

    def _ask(self, x: torch.Tensor) -> torch.Tensor:
        rows, cols = x.shape
        self.sock.sendall(_HEADER.pack(REQUEST, rows, cols) + x.to(torch.int32).cpu().numpy().tobytes())
        head = recv_exact(self.sock, 4)
        # Nothing the model chose reaches a message: the server saw the tokens being scored, and
        # these messages end up in the proposer's feedback (an exception carrying val text would
        # hand it the text it is scored on). Its own account of a failure is in its log.
        if head == ERROR:
            raise ScoringError("output", f"the model raised an error on {self.name} (its traceback is in "
                               "the model server's log)")  # fmt: skip
        if head != REPLY:
            raise ScoringError("output", f"the model server {self.name} sent something other than logits")
        _, r, c, vocab, _low = _REPLY.unpack(head + recv_exact(self.sock, _REPLY.size - 4))
        if (r, c, vocab) != (rows, cols, self.vocab) or r * c * vocab * 4 > MAX_REPLY_BYTES:  # before allocating
            raise ScoringError("output", f"the model server {self.name} answered logits of the wrong shape "
                               f"(asked for {rows}x{cols}x{self.vocab})")  # fmt: skip
        data = recv_exact(self.sock, r * c * vocab * 4)
        self.calls += 1
        return torch.from_numpy(np.frombuffer(data, dtype=np.float32).reshape(r, c, vocab).copy())

    def close(self) -> None:
        try:
            self.sock.sendall(_HEADER.pack(QUIT, 0, 0))
        except OSError:
            pass
        self.sock.close()


def serve(sock: socket.socket, model, device: torch.device, autocast) -> None:
    """The server's loop: answer requests with `model`'s logits until QUIT or EOF."""
    while True:
        try:
            magic, rows, cols = _HEADER.unpack(recv_exact(sock, _HEADER.size))
        except EOFError:
            return
        if magic != REQUEST:
            return
        x = torch.from_numpy(np.frombuffer(recv_exact(sock, rows * cols * 4), dtype=np.int32).astype(np.int64))
        x = x.reshape(rows, cols).to(device)
        try:
            with torch.no_grad(), autocast:
                logits = model(x)
            low = int(logits.dtype in (torch.bfloat16, torch.float16))
            data = logits.detach().float().cpu().contiguous().numpy().tobytes()
            vocab = logits.shape[-1]
        except Exception:  # the model's own failure: its traceback to this server's log, only the fact to the scorer
            traceback.print_exc()
            sock.sendall(ERROR + struct.pack("<I", 0))
            continue
        try:
            sock.sendall(_REPLY.pack(REPLY, rows, cols, vocab, low) + data)
        except (BrokenPipeError, ConnectionResetError):  # the scorer refused the answer and hung up
            return
