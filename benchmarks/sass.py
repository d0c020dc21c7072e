"""The kernels as Hopper machine code, compiled on a CPU: ptxas's report and every launch's bounds.

    python benchmarks/sass.py                 # every case; docs/benchmarks/sass.json, the table
    python benchmarks/sass.py --only linear   # the cases whose name matches a regular expression
    python benchmarks/sass.py --help

No GPU is needed. JAX's CUDA plugin compiles for an H100 SXM described in `h100_sxm.txtpb`
(`jax.experimental.topologies`, `JAX_PLATFORMS=cpu`), and Mosaic GPU writes, for each kernel it
compiles, ptxas's report (registers, spill bytes, the target) and the MLIR of the launch (grid,
block, dynamic shared memory). The cases are every kernel the package ships (the elementwise
forward, backward and derivative; the fused forward and its `save_z` form that the gradient uses)
with their default configs in every dtype, on ragged, tiny and huge sizes, and every config the
GPU check's tuning sweep tries. Each record is checked against Hopper's limits (`problems`): no
spills, shared memory within the 227 KiB a block may opt in to, a grid CUDA launches, at most
1024 threads a block, machine code for sm_90a; and gets its occupancy, the CTAs an SM holds by
registers, shared memory and threads.

It needs `jax-cuda12-plugin` and `jax-cuda12-pjrt` at the installed jax version, and
`nvidia-cuda-nvcc-cu12` (ptxas). `--site DIR` (or `MISH_JAX_CUDA_SITE=DIR`) names a folder they
were installed into with `pip install --target DIR`, kept off the environment's path: with the
plugin importable, every JAX program on a machine without a GPU logs CUDA's start-up failure.
The compiles run in child processes (`--jobs`), with that folder on their path.

Writes `OUT/sass.json` (every record, with the environment) and `OUT/sass.md` (the table), and
puts the table into docs/benchmarks.md between its `sass` markers. Exit status: 0 when every
kernel is within the limits, 1 when one is not (the files are still written), 2 on a usage error
or when the plugin or ptxas is missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

if not __package__:  # Run as a script: import `benchmarks` (and `experiments`) from the checkout.
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.ptxas_report import (  # noqa: E402 (after the path set-up above)
  ARCH,
  problems,
  read_dump,
)

PROG = "python benchmarks/sass.py"
REPO_ROOT = Path(__file__).resolve().parents[1]
TARGET_SPEC = Path(__file__).with_name("h100_sxm.txtpb")
SITE_ENV = "MISH_JAX_CUDA_SITE"
DOCS = REPO_ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- sass: begin -->", "<!-- sass: end -->"
# A child process exits with this when the plugin or ptxas is missing.
UNAVAILABLE = 3


# 1. The cases.


@dataclasses.dataclass(frozen=True)
class Case:
  """One compile: a kernel function, its operands' shapes and dtypes, and its static arguments."""

  name: str
  kernel: str
  operands: tuple[tuple[tuple[int, ...], str], ...]
  options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def function(self) -> Callable[..., Any]:
    from mish_jax.kernels import linear_mish, mish  # The kernels' public modules.

    module = linear_mish if self.kernel.startswith("linear_mish") else mish
    name = "linear_mish_forward" if module is linear_mish else self.kernel
    options = dict(self.options)
    if self.kernel == "linear_mish_save_z":
      options["save_z"] = True
    return functools.partial(getattr(module, name), **options, interpret=False)


_FLOATS = ("float32", "bfloat16", "float16")
_ELEMENTWISE = ("mish_forward", "mish_backward", "mish_derivative")
_DENSE_KERNELS = ("linear_mish", "linear_mish_save_z")
# A multiple of the default block, a ragged size (a partial block and a tail of 67), a tail only.
_SIZES = (2**24, 2**20 + 4096 + 128 + 67, 77)
# 16 GiB of bfloat16: past int32's element offsets.
_HUGE = 2**33
_DENSE = ((4096, 4096, 4096), (1000, 700, 300), (1, 1, 1))
# M = 2^24 rows of K = N = 128: more row tiles than a grid's y or z dimension may hold.
_TALL = (2**24, 128, 128)


