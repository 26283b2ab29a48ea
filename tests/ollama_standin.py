"""A loopback stand-in for an Ollama server (no real one can run here).

Speaks the parts of Ollama's HTTP API nightlab uses: GET /api/tags, POST /api/chat
(non-streaming, replies from a queue), POST /api/pull (streamed JSON lines), POST /api/show.
Records every request as (method, path, json body).
"""

from __future__ import annotations

import json
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


class OllamaStandIn:
    def __init__(self, models: list[str] | None = None):
        self.models = list(models or [])
        self.replies: deque[str] = deque()
        self.requests: list[tuple[str, str, Any]] = []
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _body(self) -> Any:
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                return json.loads(raw) if raw else None

            def _send(self, status: int, payload: Any, lines: bool = False) -> None:
                data = ("\n".join(json.dumps(p) for p in payload) + "\n" if lines
                        else json.dumps(payload)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-ndjson" if lines else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                standin.requests.append(("GET", self.path, None))
                if self.path == "/api/tags":
                    self._send(200, {"models": [standin.tag(m) for m in standin.models]})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:
                body = self._body()
                standin.requests.append(("POST", self.path, body))
                if self.path == "/api/chat":
                    if body.get("model") not in standin.models:
                        return self._send(404, {"error": f"model '{body.get('model')}' not found"})
                    if not standin.replies:
                        return self._send(500, {"error": "stand-in reply queue empty"})
                    self._send(200, {
                        "model": body["model"], "created_at": "2026-11-22T00:00:00Z",
                        "message": {"role": "assistant", "content": standin.replies.popleft()},
                        "done": True, "done_reason": "stop",
                        "prompt_eval_count": 12, "eval_count": 7,
                    })
                elif self.path == "/api/pull":
                    name = body.get("model") or body.get("name")
                    standin.models.append(name)
                    self._send(200, [{"status": "pulling manifest"}, {"status": "verifying sha256 digest"},
                                     {"status": "success"}], lines=True)
                elif self.path == "/api/show":
                    self._send(200, {"modelfile": "", "parameters": "", "template": "",
                                     "details": {"format": "gguf", "family": "qwen2"},
                                     "model_info": {}, "capabilities": ["completion"]})
                else:
                    self._send(404, {"error": "not found"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @staticmethod
    def tag(name: str) -> dict[str, Any]:
        return {"name": name, "model": name, "modified_at": "2026-11-22T00:00:00Z", "size": 1,
                "digest": "0" * 64, "details": {"format": "gguf", "family": "qwen2",
                                                "parameter_size": "7B", "quantization_level": "Q4_K_M"}}

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
