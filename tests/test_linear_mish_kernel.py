"""Tests of the fused Mosaic GPU kernel `mish_jax.kernels.linear_mish`.

The base class holds the tests. Its `Interpret` subclass runs the very kernel a Hopper GPU would,
under Mosaic GPU interpret mode (shared memory, TMA copies, barriers and `wgmma` simulated on the
CPU), with the race detector on and every buffer filled with NaN until written; its `Compiled`
subclass runs only on a Hopper GPU. The lowering tests export the kernel for CUDA from any host.
References: the unfused float32-accumulated jnp composition and its autodiff gradients.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mish_jax.kernels import linear_mish as linear_mish_kernels
from mish_jax.kernels import linear_mish_config
from mish_jax.kernels.jax_compat import InterpretGPUParams, gpu_callbacks
from mish_jax.kernels.jax_compat import interpret_pallas_call as gpu_interpret
from mish_jax.kernels.linear_mish import TuningConfig

from mish_jax._src import activations
from tests.kernel_testing import (
  DTYPES,
  assert_lowers_to_mosaic_gpu,
  cuda_module_text,
  mish64,
  mish_grad64,
)

# Relative (Frobenius) error allowed against the unfused float32-accumulated composition.
_TOL = {jnp.dtype(jnp.float32): 2e-6, jnp.dtype(jnp.bfloat16): 1e-2, jnp.dtype(jnp.float16): 2e-3}
# (M, K, N): ragged in all three, over two M tiles, three N tiles and five K steps (more than the
# four pipeline stages, so slots are refilled); all sizes 1; whole tiles (16-bit: no padding).
_INTERPRET_SHAPES = [(130, 300, 260), (1, 1, 1), (64, 64, 64)]


def _operands(x_shape, n, dtype, seed=0):
  k = x_shape[-1]
  keys = jax.random.split(jax.random.key(seed), 4)
  x = jax.random.normal(keys[0], x_shape, jnp.float32).astype(dtype)
  kernel = (jax.random.normal(keys[1], (k, n)) / np.sqrt(max(k, 1))).astype(dtype)
  bias = jax.random.normal(keys[2], (n,), jnp.float32).astype(dtype)
  g = jax.random.normal(keys[3], (*x_shape[:-1], n), jnp.float32).astype(dtype)
  return x, kernel, bias, g


def _unfused_float32(x, kernel, bias):
  """The XLA `mish_jax.mish` of a float32-accumulated matmul: the kernel's math, unfused."""
  z = jnp.matmul(x, kernel, preferred_element_type=jnp.float32) + bias.astype(jnp.float32)
  return activations.mish(z, implementation="xla").astype(x.dtype)


def _relative_error(actual, expected) -> float:
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  return float(np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-30))


# A float32 matmul on a GPU (wgmma, and XLA's default precision) reads its operands as tf32: 10
# mantissa bits kept, so a product is off by less than (1 + 2^-10)^2 - 1 < 2^-9 of itself.
_TF32_PRODUCT_ERROR = 2.0**-9
# max |mish'| and max |mish''| over the reals.
_MISH_SLOPE_MAX, _MISH_CURVATURE_MAX = 1.1, 0.65


def tf32_error_bounds(x, kernel, g) -> dict[str, float]:
  """Frobenius norms of what tf32 matmuls may add to the error of y and of each gradient.

  Element-wise: z = x @ kernel is off by at most 2^-9 (|x| @ |kernel|); y = mish(z) by 1.1 that;
  g mish'(z) by 0.65 |g| that; the gradients' matmuls add their own 2^-9 of their operands.
  """
  ax, ak, ag = (np.abs(np.asarray(a, np.float64)) for a in (x, kernel, g))
  z_error = _TF32_PRODUCT_ERROR * (ax @ ak)
  gz_error = _MISH_CURVATURE_MAX * ag * z_error
  gz_magnitude = _MISH_SLOPE_MAX * ag
  x_error = (gz_error + _TF32_PRODUCT_ERROR * gz_magnitude) @ ak.T
  kernel_error = ax.T @ (gz_error + _TF32_PRODUCT_ERROR * gz_magnitude)
  errors = dict(y=_MISH_SLOPE_MAX * z_error, x=x_error, kernel=kernel_error, bias=gz_error.sum(0))
  return {name: float(np.linalg.norm(error)) for name, error in errors.items()}


