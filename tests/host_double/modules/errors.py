"""``modules.errors`` of the double: the host's console error reporting (``report`` and ``display``).

Both print to stderr and also append to ``exception_records`` so a test can see what was reported.
"""
import sys
import traceback

exception_records = []


def _remember(kind: str, text: str) -> None:
    exception_records.append((kind, text))


def report(message: str, *, exc_info: bool = False) -> None:
    """A '***'-prefixed message on stderr, with the exception being handled when `exc_info`."""
    sys.stderr.write("".join(f"*** {line}\n" for line in message.splitlines()))
    if exc_info:
        sys.stderr.write(traceback.format_exc() + "---\n")
    _remember("report", message)


def display(e: BaseException, task, *, full_traceback: bool = False) -> None:
    """What the host prints when a task failed with `e`: the task, the error type, the traceback."""
    sys.stderr.write(f"{task or 'error'}: {type(e).__name__}\n{traceback.format_exc()}\n")
    _remember("display", f"{task}: {e}")
