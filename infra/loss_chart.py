"""The loss chart PNG shown in the model card and in ``UPDATES/``.

Rendered with matplotlib's Agg backend (no display), with the PNG's software and date metadata
stripped: the same losses always give the same bytes, so re-publishing after a crash uploads
nothing new and the Hub sees no change to commit.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence


def render_loss_chart(
    points: Sequence[tuple[int, float]], *, title: str = "Training loss"
) -> bytes:
    """A PNG of loss against step; ``points`` are (step, loss), non-finite losses dropped."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    finite = sorted((s, v) for s, v in points if math.isfinite(v))
    figure = Figure(figsize=(7, 3.5), dpi=100)
    axes = figure.subplots()
    if finite:
        steps, losses = zip(*finite, strict=True)
        axes.plot(steps, losses, color="#3b6fd8", linewidth=1.2, label="loss")
        if len(losses) >= 8:
            window = max(2, len(losses) // 10)
            smooth = [
                sum(window_of := losses[max(0, i - window + 1) : i + 1]) / len(window_of)
                for i in range(len(losses))
            ]
            axes.plot(steps, smooth, color="#d8593b", linewidth=1.8, label=f"mean of {window}")
        axes.legend(loc="upper right")
    else:
        axes.text(0.5, 0.5, "no loss reported yet", ha="center", va="center")
    axes.set_title(title)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    out = io.BytesIO()
    figure.savefig(out, format="png", metadata={"Software": None})
    return out.getvalue()
