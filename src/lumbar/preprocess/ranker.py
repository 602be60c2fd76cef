"""Each level's axial slice ranked by what a small network sees around its target.

The local scorer (evidence.py) compares the candidate planes near a level point by a few window means.
The axial slice through a disc's mid-plane differs from its neighbours a slice away by more than a
window's mean: the lateral recesses, the facets and a bulging disc are widest there and taper above and
below, and where a stack is not parallel to the disc, the disc's edge crosses the slice at a place that
moves with the plane's height. A level point 1-2 mm off cannot tell two planes 4 mm apart; those shapes
can. So every candidate gets a patch of PATCH_MM around its target's foot, on its own plane and on the
planes PATCH_STEP_MM above and below it in its block (channels; in mm, not slices, so a thin stack's
patch spans what a block's does), and a small CNN scores it; its score plus a linear term over the
local scorer's features (distance, block offset, window means) ranks the candidates, trained with a
softmax over each level's candidates against the labelled slice.

Measured on a 200-study real-profile folder, held out (docs/stage-one.md): axial exact 0.794 with the
local scorer, 0.86 with this ranker. The weights are a few tens of thousands of numbers and travel in
levels.json beside the local scorer (no pickle).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..data.dicom import Volume
from ..progress import bar
from .crops import crop_resize

PATCH = 40  # patch side, px
PATCH_MM = 48.0  # ... covering this many mm around the target's foot (1.2 mm per pixel)
PATCH_STEP_MM = 4.0  # the other two channels: the planes of the block nearest this far above and below


def patch_stack(v: Volume, pixels: np.ndarray, idx: int, xy) -> np.ndarray:
    """[3, PATCH, PATCH] float32: slice idx of the normalised pixels [n, h, w] around the stored-pixel
    point xy, and the slices of its block nearest PATCH_STEP_MM either side of it (itself at an end)."""
    depth = v.depth
    block = np.flatnonzero(v.blocks == v.blocks[idx])
    near = [int(block[np.argmin(np.abs(depth[block] - (depth[idx] + o)))]) for o in (-PATCH_STEP_MM, 0.0, PATCH_STEP_MM)]
    half = PATCH_MM / 2 / np.array([v.pixel_spacing[1], v.pixel_spacing[0]], np.float64)
    c = np.asarray(xy, np.float64)
    return crop_resize(pixels[near], np.concatenate([c - half, c + half]), PATCH)


def candidate_patches(cands, vols: list[tuple[int, Volume]], pixels_of) -> np.ndarray:
    """[len(cands), 3, PATCH, PATCH]: each evidence.Candidate's patch_stack, its series' normalised
    pixels from pixels_of(series id)."""
    by_id = dict(vols)
    return np.stack([patch_stack(by_id[c.series_id], pixels_of(c.series_id), c.slice, c.xy) for c in cands])


def _net(n_features: int, width: int):
    from torch import nn

    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, 1, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU())

    class RankNet(nn.Module):
        def __init__(self):
            super().__init__()
            w = width  # max-pooling: strided convolutions cost 14% less time here and scored 0.007 lower
            self.image = nn.Sequential(block(3, w), nn.MaxPool2d(2), block(w, 2 * w), nn.MaxPool2d(2),
                                       block(2 * w, 4 * w), nn.MaxPool2d(2), block(4 * w, 4 * w),
                                       nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, 1))
            self.features = nn.Linear(n_features, 1)

        def forward(self, patches, feats):
            return self.image(patches)[:, 0] + self.features(feats)[:, 0]

    return RankNet()


def _augment(p: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The left-right mirror (a level's anatomy is near symmetric and the label is the slice, not a
    side), a contrast change and a shift of up to 2 px."""
    if rng.random() < 0.5:
        p = p[..., ::-1]
    p = np.clip(p, 0, None) ** rng.uniform(0.8, 1.25) * rng.uniform(0.85, 1.15)
    return np.roll(p, tuple(rng.integers(-2, 3, 2)), (-2, -1))


