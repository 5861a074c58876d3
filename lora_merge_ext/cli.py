"""Command line: merge, realize, inspect, ui.  Bad input: one `error:` line on stderr, exit status 2."""
from __future__ import annotations

import argparse
import json
import os
import sys

from . import api
from .atomic_write import check_target
from .errors import LoraMergeError
from .inspect_file import describe, format_description


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, status 2
        raise LoraMergeError(message)


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise LoraMergeError(f"{what} {text!r} must be comma-separated numbers, e.g. 1,0.5") from None


def _progress(done: int, total: int, _name: str) -> None:
    end = "\n" if done == total else ""
    print(f"\rmerging: {done}/{total} modules", end=end, file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m lora_merge_ext", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    m = sub.add_parser("merge", help="merge two or more LoRAs into one file")
    m.add_argument("inputs", nargs="+", help="LoRA files (.safetensors)")
    m.add_argument("-o", "--output", required=True)
    m.add_argument("--mode", default="concat", help="concat (aliases join, ljl), add or svd [concat]")
    m.add_argument("--weights", default=None, help="one weight per input, e.g. 1,0.5 (use --weights=-0.5,1)")
    m.add_argument("--rank", type=int, default=None, help="svd: output rank [largest input rank]")
    m.add_argument("--conv-rank", type=int, default=None, help="svd: rank for 3x3 convolutions [--rank]")
    m.add_argument("--energy", type=float, default=None,
                   help="svd: dynamic rank keeping this fraction of the Frobenius energy (0-1], capped by --rank")
    m.add_argument("--lbw", default=None, help="block weights: one spec for all inputs or SPEC;SPEC;… per input")
    m.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    m.add_argument("--device", default="cpu", help="cpu or cuda")
    m.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    m.add_argument("--quiet", action="store_true", help="no progress on stderr")
    m.add_argument("--report", action="store_true",
                   help="also measure the error of a concat (add and svd are always measured)")

    r = sub.add_parser("realize", help="bake a Σ vector (and lbw) into a plain LoRA")
    r.add_argument("input")
    r.add_argument("-o", "--output", required=True)
    r.add_argument("--sigma", required=True, help="Σ vector: 1 | 1,0 | 2.5*8,0*4 | NAME=1,NAME2=0.5")
    r.add_argument("--lbw", default=None)
    r.add_argument("--te", type=float, default=1.0)
    r.add_argument("--unet", type=float, default=1.0)
    r.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    r.add_argument("--overwrite", action="store_true")

    i = sub.add_parser("inspect", help="family, modules, ranks, components, hash and metadata of a LoRA")
    i.add_argument("file")
    i.add_argument("--json", action="store_true")

    sub.add_parser("ui", help="serve the merge tab in a browser (see `ui --help`)", add_help=False)
    return p


def _merge(args) -> int:
    inputs = args.inputs
    if len(inputs) < 2 and args.mode.lower() != "svd":
        raise LoraMergeError(f"merge needs at least two inputs, got {len(inputs)}")
    check_target(args.output, overwrite=args.overwrite, protect=inputs)
    weights = _floats(args.weights, "--weights") if args.weights is not None else None
    lbw = args.lbw.split(";") if args.lbw is not None else None
    result = api.merge(inputs, mode=args.mode, weights=weights, lbw=lbw, rank=args.rank, conv_rank=args.conv_rank,
                       energy=args.energy, device=args.device, progress=None if args.quiet else _progress,
                       report=True if args.report else None)
    saved = api.save(result.lora, args.output, dtype=args.dtype, overwrite=args.overwrite, protect=inputs)
    print(f"wrote {saved.path} ({saved.size / 2**20:.1f} MiB, sha256 {saved.sha256[:12]})")
    print(result.report.format())
    return 0


def _realize(args) -> int:
    check_target(args.output, overwrite=args.overwrite, protect=[args.input])
    lora = api.realize(args.input, args.sigma, lbw=args.lbw, te=args.te, unet=args.unet)
    saved = api.save(lora, args.output, dtype=args.dtype, overwrite=args.overwrite, protect=[args.input])
    print(f"wrote {saved.path} ({len(lora.modules)} modules, {saved.size / 2**20:.1f} MiB, sha256 {saved.sha256[:12]})")
    return 0


def _inspect(args) -> int:
    info = describe(args.file)
    print(json.dumps(info, indent=2) if args.json else format_description(info))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "ui":
        from .ui.standalone import main as ui_main
        return ui_main(argv[1:])
    try:
        args = build_parser().parse_args(argv)
        return {"merge": _merge, "realize": _realize, "inspect": _inspect}[args.command](args)
    except LoraMergeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 130
