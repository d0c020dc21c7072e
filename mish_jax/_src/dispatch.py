"""The `implementation=` switch shared by every public op, and the hardware it may pick."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

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


# What an abstract device (of a mesh, or a deviceless compile's topology) says: its kind only.
_HOPPER_KINDS = re.compile(r"NVIDIA (GH200|H100|H200|H800|H20)\b")


def _compute_capability(device: jax.Device) -> tuple[int, int] | None:
  """A CUDA device's compute capability, e.g. (9, 0) for an H100; None if it has none."""
  try:
    major, minor = str(device.compute_capability).split(".")[:2]
    return int(major), int(minor)
  except (AttributeError, ValueError):
    kind = getattr(device, "device_kind", "")
    return (9, 0) if isinstance(kind, str) and _HOPPER_KINDS.match(kind) else None


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


def target_device(operands: Sequence[Any] = ()) -> Any:
  """The device a computation on `operands` runs on, as far as they and the context say.

  In order: a committed concrete array's device (an uncommitted one follows the computation);
  the abstract device of a traced operand's mesh (under
  `jit` with `NamedSharding`s, or a deviceless compile's topology); that of the abstract mesh in
  context (`shard_map`, `jax.sharding.use_mesh`); the `jax.default_device` in context; the
  default device. An uncommitted computation runs on the last.
  """
  arrays = [operand for operand in operands if isinstance(operand, jax.Array)]
  for array in arrays:
    if not isinstance(array, jax.core.Tracer) and getattr(array, "committed", True):
      return min(array.sharding.device_set, key=lambda device: device.id)
  for array in arrays:
    mesh = getattr(jax.typeof(array).sharding, "mesh", None)
    if (device := getattr(mesh, "abstract_device", None)) is not None:
      return device
  if (device := jax.sharding.get_abstract_mesh().abstract_device) is not None:
    return device
  default = jax.config.jax_default_device
  if isinstance(default, str):
    return jax.devices(default)[0]
  return default if default is not None else jax.devices()[0]


def resolve_implementation(
  implementation: str | None, *operands: Any
) -> tuple[Implementation, bool]:
  """Validates `implementation` and picks one for the device the operands run on.

  Args:
    implementation: `None` (the fastest for the backend: XLA on every backend measured so far),
      `"xla"` or `"pallas"`.
    *operands: the op's array operands; `target_device` finds where they run.

  Returns:
    `(implementation, interpret)`. `"pallas"` compiles the kernels on a Hopper GPU. On a CPU it
    runs them under Mosaic GPU's interpret mode (`interpret` True) where the CPU is the default
    device (a host without a GPU), and takes the XLA path where it is not: on a GPU host a
    computation placed on its CPU would otherwise run a simulation of the GPU.

  Raises:
    ValueError: for any other value.
    NotImplementedError: for `"pallas"` on a GPU or TPU the kernels do not compile for (anything
      but a CUDA GPU of compute capability 9.x).
  """
  if implementation is not None and implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation must be None, 'xla' or 'pallas', got {implementation!r}")
  if implementation is None or implementation == "xla":
    return "xla", False
  device = target_device(operands)
  if pallas_compiles(device):
    return "pallas", False
  if device.platform == "cpu":
    return ("pallas", True) if jax.devices()[0].platform == "cpu" else ("xla", False)
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
