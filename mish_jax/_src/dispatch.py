"""The `implementation=` switch shared by every public op."""

from __future__ import annotations

from typing import Literal

import jax

Implementation = Literal["xla", "pallas"]
IMPLEMENTATIONS: tuple[str, ...] = ("xla", "pallas")

# Backends where Pallas kernels compile; elsewhere "pallas" runs them in interpret mode.
_COMPILED_PALLAS_BACKENDS = ("gpu", "cuda", "rocm", "tpu")


def resolve_implementation(implementation: str | None) -> tuple[Implementation, bool]:
  """Validates `implementation` and picks one for the default backend.

  Args:
    implementation: `None` (the fastest for the backend), `"xla"` or `"pallas"`.

  Returns:
    `(implementation, interpret)`: `interpret` is True when Pallas must run its kernels in
    interpret mode because the backend has no compiled Pallas lowering (e.g. CPU).

  Raises:
    ValueError: for any other value.
  """
  if implementation is not None and implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation must be None, 'xla' or 'pallas', got {implementation!r}")
  if implementation is None:
    # XLA's fused elementwise code is the fastest on every backend measured so far.
    return "xla", False
  interpret = jax.default_backend() not in _COMPILED_PALLAS_BACKENDS
  return implementation, interpret
