"""``opencwm model``: the CWM transformer's arithmetic without weights.

    opencwm model info cwm-32b --quant int8 --context 131072 --gpu-gb 80 [--json]
"""

from __future__ import annotations

import json
from pathlib import Path

from opencwm.errors import UsageError as CliError


def cmd_model_info(args) -> int:
    from dataclasses import asdict

    from opencwm.model.config import PRESETS, CwmConfig, preset
    from opencwm.model.memory import Runtime, serving_memory

    if args.model in PRESETS:
        config = preset(args.model)
    else:
        path = Path(args.model)
        config_path = path / "config.json" if path.is_dir() else path
        if not config_path.exists():
            raise CliError(f"{args.model}: not a preset ({', '.join(PRESETS)}) nor a checkpoint directory")
        try:
            config = CwmConfig.load(config_path)
        except (ValueError, TypeError) as exc:
            raise CliError(f"{config_path}: {exc}") from None
    if args.context < 1 or args.batch < 1:
        raise CliError("--context and --batch must be positive")
    if not 0 < args.gpu_utilization <= 1 or args.prefill_chunk < 1 or args.cuda_context_gib < 0:
        raise CliError("--gpu-utilization must be in (0, 1], --prefill-chunk positive, --cuda-context-gib >= 0")
    runtime = Runtime(gpu_utilization=args.gpu_utilization, cuda_context_gib=args.cuda_context_gib,
                      prefill_chunk=args.prefill_chunk)
    memory = serving_memory(config, quant=None if args.quant == "bf16" else args.quant, context=args.context,
                            batch=args.batch, runtime=runtime)
    n_global = config.layer_types.count("full_attention")
    report = {
        "model": args.model, "parameters": config.num_parameters,
        "parameters_billions": round(config.num_parameters / 1e9, 3),
        "quant": args.quant, "context": args.context, "batch": args.batch, "global_layers": n_global,
        "local_layers": config.num_hidden_layers - n_global, "sliding_window": config.sliding_window,
        **memory.as_dict(), "assumptions": asdict(runtime),
    }
    if args.gpu_gb is not None:
        report["gpu_gib"] = args.gpu_gb
        report["usable_gib"] = round(args.gpu_gb * runtime.gpu_utilization, 2)
        report["fits"] = memory.fits(args.gpu_gb, runtime)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"model        {args.model}: {report['parameters_billions']} B parameters "
          f"({config.num_hidden_layers} layers: {n_global} global, {report['local_layers']} local, "
          f"window {config.sliding_window})")
    print(f"weights      {report['weights_gib']} GiB ({args.quant})")
    print(f"KV cache     {report['kv_cache_gib']} GiB (bf16, context {args.context}, batch {args.batch}; "
          f"local layers capped at {min(args.context, config.sliding_window)} tokens)")
    print(f"activations  {report['activations_gib']} GiB (a prefill chunk of "
          f"{min(runtime.prefill_chunk, args.context * args.batch)} tokens)")
    print(f"CUDA context {runtime.cuda_context_gib} GiB")
    print(f"total        {report['total_gib']} GiB")
    if args.gpu_gb is not None:
        verdict = "fits" if report["fits"] else "does NOT fit"
        print(f"GPU          {verdict} in {args.gpu_gb} GiB: the engine uses {runtime.gpu_utilization:.0%} of it "
              f"({report['usable_gib']} GiB)")
    print("assumptions  a vLLM-like engine: --gpu-utilization (vLLM's gpu_memory_utilization), --cuda-context-gib, "
          "--prefill-chunk (max_num_batched_tokens) change them")
    return 0


def add_parser(areas) -> None:
    from opencwm.model.config import PRESETS

    model = areas.add_parser("model", help="the CWM transformer")
    model_commands = model.add_subparsers(dest="command", metavar="COMMAND", required=True)
    info = model_commands.add_parser(
        "info", help="parameters, weight and KV-cache memory, and whether a model fits a GPU (no weights loaded)")
    info.add_argument("model", help=f"a preset ({', '.join(PRESETS)}) or a checkpoint directory")
    info.add_argument("--quant", choices=["bf16", "int8", "fp8"], default="bf16", help="weight format")
    info.add_argument("--context", type=int, default=131072, help="tokens held in the KV cache (default: %(default)s)")
    info.add_argument("--batch", type=int, default=1, help="sequences held in the KV cache")
    info.add_argument("--gpu-gb", type=float, help="GPU memory in GiB, to check the fit")
    info.add_argument("--gpu-utilization", type=float, default=0.9,
                      help="share of the GPU the serving engine takes (vLLM's gpu_memory_utilization)")
    info.add_argument("--cuda-context-gib", type=float, default=1.0, help="CUDA context and library workspaces")
    info.add_argument("--prefill-chunk", type=int, default=8192,
                      help="tokens prefilled at once (vLLM's max_num_batched_tokens)")
    info.add_argument("--json", action="store_true", help="one JSON object on stdout")
    info.set_defaults(func=cmd_model_info)
