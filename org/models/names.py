"""Model strings (`provider/model`): parsing and validation, without importing litellm.

litellm takes 5-8 s to import, and role files are loaded by `--help`-fast commands, so the
providers we accept are a static set here (a test checks each one against litellm's own
`provider_list`). `local` is our embedded llama.cpp provider; tests register `scripted`.
"""

from __future__ import annotations

from dataclasses import dataclass

# litellm provider prefixes users plausibly name in role files.
LITELLM_PROVIDERS: frozenset[str] = frozenset(
    {
        "openai", "anthropic", "ollama", "ollama_chat", "gemini", "vertex_ai", "azure",
        "groq", "mistral", "deepseek", "openrouter", "together_ai", "fireworks_ai", "bedrock",
        "cohere", "xai", "huggingface", "hosted_vllm", "lm_studio", "perplexity", "cerebras",
        "text-completion-openai", "databricks", "sambanova", "nvidia_nim",
    }
)
# Custom providers registered with litellm.custom_provider_map by nightlab (or its tests).
CUSTOM_PROVIDERS: set[str] = {"local"}
# Not language models: `optuna/<sampler>` names a classical optimizer a proposer role may be
# (org/sampler.py), never called through litellm.
SAMPLERS: tuple[str, ...] = ("tpe", "cmaes", "gp", "random")
# `moves/random` picks one knob move uniformly from those knob mode offers (org/proposer.py): the
# same menu a language model chooses from, no model. The ablation of a knob-mode proposer.
PICKERS: tuple[str, ...] = ("random",)

# Environment variable holding each hosted provider's key (checked by preflight / fallback).
API_KEY_ENV: dict[str, str] = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "gemini": "GEMINI_API_KEY",
    "groq": "GROQ_API_KEY",
    "mistral": "MISTRAL_API_KEY",
    "deepseek": "DEEPSEEK_API_KEY",
    "openrouter": "OPENROUTER_API_KEY",
    "together_ai": "TOGETHERAI_API_KEY",
    "fireworks_ai": "FIREWORKS_AI_API_KEY",
    "cohere": "COHERE_API_KEY",
    "xai": "XAI_API_KEY",
    "perplexity": "PERPLEXITYAI_API_KEY",
    "cerebras": "CEREBRAS_API_KEY",
    "azure": "AZURE_API_KEY",
    "sambanova": "SAMBANOVA_API_KEY",
    "nvidia_nim": "NVIDIA_NIM_API_KEY",
    "huggingface": "HF_TOKEN",
    "databricks": "DATABRICKS_API_KEY",
}


@dataclass(frozen=True)
class ModelName:
    provider: str
    model: str

    def __str__(self) -> str:
        return f"{self.provider}/{self.model}"

    @property
    def is_local(self) -> bool:
        """Runs on this machine (embedded or Ollama): costs nothing, needs no key."""
        return self.provider in {"local", "ollama", "ollama_chat", "scripted", "optuna", "moves"}

    @property
    def is_sampler(self) -> bool:
        """A classical optimizer (Optuna), not a language model."""
        return self.provider == "optuna"

    @property
    def is_picker(self) -> bool:
        """A knob-mode proposer without a model: it picks from the offered moves (`moves/random`)."""
        return self.provider == "moves"

    @property
    def is_base(self) -> bool:
        """An embedded base model (not instruction-tuned): a grammar makes its answer valid, not
        meaningful, so its free text is never kept as a hypothesis."""
        return self.provider == "local"

    @property
    def is_ollama(self) -> bool:
        return self.provider in {"ollama", "ollama_chat"}


def parse_model(value: str) -> ModelName:
    """Split and check `provider/model`; raises ValueError with a one-line reason."""
    if not isinstance(value, str) or "/" not in value:
        raise ValueError(f"model string {value!r} must look like 'provider/model'")
    provider, _, model = value.partition("/")
    if not provider or not model.strip() or value != value.strip():
        raise ValueError(f"model string {value!r} must look like 'provider/model'")
    if provider == "optuna":
        if model not in SAMPLERS:
            raise ValueError(f"unknown sampler {value!r} (samplers: {', '.join(f'optuna/{s}' for s in SAMPLERS)})")
        return ModelName(provider, model)
    if provider == "moves":
        if model not in PICKERS:
            raise ValueError(f"unknown move picker {value!r} (pickers: {', '.join(f'moves/{s}' for s in PICKERS)})")
        return ModelName(provider, model)
    if provider not in LITELLM_PROVIDERS and provider not in CUSTOM_PROVIDERS:
        known = ", ".join(sorted(LITELLM_PROVIDERS | CUSTOM_PROVIDERS | {"optuna", "moves"}))
        raise ValueError(f"unknown provider {provider!r} in {value!r} (known: {known})")
    return ModelName(provider, model)
