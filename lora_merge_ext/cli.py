"""Command line: merge, realize, inspect, ui.  Bad input: one `error:` line on stderr, exit status 2."""
from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys

from . import api
from .atomic_write import check_target
from .errors import LoraMergeError
from .inspect_file import describe, format_description
from .sigma import parse_number, show


DASH_HINT = "; a value that starts with '-' goes after '=', e.g. --weights=-0.5,1 or --sigma=-1,0"


class OneLineParser(argparse.ArgumentParser):
    """argparse with errors as LoraMergeError (printed as one `error:` line, status 2)."""

    def error(self, message: str):  # one line, status 2
        if message.endswith("expected one argument"):
            message += DASH_HINT
        raise LoraMergeError(message)


def _finite(text: str) -> float:
    """An argparse type: one finite number (nan and inf are refused, as everywhere else)."""
    try:
        return parse_number(text, "")
    except LoraMergeError:
        raise argparse.ArgumentTypeError(f"'{show(text)}' is not a finite number") from None


def _weights(text: str) -> list[float]:
    """--weights: comma-separated finite numbers, one per input (or one for all)."""
    if not text.strip():
        raise LoraMergeError("--weights is empty; give one weight per input, e.g. --weights=1,0.5")
    what = f"--weights '{show(text)}'"
    return [parse_number(x, what) for x in text.split(",")]


class _Progress:
    """The progress line on stderr; `end_line` closes it so that an error message starts a line of its own."""
    open = False

    def __call__(self, done: int, total: int, _name: str) -> None:
        self.open = done != total
        print(f"\rmerging: {done}/{total} modules", end="" if self.open else "\n", file=sys.stderr, flush=True)

    def end_line(self) -> None:
        if self.open:
            print(file=sys.stderr, flush=True)
            self.open = False


_progress = _Progress()


def program_name() -> str:
    """How the user ran this: the installed `lora-merge` script or `python -m lora_merge_ext`."""
    script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "lora-merge" if script.startswith("lora-merge") else "python -m lora_merge_ext"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=program_name(), description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    m = sub.add_parser("merge", help="merge two or more LoRAs into one file")
    m.add_argument("inputs", nargs="+", help="LoRA files (.safetensors)")
    m.add_argument("-o", "--output", required=True)
    m.add_argument("--mode", default="concat", help="concat (aliases join, ljl), add or svd [concat]")
    m.add_argument("--weights", default=None,
                   help="one weight per input (or one for all), e.g. 1,0.5 (use --weights=-0.5,1)")
    m.add_argument("--rank", type=int, default=None, help="svd: output rank [largest input rank]")
    m.add_argument("--conv-rank", type=int, default=None, help="svd: rank for 3x3 convolutions [--rank]")
    m.add_argument("--energy", type=float, default=None,
                   help="svd: dynamic rank keeping this fraction of the Frobenius energy (0-1], capped by --rank "
                        "(default: the largest input rank)")
    m.add_argument("--lbw", default=None, help="block weights: one spec for all inputs or SPEC;SPEC;… per input")
    m.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="saved dtype [fp32]")
    m.add_argument("--device", default="cpu", help="cpu or cuda")
    m.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    m.add_argument("--quiet", action="store_true", help="no progress on stderr")
    m.add_argument("--report", action="store_true",
                   help="also measure the error of a concat (add and svd are always measured)")

    r = sub.add_parser("realize", help="bake a Σ vector (and lbw) into a plain LoRA")
    r.add_argument("input", help="a joined (or plain) LoRA file")
    r.add_argument("-o", "--output", required=True)
    r.add_argument("--sigma", required=True, help="Σ vector: 1 | 1,0 | 2.5*8,0*4 | NAME=1,NAME2=0.5")
    r.add_argument("--lbw", default=None, help="block weights: 17/26 (SD1) or 12/20 (SDXL) values, or a preset name")
    r.add_argument("--te", type=_finite, default=1.0, help="text encoder multiplier [1]")
    r.add_argument("--unet", type=_finite, default=1.0, help="UNet multiplier [1]")
    r.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="saved dtype [fp32]")
    r.add_argument("--overwrite", action="store_true", help="replace an existing output file")

    i = sub.add_parser("inspect", help="family, modules, ranks, components, hash and metadata of a LoRA")
    i.add_argument("file", help="a LoRA file")
    i.add_argument("--json", action="store_true", help="print one JSON object instead of text")

    sub.add_parser("ui", help="serve the merge tab in a browser (see `ui --help`)", add_help=False)
    return p


