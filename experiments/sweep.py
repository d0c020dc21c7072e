"""The one sweep loop: every (activation, seed) of a config, trained into one results file.

`run_sweep` trains seed by seed, skips the runs its results already hold, resumes the interrupted
one from its checkpoint (`<out_dir>/checkpoints/<activation>-seed<s>`) and calls `save` after
every run, so an interruption loses at most the epochs since the last checkpoint. What a run adds
to the results is the caller's hook: the MNIST study and the depth test store its record
(`record_run`), the noise test first evaluates the model on noisy images.

`start_or_resume` gives the results a sweep starts from, after verifying, on a resume, that the
stored ones are intact and made with the same settings; `train_grid` is the MNIST study's sweep
(a results.json of runs and their summary against a baseline).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
from jax.sharding import Mesh

from experiments import data, stats, store
from experiments.cli import Fault
from experiments.records import RunRecord
from experiments.train import Config, TrainResult, train_and_evaluate

# What a finished run adds to the results (a JSON-ready entry of "runs"), and its log line.
RunHook = Callable[[TrainResult], tuple[dict[str, Any], str]]


def record_run(trained: TrainResult) -> tuple[dict[str, Any], str]:
  """The default hook: the run's record, and a line with its test figures and timing."""
  record = trained.record
  compiled = record.compile_time_s
  return record.to_json(), (
    f"{record.activation} seed {record.seed}: test accuracy {record.test_accuracy:.2%}, macro-F1 "
    f"{record.test_macro_f1:.4f}, {record.epoch_time_s:.1f} s/epoch "
    + (f"(+{compiled:.1f} s compile)" if compiled >= 0.1 else "(train step from jit's cache)")
  )


def start_or_resume(
  path: Path,
  fresh: Mapping[str, Any],
  *,
  resume: bool,
  expected: Mapping[str, Any],
  validate_run: Callable[[Any, str], object] | None = None,
) -> dict[str, Any]:
  """The results a sweep starts from: `fresh`, or on `resume` the intact ones stored at `path`.

  Args:
    path: the results file.
    fresh: the results of a new sweep (with an empty "runs" list).
    resume: continue the results at `path`, if there are any.
    expected: settings that the stored results must match (see `store.expect_same`).
    validate_run: raises a `Fault` for a stored run of another shape (called with the run and
      the file's name).

  Returns:
    The results; a resumed one also lists the resuming session under its metadata's "resumed".

  Raises:
    Fault: the stored results are damaged, of another shape, or made with other settings.
  """
  if not (resume and path.exists()):
    return {**fresh, "runs": list(fresh["runs"])}
  stored = store.read_matching(path, expected)
  if not isinstance(stored.get("runs"), list) or not isinstance(stored.get("metadata"), dict):
    raise Fault(f"{path} holds results of another shape; choose another --out")
  for run in stored["runs"]:
    if validate_run is not None:
      validate_run(run, str(path))
    elif not isinstance(run, dict) or not {"activation", "seed"} <= set(run):
      raise Fault(f"{path} holds a run of another shape; choose another --out")
  metadata = fresh.get("metadata", {})
  stored["metadata"].setdefault("resumed", []).append(
    {key: metadata.get(key) for key in ("date", "command")}
  )
  return stored