def _ids(value):
  return jnp.dtype(value).name if isinstance(value, type) else str(value)


class LinearMishKernelTestBase:
  """The fused mish(x @ kernel + bias) kernel, against the unfused compositions."""

  interpret: bool | InterpretGPUParams
  # Whether float32 matmuls run in tf32: on a GPU, the kernel's and the XLA references' alike.
  tf32 = False

  def check_call(self) -> None:
    """Called after kernel runs: what the run mode can verify beyond the results."""

  def tf32_allowance(self, dtype, x, kernel, g=None) -> dict[str, float]:
    """The absolute Frobenius error tf32 adds to the kernel's result and to the reference's."""
    if not (self.tf32 and jnp.dtype(dtype) == jnp.float32):
      return dict.fromkeys(("y", "x", "kernel", "bias"), 0.0)
    g = np.ones((x.shape[0], kernel.shape[1])) if g is None else g
    return {key: 2 * value for key, value in tf32_error_bounds(x, kernel, g).items()}

  def assert_close(self, actual, expected, tol: float, allowance: float = 0.0) -> None:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    error = np.linalg.norm(actual - expected)
    assert error <= tol * np.linalg.norm(expected) + allowance, (error, np.linalg.norm(expected))

  def _linear_mish(self, *args, **kwargs):
    return linear_mish_kernels.linear_mish(*args, interpret=self.interpret, **kwargs)

  def _run(self, *args, **kwargs):
    out = jax.block_until_ready(self._linear_mish(*args, **kwargs))
    self.check_call()
    return out

  @pytest.mark.parametrize("mkn", _INTERPRET_SHAPES, ids=str)
  @pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
  def test_forward_and_gradients_match_unfused(self, mkn, dtype):
    m, k, n = mkn
    x, kernel, bias, g = _operands((m, k), n, dtype)
    y, vjp = jax.vjp(self._linear_mish, x, kernel, bias)
    grads = vjp(g)
    jax.block_until_ready((y, grads))
    self.check_call()
    assert y.shape == (m, n) and y.dtype == dtype
    # Written everywhere: the interpreter fills unwritten memory with NaN.
    assert np.isfinite(np.asarray(y, np.float32)).all()
    tol = _TOL[jnp.dtype(dtype)]
    allowance = self.tf32_allowance(dtype, x, kernel, g)
    y_ref = linear_mish_kernels.linear_mish_reference(x, kernel, bias)
    self.assert_close(y, y_ref, tol, allowance["y"])
    # Gradients against the same derivative formula, judged against the gradients' scale with
    # mish' = 1: near mish's minimum mish'(z) = 0 and an element is all rounding error.
    grads_ref = jax.vjp(_unfused_float32, x, kernel, bias)[1](g)
    g64, x64, kernel64 = (np.asarray(a, np.float64) for a in (g, x, kernel))
    scales = (g64 @ kernel64.T, x64.T @ g64, g64.sum(0))
    for name, grad, grad_ref, scale in zip(
      ("x", "kernel", "bias"), grads, grads_ref, scales, strict=True
    ):
      assert grad.dtype == grad_ref.dtype and grad.shape == grad_ref.shape, name
      grad64, grad_ref64 = np.asarray(grad, np.float64), np.asarray(grad_ref, np.float64)
      assert np.isfinite(grad64).all(), name
      bound = 2 * tol * max(np.linalg.norm(grad_ref64), np.linalg.norm(scale)) + allowance[name]
      assert np.linalg.norm(grad64 - grad_ref64) <= bound, name

  @pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=_ids)
  def test_raw_forward_saves_z(self, dtype):
    x, kernel, bias, _ = _operands((70, 90), 40, dtype)
    y, z = linear_mish_kernels.linear_mish_forward(
      x, kernel, bias.astype(jnp.float32), interpret=self.interpret, save_z=True
    )
    jax.block_until_ready((y, z))
    self.check_call()
    z_ref = jnp.matmul(x, kernel, preferred_element_type=jnp.float32) + bias.astype(jnp.float32)
    tol, allowance = _TOL[jnp.dtype(dtype)], self.tf32_allowance(dtype, x, kernel)["y"]
    assert z.dtype == y.dtype == dtype and z.shape == y.shape == (70, 40)
    self.assert_close(z, z_ref, tol, allowance)
    self.assert_close(y, linear_mish_kernels.linear_mish_reference(x, kernel, bias), tol, allowance)

  @pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=_ids)
  def test_float32_bias_keeps_the_16_bit_matmul(self, dtype):
    """16-bit x and kernel, a float32 bias: a 16-bit matmul, a float32 result (as in jnp)."""
    x, kernel, bias, _ = _operands((70, 90), 40, dtype)
    bias = bias.astype(jnp.float32) + 0.1  # Not representable in 16 bits.
    y, vjp = jax.vjp(self._linear_mish, x, kernel, bias)
    grads = jax.block_until_ready(vjp(jnp.ones_like(y)))
    self.check_call()
    assert y.dtype == jnp.result_type(jnp.matmul(x, kernel) + bias) == jnp.float32
    assert [g.dtype for g in grads] == [dtype, dtype, jnp.float32]
    # The products of 16-bit operands are exact in float32: only the float32 sum's rounding.
    x64, kernel64, bias64 = (np.asarray(a, np.float64) for a in (x, kernel, bias))
    z64 = x64 @ kernel64 + bias64
    y64 = z64 * np.tanh(np.logaddexp(0.0, z64))
    assert _relative_error(y, y64) <= 1e-5
    assert np.isfinite(np.concatenate([np.asarray(g, np.float32).ravel() for g in grads])).all()

  @pytest.mark.parametrize(
    "dtype, config",
    [
      # Two stages over five K steps, two tiles in M and N, each ragged.
      (jnp.bfloat16, TuningConfig(tile_m=64, tile_n=64, tile_k=64, max_concurrent_steps=2)),
      # Two 128-byte rows per K step; three stages over three K steps, four N tiles.
      (jnp.float32, TuningConfig(tile_m=64, tile_n=32, tile_k=64, max_concurrent_steps=3)),
    ],
    ids=_ids,
  )
  def test_small_tiles_many_steps(self, dtype, config):
    x, kernel, bias, _ = _operands((70, 300 if dtype == jnp.bfloat16 else 150), 100, dtype)
    y = self._run(x, kernel, bias, config=config)
    expected = linear_mish_kernels.linear_mish_reference(x, kernel, bias)
    self.assert_close(
      y, expected, _TOL[jnp.dtype(dtype)], self.tf32_allowance(dtype, x, kernel)["y"]
    )

  def test_without_bias_and_batched(self):
    x, kernel, _, _ = _operands((2, 3, 17), 33, jnp.float16)
    y = self._run(x, kernel)
    assert y.shape == (2, 3, 33)
    expected = linear_mish_kernels.linear_mish_reference(x, kernel)
    assert _relative_error(y, expected) <= _TOL[jnp.dtype(jnp.float16)]

  def test_jit_and_vmap(self):
    x, kernel, bias, _ = _operands((3, 4, 10), 20, jnp.float32)
    fused = jax.jit(self._linear_mish)
    reference = linear_mish_kernels.linear_mish_reference
    rows = x.reshape(-1, 10)
    # Shared weights fold the batch into M; batched weights loop over the batch.
    y_ref = reference(x, kernel, bias)
    # The loss's cotangent, 2 y, bounded by 2 (|z| + 1).
    g_bound = 2 * (np.abs(rows) @ np.abs(kernel) + np.abs(bias) + 1)
    allowance = self.tf32_allowance(jnp.float32, rows, 2 * kernel, g_bound)
    self.assert_close(
      jax.vmap(fused, (0, None, None))(x, kernel, bias), y_ref, 1e-5, allowance["y"]
    )
    kernels = jnp.stack([kernel, -kernel, 2 * kernel])
    self.assert_close(
      jax.vmap(fused, (0, 0, None))(x, kernels, bias),
      jax.vmap(reference, (0, 0, None))(x, kernels, bias),
      1e-5,
      allowance["y"],
    )

    def loss(fn, x, kernel, bias):
      return jnp.sum(fn(x, kernel, bias) ** 2)

    grads = jax.vmap(jax.grad(lambda *a: loss(fused, *a), argnums=(0, 1, 2)), (0, None, None))(
      x, kernel, bias
    )
    jax.block_until_ready(grads)
    self.check_call()
    grads_ref = jax.vmap(
      jax.grad(lambda *a: loss(reference, *a), argnums=(0, 1, 2)), (0, None, None)
    )(x, kernel, bias)
    for name, grad, grad_ref in zip(("x", "kernel", "bias"), grads, grads_ref, strict=True):
      self.assert_close(grad, grad_ref, 1e-5, allowance[name])

  @pytest.mark.parametrize(
    "x_shape, kernel_shape, bias_shape, config",
    [
      ((4, 3), (5, 2), (2,), None),
      ((4, 3), (3,), None, None),
      ((4, 3), (3, 2), (3,), None),
      ((4, 3), (3, 2), (2,), TuningConfig(32, 128, 32, 2)),  # wgmma: M a multiple of 64.
      ((4, 3), (3, 2), (2,), TuningConfig(64, 48, 32, 2)),  # N not a 128-byte row.
      ((4, 3), (3, 2), (2,), TuningConfig(64, 128, 16, 2)),  # K not a 128-byte row.
      ((4, 3), (3, 2), (2,), TuningConfig(64, 128, 512, 2)),  # Past TMA's 256.
      ((4, 3), (3, 2), (2,), TuningConfig(64, 128, 32, 1)),  # One stage cannot overlap.
      ((4, 3), (3, 2), (2,), TuningConfig(256, 256, 32, 4)),  # 320 KiB of shared memory.
      ((4, 3), (3, 2), (2,), TuningConfig(128, 192, 64, 3)),  # Spills: 192 accumulator registers.
      ((4, 3), (3, 2), (2,), TuningConfig(256, 128, 64, 3)),  # Spills: 256 accumulator registers.
    ],
  )
  def test_bad_arguments(self, x_shape, kernel_shape, bias_shape, config):
    bias = None if bias_shape is None else jnp.ones(bias_shape)
    with pytest.raises(ValueError):
      self._linear_mish(jnp.ones(x_shape), jnp.ones(kernel_shape), bias, config=config)

  def test_bad_dtypes(self):
    with pytest.raises(TypeError):
      self._linear_mish(jnp.ones((2, 3), jnp.complex64), jnp.ones((3, 2), jnp.complex64))
    with pytest.raises(TypeError):
      self._linear_mish(jnp.ones((2, 3), jnp.int32), jnp.ones((3, 2), jnp.int32))

  def test_empty(self):
    # No kernel runs for an empty output.
    assert self._linear_mish(jnp.ones((0, 3)), jnp.ones((3, 2))).shape == (0, 2)
    assert self._linear_mish(jnp.ones((4, 3)), jnp.ones((3, 0))).shape == (4, 0)
    np.testing.assert_allclose(  # K = 0: mish(bias).
      self._run(jnp.ones((2, 0)), jnp.ones((0, 3)), jnp.arange(3.0)),
      jnp.broadcast_to(activations.mish(jnp.arange(3.0)), (2, 3)),
      rtol=1e-6,
    )


