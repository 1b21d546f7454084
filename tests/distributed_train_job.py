"""Run by the tests under torchrun: FSDP2 training of a nano model, 2 processes on CPU (gloo) in tests/test_train.py,
one per GPU (nccl) in tests/test_gpu.py."""

import json
import random
import sys
from pathlib import Path

import torch

from opencwm.data.packing import Document, PackedStream
from opencwm.model import CWM, preset
from opencwm.train.distributed import setup
from opencwm.train.loop import TrainConfig, Trainer

out, steps = Path(sys.argv[1]), int(sys.argv[2])
rank, world, device = setup()
rng = random.Random(0)
docs = [Document([(s + k * i) % 97 for i in range(rng.randint(5, 30))]) for s, k in
        ((rng.randint(0, 50), rng.randint(1, 3)) for _ in range(200))]
stream = PackedStream({"count": docs}, {"count": 1.0}, seq_len=64, seed=100 + rank)  # each rank its own data
model = CWM(preset("nano", vocab_size=97, max_position_embeddings=128)).init_weights(seed=0).to(device)
config = TrainConfig(steps=steps, batch_size=4, lr=3e-3, warmup_steps=2, checkpoint_every=3, log_every=1)
trainer = Trainer(model, stream, config, out, distributed=True)
resumed = trainer.resume()
trainer.train(progress=False)
weight = model.model.layers[0].mlp.up_proj.weight
report = {"rank": rank, "world": world, "resumed": resumed, "local_rows": weight.to_local().shape[0],
          "full_rows": weight.shape[0]}
(out / f"report-rank{rank}.json").write_text(json.dumps(report))
torch.distributed.destroy_process_group()
