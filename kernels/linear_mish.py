"""Fused `mish(x @ kernel + bias)` for Hopper GPUs, in Mosaic GPU's kernel style.

One kernel, `_linear_mish_kernel`, computes one `(tile_m, tile_n)` output tile per program of a
one-dimensional grid of `(M / tile_m) * (N / tile_n)` programs, N fastest (a grid's x dimension
holds 2^31 - 1 programs, y and z only 65535). It runs a `max_concurrent_steps`-stage pipeline over
K: TMA copies fill a ring of swizzled shared-memory slots for the x and weight tiles, each slot
guarded by a barrier, while `wgmma` accumulates the slot loaded before into a float32 register
accumulator. The epilogue adds the bias, applies Mish to the float32 accumulator and stores the tile
once (and the pre-activation z too, for the backward pass). There is no second, simplified kernel:
`interpret=True` runs this very kernel under Mosaic GPU interpret mode, which simulates shared
memory, the TMA copies, barriers and `wgmma` on the CPU. One step differs there: JAX's interpreter
(0.10, 0.11) takes no transposed `wgmma` operand, so for float32 it multiplies the same
shared-memory tiles with a dot (and the fence that generic reads need before a TMA refill).

Ragged shapes are made whole before the kernel, so that every TMA copy is in bounds and every
output element is written by exactly one program, alike on a GPU (whose TMA would clip or
zero-fill) and in the interpreter (which refuses out-of-bounds accesses): M, N and K are padded
with zeros to multiples of the tiles and the output is sliced back. Shapes that are multiples of
the tiles are passed through untouched, with no extra pass over memory. float32 uses tf32
`wgmma`, which reads its right operand only K-major: the weight is transposed to `(N, K)` first.

The backward pass (a `custom_vjp`) reuses z = x @ kernel + bias, written by the forward kernel in
the output dtype, runs the elementwise Mish backward kernel once, gz = g * mish'(z), and leaves
dx = gz @ kernel^T, dkernel = x^T @ gz and dbias = sum(gz) to XLA.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu
from jax.typing import ArrayLike

from .common import (
  Interpret,
  check_dtype,
  check_interpretable,
  effect_free,
  index_rem,
  interpret_params,
  mish_f32,
  out_struct,
  vary,
  varying_axes,
)
from .linear_mish_config import (
  TuningConfig,
  default_config,
  round_up,
)
from .mish import mish_backward, mish_reference

# 1. The kernel.


# The float32 `save_z` epilogue applies Mish to this many columns at a time (sm_90a, 128 x 128
# tiles: 158 registers a thread; the whole tile at once, 165).
_EPILOGUE_COLUMNS = 64


def _linear_mish_kernel(
  x_gmem,
  w_gmem,
  b_gmem,  # Inputs: (M, K), (K, N) or K-major (N, K), and (N,) float32.
  y_gmem,
  *z_gmem,  # Outputs: y = mish(z) and, when saved, z = x @ w + b, both (M, N).
  x_smem,
  w_smem,
  b_smem,
  out_smem,
  load_barriers,
  bias_barrier,
  config: TuningConfig,
  num_n_tiles: int,
  num_k_steps: int,
  w_k_major: bool,
  interpreted: bool,
):
  """One `(tile_m, tile_n)` output tile: a pipelined K loop of `wgmma`s, then the epilogue."""
  tile_m, tile_n, tile_k = config.tile_m, config.tile_n, config.tile_k
  num_stages = min(config.max_concurrent_steps, num_k_steps)
  tile = lax.axis_index("tile")
  m_slice = pl.ds(lax.div(tile, jnp.asarray(num_n_tiles, tile.dtype)) * tile_m, tile_m)
  n_slice = pl.ds(index_rem(tile, num_n_tiles) * tile_n, tile_n)

  def fetch(step, slot):
    k_slice = pl.ds(step * tile_k, tile_k)
    w_tile = w_gmem.at[n_slice, k_slice] if w_k_major else w_gmem.at[k_slice, n_slice]
    plgpu.copy_gmem_to_smem(x_gmem.at[m_slice, k_slice], x_smem.at[slot], load_barriers.at[slot])
    plgpu.copy_gmem_to_smem(w_tile, w_smem.at[slot], load_barriers.at[slot])

  plgpu.copy_gmem_to_smem(b_gmem.at[n_slice], b_smem, bias_barrier)
  for step in range(num_stages):  # The prologue fills every slot.
    fetch(step, step)

  def pipeline(mma_step, carry):
    def k_step(step, carry):
      slot = index_rem(step, num_stages)
      plgpu.barrier_wait(load_barriers.at[slot])
      carry = mma_step(slot, carry)
      refill = step - 1 + num_stages

      @pl.when((step > 0) & (refill < num_k_steps))
      def _refill():
        fetch(refill, index_rem(step - 1, num_stages))

      return carry

    # int32 steps, as `lax.axis_index`'s, also under x64 (where 0 would be an int64).
    return lax.fori_loop(np.int32(0), np.int32(num_k_steps), k_step, carry)

  if w_k_major and interpreted:
    # The interpreter takes no transposed wgmma operand (JAX 0.10 and 0.11): the same product of
    # the same shared-memory tiles, as a dot.
    def dot_step(slot, acc):
      dims = (((1,), (1,)), ((), ()))
      acc += lax.dot_general(x_smem[slot], w_smem[slot], dims, preferred_element_type=jnp.float32)
      # These reads are the generic proxy's, unlike wgmma's: fence them before a TMA refill.
      plgpu.commit_smem()
      return acc

    acc = pipeline(dot_step, jnp.zeros((tile_m, tile_n), jnp.float32))
  else:

    def accumulate(acc_ref):
      def wgmma_step(slot, carry):
        w_tile = w_smem.at[slot].transpose((1, 0)) if w_k_major else w_smem.at[slot]
        plgpu.wgmma(acc_ref, x_smem.at[slot], w_tile)
        # Keep this step's wgmma in flight; the one before it is done, so its slot is free.
        plgpu.wgmma_wait(1)
        return carry

      pipeline(wgmma_step, None)
      return acc_ref[...]  # Reading the accumulator awaits every wgmma.

    acc = pl.run_scoped(accumulate, plgpu.ACC((tile_m, tile_n), jnp.float32))
  plgpu.barrier_wait(bias_barrier)
  z = acc + lax.broadcast_in_dim(b_smem[...], acc.shape, (1,))
  step = math.gcd(tile_n, _EPILOGUE_COLUMNS)
  chunks = [slice(start, start + step) for start in range(0, tile_n, step)]

  def store(out_gmem):
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(out_smem, out_gmem.at[m_slice, n_slice])

  if z_gmem and out_smem.dtype == jnp.float32:
    # z is exact in a float32 out_smem: store it, then apply Mish there, so that z need not stay
    # in registers beside mish(z) (both took the kernel to 255 registers).
    out_smem[...] = z
    store(z_gmem[0])
    plgpu.wait_smem_to_gmem(0, wait_read_only=True)
    for columns in chunks:
      out_smem[:, columns] = mish_f32(out_smem[:, columns])
    store(y_gmem)
  else:
    for out_gmem, value in [(y_gmem, mish_f32(z))] + [(z_ref, z) for z_ref in z_gmem]:
      plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # The previous store has read out_smem.
      out_smem[...] = value.astype(out_smem.dtype)
      store(out_gmem)
  plgpu.wait_smem_to_gmem(0)


# 2. The `plgpu.kernel` wrapper (its tuning config: `linear_mish_config`).

# CUDA's limit on a grid's x dimension.
_MAX_GRID_X = 2**31 - 1


def _grid_size(num_m_tiles: int, num_n_tiles: int) -> int:
  """The programs of a launch, one per output tile; ValueError past CUDA's grid."""
  size = num_m_tiles * num_n_tiles
  if size > _MAX_GRID_X:
    raise ValueError(f"{num_m_tiles} x {num_n_tiles} output tiles: more than CUDA's {_MAX_GRID_X}")
  return size