_RACE_STATE_NAMES = ("GPURaceDetectionState", "RaceDetectionState")


def _tf32(a) -> np.ndarray:
  """float32 with the 13 low mantissa bits dropped, as tf32 tensor cores read it."""
  bits = np.asarray(a, np.float32).view(np.uint32)
  return (bits & np.uint32(0xFFFFE000)).view(np.float32)


def test_tf32_bounds_admit_a_tf32_computation_and_nothing_worse():
  """The compiled float32 tests' allowance, against a float64 model of tf32 matmuls."""
  x, kernel, bias, g = (np.asarray(a, np.float64) for a in _operands((130, 300), 260, jnp.float32))
  ones = np.float64(1)

  def forward_and_gradients(truncate):
    z = truncate(x) @ truncate(kernel) + bias
    gz = g * mish_grad64(z)
    return mish64(z), truncate(gz) @ truncate(kernel).T, truncate(x).T @ truncate(gz), gz.sum(0)

  exact = forward_and_gradients(lambda a: a * ones)
  tf32 = forward_and_gradients(lambda a: _tf32(a).astype(np.float64))
  bounds = tf32_error_bounds(x, kernel, g)
  for name, a, b in zip(("y", "x", "kernel", "bias"), tf32, exact, strict=True):
    error = np.linalg.norm(a - b)
    assert error <= bounds[name], name
    # Needed: float32's own tolerance alone would not hold.
    assert error > _TOL[jnp.dtype(jnp.float32)] * np.linalg.norm(b), name


