r"""The project's small Fashion-MNIST classifier: its architecture, its training, and the command that ships it.

The network is only a *feature extractor* for the Fréchet distance of :mod:`accelerated_diffusion.experiments.features`
(an FID analogue for 28x28 grey-scale images, where Inception features make no sense).  Its penultimate layer
(128 units, read before its ReLU) gives the features.

Shipped files (``data/fmnist-classifier/``, written by ``accelerated-diffusion train-classifier --out
data/fmnist-classifier``; the command's default folder is ``runs/fmnist-classifier``, never the shipped one):

* ``model.safetensors`` -- the weights (float32, about 1.7 MB);
* ``config.json`` -- architecture, training settings, test accuracy, provenance;
* ``test_stats.safetensors`` -- mean and covariance (float64) of the features of the 10,000 test images,
  the reference of :func:`accelerated_diffusion.experiments.features.frechet_distance`;
* ``SHA256SUMS`` -- the SHA-256 of the three files above (and of the export marker), checked before the
  classifier is loaded; a classifier folder without it is refused;
* ``MODEL_CARD.md`` -- provenance, exact command, time, hardware, accuracy, and the small-``n`` bias of the
  Fréchet distance measured on real images;
* ``accelerated_diffusion_export.json`` -- the export marker (``{"kind": "fmnist-classifier"}``; the shipped
  folder predates it and is recognised by its ``SHA256SUMS``).

``--out`` is replaced as a whole, and only when it is new, empty or an earlier classifier written by this command
holding nothing else (checked before the data is loaded): a folder of the user's is never deleted.

Inputs are float images in ``[-1, 1]`` of shape ``(n, 1, 28, 28)`` (the DDPM convention ``x / 127.5 - 1``).
"""

from __future__ import annotations

import argparse
import math
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from . import data, features
from .features import FEATURE_DIM, FashionCNN, to_model_range
from .paths import (
    atomic_write_bytes,
    atomic_write_text,
    check_replaceable,
    dumps_strict,
    replace_folder,
    write_sha256sums,
)
from ..integrity import CHECKED_SUFFIXES

__all__ = ["train_classifier", "evaluate_accuracy", "write_classifier", "main"]

DEFAULT_OUT = Path("runs/fmnist-classifier")  # relative to the working directory; never the shipped folder
EXPORT_KIND = "fmnist-classifier"
# what a classifier folder holds besides the marker and SHA256SUMS
EXPORT_FILES = ("model.safetensors", "test_stats.safetensors", "config.json", "MODEL_CARD.md")
# a classifier folder written before the marker existed (data/fmnist-classifier): its SHA256SUMS lists these
LEGACY_EXPORT = ("model.safetensors", "test_stats.safetensors", "config.json")


def evaluate_accuracy(model: FashionCNN, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``model`` on float images in ``[-1, 1]``."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            correct += int((model(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum())
    return correct / len(images)


def train_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int = 3,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
) -> tuple[FashionCNN, list[float]]:
    """Train :class:`FashionCNN` with Adam (cross-entropy) on float images in ``[-1, 1]``.

    Seeded: ``seed`` fixes the initialisation, the shuffling and the dropout masks.  Returns the model (in eval
    mode) and the mean training loss of each epoch.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    torch.manual_seed(seed)
    model = FashionCNN()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(images), generator=gen)
        total, count = 0.0, 0
        bar = tqdm(range(0, len(images), batch_size), desc=f"epoch {epoch + 1}/{epochs}", disable=not progress)
        for i in bar:
            idx = order[i : i + batch_size]
            loss = nn.functional.cross_entropy(model(images[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss) * len(idx)
            count += len(idx)
            bar.set_postfix(loss=f"{total / count:.4f}")
        losses.append(total / count)
    model.eval()
    return model, losses


def _hardware() -> str:
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}"


def _model_card(cfg: dict, bias_rows: list[tuple[int, float, float]]) -> str:
    rows = "\n".join(f"| {n} | {fd_train:.4g} | {fd_test:.4g} |" for n, fd_train, fd_test in bias_rows)
    losses = ", ".join(f"{v:.4f}" for v in cfg["train_loss_per_epoch"])
    return f"""# Fashion-MNIST feature classifier (accelerated-diffusion)

A small CNN trained by this project so that generated Fashion-MNIST images can be scored with a Fréchet
distance in the feature space of a network that knows the data (an FID analogue: Inception features are
meaningless for 28x28 grey-scale images). Use it through `accelerated_diffusion.experiments.features`.

## Provenance
- Data: Fashion-MNIST train split (60,000 images), loaded with `accelerated_diffusion.experiments.data.load_fashion_mnist`
  (Debian package `dataset-fashion-mnist`, content checked against SHA-256 sums).
- Command: `{cfg["command"]}`
- Seed {cfg["seed"]}; {cfg["epochs"]} epochs of Adam (lr {cfg["lr"]}), batch size {cfg["batch_size"]}, no augmentation.
- Training time: {cfg["train_seconds"]:.0f} s on {cfg["hardware"]} (shared machine, 2 cores).
- Mean training loss per epoch: {losses}.

## Architecture
Conv 3x3 (1 -> 32) + ReLU + max-pool 2, conv 3x3 (32 -> 64) + ReLU + max-pool 2, linear 3136 -> 128
(**the features**, read before the following ReLU), ReLU, dropout {cfg["dropout"]}, linear 128 -> 10.
{cfg["num_parameters"]:,} parameters. Inputs: float images in [-1, 1] (`x / 127.5 - 1`), shape (n, 1, 28, 28);
`extract_features` center-crops (n, 1, 32, 32) inputs to 28x28.

