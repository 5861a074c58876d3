"""``modules.errors``: console error reporting.  ``exception_records`` lets tests see what was reported."""
import sys
import traceback

exception_records = []


def record_exception():
    _, e, tb = sys.exc_info()
    if e is not None:
        exception_records.append((e, traceback.extract_tb(tb)))


def report(message: str, *, exc_info: bool = False) -> None:
    """Print a message to stderr with '***' in front; with exc_info, the current traceback too."""
    record_exception()
    for line in message.splitlines():
        print("***", line, file=sys.stderr)
    if exc_info:
        print(traceback.format_exc(), file=sys.stderr)
        print("---", file=sys.stderr)
    exception_records.append(("report", message))


def display(e: Exception, task, *, full_traceback=False):
    record_exception()
    print(f"{task or 'error'}: {type(e).__name__}", file=sys.stderr)
    print(traceback.format_exc(), file=sys.stderr)
    exception_records.append(("display", f"{task}: {e}"))


def print_error_explanation(message):
    record_exception()
    print(message, file=sys.stderr)
