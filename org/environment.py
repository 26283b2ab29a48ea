"""What a child process's environment holds: never a credential, and for a run only allow-listed names.

One detector (`is_secret`) says which variable names are credentials; every env nightlab builds
for a child drops them, and a program's own `env:` may not name one. Two policies use it:
- `run_env`, for experiment runs (untrusted code): allow-listed parent variables plus the
  program's env, minus secrets.
- `setup_env`, for a program's setup command (data prep, written by the user): the whole parent
  env plus the program's env, minus secrets; it may need what the user's shell has (a data URL).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

ALLOWED_ENV = {
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TERM", "TZ",
    "TMPDIR", "PYTHONPATH", "PYTHONHASHSEED", "PYTHONUNBUFFERED", "VIRTUAL_ENV", "LD_LIBRARY_PATH",
    "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "CUDA_HOME",
    "PYTORCH_CUDA_ALLOC_CONF", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "OMP_NUM_THREADS",
    "MKL_NUM_THREADS", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM",
    "NIGHTLAB_CACHE", "NIGHTLAB_PRESET",
}  # fmt: skip
SECRET_ENV = re.compile(
    r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?|AUTH|COOKIE|SESSION)$"
    r"|^(OPENAI|ANTHROPIC|AWS|AZURE|GOOGLE|GCP|GEMINI|VERTEX|HF|HUGGING\w*|COHERE|MISTRAL|GROQ|"
    r"TOGETHER|REPLICATE|DEEPSEEK|XAI|OPENROUTER|LITELLM|GITHUB|GH|GITLAB|WANDB|OLLAMA)_",
    re.I,
)  # fmt: skip


def is_secret(name: str) -> bool:
    """Does this variable name look like a credential (or a provider's setting)? An `*_OFFLINE`
    switch (HF_HUB_OFFLINE) never does."""
    return not name.endswith("_OFFLINE") and SECRET_ENV.search(name) is not None


def _without_secrets(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not is_secret(k)}


def run_env(extra: Mapping[str, str], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Allow-listed variables from `base` (default: os.environ) plus `extra`, minus secrets."""
    base = os.environ if base is None else base
    # NIGHTLAB_SMOKE* is not passed through: a stray one in the user's shell would turn every full
    # run into a 2-second smoke run. The smoke gate sets it itself, through `extra`.
    env = _without_secrets({**{k: v for k, v in base.items() if k in ALLOWED_ENV}, **extra})
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("PYTHONDONTWRITEBYTECODE", "1")  # a run leaves no files in the worktree
    return env


def setup_env(extra: Mapping[str, str], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """All of `base` (default: os.environ) plus `extra`, minus secrets."""
    return _without_secrets({**(os.environ if base is None else base), **extra})
