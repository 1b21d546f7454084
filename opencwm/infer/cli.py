"""``opencwm generate``, ``opencwm chat`` and ``opencwm debug``: sample from a checkpoint, talk to it, or step
through a program with it, on a local checkpoint (``--model DIR``) or a served one (``--base-url URL --model NAME
--tokenizer PATH``).

    opencwm generate --model runs/speedrun/sft/model --prompt "def add(a, b):" --max-tokens 64
    opencwm chat --model runs/speedrun/sft/model --think
    opencwm debug examples/debug_demo.py --call "collatz(6)" --model runs/debug-demo/model
    opencwm debug prog.py --call "f(3)" --model cwm --base-url http://localhost:8000/v1 --tokenizer tokenizer.model
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from opencwm.errors import UsageError as CliError
from opencwm.errors import terminal_text


def add_model_args(parser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", required=True,
                       help="a checkpoint directory (opencwm or Hugging Face CWM), or with --base-url the served "
                            "model's name")
    group.add_argument("--base-url", help="an OpenAI-compatible server (e.g. vLLM's http://localhost:8000/v1)")
    group.add_argument("--tokenizer", help="tokenizer directory or CWM's tokenizer.model (default: the checkpoint's)")
    group.add_argument("--device", default="cpu", help="where a local checkpoint runs")
    group.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="a local checkpoint's weights "
                       "(default: as saved)")
    group.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for a server's answer")


def add_sampling_args(parser, *, max_tokens: int) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    group.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling's probability mass")
    group.add_argument("--max-tokens", type=int, default=max_tokens, help="new tokens at most")
    group.add_argument("--seed", type=int, help="sampling seed (default: none)")


def check_sampling(args) -> None:
    if args.temperature < 0:
        raise CliError("--temperature must be at least 0")
    if not 0 < args.top_p <= 1:
        raise CliError("--top-p must be in (0, 1]")
    if args.max_tokens < 1:
        raise CliError("--max-tokens must be at least 1")


def open_from_args(args):
    from opencwm.infer.completer import CompleterUnavailable
    from opencwm.infer.load import open_completer

    if not args.base_url and not (Path(args.model) / "config.json").is_file():
        raise CliError(f"--model {args.model}: not a checkpoint directory (no config.json); for a served model "
                       "give --base-url")
    try:
        return open_completer(args.model, base_url=args.base_url, tokenizer=args.tokenizer, device=args.device,
                              dtype=args.dtype, timeout=args.timeout, batch_size=getattr(args, "batch_size", 8),
                              concurrency=getattr(args, "concurrency", 8))
    except CompleterUnavailable as exc:
        raise CliError(str(exc)) from None


class TextStream:
    """Writes a continuation's text as its tokens arrive (a character split across tokens waits for the rest), its
    control characters other than line breaks and tabs shown as ``?``."""

    def __init__(self, tokenizer, out=None):
        self.tokenizer, self.out = tokenizer, out or sys.stdout
        self.tokens: list[int] = []
        self.written = 0

    def __call__(self, token: int) -> None:
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens)
        if text.endswith("\ufffd"):
            return
        self.out.write(terminal_text(text[self.written :]))  # a model's text: no escape sequences to the terminal
        self.out.flush()
        self.written = len(text)


def _complete(completer, prompt, args, *, stop, stream=None) -> list[list[int]]:
    from opencwm.infer.completer import CompleterUnavailable

    try:
        return completer.complete(prompt, stop=stop, max_tokens=args.max_tokens, temperature=args.temperature,
                                  top_p=args.top_p, n=getattr(args, "n", 1), seed=args.seed, on_token=stream)
    except CompleterUnavailable as exc:
        raise CliError(str(exc)) from None
    except ValueError as exc:  # a prompt longer than the context
        raise CliError(str(exc)) from None


def _stop_ids(tokenizer, names: list[str]) -> list[int]:
    ids = []
    for name in names:
        if name.lstrip("-").isdigit():
            ids.append(int(name))
        elif name in tokenizer.special_ids:
            ids.append(tokenizer.token_id(name))
        else:
            raise CliError(f"--stop {name!r}: not a special token (e.g. <|frame_sep|>) or a token id")
    return ids


# -- generate --------------------------------------------------------------------------------------------------------
def cmd_generate(args) -> int:
    from opencwm.chat import REASONING_SYSTEM_PROMPT, encode_messages
    from opencwm.special_tokens import STOP_TOKENS

    check_sampling(args)
    if args.n < 1:
        raise CliError("--n must be at least 1")
    given = [x for x in (args.prompt, args.prompt_file, args.tokens) if x is not None]
    if len(given) != 1:
        raise CliError("give exactly one of --prompt TEXT, --prompt-file PATH or --tokens IDS")
    if args.prompt_file is not None:
        try:
            text = Path(args.prompt_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"--prompt-file {args.prompt_file}: {getattr(exc, 'strerror', None) or exc}") from None
    else:
        text = args.prompt
    completer = open_from_args(args)
    tokenizer = completer.tokenizer
    if args.tokens is not None:
        try:
            prompt = [int(t) for t in args.tokens.replace(",", " ").split()]
        except ValueError:
            raise CliError("--tokens takes token ids separated by commas or spaces") from None
        if not prompt or not all(0 <= t < tokenizer.vocab_size for t in prompt):
            raise CliError(f"--tokens: ids must lie in [0, {tokenizer.vocab_size})")
    elif args.chat:
        system = args.system or (REASONING_SYSTEM_PROMPT if args.think else None)
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
        prompt = tokenizer.encode(encode_messages(messages, add_generation_prompt=True, think=args.think),
                                  allow_special=True)
    else:
        prompt = tokenizer.encode(text, allow_special=args.special)
    stop = _stop_ids(tokenizer, args.stop) if args.stop else (
        [tokenizer.token_id(name) for name in STOP_TOKENS] if args.chat else [])
    streaming = not args.json and args.n == 1
    outputs = _complete(completer, prompt, args, stop=stop, stream=TextStream(tokenizer) if streaming else None)
    if args.json:
        print(json.dumps({"prompt_tokens": prompt, "completions": [
            {"tokens": tokens, "text": tokenizer.decode(tokens)} for tokens in outputs]}))
    elif streaming:
        print()
    else:
        for i, tokens in enumerate(outputs):
            print(f"--- sample {i}\n{tokenizer.decode(tokens)}")
    return 0


# -- chat ------------------------------------------------------------------------------------------------------------
def cmd_chat(args) -> int:
    from opencwm.chat import REASONING_SYSTEM_PROMPT, encode_messages
    from opencwm.special_tokens import STOP_TOKENS

    check_sampling(args)
    args.n = 1
    completer = open_from_args(args)
    tokenizer = completer.tokenizer
    stop = [tokenizer.token_id(name) for name in STOP_TOKENS]
    system = args.system or (REASONING_SYSTEM_PROMPT if args.think else None)
    messages = [{"role": "system", "content": system}] if system else []
    _readline()
    interactive = sys.stdin.isatty()
    if interactive:
        print("chat with the model; an empty line or Ctrl-D ends it", file=sys.stderr)
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            break
        if not line.strip():
            break
        messages.append({"role": "user", "content": line})
        prompt = tokenizer.encode(encode_messages(messages, add_generation_prompt=True, think=args.think),
                                  allow_special=True)
        sys.stdout.write("model> ")
        stream = TextStream(tokenizer)
        [tokens] = _complete(completer, prompt, args, stop=stop, stream=stream)
        print()
        reply = tokenizer.decode([t for t in tokens if t not in stop])
        messages.append({"role": "assistant", "content": (f"<think>\n{reply}" if args.think else reply)})
    return 0


def _readline() -> None:
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass


# -- debug -----------------------------------------------------------------------------------------------------------
def cmd_debug(args) -> int:
    from opencwm.infer.completer import CompleterUnavailable
    from opencwm.infer.debugger import DebuggerError, NeuralDebugger, entry_function, has_arguments
    from opencwm.infer.truth import TruthSource
    from opencwm.sandbox import SandboxError, SandboxUnavailable
    from opencwm.trace.inputs import SourceError, python_file_items

    check_sampling(args)
    if args.max_frames < 1:
        raise CliError("--max-frames must be at least 1")
    if not 0 <= args.port < 65536:
        raise CliError("--port must be between 0 and 65535")
    path = Path(args.file)
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"{args.file}: {getattr(exc, 'strerror', None) or exc}") from None
    default_call = None
    try:  # a file that ends with calls: the program is what precedes them, the first is the default entry call
        item = python_file_items(path, None)[0]
        source, default_call = item.kwargs["source"], item.kwargs["call"]
    except SourceError:
        pass
    call = args.call or default_call
    if call is None:
        raise CliError(f"{args.file}: no call at its end to debug: give --call 'NAME(ARGS)' (or --call NAME to "
                       "have the model sample the arguments)")
    try:
        function, entry_lineno = entry_function(source, call)
    except DebuggerError as exc:
        raise CliError(str(exc)) from None
    truth = TruthSource(source, function, call if has_arguments(call) else None)
    first_frame = None
    try:
        if truth.given_call:  # the entry call frame is the real one
            real = truth.trace(call)
            if not real.frames:
                raise CliError(f"{call}: {real.error or real.status}")
            first_frame, entry_lineno = real.frames[0], real.entry_lineno
        completer = open_from_args(args)
        debugger = NeuralDebugger(completer, source, entry_lineno, first_frame=first_frame,
                                  temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                                  max_frame_tokens=args.max_tokens, max_moves=args.max_frames)
        if args.predict:
            return _predict(debugger, truth, args)
        if args.web:
            from opencwm.infer.web import serve

            try:
                return serve(debugger, truth, port=args.port)
            except OSError as exc:
                raise CliError(f"--port {args.port}: cannot serve there ({exc.strerror or exc})") from None
        from opencwm.infer.repl import DebuggerShell

        _readline()
        shell = DebuggerShell(debugger, truth)
        print(f"neural debugger: {path.name}, {call} ({'given' if first_frame else 'arguments sampled'}); "
              "help lists the commands")
        shell.show_current()
        shell.cmdloop()
    except (SandboxError, SandboxUnavailable) as exc:
        raise CliError(f"the sandbox cannot trace the program: {exc}") from None
    except (DebuggerError, CompleterUnavailable) as exc:
        raise CliError(str(exc)) from None
    return 0


def _predict(debugger, truth, args) -> int:
    from opencwm.infer.compare import align, summary
    from opencwm.infer.repl import format_rows

    debugger.run_to_end()
    real = truth.for_session(debugger)
    if real.trace is None:
        raise CliError(f"no real trace to compare with: {real.reason}")
    rows = align(debugger.steps, real.trace.frames, finished=debugger.finished)
    report = {"call": real.call, **summary(rows, debugger.steps, real.trace, finished=debugger.finished)}
    if not args.json:
        for line in format_rows(rows):
            print(terminal_text(line))  # frames the model wrote: control characters shown as ?
    print(json.dumps(report))
    return 0


def add_parser(areas) -> None:
    generate = areas.add_parser("generate", help="sample from a checkpoint: text, chat or token prompts")
    add_model_args(generate)
    prompt = generate.add_argument_group("prompt")
    prompt.add_argument("--prompt", help="the prompt's text")
    prompt.add_argument("--prompt-file", help="read the prompt's text from a file")
    prompt.add_argument("--tokens", help="the prompt as token ids, e.g. '1,2,3'")
    prompt.add_argument("--chat", action="store_true", help="wrap the text as a user message in CWM's chat format "
                        "(stop at end of turn)")
    prompt.add_argument("--system", help="with --chat: the system prompt (default: CWM's reasoning prompt with "
                        "--think, else none)")
    prompt.add_argument("--think", action="store_true", help="with --chat: prime the reply with <think>")
    prompt.add_argument("--special", action="store_true", help="read special-token names in the text as tokens")
    add_sampling_args(generate, max_tokens=256)
    generate.add_argument("--n", type=int, default=1, help="samples of the prompt")
    generate.add_argument("--stop", action="append", help="stop at this special token or id (repeatable; default: "
                          "none, or the end-of-turn tokens with --chat)")
    generate.add_argument("--json", action="store_true", help="print prompt and completion token ids as JSON")
    generate.set_defaults(func=cmd_generate)

    chat = areas.add_parser("chat", help="an interactive conversation in CWM's chat format")
    add_model_args(chat)
    chat.add_argument("--system", help="the system prompt (default: CWM's reasoning prompt with --think, else none)")
    chat.add_argument("--think", action="store_true", help="reasoning mode: replies start with <think>")
    add_sampling_args(chat, max_tokens=1024)
    chat.set_defaults(func=cmd_chat)

    debug = areas.add_parser("debug", help="the neural debugger: step through a program with every frame "
                                           "predicted by the model")
    debug.add_argument("file", help="the Python file")
    debug.add_argument("--call", help="the entry call, e.g. 'f(3, [1, 2])'; just 'f': the model samples the "
                      "arguments (default: the call the file ends with)")
    add_model_args(debug)
    add_sampling_args(debug, max_tokens=512)
    debug.add_argument("--max-frames", type=int, default=1000, help="frames continue, out and --predict predict "
                       "at most")
    mode = debug.add_mutually_exclusive_group()
    mode.add_argument("--predict", action="store_true", help="no prompt: predict the whole trace and compare it "
                      "with the real one (a table, then a JSON summary)")
    mode.add_argument("--web", action="store_true", help="serve the debugger as a page on 127.0.0.1")
    debug.add_argument("--port", type=int, default=8765, help="--web's port (0: any free one)")
    debug.add_argument("--json", action="store_true", help="with --predict: only the JSON summary")
    debug.set_defaults(func=cmd_debug)
