"""masked_volume: the patch draw, the loss against a loop reference, the decoder, the model's
gradients under every way of running it, config checks and one CLI pretraining."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_pretrain_run import cohort, write_config  # noqa: F401 - the module's cohort fixture, reused
from torch.utils.flop_counter import FlopCounterMode

from multimodal.config import ModelConfig, RunConfig
from multimodal.config_mapping import from_dict
from multimodal.encoders import create_encoder
from multimodal.errors import ConfigError
from pretrain.config import pretrain_config
from pretrain.loop import PretrainStep
from pretrain.model import build_pretrain_model, pretrain_modalities
from pretrain.objectives import OBJECTIVES, masked_volume_loss, patch_mask
from pretrain.volume_decoder import VolumeDecoder, pixel_shuffle_3d
from strokessl.cli import main

B, C, GRID = 4, 2, 16
N_CONT, SIZES = 3, [3, 4]
SMALL = {"projection_dim": 16, "projection_hidden": 32, "fusion_dim": 16, "fusion_depth": 1, "fusion_heads": 2,
         "masked_volume_decoder_width": 8}
ENCODERS = {"image": {"name": "resnet3d_10", "args": {"widen_factor": 0.25}},
            "table": {"name": "ft_transformer", "args": {"dim": 16, "depth": 1, "heads": 2}}}


def settings(encoders: dict | None = None, **pretrain):
    run = from_dict(RunConfig, {"cohort": "c.yaml", "model": {"encoders": encoders or ENCODERS},
                                "pretrain": {**SMALL, **pretrain}})
    return run.model, pretrain_config(run)


def batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(B, C, GRID, GRID, GRID, generator=g)
    image[:, :, 5:9, 5:9, 5:9] += 3.0  # something to reconstruct beyond noise
    missing = torch.zeros(B, N_CONT + len(SIZES), dtype=torch.bool)
    missing[0, 1] = missing[1, N_CONT] = True  # the missing tokens are used too
    cat = torch.stack([torch.randint(0, s, (B,), generator=g) for s in SIZES], dim=1)
    table = {"continuous": torch.randn(B, N_CONT, generator=g), "categorical": cat, "missing": missing}
    return {"image": image, "table": table, "index": torch.arange(B)}


def step_module(objectives: dict, seed: int = 0, **pretrain) -> PretrainStep:
    model_config, cfg = settings(objectives=objectives, **pretrain)
    sizes = {"image": {"in_channels": C}, "table": {"num_continuous": N_CONT, "category_sizes": SIZES}}
    torch.manual_seed(seed)
    model = build_pretrain_model(model_config, cfg, {m: sizes[m] for m in pretrain_modalities(model_config, cfg)})
    pool = batch()["table"]
    return PretrainStep(model, cfg, SIZES, pool, seed=0)


# --------------------------------------------------------------------------- the patch draw


@pytest.mark.parametrize(("size", "patch"), [((16, 16, 16), 4), ((10, 12, 7), 4), ((6, 6, 6), 1)])
def test_patch_mask_masks_the_share_of_whole_cubes(size, patch):
    ratio = 0.6
    mask = patch_mask(3, size, patch, ratio, torch.Generator().manual_seed(0))
    assert mask.shape == (3, 1, *size) and mask.dtype == torch.bool
    grid = [math.ceil(s / patch) for s in size]
    # every cube is all masked or all kept: max-pool == min-pool over cubes (padding by replication)
    padded = mask.float()
    for axis, s in enumerate(size):
        extra = grid[axis] * patch - s
        if extra:
            edge = padded.narrow(axis + 2, s - 1, 1)
            padded = torch.cat([padded, edge.expand(*[extra if d == axis + 2 else -1 for d in range(5)])],
                               dim=axis + 2)
    high = torch.nn.functional.max_pool3d(padded, patch)
    low = -torch.nn.functional.max_pool3d(-padded, patch)
    assert torch.equal(high, low)
    expected = max(1, round(ratio * math.prod(grid)))
    assert high.flatten(1).sum(1).tolist() == [expected] * 3


def test_patch_mask_rows_of_two_ranks_equal_one_process():
    whole = patch_mask(8, (8, 8, 8), 2, 0.5, torch.Generator().manual_seed(3))
    parts = [patch_mask(4, (8, 8, 8), 2, 0.5, torch.Generator().manual_seed(3), rank=r, world_size=2)
             for r in range(2)]
    assert torch.equal(torch.cat(parts), whole)
    other = patch_mask(8, (8, 8, 8), 2, 0.5, torch.Generator().manual_seed(4))
    assert not torch.equal(other, whole)  # the draw follows the generator


@pytest.mark.parametrize(("patch", "ratio", "message"), [(0, 0.5, "masked_volume_patch"),
                                                         (2, 1.0, "masked_volume_ratio"),
                                                         (2, 0.0, "masked_volume_ratio")])
def test_patch_mask_refuses_bad_arguments(patch, ratio, message):
    with pytest.raises(ValueError, match=message):
        patch_mask(2, (8, 8, 8), patch, ratio, torch.Generator())


# --------------------------------------------------------------------------- the loss


def test_loss_reads_only_the_masked_voxels():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, C, 8, 8, 8, generator=g)
    prediction = torch.randn(2, C, 8, 8, 8, generator=g)
    mask = patch_mask(2, (8, 8, 8), 4, 0.5, torch.Generator().manual_seed(1))
    loss = masked_volume_loss(prediction, target, mask)["masked_volume_loss"]
    kept = (~mask[0, 0]).nonzero()[0].tolist()
    hidden = mask[1, 0].nonzero()[0].tolist()
    edited = prediction.clone()
    edited[0, 1, kept[0], kept[1], kept[2]] += 10.0
    assert masked_volume_loss(edited, target, mask)["masked_volume_loss"] == loss
    edited[1, 0, hidden[0], hidden[1], hidden[2]] += 10.0
    assert masked_volume_loss(edited, target, mask)["masked_volume_loss"] > loss


def test_loss_matches_a_loop_reference():
    g = torch.Generator().manual_seed(2)
    target = torch.randn(2, 2, 3, 3, 2, generator=g, dtype=torch.float64)
    prediction = torch.randn(2, 2, 3, 3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(2, 1, 3, 3, 2, generator=g) < 0.5
    total, count = 0.0, 0
    for b in range(2):
        for c in range(2):
            for i in range(3):
                for j in range(3):
                    for k in range(2):
                        if mask[b, 0, i, j, k]:
                            total = total + (prediction[b, c, i, j, k] - target[b, c, i, j, k]) ** 2
                            count += 1
    got = masked_volume_loss(prediction, target, mask)["masked_volume_loss"]
    torch.testing.assert_close(got, total / count)
    torch.testing.assert_close(torch.autograd.grad(got, prediction)[0],
                               torch.autograd.grad(total / count, prediction)[0])
    # nothing masked: 0, with a graph
    empty = masked_volume_loss(prediction, target, torch.zeros_like(mask))["masked_volume_loss"]
    assert empty.item() == 0.0 and empty.requires_grad


def test_loss_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(B, C, H, W, D\)"):
        masked_volume_loss(torch.zeros(2, 1, 4, 4, 4), torch.zeros(2, 1, 4, 4, 3), torch.zeros(2, 1, 4, 4, 4) > 0)
    with pytest.raises(ValueError, match="mask"):
        masked_volume_loss(torch.zeros(2, 2, 4, 4, 4), torch.zeros(2, 2, 4, 4, 4), torch.zeros(2, 3, 4, 4, 4) > 0)


def test_a_config_may_name_it():
    from pretrain.config import PretrainConfig

    assert "masked_volume" in OBJECTIVES
    assert PretrainConfig(objectives={"clip": 1.0, "masked_volume": 1.0}).objectives["masked_volume"] == 1.0


# --------------------------------------------------------------------------- encoder maps and decoder


@pytest.mark.parametrize("size", [(16, 16, 16), (20, 17, 12)])
def test_feature_maps_match_the_encoder_and_the_decoder_restores_the_input_size(size):
    torch.manual_seed(0)
    encoder = create_encoder("resnet3d_10", in_channels=C, widen_factor=0.25).eval()
    x = torch.randn(2, C, *size)
    with torch.no_grad():
        maps = encoder.forward_feature_maps(x)
        torch.testing.assert_close(maps["layer4"], encoder.forward_feature_map(x), rtol=0, atol=0)
        torch.testing.assert_close(encoder.features_from_maps(maps)["embedding"], encoder(x), rtol=0, atol=0)
        for name, (channels, stride) in encoder.stage_specs().items():
            assert maps[name].shape[:2] == (2, channels)
            assert list(maps[name].shape[2:]) == [math.ceil(s / stride) for s in size], name
        decoder = VolumeDecoder(encoder.stage_specs(), C, width=8)
        assert decoder(maps, size).shape == (2, C, *size)


def test_pixel_shuffle_3d_places_each_cells_values_in_its_cube():
    x = torch.arange(2 * 8 * 2).float().view(1, 2 * 8, 2, 1, 1)  # 2 channels, r = 2, 2 x 1 x 1 cells
    out = pixel_shuffle_3d(x, 2)
    assert out.shape == (1, 2, 4, 2, 2)
    # channel 1, cell (1, 0, 0), sub-voxel (1, 0, 1): input channel 1*8 + 1*4 + 0*2 + 1 = 13
    assert out[0, 1, 3, 0, 1] == x[0, 13, 1, 0, 0]


def test_decoder_costs_a_few_percent_of_the_demo_encoder():
    encoder = create_encoder("resnet3d_10", in_channels=2, widen_factor=0.5)  # the demo encoder
    decoder = VolumeDecoder(encoder.stage_specs(), 2, width=32)
    x = torch.zeros(1, 2, 32, 32, 32)
    with torch.no_grad(), FlopCounterMode(display=False) as encoder_flops:
        maps = encoder.forward_feature_maps(x)
    with torch.no_grad(), FlopCounterMode(display=False) as decoder_flops:
        decoder(maps, (32, 32, 32))
    share = decoder_flops.get_total_flops() / encoder_flops.get_total_flops()
    assert 0.0 < share < 0.08, share


# --------------------------------------------------------------------------- the model and the loop


@pytest.mark.parametrize(
    ("objectives", "extra"),
    [({"masked_volume": 1.0}, {}),
     ({"clip": 1.0, "masked_volume": 1.0}, {}),
     ({"clip": 1.0, "masked_volume": 1.0}, {"masked_volume_shared_view": True}),
     ({"simclr": 1.0, "masked_volume": 1.0}, {}),
     ({"clip": 1.0, "simclr": 0.5, "masked_volume": 1.0}, {"masked_volume_shared_view": True})],
    ids=["alone", "clip", "clip-shared", "simclr", "clip+simclr-shared"],
)
def test_every_parameter_gets_a_gradient(objectives, extra):
    step = step_module(objectives, **extra)
    data = batch()
    if "simclr" in objectives:  # two views
        data["image"] = torch.stack([data["image"], data["image"].flip(2)], dim=1)
    terms = step(data, 0)
    assert {f"{name}_loss" for name in objectives} <= set(terms)
    assert torch.isfinite(terms["loss"])
    terms["loss"].backward()
    no_grad = [n for n, p in step.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    # the token positions feed only the matching fusion (absent here), as with clip alone
    assert no_grad in ([], ["model.image_encoder.pos_embed"]), no_grad
    assert step.model.volume_decoder is not None


@pytest.mark.parametrize(("shared", "passes"), [(False, 2), (True, 1)])
def test_the_shared_view_runs_one_encoder_pass_and_the_default_two(shared, passes):
    step = step_module({"clip": 1.0, "masked_volume": 1.0}, masked_volume_shared_view=shared)
    calls = []
    step.model.image_encoder.backbone.conv1.register_forward_hook(lambda *_: calls.append(1))
    step(batch(), 0)
    assert len(calls) == passes


def test_the_mask_follows_the_step_and_is_replayed():
    step = step_module({"masked_volume": 1.0})
    volume = batch()["image"]
    first, mask = step._mask_volume(volume, 5)
    again, mask_again = step._mask_volume(volume, 5)
    assert torch.equal(mask, mask_again) and torch.equal(first, again)
    assert not torch.equal(step._mask_volume(volume, 6)[1], mask)
    assert (first[mask.expand_as(volume)] == 0).all()
    assert torch.equal(first[~mask.expand_as(volume)], volume[~mask.expand_as(volume)])
    assert abs(mask.float().mean().item() - 0.6) < 0.05  # 38 of the 64 cubes of 4^3 voxels


def test_masked_volume_alone_lowers_its_loss_on_a_fixed_batch():
    step = step_module({"masked_volume": 1.0})
    assert not any("projection" in n for n, _ in step.named_parameters())  # alone it trains no heads
    data = batch()
    data["image"] = data["image"] * 0.1 + 1.0  # little noise: a target a decoder can learn
    data["image"][:, :, 5:9, 5:9, 5:9] += 2.0
    optimizer = torch.optim.AdamW(step.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        terms = step(data, 0)  # step 0 every time: the same mask
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        losses.append(float(terms["masked_volume_loss"].detach()))
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0], losses


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("section", "message"),
    [({"masked_volume_ratio": 1.2}, "pretrain.masked_volume_ratio"),
     ({"masked_volume_ratio": 0.0}, "pretrain.masked_volume_ratio"),
     ({"masked_volume_patch": 0}, "pretrain.masked_volume_patch"),
     ({"masked_volume_decoder_width": 0}, "pretrain.masked_volume_decoder_width"),
     ({"masked_volume_shared_view": "sometimes"}, "pretrain.masked_volume_shared_view"),
     ({"masked_volume_shared_view": True, "objectives": {"masked_volume": 1.0}}, "pretrain.masked_volume_shared_view"),
     ({"masked_volume_shared_view": True}, "pretrain.masked_volume_shared_view"),  # clip alone
     ({"masked_volume_patchs": 4}, "did you mean 'masked_volume_patch'"),
     ({"objectives": {"masked_volum": 1.0}}, "did you mean 'masked_volume'"),
     ({"objectives": {"masked_tabular": 1.0, "masked_volume": 1.0}}, "masked_volume beside"),
     ({"objectives": {"scarf": 1.0, "masked_volume": 1.0}}, "scarf")],
)
def test_bad_masked_volume_settings(section, message):
    with pytest.raises(ConfigError, match=message):
        settings(**section)


def test_masked_volume_alone_trains_the_image_branch_and_refuses_a_slice_encoder():
    assert settings(objectives={"masked_volume": 1.0})[1].modalities == ("image",)
    assert settings(objectives={"clip": 1.0, "masked_volume": 1.0})[1].modalities == ("image", "table")
    slices = {"image": {"name": "slice_lstm_resnet10t", "args": {"lstm_hidden": 8}}}
    model_config, cfg = settings(encoders=slices, objectives={"masked_volume": 1.0})
    assert isinstance(model_config, ModelConfig)
    with pytest.raises(ConfigError, match=r"pretrain.objectives.masked_volume.*slice_lstm_resnet10t"):
        build_pretrain_model(model_config, cfg, {"image": {"in_channels": C}})


# --------------------------------------------------------------------------- end to end


@pytest.mark.parametrize(("objectives", "shared"), [('{"clip": 1.0, "masked_volume": 1.0}', False),
                                                  ('{"clip": 1.0, "masked_volume": 1.0}', True),
                                                  ('{"masked_volume": 1.0}', False)],
                         ids=["clip", "clip-shared", "alone"])
def test_cli_pretraining_logs_the_term(tmp_path, cohort, objectives, shared):  # noqa: F811 - the imported fixture
    config = write_config(tmp_path, cohort, epochs=1)
    args = ["pretrain", str(config), "--set", f"pretrain.objectives={objectives}",
            "--set", f"pretrain.masked_volume_shared_view={str(shared).lower()}",
            "--set", "pretrain.masked_volume_decoder_width=8"]
    assert main(args) == 0
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    for name in json.loads(objectives):
        value = history[0][f"train/{name}_loss"]
        assert value == value and value > 0