def run_sweep(
  base: Config,
  activations: Sequence[str],
  seeds: Sequence[int],
  out_dir: Path,
  *,
  dataset: data.Dataset,
  results: dict[str, Any],
  save: Callable[[dict[str, Any]], None],
  hook: RunHook = record_run,
  mesh: Mesh | None = None,
  progress: bool = False,
  log: Callable[[str], None] = print,
  log_epochs: bool = True,
  on_run: Callable[[], None] | None = None,
) -> dict[str, Any]:
  """Trains every (activation, seed) of `base` that `results["runs"]` lacks, seed by seed.

  Args:
    base: the config of every run; activation and seed are replaced.
    activations: names from `mish_jax.ACTIVATIONS`.
    seeds: one run per seed and activation.
    out_dir: the checkpoints go into `out_dir`/checkpoints/<activation>-seed<s>.
    dataset: the data, cut to `base.train_limit`.
    results: what `start_or_resume` gave; its "runs" grows and "wall_time_s" adds up.
    save: writes the results; called after every run, and at the end when none was left to run.
    hook: what a finished run adds to "runs", and its log line.
    mesh: the data-parallel mesh (default: every device).
    progress: tqdm progress bars per epoch.
    log: where the lines go: one per run (and per epoch with `log_epochs`).
    log_epochs: also log a line per finished epoch.
    on_run: called after each run, finished now or before (e.g. to move a progress bar).

  Returns:
    `results`.
  """
  done = {(run["activation"], run["seed"]) for run in results["runs"]}
  start, wall_time = time.perf_counter(), results.get("wall_time_s", 0.0)
  results["wall_time_s"] = wall_time
  saved = False
  for seed in seeds:
    for activation in activations:
      name = f"{activation} seed {seed}"
      if (activation, seed) in done:
        log(f"{name}: done already, skipped")
      else:

        def log_epoch(metrics: Mapping[str, Any], name: str = name) -> None:
          log(
            f"{name} epoch {metrics['epoch']}/{base.epochs}: train loss "
            f"{metrics['train_loss']:.4f}, test accuracy {metrics['test_accuracy']:.2%}, "
            f"{metrics['epoch_time_s']:.1f} s"
          )

        trained = train_and_evaluate(
          dataclasses.replace(base, activation=activation, seed=seed),
          out_dir / "checkpoints" / f"{activation}-seed{seed}",
          dataset=dataset,
          mesh=mesh,
          progress=progress,
          on_epoch_end=log_epoch if log_epochs else None,
        )
        entry, line = hook(trained)
        results["runs"].append(entry)
        results["wall_time_s"] = wall_time + time.perf_counter() - start
        save(results)
        saved = True
        log(line)
      if on_run is not None:
        on_run()
  if not saved:  # a resume that found everything done still records itself
    save(results)
  return results


def train_grid(
  base: Config,
  activations: Sequence[str],
  seeds: Sequence[int],
  out_dir: Path,
  *,
  dataset: data.Dataset,
  metadata: Mapping[str, Any],
  resume: bool = False,
  mesh: Mesh | None = None,
  progress: bool = False,
  baseline: str = "relu",
  log: Callable[[str], None] = print,
  on_run: Callable[[], None] | None = None,
) -> dict[str, Any]:
  """`run_sweep` into `out_dir`/results.json: {"metadata", "runs", "summary", "wall_time_s"}.

  The summary (`stats.summarize_runs` against `baseline`) is rewritten with every run. On
  `resume`, the stored metadata must hold the same "config" as `metadata`; the first session's
  metadata is kept, and the wall time adds up over the sessions. Only process 0 writes.

  Raises:
    Fault: the stored results are damaged or were made with another config.
  """
  out_dir.mkdir(parents=True, exist_ok=True)
  path = out_dir / "results.json"
  results = start_or_resume(
    path,
    {"metadata": dict(metadata), "runs": [], "summary": {}},
    resume=resume,
    expected={"metadata": {"config": metadata.get("config")}},
    validate_run=RunRecord.from_json,
  )

  def save(results: dict[str, Any]) -> None:
    runs = [RunRecord.from_json(run, str(path)) for run in results["runs"]]
    summary = stats.summarize_runs(runs, baseline)
    results["summary"] = {name: s.to_json(baseline) for name, s in summary.items()}
    if jax.process_index() == 0:
      store.write_json(path, results)

  return run_sweep(
    base,
    activations,
    seeds,
    out_dir,
    dataset=dataset,
    results=results,
    save=save,
    mesh=mesh,
    progress=progress,
    log=log,
    on_run=on_run,
  )
