"""`python -m lora_merge_ext ui`: the merge tab in a browser, without the WebUI.

    python -m lora_merge_ext ui [--lora-dir DIR] [--out-dir DIR] [--host 127.0.0.1] [--port N]

With --lora-dir the tab reads and writes that folder, as in the WebUI (with --out-dir as well, merges
go there instead and both folders are offered as inputs).  Without it the tab offers the small
example LoRAs shipped in the project's examples/ folder and writes merges into a folder of your own
(--out-dir, default: a `lora-merge-ext` folder in your user data folder), so the examples stay
untouched.  The JSON routes of lora_merge_ext.http_api are served under /ljl/v1/.
"""
from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
from pathlib import Path

from ..errors import LoraMergeError
from ..safetensors_header import show
from ..shipped_files import shipped_path

EXAMPLES_DIR = shipped_path("examples")


def default_output_dir() -> Path:
    """Where merges of the examples go: the user's data folder, never the project folder."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "lora-merge-ext" / "loras"


def _listening_socket(host: str, port: int) -> socket.socket:
    """A socket listening on host:port, as uvicorn would bind it (connections wait until the server
    accepts them); OSError when it cannot be (the port is taken, or host is not an address of this
    machine).  Listening at once keeps the port: bound alone, a second program could bind it too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


_PORT_TAKEN = (errno.EADDRINUSE, errno.EACCES)  # any other bind error is the host's


def _host_error(host: str, error: OSError) -> LoraMergeError:
    return LoraMergeError(f"cannot listen on {host}: {error.strerror or error} (check --host)")


def free_port(host: str, start: int = 7860, tries: int = 100) -> socket.socket:
    """A socket listening on the first port from `start` that nothing listens on.  It is held until the
    server takes it, so no other program can take the port announced meanwhile."""
    for port in range(start, start + tries):
        try:
            return _listening_socket(host, port)
        except OSError as error:
            if error.errno not in _PORT_TAKEN:
                raise _host_error(host, error) from None
    raise LoraMergeError(f"no free port in {start}..{start + tries - 1} on {host}; pass --port")


def bind_port(host: str, port: int) -> socket.socket:
    """A socket listening on host:port; refuses, before anything is printed or built, a port this host
    cannot listen on."""
    try:
        return _listening_socket(host, port)
    except OSError as error:
        if error.errno not in _PORT_TAKEN:
            raise _host_error(host, error) from None
        raise LoraMergeError(f"cannot listen on {host}:{port}: {error.strerror or error} "
                             "(choose another --port)") from None


def url_of(host: str, port: int) -> str:
    """The address to open in a browser (an IPv6 address goes in brackets)."""
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"'{text}' is not a port number (1-65535)")
    return port


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The options; a bad one raises LoraMergeError (one line)."""
    return build_parser().parse_args(argv)


def build_parser() -> argparse.ArgumentParser:
    from ..cli import OneLineParser, program_name
    parser = OneLineParser(prog=f"{program_name()} ui", description="Serve the LoRA Merge tab in a browser.")
    parser.add_argument("--lora-dir", help="Lora folder to read inputs from and write merges into "
                                           "(default: the shipped examples, merges go to --out-dir)")
    parser.add_argument("--out-dir", help="where merges go (default: the --lora-dir, or without one "
                                          f"{default_output_dir()})")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=None, help="port (default: the first free one from 7860)")
    return parser


def folders(args: argparse.Namespace) -> list[Path]:
    """The Lora folders to serve: outputs go into the first."""
    inputs = EXAMPLES_DIR
    if args.lora_dir:
        inputs = Path(args.lora_dir).expanduser()
        if not inputs.is_dir():
            raise LoraMergeError(f"--lora-dir {inputs}: not a folder")
        if not args.out_dir:
            return [inputs]
    out_dir = Path(args.out_dir).expanduser() if args.out_dir else default_output_dir()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LoraMergeError(f"--out-dir {out_dir}: cannot create the folder ({exc.strerror or exc})") from None
    return [out_dir] if out_dir.resolve() == inputs.resolve() else [out_dir, inputs]


def make_app(lora_folders: list[Path]):
    """(gradio Blocks, MergeService) for the given folders, with the /ljl/v1 routes ready to mount."""
    from .handlers import MergeService
    from .library import LoraLibrary
    from .tab import build_tab

    service = MergeService(LoraLibrary.of(*lora_folders))
    intro = f"Lora folder: `{service.library.output_dir}`"
    if len(lora_folders) > 1:
        label = "examples" if lora_folders[1] == EXAMPLES_DIR else "also read from"
        intro += f" (merges are written here) · {label}: `{lora_folders[1]}`"
    demo = build_tab(service, title="LoRA Merge", intro=intro)
    return demo, service


def main(argv: list[str]) -> int:
    """Serve the tab until interrupted; returns the process exit code."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        args = parse_args(argv)
        lora_folders = folders(args)
        sock = free_port(args.host) if args.port is None else bind_port(args.host, args.port)
    except LoraMergeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with sock:
        return _serve(args, lora_folders, sock)


def _import_problem(exc: ImportError) -> str:
    """Why gradio and its server could not be imported: a package missing, or installed in a version
    that does not work with the others (an import inside one of them failed)."""
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return f"the ui command needs gradio ({show(exc.name)} is not installed)"
    return f"the ui command could not import gradio ({show(str(exc), 200)}: versions that do not work together)"


def _serve(args: argparse.Namespace, lora_folders: list[Path], sock: socket.socket) -> int:
    """Build the tab and serve it on the bound socket until interrupted."""
    try:
        import gradio as gr
        import uvicorn
        from fastapi import FastAPI
    except ImportError as exc:
        print(f"error: {_import_problem(exc)}: pip install 'lora-merge-ext[ui]', or pip install '.[ui]' in the "
              "source folder", file=sys.stderr)
        return 2

    from ..http_api import register
    from .offline_page import OfflinePage

    demo, service = make_app(lora_folders)
    if int(gr.__version__.split(".")[0]) >= 4:
        demo.queue(default_concurrency_limit=2)
    else:
        demo.queue(concurrency_count=2)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    register(app, service)
    app = gr.mount_gradio_app(app, demo, path="/")
    print(f"LoRA Merge: Lora folder {service.library.output_dir}", flush=True)
    port = sock.getsockname()[1]
    print(f"LoRA Merge: open {url_of(args.host, port)} in a browser (Ctrl+C to stop)", flush=True)
    config = uvicorn.Config(OfflinePage(app), host=args.host, port=port, log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
