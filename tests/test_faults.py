"""Fault injection: every damaged file, bad folder or bad flag is exit 2 and one line, and loses
nothing that was on disk.

Tiny runs (a synthetic dataset, one epoch); the commands run in-process where the exit status and
stderr can be read there, in a subprocess where starting the interpreter is the point (a script
that imported itself twice, TensorFlow's start-up lines).
"""

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from experiment_testing import SMALL, synthetic_dataset, without_times

from benchmarks import run as bench
from experiments import checkpoints, cli, data, landscape, mnist, store, suite, train
from experiments.cli import Fault

REPO_ROOT = Path(__file__).resolve().parents[1]
ONE_EPOCH = dataclasses.replace(SMALL, epochs=1)
TINY_MNIST = ["--activations", "relu", "--seeds", "1", "--epochs", "1", "--batch-size", "32"]


def snapshot(folder: Path) -> dict[str, str]:
  """sha256 of every file under `folder`: what a failed command must leave as it was."""
  return {
    str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
    for p in sorted(folder.rglob("*"))
    if p.is_file()
  }


def status_of(main, argv) -> int:
  """The exit status of `main(argv)`: argparse's errors exit, faults return."""
  try:
    return main(argv)
  except SystemExit as exit_info:
    return exit_info.code


def assert_one_line(capsys, *words: str) -> str:
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "Traceback" not in err, err
  for word in words:
    assert word in err, err
  return err


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory) -> Path:
  """A finished tiny `mnist.py` run (synthetic data): its output folder."""
  out = tmp_path_factory.mktemp("mnist") / "run"
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(data, "load", lambda *args, **kwargs: synthetic_dataset())
    assert mnist.main([*TINY_MNIST, "--out", str(out), "--quiet"]) == 0
  return out


@pytest.fixture
def resume_mnist(mnist_run, tmp_path, monkeypatch, capsys):
  """A copy of `mnist_run`, and a function that resumes it and returns (status, snapshot)."""
  out = tmp_path / "run"
  shutil.copytree(mnist_run, out)
  monkeypatch.setattr(data, "load", lambda *args, **kwargs: synthetic_dataset())
  capsys.readouterr()

  def resume(*extra: str) -> int:
    return status_of(mnist.main, [*TINY_MNIST, "--out", str(out), "--quiet", "--resume", *extra])

  return out, resume


# --------------------------------------------------------------------------------------------------
# results.json


def test_a_bit_flip_anywhere_in_a_results_file_is_detected(tmp_path):
  path = tmp_path / "results.json"
  store.write_json(path, {"runs": [{"accuracy": 0.9912, "loss": 1e-05, "name": "mish"}]})
  original = path.read_bytes()
  for i in range(len(original)):
    damaged = bytearray(original)
    damaged[i] ^= 1 << (i % 8)
    path.write_bytes(damaged)
    with pytest.raises(Fault, match="results.json"):
      store.read_json(path, start_over="start over")
  path.write_bytes(original)
  assert store.read_json(path, start_over="")["runs"][0]["name"] == "mish"