@dataclass
class Ranker:
    """The fitted ranker: the features' standardisation and the network's tensors as nested lists."""
    mean: list = field(default_factory=list)
    scale: list = field(default_factory=list)
    width: int = 16
    state: dict = field(default_factory=dict)  # tensor name -> nested list
    patch: tuple = (PATCH, PATCH_MM, PATCH_STEP_MM)

    @classmethod
    def fit(cls, groups: list[tuple[np.ndarray, np.ndarray, np.ndarray]], epochs: int = 20, width: int = 16,
            seed: int = 0, device: str = "cpu", desc: str = "slice ranker", max_steps: int = 0) -> "Ranker | None":
        """groups: (features [c, F], patches [c, 3, PATCH, PATCH], which candidate is the labelled slice
        [c] bool), one per labelled level; those without the labelled slice among their candidates, or
        with one candidate, teach nothing. None with fewer than 10 left. `max_steps` (0: none) caps the
        optimiser steps: `epochs` over more studies stop there, the last epoch cut short (below the cap
        the steps, their order and the result are those of `epochs` epochs)."""
        import torch
        from torch import nn

        from ..devices import pick_device

        groups = [g for g in groups if g[2].any() and len(g[2]) > 1]
        if len(groups) < 10 or epochs <= 0:
            return None
        X = np.concatenate([g[0] for g in groups])
        mean, scale = X.mean(0), X.std(0) + 1e-6
        dev = pick_device(device)
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        # channels_last: a training step of 74 patches ran 2.3x faster on the CPU, a whole fit 1.44x (measured)
        net = _net(X.shape[1], width).to(dev).to(memory_format=torch.channels_last).train()
        batch = 16
        per_epoch = max(1, len(groups) // batch)
        opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
        steps = epochs * per_epoch if max_steps <= 0 else min(epochs * per_epoch, max_steps)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
        for e in bar(range(-(-steps // per_epoch)), desc=desc, leave=False):
            order = rng.permutation(len(groups))
            for b in range(min(per_epoch, steps - e * per_epoch)):
                chosen = [groups[i] for i in order[b * batch:(b + 1) * batch]]
                P = torch.from_numpy(np.concatenate([_augment(g[1].astype(np.float32), rng) for g in chosen])).to(dev)
                P = P.contiguous(memory_format=torch.channels_last)
                counts = [len(g[2]) for g in chosen]
                longest = max(counts)
                mask = torch.from_numpy(np.arange(longest)[None, :] < np.array(counts)[:, None]).to(dev)
                target = torch.from_numpy(np.array([int(np.argmax(g[2])) for g in chosen])).to(dev)
                F = torch.from_numpy(((np.concatenate([g[0] for g in chosen]) - mean) / scale).astype(np.float32)).to(dev)
                # a softmax over each level's candidates (padded to the longest), against its labelled slice
                padded = torch.full((len(chosen), longest), -1e4, device=dev).masked_scatter(mask, net(P, F))
                loss = nn.functional.cross_entropy(padded, target)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        state = {k: v.detach().cpu().numpy().astype(np.float32).round(6).tolist() for k, v in net.state_dict().items()
                 if v.dtype.is_floating_point}
        return cls(mean.round(6).tolist(), scale.round(6).tolist(), width, state)

    def scores(self, X: np.ndarray, patches: np.ndarray) -> np.ndarray:
        """[c] the candidates' scores (higher: more likely the labelled slice)."""
        import torch

        net = self._module()
        F = ((np.asarray(X, np.float64) - np.asarray(self.mean)) / np.asarray(self.scale)).astype(np.float32)
        with torch.inference_mode():
            return net(torch.from_numpy(np.ascontiguousarray(patches, np.float32)), torch.from_numpy(F)).numpy()

    def best(self, X: np.ndarray, patches: np.ndarray) -> int:
        return int(np.argmax(self.scores(X, patches)))

    def _module(self):
        import torch

        if self.__dict__.get("_built") is None:  # built once per ranker, not per level
            net = _net(len(self.mean), self.width)
            own = net.state_dict()
            net.load_state_dict({k: torch.tensor(np.asarray(self.state[k], np.float32)).reshape(own[k].shape)
                                 if k in self.state else own[k] for k in own})
            self.__dict__["_built"] = net.eval()
        return self.__dict__["_built"]

    def to_dict(self) -> dict:
        return {"mean": self.mean, "scale": self.scale, "width": self.width, "state": self.state,
                "patch": list(self.patch)}

    @classmethod
    def from_dict(cls, d: dict, n_features: int) -> "Ranker":
        """Refuses (ValueError) a ranker of other features or another patch than this code cuts."""
        if len(d.get("mean", ())) != n_features:
            raise ValueError(f"a slice ranker of {len(d.get('mean', ()))} features; this code computes {n_features}")
        if tuple(d.get("patch", ())) != (PATCH, PATCH_MM, PATCH_STEP_MM):
            raise ValueError(f"a slice ranker of patches {d.get('patch')}; this code cuts "
                             f"{(PATCH, PATCH_MM, PATCH_STEP_MM)} (px, mm, step mm)")
        r = cls(d["mean"], d["scale"], int(d["width"]), d["state"])
        expected = _net(n_features, r.width).state_dict()
        missing = [k for k, v in expected.items() if v.dtype.is_floating_point and k not in r.state]
        if missing:
            raise ValueError(f"a slice ranker without {missing[:3]}")
        return r


_LOADED: dict[int, tuple[dict, Ranker]] = {}  # id(saved dict) -> (it, its ranker): one network per saved ranker


def ranker_from(d: dict, n_features: int) -> Ranker:
    """Ranker.from_dict, once per saved dict (a study's five levels and every study share it)."""
    hit = _LOADED.get(id(d))
    if hit is None or hit[0] is not d:
        if len(_LOADED) > 8:
            _LOADED.clear()
        hit = _LOADED[id(d)] = (d, Ranker.from_dict(d, n_features))
    return hit[1]
