"""MNIST and Fashion-MNIST as numpy arrays, through TFDS or a small IDX reader, verified offline.

`python experiments/data.py fetch` puts the official MNIST files, verified, where TFDS looks for
manual downloads (see `data_files`). `load` reads them through TFDS, or, where TensorFlow is
absent (the GPU machines), through the `idx` loader, which decodes the verified files with numpy
and caches the arrays under a checksum; both loaders give identical arrays, in the official order.

Usage:
  python experiments/data.py fetch [--data-dir DIR] [--force]
  python experiments/data.py info [--dataset mnist] [--loader auto|tfds|idx]
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import importlib.util
import io
import os
import socket
import struct
import sys
import time
import urllib.parse
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
  # Run as `python experiments/data.py`: make `experiments.*` importable as with `python -m`.
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402  (after the path fix above)

from experiments import cli, store  # noqa: E402
from experiments.data_files import (  # noqa: E402
  DEFAULT_DATA_DIR,
  IDX_IMAGES_MAGIC,
  IDX_LABELS_MAGIC,
  IMAGE_SIZE,
  MNIST_IDX,
  NUM_EXAMPLES,
  SPECS,
  DataError,
  Spec,
  fetch_mnist,
  how_to_get,
  idx_bytes,
  locked,
  manual_dir,
  resolve,
  spec_of,
  verify_files,
)

__all__ = ["DEFAULT_DATA_DIR", "DataError", "Dataset", "fetch_mnist", "load", "main"]

_SPLITS = ("train", "test")
_KEYS = ("train_images", "train_labels", "test_images", "test_labels")


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A labelled image classification dataset held in memory.

  Attributes:
    name: the dataset's TFDS name, e.g. "mnist".
    train_images: (N, 28, 28, 1) float32 in [0, 1] (uint8 / 255), in the official order.
    train_labels: (N,) int32.
    test_images: (10000, 28, 28, 1) float32 in [0, 1].
    test_labels: (10000,) int32.
    class_names: the name of each label.
    source: which loader produced the arrays, "tfds" or "idx".
  """

  name: str
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  class_names: tuple[str, ...]
  source: str

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def limited(self, train_limit: int | None = None, test_limit: int | None = None) -> Dataset:
    """The first `train_limit` training and `test_limit` test examples (None: all of a split).

    The one place where a run's train and test limits cut the data.
    """
    return dataclasses.replace(
      self,
      train_images=self.train_images[:train_limit],
      train_labels=self.train_labels[:train_limit],
      test_images=self.test_images[:test_limit],
      test_labels=self.test_labels[:test_limit],
    )


# --------------------------------------------------------------------------------------------------
# The idx loader: numpy only


def _read_idx(path: Path, split: str, images: bool) -> np.ndarray:
  """Reads a gzipped IDX file of uint8 images (N, 28, 28, 1) or labels (N,).

  Raises:
    DataError: the file is not what it should be.
  """
  try:
    raw = gzip.decompress(path.read_bytes())
  except (OSError, EOFError, zlib.error) as err:
    raise DataError(f"{path} is not a readable gzip file ({err})") from err
  n = NUM_EXAMPLES[split]
  magic, dims = (
    (IDX_IMAGES_MAGIC, (n, IMAGE_SIZE, IMAGE_SIZE)) if images else (IDX_LABELS_MAGIC, (n,))
  )
  header = struct.pack(f">I{len(dims)}I", magic, *dims)
  if not raw.startswith(header) or len(raw) != len(header) + int(np.prod(dims)):
    raise DataError(f"{path} is not an IDX file of {dims} unsigned bytes")
  array = np.frombuffer(raw, np.uint8, offset=len(header)).reshape(dims)
  return array[..., None] if images else array


def _cache_sum_path(path: Path) -> Path:
  return path.with_name(path.name + ".sha256")


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
  """The cached arrays, if the cache is there and matches the sha256 recorded when it was written.

  A cache that fails is only a cache: None, and the arrays are decoded again from the verified
  files.
  """
  try:
    blob = path.read_bytes()
    recorded = _cache_sum_path(path).read_text().strip()
  except OSError:
    return None
  if hashlib.sha256(blob).hexdigest() != recorded:
    return None
  try:
    with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
      arrays = {key: npz[key] for key in _KEYS}
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
    return None
  return arrays


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)  # uncompressed: loads in a fraction of a second
  blob = buffer.getvalue()
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    store.write_bytes(path, blob)
    store.write_bytes(_cache_sum_path(path), (hashlib.sha256(blob).hexdigest() + "\n").encode())
  except OSError as err:  # a read-only data dir still loads, only more slowly
    warnings.warn(f"could not cache decoded arrays in {path}: {err}", stacklevel=3)


