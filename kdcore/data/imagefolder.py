"""``imagefolder``: your own images, one sub-folder per class.

    root/<class_name>/*.png|jpg|jpeg|bmp            -> a test split is carved
    root/train/<class_name>/..., root/test/<class_name>/...   -> official train / test
    root/train/<class_name>/..., root/val/<class_name>/...    -> the same, val/ as the test set

Images are converted to RGB (or grey with ``data.options.grayscale: true``) and resized to
``data.image_size`` x ``data.image_size``; without ``image_size`` all images must share one size.
Class indices follow the sorted class-folder names of the train folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from kdcore.config import DataConfig
from kdcore.data.image_files import ImageFiles, lists_files
from kdcore.data.registry import DATASETS, RawData, check_options
from kdcore.errors import DataError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")


def class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def scan(folder: Path, class_names: Optional[list[str]] = None) -> tuple[list[Path], list[int], list[str]]:
    """Image paths and labels under ``folder``; ``class_names`` fixes the label order (for test)."""
    classes = class_folders(folder)
    if not classes:
        raise DataError(
            f"no class folders in {folder}: put each class's images in {folder}/<class_name>/ ({', '.join(EXTENSIONS)})"
        )
    names = class_names if class_names is not None else [c.name for c in classes]
    index = {n: i for i, n in enumerate(names)}
    paths, labels = [], []
    for c in classes:
        if c.name not in index:
            raise DataError(f"class folder {c} is not among the train classes: {', '.join(names)}")
        files = image_files(c)
        paths += files
        labels += [index[c.name]] * len(files)
    if not paths:
        raise DataError(f"no images ({', '.join(EXTENSIONS)}) found under {folder}")
    return paths, labels, names


def as_8bit(im):
    """``im`` with 8 bits per channel: 16-bit (and 32-bit integer) grey images keep their high byte,
    as torchvision's ``to_dtype(..., uint8, scale=True)`` does (PIL's own conversion clips them)."""
    from PIL import Image

    if im.mode.startswith("I;16") or im.mode == "I":
        wide = np.asarray(im).astype(np.int64)
        return Image.fromarray(np.clip(wide >> 8, 0, 255).astype(np.uint8), mode="L")
    return im


def pil_pixels(path: Path | str, mode: str, size: Optional[int] = None) -> np.ndarray:
    """uint8 pixels ``[H, W]`` (mode "L") or ``[H, W, 3]`` ("RGB") of the image at ``path``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = as_8bit(im).convert(mode)
            if size is not None:
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None


def read_images(paths: list[Path], mode: str, size: Optional[int]) -> np.ndarray:
    out = []
    first: Optional[tuple[Path, tuple[int, int]]] = None
    for p in paths:
        arr = pil_pixels(p, mode, size)
        if first is None:
            first = (p, arr.shape[:2])
        elif arr.shape[:2] != first[1]:
            (h0, w0), (h, w) = first[1], arr.shape[:2]
            raise DataError(
                f"images differ in size ({first[0]} is {w0}x{h0}, {p} is {w}x{h}); "
                "set data.image_size to resize them all"
            )
        out.append(arr)
    x = np.stack(out)
    return x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)


def held_out_folder(root: Path) -> Optional[Path]:
    """The official test set of an image folder: ``root/test`` beside ``root/train``, or ``root/val``
    (the ImageNet layout, train/ + val/); None when the class folders lie in ``root`` itself."""
    if not (root / "train").is_dir():
        return None
    found = [root / name for name in ("test", "val") if (root / name).is_dir()]
    if len(found) == 2:
        raise DataError(
            f"image folder {root} has train/, val/ and test/: kdflow tests on test/ and carves its validation "
            "split from train/ (data.val_fraction); move val/'s class folders' images into train/"
        )
    return found[0] if found else None  # train/ alone: a class named "train" among the others


@lists_files("imagefolder")
def list_imagefolder(cfg: DataConfig) -> ImageFiles:
    """The image files and labels under ``data.root`` (train pool, and test set when official)."""
    check_options(cfg, {"grayscale"})
    if not cfg.root:
        raise DataError("dataset imagefolder needs data.root: a folder with one sub-folder of images per class")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        looked = "" if root.is_absolute() else f" (looked for {root.resolve()}: relative to the working directory)"
        raise DataError(f"image folder {root} (data.root) does not exist{looked}")
    held_out = held_out_folder(root)
    paths, labels, names = scan(root / "train" if held_out is not None else root)
    files = ImageFiles(
        [str(p) for p in paths],
        np.asarray(labels, dtype=np.int64),
        names,
        source=str(root),
        grayscale=bool(cfg.options.get("grayscale")),
    )
    if held_out is not None:
        t_paths, t_labels, _ = scan(held_out, names)
        files.test_paths, files.test_y = [str(p) for p in t_paths], np.asarray(t_labels, dtype=np.int64)
    return files


def read_files(files: ImageFiles, size: Optional[int]) -> RawData:
    """Every image of ``files`` decoded into memory (converted, resized to ``size`` when given)."""
    mode = "L" if files.grayscale else "RGB"
    train_x = read_images([Path(p) for p in files.train_paths], mode, size)
    test_x = None
    if files.test_paths is not None:
        test_x = read_images([Path(p) for p in files.test_paths], mode, size)
        if test_x.shape[1:] != train_x.shape[1:]:
            raise DataError(
                f"test images of {files.source} are {test_x.shape[3]}x{test_x.shape[2]} but train images are "
                f"{train_x.shape[3]}x{train_x.shape[2]}; set data.image_size to resize them all"
            )
    return RawData(
        train_x=train_x,
        train_y=files.train_y,
        test_x=test_x,
        test_y=files.test_y,
        class_names=files.class_names,
        source=files.source,
    )


@DATASETS.register("imagefolder")
def load_imagefolder(cfg: DataConfig) -> RawData:
    return read_files(list_imagefolder(cfg), cfg.image_size)
