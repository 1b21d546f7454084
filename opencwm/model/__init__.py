"""The CWM transformer: configuration and presets, the model, attention backends, KV cache, generation,
Hugging Face checkpoints and quantization.

``opencwm.model.config`` needs only the standard library (so ``opencwm model info`` starts fast); ``CWM`` and
everything else import torch when first used.
"""

from opencwm.model.config import PRESETS, CwmConfig, preset

__all__ = ["CWM", "PRESETS", "CwmConfig", "preset"]


def __getattr__(name: str):
    if name == "CWM":
        from opencwm.model.transformer import CWM

        return CWM
    raise AttributeError(f"module 'opencwm.model' has no attribute {name!r}")