def _load_idx(spec: Spec, data_dir: Path) -> dict[str, np.ndarray]:
  """The verified manual files as uint8 arrays, decoded once and cached in `<data_dir>/cache`.

  The cache is named by the sums of the files just verified, and its own sha256, recorded when
  it was written, is checked on every read: no other arrays can be served from it.
  """
  verify_files(spec, data_dir)
  digest = hashlib.sha256("".join(f.sha256 for f in spec.files.values()).encode()).hexdigest()
  cache = data_dir / "cache" / f"{spec.name}-{digest[:16]}.npz"
  arrays = _read_cache(cache)
  if arrays is None:
    manual = manual_dir(spec, data_dir)
    arrays = {
      key: _read_idx(manual / f.name, key.split("_")[0], key.endswith("images"))
      for key, f in spec.files.items()
    }
    _write_cache(cache, arrays)
  return arrays


# --------------------------------------------------------------------------------------------------
# The tfds loader


def _has_tfds() -> bool:
  return all(importlib.util.find_spec(m) for m in ("tensorflow", "tensorflow_datasets"))


def _reachable(host: str, port: int, timeout: float = 3.0) -> bool:
  """Whether a TCP connection opens: TFDS would otherwise retry for minutes when offline."""
  try:
    socket.create_connection((host, port), timeout=timeout).close()
  except OSError:
    return False
  return True


def _check_tfds_sources(spec: Spec, data_dir: Path, urls: Iterable[str]) -> None:
  """Checks that TFDS can prepare the dataset: from verified manual files, or by downloading.

  Raises:
    DataError: a manual file is corrupt, or some are missing and a download host is unreachable.
  """
  manual = manual_dir(spec, data_dir)
  if all((manual / f.name).exists() for f in spec.files.values()):
    verify_files(spec, data_dir)
    return
  for url in urls:
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if not _reachable(parts.hostname, port):
      raise DataError(
        f"{spec.name} is not prepared in {data_dir} and TFDS cannot download it: "
        f"{parts.hostname} is unreachable (offline?); {how_to_get(spec, data_dir)}"
      )


def _tfds_order(split: str) -> np.ndarray:
  """The generator index of each example of a TFDS split, in TFDS's on-disk order.

  TFDS stores a split sorted by md5(split name + str(key)) (tensorflow_datasets/core/hashing.py,
  stable by design); the MNIST builders key each example by its index in the IDX file.
  """
  salt = hashlib.md5(split.encode(), usedforsecurity=False)

  def hashed(i: int) -> bytes:
    md5 = salt.copy()
    md5.update(str(i).encode())
    return md5.digest()

  return np.array(sorted(range(NUM_EXAMPLES[split]), key=hashed))


def _tfds_builder(tfds: Any, spec: Spec, data_dir: Path) -> Any:
  """`tfds.builder`, with a damaged prepared dataset (e.g. its dataset_info.json) a DataError."""
  try:
    builder = tfds.builder(spec.name, data_dir=str(data_dir))
    builder.is_prepared()
  except Exception as err:  # TFDS raises many kinds on a damaged folder; all mean the same here
    raise DataError(
      f"TFDS's prepared {spec.name} in {data_dir / spec.name} is damaged "
      f"({type(err).__name__}: {err}); delete that folder and load again"
    ) from None
  return builder


def _load_tfds(spec: Spec, data_dir: Path) -> dict[str, np.ndarray]:
  """Loads through TFDS, preparing the dataset first if needed, back in the official order."""
  # TF's C++ start-up chatter (INFO lines, oneDNN's notice) would turn a one-line error into 7.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # only decodes images here: no numerics
  try:
    import tensorflow as tf
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError
  except ImportError as err:
    raise DataError(
      f"loader='tfds' needs tensorflow and tensorflow-datasets ({err}): "
      "`pip install -e '.[dev]'`, or use loader='idx'"
    ) from err
  builder = _tfds_builder(tfds, spec, data_dir)
  if not builder.is_prepared():
    _check_tfds_sources(spec, data_dir, builder.url_infos or {})
    with locked(data_dir):
      # Another process may have prepared it while this one waited: look again.
      builder = _tfds_builder(tfds, spec, data_dir)
      if not builder.is_prepared():
        try:
          builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir(spec, data_dir)))
          )
        except (OSError, NonMatchingChecksumError) as err:
          reason = " ".join(str(err).split())  # CLIs print one line
          raise DataError(
            f"TFDS could not prepare {spec.name} ({reason}); {how_to_get(spec, data_dir)}"
          ) from err
  arrays = {}
  for split in _SPLITS:
    try:
      images, labels = tfds.as_numpy(
        builder.as_dataset(split=split, batch_size=-1, as_supervised=True)
      )
    except tf.errors.OpError as err:
      raise DataError(
        f"TFDS's prepared {spec.name} in {builder.data_dir} is unreadable ({err.message}); "
        "delete that folder and load again"
      ) from err
    if builder.info.disable_shuffling:
      order = np.arange(len(labels))
    else:
      order = _tfds_order(split)
    if images.shape != (len(order), IMAGE_SIZE, IMAGE_SIZE, 1) or labels.shape != order.shape:
      raise DataError(f"TFDS's {spec.name} {split} split has shape {images.shape}; delete it")
    arrays[f"{split}_images"] = np.empty_like(images)
    arrays[f"{split}_images"][order] = images
    arrays[f"{split}_labels"] = np.empty_like(labels)
    arrays[f"{split}_labels"][order] = labels
  if spec.name == "mnist":  # the official IDX sums check both the content and the order
    for key, (raw_sha256, member, _) in MNIST_IDX.items():
      array = arrays[key][..., 0] if key.endswith("images") else arrays[key]
      if hashlib.sha256(idx_bytes(array)).hexdigest() != raw_sha256:
        raise DataError(
          f"TFDS's mnist differs from the official {member}; delete {builder.data_dir}"
        )
  return arrays


