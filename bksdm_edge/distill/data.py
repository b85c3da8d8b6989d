"""Image-caption data for distillation: sources, row checks, preprocessing and a resumable sampler.

Three sources are read:
1. an image folder with ``metadata.jsonl`` (Hugging Face imagefolder layout, the paper's LAION format:
   ``{"file_name": "0001.jpg", "text": "a caption"}`` per line);
2. a CSV or JSONL file of image paths (relative to the file) and captions;
3. a Hugging Face ``datasets`` name or a folder saved with ``Dataset.save_to_disk``.

Every row is checked before training (caption present, image file opens); bad rows raise one
``DataError`` naming them, or are dropped with ``skip_bad_rows``. Augmentation randomness (flip,
random crop) is a pure function of (seed, epoch, row), so data is identical after a resume and
across DataLoader workers.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..errors import BksdmError
from .config import DataConfig

IMAGE_COLUMNS = ("file_name", "image", "image_path", "path", "file")
CAPTION_COLUMNS = ("text", "caption", "prompt")
MAX_LISTED_BAD_ROWS = 10


class DataError(BksdmError, ValueError):
    """Training data that cannot be used; the message names the bad rows."""


@dataclass(frozen=True)
class Row:
    """One image-caption pair. ``image`` is a file path or, for ``datasets`` sources, the row index."""

    image: str | int
    caption: str
    where: str  # e.g. "metadata.jsonl line 7 (cat.png)", for error messages


@dataclass
class RowSet:
    """The usable rows of a source, the rows dropped by ``skip_bad_rows`` and a fingerprint of the raw rows."""

    rows: list[Row]
    source: str
    kind: str  # "imagefolder" | "table" | "datasets"
    fingerprint: str
    skipped: list[str] = field(default_factory=list)
    hf_dataset: Any = None
    image_column: str | None = None

    def __len__(self) -> int:
        return len(self.rows)


def _pick(columns, wanted: str | None, known: tuple[str, ...], what: str, where: str) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise DataError(f"{where} has no {what} column {wanted!r}; columns: {sorted(columns)}")
        return wanted
    for name in known:
        if name in columns:
            return name
    raise DataError(
        f"{where} has no {what} column (looked for {', '.join(known)}); columns: {sorted(columns)}. "
        f"Name it with --{what}-column."
    )


def _read_table(path: Path) -> list[tuple[int, dict]]:
    """(line number, record) pairs of a JSONL or CSV/TSV file."""
    records = []
    if path.suffix in (".jsonl", ".json"):
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    records.append((lineno, json.loads(line)))
                except json.JSONDecodeError as err:
                    raise DataError(f"{path} line {lineno}: not valid JSON ({err})") from err
    elif path.suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ",")
            records = [(lineno, rec) for lineno, rec in enumerate(reader, 2)]  # line 1 is the header
    else:
        raise DataError(f"{path}: unsupported table format {path.suffix!r}; use .jsonl or .csv")
    return records


def _check_image_file(path: Path) -> str | None:
    """None when the file opens as an image (header only, cheap), else the reason."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        return f"image file {path} does not exist"
    try:
        with Image.open(path) as img:
            img.size  # noqa: B018 - the header parse is the check
    except (UnidentifiedImageError, OSError, ValueError) as err:
        return f"cannot read image {path} ({type(err).__name__}: {err})"
    return None


def _finish(rows: list[Row], bad: list[str], config: DataConfig, raw_keys: list[str], **kw) -> RowSet:
    if bad and not config.skip_bad_rows:
        listed = "; ".join(bad[:MAX_LISTED_BAD_ROWS])
        more = f" (and {len(bad) - MAX_LISTED_BAD_ROWS} more)" if len(bad) > MAX_LISTED_BAD_ROWS else ""
        raise DataError(
            f"{len(bad)} bad row(s) in {kw['source']}: {listed}{more}. Fix them or pass --skip-bad-rows to drop them."
        )
    if not rows:
        raise DataError(f"{kw['source']} has no usable rows" + (f" ({len(bad)} skipped)" if bad else ""))
    digest = hashlib.sha256(json.dumps(raw_keys).encode()).hexdigest()[:16]
    return RowSet(rows=rows, skipped=bad, fingerprint=digest, **kw)


