"""``fashion_mnist``: Zalando's Fashion-MNIST (60000 train + 10000 test, 28x28 grey, 10 classes).

Read from the four IDX files (``.gz`` or plain). When ``data.root`` is set, only there:
``data.root`` and ``data.root/FashionMNIST/raw`` (torchvision's layout). Otherwise in the Debian/Ubuntu
package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``); and
``$KDFLOW_HOME/data/FashionMNIST/raw`` (where a download goes when ``data.root`` is unset).
Only with ``data.download: true`` is anything downloaded (through torchvision).
The official test split is t10k.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from kdcore.config import DataConfig
from kdcore.data.idx import read_idx
from kdcore.data.registry import DATASETS, RawData, check_options, data_home, data_root
from kdcore.errors import DataError

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
SYSTEM_DIRS = [Path("/usr/share/datasets/fashion-mnist")]
TORCHVISION_SUBDIR = Path("FashionMNIST") / "raw"


def candidate_dirs(cfg: DataConfig) -> list[Path]:
    if cfg.root:  # a root the user names is the only place looked in (no silent fallback)
        root = Path(cfg.root).expanduser()
        return [root, root / TORCHVISION_SUBDIR]
    dirs = list(SYSTEM_DIRS)
    dirs.append(data_home() / TORCHVISION_SUBDIR)
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def find_files(folder: Path) -> Optional[dict[str, Path]]:
    """The four files in ``folder`` (plain preferred over ``.gz``), or None if any is missing."""
    found = {}
    for key, stem in FILES.items():
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                found[key] = folder / name
                break
        else:
            return None
    return found


def download(cfg: DataConfig) -> Path:
    root = data_root(cfg)
    try:
        from torchvision.datasets import FashionMNIST
    except ImportError:
        raise DataError("downloading fashion_mnist needs torchvision: pip install torchvision") from None
    try:
        FashionMNIST(root=str(root), train=True, download=True)
    except Exception as exc:  # network or disk problems, reported in one line
        raise DataError(f"could not download Fashion-MNIST into {root / TORCHVISION_SUBDIR}: {exc}") from None
    return root / TORCHVISION_SUBDIR


@DATASETS.register("fashion_mnist")
def load_fashion_mnist(cfg: DataConfig) -> RawData:
    check_options(cfg)
    dirs = candidate_dirs(cfg)
    files = next((f for f in map(find_files, dirs) if f is not None), None)
    if files is None and cfg.download:
        folder = download(cfg)
        files = find_files(folder)
        if files is None:
            raise DataError(f"downloaded Fashion-MNIST but its IDX files are not in {folder}")
    if files is None:
        looked = "\n  ".join(str(d) for d in dirs)
        names = ", ".join(f"{s}[.gz]" for s in FILES.values())
        raise DataError(
            f"Fashion-MNIST files not found ({names}). Looked in:\n  {looked}\n"
            "Get them with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), put them in "
            "data.root, or set data.download: true to download them."
        )
    arrays = {key: read_idx(path) for key, path in files.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.ndim != 3 or y.ndim != 1:
            raise DataError(
                f"file {files[f'{split}_x']} should hold images [N, H, W] and {files[f'{split}_y']} labels [N]; "
                f"found shapes {x.shape} and {y.shape}"
            )
        if len(x) != len(y):
            raise DataError(
                f"file {files[f'{split}_x']} has {len(x)} images but {files[f'{split}_y']} has {len(y)} labels"
            )
    return RawData(
        train_x=arrays["train_x"][:, None],
        train_y=arrays["train_y"].astype("int64"),
        test_x=arrays["test_x"][:, None],
        test_y=arrays["test_y"].astype("int64"),
        class_names=list(CLASS_NAMES),
        source=str(files["train_x"].parent),
    )
