"""Plot a run's curves: python -m train.plot WORKDIR [--out curves.png]

Reads WORKDIR/metrics.jsonl and draws the train and eval loss, eval accuracy (or any other eval metric) and
learning rate against the step.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def read_metrics(path) -> list[dict]:
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no metrics file at {path}")
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def plot(records: list[dict], out) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("split") == "train"]
    evals = [r for r in records if r.get("split") == "eval"]
    eval_keys = sorted({k for r in evals for k in r} - {"step", "split", "loss", "examples"})
    panels = ["loss"] + eval_keys + (["lr"] if any("lr" in r for r in train) else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.3))
    axes = [axes] if len(panels) == 1 else list(axes)
    for ax, key in zip(axes, panels):
        for name, rows, style in (("train", train, "-"), ("eval", evals, "o-")):
            pts = [(r["step"], r[key]) for r in rows if key in r]
            if pts:
                ax.plot(*zip(*pts), style, label=name, markersize=3)
        ax.set(xlabel="step", title=key)
        if key == "loss":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.plot", description=__doc__.splitlines()[0])
    parser.add_argument("workdir", help="a run's workdir (or its metrics.jsonl)")
    parser.add_argument("--out", help="PNG path (default WORKDIR/curves.png)")
    args = parser.parse_args(argv)
    try:
        records = read_metrics(args.workdir)
    except FileNotFoundError as e:
        print(f"train.plot: error: {e}", file=sys.stderr)
        return 2
    out = args.out or str((Path(args.workdir) if Path(args.workdir).is_dir() else Path(args.workdir).parent) / "curves.png")
    print(plot(records, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
