"""A small CNN classifier of the scikit-learn 8x8 digits, trained reproducibly and cached on disk.

Its 64-dimensional penultimate activations are the feature space of the ``digits_fd`` metric.

Recipe (version ``RECIPE``): the 1797 digits in [-1, 1] split by a seeded permutation into 1497
training and 300 held-out images; conv 3x3 (16) - SiLU - conv 3x3 stride 2 (32) - SiLU - conv 3x3
(32) - SiLU - linear (64) - SiLU [features] - linear (10); Adam (lr 2e-3), 30 epochs of batches of
64, everything seeded from ``seed``, in float32 on one CPU thread. Training takes a few seconds; the weights
are cached as safetensors at CACHE_DIR/digits_classifier_{RECIPE}_seed{seed}.safetensors with the
held-out accuracy in the metadata, where CACHE_DIR is $FMMKIT_CACHE_DIR, else
$XDG_CACHE_HOME/fmmkit, else ~/.cache/fmmkit. Delete the file to retrain.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

RECIPE = "v1"
FEATURE_DIM = 64
_TEST_SIZE = 300


def cache_dir() -> Path:
    """$FMMKIT_CACHE_DIR, else $XDG_CACHE_HOME/fmmkit, else ~/.cache/fmmkit."""
    if os.environ.get("FMMKIT_CACHE_DIR"):
        return Path(os.environ["FMMKIT_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "fmmkit"


class DigitsClassifier(nn.Module):
    """(B, 1, 8, 8) in [-1, 1] -> logits (B, 10); ``features`` gives the (B, 64) penultimate layer."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.SiLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.SiLU(),
            nn.Flatten(), nn.Linear(32 * 4 * 4, FEATURE_DIM), nn.SiLU(),
        )
        self.head = nn.Linear(FEATURE_DIM, 10)

    def features(self, x: Tensor) -> Tensor:
        assert x.shape[1:] == (1, 8, 8), f"the digits classifier takes (B, 1, 8, 8) images, got {tuple(x.shape)}"
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def digits_split(seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(train images, train labels, held-out images, held-out labels); images (N, 1, 8, 8) in [-1, 1]."""
    from fmmkit.data.digits import DIGITS_MAX, load_digits_arrays

    images, labels = load_digits_arrays()
    x = torch.from_numpy(images).float()[:, None] / DIGITS_MAX * 2 - 1
    y = torch.from_numpy(labels)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    test, train = perm[:_TEST_SIZE], perm[_TEST_SIZE:]
    return x[train], y[train], x[test], y[test]


def accuracy(model: DigitsClassifier, x: Tensor, y: Tensor) -> float:
    """Fraction of correctly classified images."""
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


def train_digits_classifier(seed: int = 0, epochs: int = 30) -> tuple[DigitsClassifier, float]:
    """Train the classifier by the recipe above; returns it (eval mode) and its held-out accuracy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny layers: one thread is fastest, and the float sums are reproducible
    try:
        return _train(seed, epochs)
    finally:
        torch.set_num_threads(threads)


def _train(seed: int, epochs: int) -> tuple[DigitsClassifier, float]:
    x_train, y_train, x_test, y_test = digits_split(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsClassifier()
    generator = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(x_train.shape[0], generator=generator)
        for i in range(0, len(order), 64):
            idx = order[i : i + 64]
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    return model, accuracy(model, x_test, y_test)


def classifier_path(seed: int) -> Path:
    """Where the classifier of ``seed`` is cached."""
    return cache_dir() / f"digits_classifier_{RECIPE}_seed{seed}.safetensors"


def load_digits_classifier(seed: int = 0, use_cache: bool = True) -> DigitsClassifier:
    """The cached classifier of ``seed``, training (and caching) it first when absent or unreadable."""
    from safetensors.torch import load_file, save_file

    path = classifier_path(seed)
    model = DigitsClassifier()
    if use_cache and path.is_file():
        try:
            model.load_state_dict(load_file(str(path)))
            return model.eval()
        except Exception:  # a damaged or stale file: retrain below and replace it
            pass
    model, acc = train_digits_classifier(seed)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
            save_file(state, tmp, metadata={"recipe": RECIPE, "seed": str(seed), "heldout_accuracy": f"{acc:.4f}",
                                            "torch": torch.__version__})
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return model
