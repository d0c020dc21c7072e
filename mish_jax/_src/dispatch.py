"""The `implementation=` switch shared by every public op, and the hardware it may pick."""

from __future__ import annotations

from typing import Literal

import jax

Implementation = Literal["xla", "pallas"]
IMPLEMENTATIONS: tuple[str, ...] = ("xla", "pallas")

# The kernels are written for Mosaic GPU on Hopper: TMA bulk copies, mbarriers and 227 KiB of
# shared memory per CTA. Other GPUs would need their own tuning, or other instructions, first.
_COMPILED_COMPUTE_CAPABILITY_MAJOR = 9


def _gpu_runtime(device: jax.Device) -> str | None:
  """`"cuda"`, `"rocm"`, or None for a device that is not a GPU."""
  if device.platform not in ("gpu", "cuda", "rocm"):
    return None
  client = getattr(device, "client", None)
  platform_version = str(getattr(client, "platform_version", "")).lower()
  if device.platform == "rocm" or "rocm" in platform_version:
    return "rocm"
  return "cuda"


def _compute_capability(device: jax.Device) -> tuple[int, int] | None:
  """A CUDA device's compute capability, e.g. (9, 0) for an H100; None if it has none."""
  try:
    major, minor = str(device.compute_capability).split(".")[:2]
    return int(major), int(minor)
  except (AttributeError, ValueError):
    return None


def _describe(device: jax.Device) -> str:
  capability = _compute_capability(device)
  kind = str(getattr(device, "device_kind", device.platform))
  if capability is None:
    return kind
  return f"{kind} (compute capability {capability[0]}.{capability[1]})"


def pallas_compiles(device: jax.Device | None = None) -> bool:
  """Whether the Pallas kernels compile for `device`: a CUDA GPU of compute capability 9.x.

  Never raises: a CPU, TPU, ROCm or other CUDA GPU is simply False.

  Args:
    device: the device to ask about; the default device when None.

  Returns:
    True on Hopper GPUs (H100, H200), False elsewhere.

  Example:
    >>> import mish_jax
    >>> mish_jax.pallas_compiles()  # On a CPU.
    False
  """
  device = jax.devices()[0] if device is None else device
  if _gpu_runtime(device) != "cuda":
    return False
  capability = _compute_capability(device)
  return capability is not None and capability[0] == _COMPILED_COMPUTE_CAPABILITY_MAJOR


def resolve_implementation(implementation: str | None) -> tuple[Implementation, bool]:
  """Validates `implementation` and picks one for the default device.

  Args:
    implementation: `None` (the fastest for the backend: XLA on every backend measured so far),
      `"xla"` or `"pallas"`.

  Returns:
    `(implementation, interpret)`: `interpret` is True when Pallas runs its kernels under Mosaic
    GPU's interpret mode, on a CPU.

  Raises:
    ValueError: for any other value.
    NotImplementedError: for `"pallas"` on a GPU or TPU the kernels do not compile for (anything
      but a CUDA GPU of compute capability 9.x).
  """
  if implementation is not None and implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation must be None, 'xla' or 'pallas', got {implementation!r}")
  if implementation is None or implementation == "xla":
    return "xla", False
  device = jax.devices()[0]
  if pallas_compiles(device):
    return "pallas", False
  if device.platform == "cpu":
    return "pallas", True
  runtime = _gpu_runtime(device)
  reason = (
    "the Pallas kernels are written for Mosaic GPU on Hopper (compute capability 9.x)"
    if runtime == "cuda"
    else "the Pallas kernels are written for Mosaic GPU on NVIDIA Hopper GPUs"
  )
  raise NotImplementedError(
    f"implementation='pallas' does not run on {_describe(device)}: {reason}; "
    "use implementation='xla' (or None) there"
  )
