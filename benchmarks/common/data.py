"""Data of the benchmarks: CIFAR-10, SST-2 and Tiny Shakespeare from `../shared/data`, and the tiny stand-ins of the
`--quick` modes (scikit-learn's digits, synthetic text), which need no data folder."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import torch

# ---------------------------------------------------------------------------- images

CIFAR_MEAN = torch.tensor([0.4913, 0.4821, 0.4465]).view(1, 3, 1, 1)
CIFAR_STD = torch.tensor([0.2452, 0.2428, 0.2606]).view(1, 3, 1, 1)


def cifar10(data_dir: Path, train_rows: int, test_rows: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The first `train_rows` train and `test_rows` test images of the JPEG CIFAR-10 copy (stratified prefixes),
    normalised with the train mean and std."""
    from datasets import load_dataset

    files = sorted(glob.glob(str(data_dir / "train-*.parquet")))
    raw = load_dataset("parquet", data_files={"train": files, "test": str(data_dir / "test-00000-of-00001.parquet")})
    out = {}
    for name, rows in (("train", train_rows), ("test", test_rows)):
        array = raw[name].select(range(rows)).with_format("numpy")[:]
        images = torch.from_numpy(array["img"]).permute(0, 3, 1, 2).float().div(255)
        out[name] = ((images - CIFAR_MEAN) / CIFAR_STD, torch.from_numpy(array["label"]).long())
    return out


def digits_as_cifar(train_rows: int, test_rows: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """scikit-learn's digits (real 8x8 images, 10 classes) blown up to 3 x 32 x 32: the `--quick` stand-in."""
    from trgl_hf import load_digits_dataset

    splits = load_digits_dataset()
    out = {}
    for name, rows in (("train", train_rows), ("test", test_rows)):
        part = splits[name].select(range(rows))[:]
        images = torch.as_tensor(part["pixel_values"]).float()
        images = images.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3).repeat(1, 3, 1, 1)
        out[name] = (images, torch.as_tensor(part["labels"]).long())
    return out


class Augmented(torch.utils.data.Dataset):
    """Random crop (4-pixel zero padding) and horizontal flip, on tensors."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = torch.nn.functional.pad(images, (4, 4, 4, 4)), labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        top, left = np.random.randint(0, 9, size=2)
        image = self.images[index, :, top : top + 32, left : left + 32]
        if np.random.rand() < 0.5:
            image = image.flip(-1)
        return {"pixel_values": image, "labels": self.labels[index]}


class Plain(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.images[index], "labels": self.labels[index]}


# ---------------------------------------------------------------------------- text

SHAKESPEARE_CUTS = {"train": (0, 1003854), "validation": (1003854, 1059624), "test": (1059624, None)}


def synthetic_text(characters: int, seed: int = 0) -> str:
    """A deterministic pseudo-text (words of a small vocabulary, lines and speeches) for `--quick` runs."""
    rng = np.random.default_rng(seed)
    words = "the of and to a my in you is that it not me be his with your for he this thou king".split()
    pieces, size = [], 0
    while size < characters:
        line = " ".join(rng.choice(words, size=rng.integers(3, 9))).capitalize() + (
            ".\n" if rng.random() < 0.3 else ",\n"
        )
        pieces.append(line)
        size += len(line)
    return "".join(pieces)[:characters]


def char_blocks(text: str, block_size: int, cuts: dict[str, tuple[int, int | None]], limits: dict[str, int | None]):
    """Non-overlapping blocks of `block_size` character ids per split (a vocabulary of the whole text's characters)."""
    from datasets import Dataset

    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    splits, info = {}, {}
    for name, (start, end) in cuts.items():
        ids = [index[c] for c in text[start:end]]
        blocks = [ids[i : i + block_size] for i in range(0, len(ids) - block_size + 1, block_size)]
        blocks = blocks[: limits[name]] if limits.get(name) is not None else blocks
        splits[name] = Dataset.from_dict({"input_ids": blocks, "labels": blocks}).with_format("torch")
        info[name] = {"characters": len(text[start:end]), "blocks": len(blocks)}
    return splits, vocab, info


def sst2_sentences(data_dir: Path | None, val_size: int, seed: int):
    """(train pool, validation, test) of SST-2 (`train_sentences` split stratified with `seed`; `test.parquet`),
    or, without `data_dir`, a synthetic sentiment set of the same shape (`--quick`)."""
    from datasets import ClassLabel, Dataset

    if data_dir is None:
        rng = np.random.default_rng(seed)
        good, bad = "good great fine lovely fun".split(), "bad dull awful boring poor".split()

        def make(n: int) -> Dataset:
            labels = [int(i % 2) for i in range(n)]
            sentences = [" ".join(["the", "film", "is", *rng.choice(good if y else bad, size=3)]) for y in labels]
            return Dataset.from_dict({"idx": list(range(n)), "sentence": sentences, "label": labels}).cast_column(
                "label", ClassLabel(names=["negative", "positive"])
            )

        full, test = make(400), make(200)
    else:
        full = Dataset.from_parquet(str(data_dir / "train_sentences.parquet"))
        test = Dataset.from_parquet(str(data_dir / "test.parquet"))
    split = full.train_test_split(test_size=val_size, stratify_by_column="label", seed=seed)
    return split["train"], split["test"], test


def sst2_glue(data_dir: Path | None, train_size: int, seed: int = 0):
    """(train, validation, test) of SST-2 as GLUE ships it: a stratified (by label, `seed`) sample of `train_size` rows
    of `train.parquet` (phrases and sentences), `validation.parquet` (872) and `test.parquet` (1,821, labelled);
    without `data_dir`, a synthetic sentiment set of the same shape (`--quick`)."""
    from datasets import Dataset

    if data_dir is None:
        pool, validation = sst2_sentences(None, 32, seed)[:2]
        test = sst2_sentences(None, 32, seed + 1)[1]
        train = pool
    else:
        train = Dataset.from_parquet(str(data_dir / "train.parquet"))
        validation = Dataset.from_parquet(str(data_dir / "validation.parquet"))
        test = Dataset.from_parquet(str(data_dir / "test.parquet"))
    if train_size < len(train):
        train = train.train_test_split(train_size=train_size, stratify_by_column="label", seed=seed)["train"]
    return train, validation, test
