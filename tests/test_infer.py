"""Inference: the local completer's prefix reuse against plain generation, the KV cache cut back, the remote
completer's errors, and the ``generate`` command."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys

import pytest
import torch

from opencwm.infer.completer import CompleterUnavailable
from opencwm.infer.local import LocalCompleter
from opencwm.infer.remote import RemoteCompleter
from opencwm.model import CWM, preset
from opencwm.model.generate import Sampling, generate


@pytest.fixture(scope="module")
def model():
    # wide weights (logits far apart: greedy choices are no near-ties); a window of 16, so rings wrap
    return CWM(preset("nano", sliding_window=16, initializer_range=0.25)).init_weights(seed=0).eval()


def test_prefix_reuse_gives_what_generation_from_scratch_gives(model):
    reusing, fresh = LocalCompleter(model, None), LocalCompleter(model, None, reuse_prefix=False)
    rng = random.Random(0)
    prompt = [rng.randrange(1000) for _ in range(10)]
    for round_ in range(8):
        stop = (prompt[3],)  # a token that may come up: continuations of several lengths
        ours = reusing.complete(prompt, max_tokens=6, stop=stop)
        assert ours == fresh.complete(prompt, max_tokens=6, stop=stop)
        assert ours == generate(model, [prompt], Sampling(max_new_tokens=6, stop_tokens=stop))
        if round_ == 4:
            prompt = prompt[:12]  # a shorter prompt: the cache is cut back (or, with a wrapped ring, rebuilt)
        prompt = prompt + ours[0] + [rng.randrange(1000)]
    assert reusing.prefilled < fresh.prefilled / 2


def test_samples_of_one_prompt_follow_the_seed(model):
    completer = LocalCompleter(model, None)
    first = completer.complete([1, 2, 3], max_tokens=5, n=3, temperature=1.0, seed=7)
    assert len(first) == 3 and all(len(s) == 5 for s in first)
    assert completer.complete([1, 2, 3], max_tokens=5, n=3, temperature=1.0, seed=7) == first
    assert len({tuple(s) for s in first}) > 1  # distinct streams, not one sample copied


def test_a_cache_cut_back_attends_as_one_built_to_that_length(model):
    tokens = torch.tensor([list(range(5, 15))])
    cache = model.new_cache(1, 64)
    model(tokens, cache=cache)
    assert cache.truncate(6)
    after = model(torch.tensor([[99, 98]]), cache=cache)[0, -1]
    expected = model(torch.cat([tokens[:, :6], torch.tensor([[99, 98]])], dim=1))[0, -1]
    torch.testing.assert_close(after, expected, rtol=1e-4, atol=1e-4)
    long = model.new_cache(1, 64)
    model(torch.tensor([list(range(40))]), cache=long)  # past the ring of 16: positions below 24 are gone
    assert not long.truncate(20)
    assert long.truncate(0) and int(long.lengths[0]) == 0


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again when the block ends: nothing listens there


def test_a_remote_completer_with_nothing_listening_says_so_in_one_line():
    completer = RemoteCompleter(f"http://127.0.0.1:{_closed_port()}/v1", "cwm", None, timeout=2, retries=1)
    with pytest.raises(CompleterUnavailable) as caught:
        completer.complete([1, 2, 3], max_tokens=4)
    assert "APIConnectionError after 2 tries" in str(caught.value) and "\n" not in str(caught.value)


def test_generate_command_samples_from_a_checkpoint(untrained_checkpoint):
    from opencwm.tokenizer import Tokenizer

    tokenizer = Tokenizer.load(untrained_checkpoint)
    prompt = tokenizer.encode("def square(v):\n", allow_special=False)
    result = subprocess.run([sys.executable, "-m", "opencwm.cli", "generate", "--model", str(untrained_checkpoint),
                             "--tokens", ",".join(map(str, prompt)), "--max-tokens", "12", "--json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    model = CWM.from_pretrained(untrained_checkpoint)
    assert report["completions"][0]["tokens"] == generate(model, [prompt], Sampling(max_new_tokens=12))[0]
    streamed = subprocess.run([sys.executable, "-m", "opencwm.cli", "generate", "--model", str(untrained_checkpoint),
                               "--prompt", "def square(v):\n", "--max-tokens", "12"],
                              capture_output=True, text=True, timeout=120)
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout == report["completions"][0]["text"] + "\n"


def test_a_served_model_reads_cwm_s_own_tokenizer_file(tmp_path):
    """``--tokenizer path/to/tokenizer.model`` (CWM's tiktoken file, as released): special tokens at CWM's ids."""
    pytest.importorskip("tiktoken")
    from test_tokenizer import _write_tiktoken_file

    from opencwm.infer.load import open_completer
    from opencwm.special_tokens import CWM_IDS, FRAME_SEP

    _write_tiktoken_file(tmp_path / "tokenizer.model", 128000)
    completer = open_completer("facebook/cwm", base_url="http://127.0.0.1:9/v1",
                               tokenizer=str(tmp_path / "tokenizer.model"))
    assert completer.tokenizer.token_id(FRAME_SEP) == CWM_IDS[FRAME_SEP]
    assert completer.tokenizer.encode(f"x{FRAME_SEP}", allow_special=True)[-1] == CWM_IDS[FRAME_SEP]
    with pytest.raises(CompleterUnavailable, match="--tokenizer is needed"):
        open_completer("facebook/cwm", base_url="http://127.0.0.1:9/v1")


def test_chat_command_prompts_in_cwm_s_format(untrained_checkpoint):
    """Two user turns from a pipe: each reply is what greedy generation gives for the conversation so far in CWM's
    chat format (the second prompt holds the first reply)."""
    from opencwm.chat import encode_messages
    from opencwm.errors import terminal_text
    from opencwm.special_tokens import STOP_TOKENS
    from opencwm.tokenizer import Tokenizer

    result = subprocess.run([sys.executable, "-m", "opencwm.cli", "chat", "--model", str(untrained_checkpoint),
                             "--max-tokens", "6"], input="hello\nand again\n", capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    tokenizer = Tokenizer.load(untrained_checkpoint)
    model = CWM.from_pretrained(untrained_checkpoint)
    stops = tuple(tokenizer.token_id(t) for t in STOP_TOKENS)
    messages, expected = [], []
    for line in ("hello", "and again"):
        messages.append({"role": "user", "content": line})
        prompt = tokenizer.encode(encode_messages(messages, add_generation_prompt=True), allow_special=True)
        tokens = generate(model, [prompt], Sampling(max_new_tokens=6, stop_tokens=stops))[0]
        reply = tokenizer.decode([t for t in tokens if t not in stops])
        messages.append({"role": "assistant", "content": reply})
        expected.append(f"model> {terminal_text(reply)}\n")
    assert result.stdout == "".join(expected)
