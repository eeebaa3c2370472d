"""Learning-rate schedules: linear warmup, then either cosine decay to min_lr or
warmup-stable-decay (hold the peak, then decay linearly to min_lr over the last stretch).

`lr_at` gives AdamW's rate; Muon's groups follow the same curve scaled to muon_lr.
"""

from __future__ import annotations

import math

from gptlab.config import TrainConfig


def lr_at(step: int, cfg: TrainConfig) -> float:
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    if step < cfg.warmup_iters:
        return cfg.learning_rate * (step + 1) / (cfg.warmup_iters + 1)
    if step >= decay_iters:
        return cfg.min_lr
    if cfg.lr_schedule == "wsd":
        # Stable at the peak until the decay stretch; the decay ends at min_lr on step decay_iters.
        decay_start = max(cfg.warmup_iters, decay_iters - round(cfg.decay_fraction * decay_iters))
        if step < decay_start:
            return cfg.learning_rate
        progress = (step - decay_start) / max(1, decay_iters - decay_start)
        return cfg.learning_rate - progress * (cfg.learning_rate - cfg.min_lr)
    progress = (step - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)
