"""Mosaic GPU kernels for Mish: a forward, a backward, a derivative, and their `custom_vjp`.

Every kernel is one streaming loop, written as `jax.experimental.pallas.ops.gpu.hopper_matmul_mgpu`
is: a `plgpu.kernel` over a 1-D grid of persistent CTAs (one warpgroup each), explicit TMA copies
between global and shared memory, and barriers.

Layout. Any input is viewed flat, `(size,)`, which is free. It is cut into `block_size` blocks;
CTA `c` of `num_ctas` handles blocks `c, c + num_ctas, ...`, so every element belongs to exactly
one block of exactly one CTA: no two CTAs ever write the same bytes. Each block is copied as one
contiguous bulk TMA copy (`cp.async.bulk`, any length that is a multiple of 16 bytes), and the
copies never leave the arrays, so a GPU and Mosaic GPU's interpret mode (which raises on
out-of-bounds reads) see the same program:

* full blocks of `block_size` elements;
* one partial block, a multiple of 128 elements, copied with its own static length;
* the last `size % 128` elements (fewer than 128, too few bytes for TMA's 16-byte granule in some
  dtypes) are padded into a separate 128-element operand and output, and written back with one
  `dynamic_update_slice` of under 128 elements: the only copy outside the kernel, and only for sizes
  that are not a multiple of 128.

Streaming. Each CTA runs a ring of `num_stages` input buffers in shared memory, with a barrier per
stage: while it computes block i, the copies of blocks i + 1 .. i + num_stages - 1 are in flight,
and the result leaves through two output buffers, so the store of block i - 1 overlaps the compute
of block i (`plgpu.wait_smem_to_gmem(1)` before a buffer is reused). With the defaults, 4096
elements and 3 stages, a stage holds 16 KiB per float32 operand (8 KiB in 16 bits), so a CTA uses
(stages x operands + 2) x 16 KiB of shared memory:

=========  ===========  ===========  ======================  ============================
kernel     operands     SMEM / CTA   CTAs / SM               loads in flight / SM
=========  ===========  ===========  ======================  ============================
forward    x            80 KiB       2 (f32), 4 (16-bit)     64 KiB (f32), 64 KiB (16-bit)
backward   x, g         128 KiB      1 (f32), 3 (16-bit)     64 KiB (f32), 96 KiB (16-bit)
=========  ===========  ===========  ======================  ============================

By Little's law an H100's 3.35 TB/s at about 1 us of loaded latency needs about 3.4 MB in flight,
25 KiB per SM of its 132: the ring holds two to four times that, so the kernels can stream at
memory speed, and the grid, `num_sms x CTAs per SM` persistent CTAs, has no tail of short CTAs.
The grid never exceeds the number of blocks.

The math is `mish_f32` and `mish_grad_f32`, which mirror `mish_jax._src.activations` (one exp per
element, no overflow, exact limits) with the backend's own exp, in float32. The forward kernel
rounds bfloat16 and float16 as the XLA path does (`rounding`: bfloat16's tiny results built as
integers, float16's 4 hard cases selected), correctly for every input; the others round float32
once to the input dtype.

`interpret=True` (or an `InterpretGPUParams`) runs these very kernels, copies, barriers and all,
under Mosaic GPU's interpret mode on the CPU; there is no separate simplified kernel. Only the
default block size differs there, `INTERPRET_BLOCK_SIZE`: the interpreter pays a few host
callbacks per block, and has no shared-memory limit.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import Array, lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu
from jax.typing import ArrayLike

from .block_plan import LANES, MAX_SMEM_BYTES_PER_CTA, BlockPlan, grid_ctas
from .common import (
  Interpret,
  check_dtype,
  check_interpretable,
  effect_free,
  in_float32,
  index_rem,
  interpret_params,
  mish_grad_f32,
  mish_rounded,
  out_struct,
  vary,
  varying_axes,
)

DEFAULT_BLOCK_SIZE = 4096
DEFAULT_NUM_STAGES = 3
# The interpreter pays about five host callbacks per block (a few ms) and has no shared-memory
# limit: it runs the same kernels with big blocks unless told otherwise (a million elements in
# 0.3-0.6 s instead of 5-8 s).
INTERPRET_BLOCK_SIZE = 2**16


def _mish_times_g(x: Array, g: Array) -> Array:
  return g * mish_grad_f32(x)


@dataclasses.dataclass(frozen=True)
class TuningConfig:
  """How a kernel streams its operands.

  Attributes:
    block_size: elements per block, a power of two, at least `LANES`; `None` for
      `DEFAULT_BLOCK_SIZE` compiled, `INTERPRET_BLOCK_SIZE` under the interpreter.
    num_stages: input buffers per CTA: `num_stages - 1` blocks are loading while one is computed.
    num_ctas: persistent CTAs; `None` for as many as fit on the device's SMs (never more than the
      number of blocks).
  """

  block_size: int | None = None
  num_stages: int = DEFAULT_NUM_STAGES
  num_ctas: int | None = None

  def __post_init__(self):
    if self.block_size is not None and (
      self.block_size < LANES or self.block_size & (self.block_size - 1)
    ):
      raise ValueError(f"block_size must be a power of two >= {LANES}, got {self.block_size}")
    if self.num_stages < 1:
      raise ValueError(f"num_stages must be at least 1, got {self.num_stages}")
    if self.num_ctas is not None and self.num_ctas < 1:
      raise ValueError(f"num_ctas must be None or at least 1, got {self.num_ctas}")

  def resolve(self, interpreted: bool) -> TuningConfig:
    """This config with `block_size` set for the interpreter or the GPU."""
    if self.block_size is not None:
      return self
    block_size = INTERPRET_BLOCK_SIZE if interpreted else DEFAULT_BLOCK_SIZE
    return dataclasses.replace(self, block_size=block_size)

  def smem_bytes(self, num_inputs: int, dtype: jnp.dtype) -> int:
    """Shared memory per CTA: the input ring and two output buffers."""
    return (num_inputs * self.num_stages + 2) * self.block_size * jnp.dtype(dtype).itemsize


# 1. The kernel.


def _streaming_kernel(
  *refs,
  elementwise_fn: Callable[..., Array],
  plan: BlockPlan,
  num_inputs: int,
  num_ctas: int,
  num_stages: int,
) -> None:
  """out = elementwise_fn(*inputs) over every block this CTA owns, through a ring of buffers.

  Refs: the flat inputs, their padded tails (if `plan.tail_size`), the flat output, its padded
  tail (likewise), then the scratch: the `(num_inputs, num_stages, block_size)` input ring, the
  `(2, block_size)` output buffers and one barrier per stage.
  """
  has_tail = bool(plan.tail_size)
  inputs_gmem, refs = refs[:num_inputs], refs[num_inputs:]
  if has_tail:
    input_tails_gmem, refs = refs[:num_inputs], refs[num_inputs:]
    out_gmem, out_tail_gmem, in_smem, out_smem, loaded = refs
  else:
    input_tails_gmem, out_tail_gmem = (), None
    out_gmem, in_smem, out_smem, loaded = refs

  cta = lax.axis_index("cta")
  # Blocks cta, cta + num_ctas, ...: at least one, since num_ctas <= plan.num_blocks.
  num_steps = (plan.num_blocks - 1 - cta) // num_ctas + 1

  def for_each_kind(step: Array, action: Callable[[Callable, int, bool], None]) -> None:
    """Runs `action(window, length, is_tail)` under `pl.when(block is of that kind)`.

    `window(ref)` is the block's slice of a flat operand; `length` its static number of elements.
    """
    block = cta + step * num_ctas
    for first, count, start, length, is_tail in plan.windows():
      in_window = block == first if count == 1 else block < first + count
      offset = start + (block - first) * length

      def window(ref, offset=offset, length=length):
        return ref.at[pl.ds(offset, length)]

      pl.when(in_window)(functools.partial(action, window, length, is_tail))

  def start_load(step: Array) -> None:
    slot = index_rem(step, num_stages)

    def load(window: Callable, length: int, is_tail: bool) -> None:
      for i in range(num_inputs):
        plgpu.copy_gmem_to_smem(
          input_tails_gmem[i] if is_tail else window(inputs_gmem[i]),
          in_smem.at[i, slot, pl.ds(0, length)],
          loaded.at[slot],
          # Every copy lies inside its array: one bulk copy, no bounds checks, no fill.
          oob_mode=plgpu.OOBFillMode.PROMISE_IN_BOUNDS,
        )

    for_each_kind(step, load)

  def start_store(step: Array, out_slot: Array) -> None:
    def store(window: Callable, length: int, is_tail: bool) -> None:
      plgpu.copy_smem_to_gmem(
        out_smem.at[out_slot, pl.ds(0, length)],
        out_tail_gmem if is_tail else window(out_gmem),
      )

    for_each_kind(step, store)

  def compute_and_store(step: Array) -> None:
    slot = index_rem(step, num_stages)
    plgpu.barrier_wait(loaded.at[slot])
    # A partial or tail block computes the whole buffer; only its own length is stored.
    result = elementwise_fn(*(in_smem[i, slot] for i in range(num_inputs)))
    out_slot = index_rem(step, 2)
    plgpu.wait_smem_to_gmem(1, wait_read_only=True)  # The store of step - 2 has read this buffer.
    out_smem[out_slot] = result
    plgpu.commit_smem()
    start_store(step, out_slot)

  # Software pipelined: iteration i starts the load of step i, then computes step
  # i - (num_stages - 1), whose load has had num_stages - 1 iterations to land. The first
  # iterations only load, the last ones only compute.
  lag = num_stages - 1

  @pl.loop(0, num_steps + lag)
  def _(i):
    pl.when(i < num_steps)(functools.partial(start_load, i))
    pl.when(i >= lag)(lambda: compute_and_store(i - lag))

  plgpu.wait_smem_to_gmem(0)


# 2. The `plgpu.kernel` wrapper.

# A kernel's element offsets are int32 (`lax.axis_index`'s, and all there is with x64 off):
# arrays past `_MAX_INDEX` elements run as several launches of `LAUNCH_ELEMENTS` each.
_MAX_INDEX = 2**31 - 1
LAUNCH_ELEMENTS = 2**30


def _elementwise(
  elementwise_fn: Callable[..., Array],
  *arrays: Array,
  config: TuningConfig,
  interpret: Interpret,
  name: str,
) -> Array:
  """Runs `elementwise_fn` (in and out in the arrays' dtype) over arrays of one shape and dtype.

  Under `jax.vmap` it still runs as one flat kernel: Mosaic GPU cannot lower a batched kernel,
  and an elementwise one does not need one, so the vmap rule broadcasts unbatched operands and
  calls the kernel on the whole batch.
  """
  params = interpret_params(interpret)
  config = config.resolve(interpreted=params is not None)
  num_inputs = len(arrays)
  if params is not None:
    check_interpretable(name)

  def call(*operands: Array) -> Array:
    shape, dtype, size = operands[0].shape, operands[0].dtype, operands[0].size
    if size == 0:
      return jnp.zeros(shape, dtype)
    smem_bytes = config.smem_bytes(num_inputs, dtype)
    if params is None and smem_bytes > MAX_SMEM_BYTES_PER_CTA:
      raise ValueError(
        f"{name}: {config} takes {smem_bytes} bytes of shared memory per CTA in {dtype}, more "
        f"than the {MAX_SMEM_BYTES_PER_CTA} a Hopper CTA can use"
      )
    plan = BlockPlan(size, config.block_size)
    axes = varying_axes(*operands)
    flat = [vary(a.reshape(-1), axes) for a in operands]
    # Zeros are harmless padding (mish(0) = 0) and are sliced off.
    tails = [jnp.pad(a[plan.main_size :], (0, LANES - plan.tail_size)) for a in flat]
    # An interpreted kernel runs on the host, outside the mesh: its outputs there vary over none.
    out_axes = axes if params is None else frozenset()
    out_type = [out_struct((size,), dtype, out_axes)]
    if plan.tail_size:
      out_type.append(out_struct((LANES,), dtype, out_axes))
    num_ctas = grid_ctas(config.num_ctas, plan, smem_bytes)
    kernel = plgpu.kernel(
      functools.partial(
        _streaming_kernel,
        elementwise_fn=elementwise_fn,
        plan=plan,
        num_inputs=num_inputs,
        num_ctas=num_ctas,
        num_stages=config.num_stages,
      ),
      out_type=out_type,
      scratch_types=[
        plgpu.SMEM((num_inputs, config.num_stages, config.block_size), dtype),
        plgpu.SMEM((2, config.block_size), dtype),
        plgpu.Barrier(num_arrivals=num_inputs, num_barriers=config.num_stages),
      ],
      grid=(num_ctas,),
      grid_names=("cta",),
      interpret=params,
      kernel_name=name,
    )
    kernel = effect_free(kernel, out_type, interpreted=params is not None)
    if plan.tail_size:
      out, out_tail = (vary(o, axes) for o in kernel(*flat, *tails))
      out = lax.dynamic_update_slice(out, out_tail[: plan.tail_size], (plan.main_size,))
    else:
      (out,) = kernel(*flat)
      out = vary(out, axes)
    return out.reshape(shape)

  def launches(*operands: Array) -> Array:
    """`call`, split into launches of `LAUNCH_ELEMENTS` where int32 cannot index the whole."""
    shape, size = operands[0].shape, operands[0].size
    if size <= _MAX_INDEX:
      return call(*operands)
    # A loop of launches over rows of a 2-D view: XLA addresses the rows in 64 bits. Each
    # launch's slice is a copy, and a ragged remainder one more pass: these sizes pay for them.
    rows, rest = divmod(size, LAUNCH_ELEMENTS)
    flat = [a.reshape(-1) for a in operands]
    body = [lax.slice(a, (0,), (rows * LAUNCH_ELEMENTS,)) if rest else a for a in flat]
    body = [a.reshape(rows, LAUNCH_ELEMENTS) for a in body]
    out = lax.map(lambda row: call(*row), body).reshape(-1)
    if rest:
      remainder = call(*(lax.slice(a, (rows * LAUNCH_ELEMENTS,), (size,)) for a in flat))
      out = lax.concatenate([out, remainder], 0)
    return out.reshape(shape)

  @jax.custom_batching.custom_vmap
  def elementwise(*operands):
    return launches(*operands)

  @elementwise.def_vmap
  def _vmap_rule(axis_size, in_batched, *operands):
    operands = [
      a if batched else jnp.broadcast_to(a, (axis_size, *a.shape))
      for a, batched in zip(operands, in_batched, strict=True)
    ]
    return elementwise(*operands), True

  return elementwise(*arrays)


# 3. Forward, backward and derivative.


def _forward(x: Array, config: TuningConfig, interpret: Interpret) -> Array:
  return _elementwise(mish_rounded, x, config=config, interpret=interpret, name="mish_forward")


def _backward(x: Array, g: Array, config: TuningConfig, interpret: Interpret) -> Array:
  return _elementwise(
    in_float32(_mish_times_g),
    x,
    g.astype(x.dtype),
    config=config,
    interpret=interpret,
    name="mish_backward",
  )


def mish_forward(
  x: Array,
  *,
  block_size: int | None = None,
  num_stages: int = DEFAULT_NUM_STAGES,
  num_ctas: int | None = None,
  interpret: Interpret = False,
) -> Array:
  """mish(x) by the forward kernel, in `x.dtype`; no dtype check, no `custom_vjp`."""
  return _forward(x, TuningConfig(block_size, num_stages, num_ctas), interpret)


def mish_backward(
  x: Array,
  g: Array,
  *,
  block_size: int | None = None,
  num_stages: int = DEFAULT_NUM_STAGES,
  num_ctas: int | None = None,
  interpret: Interpret = False,
) -> Array:
  """g * mish'(x) by the backward kernel, in `x.dtype`: one fused pass over `x` and `g`."""
  return _backward(x, g, TuningConfig(block_size, num_stages, num_ctas), interpret)


def mish_derivative(
  x: Array,
  *,
  block_size: int | None = None,
  num_stages: int = DEFAULT_NUM_STAGES,
  num_ctas: int | None = None,
  interpret: Interpret = False,
) -> Array:
  """mish'(x) by the derivative kernel, in `x.dtype`: the slope for forward-mode rules."""
  config = TuningConfig(block_size, num_stages, num_ctas)
  return _elementwise(
    in_float32(mish_grad_f32), x, config=config, interpret=interpret, name="mish_derivative"
  )


def _mish_vjp_fwd(x: Array, config: TuningConfig, interpret: Interpret) -> tuple[Array, Array]:
  # x is the only residual: the backward recomputes e^x, cheaper than storing it.
  return _forward(x, config, interpret), x


def _mish_vjp_bwd(config: TuningConfig, interpret: Interpret, x: Array, g: Array) -> tuple[Array]:
  return (_backward(x, g, config, interpret),)


# 4. The `custom_vjp` public function.


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _mish(x: Array, config: TuningConfig, interpret: Interpret) -> Array:
  return _forward(x, config, interpret)


_mish.defvjp(_mish_vjp_fwd, _mish_vjp_bwd)


@functools.partial(jax.jit, static_argnames=("block_size", "num_stages", "num_ctas", "interpret"))
def mish(
  x: ArrayLike,
  *,
  block_size: int | None = None,
  num_stages: int = DEFAULT_NUM_STAGES,
  num_ctas: int | None = None,
  interpret: Interpret = False,
) -> Array:
  r"""Mish, :math:`x \tanh(\mathrm{softplus}(x))`, by Mosaic GPU kernels, differentiable once.

  Any shape; float32, bfloat16 and float16, computed in float32 and returned in the input dtype.
  Reverse-mode differentiation runs a second kernel that computes g * mish'(x) from the saved x.
  Works under `jax.jit`, `jax.vmap`, `jax.grad`, x64 mode and, compiled, `shard_map` (interpreted:
  over one device only); forward-mode (`jax.jvp`) is not defined here (`mish_derivative` is the
  kernel for it).

  Args:
    x: input array.
    block_size: elements per block, a power of two, at least `LANES`; `None` for
      `DEFAULT_BLOCK_SIZE`, or `INTERPRET_BLOCK_SIZE` under the interpreter.
    num_stages: input buffers per CTA, at least 1.
    num_ctas: persistent CTAs, or `None` for as many as fit on the device.
    interpret: `True` runs the kernels under Mosaic GPU's interpret mode (on CPU, for tests); an
      `InterpretGPUParams` runs them with those parameters (e.g. `detect_races=True`).

  Returns:
    mish(x), of the shape and dtype of `x`.

  Raises:
    TypeError: if `x` is not float32, bfloat16 or float16.
    ValueError: for a bad tuning parameter, or, compiled, one whose buffers do not fit in a
      Hopper CTA's shared memory.
  """
  x = jnp.asarray(x)
  check_dtype(x.dtype, "x")
  return _mish(x, TuningConfig(block_size, num_stages, num_ctas), interpret)


# 5. The plain-jnp reference.


def mish_reference(x: ArrayLike) -> Array:
  """Mish as `x * tanh(softplus(x))` in float32, returned in the dtype of `x`."""
  x = jnp.asarray(x)
  x32 = x.astype(jnp.float32)
  return (x32 * jnp.tanh(jax.nn.softplus(x32))).astype(x.dtype)
