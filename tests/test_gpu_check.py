"""Tests of `benchmarks/gpu_check.py`, the one command for a lent Hopper GPU, on this CPU.

The end-to-end test runs the real command: every section, with the kernels under Mosaic GPU
interpret mode (checked, not timed) and XLA timed on tiny shapes, so the script is known to work
before it meets a GPU. The rest are fast in-process tests of its parts.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mish_jax.kernels import linear_mish as linear_mish_kernels
from mish_jax.kernels import mish as mish_kernels

from benchmarks import gpu_check, gpu_results, gpu_sections, roofline, timing

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "benchmarks" / "gpu_check.py"


def _run_script(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout
  )


def test_runs_end_to_end_on_cpu(tmp_path):
  out = tmp_path / "check"
  done = _run_script("--out", str(out), "--quick")
  log = (out / gpu_results.LOG).read_text() if (out / gpu_results.LOG).exists() else ""
  assert done.returncode == 0, done.stdout + done.stderr + log[-3000:]
  # One progress line per section, started and finished.
  for index, name in enumerate(gpu_check.SECTIONS, 1):
    assert f"[gpu_check] {index}/4 {name}: started" in done.stdout
    assert f"[gpu_check] {index}/4 {name}: done" in done.stdout

  results = json.loads((out / gpu_results.RESULTS).read_text())
  env = results["environment"]
  assert env["device"]["platform"] == "cpu" and env["mode"] == "Pallas under GPU interpret mode"
  assert env["versions"]["jax"] == jax.__version__ and env["date"] and env["git_commit"]
  assert env["command"].startswith("gpu_check.py --out") and len(env["source_sha256"]) == 16
  sections = results["sections"]
  assert list(sections) == list(gpu_check.SECTIONS)
  assert all(section["status"] == "done" for section in sections.values())
  assert sections["tests"]["counts"].get("skipped") and not sections["tests"]["counts"].get(
    "failed"
  )

  plan = roofline.INTERPRET
  elementwise = sections["elementwise"]["cases"]
  assert len(elementwise) == len(plan.sizes) * len(plan.dtypes) * len(roofline.DIRECTIONS)
  fused = sections["fused"]["cases"]
  assert len(fused) == len(plan.shapes) * len(roofline.DIRECTIONS)
  for case in elementwise + fused:
    assert case["roofline"]["bytes"] > 0 and set(case["roofline"]["chips"]) == {"H100", "H200"}
    for impl, record in case["results"].items():
      assert record["check"]["ok"], (case["title"], impl, record)
      # The interpreted kernels are checked only; XLA is timed even on a CPU.
      assert ("ms" in record) == ("pallas" not in impl), (case["title"], impl)
  for case in elementwise:
    assert case["results"][gpu_sections.COPY]["pct_copy"] == pytest.approx(100)
  sweep = sections["sweep"]["cases"]
  assert [case["title"].split()[0] for case in sweep] == ["mish_forward", "mish_backward"] + [
    "linear_mish"
  ] * len(plan.sweep_shapes)
  for case in sweep:
    assert len(case["results"]) == plan.max_sweep_configs
    assert all(record["check"]["ok"] for record in case["results"].values())

  report = (out / gpu_results.REPORT).read_text()
  for heading in ["# GPU check", *(f"## {name}" for name in gpu_check.SECTIONS)]:
    assert heading in report
  assert "Compiled" in (out / gpu_results.TESTS_LOG).read_text() or sections["tests"]["summary"]
  assert (out / gpu_results.FIGURE).stat().st_size > 0


def test_a_section_past_its_budget_is_killed_and_the_results_kept(tmp_path, monkeypatch, capsys):
  real_wait = gpu_check._wait
  monkeypatch.setattr(gpu_check, "_wait", lambda process, timeout_s: real_wait(process, 3.0))
  out = tmp_path / "check"
  args = gpu_check.parse_args(["--out", str(out), "--sections", "elementwise,fused"])
  assert gpu_check.run(args) == 1
  results = json.loads((out / gpu_results.RESULTS).read_text())
  for section in results["sections"].values():
    assert section["status"] == "timeout" and "killed at its budget" in section["note"]
  assert "## fused" in (out / gpu_results.REPORT).read_text()
  assert "elementwise: timeout" in capsys.readouterr().out


def _living_processes() -> dict[int, tuple[int, str]]:
  """pid -> (process group, command line) of every process that is neither gone nor a zombie."""
  living = {}
  for proc in Path("/proc").glob("[0-9]*"):
    try:
      state, _, group = (proc / "stat").read_text().rsplit(")", 1)[1].split()[:3]
      cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
      continue
    if state != "Z":
      living[int(proc.name)] = (int(group), cmdline)
  return living


def _living_members(group: int) -> list[int]:
  return [pid for pid, (g, _) in _living_processes().items() if g == group]


def _processes_mentioning(text: str) -> list[int]:
  return [pid for pid, (_, cmdline) in _living_processes().items() if text in cmdline]


def _eventually(condition, timeout_s: float = 30.0) -> bool:
  """Whether `condition()` holds within the timeout: processes start and die asynchronously."""
  deadline = time.monotonic() + timeout_s
  while not condition():
    if time.monotonic() > deadline:
      return False
    time.sleep(0.1)
  return True


def test_wait_kills_the_whole_process_group():
  process = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60"], start_new_session=True)
  assert _eventually(lambda: len(_living_members(process.pid)) == 3)  # sh and both sleeps.
  start = time.monotonic()
  assert gpu_check._wait(process, 0.5) is None
  assert time.monotonic() - start < 10
  assert _eventually(lambda: _living_members(process.pid) == [])


def test_a_terminated_run_ends_its_sections_process(tmp_path):
  out = tmp_path / "check"
  parent = subprocess.Popen([sys.executable, str(SCRIPT), "--out", str(out), "--sections", "fused"])
  # The run and its section's process.
  assert _eventually(lambda: len(_processes_mentioning(str(out))) == 2, timeout_s=60)
  parent.terminate()
  assert parent.wait(timeout=30) == 128 + 15
  assert _eventually(lambda: _processes_mentioning(str(out)) == [])


def test_run_cases_records_errors_and_stops_at_the_deadline(tmp_path):
  gpu_results.write_results(
    tmp_path,
    {"command": ["x"], "budget_s": 1, "environment": None, "sections": {}},
  )

  def fails():
    raise RuntimeError("boom\nsecond line")

  cases = [("ok", lambda: {"title": "ok", "results": {}}), ("fails", fails)]
  gpu_check.run_cases(tmp_path, "fused", iter(cases), deadline=time.monotonic() + 60)
  gpu_check.run_cases(tmp_path, "sweep", iter(cases), deadline=time.monotonic() - 1)
  sections = json.loads((tmp_path / gpu_results.RESULTS).read_text())["sections"]
  fused, sweep = sections["fused"]["cases"], sections["sweep"]["cases"]
  assert fused[0]["title"] == "ok" and fused[1]["error"] == "RuntimeError: boom"
  assert all("budget ran out" in case["error"] for case in sweep)
  assert gpu_results.problems(sections["fused"]) == ["fails: RuntimeError: boom"]


def _context() -> gpu_sections.Context:
  budget = timing.Budget(target_s=0.001, min_samples=3, max_samples=3)
  return gpu_sections.Context(compiled=False, plan=roofline.INTERPRET, chip=None, budget=budget)


def test_measure_times_checks_and_records_failures():
  x = jnp.linspace(-5, 5, 1000, dtype=jnp.float32)

  def refused(x):
    raise ValueError("tile too big")

  def broken(x):
    raise RuntimeError("does not lower")

  calls = {
    "base": (jnp.negative, (x,)),
    "pallas": (jnp.abs, (x,)),
    "refused": (refused, (x,)),
    "broken": (broken, (x,)),
  }
  records = gpu_sections.measure(
    _context(),
    calls,
    lambda name, result: {"ok": bool(np.isfinite(result).all()), "error": 0.0},
    untimed=["pallas"],
    cost=(8000, 1000),
    roof=None,
    baseline="base",
    refusals=(ValueError,),
  )
  assert (
    records["base"]["ms"] > 0 and records["base"]["gb_s"] > 0 and "speedup" not in records["base"]
  )
  assert "ms" not in records["pallas"] and records["pallas"]["check"]["ok"]
  assert records["refused"] == {"refused": "ValueError: tile too big"}
  assert records["broken"] == {"error": "RuntimeError: does not lower"}


@pytest.mark.parametrize("section", ["elementwise", "fused"])
def test_a_case_as_timed_on_a_gpu(section):
  """The GPU path's figures, with the interpreted kernels timed as if they compiled."""
  budget = timing.Budget(target_s=0.001, min_samples=3, max_samples=3)
  ctx = gpu_sections.Context(True, roofline.INTERPRET, roofline.CHIPS[0], budget)
  if section == "elementwise":
    case = gpu_sections._elementwise_case(ctx, 4229, "float32", "forward", "title")
    rate, baseline = "gb_s", gpu_sections.JAX_MISH
  else:
    case = gpu_sections._fused_case(ctx, (33, 40, 50), "float32", "forward", "title")
    rate, baseline = "tflop_s", gpu_sections.JAX_DENSE
  for impl, record in case["results"].items():
    assert record["check"]["ok"] and record["ms"] > 0 and record[rate] > 0, (impl, record)
    assert ("speedup" in record) == (impl not in (baseline, gpu_sections.COPY)), (impl, record)
    assert ("pct_roofline" in record) == (impl != gpu_sections.COPY), (impl, record)
    minimum_ms = case["roofline"]["chips"]["H100"]["min_s"] * 1e3
    if impl != gpu_sections.COPY:
      assert record["pct_roofline"] == pytest.approx(100 * minimum_ms / record["ms"])


