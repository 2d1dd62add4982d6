"""What a network has learnt to separate: the input of its final linear layer (the
embedding every classification is made from), captured with a forward hook so it works
for any backbone, and laid out in two dimensions with scikit-learn's t-SNE."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn


def final_linear(model: nn.Module, sample: torch.Tensor) -> nn.Module:
    """The last nn.Linear the forward pass runs through (the classifier head)."""
    from torch import nn

    from ichbench.report.cam import trace_modules

    linears = [m for _, m, _ in trace_modules(model, sample[:1]) if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer: no embedding to show")
    return linears[-1]


def embed(model: nn.Module, x: torch.Tensor, batch: int = 64) -> np.ndarray:
    """(N, D) inputs of the final linear layer for the prepared batch `x`."""
    import torch

    head = final_linear(model, x)
    captured: list[torch.Tensor] = []

    def hook(_module, inputs, _output) -> None:
        captured.append(inputs[0].detach().flatten(1).float().cpu())

    handle = head.register_forward_hook(hook)
    try:
        model.eval()
        with torch.no_grad():
            for start in range(0, len(x), batch):
                model(x[start : start + batch])
    finally:
        handle.remove()
    return torch.cat(captured).numpy().astype(np.float64)


def tsne_2d(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """Two-dimensional t-SNE; features are first reduced to 50 principal components when
    wider (the usual practice: faster and less noisy).

    Runs on one thread: for the few hundred to few thousand test slices of a report it
    takes seconds, while OpenMP's busy-waiting threads on a machine already loaded (a
    training run beside it) made it ten times slower in measurement.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = np.asarray(features, dtype=np.float64)
    n = len(x)
    if n < 3:
        raise ValueError(f"t-SNE needs at least 3 samples, got {n}")
    if x.shape[1] > 50 and n > 50:
        x = PCA(n_components=50, random_state=seed).fit_transform(x)
    perplexity = float(min(30.0, max(2.0, (n - 1) / 3)))
    with threadpool_limits(limits=1):
        return TSNE(
            n_components=2,
            perplexity=perplexity,
            init="pca",
            learning_rate="auto",
            random_state=seed,
        ).fit_transform(x)


def separation(features: np.ndarray, labels: np.ndarray) -> float | None:
    """Silhouette score of the ground-truth classes in the embedding space (−1 to 1;
    higher = healthy and ICH slices lie apart), or None with a single class."""
    from sklearn.metrics import silhouette_score

    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2 or len(labels) < 3:
        return None
    return float(silhouette_score(features, labels))
