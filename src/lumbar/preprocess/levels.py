"""The five disc levels on the sagittal T2: a small heatmap network finds the canal point of each
level on the canal slice; the slice's geometry turns them into patient points (mm, LPS) that place
every other choice of stage one (placement.py).

The network sees the whole field of view at THUMB x THUMB (three neighbouring slices as channels) and
answers a heatmap per level at a quarter of that; the point is the probability-weighted mean of the
heatmap around its peak, so its precision is finer than a heatmap cell. It is small enough to train on
two CPU cores in a minute or two per fold (a few hundred studies) and runs in milliseconds per study.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.dicom import Volume
from ..data.resample import rotation_matrix, warp_affine
from ..data.volumes import normalised
from ..files import atomic_path, write_json
from ..progress import bar
from .crops import crop_resize, map_points, unmap_points

THUMB = 128  # input side (px): a 300 mm field of view at ~2.3 mm per pixel
STRIDE = 4  # heatmap cell = STRIDE input pixels
N_LEVELS = 5
FINE = 96  # the second look: a patch this many pixels square ...
FINE_MM = 56.0  # ... covering this many mm around each first-look point (0.58 mm per pixel)
FINE_JITTER_MM = 8.0  # training moves the patch's centre this far off the point (the first look's error)


def thumbnails(v: Volume) -> np.ndarray:
    """Every slice of a volume normalised and resized to THUMB x THUMB: [n, T, T] float16."""
    import cv2

    px = normalised(v)
    return np.stack([cv2.resize(p, (THUMB, THUMB), interpolation=cv2.INTER_AREA) for p in px]).astype(np.float16)


def to_thumb(xy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Stored-pixel points [K, 2] -> thumbnail pixels (pixel centres at integers on both grids)."""
    h, w = shape
    return (np.asarray(xy, np.float64) + 0.5) * np.array([THUMB / w, THUMB / h]) - 0.5


def from_thumb(xy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    return (np.asarray(xy, np.float64) + 0.5) * np.array([w / THUMB, h / THUMB]) - 0.5


def stack_at(thumbs: np.ndarray, v: Volume, idx: int) -> np.ndarray:
    """The network's input for slice idx: it and its neighbours within its block, [3, T, T] float32."""
    return thumbs[v.neighbours(idx, 3)].astype(np.float32)


def fine_box(centre, spacing) -> np.ndarray:
    """The box [x0, y0, x1, y1] (stored pixels) of a FINE_MM-square patch centred on `centre`."""
    half = FINE_MM / 2 / np.array([spacing[1], spacing[0]], np.float64)
    c = np.asarray(centre, np.float64)
    return np.concatenate([c - half, c + half])


def fine_patch(stack: np.ndarray, centre, spacing) -> tuple[np.ndarray, np.ndarray]:
    """(patch [3, FINE, FINE] float32, its box) of a normalised slice stack [3, h, w] around `centre`."""
    box = fine_box(centre, spacing)
    return crop_resize(stack, box, FINE), box


def _block(i: int, o: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, 3, stride, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))


class LevelNet(nn.Module):
    """A U-Net in miniature: down to 1/16 for context (which disc is which), up to 1/4 for place.
    At module level so stage one (which holds it) pickles into the input workers."""

    def __init__(self, w: int, n_out: int = N_LEVELS):
        super().__init__()
        self.s2 = nn.Sequential(_block(3, w, 2), _block(w, w))  # 1/2
        self.s4 = nn.Sequential(_block(w, 2 * w, 2), _block(2 * w, 2 * w))  # 1/4
        self.s8 = nn.Sequential(_block(2 * w, 4 * w, 2), _block(4 * w, 4 * w))  # 1/8
        self.s16 = nn.Sequential(_block(4 * w, 4 * w, 2), _block(4 * w, 4 * w), _block(4 * w, 4 * w))  # 1/16
        self.u8 = _block(8 * w, 4 * w)
        self.u4 = _block(6 * w, 2 * w)
        self.head = nn.Conv2d(2 * w, n_out, 1)

    def forward(self, x):
        up = nn.functional.interpolate
        a4 = self.s4(self.s2(x))
        a8 = self.s8(a4)
        a16 = self.s16(a8)
        b8 = self.u8(torch.cat([up(a16, scale_factor=2.0), a8], 1))
        b4 = self.u4(torch.cat([up(b8, scale_factor=2.0), a4], 1))
        return self.head(b4)  # [B, n_out, H/4, W/4] logits


def _net(width: int = 16, n_out: int = N_LEVELS) -> LevelNet:
    return LevelNet(width, n_out)


