"""1 vs 2 torch threads, alternated in one process: training steps (S, 64-px tiles, batch 16) and whole-image
evaluation. The measurement behind the `--full` preset's `--threads 1` (docs/sweep/README.md).

    python docs/sweep/threads_probe.py DATASET [ROUNDS]
"""

import statistics
import sys
import tempfile
import time

import torch

from segcls.evaluate import evaluate_pairs
from segcls.train import TrainConfig, Trainer


def main(dataset: str, rounds: int = 4) -> None:
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(dataset, out, setting="S", tile=64, batch_size=16, steps_per_epoch=3, epochs=100)
        trainer = Trainer(config, progress=False)
        pairs = trainer.val_pairs[:2]
        eval_tiles = sum(image.shape[0] * image.shape[1] for image, _ in pairs) / 64**2
        seen: dict[tuple[int, str], list[float]] = {}
        for r in range(rounds):
            for threads in (1, 2) if r % 2 == 0 else (2, 1):
                torch.set_num_threads(threads)
                train_rate = trainer.train_epoch()["tiles_per_s"]
                start = time.perf_counter()
                evaluate_pairs(trainer.model, pairs, trainer.description, trainer.device)
                eval_rate = eval_tiles / (time.perf_counter() - start)
                seen.setdefault((threads, "train"), []).append(train_rate)
                seen.setdefault((threads, "eval"), []).append(eval_rate)
                print(f"round {r} threads {threads}: train {train_rate:.1f} eval {eval_rate:.1f} tiles/s", flush=True)
    for (threads, kind), rates in sorted(seen.items()):
        spread = f"{min(rates):.1f}-{max(rates):.1f}"
        print(f"threads {threads} {kind}: median {statistics.median(rates):.1f} tiles/s ({spread})")


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:]))
