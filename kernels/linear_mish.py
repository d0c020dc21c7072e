"""Fused `mish(x @ kernel + bias)`: one Pallas kernel, float32 accumulation, Mish in the epilogue.

Two kernels share one epilogue:

* `backend="mosaic_gpu"` (JAX's default GPU lowering): a `(m, n, k)` grid whose last axis is
  sequential. Mosaic GPU pipelines the `(block_m, block_k)` and `(block_k, block_n)` tiles into
  shared memory with TMA and accumulates them with Hopper's `wgmma` into a float32 register
  accumulator; the last `k` step adds the bias, applies Mish and stores. Interpret mode runs the
  same grid, index maps, padding and epilogue with `jnp.dot` in place of `wgmma` (which only
  lowers on the GPU) and without the shared-memory swizzle.
* `backend="triton"`: a `(m, n)` grid; each program loops over `k` itself, since Triton programs
  cannot carry an accumulator across grid steps.

Only K is padded (with zeros, which add nothing to the sum), and N to a multiple of 16 so that
rows stay 16-byte aligned for TMA; ragged M and N blocks are masked by the backend.

The backward pass (a `custom_vjp`) saves the pre-activation z = x @ kernel + bias as a second
output of the forward kernel, in the output dtype: M * N elements, as many as the output and as
the unfused XLA composition keeps, in exchange for not redoing the M * N * K matmul. It then runs
the elementwise Mish backward kernel once, gz = g * mish'(z), and three XLA reductions:
dx = gz @ kernel^T, dkernel = x^T @ gz and dbias = sum(gz).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array, lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu
from jax.typing import ArrayLike

from .mish import check_dtype, mish_backward, mish_f32, mish_reference

_BACKENDS = ("mosaic_gpu", "triton")


def check_backend(backend: str) -> None:
  """Raises ValueError unless `backend` is one of `_BACKENDS`."""
  if backend not in _BACKENDS:
    raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")


def compiler_params(backend: str, **kwargs) -> pl.CompilerParams:
  """The `CompilerParams` whose type selects the `backend` lowering."""
  if backend == "triton":
    from jax.experimental.pallas import triton as pltriton

    return pltriton.CompilerParams(**kwargs)
  return plgpu.CompilerParams(**kwargs)


# (block_m, block_n, block_k) by backend and operand bytes. Mosaic GPU: wgmma wants block_m a
# multiple of 64 and a 128-byte swizzled K tile (64 16-bit or 32 32-bit values); with two
# pipeline stages and the z output, 16-bit tiles take 192 KiB of the H100's 227 KiB of shared
# memory and float32 tiles 176 KiB. Triton: the usual tiles of its matmul tutorials.
_DEFAULT_BLOCKS = {
  ("mosaic_gpu", 2): (128, 128, 64),
  ("mosaic_gpu", 4): (64, 128, 32),
  ("triton", 2): (128, 128, 32),
  ("triton", 4): (64, 64, 32),
}
# N is padded to a multiple of 16 elements: TMA needs every row to start 16-byte aligned.
_N_ALIGN = 16


class _Config(NamedTuple):
  """The static parameters of one call, hashable for `custom_vjp` and `jit`."""

  block_m: int
  block_n: int
  block_k: int
  interpret: bool
  backend: str


def _epilogue(acc: Array, bias: Array, y_ref, z_refs: Sequence[Any]) -> None:
  """Stores mish(acc + bias) in `y_ref` and acc + bias in `z_refs` (none or one)."""
  z = acc + lax.broadcast_in_dim(bias, acc.shape, (1,))
  y_ref[...] = mish_f32(z).astype(y_ref.dtype)
  for z_ref in z_refs:
    z_ref[...] = z.astype(z_ref.dtype)


# 1. Kernels.


def _linear_mish_kernel(
  x_ref,
  w_ref,
  b_ref,  # Inputs.
  y_ref,
  *refs,  # Outputs (y, then z if saved), then the accumulator.
  num_k_blocks: int,
  use_wgmma: bool,
  w_transposed: bool,
):
  """One `(block_m, block_n)` tile of the output, at step `k` of the sequential K axis."""
  *z_refs, acc_ref = refs
  k = pl.program_id(2)
  if use_wgmma:
    w = plgpu.transpose_ref(w_ref, (1, 0)) if w_transposed else w_ref
    plgpu.wgmma(acc_ref, x_ref, w)
    # The pipeline refills this step's buffers once the body returns: no wgmma may still read them.
    plgpu.wgmma_wait(0)
  else:

    @pl.when(k == 0)
    def _zero():
      acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

    contract = ((1,), (1,)) if w_transposed else ((1,), (0,))
    acc_ref[...] += lax.dot_general(
      x_ref[...], w_ref[...], (contract, ((), ())), preferred_element_type=jnp.float32
    )

  @pl.when(k == num_k_blocks - 1)
  def _store():
    if use_wgmma:
      # Loaded straight into the layout of the accumulator's columns; broadcasting is then free.
      bias = plgpu.load(b_ref, (), layout=plgpu.Layout.WGMMA.reduce(0))
    else:
      bias = b_ref[...]
    _epilogue(acc_ref[...], bias, y_ref, z_refs)


def _linear_mish_kernel_triton(
  x_ref,
  w_ref,
  b_ref,  # Inputs: a (block_m, K) row panel and a (K, block_n) column panel.
  y_ref,
  *z_refs,  # Outputs.
  block_k: int,
):
  """One `(block_m, block_n)` tile of the output, looping over K in `block_k` steps."""

  def body(k, acc):
    ks = pl.ds(pl.multiple_of(k * block_k, block_k), block_k)
    return acc + jnp.dot(x_ref[:, ks], w_ref[ks, :], preferred_element_type=jnp.float32)

  acc = lax.fori_loop(0, x_ref.shape[1] // block_k, body, jnp.zeros(y_ref.shape, jnp.float32))
  _epilogue(acc, b_ref[...], y_ref, z_refs)


# 2. The `pallas_call` wrapper.


def _mma_transforms(minor_dim: int, dtype: jnp.dtype) -> tuple[Any, ...]:
  """The shared-memory tiling and swizzle that wgmma operands and TMA stores need."""
  itemsize = jnp.dtype(dtype).itemsize
  swizzle = plgpu.find_swizzle(minor_dim * itemsize * 8)
  return plgpu.TilingTransform((8, swizzle // itemsize)), plgpu.SwizzleTransform(swizzle)


def _round_up(a: int, b: int) -> int:
  return pl.cdiv(a, b) * b


def linear_mish_call(
  x: Array,
  w: Array,
  b: Array,
  *,
  block_m: int,
  block_n: int,
  block_k: int,
  interpret: bool,
  backend: str,
  save_z: bool,
) -> Array | tuple[Array, Array]:
  """Runs the fused kernel on `x: (M, K)`, `w: (K, N)` of one dtype and float32 `b: (N,)`.

  Returns:
    `y = mish(x @ w + b)` of shape `(M, N)` in the dtype of `x`, and `z = x @ w + b` too if
    `save_z`.
  """
  m, k = x.shape
  n = w.shape[1]
  dtype = x.dtype
  k_pad = max(_round_up(k, block_k), block_k)  # K = 0 still runs one step, adding zeros.
  n_pad = _round_up(n, _N_ALIGN)
  x = jnp.pad(x, ((0, 0), (0, k_pad - k)))
  w = jnp.pad(w, ((0, k_pad - k), (0, n_pad - n)))
  b = jnp.pad(b, (0, n_pad - n))
  num_outputs = 2 if save_z else 1
  out_shape = [jax.ShapeDtypeStruct((m, n_pad), dtype)] * num_outputs

  if backend == "triton":
    grid = (pl.cdiv(m, block_m), pl.cdiv(n_pad, block_n))
    kernel = functools.partial(_linear_mish_kernel_triton, block_k=block_k)
    in_specs = [
      pl.BlockSpec((block_m, k_pad), lambda i, j: (i, 0)),
      pl.BlockSpec((k_pad, block_n), lambda i, j: (0, j)),
      pl.BlockSpec((block_n,), lambda i, j: (j,)),
    ]
    out_specs = [pl.BlockSpec((block_m, block_n), lambda i, j: (i, j))] * num_outputs
    scratch_shapes = ()
    params = compiler_params("triton", num_warps=4, num_stages=3)
  else:
    num_k_blocks = k_pad // block_k
    grid = (pl.cdiv(m, block_m), pl.cdiv(n_pad, block_n), num_k_blocks)
    use_wgmma = not interpret
    # wgmma reads a 32-bit right operand only K-major, i.e. as (N, K) in memory.
    w_transposed = dtype.itemsize == 4
    if w_transposed:
      w = w.T

    def spec(block_shape, index_map):
      # The swizzle is a GPU shared-memory layout, which interpret mode does not model.
      transforms = () if interpret else _mma_transforms(block_shape[-1], dtype)
      return plgpu.BlockSpec(block_shape, index_map, transforms=transforms)

    if w_transposed:
      w_spec = spec((block_n, block_k), lambda i, j, kk: (j, kk))
    else:
      w_spec = spec((block_k, block_n), lambda i, j, kk: (kk, j))
    kernel = functools.partial(
      _linear_mish_kernel,
      num_k_blocks=num_k_blocks,
      use_wgmma=use_wgmma,
      w_transposed=w_transposed,
    )
    in_specs = [
      spec((block_m, block_k), lambda i, j, kk: (i, kk)),
      w_spec,
      plgpu.BlockSpec((block_n,), lambda i, j, kk: (j,)),
    ]
    out_specs = [spec((block_m, block_n), lambda i, j, kk: (i, j))] * num_outputs
    acc_type = plgpu.ACC if use_wgmma else plgpu.SMEM
    scratch_shapes = [acc_type((block_m, block_n), jnp.float32)]
    params = compiler_params(
      "mosaic_gpu",
      dimension_semantics=("parallel", "parallel", "sequential"),
      max_concurrent_steps=2,
    )

  outs = pl.pallas_call(
    kernel,
    out_shape=out_shape,
    grid=grid,
    in_specs=in_specs,
    out_specs=out_specs,
    scratch_shapes=scratch_shapes,
    interpret=interpret,
    compiler_params=params,
    name="linear_mish_fwd",
  )(x, w, b)
  outs = [o[:, :n] for o in outs]
  return tuple(outs) if save_z else outs[0]


def _batched_call(
  x: Array, w: Array, b: Array, config: _Config, save_z: bool
) -> Array | tuple[Array, Array]:
  """`linear_mish_call` with a vmap rule that never hands Mosaic GPU a batched `pallas_call`."""
  call = functools.partial(linear_mish_call, **config._asdict(), save_z=save_z)

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


def _linear_mish_fwd(
  x: Array, w: Array, b: Array, config: _Config
) -> tuple[Array, tuple[Array, Array, Array]]:
  y, z = _batched_call(x, w, b, config, save_z=True)
  return y, (x, w, z)


def _linear_mish_bwd(
  config: _Config, residuals: tuple[Array, Array, Array], g: Array
) -> tuple[Array, Array, Array]:
  x, w, z = residuals
  gz = mish_backward(z, g, interpret=config.interpret)
  dx = jnp.dot(gz, w.T, preferred_element_type=jnp.float32).astype(x.dtype)
  dw = jnp.dot(x.T, gz, preferred_element_type=jnp.float32).astype(w.dtype)
  db = jnp.sum(gz, axis=0, dtype=jnp.float32)
  return dx, dw, db


def linear_mish_forward(
  x: Array, w: Array, b: Array, *, config: _Config, interpret: bool, save_z: bool
) -> Array | tuple[Array, Array]:
  """The raw fused forward on `x: (M, K)`, `w: (K, N)`, float32 `b: (N,)`: y, or (y, z)."""
  config = config._replace(interpret=interpret)
  return _batched_call(x, w, b, config, save_z=save_z)


# 4. The `custom_vjp` public function.


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _linear_mish(x: Array, w: Array, b: Array, config: _Config) -> Array:
  return _batched_call(x, w, b, config, save_z=False)


_linear_mish.defvjp(_linear_mish_fwd, _linear_mish_bwd)


def default_blocks(dtype: jnp.dtype, backend: str = "mosaic_gpu") -> tuple[int, int, int]:
  """The default `(block_m, block_n, block_k)` for operands of `dtype` on `backend`."""
  return _DEFAULT_BLOCKS[backend, 4 if jnp.dtype(dtype).itemsize == 4 else 2]


def _check_blocks(block_m: int, block_n: int, block_k: int, dtype: jnp.dtype, backend: str):
  """Raises ValueError for block sizes the backend cannot lower."""
  blocks = dict(block_m=block_m, block_n=block_n, block_k=block_k)
  if backend == "triton":
    for name, size in blocks.items():
      if size < 16 or size & (size - 1):
        raise ValueError(f"{name} must be a power of two >= 16 on Triton, got {size}")
    return
  # TMA copies at most 256 elements per dimension; wgmma's M is a multiple of 64, and its
  # operands' minor dimensions must fill at least a 32-byte swizzle.
  for name, size in blocks.items():
    if not 0 < size <= 256:
      raise ValueError(f"{name} must be in [1, 256] on Mosaic GPU, got {size}")
  if block_m % 64:
    raise ValueError(f"block_m must be a multiple of 64 on Mosaic GPU, got {block_m}")
  min_elems = 32 // jnp.dtype(dtype).itemsize
  for name in ("block_n", "block_k"):
    if blocks[name] % min_elems:
      raise ValueError(
        f"{name} must be a multiple of {min_elems} for {jnp.dtype(dtype)} on Mosaic GPU, "
        f"got {blocks[name]}"
      )


@functools.partial(
  jax.jit, static_argnames=("block_m", "block_n", "block_k", "interpret", "backend")
)
def linear_mish(
  x: ArrayLike,
  kernel: ArrayLike,
  bias: ArrayLike | None = None,
  *,
  block_m: int | None = None,
  block_n: int | None = None,
  block_k: int | None = None,
  interpret: bool = False,
  backend: str = "mosaic_gpu",
) -> Array:
  """`mish(x @ kernel + bias)` in one Pallas kernel, differentiable once in all three arguments.

  The matmul accumulates in float32; the bias and Mish are applied to the float32 accumulator
  before the result is rounded to the output dtype, `jnp.result_type(x, kernel, bias)`.
  Forward-mode differentiation (`jax.jvp`) is not defined.

  Args:
    x: `(..., K)` input; leading dimensions are flattened into the matmul's M.
    kernel: `(K, N)` weight.
    bias: `(N,)` bias, or None for none.
    block_m: rows of x per output tile; None picks `default_blocks(dtype, backend)`.
    block_n: columns of the kernel per output tile; None as above.
    block_k: the K step of the accumulation; None as above.
    interpret: run in Pallas interpret mode (on CPU, for tests).
    backend: the GPU lowering, `"mosaic_gpu"` (JAX's default) or `"triton"`.

  Returns:
    The `(..., N)` activations.

  Raises:
    TypeError: if the operands' common dtype is not float32, bfloat16 or float16.
    ValueError: for mismatched shapes, a bad backend or block sizes it cannot lower.
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
  dtype = jnp.result_type(*operands)
  check_dtype(dtype, "the operands' common dtype")
  check_backend(backend)
  defaults = default_blocks(dtype, backend)
  block_m, block_n, block_k = (
    given or default for given, default in zip((block_m, block_n, block_k), defaults, strict=True)
  )
  _check_blocks(block_m, block_n, block_k, dtype, backend)
  m = math.prod(batch)
  if m == 0 or n == 0:
    return jnp.zeros((*batch, n), dtype)
  b = jnp.zeros((n,), jnp.float32) if bias is None else jnp.asarray(bias).astype(jnp.float32)
  config = _Config(block_m, block_n, block_k, interpret, backend)
  y = _linear_mish(x.reshape(m, k).astype(dtype), kernel.astype(dtype), b, config)
  return y.reshape(*batch, n)


# 5. The plain-jnp reference.


def linear_mish_reference(x: ArrayLike, kernel: ArrayLike, bias: ArrayLike | None = None) -> Array:
  """`mish(x @ kernel + bias)` with a float32-accumulated matmul, unfused, in jnp."""
  x, kernel = jnp.asarray(x), jnp.asarray(kernel)
  operands = (x, kernel) if bias is None else (x, kernel, jnp.asarray(bias))
  dtype = jnp.result_type(*operands)
  z = jnp.matmul(x.astype(dtype), kernel.astype(dtype), preferred_element_type=jnp.float32)
  if bias is not None:
    z = z + jnp.asarray(bias).astype(jnp.float32)
  return mish_reference(z).astype(dtype)
