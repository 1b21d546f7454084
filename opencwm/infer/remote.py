"""An OpenAI-compatible ``/v1/completions`` endpoint as a ``Completer``: prompts go out as token ids and
continuations come back as token ids (vLLM answers with them when asked: ``return_token_ids``).

The request asks for exactly the ``Completer`` contract: stop only at the given token ids (``stop_token_ids``,
``ignore_eos``), special tokens kept. vLLM's automatic prefix caching gives the reuse ``LocalCompleter`` does
itself. The ``openai`` client retries failed connections; when nothing answers, ``CompleterUnavailable`` says so
in one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from opencwm.errors import one_line
from opencwm.infer.completer import CompleterUnavailable, RequestRefused
from opencwm.tokenizer import Tokenizer

CWM_CONTEXT = 131_072
MAX_STOP_TEXTS = 4  # the OpenAI API's limit, which vLLM enforces; callers cut the text at every stop text anyway


class RemoteCompleter:
    def __init__(self, base_url: str, model: str, tokenizer: Tokenizer, *, api_key: str = "EMPTY",
                 timeout: float = 120.0, retries: int = 2, context_length: int | None = None, concurrency: int = 8):
        try:
            from openai import OpenAI
        except ImportError:
            raise CompleterUnavailable("a remote model needs the openai package: pip install 'opencwm[forage]'") \
                from None
        self.client = OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=retries)
        self.base_url, self.model, self.tokenizer = base_url, model, tokenizer
        self._context_length = context_length
        self.concurrency = max(1, concurrency)  # requests in flight at once in ``complete_batch``

    @property
    def context_length(self) -> int:
        """The server's limit for this model (vLLM's model list says ``max_model_len``), asked once; CWM's 131,072
        when the server does not say (it refuses longer requests itself)."""
        if self._context_length is None:
            self._context_length = CWM_CONTEXT
            try:
                for card in self.client.models.list().data:
                    limit = (card.model_extra or {}).get("max_model_len")
                    if card.id == self.model and isinstance(limit, int) and limit > 0:
                        self._context_length = limit
            except Exception:  # no answer here: the requests will say so in one line
                pass
        return self._context_length

    def complete(self, prompt: Sequence[int], *, stop: Sequence[int] = (), max_tokens: int = 256,
                 temperature: float = 0.0, top_p: float = 1.0, n: int = 1,
                 seed: int | None = None, on_token=None, stop_texts: Sequence[str] = ()) -> list[list[int]]:
        import openai

        request = dict(model=self.model, prompt=list(prompt), max_tokens=max_tokens, temperature=temperature,
                       top_p=top_p, n=n, seed=seed, stop=list(stop_texts)[:MAX_STOP_TEXTS] or None,
                       extra_body={"stop_token_ids": list(stop), "ignore_eos": True, "return_token_ids": True,
                                   "skip_special_tokens": False, "include_stop_str_in_output": True})
        try:
            if on_token is not None and n == 1:
                return [self._stream(request, stop, on_token)]
            response = self.client.completions.create(**request)
        except (openai.APIConnectionError, openai.AuthenticationError, openai.PermissionDeniedError,
                openai.NotFoundError) as exc:
            tries = self.client.max_retries + 1
            raise CompleterUnavailable(f"{self.base_url} (model {self.model}): {type(exc).__name__} after {tries} "
                                       f"tries: {one_line(str(exc), 200)}") from None
        except openai.APIStatusError as exc:  # the server answered, refusing the request (too long, bad option)
            raise RequestRefused(f"{self.base_url} refused the request: {one_line(str(exc), 300)}") from None
        return [self._tokens(choice, stop) for choice in sorted(response.choices, key=lambda c: c.index)]

    def complete_batch(self, prompts: Sequence[Sequence[int]], *, n: int = 1, **sampling) -> list[list[list[int]]]:
        """``complete`` for each prompt, ``concurrency`` requests in flight at once (the server batches them)."""
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="request") as pool:
            return list(pool.map(lambda prompt: self.complete(prompt, n=n, **sampling), prompts))

    def _tokens(self, choice, stop: Sequence[int], tokens: list[int] | None = None) -> list[int]:
        extra = choice.model_extra or {}
        if tokens is None:
            if extra.get("token_ids") is None:
                raise CompleterUnavailable(f"{self.base_url} returned no token ids (vLLM does, from 0.10.2, when "
                                           "asked with return_token_ids)")
            tokens = [int(t) for t in extra["token_ids"]]
        reason = extra.get("stop_reason")
        if isinstance(reason, int) and reason in stop and (not tokens or tokens[-1] != reason):
            tokens.append(reason)  # a server that leaves the stop token out of the continuation
        return tokens

    def _stream(self, request: dict, stop: Sequence[int], on_token) -> list[int]:
        tokens: list[int] = []
        last = None
        for chunk in self.client.completions.create(**request, stream=True):
            for choice in chunk.choices:
                for token in (choice.model_extra or {}).get("token_ids") or []:
                    tokens.append(int(token))
                    on_token(int(token))
                last = choice
        if last is None:
            raise CompleterUnavailable(f"{self.base_url} streamed no completion")
        before = len(tokens)
        tokens = self._tokens(last, stop, tokens)
        for token in tokens[before:]:
            on_token(token)
        return tokens

    def reload_weights(self, path: str, timeout: float = 600) -> None:
        """Have the server load new weights (a Hugging Face checkpoint folder on its machine) in place, and forget
        its cached prefixes (computed with the old ones). vLLM offers both in its development mode
        (``VLLM_SERVER_DEV_MODE=1``: ``/collective_rpc`` calling the workers' ``reload_weights``, and
        ``/reset_prefix_cache``); a server without them is ``CompleterUnavailable`` in one line."""
        import json
        import urllib.error
        import urllib.request

        root = self.base_url.rstrip("/").removesuffix("/v1")
        for route, body in (("collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": path}}),
                            ("reset_prefix_cache", None)):
            request = urllib.request.Request(f"{root}/{route}", method="POST",
                                             data=json.dumps(body).encode() if body is not None else b"",
                                             headers={"Content-Type": "application/json"})
            try:
                urllib.request.urlopen(request, timeout=timeout).read()
            except urllib.error.HTTPError as exc:
                hint = " (start vLLM with VLLM_SERVER_DEV_MODE=1)" if exc.code == 404 else ""
                raise CompleterUnavailable(f"{root}/{route}: HTTP {exc.code}{hint}") from None
            except OSError as exc:
                raise CompleterUnavailable(f"{root}/{route}: {one_line(str(exc), 200)}") from None