def _rows_from_table(table: Path, base: Path, config: DataConfig, kind: str) -> RowSet:
    records = _read_table(table)
    if not records:
        raise DataError(f"{table} is empty")
    columns = set().union(*(rec.keys() for _, rec in records))
    image_col = _pick(columns, config.image_column, IMAGE_COLUMNS, "image", str(table))
    caption_col = _pick(columns, config.caption_column, CAPTION_COLUMNS, "caption", str(table))
    rows, bad, raw = [], [], []
    for lineno, rec in records:
        name, caption = rec.get(image_col), rec.get(caption_col)
        where = f"{table.name} line {lineno}" + (f" ({name})" if name else "")
        raw.append(f"{name}\t{caption}")
        if not name:
            bad.append(f"{where}: missing {image_col!r}")
            continue
        if not isinstance(caption, str) or not caption.strip():
            bad.append(f"{where}: missing caption {caption_col!r}")
            continue
        path = Path(name) if Path(name).is_absolute() else base / name
        problem = _check_image_file(path)
        if problem:
            bad.append(f"{where}: {problem}")
            continue
        rows.append(Row(image=str(path), caption=caption, where=where))
    return _finish(rows, bad, config, raw, source=str(table), kind=kind)


def _rows_from_datasets(config: DataConfig) -> RowSet:
    try:
        import datasets
    except ImportError as err:
        raise DataError(
            f"{config.source!r} is neither an image folder with metadata.jsonl nor a CSV/JSONL file; reading it as a "
            "Hugging Face dataset needs `pip install datasets`"
        ) from err
    try:
        if Path(config.source).is_dir() and (Path(config.source) / "dataset_info.json").exists():
            ds = datasets.load_from_disk(config.source)
        elif Path(config.source).is_dir() and any(Path(config.source).glob("*/dataset_info.json")):
            ds = datasets.load_from_disk(config.source)
        else:
            ds = datasets.load_dataset(config.source, split=config.split)
    except Exception as err:  # datasets raises many types (FileNotFoundError, ConnectionError, DatasetNotFoundError)
        raise DataError(
            f"Could not load {config.source!r} as a Hugging Face dataset ({type(err).__name__}: {err}). Pass an "
            "image folder with metadata.jsonl, a CSV/JSONL of image paths and captions, a folder saved with "
            "Dataset.save_to_disk, or a dataset name available offline."
        ) from err
    if isinstance(ds, datasets.DatasetDict):
        if config.split not in ds:
            raise DataError(f"{config.source} has splits {list(ds)}, not {config.split!r}; pass --split")
        ds = ds[config.split]
    image_col = _pick(set(ds.column_names), config.image_column, ("image",) + IMAGE_COLUMNS, "image", config.source)
    caption_col = _pick(set(ds.column_names), config.caption_column, CAPTION_COLUMNS, "caption", config.source)
    rows, bad, raw = [], [], []
    for i, caption in enumerate(ds[caption_col]):
        where = f"{config.source} row {i}"
        raw.append(f"{getattr(ds, '_fingerprint', '')}:{i}\t{caption}")
        if not isinstance(caption, str) or not caption.strip():
            bad.append(f"{where}: missing caption {caption_col!r}")
            continue
        rows.append(Row(image=i, caption=caption, where=where))
    return _finish(rows, bad, config, raw, source=config.source, kind="datasets", hf_dataset=ds,
                   image_column=image_col)


def load_rows(config: DataConfig) -> RowSet:
    """List and check the rows of ``config.source`` (raises ``DataError`` naming bad rows)."""
    if not config.source:
        raise DataError("No training data: pass --data (an image folder with metadata.jsonl, a CSV/JSONL, or a "
                        "Hugging Face dataset) or a --cache-dir built by `bksdm-edge cache-latents`")
    src = Path(config.source)
    if src.is_dir():
        for name in ("metadata.jsonl", "metadata.csv"):
            if (src / name).exists():
                return _rows_from_table(src / name, src, config, kind="imagefolder")
    elif src.is_file():
        return _rows_from_table(src, src.parent, config, kind="table")
    return _rows_from_datasets(config)


# ---- preprocessing -------------------------------------------------------------------------------------------


def augment_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for one row's augmentation in one epoch; the cached path draws the same flips."""
    return np.random.default_rng([seed, epoch, index])


def draw_augment(seed: int, epoch: int, index: int) -> tuple[bool, float, float]:
    """(flip, crop_y, crop_x) with the crop offsets as fractions in [0, 1)."""
    rng = augment_rng(seed, epoch, index)
    flip, cy, cx = rng.random(3)
    return bool(flip < 0.5), float(cy), float(cx)


