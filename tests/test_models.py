import numpy as np
import pytest
import torch

from conftest import TINY_MULTITASK, TINY_SEQUENCE
from lumbar import config, schema
from lumbar.models.multitask import COLUMN_CROP, COLUMN_SOURCE, MultitaskConfig, cut_patches, soft_argmax
from lumbar.models.registry import create_model, list_models, model_config
from lumbar.models.sequence import SequenceConfig
from lumbar.models.superres import ESPCN, downscale
from lumbar.train.multitask import MultitaskTraining
from lumbar.train.sequence import SequenceTraining


def random_batch(b=2, s=64, sa=48):
    g = torch.Generator().manual_seed(0)
    sag_pts = torch.rand(b, 3, 5, 2, generator=g) * s
    ax_pts = torch.rand(b, 5, 2, 2, generator=g) * sa
    sag_pts[0, 1] = float("nan")  # unlabelled points
    labels = torch.randint(0, 3, (b, 25), generator=g)
    labels[1, :3] = -1
    present = torch.ones(b, 8, dtype=torch.bool)
    present[1, 3:] = False  # a study without axial series
    return {"sag_image": torch.rand(b, 3, 3, s, s, generator=g), "axial_image": torch.rand(b, 5, 3, sa, sa, generator=g),
            "sag_points": sag_pts, "axial_points": ax_pts, "present": present, "labels": labels,
            "hr": torch.rand(b, 1, 32, 32, generator=g),
            "frames": torch.rand(b, 3, 4, 32, 32, generator=g), "positions": torch.rand(b, 3, 4, generator=g),
            "mask": torch.tensor([[True, True, True], [True, True, False]])}


TINY = config.override(MultitaskTraining(), TINY_MULTITASK)  # the tests' one set of tiny configs (conftest)
SEQ_TINY = config.override(SequenceTraining(), TINY_SEQUENCE)


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_runs_once(name):
    cfg = {"multitask": TINY, "sequence": SEQ_TINY}.get(name) or model_config(name)
    model = create_model(name, cfg)
    out = model(random_batch())
    assert torch.isfinite(out["loss"]) and out["loss"].ndim == 0
    out["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    if "probs" in out:
        assert out["probs"].shape == (2, 25, 3)
        torch.testing.assert_close(out["probs"].sum(-1), torch.ones(2, 25))


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match="registered"):
        create_model("nope")


def test_column_sources_follow_label_order():
    assert len(COLUMN_SOURCE) == 25
    assert COLUMN_SOURCE[schema.label_index("spinal_canal_stenosis", "l3_l4")] == ("sag", 0, 2)
    assert COLUMN_SOURCE[schema.label_index("right_neural_foraminal_narrowing", "l1_l2")] == ("sag", 2, 0)
    assert COLUMN_SOURCE[schema.label_index("left_subarticular_stenosis", "l4_l5")] == ("axial", 3, 0)
    assert COLUMN_SOURCE[schema.label_index("right_subarticular_stenosis", "l5_s1")] == ("axial", 4, 1)
    assert COLUMN_CROP[schema.label_index("right_subarticular_stenosis", "l5_s1")] == 7


def test_soft_argmax_finds_a_peak():
    heat = torch.full((1, 1, 16, 20), -50.0)
    heat[0, 0, 5, 12] = 50.0
    xy = soft_argmax(heat)[0, 0]
    torch.testing.assert_close(xy, torch.tensor([(12 + 0.5) / 20, (5 + 0.5) / 16]))


def test_cut_patches_centres_the_point():
    img = torch.zeros(1, 1, 64, 64)
    img[0, 0, 40, 20] = 1.0  # (x=20, y=40)
    centre = torch.tensor([[[(20 + 0.5) / 64, (40 + 0.5) / 64]]])
    patch = cut_patches(img, centre, side=16, out=16)[0, 0, 0]
    assert tuple(np.unravel_index(int(patch.argmax()), patch.shape)) in {(7, 7), (8, 8), (7, 8), (8, 7)}
    assert patch.max() > 0.2


def test_missing_crops_add_nothing_to_the_loss():
    model = create_model("multitask", TINY).eval()
    batch = random_batch()
    base = model(batch)["loss"]
    changed = dict(batch)
    labels = batch["labels"].clone()
    labels[1, 15:] = (labels[1, 15:] + 1) % 3  # study 1's axial labels change; its axial crops are absent
    changed["labels"] = labels
    torch.testing.assert_close(model(changed)["loss"], base)


def test_superres_starts_as_bicubic_and_keeps_shape():
    net = ESPCN(2, 16)
    x = torch.rand(3, 2, 10, 10)
    y = net(x)
    assert y.shape == (3, 2, 20, 20)
    bicubic = torch.nn.functional.interpolate(x.reshape(6, 1, 10, 10), scale_factor=2, mode="bicubic", align_corners=False)
    torch.testing.assert_close(y.reshape(6, 1, 20, 20), bicubic)
    assert downscale(y, 2).shape == x.shape


