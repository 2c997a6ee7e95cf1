"""Encoders: registry, shapes, gradients, slice locality, missing tokens, weight round trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from multimodal.checkpoint import save_weights
from multimodal.encoders import (
    ENCODERS,
    create_encoder,
    list_encoders,
    register_encoder,
)
from multimodal.errors import ConfigError, StrokeSSLError

IMAGE_SHAPE = (2, 2, 16, 16, 8)  # (B, C, H, W, S): two sequences, 8 axial slices
TAB_KWARGS = {"num_continuous": 3, "category_sizes": [3, 4], "dim": 32, "depth": 2, "heads": 4}


# Registered encoders with a non-default option, tested like the registered names.
OPTIONS = {"resnet3d_10-multiscale": ("resnet3d_10", {"pool": "multiscale"}),
           "resnet3d_10-stages": ("resnet3d_10", {"pool": "stages"})}


def _create(name: str) -> nn.Module:
    base, options = OPTIONS.get(name, (name, {}))
    return create_encoder(base, **_kwargs(base), **options)


def _kwargs(name: str) -> dict:
    if name.startswith("slice_lstm"):
        return {"in_channels": 2, "lstm_hidden": 16}
    if name.startswith("resnet3d"):
        return {"in_channels": 2}
    if name == "tabular_mlp":  # an MLP has no attention heads
        return {k: v for k, v in TAB_KWARGS.items() if k != "heads"}
    return dict(TAB_KWARGS)


def _table(batch: int = 4, n_cont: int = 3, sizes: tuple[int, ...] = (3, 4), seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    cont = torch.randn(batch, n_cont, generator=g)
    cat = torch.zeros(batch, 0, dtype=torch.long)
    if sizes:
        cat = torch.stack([torch.randint(0, s, (batch,), generator=g) for s in sizes], dim=1)
    missing = torch.rand(batch, n_cont + len(sizes), generator=g) < 0.4
    missing[0] = True  # every missing token and every value path is used at least once
    missing[1] = False
    cont = cont.masked_fill(missing[:, :n_cont], 0.0)
    return {"continuous": cont, "categorical": cat, "missing": missing}


def _input(name: str) -> torch.Tensor | dict:
    if name in list_encoders("table"):
        return _table()
    return torch.randn(IMAGE_SHAPE, generator=torch.Generator().manual_seed(0))


def _expected_tokens(name: str) -> int:
    if name.startswith("resnet3d"):
        return 2**3  # token_grid = 2
    if name.startswith("slice_lstm"):
        return IMAGE_SHAPE[-1]
    return TAB_KWARGS["num_continuous"] + len(TAB_KWARGS["category_sizes"])


# --------------------------------------------------------------------------- every registered encoder
IMAGE_AND_TABLE = list_encoders("image") + list_encoders("table")  # the report encoder: tests/multimodal/test_text.py


@pytest.mark.parametrize("name", IMAGE_AND_TABLE + sorted(OPTIONS))
def test_forward_shapes_finite_and_all_parameters_get_gradients(name: str) -> None:
    torch.manual_seed(0)
    model = _create(name)
    x = _input(name)
    pooled = model(x)
    assert pooled.shape == (2 if isinstance(x, torch.Tensor) else 4, model.num_features)
    assert torch.isfinite(pooled).all()
    loss = pooled.square().mean()
    if name != "tabular_mlp":
        tokens = model.forward_features(x)["tokens"]
        assert tokens.shape == (pooled.shape[0], _expected_tokens(name), model.num_features)
        assert torch.isfinite(tokens).all()
        loss = loss + tokens.square().mean()
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad}"


@pytest.mark.parametrize("name", IMAGE_AND_TABLE + sorted(OPTIONS))
def test_forward_features_agrees_with_forward(name: str) -> None:
    torch.manual_seed(0)
    model = _create(name).eval()
    x = _input(name)
    with torch.no_grad():
        features = model.forward_features(x)
        torch.testing.assert_close(features["embedding"], model(x), rtol=0, atol=0)
        if name == "tabular_mlp":  # documented: no tokens, so no "tokens" key
            assert set(features) == {"embedding"}
        else:
            assert features["tokens"].shape[1] == _expected_tokens(name)


@pytest.mark.parametrize("name", list_encoders("image"))
def test_group_norm_by_default_batch_norm_only_when_asked(name: str) -> None:
    def count_bn(model: nn.Module) -> int:
        return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())

    assert count_bn(create_encoder(name, **_kwargs(name))) == 0
    assert (
        sum(isinstance(m, nn.GroupNorm) for m in create_encoder(name, **_kwargs(name)).modules())
        > 0
    )
    assert count_bn(create_encoder(name, norm="batch", **_kwargs(name))) > 0


def test_instance_norm_builds_for_3d_resnet() -> None:
    # MONAI's own ResNet cannot build with norm="instance" (non-affine init crash); ours swaps it in.
    model = create_encoder("resnet3d_10", norm="instance")
    assert sum(isinstance(m, nn.InstanceNorm3d) for m in model.modules()) > 0
    assert not any(isinstance(m, nn.BatchNorm3d) for m in model.modules())


# --------------------------------------------------------------------------- 3D ResNet


@pytest.mark.parametrize("grid", [1, 2, 3])
def test_resnet3d_token_count_is_grid_cubed(grid: int) -> None:
    model = create_encoder("resnet3d_10", token_grid=grid).eval()
    x = torch.randn(1, 1, 24, 24, 24)
    assert model.forward_features(x)["tokens"].shape == (1, grid**3, 512)
    assert model.forward_feature_map(x).shape == (1, 512, 1, 1, 1)  # stride-2 stem: 24 / 32 -> 1


def test_resnet3d_pooled_equals_mean_of_feature_map() -> None:
    model = create_encoder("resnet3d_10").eval()
    x = torch.randn(2, 1, 24, 24, 24)
    torch.testing.assert_close(model(x), model.forward_feature_map(x).mean(dim=(2, 3, 4)))


def test_multiscale_pool_widths_and_its_parts() -> None:
    model = create_encoder("resnet3d_10", widen_factor=0.25, pool="multiscale").eval()
    assert model.num_features == 2 * (64 + 128)  # avg + max of layer3 (64) and layer4 (128)
    x = torch.randn(2, 1, 48, 48, 48)
    with torch.no_grad():
        maps = model.forward_feature_maps(x)
        embedding = model(x)
    layer4, layer3 = maps["layer4"], maps["layer3"]
    torch.testing.assert_close(embedding[:, :128], layer4.mean(dim=(2, 3, 4)))
    torch.testing.assert_close(embedding[:, 128:256], layer4.amax(dim=(2, 3, 4)))
    torch.testing.assert_close(embedding[:, 256:320], layer3.mean(dim=(2, 3, 4)))
    torch.testing.assert_close(embedding[:, 320:], layer3.amax(dim=(2, 3, 4)))
    with pytest.raises(ConfigError, match=r"pool 'max'.*'avg', 'multiscale'"):
        create_encoder("resnet3d_10", pool="max")
    with pytest.raises(ConfigError, match="did you mean 'multiscale'"):
        create_encoder("resnet3d_10", pool="multiscal")


def test_stages_pool_is_every_stage_mean_and_sd_with_finite_gradients_at_one_voxel() -> None:
    model = create_encoder("resnet3d_10", widen_factor=0.25, pool="stages").eval()
    widths = [16, 16, 32, 64, 128]  # stem, layer1 ... layer4 at a quarter width
    assert model.num_features == 2 * sum(widths)
    x = torch.randn(2, 1, 32, 32, 32, requires_grad=True)  # layer4 is one voxel at 32³ (stride 32)
    maps = model.forward_feature_maps(x)
    embedding = model(x)
    start = 0
    for name, width in zip(("stem", "layer1", "layer2", "layer3", "layer4"), widths, strict=True):
        m = maps[name].flatten(2)  # (B, F, voxels)
        torch.testing.assert_close(embedding[:, start:start + width], m.mean(dim=2))
        torch.testing.assert_close(embedding[:, start + width:start + 2 * width], m.std(dim=2, correction=0),
                                   atol=1e-3, rtol=1e-4)  # the sd carries a 1e-6 floor inside its root
        start += 2 * width
    assert maps["layer4"].shape[2:] == (1, 1, 1)
    embedding.sum().backward()
    assert torch.isfinite(x.grad).all()  # sd of a one-voxel map: no NaN gradient
    assert model.forward_features(x)["tokens"].shape == (2, 8, model.num_features)


def test_multiscale_pool_keeps_a_small_bright_cluster_that_averaging_dilutes() -> None:
    """One bright 2³ cluster in a 64³ volume moves the multiscale embedding more (relative to its
    norm) than the average-pooled one, the same backbone under both. (At 32³ the last stage is a
    single voxel whose average dilutes nothing: there the two move alike.)"""
    torch.manual_seed(0)
    avg = create_encoder("resnet3d_10", in_channels=2, widen_factor=0.5).eval()
    multi = create_encoder("resnet3d_10", in_channels=2, widen_factor=0.5, pool="multiscale").eval()
    multi.backbone.load_state_dict(avg.backbone.state_dict())
    g = torch.Generator().manual_seed(1)
    base = 0.3 * torch.randn(3, 2, 64, 64, 64, generator=g)
    lesion = base.clone()
    for b, (i, j, k) in enumerate([(26, 28, 30), (36, 25, 33), (31, 38, 24)]):
        lesion[b, 0, i:i + 2, j:j + 2, k:k + 2] += 4.0  # a FLAIR-bright white-matter lesion
    with torch.no_grad():
        def change(model: nn.Module) -> torch.Tensor:
            before, after = model(base), model(lesion)
            return (after - before).norm(dim=1) / before.norm(dim=1)

        assert (change(multi) > 1.2 * change(avg)).all(), (change(multi), change(avg))


# --------------------------------------------------------------------------- slice encoder


def test_slice_features_change_only_in_the_edited_slice() -> None:
    model = create_encoder("slice_lstm_resnet10t", in_channels=2, lstm_hidden=16).eval()
    x = torch.randn(IMAGE_SHAPE)
    edited = x.clone()
    edited[1, :, :, :, 5] += 1.0  # subject 1, slice 5
    with torch.no_grad():
        before, after = model.forward_features(x), model.forward_features(edited)
    changed = (before["slice_features"] - after["slice_features"]).abs().amax(
        dim=-1
    ) > 1e-6  # (B, S)
    expected = torch.zeros_like(changed)
    expected[1, 5] = True
    assert torch.equal(changed, expected)
    assert before["slice_features"].shape == (2, 8, 512)
    # The bidirectional LSTM spreads the edit to every token of subject 1, none of subject 0.
    token_changed = (before["tokens"] - after["tokens"]).abs().amax(dim=-1) > 1e-6
    assert token_changed[1].all() and not token_changed[0].any()


def test_slice_chunk_and_masked_mean() -> None:
    torch.manual_seed(0)
    full = create_encoder("slice_lstm_resnet10t", in_channels=2, lstm_hidden=16).eval()
    chunked = create_encoder(
        "slice_lstm_resnet10t", in_channels=2, lstm_hidden=16, slice_chunk=3
    ).eval()
    chunked.load_state_dict(full.state_dict())
    x = torch.randn(IMAGE_SHAPE)
    with torch.no_grad():
        out = full.forward_features(x)
        torch.testing.assert_close(chunked.forward_features(x)["tokens"], out["tokens"])
        torch.testing.assert_close(full(x), out["embedding"])


# --------------------------------------------------------------------------- tabular


def test_missing_flag_changes_output_and_hides_the_value() -> None:
    torch.manual_seed(0)
    model = create_encoder("ft_transformer", **TAB_KWARGS).eval()
    table = _table()
    table["missing"][:] = False
    flagged = {k: v.clone() for k, v in table.items()}
    flagged["missing"][:, 1] = True  # same value, now flagged missing
    with torch.no_grad():
        assert not torch.allclose(model(table), model(flagged))
        other_value = {k: v.clone() for k, v in flagged.items()}
        other_value["continuous"][:, 1] = 123.0
        torch.testing.assert_close(model(other_value), model(flagged), rtol=0, atol=0)
        torch.testing.assert_close(
            model.forward_features(other_value)["tokens"], model.forward_features(flagged)["tokens"], rtol=0, atol=0
        )


@pytest.mark.parametrize("name", list_encoders("table"))
@pytest.mark.parametrize(("n_cont", "sizes"), [(0, (3, 4)), (3, ())])
def test_tabular_without_continuous_or_categorical(
    name: str, n_cont: int, sizes: tuple[int, ...]
) -> None:
    heads = 2 if name == "ft_transformer" else None  # None is dropped by create_encoder
    model = create_encoder(
        name, num_continuous=n_cont, category_sizes=list(sizes), dim=16, depth=1, heads=heads
    )
    table = _table(n_cont=n_cont, sizes=sizes)
    out = model(table)
    assert out.shape == (4, 16) and torch.isfinite(out).all()
    if name == "ft_transformer":
        assert model.forward_features(table)["tokens"].shape == (4, n_cont + len(sizes), 16)


def test_tabular_mlp_has_no_tokens() -> None:
    model = create_encoder("tabular_mlp", num_continuous=3, category_sizes=[3, 4])
    assert set(model.forward_features(_table())) == {"embedding"}


def test_tabular_shape_mismatch_is_a_clear_error() -> None:
    model = create_encoder("ft_transformer", **TAB_KWARGS)
    with pytest.raises(ConfigError, match="preprocessor that made them"):
        model(_table(n_cont=2))


# --------------------------------------------------------------------------- registry


def test_registry_lists_by_kind() -> None:
    images = {"resnet3d_10", "resnet3d_50", "slice_lstm_resnet18", "slice_lstm_resnet10t"}
    assert set(list_encoders("image")) >= images
    assert list_encoders("table") == ["ft_transformer", "tabular_mlp"]
    assert list_encoders() == sorted(ENCODERS)
    with pytest.raises(ConfigError, match="no encoder is registered for modality 'text'"):
        list_encoders("text")


def test_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match=r"did you mean 'resnet3d_18'.*resnet3d_10"):
        create_encoder("resnet3d18")


def test_bad_argument_names_encoder_and_argument() -> None:
    with pytest.raises(ConfigError, match=r"resnet3d_10.*lstm_hidden"):
        create_encoder("resnet3d_10", lstm_hidden=8)
    with pytest.raises(ConfigError, match=r"norm 'grup'.*'group'"):
        create_encoder("slice_lstm_resnet18", norm="grup")


def test_none_kwargs_are_dropped() -> None:
    model = create_encoder("resnet3d_10", in_channels=None, token_grid=None)
    assert model.backbone.conv1.in_channels == 1 and model.token_grid == 2


def test_duplicate_registration_is_rejected() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_encoder("resnet3d_10")(lambda: nn.Identity())
    assert ENCODERS["resnet3d_10"].__name__ == "resnet3d_10"


# --------------------------------------------------------------------------- weights


@pytest.mark.parametrize(
    "name", ["resnet3d_10", "slice_lstm_resnet10t", "ft_transformer", "tabular_mlp"]
)
def test_weights_round_trip(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_encoder(name, **_kwargs(name)).eval()
    path = tmp_path / "encoder.safetensors"
    save_weights(model.state_dict(), path)
    torch.manual_seed(1)  # a different random init, so equality comes from the file
    loaded = create_encoder(name, weights=path, **_kwargs(name)).eval()
    x = _input(name)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_mismatched_weights_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "r10.safetensors"
    save_weights(create_encoder("resnet3d_10").state_dict(), path)
    with pytest.raises(StrokeSSLError, match="missing"):  # different keys
        create_encoder("resnet3d_18", weights=path)
    with pytest.raises(StrokeSSLError, match="does not fit"):  # same keys, different shapes
        create_encoder("resnet3d_10", weights=path, in_channels=2)


# --------------------------------------------------------------------------- backbone weights
def test_backbone_weights_from_an_rgb_timm_checkpoint(tmp_path):
    import timm

    from multimodal.encoders import adapt_input_channels

    rgb = timm.create_model("resnet10t", pretrained=False, num_classes=7)  # classifier + BatchNorm stats
    save_weights(rgb.state_dict(), tmp_path / "imagenet.safetensors")
    encoder = create_encoder("slice_lstm_resnet10t", in_channels=2, lstm_hidden=8,
                             backbone_weights=tmp_path / "imagenet.safetensors")
    stem = next(k for k in rgb.state_dict() if k.endswith(".weight") and rgb.state_dict()[k].dim() == 4)
    expected = adapt_input_channels(rgb.state_dict()[stem], 2)
    assert torch.allclose(encoder.backbone.state_dict()[stem], expected)
    deep = "layer4.0.conv2.weight"
    assert torch.equal(encoder.backbone.state_dict()[deep], rgb.state_dict()[deep])


def test_adapt_input_channels_keeps_the_response_to_a_constant_image():
    from multimodal.encoders import adapt_input_channels

    weight = torch.randn(4, 3, 3, 3)
    for channels in (1, 2, 5):
        adapted = adapt_input_channels(weight, channels)
        assert adapted.shape == (4, channels, 3, 3)
        assert torch.allclose(adapted.sum(dim=(1, 2, 3)), weight.sum(dim=(1, 2, 3)), atol=1e-5)


def test_unrelated_backbone_weights_are_an_error(tmp_path):
    save_weights({"foo.bar": torch.zeros(3)}, tmp_path / "other.safetensors")
    with pytest.raises(StrokeSSLError, match="match none"):
        create_encoder("resnet3d_10", backbone_weights=tmp_path / "other.safetensors")