## Accuracy
Test-split (10,000 images) top-1 accuracy: **{cfg["test_accuracy"]:.4f}**; train split: {cfg["train_accuracy"]:.4f}.

## Reference statistics
`test_stats.safetensors`: `mu` (128,) and `sigma` (128, 128), float64, of the features of all 10,000 test
images (covariance with the unbiased 1/(n-1) normalisation).

## Bias of the Fréchet distance at small n
The Fréchet distance between n samples and the reference statistics is biased upwards by roughly
tr(Sigma)/n-type terms, even for perfect samples. Real images, same classifier, against `test_stats`
(first n images of a seeded permutation, seed {cfg["seed"]}; the test rows re-use images that are part of the
reference itself, the train rows are independent of it):

| n | FD(train images, test stats) | FD(test images, test stats) |
| --- | --- | --- |
{rows}

Compare a sampler's FD at n samples with the row for the same n, never with 0.
(`accelerated_diffusion.experiments.features.real_data_frechet_distance(n)` recomputes a row.)
"""


def main(argv: list[str] | None = None) -> int:
    """``accelerated-diffusion train-classifier``: train, evaluate and write the classifier (see module doc) to
    ``--out``, as a whole: the files are written to a temporary folder beside it, which then replaces it.  Every
    argument, ``--out`` included (new, empty or an earlier classifier), is checked before the data is loaded; a
    problem is reported in one line with exit status 2."""
    p = argparse.ArgumentParser(prog="accelerated-diffusion train-classifier", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="output folder (default runs/fmnist-classifier; pass data/fmnist-classifier to replace the shipped one)",
    )
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--download", action="store_true", help="download Fashion-MNIST if not installed")
    args = p.parse_args(argv)
    problems = [
        f"--{k.replace('_', '-')} must be >= 1, got {getattr(args, k)}"
        for k in ("epochs", "batch_size", "threads")
        if getattr(args, k) < 1
    ]
    if not (math.isfinite(args.lr) and args.lr > 0):
        problems.append(f"--lr must be a positive number, got {args.lr}")
    if not 0 <= args.seed < 2**62:
        problems.append(f"--seed must be in [0, 2**62), got {args.seed}")
    try:
        check_replaceable(args.out, EXPORT_KIND, EXPORT_FILES, LEGACY_EXPORT)
    except FileExistsError as err:
        problems.append(f"--out: {err}")
    if problems:
        p.exit(2, f"{p.prog}: error: {'; '.join(problems)}\n")
    torch.set_num_threads(args.threads)
    x_train, y_train = data.load_fashion_mnist("train", download=args.download)
    x_test, y_test = data.load_fashion_mnist("test", download=args.download)
    x_train, x_test = to_model_range(x_train), to_model_range(x_test)

    t0 = time.perf_counter()
    model, losses = train_classifier(
        x_train, y_train, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed
    )
    train_seconds = time.perf_counter() - t0
    cfg = {
        "architecture": "FashionCNN",
        "feature_dim": FEATURE_DIM,
        "dropout": 0.3,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "seed": args.seed,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "train_loss_per_epoch": losses,
        "train_seconds": train_seconds,
        "hardware": _hardware(),
        "test_accuracy": evaluate_accuracy(model, x_test, y_test),
        "train_accuracy": evaluate_accuracy(model, x_train, y_train),
        "command": "accelerated-diffusion train-classifier "
        + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
    }
    feats_test = features.extract_features(x_test, model=model)
    mu, sigma = features.feature_statistics(feats_test)
    feats_train = features.extract_features(x_train, model=model)
    bias_rows = []
    for n in (50, 100, 200, 500, 1000, 2000, 5000, 10000):
        fds = [
            features.frechet_distance_from_stats(
                *features.feature_statistics(f[features.subset_indices(len(f), n, args.seed)]), mu, sigma
            )
            for f in (feats_train, feats_test)
        ]
        bias_rows.append((n, *fds))
    cfg["fd_bias_real_images"] = [{"n": n, "fd_train_images": a, "fd_test_images": b} for n, a, b in bias_rows]
    write_classifier(args.out, model, cfg, mu, sigma, _model_card(cfg, bias_rows))
    print(f"test accuracy {cfg['test_accuracy']:.4f}; wrote {args.out}")
    return 0


def write_classifier(out, model: FashionCNN, cfg: dict, mu, sigma, card: str) -> Path:
    """Write the classifier's files (weights, config, reference statistics, model card, ``SHA256SUMS``) into a
    temporary folder and swap it in for ``out`` (:func:`~.paths.replace_folder`): an interruption leaves the old
    folder intact, never new weights beside old statistics; ``out`` must be new, empty or an earlier classifier
    folder holding nothing else (``FileExistsError`` otherwise)."""
    from safetensors.torch import save

    with replace_folder(out, EXPORT_KIND, files=EXPORT_FILES, legacy=LEGACY_EXPORT) as tmp:
        atomic_write_bytes(tmp / "model.safetensors", save({k: v.contiguous() for k, v in model.state_dict().items()}))
        stats = {"mu": torch.as_tensor(mu, dtype=torch.float64), "sigma": torch.as_tensor(sigma, dtype=torch.float64)}
        atomic_write_bytes(tmp / "test_stats.safetensors", save(stats))
        atomic_write_text(tmp / "config.json", dumps_strict(cfg, indent=2) + "\n")
        atomic_write_text(tmp / "MODEL_CARD.md", card)
        write_sha256sums(tmp, [f.name for f in tmp.iterdir() if f.suffix in CHECKED_SUFFIXES])
    return Path(out)


if __name__ == "__main__":
    raise SystemExit(main())