def test_config_presets_are_complete_and_the_tiny_ones_are_the_defaults(tmp_path):
    """configs/tiny/<stage>.json is each stage's config dataclass at its defaults and configs/gpu/ holds
    every field too (`python -m lumbar configs` rewrites them): a preset says all a run will use."""
    import dataclasses
    import json
    from pathlib import Path

    from lumbar import config
    from lumbar.commands.cli import write_presets
    from lumbar.train.runner import CONFIGS

    root = Path(__file__).parents[1] / "configs"
    for stage, cls in CONFIGS.items():
        tiny = json.loads((root / "tiny" / f"{stage}.json").read_text())
        assert tiny == json.loads(json.dumps(config.to_dict(cls()))), f"configs/tiny/{stage}.json is stale"
    gpu = sorted(p.stem for p in (root / "gpu").glob("*.json"))
    assert gpu == sorted(CONFIGS)  # every stage: `make train PRESET=gpu` names a file for each
    for stage in gpu:
        cls = CONFIGS[stage]
        data = json.loads((root / "gpu" / f"{stage}.json").read_text())
        assert set(data) == {f.name for f in dataclasses.fields(cls)}, f"configs/gpu/{stage}.json incomplete"
        cfg = config.load(cls, root / "gpu" / f"{stage}.json")
        if stage == "multitask":
            assert cfg.pretrained is True and cfg.backbone == "efficientnet_b2" and cfg.amp is True
    # the writer completes a partial preset and keeps its values
    (tmp_path / "gpu").mkdir()
    (tmp_path / "gpu" / "sequence.json").write_text(json.dumps({"n_frames": 15}))
    write_presets(tmp_path)
    done = json.loads((tmp_path / "gpu" / "sequence.json").read_text())
    assert done["n_frames"] == 15 and set(done) == {f.name for f in dataclasses.fields(CONFIGS["sequence"])}


def test_backbone_from_a_local_checkpoint(tmp_path):
    import timm

    ref = timm.create_model("test_efficientnet", num_classes=0)
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    cfg = MultitaskConfig(kp_input=64, patch_sag=16, patch_axial=16, patch_input=32,
                          backbone_checkpoint=str(tmp_path / "w.pth"))
    model = create_model("multitask", cfg)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(model.cls_backbone.state_dict()[k], v)


@pytest.mark.parametrize("tokens,readout", [("frame", "levels"), ("cells", "levels"), ("frame", "cls"), ("patches", "levels"),
                                            ("patches", "columns")])
def test_sequence_ignores_missing_series_frames(tokens, readout):
    import dataclasses
    model = create_model("sequence", dataclasses.replace(SEQ_TINY, tokens=tokens, readout=readout)).eval()
    batch = random_batch()
    base = model(batch)["probs"]
    changed = dict(batch)
    frames = batch["frames"].clone()
    frames[1, 2] = torch.rand_like(frames[1, 2]) * 5  # study 1's axial series is masked as missing
    changed["frames"] = frames
    torch.testing.assert_close(model(changed)["probs"], base)
    assert base.shape == (2, 25, 3)


def test_sequence_patches_learn_points_and_mask_spare_axial_channels():
    """tokens='patches': the heatmap loss appears when points are labelled, and the axial frames' three
    spare channels are kept out of attention (changing what they would read changes nothing)."""
    import dataclasses
    cfg = dataclasses.replace(SEQ_TINY, tokens="patches", kp_size=32, patch_side=12, patch_input=16)
    model = create_model("sequence", cfg)
    batch = random_batch()
    b, t, n = batch["frames"].shape[:3]
    points = torch.full((b, t, n, 5, 2), float("nan"))
    points[:, 1, :, 2] = 16.0  # the T2 canal at L3/L4, mid-frame
    out = model({**batch, "points": points})
    assert torch.isfinite(out["kp_loss"]) and out["kp_loss"] > 0
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert model.heat[1].weight.grad.abs().sum() > 0  # the T2 heatmap head learns from the points
    model.eval()
    _, pad, _ = model._patch_tokens(batch["frames"].float(), None, torch.arange(t).repeat_interleave(n),
                                    torch.zeros(b, t * n, cfg.d_model), torch.zeros(b, t * n, dtype=torch.bool))
    pad = pad.view(b, t, n, 5)
    assert pad[:, 2, :, 2:].all() and not pad[:, 2, :, :2].any() and not pad[:, :2].any()


@pytest.mark.parametrize("readout", ["levels", "columns", "cls"])
def test_sequence_readouts_start_from_the_prior_in_label_column_order(readout):
    """init_prior puts each label column's prior where that column's logits come out: with the head's
    weights zeroed, every study predicts the prior exactly, column by column."""
    import dataclasses
    import numpy as np
    model = create_model("sequence", dataclasses.replace(SEQ_TINY, tokens="patches", readout=readout, kp_size=32,
                                                         patch_side=12, patch_input=16)).eval()
    rng = np.random.default_rng(0)
    prior = rng.dirichlet(np.ones(3), size=25).astype(np.float32)  # a different prior in every column
    model.init_prior(prior)
    with torch.no_grad():
        model.head.weight.zero_()
    probs = model(random_batch())["probs"]
    torch.testing.assert_close(probs, torch.as_tensor(prior)[None].expand_as(probs), atol=1e-5, rtol=1e-5)
