"""JSON that someone else may have written (a world's world.json and card, an index's manifest, keyword views,
model configs, prompt lists, request bodies), parsed into one clear error when it does not parse. Python's
``json`` raises more than ``JSONDecodeError``: ``UnicodeDecodeError`` for bytes that are not UTF-8, a
``ValueError`` for an integer of over 4,300 digits (CPython's limit on int conversion), and ``RecursionError``
for arrays or objects nested past the interpreter's recursion limit (about 1,000 levels; a 200 kB file of
brackets). Each reaches the user as ``MemlabError``, so a command says ``error:`` and the app starts or refuses
with one line, never a traceback."""
from __future__ import annotations

import json
from pathlib import Path

from .errors import MemlabError, one_line

NESTED = "arrays or objects nested too deeply to parse"


def parse_json(data: str | bytes, what: str, error: type[MemlabError] = MemlabError):
    """``json.loads(data)``, or ``error("{what} is not valid JSON: ...")``."""
    try:
        return json.loads(data)
    except RecursionError:
        raise error(f"{what} is not valid JSON: {NESTED}") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError and the int limit are ValueErrors
        raise error(f"{what} is not valid JSON: {one_line(e)}") from None


def read_json(path: str | Path, error: type[MemlabError] = MemlabError):
    """A JSON file's value (``parse_json``; the message names the file), or ``error`` when it cannot be read."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise error(f"cannot read {path}: {one_line(e)}") from None
    return parse_json(data, str(path), error)


def read_object(path: str | Path, error: type[MemlabError] = MemlabError) -> dict:
    """``read_json`` of a file that must hold a JSON object (a config, a card, an info file)."""
    value = read_json(path, error)
    if not isinstance(value, dict):
        raise error(f"{path} must hold a JSON object (got {type(value).__name__})")
    return value