def decode(logits, window: int = 2):
    """Heatmap logits [B, L, H, W] -> (points [B, L, 2] in input pixels, peak mass [B, L]): the
    probability-weighted mean within `window` cells of each heatmap's peak (a distant second mode,
    another disc, does not pull the point off)."""
    import torch

    b, l, h, w = logits.shape
    p = torch.softmax(logits.reshape(b, l, -1).float(), -1).reshape(b, l, h, w)
    peak = p.reshape(b, l, -1).argmax(-1)
    py, px = (peak // w).float(), (peak % w).float()
    ys = torch.arange(h, dtype=torch.float32, device=p.device).view(1, 1, h, 1)
    xs = torch.arange(w, dtype=torch.float32, device=p.device).view(1, 1, 1, w)
    near = ((ys - py[..., None, None]).abs() <= window) & ((xs - px[..., None, None]).abs() <= window)
    q = p * near
    mass = q.sum((-1, -2)).clamp_min(1e-9)
    cx = (q * xs).sum((-1, -2)) / mass
    cy = (q * ys).sum((-1, -2)) / mass
    cells = torch.stack([cx, cy], -1)
    return (cells + 0.5) * STRIDE - 0.5, mass


def heatmap_loss(logits, points, sigma: float = 1.0):
    """Cross-entropy of each level's softmax heatmap against a Gaussian around its point (cells),
    plus the L1 distance of the soft-argmax to the point; levels without a point (NaN) are left out."""
    import torch

    b, l, h, w = logits.shape
    ok = torch.isfinite(points).all(-1)  # [B, L]
    if not ok.any():
        return logits.sum() * 0.0
    cells = (points + 0.5) / STRIDE - 0.5
    cells = torch.where(ok[..., None], cells, torch.zeros_like(cells))
    ys = torch.arange(h, dtype=torch.float32, device=logits.device).view(1, 1, h, 1)
    xs = torch.arange(w, dtype=torch.float32, device=logits.device).view(1, 1, 1, w)
    target = torch.exp(-((xs - cells[..., 0, None, None]) ** 2 + (ys - cells[..., 1, None, None]) ** 2) / (2 * sigma ** 2))
    target = target / target.sum((-1, -2), keepdim=True)
    logp = torch.log_softmax(logits.reshape(b, l, -1).float(), -1).reshape(b, l, h, w)
    ce = -(target * logp).sum((-1, -2))
    p = logp.exp()
    soft = torch.stack([(p * xs).sum((-1, -2)), (p * ys).sum((-1, -2))], -1)
    l1 = (soft - cells).abs().sum(-1)
    return ((ce + 0.5 * l1) * ok).sum() / ok.sum()


def _augment(img: np.ndarray, pts: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A small random affine (rotation ±10°, scale 0.85-1.15, shift ±10 px) and contrast change."""
    angle, scale = rng.uniform(-10, 10), rng.uniform(0.85, 1.15)
    c = (THUMB - 1) / 2
    m = rotation_matrix((c, c), angle, scale)
    m[:, 2] += rng.uniform(-10, 10, 2)
    out = warp_affine(img, m, (THUMB, THUMB), inverse=False)
    pts = pts @ m[:, :2].T + m[:, 2]
    gamma = rng.uniform(0.7, 1.4)
    out = np.clip(out, 0, None) ** gamma * rng.uniform(0.8, 1.2)
    return out.astype(np.float32), pts


@dataclass
class LevelConfig:
    steps: int = 600  # optimiser steps: the training cost stays flat in the number of studies
    batch_size: int = 16
    lr: float = 2e-3
    width: int = 16
    seed: int = 0
    device: str = "cpu"  # "auto" takes a working GPU


class LevelLocaliser:
    """The fitted networks and what they were trained with: the first look finds the five levels on
    the whole slice, the second (optional) looks again at a finer patch around each point."""

    def __init__(self, cfg: LevelConfig | None = None, state: dict | None = None):
        import torch

        self.cfg = cfg or LevelConfig()
        torch.manual_seed(self.cfg.seed)
        self.net = _net(self.cfg.width)
        self.fine = None
        if state is not None:
            self.net.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("net.")})
            fine = {k[5:]: v for k, v in state.items() if k.startswith("fine.")}
            if fine:
                self.fine = _net(self.cfg.width, 1)
                self.fine.load_state_dict(fine)
                self.fine.eval()
        self.net.eval()

    def _train(self, net, draw, progress: str):
        """The one optimiser loop of both looks: `draw(rng)` gives a batch (inputs, points)."""
        import torch

        from ..devices import one_cpu_thread, pick_device

        device = pick_device(self.cfg.device)
        with one_cpu_thread(device):
            rng = np.random.default_rng(self.cfg.seed)
            torch.manual_seed(self.cfg.seed)
            net = net.to(device).train()
            steps = max(1, self.cfg.steps)
            opt = torch.optim.AdamW(net.parameters(), lr=self.cfg.lr, weight_decay=1e-4)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.cfg.lr, total_steps=steps, pct_start=0.15)
            for _ in bar(range(steps), desc=progress, leave=False):
                xs, ps = draw(rng)
                x = torch.from_numpy(np.stack(xs).astype(np.float32)).to(device)
                y = torch.from_numpy(np.stack(ps).astype(np.float32)).to(device)
                loss = heatmap_loss(net(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        return net.cpu().eval()

    def fit(self, samples: list[tuple[np.ndarray, np.ndarray, list[np.ndarray]]], progress: str = "") -> "LevelLocaliser":
        """samples: (centre stack [3, T, T], points [5, 2] in thumbnail pixels (NaN unlabelled), the
        neighbouring stacks the selector may pick instead): a neighbour stands in for the centre in
        three draws of ten, so the network also finds the levels from a slice beside the canal."""
        order: list[int] = []

        def draw(rng):
            nonlocal order
            if len(order) < self.cfg.batch_size:  # a fresh pass over the studies
                order += rng.permutation(len(samples)).tolist()
            batch, order = order[:self.cfg.batch_size], order[self.cfg.batch_size:]
            xs, ps = [], []
            for i in batch:
                centre, pts, others = samples[i]
                img = others[rng.integers(len(others))] if others and rng.random() < 0.3 else centre
                img, p = _augment(img, pts, rng)
                xs.append(img)
                ps.append(p)
            return xs, ps

        self.net = self._train(self.net, draw, progress or "level localiser")
        return self

    def fit_fine(self, samples: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
                 progress: str = "") -> "LevelLocaliser":
        """The second look. samples: (a region of the labelled canal stack [3, h, w] around its points,
        the region's origin (x, y) in stored pixels, pixel spacing [2], points [5, 2] in stored pixels):
        each draw is one labelled level, the patch centred up to FINE_JITTER_MM off its point."""
        pairs = [(i, k) for i, (_, _, _, pts) in enumerate(samples) for k in range(N_LEVELS) if np.isfinite(pts[k]).all()]
        if not pairs:
            return self

        def draw(rng):
            xs, ps = [], []
            for j in rng.integers(len(pairs), size=self.cfg.batch_size):
                i, k = pairs[j]
                region, origin, spacing, pts = samples[i]
                off = rng.uniform(-FINE_JITTER_MM, FINE_JITTER_MM, 2) / np.array([spacing[1], spacing[0]])
                patch, box = fine_patch(region.astype(np.float32), pts[k] - origin + off, spacing)
                target = map_points(pts[k:k + 1] - origin, box, FINE)
                gamma = rng.uniform(0.7, 1.4)
                xs.append(np.clip(patch, 0, None) ** gamma * rng.uniform(0.8, 1.2))
                ps.append(target)
            return xs, ps

        self.fine = self._train(_net(self.cfg.width, 1), draw, progress or "level localiser, second look")
        return self

    def predict(self, stacks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[B, 3, T, T] -> (points [B, 5, 2] in thumbnail pixels, peak mass [B, 5])."""
        import torch

        from ..devices import one_cpu_thread

        with torch.inference_mode(), one_cpu_thread(torch.device("cpu")):
            pts, mass = decode(self.net(torch.from_numpy(np.asarray(stacks, np.float32))))
        return pts.numpy().astype(np.float64), mass.numpy().astype(np.float64)

    def refine(self, stack: np.ndarray, points: np.ndarray, spacing) -> np.ndarray:
        """Points [5, 2] (stored pixels of a normalised stack [3, h, w]) moved to the second look's
        answer on a patch around each; unchanged without a second look."""
        import torch

        if self.fine is None:
            return points
        patches, boxes = zip(*(fine_patch(stack, p, spacing) for p in points))
        x = torch.from_numpy(np.stack(patches).astype(np.float32))
        from ..devices import one_cpu_thread

        with torch.inference_mode(), one_cpu_thread(torch.device("cpu")):
            pts, _ = decode(self.fine(x))
        local = pts[:, 0].numpy().astype(np.float64)
        return np.stack([unmap_points(local[i:i + 1], boxes[i], FINE)[0] for i in range(len(points))])

    def save(self, folder: str | Path, extra: dict | None = None) -> None:
        """levels.pt (the networks' tensors, loadable with weights_only) and levels.json beside it."""
        import torch

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {f"net.{k}": v.detach().cpu() for k, v in self.net.state_dict().items()}
        if self.fine is not None:
            state.update({f"fine.{k}": v.detach().cpu() for k, v in self.fine.state_dict().items()})
        with atomic_path(folder / "levels.pt") as tmp:
            torch.save(state, tmp)
        write_json(folder / "levels.json", {"config": asdict(self.cfg), "thumb": THUMB, "stride": STRIDE,
                                            "fine": FINE if self.fine is not None else None,
                                            "fine_mm": FINE_MM, **(extra or {})})

    @classmethod
    def load(cls, folder: str | Path) -> tuple["LevelLocaliser", dict]:
        """(localiser, the rest of levels.json): raises naming the file if either does not load."""
        import torch

        folder = Path(folder)
        meta = json.loads((folder / "levels.json").read_text())
        if meta.get("thumb") != THUMB or meta.get("stride") != STRIDE or meta.get("fine") not in (None, FINE) \
                or meta.get("fine_mm", FINE_MM) != FINE_MM:
            raise ValueError(f"{folder / 'levels.json'}: trained at {meta.get('thumb')} px / stride "
                             f"{meta.get('stride')}, this code reads {THUMB} / {STRIDE}")
        state = torch.load(folder / "levels.pt", map_location="cpu", weights_only=True)
        return cls(LevelConfig(**meta["config"]), state), meta
