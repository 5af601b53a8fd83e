"""``featurecircuits <command>``: parses arguments into a frozen request and calls the API; the only place
that prints.

Each command is one module of this package listed in :data:`COMMANDS`, with ``NAME``, ``HELP``,
``add_arguments(parser)``, a frozen ``Request`` (``Request.from_args(args)``, parsed once) and ``run(request)
-> int``; a command with subcommands sets ``request`` and ``run`` on each subparser instead. Adding a
command: its module plus one line in :data:`COMMANDS`. Nothing here imports torch at module level:
``featurecircuits --help`` and every check of options and input files answer before torch loads.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading

from .. import __version__
from . import runs
from .guards import NEW_FOLDERS, check_model_option, check_placement, remove_new_folders
from .options import ModelOptions, Parser

# The commands, in the order --help lists them: modules of this package (or dotted module paths elsewhere).
COMMANDS = ("demo", "discover", "evaluate", "curve", "compare", "features", "plot", "export", "plan", "tasks",
            "organism")


def build_parser() -> argparse.ArgumentParser:
    from ..paths import DOCS_ROOT

    parser = Parser(prog="featurecircuits", description="Sparse feature circuits in language models, found fast with "
                    "Relevance Patching (RelP). Every command takes --help.",
                    epilog=f"The docs/ the help texts name are installed with the package: {DOCS_ROOT}")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.set_defaults(verbose=False, debug=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(name if "." in name else f".{name}", __name__)
        p = sub.add_parser(module.NAME, help=module.HELP)
        if hasattr(module, "Request"):
            p.set_defaults(request=module.Request, run=module.run)
        module.add_arguments(p)
    return parser


def _own_handler(record: logging.LogRecord) -> bool:
    """Records of libraries that print through their own handler (huggingface_hub, transformers, once they
    have configured it) are not printed again by ours: that printed each offline-retry warning twice."""
    library = record.name.split(".", 1)[0]
    return library not in ("huggingface_hub", "transformers") or not logging.getLogger(library).handlers


def setup_logging(verbose: bool) -> None:
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    for handler in root.handlers:
        if _own_handler not in handler.filters:
            handler.addFilter(_own_handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text += f": {exc.filename}"
    return text


def _execute(args) -> int:
    request = args.request.from_args(args)
    model = getattr(request, "model", None)
    check_model_option(model.model if isinstance(model, ModelOptions) else model)
    if isinstance(model, ModelOptions):
        check_placement(model)
    return args.run(request)


def _cleanup() -> None:
    """After a failed or interrupted command: run folders released (completed units kept, a run folder that
    saved nothing removed) and output folders the command made removed."""
    runs.close_all()
    remove_new_folders()


def _interrupted(exc: KeyboardInterrupt) -> int:
    _cleanup()
    run = runs.ACTIVE[-1] if runs.ACTIVE else None
    saved = f"; completed work is kept in {run}: rerun the same command with --resume to continue" \
        if run is not None and run.is_dir() else ""
    terminated = isinstance(exc, runs.Terminated)
    print(f"{'terminated' if terminated else 'interrupted'}{saved}", file=sys.stderr)
    return 143 if terminated else 130


def _failed(exc: Exception, debug: bool, *, expected: bool) -> int:
    _cleanup()
    if debug:
        import traceback

        traceback.print_exc()
    if expected:  # UsageError, config errors, missing or unwritable files
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    print(f"error: unexpected {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
    if not debug:
        print("rerun with --debug for the traceback (and please report it)", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done; 2 a user error (one line: bad option, input or output); 1 an unexpected error
    (a short message; --debug prints the traceback); 130 interrupted (143 on SIGTERM)."""
    args = build_parser().parse_args(argv)  # argparse errors exit 2 with the usage line
    setup_logging(args.verbose)
    previous = {}
    runs.SIGNALLED.clear()
    runs.ACTIVE.clear()
    runs.OPEN.clear()
    NEW_FOLDERS.clear()
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, runs.on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _execute(args)
    except KeyboardInterrupt as exc:
        return _interrupted(exc)
    except (ValueError, OSError) as exc:
        return _failed(exc, args.debug, expected=True)
    except Exception as exc:
        return _failed(exc, args.debug, expected=False)
    finally:
        runs.close_all()
        NEW_FOLDERS.clear()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
