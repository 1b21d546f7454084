"""opencwm: an open, hackable reimplementation of Meta FAIR's Code World Model (CWM).

Areas, one subpackage each: ``trace`` (execution tracer, CWM trace codec, collection), ``sandbox`` (isolation of
untrusted code). Importing ``opencwm`` imports nothing heavy.
"""

__version__ = "0.1.0"