def _size_text(size: int) -> str:
  exponent = size.bit_length() - 1
  return f"2^{exponent}" if size == 1 << exponent else str(size)


def _elementwise_case(kernel: str, size: int, dtype: str, label: str = "", **options) -> Case:
  operands = ((size,), dtype), ((size,), dtype)
  name = " ".join(filter(None, (kernel, dtype, _size_text(size), label)))
  return Case(name, kernel, operands[: 2 if kernel == "mish_backward" else 1], options)


def _dense_case(kernel: str, shape: tuple[int, int, int], dtype: str, label: str = "", **options):
  m, k, n = shape
  operands = ((m, k), dtype), ((k, n), dtype), ((n,), "float32")
  name = " ".join(filter(None, (kernel, dtype, "x".join(map(str, shape)), label)))
  return Case(name, kernel, operands, options)


def _sweep_cases() -> list[Case]:
  """Every config the GPU check's tuning sweep tries, but the defaults (compiled above)."""
  from mish_jax.kernels import linear_mish, mish

  from benchmarks.gpu_sections import tuning_candidates
  from benchmarks.roofline import FULL

  cases = []
  for dtype in FULL.sweep_dtypes:
    for kernel in ("mish_forward", "mish_backward"):
      configs = tuning_candidates(mish, getattr(mish, kernel), dtype, FULL.max_sweep_configs)
      for label, options in configs[1:]:
        cases.append(_elementwise_case(kernel, FULL.sweep_size, dtype, label, **options))
  for shape in FULL.sweep_shapes:
    configs = tuning_candidates(
      linear_mish, linear_mish.linear_mish, "bfloat16", FULL.max_sweep_configs
    )
    # The default is compiled above for the shapes of `_DENSE`.
    for label, options in configs[1:] if shape in _DENSE else configs:
      label = "default config" if label.startswith("default") else label
      cases.append(_dense_case("linear_mish", shape, "bfloat16", label, **options))
  return cases


def cases() -> list[Case]:
  """Every shipped kernel's defaults, in every dtype and on every size above, then the sweep."""
  found = [
    _elementwise_case(kernel, size, dtype)
    for kernel in _ELEMENTWISE
    for dtype in _FLOATS
    for size in _SIZES
  ]
  found += [_elementwise_case(kernel, _HUGE, "bfloat16") for kernel in _ELEMENTWISE]
  found += [
    _dense_case(kernel, shape, dtype)
    for kernel in _DENSE_KERNELS
    for dtype in _FLOATS
    for shape in _DENSE
  ]
  found += [
    _dense_case(kernel, _TALL, "bfloat16") for kernel in ("linear_mish", "linear_mish_save_z")
  ]
  # bfloat16 x and kernel with a float32 bias: a bfloat16 matmul, float32 out (jnp's promotion).
  found += [
    _dense_case(kernel, _DENSE[0], "bfloat16", "float32 out", out_dtype="float32")
    for kernel in _DENSE_KERNELS
  ]
  found += _sweep_cases()
  return found


# 2. The compiles, in a child process with the CUDA plugin on its path.


def _missing() -> str | None:
  """Why this process cannot compile for CUDA, or None."""
  import importlib.metadata

  import jax

  try:
    plugin = importlib.metadata.version("jax-cuda12-plugin")
  except importlib.metadata.PackageNotFoundError:
    return "jax-cuda12-plugin is not installed (nor on --site)"
  if plugin.split(".")[:3] != jax.__version__.split(".")[:3]:
    return f"jax-cuda12-plugin {plugin} does not match jax {jax.__version__}"
  try:
    from nvidia import cuda_nvcc
  except ImportError:
    return "nvidia-cuda-nvcc-cu12 (ptxas) is not installed (nor on --site)"
  if not (Path(next(iter(cuda_nvcc.__path__))) / "bin" / "ptxas").exists():
    return "nvidia-cuda-nvcc-cu12 has no bin/ptxas"
  return None