def test_checks_fail_on_wrong_results():
  ref = np.linspace(-3, 3, 100)
  check = gpu_sections.check_elementwise
  assert check([ref.astype(np.float32)], [ref], "float32")["ok"]
  assert not check([ref * (1 + 1e-4)], [ref], "float32")["ok"]
  assert not check([np.where(ref > 2, np.nan, ref)], [ref], "float32")["ok"]
  assert not check([ref.astype(np.float32), ref * 1.1], [ref, ref], "float32")["ok"]  # The worst.
  z = jnp.asarray(np.random.default_rng(0).normal(size=(64, 32)), jnp.float32)
  assert gpu_sections.check_dense([z.astype(jnp.bfloat16)], [z], "bfloat16")["ok"]
  assert not gpu_sections.check_dense([z * 1.05], [z], "bfloat16")["ok"]


def test_roofline_numbers():
  """Against the datasheets by hand: 3.35 and 4.8 TB/s, 990 bf16 and 495 tf32 TFLOP/s."""
  square = roofline.case_roofline("dense", (4096, 4096, 4096), "bfloat16", "forward")
  assert square["flops"] == 2 * 4096**3
  assert square["chips"]["H100"] == {
    "bound": "compute",
    "min_s": pytest.approx(2 * 4096**3 / 990e12),
  }
  heavy = roofline.case_roofline("dense", (65536, 256, 1024), "bfloat16", "forward")
  heavy_bytes = 2 * (65536 * 256 + 256 * 1024 + 1024 + 65536 * 1024)
  assert heavy["bytes"] == heavy_bytes
  for chip, bandwidth in (("H100", 3.35e12), ("H200", 4.8e12)):
    assert heavy["chips"][chip] == {
      "bound": "memory",
      "min_s": pytest.approx(heavy_bytes / bandwidth),
    }
  tf32 = roofline.case_roofline("dense", (4096, 4096, 4096), "float32", "forward+backward")
  assert tf32["chips"]["H200"]["min_s"] == pytest.approx(6 * 4096**3 / 495e12)
  stream = roofline.case_roofline("elementwise", (2**28,), "float32", "forward+backward")
  assert stream["bytes"] == 4 * 4 * 2**28  # x and g read, y and dx written.
  assert stream["chips"]["H100"] == {"bound": "memory", "min_s": pytest.approx(2**32 / 3.35e12)}


