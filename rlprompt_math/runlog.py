"""A run directory: exact config, metrics (CSV + TensorBoard), sample prompts, learning curve."""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import yaml

from .checkpoint import CONFIG, LEARNING_CURVE, METRICS, SAMPLES, TENSORBOARD, dumps_json
from .config import ConfigError, read_settings

# The columns of metrics.csv. "reward" is the mean reward of the step's scored pairs (REINFORCE, random search);
# the differentiable routes score none in training and write "target_likelihood" (exp(-loss), the target's mean
# per-token probability) and, for gumbel, "gumbel_tau" (the step's Gumbel-softmax temperature).
METRIC_FIELDS = ["step", "reward", "accuracy", "val_accuracy", "entropy", "entropy_coef", "loss", "grad_norm",
                 "oracle_pairs", "wall_s", "sample_prompt", "gumbel_tau", "target_likelihood", "forward_passes",
                 "backward_passes", "step_s", "entropy_exemplars", "entropy_form", "entropy_words",
                 "val_distinct_prompts"]


def _current_columns(row: dict) -> dict:
    """A row of an older metrics.csv under today's column names (a resumed run rewrites its file): "temperature"
    held the Gumbel tau, and a differentiable route's row (one with forward_passes) held exp(-loss) in "reward"."""
    row = dict(row)
    if "temperature" in row:
        row["gumbel_tau"] = row.pop("temperature")
    if "target_likelihood" not in row and row.get("forward_passes"):
        row["target_likelihood"] = row.pop("reward", "")
    return row


def unwritable_reason(path: str | Path) -> str | None:
    """Why files cannot be written in the directory `path`, or None where they can. Tried, not guessed from
    permission bits (root, read-only mounts): a temporary file in `path`, or where `path` does not exist yet,
    a temporary directory in its nearest existing parent; both are removed again and nothing else is made."""
    path = Path(path).absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory"
    try:
        if existing == path:
            handle, probe = tempfile.mkstemp(dir=path, prefix=".write-test-")
            os.close(handle)
            os.unlink(probe)
        else:
            os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".write-test-"))
    except OSError as error:
        return f"{error.strerror or error} in {existing}"
    return None


class RunDir:
    def __init__(self, path: str | Path, *, resume_from_step: int | None = None):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.path / METRICS
        self.samples_path = self.path / SAMPLES
        if resume_from_step is not None:
            self._truncate(resume_from_step)
        self._tb = None

    def _truncate(self, step: int) -> None:
        """On resume, drop logged rows from steps after the checkpoint (they will be redone)."""
        if self.metrics_path.exists():
            with open(self.metrics_path, newline="") as handle:
                rows = [_current_columns(r) for r in csv.DictReader(handle) if int(r["step"]) < step]
            self._write_rows(rows)
        if self.samples_path.exists():
            lines = [ln for ln in self.samples_path.read_text().splitlines() if json.loads(ln)["step"] < step]
            self.samples_path.write_text("".join(ln + "\n" for ln in lines))

    def _write_rows(self, rows):
        with open(self.metrics_path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, METRIC_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def write_config(self, config: dict) -> None:
        (self.path / CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))

    def read_config(self) -> dict:
        """The run's settings (config.yaml); ConfigError where the folder is not a run or the file is corrupt."""
        if not (self.path / CONFIG).is_file():
            raise ConfigError(f"{self.path} is not a run directory: it has no {CONFIG}")
        return read_settings(self.path / CONFIG, what=f"the run's {CONFIG}")

    @property
    def tensorboard(self):
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.path / TENSORBOARD))
        return self._tb

    def log_metrics(self, metrics: dict) -> None:
        new = not self.metrics_path.exists()
        with open(self.metrics_path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, METRIC_FIELDS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(metrics)
        for key, value in metrics.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                self.tensorboard.add_scalar(f"train/{key}", value, metrics["step"])
        self.tensorboard.flush()

    def log_samples(self, step: int, infos: list[dict], rewards, keep: int = 4) -> None:
        """The best and worst few prompts of a step, with their rewards and answers."""
        order = sorted(range(len(infos)), key=lambda i: rewards[i])
        chosen = order[-keep // 2:][::-1] + order[: keep // 2]
        with open(self.samples_path, "a") as handle:
            for i in dict.fromkeys(chosen):
                info = infos[i]
                handle.write(dumps_json({"step": step, "reward": float(rewards[i]), "prompt": info["prompt"],
                                         "question": info["question"], "completion": info["completion"],
                                         "extracted": info["extracted"], "gold": info["gold"],
                                         "correct": bool(info["correct"])}) + "\n")

    def plot_learning_curve(self) -> Path | None:
        if not self.metrics_path.exists():
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        with open(self.metrics_path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if not rows:
            return None
        trained = [r for r in rows if int(r["step"]) >= 0]  # step -1: the untrained policy's validation only
        steps = [int(r["step"]) for r in trained]
        fig, ax = plt.subplots(figsize=(7, 4))
        window = max(1, min(10, len(trained) // 4))
        for key, label, color in (("reward", "train reward", "tab:blue"),
                                  ("accuracy", "train accuracy (sampled prompts)", "tab:orange"),
                                  ("target_likelihood", "train target likelihood, exp(-loss)", "tab:purple")):
            if not trained or not all(r.get(key) for r in trained):
                continue  # not logged by this agent (the differentiable routes do not decode in training)
            values = np.array([float(r[key]) for r in trained])
            ax.plot(steps, values, color=color, alpha=0.25, linewidth=1)
            # A moving average: single steps are too noisy (a few questions each) to read a trend.
            smooth = np.convolve(values, np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1:], smooth, color=color, label=f"{label}, {window}-step mean")
        val = [(int(r["step"]), float(r["val_accuracy"])) for r in rows if r.get("val_accuracy")]
        if val:
            ax.plot(*zip(*val), "o-", color="tab:green", label="validation accuracy (greedy prompt; -1: untrained)")
        ax.set_xlabel("step")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_title(self.path.name)
        out = self.path / LEARNING_CURVE
        fig.tight_layout()
        fig.savefig(out, dpi=100)
        plt.close(fig)
        return out

    def close(self):
        if self._tb is not None:
            self._tb.close()