def _compile_all(names: Sequence[str]) -> dict[str, dict[str, Any]]:
  """{case name: its kernels' records, or its error}, compiling each case in this process."""
  import jax
  from jax.experimental import topologies
  from jax.sharding import NamedSharding, PartitionSpec

  topology = topologies.get_topology_desc(
    "", "cuda", target_config=TARGET_SPEC.read_text(), topology="1x1x1"
  )
  sharding = NamedSharding(topologies.make_mesh(topology, (1,), ("x",)), PartitionSpec())
  by_name = {case.name: case for case in cases()}
  results = {}
  with tempfile.TemporaryDirectory() as root:
    for index, name in enumerate(names):
      case = by_name[name]
      dump = Path(root) / str(index)
      dump.mkdir()
      # Read at each compile: every case's kernels land in their own folder.
      os.environ["MOSAIC_GPU_DUMP_TO"] = str(dump)
      args = [jax.ShapeDtypeStruct(s, d, sharding=sharding) for s, d in case.operands]
      try:
        jax.jit(case.function()).lower(*args).compile()
        kernels = read_dump(dump)
        results[name] = dict(kernels=kernels) if kernels else dict(error="no kernel was compiled")
      except Exception as err:  # noqa: BLE001 -- a case that fails is a finding, not the end.
        results[name] = dict(error=f"{type(err).__name__}: {' '.join(str(err).split())[:500]}")
  return results


def _child_main(names_file: str) -> int:
  if reason := _missing():
    print(reason, file=sys.stderr)
    return UNAVAILABLE
  names = json.loads(Path(names_file).read_text())
  print(json.dumps(dict(environment=_environment(), cases=_compile_all(names))))
  return 0


class Unavailable(Exception):
  """The CUDA plugin or ptxas is missing: the message says which and how to install it."""


def install_hint() -> str:
  return (
    'python -m pip install --target DIR "jax-cuda12-plugin==V" "jax-cuda12-pjrt==V"'
    " nvidia-cuda-nvcc-cu12, with V the installed jax version, then --site DIR"
  )


