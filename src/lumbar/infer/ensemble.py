"""The ensemble as inference applies it: per condition group, a convex combination of the models'
probabilities (a linear pool), sharpened or softened by a temperature (p ** (1 / T), renormalised);
where nested CV chose it for the group, a stack (a multinomial logistic regression over the members'
log-probabilities; its numbers in the JSON, no pickle), or the mean of the blend's and the stack's
probabilities (`stack_share` 0.5: the stack's per-level gains with the blend's tamer largest severe
probability, which the any-severe-spinal term reads). Fitted in `train/ensemble.py`."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import schema
from ..files import write_json
from ..metric import EPS

GROUP_COLUMNS = schema.GROUP_COLUMNS

def blend(stack: np.ndarray, w: np.ndarray, t: float) -> np.ndarray:
    p = np.tensordot(w, stack, axes=1)
    p = np.clip(p, EPS, 1.0) ** (1.0 / t)
    return p / p.sum(-1, keepdims=True)


def scale_severe(p: np.ndarray, scale: float) -> np.ndarray:
    """[..., 3] probabilities with the severe one times `scale`, renormalised (the any-severe-spinal term
    reads the largest severe spinal probability of a study: a scale fitted for it, as the 2nd place did)."""
    p = np.array(p, np.float64)
    p[..., 2] *= scale
    return p / p.sum(-1, keepdims=True)


def stack_features(stack: np.ndarray) -> np.ndarray:
    """[M, n, k, 3] members' probabilities -> [n, k, 3M] their log-probabilities side by side."""
    logs = np.log(np.clip(np.asarray(stack, np.float64), EPS, 1.0))
    return np.concatenate(list(logs), axis=-1)


def stacked(stack: np.ndarray, params: dict) -> np.ndarray:
    """A group's stacked probabilities [n, k, 3] from its members' [M, n, k, 3]."""
    z = stack_features(stack) @ np.asarray(params["coef"]).T + np.asarray(params["intercept"])
    z = np.exp(z - z.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


@dataclass
class Ensemble:
    models: list[str]
    weights: dict[str, list[float]] = field(default_factory=dict)  # group -> one weight per model
    temperature: dict[str, float] = field(default_factory=dict)
    stack: dict[str, dict] = field(default_factory=dict)  # group -> {"coef": [3][3M], "intercept": [3]}
    stack_share: dict[str, float] = field(default_factory=dict)  # group -> the stack's share (1 if absent)
    severe_scale: dict[str, float] = field(default_factory=dict)  # group -> its severe probability's factor (1 if absent)

    def _scaled(self, g: str, pooled: np.ndarray) -> np.ndarray:
        return scale_severe(pooled, self.severe_scale[g]) if g in self.severe_scale else pooled

    def apply(self, probs: dict[str, np.ndarray]) -> np.ndarray:
        """Probabilities [n, 25, 3] from each member's [n, 25, 3]."""
        missing = [m for m in self.models if m not in probs]
        if missing:
            raise KeyError(f"ensemble needs predictions of {missing}")
        stack = np.stack([np.asarray(probs[m], np.float64) for m in self.models])
        out = np.zeros(stack.shape[1:], np.float64)
        for g, cols in GROUP_COLUMNS.items():
            pooled = blend(stack[:, :, cols], np.asarray(self.weights[g]), self.temperature.get(g, 1.0))
            if g in self.stack:
                a = self.stack_share.get(g, 1.0)
                pooled = a * stacked(stack[:, :, cols], self.stack[g]) + (1 - a) * pooled
            out[:, cols] = self._scaled(g, pooled)
        return out.astype(np.float32)

    def apply_available(self, probs: dict[str, np.ndarray]) -> np.ndarray:
        """Like apply, for the members that predicted (a failed study, a model dropped for time): each
        group's blend weights renormalised over them (a stack needs every member; its group falls back
        to the blend); equal weights if all their weight was on the absent."""
        present = [m for m in self.models if m in probs]
        if not present:
            raise KeyError(f"ensemble needs predictions of at least one of {self.models}")
        if len(present) == len(self.models):
            return self.apply(probs)
        idx = [self.models.index(m) for m in present]
        stack = np.stack([np.asarray(probs[m], np.float64) for m in present])
        out = np.zeros(stack.shape[1:], np.float64)
        for g, cols in GROUP_COLUMNS.items():
            w = np.asarray(self.weights[g])[idx]
            w = w / w.sum() if w.sum() > 1e-9 else np.full(len(idx), 1.0 / len(idx))
            pooled = blend(stack[:, :, cols], w, self.temperature.get(g, 1.0))
            out[:, cols] = self._scaled(g, pooled)
        return out.astype(np.float32)

    def save(self, path: str | Path) -> None:
        write_json(path, asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> "Ensemble":
        return cls(**json.loads(Path(path).read_text()))
