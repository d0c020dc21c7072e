"""Tests of `implementation=` dispatch: which hardware compiles the Pallas kernels."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mish_jax.kernels.jax_compat import AbstractDevice

import mish_jax
from mish_jax._src import dispatch


def _cuda_gpu(kind: str, capability: str) -> types.SimpleNamespace:
  return types.SimpleNamespace(
    platform="gpu",
    device_kind=kind,
    compute_capability=capability,
    client=types.SimpleNamespace(platform_version="PJRT C API\ncuda 13000"),
  )


H100 = _cuda_gpu("NVIDIA H100 80GB HBM3", "9.0")
H200 = _cuda_gpu("NVIDIA H200", "9.0")
A100 = _cuda_gpu("NVIDIA A100-SXM4-80GB", "8.0")
B200 = _cuda_gpu("NVIDIA B200", "10.0")
MI300 = types.SimpleNamespace(
  platform="gpu",
  device_kind="AMD Instinct MI300X",
  compute_capability="gfx942",
  client=types.SimpleNamespace(platform_version="PJRT C API\nrocm 60300"),
)
# Neither a compute capability nor a client: what an unknown plugin may expose.
BARE_GPU = types.SimpleNamespace(platform="gpu", device_kind="some GPU")
TPU = types.SimpleNamespace(platform="tpu", device_kind="TPU v5 lite")
CPU = jax.devices("cpu")[0]


@pytest.fixture
def default_device(monkeypatch):
  """Makes `device` the default device that dispatch sees."""

  def use(device):
    monkeypatch.setattr(dispatch.jax, "devices", lambda *args: [device])

  return use


@pytest.mark.parametrize(
  "device, compiles",
  [(H100, True), (H200, True), (A100, False), (B200, False), (MI300, False)]
  + [(BARE_GPU, False), (TPU, False), (CPU, False)],
  ids=["H100", "H200", "A100", "B200", "MI300", "bare-gpu", "TPU", "CPU"],
)
def test_pallas_compiles_only_on_hopper(device, compiles, default_device):
  assert mish_jax.pallas_compiles(device) is compiles
  default_device(device)
  assert mish_jax.pallas_compiles() is compiles


def test_pallas_compiles_on_this_host_matches_its_devices():
  device = jax.devices()[0]
  expected = device.platform == "gpu" and str(device.compute_capability).startswith("9.")
  assert mish_jax.pallas_compiles() is expected
  assert "pallas_compiles" in mish_jax.__all__


@pytest.mark.parametrize(
  "device", [H100, A100, B200, MI300, TPU, CPU], ids=["H100", "A100", "B200", "MI300", "TPU", "CPU"]
)
@pytest.mark.parametrize("implementation", [None, "xla"])
def test_xla_everywhere(device, implementation, default_device):
  default_device(device)
  assert dispatch.resolve_implementation(implementation) == ("xla", False)


def test_pallas_compiled_on_hopper_and_interpreted_on_cpu(default_device):
  default_device(H200)
  assert dispatch.resolve_implementation("pallas") == ("pallas", False)
  default_device(CPU)
  assert dispatch.resolve_implementation("pallas") == ("pallas", True)


@pytest.mark.parametrize(
  "device, names",
  [
    (A100, ("A100", "8.0")),
    (B200, ("B200", "10.0")),
    (MI300, ("MI300X",)),
    (BARE_GPU, ("some GPU",)),
    (TPU, ("TPU",)),
  ],
  ids=["A100", "B200", "MI300", "bare-gpu", "TPU"],
)
def test_pallas_refused_elsewhere_with_the_way_out(device, names, default_device):
  default_device(device)
  with pytest.raises(NotImplementedError, match="implementation='xla'") as error:
    dispatch.resolve_implementation("pallas")
  for name in names:
    assert name in str(error.value)


@pytest.mark.parametrize("implementation", ["XLA", "triton", "", 0])
def test_bad_implementation(implementation):
  with pytest.raises(ValueError, match="implementation must be"):
    dispatch.resolve_implementation(implementation)


def test_public_ops_refuse_pallas_on_an_ampere_gpu(default_device):
  default_device(A100)
  # A shape no other test uses, so that no cached trace from the CPU answers instead.
  x = jax.numpy.zeros((1, 2, 3, 5, 7), jax.numpy.float16)
  with pytest.raises(NotImplementedError, match="implementation='xla'"):
    mish_jax.mish(x, implementation="pallas")


def test_public_ops_on_a_cpu_placed_array_take_xla_on_a_gpu_host(default_device):
  default_device(A100)  # Pallas would be refused there; the arrays live on the CPU.
  x = jax.device_put(jnp.linspace(-3.0, 3.0, 12).reshape(3, 4), CPU)
  kernel = jax.device_put(jnp.eye(4, 5), CPU)
  np.testing.assert_array_equal(
    mish_jax.mish(x, implementation="pallas"), mish_jax.mish(x, implementation="xla")
  )
  np.testing.assert_array_equal(
    mish_jax.linear_mish(x, kernel, implementation="pallas"),
    mish_jax.linear_mish(x, kernel, implementation="xla"),
  )


ABSTRACT_H100 = AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=132, platform="gpu")


def test_target_device_of_a_concrete_array_is_its_device(default_device):
  default_device(H100)  # A GPU host: the array's CPU placement decides, not the default.
  x = jax.device_put(jnp.ones(3), CPU)
  assert dispatch.target_device([x]) == CPU
  assert dispatch.resolve_implementation("pallas", x) == ("xla", False)


def test_target_device_of_a_traced_operand_is_its_meshs():
  mesh = jax.sharding.AbstractMesh((1,), ("x",), abstract_device=ABSTRACT_H100)
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  found = []
  jax.jit(lambda x: found.append(dispatch.target_device([x])) or x).trace(
    jax.ShapeDtypeStruct((4,), jnp.float32, sharding=sharding)
  )
  assert found == [ABSTRACT_H100]
  assert mish_jax.pallas_compiles(ABSTRACT_H100)  # Hopper by its kind: no capability to ask.


def test_target_device_of_the_abstract_mesh_in_context():
  mesh = jax.sharding.AbstractMesh((1,), ("x",), abstract_device=ABSTRACT_H100)
  with jax.sharding.use_abstract_mesh(mesh):
    assert dispatch.target_device() == ABSTRACT_H100
    assert dispatch.resolve_implementation("pallas") == ("pallas", False)


def test_cpu_computation_on_a_gpu_host_takes_xla(default_device):
  default_device(H100)
  with jax.default_device(CPU):
    assert dispatch.target_device() == CPU
    assert dispatch.resolve_implementation("pallas") == ("xla", False)
  assert dispatch.resolve_implementation("pallas") == ("pallas", False)
