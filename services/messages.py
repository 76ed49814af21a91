"""One clear line per command-line failure: the file or field named, ids instead of list positions.

- `id_path("rack_groups.5.site", data)` -> `rack_groups[tx-s21].site`: a list position becomes the
  element's `id` when it has one (`[3]` otherwise), so a planner finds the entry in the file.
- `check_input_file` / `check_output_dir` run before any work starts (no Ray, no solve), so a typo
  in a path costs a second, not a whole run.
- `one_line(exc)` is what the command line prints for an exception; tracebacks only with --debug.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml


class CliInputError(ValueError):
    """A bad command-line input (path, flag value); the message already names it."""


def id_path(path: str, data: Any) -> str:
    """A pydantic-style dotted path with list positions replaced by the ids of the entries."""
    if not path or path.startswith("<"):
        return path
    out: list[str] = []
    node = data
    for token in path.split("."):
        if isinstance(node, list) and token.isdigit():
            index = int(token)
            item = node[index] if index < len(node) else None
            label = item.get("id") if isinstance(item, dict) else None
            out[-1:] = [f"{out[-1] if out else ''}[{label if isinstance(label, str) and label else index}]"]
            node = item
            continue
        out.append(token)
        node = node.get(token) if isinstance(node, dict) else None
    return ".".join(out)


def read_fleet_data(path: Path) -> Any:
    """The raw fleet file, for naming ids in error paths; None when it cannot be read."""
    try:
        text = Path(path).read_text()
        return yaml.safe_load(text)
    except Exception:  # noqa: BLE001 - best effort: the error being reported is the real one
        return None


def fleet_error_line(violations: list[tuple[str, str]], fleet_path: Path | None) -> str:
    data = read_fleet_data(fleet_path) if fleet_path is not None else None
    where = f"{fleet_path}: " if fleet_path is not None else ""
    named = "; ".join(f"{id_path(p, data)}: {m}" for p, m in violations)
    return f"invalid fleet {where}{named}"


def check_input_file(path: Path, what: str = "file") -> None:
    if not path.exists():
        raise CliInputError(f"{path}: no such {what}")
    if path.is_dir():
        raise CliInputError(f"{path}: is a directory, expected a {what}")
    if not os.access(path, os.R_OK):
        raise CliInputError(f"{path}: not readable")


def check_output_dir(path: Path, flag: str = "--out") -> None:
    """The folder exists and takes a file, or could be made: checked before any work, creating nothing."""
    if path.exists():
        if not path.is_dir():
            raise CliInputError(f"{flag} {path}: exists and is not a directory")
        try:
            with tempfile.NamedTemporaryFile(dir=path, prefix=".hashpivot-write-check-"):
                pass
        except OSError as exc:
            raise CliInputError(f"{flag} {path}: not writable ({exc.strerror or exc})") from None
        return
    missing = [path.absolute()]  # try it for real (root passes os.access everywhere), then leave no trace
    while not missing[-1].parent.exists():
        missing.append(missing[-1].parent)
    if not missing[-1].parent.is_dir():
        raise CliInputError(f"{flag} {path}: not writable ({missing[-1].parent} is not a directory)")
    try:
        path.mkdir(parents=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".hashpivot-write-check-"):
            pass
    except OSError as exc:
        raise CliInputError(f"{flag} {path}: not writable ({exc.strerror or exc})") from None
    finally:
        for folder in missing:
            try:
                folder.rmdir()
            except OSError:
                break


def check_output_file(path: Path, flag: str) -> None:
    check_output_dir(path.parent if str(path.parent) else Path("."), flag)
    if path.is_dir():
        raise CliInputError(f"{flag} {path}: is a directory, expected a file")


_REPEATED_WORD = re.compile(r"\b([A-Za-z]+)( \1\b)+", re.IGNORECASE)
_REPEATED_GOT = re.compile(r"(got ([^()]+?)) \(got \2\)")


def tidy(message: str) -> str:
    """No "the the", no "got 5 (got 5)", one line."""
    message = " ".join(message.split())
    message = _REPEATED_GOT.sub(r"\1", message)
    return _REPEATED_WORD.sub(r"\1", message)


def one_line(exc: BaseException, fleet_path: Path | None = None) -> str:
    """The single line the command line prints for a failure."""
    from optimizer.fleet import FleetError

    if isinstance(exc, FleetError):
        return tidy(fleet_error_line(exc.violations, fleet_path))
    if isinstance(exc, CliInputError):
        return tidy(str(exc))
    if isinstance(exc, FileNotFoundError):
        return f"{exc.filename}: no such file"
    if isinstance(exc, IsADirectoryError):
        return f"{exc.filename}: is a directory, expected a file"
    if isinstance(exc, PermissionError):
        return f"{exc.filename}: permission denied"
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror}"
    field = getattr(exc, "field", None)
    text = tidy(str(exc)) or type(exc).__name__
    if field and not text.startswith(str(field)):
        text = f"{field}: {text}"
    kind = type(exc).__name__
    if isinstance(exc, ValueError) or kind.endswith("Error") and kind.startswith(("Infeasible", "NoSolution")):
        return text
    return f"{text} ({kind}; --debug shows the traceback)"
