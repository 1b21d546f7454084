"""Run by tests/test_rl.py: one RL update of a nano model on a fixed batch of rollouts, under torchrun (2 processes
on CPU, gloo: each rank holds half of the rows) or as one process (all of them); rank 0 writes the weights after
it (the trainer's checkpoint)."""

import sys
from pathlib import Path

import torch

from opencwm.model import CWM, preset
from opencwm.rl.objective import Objective
from opencwm.rl.rollouts import rl_loss, token_logps
from opencwm.train.distributed import launched_by_torchrun, setup
from opencwm.train.loop import TrainConfig, Trainer

out, aggregation = Path(sys.argv[1]), sys.argv[2]
distributed = launched_by_torchrun()
rank, world, device = setup() if distributed else (0, 1, torch.device("cpu"))
model = CWM(preset("nano", vocab_size=97, max_position_embeddings=128)).init_weights(seed=0)
generator = torch.Generator().manual_seed(0)
rows, length = 8, 24
input_ids = torch.randint(1, 97, (rows, length), generator=generator)
mask = torch.zeros(rows, length - 1)
for row in range(rows):  # prompts of different lengths, completions of different lengths
    start = int(torch.randint(3, 10, (1,), generator=generator))
    mask[row, start : start + int(torch.randint(2, 12, (1,), generator=generator))] = 1
batch = {"input_ids": input_ids, "mask": mask, "advantages": torch.randn(rows, generator=generator),
         "old_logps": token_logps(model, input_ids) + 0.05 * torch.randn(rows, length - 1, generator=generator)}
part = slice(rank * rows // world, (rank + 1) * rows // world)


class Fixed:
    """The rank's part of the same batch at every step."""
    seq_len = length

    def next_batch(self, _):
        return {k: v[part] for k, v in batch.items()}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


config = TrainConfig(steps=2, batch_size=rows // world, lr=1e-3, warmup_steps=0, decay_fraction=0.0, min_lr_ratio=1.0,
                     weight_decay=0.0, checkpoint_every=2, log_every=1, precision="fp32")
trainer = Trainer(model, Fixed(), config, out, distributed=distributed,
                  loss=rl_loss(Objective(aggregation=aggregation), max_tokens=length))
trainer.train(progress=False)
if distributed:
    torch.distributed.destroy_process_group()
