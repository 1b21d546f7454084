"""Copying from the context (induction heads) forms on the speedrun's copy drills and not on the corpus alone, at a
budget a CPU test affords: the speedrun's copy warm-up, checked with a model small enough to train twice here."""

import pytest
import torch

from opencwm.data.documents import copy_drills, text_drills
from opencwm.data.packing import Document, PackedStream
from opencwm.data.synthetic import ProgramGenerator
from opencwm.eval.copying import copying_accuracy, token_alphabet
from opencwm.model.factory import fresh_model
from opencwm.tokenizer import Tokenizer
from opencwm.train.loop import loss_fn
from opencwm.train.optim import build_optimizer

STEPS = 300  # at the drills' rates the heads form at ~100 steps here, at the run's own at ~700 (2-core Intel Xeon)


def test_copy_drills_are_a_random_stretch_written_twice_and_learned_the_second_time():
    drills = copy_drills([5, 9, 11], count=200, lengths=(3, 7), seed=1)
    assert drills == copy_drills([5, 9, 11], count=200, lengths=(3, 7), seed=1)  # seeded
    for document in drills:
        half = len(document.tokens) // 2
        assert 3 <= half <= 7 and document.tokens[:half] == document.tokens[half:]
        assert document.loss_mask == [False] * half + [True] * half
        assert set(document.tokens) <= {5, 9, 11}
    assert {t for d in drills for t in d.tokens} == {5, 9, 11}


def test_text_drills_copy_a_stretch_of_one_real_text_written_twice():
    texts = [list(range(100, 140)), list(range(500, 520)), [7, 8]]  # the last is shorter than any stretch
    drills = text_drills(texts, count=300, lengths=(4, 16), seed=2)
    assert drills == text_drills(texts, count=300, lengths=(4, 16), seed=2)  # seeded
    for document in drills:
        half = len(document.tokens) // 2
        stretch = document.tokens[:half]
        assert 4 <= half <= 16 and document.tokens[half:] == stretch
        assert document.loss_mask == [False] * half + [True] * half
        source = next(t for t in texts if stretch[0] in t)  # consecutive tokens of one text
        start = source.index(stretch[0])
        assert source[start : start + half] == stretch
    assert {d.tokens[0] // 100 for d in drills} == {1, 5}  # both long texts are drawn from
    assert text_drills([[1, 2]], lengths=(4, 16)) == []


def test_the_copy_drills_view_draws_the_ids_its_dataset_uses_and_no_special_token(tmp_path):
    from opencwm.data.corpora import build_program_corpus
    from opencwm.data.documents import source_documents, texts
    from opencwm.trace.collect import CollectConfig, collect

    build_program_corpus(tmp_path / "programs", 12, difficulty=1)
    collect(tmp_path / "programs", tmp_path / "traces", CollectConfig(workers=1, progress=False))
    trace_texts = texts(tmp_path / "traces")
    tokenizer = Tokenizer.train(trace_texts, vocab_size=400)
    alphabet = token_alphabet(tokenizer, trace_texts)
    used = {i for text in trace_texts for i in tokenizer.encode(text, allow_special=True)}
    special = set(tokenizer.special_ids.values())
    assert set(alphabet) == used - special and used & special  # traces hold special tokens; drills never do
    drilled = {i for d in source_documents("copy_drills", tmp_path / "traces", tokenizer) for i in d.tokens}
    assert drilled <= set(alphabet) and len(drilled) > 0.9 * len(alphabet)


def _train(tokenizer, documents, steps: int, *, lr: float, muon_lr: float) -> torch.nn.Module:
    """The speedrun's `tiny` CWM cut to 2 layers, trained as the speedrun trains (Muon for the blocks' matrices from
    zero residual projections, AdamW for the rest, constant rates), 4 x 512 tokens a step. (Narrower, or on shorter
    rows, the heads form later: the nano width had none after 2000 steps of 4 x 256 tokens.)"""
    model = fresh_model("tiny", tokenizer, seq_len=512, seed=0, zero_residual=True, num_hidden_layers=2)
    optimizer = build_optimizer(model, kind="muon", lr=lr, muon_lr=muon_lr, weight_decay=0.1, betas=(0.9, 0.95))
    stream = PackedStream({"docs": documents}, {"docs": 1.0}, seq_len=512, seed=0)
    model.train()
    for _ in range(steps):
        loss = loss_fn(model, stream.next_batch(4))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


@pytest.mark.slow  # three models of 300 steps: ~3 min on 2 cores (make test-slow)
def test_copy_drills_grow_induction_heads_where_the_corpus_alone_does_not():
    """At the speedrun's drill rates (``stage_train_config``: AdamW at ten times the run's rate) the drills grow the
    heads within STEPS; neither the corpus at those rates nor the drills at the run's own rates do."""
    from opencwm.speedrun import SpeedrunConfig, stage_train_config

    generator = ProgramGenerator(seed=5, difficulty=1)
    programs = [generator.program().source for _ in range(300)]
    tokenizer = Tokenizer.train(programs, vocab_size=512)
    alphabet = token_alphabet(tokenizer, programs)
    corpus = [Document(tokenizer.encode(text)) for text in programs]
    drills = copy_drills(alphabet, count=5_000, seed=0)
    config, recipe = SpeedrunConfig(), stage_train_config(SpeedrunConfig(), STEPS, "pretrain")
    assert recipe.lr > config.lr and recipe.muon_lr == config.muon_lr
    drilled = _train(tokenizer, drills, STEPS, lr=recipe.lr, muon_lr=recipe.muon_lr)
    plain = _train(tokenizer, corpus, STEPS, lr=recipe.lr, muon_lr=recipe.muon_lr)
    slow = _train(tokenizer, drills, STEPS, lr=config.lr, muon_lr=config.muon_lr)
    with torch.no_grad():
        copies, control, former = (copying_accuracy(model, ids=alphabet) for model in (drilled, plain, slow))
    print(f"copying over the corpus's {len(alphabet)} ids: drills {copies:.1%}, corpus only {control:.1%}, drills at "
          f"the run's rates {former:.1%}")
    assert copies >= 0.5 and control <= 0.15 and former <= 0.15