def _merge(args) -> int:
    inputs = args.inputs
    api.check_output_name(args.output)
    check_target(args.output, overwrite=args.overwrite, protect=inputs)
    weights = _weights(args.weights) if args.weights is not None else None
    lbw = args.lbw.split(";") if args.lbw is not None else None
    saved, report = api.merge_to_file(inputs, args.output, mode=args.mode, weights=weights, lbw=lbw, rank=args.rank,
                                      conv_rank=args.conv_rank, energy=args.energy, device=args.device,
                                      progress=None if args.quiet else _progress,
                                      report=True if args.report else None, dtype=args.dtype,
                                      overwrite=args.overwrite)
    print(f"wrote {saved.path} ({saved.size / 2**20:.1f} MiB, sha256 {saved.sha256[:12]})")
    print(report.format())
    return 0


def _realize(args) -> int:
    api.check_output_name(args.output)
    check_target(args.output, overwrite=args.overwrite, protect=[args.input])
    lora = api.realize(args.input, args.sigma, lbw=args.lbw, te=args.te, unet=args.unet)
    if not lora.modules:
        raise LoraMergeError(f"Σ '{show(args.sigma)}' (with this lbw, te and unet) switches every rank off: "
                             "the output would be an empty LoRA")
    saved = api.save(lora, args.output, dtype=args.dtype, overwrite=args.overwrite, protect=[args.input])
    print(f"wrote {saved.path} ({len(lora.modules)} modules, {saved.size / 2**20:.1f} MiB, sha256 {saved.sha256[:12]})")
    return 0


def _inspect(args) -> int:
    info = describe(args.file)
    print(json.dumps(info, indent=2) if args.json else format_description(info))
    return 0


def run() -> None:
    """The program: `lora-merge …` and `python -m lora_merge_ext …`."""
    # what is imported by now (torch and all) lives as long as the command: keep the garbage
    # collector from walking it (reading two SD1.5 headers took 0.11-0.15 s in a fresh process
    # with it walking, 0.03 s without)
    gc.freeze()
    if sys.argv[1:2] != ["ui"]:  # the server stops on these signals its own way
        _stop_on_signals()
    _leave(main())


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived; handled as Ctrl-C is, so a write in progress removes its temporary file."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _stop_on_signals() -> None:
    """Let `timeout`, a closed terminal or a service manager stop a command the way Ctrl-C does."""
    def stop(signum, _frame):
        raise Stopped(signum)

    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), stop)


def _leave(code: int) -> None:
    """Exit without tearing the interpreter down.  After a refused merge, input hashes may still be
    running on daemon threads; a thread stopped by the teardown in the middle of a call once aborted
    the process (SIGABRT instead of status 2).  Everything the command writes is closed by now."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "ui":
        from .ui.standalone import main as ui_main
        return ui_main(argv[1:])
    try:
        args = build_parser().parse_args(argv)
        return {"merge": _merge, "realize": _realize, "inspect": _inspect}[args.command](args)
    except LoraMergeError as exc:
        _progress.end_line()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        _progress.end_line()
        written = getattr(exc, "written", None)  # a signal just after the file was put in place
        print(f"error: interrupted after {written} was written" if written else
              "error: interrupted; nothing was written", file=sys.stderr)
        return 128 + getattr(exc, "signum", signal.SIGINT)
    except BrokenPipeError:  # stdout closed early (`… | head -1`): the reader has what it wanted
        return 0
