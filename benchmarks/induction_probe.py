"""How many training steps until a small model copies from its context? Trains on repeated random stretches of
tokens (the first copy unlearned: nothing predicts it), optionally mixed with a speedrun's code and traces, and
prints the random-token copying accuracy (``opencwm.eval.copying``: induction heads) every ``--every`` steps.

    python benchmarks/induction_probe.py --data runs/speedrun/shared --layers 2 --steps 200
    python benchmarks/induction_probe.py --data runs/speedrun/shared --reference llama --layers 2 --steps 200
    python benchmarks/induction_probe.py --data runs/speedrun/shared --layers 4 --steps 400 --mix code=0.3 \
        --mix traces=0.3 --repeats 0.4 --compile

The model is the ``tiny`` preset's CWM (``--layers`` overrides its depth) trained by the speedrun's optimizer
(Muon for the blocks' matrices, AdamW for the rest, at the speedrun's learning rates unless given), 4 x 512 tokens a
step; or, with ``--reference llama``, ``transformers``' ``LlamaForCausalLM`` of the same width and depth under AdamW
on the same batches, which tells a property of this training budget from one of opencwm's model. ``--alphabet``
draws the stretches from the first N token ids only (copying is scored on the whole vocabulary and on those N);
``--lengths`` bounds a stretch's length; ``--copies`` repeats it (0: fill the document, up to 512 tokens).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import append_row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a speedrun's shared folder (tokenizer/, data/)")
    parser.add_argument("--layers", type=int, default=8, help="depth (default: 8, the tiny preset's)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--every", type=int, default=25, help="score copying every N steps (default: 25)")
    parser.add_argument("--repeats", type=float, default=1.0, help="share of tokens from repeated stretches")
    parser.add_argument("--mix", action="append", default=[], metavar="SOURCE=SHARE",
                        help="also train on a speedrun source (code, traces, direct, ...) at this share")
    parser.add_argument("--alphabet", help="draw stretches from the first N token ids, or from those the speedrun's "
                                           "traces use (corpus) (default: all)")
    parser.add_argument("--lengths", default="8-64", help="a stretch's length, LOW-HIGH tokens (default: 8-64)")
    parser.add_argument("--copies", type=int, default=2, help="copies of a stretch (0: fill 512 tokens)")
    parser.add_argument("--lr", type=float, default=3e-3, help="AdamW's learning rate (default: 3e-3)")
    parser.add_argument("--muon-lr", type=float, default=0.02, help="Muon's learning rate (default: 0.02)")
    parser.add_argument("--optimizer", default="muon", choices=("muon", "adamw"))
    parser.add_argument("--reference", choices=("llama",), help="train transformers' Llama instead of CWM")
    parser.add_argument("--compile", action="store_true", help="torch.compile CWM's blocks")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    import torch

    from opencwm.data.documents import copy_drills
    from opencwm.data.packing import PackedStream
    from opencwm.eval.copying import copying_accuracy
    from opencwm.model.factory import fresh_model
    from opencwm.speedrun import data_paths, source_path
    from opencwm.tokenizer import Tokenizer
    from opencwm.train.loop import TrainConfig, loss_fn, lr_scale
    from opencwm.train.optim import build_optimizer

    tokenizer = Tokenizer.load(args.data / "tokenizer")
    high = min(tokenizer.special_ids.values())
    if args.alphabet == "corpus":
        from opencwm.data.documents import texts, token_alphabet

        drawn = token_alphabet(tokenizer, texts(data_paths(args.data)["traces"]))  # the ids stretches are drawn from
    else:
        drawn = list(range(int(args.alphabet) if args.alphabet else high))
    low, top = (int(x) for x in args.lengths.split("-"))
    sources = {"repeats": copy_drills(drawn, count=20_000, lengths=(low, top), copies=args.copies, seed=1)}
    weights = {"repeats": args.repeats}
    if args.mix:
        from opencwm.data.documents import source_documents

        paths = data_paths(args.data)
        for item in args.mix:
            name, share = item.split("=")
            sources[name] = source_documents(name, source_path(name, paths), tokenizer)
            weights[name] = float(share)
    stream = PackedStream(sources, {k: v for k, v in weights.items() if v > 0}, seq_len=512, seed=0)
    torch.manual_seed(0)
    if args.reference == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=tokenizer.vocab_size, hidden_size=256, intermediate_size=768, num_hidden_layers=args.layers,
            num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=1024))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)

        def loss_of(batch, step):  # the packer's labels are the next tokens already (-100: not learned)
            logits = model(batch["input_ids"]).logits
            return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(),
                                                     ignore_index=-100)

        def copying():
            class Logits(torch.nn.Module):  # copying_accuracy calls model(ids) for logits, as CWM returns them
                device = torch.device("cpu")

                def forward(self, ids):
                    return model(ids).logits

            return copying_accuracy(Logits(), low=0, high=high), copying_accuracy(Logits(), ids=drawn)
    else:
        model = fresh_model("tiny", tokenizer, seq_len=512, seed=0, zero_residual=args.optimizer == "muon",
                            num_hidden_layers=args.layers)
        config = TrainConfig(steps=args.steps, batch_size=4, lr=args.lr, muon_lr=args.muon_lr, warmup_steps=20,
                             schedule="wsd", decay_fraction=0.0, min_lr_ratio=1.0, optimizer=args.optimizer)
        optimizer = build_optimizer(model, kind=args.optimizer, lr=args.lr, muon_lr=args.muon_lr, weight_decay=0.1,
                                    betas=(0.9, 0.95))
        if args.compile:
            model.compile_blocks()

        def loss_of(batch, step):
            optimizer.set_lr_scale(lr_scale(step, config))
            return loss_fn(model, batch)

        def copying():
            return copying_accuracy(model, low=0, high=high), copying_accuracy(model, ids=drawn)

    start, points = time.monotonic(), []
    for step in range(args.steps):
        model.train()
        loss = loss_of(stream.next_batch(4), step)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if (step + 1) % args.every == 0 or step + 1 == args.steps:
            model.eval()
            with torch.no_grad():
                whole, alphabet = copying()
                point = {"step": step + 1, "loss": round(loss.item(), 3), "copying": round(whole, 3),
                         "copying_alphabet": round(alphabet, 3), "seconds": round(time.monotonic() - start)}
            points.append(point)
            print(json.dumps(point), flush=True)
    if not args.no_record:
        what = (f"{args.reference or 'CWM'} {args.layers} layers, {args.optimizer if not args.reference else 'adamw'}"
                f", {args.steps} steps of 4 x 512 tokens on {weights}")
        append_row("induction_probe", " ".join(["python benchmarks/induction_probe.py", *sys.argv[1:]]),
                   f"{what}: copying accuracy by step " + ", ".join(f"{p['step']}: {100 * p['copying']:.1f}%"
                                                                      for p in points)
                   + (f"; on the {len(drawn)} ids the stretches are drawn from: "
                      + ", ".join(f"{p['step']}: {100 * p['copying_alphabet']:.1f}%" for p in points)
                      if args.alphabet else "")
                   + f"; last loss {points[-1]['loss']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
