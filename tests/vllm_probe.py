"""Run by tests/test_slow_vllm.py with the Python of the vLLM environment (``make vllm``), not opencwm's: loads a
checkpoint folder with vLLM's own loader and engine and writes what vLLM computed as JSON.

    python tests/vllm_probe.py CHECKPOINT_DIR REQUEST.json RESULT.json

REQUEST: {"token_prompts": [[id, ...], ...], "text_prompts": ["...", ...], "max_tokens": N, "max_model_len": N}.
RESULT: per token prompt, the greedy continuation and the log-probability of each prompt token given the ones before
it; per text prompt, the token ids vLLM's tokenizer made of it and its greedy continuation; the tokenizer's end of
text id.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main() -> None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB: a test model needs little
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    checkpoint, request_path, result_path = sys.argv[1:]
    request = json.loads(Path(request_path).read_text())
    llm = LLM(model=checkpoint, dtype="float32", enforce_eager=True, max_model_len=request["max_model_len"],
              seed=0)
    greedy = SamplingParams(temperature=0.0, max_tokens=request["max_tokens"], ignore_eos=True, prompt_logprobs=0)
    outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in request["token_prompts"]], greedy)
    token_results = []
    for prompt, output in zip(request["token_prompts"], outputs):
        logprobs = [position[token].logprob for position, token in zip(output.prompt_logprobs[1:], prompt[1:])]
        token_results.append({"generated": list(output.outputs[0].token_ids), "prompt_logprobs": logprobs})
    texts = llm.generate(request["text_prompts"], SamplingParams(temperature=0.0, max_tokens=request["max_tokens"],
                                                                 ignore_eos=True))
    text_results = [{"prompt_token_ids": list(o.prompt_token_ids), "generated": list(o.outputs[0].token_ids)}
                    for o in texts]
    result = {"vllm_version": __import__("vllm").__version__, "tokens": token_results, "texts": text_results,
              "eos_token_id": llm.get_tokenizer().eos_token_id}
    Path(result_path).write_text(json.dumps(result))


if __name__ == "__main__":  # vLLM starts its engine in a spawned process, which imports this file again
    main()