def test_docs_hold_the_codes_roofline():
  """docs/benchmarks.md shows the tables `--roofline` prints: one source of the numbers."""
  docs = (REPO_ROOT / "docs" / "benchmarks.md").read_text()
  assert roofline.roofline_markdown() in docs


@pytest.mark.parametrize(
  "module, fn", [(mish_kernels, mish_kernels.mish_forward), (linear_mish_kernels, None)]
)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_tuning_candidates_are_distinct_valid_configs(module, fn, dtype):
  fn = fn or module.linear_mish
  candidates = gpu_sections.tuning_candidates(module, fn, dtype, limit=20)
  labels = [label for label, _ in candidates]
  assert labels[0].startswith("default: ") and len(set(labels)) == len(labels) > 1
  configs = []
  for _, kwargs in candidates:
    inspect.signature(fn).bind(
      jnp.zeros(1), *([jnp.zeros(1)] * 2 if fn is not mish_kernels.mish_forward else []), **kwargs
    )
    config = kwargs.get("config") or module.TuningConfig(**kwargs)
    if hasattr(config, "validate"):
      config.validate(jnp.dtype(dtype))
    configs.append(config)
  assert len(set(configs)) == len(configs)
  assert len(gpu_sections.tuning_candidates(module, fn, dtype, limit=2)) == 2