class TestLinearMishKernelInterpret(LinearMishKernelTestBase):
  # NaN-filled memory shows unwritten outputs. One simulated TMA unit per copy in flight: with
  # fewer, copies share a clock and a missing barrier wait can go unseen (JAX 0.10's default is 1).
  interpret = InterpretGPUParams(
    detect_races=True, uninitialized_memory="nan", num_tma_threads_per_device=8
  )

  @pytest.fixture(autouse=True)
  def _record_race_detection(self, monkeypatch):
    # Every interpreted kernel run makes a fresh race detection state and drops it at the end:
    # record them all, so that a race in any kernel of a call (forward or backward) is seen.
    self._race_states = []
    # The class's name: JAX 0.10 `RaceDetectionState`, 0.11 `GPURaceDetectionState`.
    name = next(n for n in _RACE_STATE_NAMES if hasattr(gpu_callbacks, n))
    real_state = getattr(gpu_callbacks, name)

    def recording_state(*args, **kwargs):
      state = real_state(*args, **kwargs)
      self._race_states.append(state)
      return state

    # A failed run leaves the interpreter's state behind; every test starts from a clean one.
    gpu_interpret.reset_gpu_interpret_mode_state()
    monkeypatch.setattr(gpu_callbacks, name, recording_state)
    yield
    gpu_interpret.reset_gpu_interpret_mode_state()

  def check_call(self) -> None:
    assert self._race_states, "no kernel ran under GPU interpret mode"
    assert not any(state.races_found for state in self._race_states), "a data race"
    self._race_states.clear()


