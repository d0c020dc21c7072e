"""Files that a run writes and a resumed run trusts: atomic, checksummed, verified on reading.

* `write_json` writes a results file atomically and seals it: its top-level "sha256" is the sum
  of its canonical text without that key. `read_json` refuses a file that is not exactly what
  `write_json` wrote (a bit flip anywhere changes either the values, and so the sum, or the
  canonical text).
* `file_sums` and `verify_sums`: the sha256 of every file under a folder (a checkpoint), recorded
  at save and checked at restore.
* `expect_same` names the settings in which a stored run differs from the one asked for.

Every refusal is a `cli.Fault`: one line that names the file and says how to start over.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from experiments.cli import Fault

CHECKSUM_KEY = "sha256"


def write_bytes(path: Path, data: bytes) -> None:
  """Writes `data` under a temporary name, flushed to disk, then renames it over `path`.

  A reader, or a run killed at any moment, sees the old file or the new one, never half of one.
  """
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # mkstemp makes it private
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def _canonical(obj: Any) -> str:
  return json.dumps(obj, indent=2) + "\n"


def _sum(obj: Mapping[str, Any]) -> str:
  body = {key: value for key, value in obj.items() if key != CHECKSUM_KEY}
  return hashlib.sha256(_canonical(body).encode()).hexdigest()


def write_json(path: Path, obj: Mapping[str, Any]) -> None:
  """Writes `obj` (a JSON object) to `path` atomically, sealed with its sha256 (see the module)."""
  body = {key: value for key, value in obj.items() if key != CHECKSUM_KEY}
  write_bytes(path, _canonical({**body, CHECKSUM_KEY: _sum(body)}).encode())


def read_json(path: Path, *, start_over: str) -> dict[str, Any]:
  """Reads a file of `write_json`, verifying its seal.

  Args:
    path: the file.
    start_over: what the user can do instead, for the error (e.g. "choose another --out").

  Returns:
    The object, without its checksum.

  Raises:
    Fault: the file is unreadable, not a sealed JSON object, or fails its checksum.
  """
  try:
    text = path.read_text()
  except (OSError, UnicodeDecodeError) as err:
    raise Fault(f"{path} is unreadable ({err}); {start_over}") from None
  try:
    obj = json.loads(text)
  except ValueError as err:
    raise Fault(f"{path} is not valid JSON (truncated or damaged: {err}); {start_over}") from None
  if not isinstance(obj, dict) or CHECKSUM_KEY not in obj:
    raise Fault(f"{path} is not a results file of this project (no checksum); {start_over}")
  if _canonical(obj) != text or obj[CHECKSUM_KEY] != _sum(obj):
    raise Fault(f"{path} fails its sha256 check (changed since it was written); {start_over}")
  del obj[CHECKSUM_KEY]
  return obj


def file_sums(folder: Path) -> dict[str, str]:
  """The sha256 of every file under `folder`, by path relative to it."""
  return {
    str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
    for path in sorted(folder.rglob("*"))
    if path.is_file()
  }


def verify_sums(folder: Path, sums: Mapping[str, str], *, start_over: str) -> None:
  """Checks that `folder` holds exactly the files of `sums`, with those sha256 sums.

  Raises:
    Fault: a file is missing, extra or changed.
  """
  try:
    actual = file_sums(folder)
  except OSError as err:
    raise Fault(f"{folder} is unreadable ({err}); {start_over}") from None
  for name in sorted(set(sums) | set(actual)):
    if name not in actual:
      raise Fault(f"{folder / name} is missing; {start_over}")
    if name not in sums:
      raise Fault(f"{folder / name} was not part of the saved checkpoint; {start_over}")
    if actual[name] != sums[name]:
      raise Fault(f"{folder / name} fails its sha256 check (changed since saved); {start_over}")


def differences(stored: Any, expected: Any, prefix: str = "") -> list[str]:
  """The keys (dotted paths) where `stored` differs from `expected`, JSON-wise.

  Only the keys of `expected` count; a dict on both sides is compared key by key.
  """
  expected = json.loads(json.dumps(expected))  # tuples as lists, as they are stored
  if isinstance(expected, dict) and isinstance(stored, dict):
    return [
      name
      for key, value in expected.items()
      for name in differences(stored.get(key), value, f"{prefix}{key}.")
    ]
  return [] if stored == expected else [prefix.removesuffix(".") or "(the whole record)"]


def expect_same(stored: Mapping[str, Any], expected: Mapping[str, Any], path: Path) -> None:
  """Refuses to resume `path` when its `stored` settings differ from `expected`.

  Raises:
    Fault: naming every differing key with its stored and asked-for values (briefly).
  """
  keys = differences(stored, expected)
  if not keys:
    return

  def value(obj: Any, key: str) -> str:
    for part in key.split("."):
      obj = obj.get(part) if isinstance(obj, dict) else None
    text = json.dumps(obj)
    return text if len(text) <= 40 else text[:37] + "..."

  asked = json.loads(json.dumps(expected))
  named = ", ".join(f"{key} {value(stored, key)} (now {value(asked, key)})" for key in keys)
  raise Fault(
    f"{path} was made with other settings: {named}; resume with the same flags or choose "
    "another --out"
  )


def read_matching(path: Path, expected: Mapping[str, Any]) -> dict[str, Any]:
  """The results file at `path`, verified (`read_json`) and made with `expected` settings.

  Raises:
    Fault: the file is damaged, or differs from `expected` (see `expect_same`).
  """
  stored = read_json(path, start_over="choose another --out, or delete it to start over")
  expect_same(stored, expected, path)
  return stored
