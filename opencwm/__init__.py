"""opencwm: an open, hackable reimplementation of Meta FAIR's Code World Model (CWM).

Areas, lowest floor first (a module imports only its own floor or below; ``tests/test_layering.py``): the ground
(``errors``, ``shards``: datasets as Parquet shards, ``special_tokens``, ``sandbox``: isolation of untrusted code,
``ray_cluster``); ``trace`` (execution tracer, CWM trace codec, collection) and ``chat`` (CWM's chat format);
``tokenizer``; ``data`` (corpora, prompts, packing, SFT examples); ``model`` (the CWM transformer, checkpoints,
generation); ``train``; ``forage`` (repository environments, tasks, the agent, trajectories); ``infer`` (the
completion interface, generation, the neural debugger); ``eval`` (benchmarks over any completer, graded in the
sandbox); then the command line (``cli``) and the ``speedrun`` recipe. Importing ``opencwm`` imports nothing heavy.
"""

__version__ = "0.1.0"