def _is_hopper() -> bool:
  device = jax.devices()[0]
  return device.platform == "gpu" and getattr(device, "compute_capability", "").startswith("9.")


@pytest.mark.skipif(not _is_hopper(), reason="the compiled Mosaic GPU kernel needs a Hopper GPU")
class TestLinearMishKernelCompiled(LinearMishKernelTestBase):
  interpret = False
  tf32 = True


# Lowering for CUDA, from any host. Each of 1, 33, 200, 300, 1000 and 4096 appears in M, K and N
# for every dtype (a Latin square over the sizes), as do leading batch dimensions.
_SIZES = (1, 33, 200, 300, 1000, 4096)
_LOWERING_SHAPES = [
  (dtype, _SIZES[i], _SIZES[(i + 1 + d) % 6], _SIZES[(i + 3 + d) % 6])
  for d, dtype in enumerate(DTYPES)
  for i in range(6)
]


@pytest.mark.parametrize("dtype, m, k, n", _LOWERING_SHAPES, ids=_ids)
def test_forward_and_backward_lower_to_mosaic_gpu(dtype, m, k, n):
  x, kernel, bias = jnp.zeros((m, k), dtype), jnp.zeros((k, n), dtype), jnp.zeros((n,), dtype)
  assert_lowers_to_mosaic_gpu(linear_mish_kernels.linear_mish, x, kernel, bias)

  def loss(x, kernel, bias):
    return jnp.sum(linear_mish_kernels.linear_mish(x, kernel, bias).astype(jnp.float32))

  text = assert_lowers_to_mosaic_gpu(jax.grad(loss, argnums=(0, 1, 2)), x, kernel, bias)
  assert text.count("stablehlo.custom_call @mosaic_gpu") >= 2  # The forward and gz's kernel.


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=_ids)
@pytest.mark.parametrize("save_z", [False, True])
def test_float32_bias_lowers_to_the_16_bit_kernel(dtype, save_z):
  x, kernel, bias = jnp.zeros((256, 128), dtype), jnp.zeros((128, 64), dtype), jnp.zeros(64)
  forward = functools.partial(linear_mish_kernels.linear_mish_forward, save_z=save_z)
  text = cuda_module_text(lambda *a: forward(*a, out_dtype=jnp.float32), x, kernel, bias)
  name = jnp.dtype(dtype).name.replace("float", "f")  # bf16, f16
  outputs = "(tensor<256x64xf32>, tensor<256x64xf32>)" if save_z else "tensor<256x64xf32>"
  signature = f"(tensor<256x128x{name}>, tensor<128x64x{name}>, tensor<64xf32>) -> {outputs}"
  assert signature in text