# --------------------------------------------------------------------------------------------------


def load(
  name: str = "mnist",
  *,
  data_dir: Path | None = None,
  train_limit: int | None = None,
  loader: str = "auto",
) -> Dataset:
  """Loads a dataset into memory, in the official order.

  Args:
    name: "mnist" or "fashion_mnist".
    data_dir: the TFDS data dir; `DEFAULT_DATA_DIR` when None.
    train_limit: keep only the first `train_limit` training examples (the test set stays whole).
    loader: "tfds" (TensorFlow Datasets; its prepared dataset is its cache), "idx" (numpy reads
      the verified manual files; the decoded arrays are cached), or "auto": "tfds" when
      TensorFlow and TFDS are installed, else "idx".

  Returns:
    The `Dataset`: images (N, 28, 28, 1) float32 in [0, 1], labels int32.

  Raises:
    DataError: the dataset is missing, corrupt or cannot be had here; the message says how to
      get it.
    ValueError: a bad `loader` or `train_limit`.
  """
  if loader not in ("auto", "tfds", "idx"):
    raise ValueError(f"loader must be 'auto', 'tfds' or 'idx', not {loader!r}")
  if train_limit is not None and train_limit < 1:
    raise ValueError(f"train_limit must be positive, not {train_limit}")
  spec = spec_of(name)
  data_dir = resolve(data_dir)
  if loader == "auto":
    loader = "tfds" if _has_tfds() else "idx"
  arrays = _load_tfds(spec, data_dir) if loader == "tfds" else _load_idx(spec, data_dir)

  def images(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / np.float32(255)

  return Dataset(
    name=spec.name,
    train_images=images(arrays["train_images"]),
    train_labels=arrays["train_labels"].astype(np.int32),
    test_images=images(arrays["test_images"]),
    test_labels=arrays["test_labels"].astype(np.int32),
    class_names=spec.class_names,
    source=loader,
  ).limited(train_limit)


def _info(args: argparse.Namespace) -> None:
  start = time.perf_counter()
  ds = load(args.dataset, data_dir=args.data_dir, train_limit=args.train_limit, loader=args.loader)
  seconds = time.perf_counter() - start
  print(f"{ds.name}: loaded by {ds.source} from {resolve(args.data_dir)} in {seconds:.2f} s")
  for split in _SPLITS:
    x, y = getattr(ds, f"{split}_images"), getattr(ds, f"{split}_labels")
    counts = np.bincount(y, minlength=ds.num_classes)
    print(f"  {split:5}  images {x.shape} {x.dtype} in [{x.min():g}, {x.max():g}]")
    print(f"         labels {y.shape} {y.dtype}, per class {counts}")
  print(f"  classes ({ds.num_classes}): {', '.join(ds.class_names)}")


def _fetch(args: argparse.Namespace) -> None:
  start = time.perf_counter()
  manual = fetch_mnist(args.data_dir, force=args.force)
  print(f"MNIST verified in {manual} ({time.perf_counter() - start:.1f} s)")


PROG = "python experiments/data.py"


def main(argv: Sequence[str] | None = None) -> int:
  """The command line; returns the exit status (2 on a usage or data error, with one line)."""
  parser = cli.ArgumentParser(
    prog=PROG,
    description=__doc__.split("\n\n")[0],
    epilog="Exit status 2 on a usage error or missing, corrupt or unobtainable data.",
  )
  commands = parser.add_subparsers(dest="command", required=True)
  fetch = commands.add_parser(
    "fetch", help="put the verified MNIST files where TFDS and the idx loader find them"
  )
  fetch.add_argument("--force", action="store_true", help="rebuild even if present and verified")
  fetch.set_defaults(run=_fetch)
  info = commands.add_parser("info", help="load a dataset and print its shapes and class counts")
  info.add_argument("--dataset", default="mnist", choices=sorted(SPECS))
  info.add_argument("--loader", default="auto", choices=("auto", "tfds", "idx"))
  info.add_argument(
    "--train-limit", type=cli.positive_int, default=None, help="keep the first N train examples"
  )
  info.set_defaults(run=_info)
  for command in (fetch, info):
    command.add_argument(
      "--data-dir", type=Path, default=None, help=f"TFDS data dir (default: {DEFAULT_DATA_DIR})"
    )
  args = parser.parse_args(argv)

  def run() -> int:
    args.run(args)
    return 0

  return cli.guarded(run, PROG)


if __name__ == "__main__":
  sys.exit(main())