def test_tuning_candidates_drop_what_the_config_refuses():
  @dataclasses.dataclass(frozen=True)
  class TuningConfig:
    tile: int = 128
    num_stages: int = 4

    def validate(self, dtype):
      if self.tile * self.num_stages > 512:
        raise ValueError("too big for shared memory")

  class Module:
    pass

  Module.TuningConfig = TuningConfig
  candidates = gpu_sections.tuning_candidates(Module, lambda x, *, config: x, "float32", limit=20)
  assert [label for label, _ in candidates] == [
    "default: " + repr(TuningConfig()),
    "tile=64",
    "tile=256, num_stages=2",
    "num_stages=2",
  ]


@pytest.mark.parametrize(
  "argv, message",
  [
    ([], "--out DIR is required"),
    (["--quick"], "--out DIR is required"),
    (["--out", "OUT", "--sections", "tests,bogus"], "unknown section 'bogus'"),
    (["--out", "OUT", "--sections", ","], "unknown section (none given)"),
    (["--out", "OUT", "--budget", "abc"], "'abc' is not a number of seconds"),
    (["--out", "OUT", "--budget", "5"], "must be between 10 and 3600 seconds"),
    (["--out", "FULL"], "is not empty: choose another"),
    (["--out", "FILE"], "is a file, not a folder"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
  ],
)
def test_usage_errors_exit_2_with_one_line(argv, message, tmp_path, capsys):
  (tmp_path / "FULL").mkdir()
  (tmp_path / "FULL" / "old.json").write_text("{}")
  (tmp_path / "FILE").write_text("")
  argv = [str(tmp_path / a) if a in ("OUT", "FULL", "FILE") else a for a in argv]
  try:  # A bad flag exits from the parser; an --out that cannot be used returns from main.
    status = gpu_check.main(argv)
  except SystemExit as exit_info:
    status = exit_info.code
  assert status == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and message in err and err.startswith("gpu_check.py: error:")
  assert sorted(path.name for path in tmp_path.rglob("*")) == ["FILE", "FULL", "old.json"]


def test_help_explains(capsys):
  with pytest.raises(SystemExit) as exit_info:
    gpu_check.main(["--help"])
  assert exit_info.value.code == 0
  text = capsys.readouterr().out
  for word in [*gpu_check.SECTIONS, "--out", "--quick", "--budget", "--roofline", "interpret"]:
    assert word in text


def test_roofline_flag_prints_the_tables(capsys):
  assert gpu_check.main(["--roofline"]) == 0
  assert capsys.readouterr().out == roofline.roofline_markdown()


def test_ensure_installed_leaves_an_install_of_this_checkout(monkeypatch):
  monkeypatch.setattr(gpu_check.subprocess, "run", lambda *a, **k: pytest.fail("pip ran"))
  gpu_check.ensure_installed()  # This checkout is installed (the README's command).


def test_ensure_installed_installs_the_checkout_without_dependencies(monkeypatch):
  """On the GPU image nothing is pip-installed and nothing can be downloaded."""
  commands = []
  monkeypatch.setattr(gpu_check, "_installed_kernels", lambda: None)
  monkeypatch.setattr(
    gpu_check.subprocess,
    "run",
    lambda command, **kw: commands.append(command) or subprocess.CompletedProcess(command, 0),
  )
  gpu_check.ensure_installed()
  (command,) = commands
  assert command[:4] == [sys.executable, "-m", "pip", "install"]
  assert {"--no-deps", "--no-build-isolation"} <= set(command)
  assert command[-2:] == ["-e", str(REPO_ROOT)]


def test_ensure_installed_reports_a_failed_install(monkeypatch):
  monkeypatch.setattr(gpu_check, "_installed_kernels", lambda: Path("/elsewhere/kernels"))
  monkeypatch.setattr(
    gpu_check.subprocess,
    "run",
    lambda command, **kw: subprocess.CompletedProcess(command, 1, "", "ERROR: no setuptools\n"),
  )
  with pytest.raises(gpu_check.cli.Fault, match="could not install the checkout.*no setuptools"):
    gpu_check.ensure_installed()