def _smem_transforms(tile: tuple[int, int], dtype: jnp.dtype) -> tuple[plgpu.Transform, ...]:
  """The tiling and swizzle that `wgmma` operands and TMA-stored tiles need in shared memory."""
  itemsize = jnp.dtype(dtype).itemsize
  swizzle = plgpu.find_swizzle(tile[-1] * itemsize * 8)
  return plgpu.TilingTransform((8, swizzle // itemsize)), plgpu.SwizzleTransform(swizzle)


def _linear_mish_call(
  x: Array,
  w: Array,
  b: Array,
  *,
  config: TuningConfig | None,
  interpret: Interpret,
  save_z: bool,
  out_dtype: jnp.dtype,
) -> Array | tuple[Array, Array]:
  """The fused kernel on `x: (M, K)`, `w: (K, N)` of one dtype and float32 `b: (N,)`."""
  if interpret:
    check_interpretable("linear_mish")
  m, k = x.shape
  n = w.shape[1]
  dtype = x.dtype
  # Chosen here, for the M that the kernel sees: under vmap the batch is folded into it.
  config = config or default_config(dtype, m, n)
  tile_m, tile_n, tile_k = config.tile_m, config.tile_n, config.tile_k
  m_pad, n_pad, k_pad = round_up(m, tile_m), round_up(n, tile_n), round_up(k, tile_k)
  # Zeros in K add nothing to the sum; padded rows and columns are sliced off. No-ops when whole.
  if (m_pad, k_pad) != (m, k):
    x = jnp.pad(x, ((0, m_pad - m), (0, k_pad - k)))
  if (k_pad, n_pad) != (k, n):
    w = jnp.pad(w, ((0, k_pad - k), (0, n_pad - n)))
  if n_pad != n:
    b = jnp.pad(b, (0, n_pad - n))
  w_k_major = dtype.itemsize == 4  # tf32 wgmma reads its right operand only K-major.
  w_tile = (tile_n, tile_k) if w_k_major else (tile_k, tile_n)
  if w_k_major:
    w = w.T
  num_k_steps = k_pad // tile_k
  num_stages = min(config.max_concurrent_steps, num_k_steps)
  axes = varying_axes(x, w, b)
  x, w, b = (vary(a, axes) for a in (x, w, b))
  # An interpreted kernel runs on the host, outside the mesh: its outputs there vary over none.
  out_type = out_struct((m_pad, n_pad), out_dtype, axes if not interpret else frozenset())
  kernel = plgpu.kernel(
    functools.partial(
      _linear_mish_kernel,
      config=config,
      num_n_tiles=n_pad // tile_n,
      num_k_steps=num_k_steps,
      w_k_major=w_k_major,
      interpreted=bool(interpret),
    ),
    out_type=(out_type, out_type) if save_z else out_type,
    scratch_types=dict(
      x_smem=plgpu.SMEM(
        (num_stages, tile_m, tile_k), dtype, transforms=_smem_transforms((tile_m, tile_k), dtype)
      ),
      w_smem=plgpu.SMEM((num_stages, *w_tile), dtype, transforms=_smem_transforms(w_tile, dtype)),
      b_smem=plgpu.SMEM((tile_n,), jnp.float32),
      out_smem=plgpu.SMEM(
        (tile_m, tile_n), out_dtype, transforms=_smem_transforms((tile_m, tile_n), out_dtype)
      ),
      load_barriers=plgpu.Barrier(num_arrivals=2, num_barriers=num_stages),
      bias_barrier=plgpu.Barrier(num_arrivals=1),
    ),
    # One grid dimension, x (up to 2^31 - 1 programs; y and z stop at 65535, which a tall M
    # would pass). Programs launch in order, N fastest: those in flight share a few row panels of
    # x, read from HBM once and then from L2, and stream the weight (usually the smaller).
    grid=(_grid_size(m_pad // tile_m, n_pad // tile_n),),
    grid_names=("tile",),
    compiler_params=plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Warpgroup),
    interpret=interpret_params(interpret),
    kernel_name="linear_mish_fwd",
  )
  kernel = effect_free(kernel, (out_type, out_type) if save_z else out_type, bool(interpret))
  if save_z:
    return tuple(vary(o, axes)[:m, :n] for o in kernel(x, w, b))
  return vary(kernel(x, w, b), axes)[:m, :n]


def _batched_call(
  x: Array,
  w: Array,
  b: Array,
  *,
  config: TuningConfig | None,
  interpret: Interpret,
  save_z: bool,
  out_dtype: jnp.dtype,
) -> Array | tuple[Array, Array]:
  """`_linear_mish_call` with a vmap rule that never hands Mosaic GPU a batched kernel."""
  call = functools.partial(
    _linear_mish_call, config=config, interpret=interpret, save_z=save_z, out_dtype=out_dtype
  )

  @jax.custom_batching.custom_vmap
  def fused(x, w, b):
    return call(x, w, b)

  @fused.def_vmap
  def _vmap_rule(axis_size, in_batched, x, w, b):
    x_batched, w_batched, b_batched = in_batched
    if not (w_batched or b_batched):
      # One weight for the whole batch: fold the batch into M and run one kernel.
      out = fused(x.reshape(-1, x.shape[-1]), w, b)
      out = jax.tree.map(lambda o: o.reshape(axis_size, -1, o.shape[-1]), out)
    else:
      # A batch of weights is a batch of different matmuls: one kernel call per element.
      x, w, b = (
        a if batched else jnp.broadcast_to(a, (axis_size, *a.shape))
        for a, batched in zip((x, w, b), in_batched, strict=True)
      )
      out = lax.map(lambda operands: fused(*operands), (x, w, b))
    return out, jax.tree.map(lambda _: True, out)

  return fused(x, w, b)


# 3. Forward and backward.


def linear_mish_forward(
  x: Array,
  w: Array,
  b: Array,
  *,
  config: TuningConfig | None = None,
  interpret: Interpret = False,
  save_z: bool = False,
  out_dtype: jnp.dtype | None = None,
) -> Array | tuple[Array, Array]:
  """The fused forward kernel, unvalidated and not differentiable; safe under `jax.vmap`.

  Args:
    x: `(M, K)` input.
    w: `(K, N)` weight, of the dtype of `x`: the dtype the matmul runs in.
    b: `(N,)` float32 bias.
    config: the tiles; None picks `default_config(x.dtype, M, N)`.
    interpret: run under Mosaic GPU interpret mode: True with default `InterpretGPUParams()`, or
      the given `InterpretGPUParams`.
    save_z: also return the pre-activation.
    out_dtype: the outputs' dtype, `x.dtype` when None (float32 for 16-bit operands with a
      float32 bias, as jnp promotes `x @ w + b`).

  Returns:
    `y = mish(x @ w + b)`, or `(y, z)` with `z = x @ w + b` when `save_z`; `(M, N)` in
    `out_dtype`.
  """
  m, n = x.shape[0], w.shape[1]
  out_dtype = jnp.dtype(out_dtype or x.dtype)
  if m == 0 or n == 0:
    y = jnp.zeros((m, n), out_dtype)
    return (y, y) if save_z else y
  return _batched_call(
    x, w, b, config=config, interpret=interpret, save_z=save_z, out_dtype=out_dtype
  )


def _linear_mish_fwd(
  x: Array,
  w: Array,
  b: Array,
  config: TuningConfig | None,
  interpret: Interpret,
  out_dtype: jnp.dtype,
) -> tuple[Array, tuple[Array, Array, Array]]:
  y, z = linear_mish_forward(
    x, w, b, config=config, interpret=interpret, save_z=True, out_dtype=out_dtype
  )
  return y, (x, w, z)


def _linear_mish_bwd(
  config: TuningConfig | None,
  interpret: Interpret,
  out_dtype: jnp.dtype,
  residuals: tuple[Array, Array, Array],
  g: Array,
) -> tuple[Array, Array, Array]:
  del config, out_dtype  # Unused: the backward's matmuls are XLA's.
  x, w, z = residuals
  gz = mish_backward(z, g, interpret=interpret)
  dx = jnp.dot(gz, w.T, preferred_element_type=jnp.float32).astype(x.dtype)
  dw = jnp.dot(x.T, gz, preferred_element_type=jnp.float32).astype(w.dtype)
  db = jnp.sum(gz, axis=0, dtype=jnp.float32)
  return dx, dw, db


# 4. The `custom_vjp` public function.


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _linear_mish(
  x: Array,
  w: Array,
  b: Array,
  config: TuningConfig | None,
  interpret: Interpret,
  out_dtype: jnp.dtype,
) -> Array:
  return linear_mish_forward(x, w, b, config=config, interpret=interpret, out_dtype=out_dtype)


_linear_mish.defvjp(_linear_mish_fwd, _linear_mish_bwd)


@functools.partial(jax.jit, static_argnames=("config", "interpret"))
def linear_mish(
  x: ArrayLike,
  kernel: ArrayLike,
  bias: ArrayLike | None = None,
  *,
  config: TuningConfig | None = None,
  interpret: Interpret = False,
) -> Array:
  """`mish(x @ kernel + bias)` in one Mosaic GPU kernel, differentiable once in all three.

  The matmul runs in the dtype of `x` and `kernel` (`jnp.result_type(x, kernel)`) and accumulates
  in float32 (tf32 `wgmma` for float32 operands); the bias, of any float dtype, and Mish are
  applied to the float32 accumulator before the result is rounded to the output dtype,
  `jnp.result_type(x, kernel, bias)`: bfloat16 operands with a float32 bias run the bfloat16
  matmul and give float32, as `mish(x @ kernel + bias)` does in jnp. Reverse mode only:
  forward-mode rules build on `linear_mish_forward`.

  Args:
    x: `(..., K)` input; leading dimensions are flattened into the matmul's M.
    kernel: `(K, N)` weight.
    bias: `(N,)` bias, or None for none.
    config: the tiles; None picks `default_config(dtype, M, N)`.
    interpret: run under Mosaic GPU interpret mode (on CPU, for tests): True with default
      `InterpretGPUParams()`, or the given `InterpretGPUParams` (e.g. `detect_races=True`).

  Returns:
    The `(..., N)` activations.

  Raises:
    TypeError: if the operands' common dtype is not float32, bfloat16 or float16.
    ValueError: for mismatched shapes, or a config that does not lower for the dtype.
  """
  x, kernel = jnp.asarray(x), jnp.asarray(kernel)
  operands = (x, kernel) if bias is None else (x, kernel, jnp.asarray(bias))
  if kernel.ndim != 2 or x.ndim < 1 or x.shape[-1] != kernel.shape[0]:
    raise ValueError(
      f"expected x of shape (..., K) and kernel of shape (K, N), got {x.shape} and {kernel.shape}"
    )
  *batch, k = x.shape
  n = kernel.shape[1]
  if bias is not None and jnp.shape(bias) != (n,):
    raise ValueError(f"expected bias of shape ({n},), got {jnp.shape(bias)}")
  dtype, out_dtype = jnp.result_type(x, kernel), jnp.result_type(*operands)
  check_dtype(dtype, "the dtype of x and kernel")
  check_dtype(out_dtype, "the operands' common dtype")
  if config is not None:
    config.validate(dtype, out_dtype)
  m = math.prod(batch)
  if m == 0 or n == 0:
    return jnp.zeros((*batch, n), out_dtype)
  b = jnp.zeros((n,), jnp.float32) if bias is None else jnp.asarray(bias).astype(jnp.float32)
  x, kernel = x.reshape(m, k).astype(dtype), kernel.astype(dtype)
  y = _linear_mish(x, kernel, b, config, interpret, out_dtype)
  return y.reshape(*batch, n)


# 5. The plain-jnp reference.


def linear_mish_reference(x: ArrayLike, kernel: ArrayLike, bias: ArrayLike | None = None) -> Array:
  """`mish(x @ kernel + bias)` with a float32-accumulated matmul, unfused, in jnp."""
  x, kernel = jnp.asarray(x), jnp.asarray(kernel)
  operands = (x, kernel) if bias is None else (x, kernel, jnp.asarray(bias))
  dtype = jnp.result_type(x, kernel)
  z = jnp.matmul(x.astype(dtype), kernel.astype(dtype), preferred_element_type=jnp.float32)
  if bias is not None:
    z = z + jnp.asarray(bias).astype(jnp.float32)
  return mish_reference(z).astype(jnp.result_type(*operands))