def preprocess_image(image, resolution: int, center_crop: bool, flip: bool, crop_frac=(0.5, 0.5)) -> torch.Tensor:
    """PIL image -> (3, R, R) float tensor in [-1, 1]: resize the shorter side, crop, optionally flip."""
    from PIL import Image

    image = image.convert("RGB")
    w, h = image.size
    scale = resolution / min(w, h)
    nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    image = image.resize((nw, nh), Image.Resampling.BILINEAR)
    if center_crop:
        top, left = (nh - resolution) // 2, (nw - resolution) // 2
    else:
        top, left = int(crop_frac[0] * (nh - resolution + 1)), int(crop_frac[1] * (nw - resolution + 1))
    image = image.crop((left, top, left + resolution, top + resolution))
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


class ImageCaptionDataset(torch.utils.data.Dataset):
    """Rows -> {"pixel_values", "input_ids", "index"}; items are keyed by ``(row, epoch)`` for seeded augmentation.

    An image that passed the header check but fails to decode raises ``DataError`` naming the row, or with
    ``skip_bad_rows`` is replaced by the next row (deterministically, so resumes stay exact).
    """

    def __init__(self, rowset: RowSet, config: DataConfig, tokenizer, seed: int):
        self.rowset, self.config, self.tokenizer, self.seed = rowset, config, tokenizer, seed

    def __len__(self) -> int:
        return len(self.rowset)

    def load_image(self, i: int):
        from PIL import Image

        row = self.rowset.rows[i]
        if self.rowset.hf_dataset is not None:
            image = self.rowset.hf_dataset[row.image][self.rowset.image_column]
            if isinstance(image, str):
                image = Image.open(image)
            return image
        return Image.open(row.image)

    def item(self, i: int, flip: bool, crop_frac=(0.5, 0.5)) -> torch.Tensor:
        for attempt in range(len(self)):
            j = (i + attempt) % len(self)
            try:
                image = self.load_image(j)
                return preprocess_image(image, self.config.resolution, self.config.center_crop, flip, crop_frac)
            except (OSError, ValueError, SyntaxError) as err:
                if not self.config.skip_bad_rows:
                    raise DataError(
                        f"{self.rowset.rows[j].where}: cannot decode image ({type(err).__name__}: {err}). "
                        "Fix it or pass --skip-bad-rows."
                    ) from err
        raise DataError(f"no image of {self.rowset.source} decodes")

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, epoch = key
        flip, cy, cx = draw_augment(self.seed, epoch, index)
        pixels = self.item(index, flip and self.config.random_flip, (cy, cx))
        return {
            "pixel_values": pixels,
            "input_ids": tokenize(self.tokenizer, [self.rowset.rows[index].caption])[0],
            "index": index,
        }


# ---- sampling ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EpochBatches:
    """Seeded per-epoch shuffles split into global batches, each global batch split across processes.

    Position is a count of micro-batches this process has consumed, so a run resumes at the
    exact batch it would have drawn next. Incomplete global batches at an epoch's end are dropped.
    """

    num_rows: int
    batch_size: int
    num_processes: int = 1
    process_index: int = 0
    seed: int = 0

    @property
    def batches_per_epoch(self) -> int:
        return self.num_rows // (self.batch_size * self.num_processes)

    def epoch_order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_rows, generator=g).tolist()

    def batch(self, epoch: int, b: int, order: list[int] | None = None) -> list[tuple[int, int]]:
        order = order if order is not None else self.epoch_order(epoch)
        start = (b * self.num_processes + self.process_index) * self.batch_size
        return [(i, epoch) for i in order[start : start + self.batch_size]]

    def iterate(self, start: int = 0) -> Iterator[list[tuple[int, int]]]:
        """Batches from micro-batch position ``start`` on, forever."""
        if self.batches_per_epoch == 0:
            raise DataError(
                f"{self.num_rows} rows are fewer than one global batch ({self.batch_size} x {self.num_processes} "
                "processes); lower --batch-size or add data"
            )
        epoch, b = divmod(start, self.batches_per_epoch)
        while True:
            order = self.epoch_order(epoch)
            for bb in range(b, self.batches_per_epoch):
                yield self.batch(epoch, bb, order)
            epoch, b = epoch + 1, 0


def batch_iterator(dataset, sampler: EpochBatches, start: int, num_workers: int) -> Iterator[dict[str, Any]]:
    """Collated batches from ``start`` on; the DataLoader only adds workers and prefetching."""
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=_Batches(sampler, start), num_workers=num_workers,
        persistent_workers=False, pin_memory=False,
    )
    return iter(loader)


class _Batches:
    """An endless batch sampler (DataLoader wants an object with ``__iter__``)."""

    def __init__(self, sampler: EpochBatches, start: int):
        self.sampler, self.start = sampler, start

    def __iter__(self):
        return self.sampler.iterate(self.start)
