"""The CWM transformer: configuration and presets, the model, attention backends, KV cache, generation,
Hugging Face checkpoints and quantization. Importing this package imports torch."""

from opencwm.model.config import PRESETS, CwmConfig, preset
from opencwm.model.transformer import CWM

__all__ = ["CWM", "PRESETS", "CwmConfig", "preset"]
