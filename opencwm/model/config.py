"""The CWM architecture's configuration, with Hugging Face ``CwmConfig`` field names, and the presets.

Presets are sizes of one architecture (SPEC §5): GQA, SwiGLU, RMSNorm, llama3-scaled RoPE, no biases, untied
embeddings, and three local (sliding-window) layers for every global one (layer i is global when i % 4 == 0, as
in ``transformers``' CwmConfig and the released checkpoint's ``layer_types``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from opencwm.special_tokens import special_token_fields

FULL, SLIDING = "full_attention", "sliding_attention"

CWM_ROPE = {
    "rope_type": "llama3", "rope_theta": 1_000_000.0, "factor": 16.0, "low_freq_factor": 1.0,
    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
}


def default_layer_types(num_hidden_layers: int) -> list[str]:
    return [FULL if i % 4 == 0 else SLIDING for i in range(num_hidden_layers)]


@dataclass
class CwmConfig:
    vocab_size: int = 128256
    hidden_size: int = 6144
    intermediate_size: int = 21504
    num_hidden_layers: int = 64
    num_attention_heads: int = 48
    num_key_value_heads: int = 8
    head_dim: int = 128
    rms_norm_eps: float = 1e-5
    rope_parameters: dict = field(default_factory=lambda: dict(CWM_ROPE))
    sliding_window: int = 8192
    layer_types: list[str] | None = None
    max_position_embeddings: int = 131072
    tie_word_embeddings: bool = False
    bos_token_id: int = 128000
    eos_token_id: list[int] = field(default_factory=lambda: [128001, 128008, 128009])
    pad_token_id: int | None = None
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        if self.layer_types is None:
            self.layer_types = default_layer_types(self.num_hidden_layers)
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(f"layer_types has {len(self.layer_types)} entries for {self.num_hidden_layers} layers")
        if bad := set(self.layer_types) - {FULL, SLIDING}:
            raise ValueError(f"unknown layer types {sorted(bad)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads (GQA)")
        if self.tie_word_embeddings:
            raise ValueError("CWM has untied input and output embeddings")

    # -- Hugging Face config.json -----------------------------------------------------------------------------------
    @classmethod
    def from_hf(cls, data: dict) -> CwmConfig:
        """Read a ``config.json`` dict, from transformers 5 (``rope_parameters``) or older releases
        (``rope_theta`` + ``rope_scaling``)."""
        if data.get("model_type") not in (None, "cwm"):
            raise ValueError(f"not a CWM config (model_type={data.get('model_type')!r})")
        rope = data.get("rope_parameters")
        if rope is None:
            scaling = dict(data.get("rope_scaling") or {})
            rope = {"rope_type": scaling.pop("rope_type", scaling.pop("type", "default")),
                    "rope_theta": data.get("rope_theta", CWM_ROPE["rope_theta"]), **scaling}
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names and k != "rope_parameters"}
        eos = values.get("eos_token_id")
        if isinstance(eos, int):
            values["eos_token_id"] = [eos]
        return cls(**values, rope_parameters=dict(rope))

    def to_hf(self) -> dict:
        data = dataclasses.asdict(self)
        data.update(model_type="cwm", architectures=["CwmForCausalLM"], hidden_act="silu", attention_dropout=0.0,
                    mlp_bias=False, use_cache=True)
        return data

    @classmethod
    def load(cls, path: str | Path) -> CwmConfig:
        return cls.from_hf(json.loads(Path(path).read_text()))

    # -- arithmetic -------------------------------------------------------------------------------------------------
    @property
    def num_parameters(self) -> int:
        h, kv = self.hidden_size, self.num_key_value_heads * self.head_dim
        q = self.num_attention_heads * self.head_dim
        attention = h * q + 2 * h * kv + q * h
        mlp = 3 * h * self.intermediate_size
        per_layer = attention + mlp + 2 * h
        embeddings = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return self.num_hidden_layers * per_layer + embeddings + h

    @property
    def num_linear_parameters(self) -> int:
        """Parameters in linear layers (attention, MLP, output head): what weight-only quantization shrinks."""
        h, q, kv = self.hidden_size, self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        per_layer = h * q + 2 * h * kv + q * h + 3 * h * self.intermediate_size
        return self.num_hidden_layers * per_layer + self.vocab_size * h

    @property
    def num_linear_output_channels(self) -> int:
        """Output channels of all linear layers (one quantization scale each)."""
        q, kv = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        per_layer = q + 2 * kv + self.hidden_size + 2 * self.intermediate_size + self.hidden_size
        return self.num_hidden_layers * per_layer + self.vocab_size

    def kv_cache_bytes(self, context: int, batch: int = 1, bytes_per_value: float = 2) -> int:
        """K and V for ``context`` tokens: global layers hold all of them, local layers at most the window."""
        per_token = 2 * self.num_key_value_heads * self.head_dim * bytes_per_value * batch
        tokens = sum(context if t == FULL else min(context, self.sliding_window) for t in self.layer_types)
        return int(per_token * tokens)


def _preset(**kwargs) -> CwmConfig:
    """A smaller CWM: same RoPE scaling, with the original context at the same fraction (1/16) of the context."""
    context = kwargs.get("max_position_embeddings", 131072)
    rope = dict(CWM_ROPE, original_max_position_embeddings=int(context // CWM_ROPE["factor"]))
    return CwmConfig(rope_parameters=rope, **kwargs)


PRESETS: dict[str, callable] = {
    # The released model, exactly (SPEC §5).
    "cwm-32b": lambda: _preset(),
    "1b": lambda: _preset(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=16,
                          num_key_value_heads=4, head_dim=128, sliding_window=4096, max_position_embeddings=32768),
    "small": lambda: _preset(vocab_size=32768, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                             num_attention_heads=12, num_key_value_heads=4, head_dim=64, sliding_window=1024,
                             max_position_embeddings=8192),
    "tiny": lambda: _preset(vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=8,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=64, sliding_window=1024,
                            max_position_embeddings=4096),
    "nano": lambda: _preset(vocab_size=1024, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=32, sliding_window=64,
                            max_position_embeddings=1024),
}


def preset(name: str, **overrides) -> CwmConfig:
    """A preset's config with ``overrides``; begin and end of text follow the vocabulary size unless given."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r} (choose from {', '.join(PRESETS)})")
    config = PRESETS[name]()
    if "num_hidden_layers" in overrides and "layer_types" not in overrides:
        overrides["layer_types"] = None  # recomputed for the new depth
    if not {"bos_token_id", "eos_token_id"} & overrides.keys():
        overrides.update(special_token_fields(overrides.get("vocab_size", config.vocab_size)))
    return dataclasses.replace(config, **overrides)