@pytest.mark.parametrize(
  "damage",
  ["truncate", "empty list", "empty object", "bit flip", "runs of another shape"],
)
def test_mnist_resume_of_a_damaged_results_file(resume_mnist, capsys, damage):
  out, resume = resume_mnist
  path = out / "results.json"
  text = path.read_text()
  if damage == "truncate":
    path.write_text(text[: len(text) // 2])
  elif damage == "empty list":
    path.write_text("[]")
  elif damage == "empty object":
    path.write_text("{}")
  elif damage == "bit flip":
    path.write_bytes(text.replace('"relu"', '"relv"', 1).encode())
  else:
    stored = json.loads(text)
    stored["runs"] = [{"activation": "relu", "seed": 0}]
    store.write_json(path, stored)
  before = snapshot(out)
  assert resume() == 2
  assert_one_line(capsys, str(path))
  assert snapshot(out) == before  # no "resumed" entry, nothing rewritten


def test_mnist_resume_with_other_flags_names_the_differing_keys(resume_mnist, capsys):
  out, resume = resume_mnist
  before = snapshot(out)
  assert resume("--learning-rate", "0.01") == 2
  err = assert_one_line(capsys, "metadata.config.learning_rate 0.003 (now 0.01)")
  assert "batch_size" not in err  # only the keys that differ
  assert snapshot(out) == before


def test_mnist_resume_with_the_default_data_dir_spelled_out_is_the_same_run(resume_mnist, capsys):
  out, resume = resume_mnist
  runs = store.read_json(out / "results.json", start_over="")["runs"]
  assert resume("--data-dir", str(data.DEFAULT_DATA_DIR)) == 0
  resumed = store.read_json(out / "results.json", start_over="")
  assert resumed["runs"] == runs and len(resumed["metadata"]["resumed"]) == 1


# --------------------------------------------------------------------------------------------------
# Checkpoints


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory) -> Path:
  """The workdir of a one-epoch `train_and_evaluate` of the small CNN."""
  workdir = tmp_path_factory.mktemp("checkpoint")
  train.train_and_evaluate(
    dataclasses.replace(SMALL, epochs=1), workdir, dataset=synthetic_dataset()
  )
  return workdir


def _step_files(workdir: Path) -> list[Path]:
  return sorted(p for p in (workdir / "checkpoints").rglob("*") if p.is_file())


def _restore(workdir: Path) -> None:
  """A restore of `workdir`'s checkpoint, as `train_and_evaluate` starts one; a damaged
  checkpoint fails its verification before any state is read, so no template is needed."""
  saved = checkpoints.Checkpoints(workdir)
  try:
    saved.restore(template=None)
  finally:
    saved.close()


def test_a_bit_flip_in_any_checkpoint_file_is_refused(checkpointed, tmp_path):
  files = _step_files(checkpointed)
  assert len(files) > 5
  for i, original in enumerate(files):
    workdir = tmp_path / f"copy{i}"
    shutil.copytree(checkpointed, workdir)
    path = workdir / original.relative_to(checkpointed)
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0x10
    path.write_bytes(content)
    before = snapshot(workdir)
    with pytest.raises(Fault, match=f"{path.name} fails its sha256 check.*delete {workdir}"):
      _restore(workdir)
    assert snapshot(workdir) == before


@pytest.mark.parametrize("damage", ["truncate a parameter file", "truncate meta", "delete sums"])
def test_damaged_checkpoints_are_one_line_faults(checkpointed, tmp_path, damage):
  workdir = tmp_path / "run"
  shutil.copytree(checkpointed, workdir)
  if damage == "delete sums":
    (workdir / checkpoints.SUMS).unlink()
  else:
    name = "metadata" if damage == "truncate meta" else "manifest.ocdbt"
    path = next(p for p in _step_files(workdir) if p.name == name)
    path.write_bytes(path.read_bytes()[:10])
  with pytest.raises(Fault) as fault:
    _restore(workdir)
  assert "delete" in str(fault.value) and str(workdir) in str(fault.value)


def test_train_and_evaluate_never_replaces_a_damaged_checkpoint(checkpointed, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(checkpointed, workdir)
  path = next(p for p in _step_files(workdir) if p.name == "manifest.ocdbt")
  path.write_bytes(path.read_bytes()[:-1] + b"\0")
  before = snapshot(workdir)
  with pytest.raises(Fault, match="manifest.ocdbt fails its sha256 check"):
    train.train_and_evaluate(ONE_EPOCH, workdir, dataset=synthetic_dataset())
  assert snapshot(workdir) == before


def test_a_run_killed_between_save_and_seal_redoes_only_that_epoch(tmp_path):
  dataset = synthetic_dataset()
  finished = train.train_and_evaluate(SMALL, tmp_path, dataset=dataset).record.to_json()
  sums = store.read_json(tmp_path / checkpoints.SUMS, start_over="")
  del sums["steps"]["2"]  # as if killed after Orbax saved epoch 2, before its sums were written
  store.write_json(tmp_path / checkpoints.SUMS, sums)
  epochs = []
  resumed = train.train_and_evaluate(
    SMALL, tmp_path, dataset=dataset, on_epoch_end=lambda m: epochs.append(m["epoch"])
  ).record.to_json()
  assert epochs == [2]
  assert without_times(resumed) == without_times(finished)


def test_mnist_resume_of_a_damaged_checkpoint_exits_2(resume_mnist, capsys):
  out, resume = resume_mnist
  (out / "results.json").unlink()  # the run was interrupted after its checkpoint
  manifest = next(p for p in (out / "checkpoints").rglob("manifest.ocdbt"))
  manifest.write_bytes(manifest.read_bytes()[:-1] + b"\0")
  before = snapshot(out)
  assert resume() == 2
  assert_one_line(capsys, "manifest.ocdbt", "fails its sha256 check", "delete")
  assert snapshot(out) == before


# --------------------------------------------------------------------------------------------------
# Flags and folders


@pytest.mark.parametrize(
  ("argv", "message"),
  [
    (["--resume"], "--resume needs --out"),
    (["--process-id", "1"], "--process-id need --distributed"),
    (["--distributed", "--out", "X", "--num-processes", "1", "--process-id", "3"], "out of range"),
    (["--distributed", "--out", "X", "--process-id", "-1"], "must be an integer of at least 0"),
    (["--distributed", "--out", "X", "--coordinator-address", "nohost.invalid:1"], "resolve"),
    (["--distributed", "--out", "X", "--coordinator-address", "nohost"], "not HOST:PORT"),
    (["--epochs", "100000000000000000000"], "at most 10,000"),
  ],
)
def test_mnist_flag_faults(capsys, tmp_path, argv, message):
  argv = [str(tmp_path / "x") if arg == "X" else arg for arg in argv]
  assert status_of(mnist.main, argv) == 2
  assert_one_line(capsys, message)


def test_every_command_probes_its_out_before_working(tmp_path, monkeypatch, capsys):
  def refuse(self, *args, **kwargs):
    if self.name == ".write-test":
      raise PermissionError(13, "Permission denied")
    return real_write_text(self, *args, **kwargs)

  real_write_text = Path.write_text
  monkeypatch.setattr(Path, "write_text", refuse)
  monkeypatch.setattr(bench, "build_sections", lambda *a: pytest.fail("benchmarked first"))
  monkeypatch.setattr(data, "load", lambda *a, **k: pytest.fail("loaded data first"))
  commands = {
    "benchmarks": lambda out: bench.main(["--quick", "--out", out]),
    "mnist": lambda out: mnist.main(["--out", out]),
    "landscape": lambda out: landscape.main(["--quick", "--out", out]),
  }
  for name, command in commands.items():
    out = tmp_path / name
    out.mkdir()
    assert command(str(out)) == 2
    assert_one_line(capsys, f"--out {out} is not writable")
    assert list(out.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_benchmarks_refuse_a_read_only_out(tmp_path, capsys):
  out = tmp_path / "ro"
  out.mkdir(mode=0o555)
  assert bench.main(["--quick", "--out", str(out)]) == 2
  assert_one_line(capsys, "not writable")


def test_data_cli_faults(tmp_path, capsys):
  a_file = tmp_path / "a-file"
  a_file.write_text("")
  for argv, message in (
    (["info", "--train-limit", "0"], "must be a positive integer"),
    (["info", "--train-limit", "-5"], "must be a positive integer"),
    (["fetch", "--data-dir", str(a_file)], f"--data-dir {a_file} is not a writable folder"),
  ):
    assert status_of(data.main, argv) == 2
    assert_one_line(capsys, message)


def test_a_rewritten_idx_cache_is_not_served(tmp_path):
  try:
    manual = data.fetch_mnist()
  except data.DataError as err:
    pytest.skip(f"MNIST is not here: {err}")
  shutil.copytree(manual, tmp_path / "downloads" / "manual")
  real = data.load(loader="idx", data_dir=tmp_path)
  (cache,) = (tmp_path / "cache").glob("*.npz")
  arrays = dict(np.load(cache))
  arrays["train_labels"] = arrays["train_labels"] * 0  # valid, and wrong
  np.savez(cache, **arrays)
  again = data.load(loader="idx", data_dir=tmp_path)
  assert (again.train_labels == real.train_labels).all()


# --------------------------------------------------------------------------------------------------
# The paper experiments


def test_paper_resume_with_a_smaller_only_keeps_the_others(tmp_path):
  protocol = dataclasses.replace(landscape.PROTOCOLS["quick"], seeds=2, grid=20)
  session = suite.Session(activations=("relu", "mish"), log=lambda line: None)
  suite.run_all({landscape: protocol}, tmp_path, session)
  collated = store.read_json(tmp_path / "results.json", start_over="")
  collated["experiments"]["noise"] = {**collated["experiments"]["landscape"], "wall_minutes": 1.0}
  store.write_json(tmp_path / "results.json", collated)  # as if noise had run before
  suite.run_all({landscape: protocol}, tmp_path, dataclasses.replace(session, resume=True))
  again = store.read_json(tmp_path / "results.json", start_over="")
  assert set(again["experiments"]) == {"landscape", "noise"}
  assert "noise" in (tmp_path / "report.md").read_text().split("## Timing")[1]


def test_paper_compilation_cache_is_per_user(tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  assert suite.compilation_cache_dir().is_relative_to(tmp_path / "cache")


def _script(*argv: str) -> subprocess.CompletedProcess:
  env = {**os.environ, "PYTHONPATH": ""}  # as a user runs it: no test paths
  return subprocess.run(
    [sys.executable, *argv], cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=300
  )


def test_paper_scripts_refuse_another_runs_folder_with_one_line(tmp_path):
  out = tmp_path / "paper"
  protocol = dataclasses.replace(landscape.PROTOCOLS["quick"], seeds=1, grid=20)
  suite.run_all(
    {landscape: protocol}, out, suite.Session(activations=("relu",), log=lambda line: None)
  )
  before = snapshot(out)
  flags = ["--quick", "--only", "landscape", "--resume", "--out", str(out)]
  for argv in (
    ["experiments/paper.py", *flags, "--activations", "relu,mish"],
    ["-m", "experiments.paper", *flags, "--activations", "relu,mish"],
  ):
    proc = _script(*argv)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "landscape/results.json was made with other settings" in proc.stderr
  assert snapshot(out) == before


def test_data_cli_damaged_tfds_folder_is_one_line(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  info = tmp_path / "mnist" / "3.0.1" / "dataset_info.json"
  info.parent.mkdir(parents=True)
  info.write_text('{"name": "mnist", "splits": [')
  proc = _script("experiments/data.py", "info", "--loader", "tfds", "--data-dir", str(tmp_path))
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.count("\n") == 1, proc.stderr  # TensorFlow's start-up lines silenced
  assert str(tmp_path) in proc.stderr


def test_guarded_turns_only_faults_into_status_2(capsys):
  def fault() -> int:
    raise Fault("file X is damaged;\n delete it")

  assert cli.guarded(fault, "prog") == 2
  assert capsys.readouterr().err == "prog: error: file X is damaged; delete it\n"
  with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
    cli.guarded(lambda: 1 // 0, "prog")