def compile_cases(
  names: Sequence[str], site: str | os.PathLike[str] | None = None, jobs: int = 1
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
  """Compiles the named cases in `jobs` child processes, `site` first on their path.

  Returns:
    The children's environment (jax and ptxas versions, the date), and
    {case name: {"kernels": [record, ...]} or {"error": message}}.

  Raises:
    Unavailable: when the children cannot compile for CUDA.
  """
  env = dict(os.environ, JAX_PLATFORMS="cpu", MOSAIC_GPU_DUMP_PTXAS="1")
  env["MOSAIC_GPU_DUMP_MLIR_PASSES"] = "1"
  path = [str(site)] if site else []
  env["PYTHONPATH"] = os.pathsep.join([*path, str(REPO_ROOT), env.get("PYTHONPATH", "")])
  shards = [list(names[i::jobs]) for i in range(max(1, jobs))]
  with tempfile.TemporaryDirectory() as tmp:
    children = []
    for index, shard in enumerate(shards):
      names_file = Path(tmp) / f"{index}.json"
      names_file.write_text(json.dumps(shard))
      command = [sys.executable, "-m", "benchmarks.sass", "--child", str(names_file)]
      children.append(
        subprocess.Popen(
          command, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )  # fmt: skip
      )
    results: dict[str, dict[str, Any]] = {}
    for child in children:
      out, err = child.communicate()
      if child.returncode == UNAVAILABLE:
        raise Unavailable(f"{err.strip()}: {install_hint()}")
      if child.returncode:
        raise RuntimeError(f"the compile process failed ({child.returncode}): {err[-2000:]}")
      report = json.loads(out)
      results.update(report["cases"])
  return report["environment"], {name: results[name] for name in names}


# 3. The report.

_COLUMNS = ("case", "kernel", "regs", "spills (B)", "smem (KiB)", "grid", "block", "CTAs/SM",
            "limited by", "verdict")  # fmt: skip


def _rows(results: Mapping[str, Mapping[str, Any]]) -> Iterable[list[str]]:
  for name, result in results.items():
    if "error" in result:
      yield [name, "", "", "", "", "", "", "", "", f"**fails**: {result['error']}"]
      continue
    for record in result["kernels"]:
      found = problems(record)
      yield [
        name,
        f"`{record['kernel']}`",
        str(record["registers"]),
        str(record["spill_stores"] + record["spill_loads"]),
        f"{(record['smem'] + record['static_smem']) / 1024:.1f}",
        " x ".join(map(str, record["grid"])),
        " x ".join(map(str, record["block"])),
        str(record["ctas_per_sm"]),
        record["limited_by"],
        "; ".join(f"**{problem}**" for problem in found) or "ok",
      ]


def markdown(results: Mapping[str, Mapping[str, Any]], env: Mapping[str, Any]) -> str:
  from experiments.report import markdown_table

  bad = sum(1 for result in results.values() if failures(result))
  head = (
    f"{len(results)} cases compiled for {ARCH} on a CPU (`{PROG}`; jax {env['jax']}, ptxas of"
    f" nvidia-cuda-nvcc-cu12 {env['ptxas']}, {env['date']}): {bad} outside Hopper's limits."
    " CTAs/SM: how many an H100 SM holds by registers, shared memory and threads."
  )
  return f"{head}\n\n{markdown_table(_COLUMNS, _rows(results))}\n"


def failures(result: Mapping[str, Any]) -> list[str]:
  """The problems of one case's compile: its error, or each kernel's problems."""
  if "error" in result:
    return [result["error"]]
  return [f"{record['kernel']}: {p}" for record in result["kernels"] for p in problems(record)]


def _replace_between_markers(path: Path, table: str) -> None:
  text = path.read_text()
  start, end = text.find(BEGIN), text.find(END)
  if start < 0 or end < start:
    raise ValueError(f"{path} has no {BEGIN} ... {END} markers")
  path.write_text(f"{text[: start + len(BEGIN)]}\n{table}{text[end:]}")


def _environment() -> dict[str, Any]:
  import datetime
  import importlib.metadata

  import jax

  def version(name: str) -> str | None:
    try:
      return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      return None

  return dict(
    jax=jax.__version__,
    ptxas=version("nvidia-cuda-nvcc-cu12"),
    target=TARGET_SPEC.name,
    date=datetime.date.today().isoformat(),
  )


def make_parser() -> argparse.ArgumentParser:
  from experiments import cli

  parser = cli.ArgumentParser(
    prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  add = parser.add_argument
  add("--out", type=Path, default=REPO_ROOT / "docs" / "benchmarks", help="for sass.json, sass.md")
  add("--only", type=re.compile, metavar="REGEX", help="the cases whose name matches")
  add("--site", default=os.environ.get(SITE_ENV), help=f"the CUDA plugin's folder (${SITE_ENV})")
  add("--jobs", type=cli.int_in(1, 64), default=os.cpu_count() or 1, help="compile processes")
  add("--no-docs", action="store_true", help="leave docs/benchmarks.md alone")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv[:1] == ["--child"]:
    return _child_main(argv[1])
  from experiments import cli

  args = make_parser().parse_args(argv)

  def run() -> int:
    names = [case.name for case in cases() if not args.only or args.only.search(case.name)]
    if not names:
      raise cli.Fault(f"--only {args.only.pattern!r} matches no case")
    try:
      env, results = compile_cases(names, args.site, args.jobs)
    except Unavailable as err:
      raise cli.Fault(str(err)) from None
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sass.json").write_text(json.dumps(dict(environment=env, cases=results), indent=1))
    table = markdown(results, env)
    (args.out / "sass.md").write_text(f"# Kernels as sm_90a machine code\n\n{table}")
    if not args.no_docs:
      _replace_between_markers(DOCS, table)
    bad = {name: failures(result) for name, result in results.items() if failures(result)}
    for name, found in bad.items():
      print(f"{name}: {'; '.join(found)}")
    print(f"{len(names) - len(bad)} of {len(names)} cases within Hopper's limits; {args.out}")
    return 1 if bad else 0

  return cli.guarded(run, PROG)


if __name__ == "__main__":
  sys.exit(main())
