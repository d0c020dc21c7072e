"""A training run's checkpoints: Orbax, one per finished epoch, each sealed by sha256 sums.

After Orbax has finished a save, the sha256 of every file of that step goes into
`<workdir>/checksums.json` (written atomically, sealed by `store.write_json`). A restore first
verifies the files of the step it restores and refuses any mismatch: a damaged checkpoint stops
the run with a one-line `cli.Fault`, and is never silently replaced by a fresh run. The last two
steps are kept, so a run killed between Orbax's save and the sums' still restores the step
before.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

from experiments import store
from experiments.cli import Fault

SUMS = "checksums.json"


class Checkpoints:
  """The checkpoints of one run in `workdir`: `save` after an epoch, `restore` the latest.

  Args:
    workdir: the run's folder (created); Orbax's steps go into `workdir`/checkpoints/.
  """

  def __init__(self, workdir: Path):
    self.workdir = Path(workdir).absolute()
    self._start_over = f"delete {self.workdir} to restart this run from scratch"
    self._manager = ocp.CheckpointManager(
      self.workdir / "checkpoints",
      options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True),
    )

  def _sums(self) -> dict[str, dict[str, str]]:
    path = self.workdir / SUMS
    if not path.exists():
      return {}
    sums = store.read_json(path, start_over=self._start_over).get("steps")
    if not isinstance(sums, dict):
      raise Fault(f"{path} holds no checkpoint sums; {self._start_over}")
    return sums

  def save(self, step: int, state: Any, meta: Mapping[str, Any]) -> None:
    """Saves `state` (a pytree) and `meta` (JSON) as `step`, waits for it, then seals it."""
    self._manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta))
      ),
    )
    self._manager.wait_until_finished()  # an interruption from here on loses no finished epoch
    kept = {str(s) for s in self._manager.all_steps()}
    sums = {s: v for s, v in self._sums().items() if s in kept}
    sums[str(step)] = store.file_sums(self._step_dir(step))
    store.write_json(self.workdir / SUMS, {"steps": sums})

  def _step_dir(self, step: int) -> Path:
    return self.workdir / "checkpoints" / str(step)

  def restore(self, template: Any) -> tuple[Any, dict[str, Any]] | None:
    """The latest sealed step's (state, meta), verified; None when there is no checkpoint.

    Args:
      template: a pytree of the state's structure, shapes and shardings.

    Raises:
      Fault: the checkpoint's files fail their sums, or a step has none.
    """
    steps = sorted(self._manager.all_steps(), reverse=True)
    if not steps:
      return None
    sums = self._sums()
    sealed = [step for step in steps if str(step) in sums]
    # Only the latest step may lack sums: the run was killed between its save and its seal.
    if not sealed or sealed[0] != steps[0] and (len(steps) < 2 or sealed[0] != steps[1]):
      raise Fault(f"{self._step_dir(steps[0])} has no recorded checksums; {self._start_over}")
    step = sealed[0]
    if step != steps[0]:  # the unsealed half-save: its epoch is redone, so Orbax can save it again
      self._manager.delete(steps[0])
    store.verify_sums(self._step_dir(step), sums[str(step)], start_over=self._start_over)
    restored = self._manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore()
      ),
    )
    return restored["state"], restored["meta"]

  def close(self) -> None:
    self._manager.close()