def test_grid_is_one_dimension_within_cuda_limits():
  """One program per tile on grid x, up to 2^31 - 1: a tall M (y stops at 65535) launches."""
  assert linear_mish_kernels._grid_size(2**24 // 128, 1) == 2**17
  with pytest.raises(ValueError, match="more than CUDA's 2147483647"):
    linear_mish_kernels._grid_size(2**21, 2**10)
  # M = 2^24 rows, folded from a batch, lowers: no allocation, the shapes only.
  x = jax.ShapeDtypeStruct((2**12, 2**12, 128), jnp.bfloat16)
  kernel, bias = jnp.zeros((128, 128), jnp.bfloat16), jnp.zeros(128, jnp.bfloat16)
  assert_lowers_to_mosaic_gpu(linear_mish_kernels.linear_mish, x, kernel, bias)


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
def test_batched_and_vmapped_lower_to_mosaic_gpu(dtype):
  x, kernel, bias = jnp.zeros((4, 75, 300), dtype), jnp.zeros((300, 200), dtype), jnp.zeros(200)
  assert_lowers_to_mosaic_gpu(linear_mish_kernels.linear_mish, x, kernel, bias)
  kernels = jnp.zeros((4, 300, 200), dtype)
  batched = jax.vmap(linear_mish_kernels.linear_mish, (0, 0, None))
  assert_lowers_to_mosaic_gpu(batched, x, kernels, bias)


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("m, k, n", [(65536, 256, 1024), (4096, 4096, 4096)], ids=str)
def test_whole_tiles_make_no_extra_pass(dtype, m, k, n):
  """The benchmarked shapes reach the kernel as they are: no pad, slice or copy of x or y."""
  x, kernel, bias = jnp.zeros((m, k), dtype), jnp.zeros((k, n), dtype), jnp.zeros((n,), dtype)
  text = cuda_module_text(linear_mish_kernels.linear_mish, x, kernel, bias)
  ops = set(re.findall(r"stablehlo\.(\w+)", text))
  # Only the bias's cast to float32 and, for tf32's K-major weight, the weight's transpose.
  allowed = {"custom_call", "convert"} | ({"transpose"} if dtype == jnp.float32 else set())
  assert ops <= allowed, ops - allowed


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
def test_default_configs_fit_shared_memory(dtype):
  config = linear_mish_kernels.default_config(dtype)
  config.validate(dtype)
  assert config.smem_bytes(dtype) <= linear_mish_config.SMEM_BYTES
  small = linear_mish_kernels.default_config(dtype, 1, 1)
  small.validate(dtype)
  assert small.tile_m == 64 and small.tile_n * jnp.dtype(dtype).itemsize == 128


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=_ids)
def test_x64_mode_runs_and_lowers(dtype):
  # Five or ten K steps over four stages: the refills' slot arithmetic, whose Python ints x64
  # would widen to int64.
  x, kernel, bias, _ = _operands((3, 300), 5, dtype)
  with jax.enable_x64(True):
    actual = linear_mish_kernels.linear_mish(x, kernel, bias, interpret=True)
    assert actual.dtype == dtype
    error = _relative_error(actual, _unfused_float32(x, kernel, bias))
    assert error < _TOL[jnp.dtype(dtype)], error
    assert_lowers_to_mosaic_gpu(
      jax.grad(
        lambda *a: jnp.sum(linear_mish_kernels.linear_mish(*a).astype(jnp.float32)), (0, 1, 2)
      ),
      x,
      kernel,
      bias,
    )
