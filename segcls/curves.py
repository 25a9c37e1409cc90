"""`curves.png` of a training run: its losses and validation scores per epoch, drawn from log.csv's rows."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from segcls.core.atomic import atomic_path


def plot_curves(rows: Sequence[dict], path: str | Path) -> None:
    """Two panels over epochs: the training losses (total, segmentation, classification) and the validation
    macro / micro F1 and classification accuracy. Written atomically; nothing is drawn for no rows."""
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(r["epoch"]) for r in rows]
    fig, (losses, scores) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, label in (("loss", "total"), ("seg_loss", "segmentation"), ("cls_loss", "classification")):
        losses.plot(epochs, [float(r[key]) for r in rows], marker=".", label=label)
    losses.set(xlabel="epoch", ylabel="training loss (mean over the epoch)", title="losses")
    for key, label in (("val_macro_f1", "macro F1"), ("val_micro_f1", "micro F1"), ("val_cls_accuracy", "cls acc")):
        values = [r.get(key) for r in rows]
        if all(v is None or v == "" for v in values):
            continue
        scores.plot(
            epochs, [float("nan") if v in (None, "") else 100 * float(v) for v in values], marker=".", label=label
        )
    scores.set(xlabel="epoch", ylabel="validation (%)", title="validation", ylim=(0, 100))
    for ax in (losses, scores):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
