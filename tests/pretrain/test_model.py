"""PretrainModel: shapes, normalisation, temperature clamp, fusion, branches, gradients, builder."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from multimodal.config import ModelConfig
from multimodal.config_mapping import from_dict
from multimodal.encoders import create_encoder
from multimodal.errors import ConfigError
from pretrain.config import PretrainConfig
from pretrain.fusion import MatchingFusion
from pretrain.model import (
    PretrainModel,
    build_pretrain_model,
    encoder_state_dicts,
    pretrain_modalities,
)

B = 2
IMAGE_SHAPE = (B, 2, 16, 16, 16)  # (B, C, H, W, D): two sequences
N_CONT, SIZES = 3, [3, 4]  # sizes count bucket 0 (missing)
SMALL = {
    "projection_dim": 16,
    "projection_hidden": 32,
    "fusion_dim": 16,
    "fusion_depth": 1,
    "fusion_heads": 2,
}
TAB_ARGS = {"dim": 16, "depth": 1, "heads": 2}


def _image() -> torch.Tensor:
    return torch.randn(IMAGE_SHAPE, generator=torch.Generator().manual_seed(0))


def _table(batch: int = B) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    missing = torch.zeros(batch, N_CONT + len(SIZES), dtype=torch.bool)
    missing[0, 1] = True
    cat = torch.stack([torch.randint(0, s, (batch,), generator=g) for s in SIZES], dim=1)
    return {
        "continuous": torch.randn(batch, N_CONT, generator=g),
        "categorical": cat,
        "missing": missing,
    }


def _pm(image: nn.Module | None, table: nn.Module | None, **kwargs) -> PretrainModel:
    return PretrainModel({"image": image, "table": table}, **kwargs)


def _build(model_config: ModelConfig, pretrain: PretrainConfig, channels: int = 2, n_cont: int = N_CONT,
           sizes: list[int] = SIZES) -> PretrainModel:
    data = {"image": {"in_channels": channels}, "table": {"num_continuous": n_cont, "category_sizes": sizes}}
    return build_pretrain_model(model_config, pretrain,
                                {m: data[m] for m in pretrain_modalities(model_config, pretrain)})


def _encoders(
    image: str = "resnet3d_10", table: str = "ft_transformer"
) -> tuple[nn.Module, nn.Module]:
    image_args = {"in_channels": 2}
    if image.startswith("slice_lstm"):
        image_args["lstm_hidden"] = 8
    table_args = dict(TAB_ARGS) if table == "ft_transformer" else {"dim": 16, "depth": 1}
    return (
        create_encoder(image, **image_args),
        create_encoder(table, num_continuous=N_CONT, category_sizes=SIZES, **table_args),
    )


@pytest.fixture(scope="module")
def model() -> PretrainModel:
    torch.manual_seed(0)
    return _pm(*_encoders(), reconstruction=(N_CONT, SIZES), **SMALL)


def test_forward_shapes_and_normalisation(model: PretrainModel) -> None:
    out = model(image=_image(), table=_table())
    assert set(out) == {
        "image_features",
        "table_features",
        "logit_scale",
        "image_tokens",
        "table_tokens",
    }
    for key in ("image_features", "table_features"):
        assert out[key].shape == (B, 16)
        torch.testing.assert_close(out[key].norm(dim=-1), torch.ones(B))
    assert out["image_tokens"].shape == (B, 8, 16)  # 2x2x2 pooled 3D tokens
    assert out["table_tokens"].shape == (B, N_CONT + len(SIZES), 16)
    assert out["logit_scale"].shape == ()
    torch.testing.assert_close(out["logit_scale"], torch.tensor(1 / 0.07))
    model.eval()
    with torch.no_grad():  # the same projections as encode_* (one pass gives both)
        out = model(image=_image(), table=_table())
        torch.testing.assert_close(model.encode_image(_image()), out["image_features"])
        torch.testing.assert_close(model.encode_table(_table()), out["table_features"])
    model.train()


def test_forward_runs_each_encoder_once(
    model: PretrainModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"image": 0, "table": 0}
    for name, encoder in (("image", model.image_encoder), ("table", model.table_encoder)):
        original = encoder.forward_features

        def counted(x, _original=original, _name=name):
            calls[_name] += 1
            return _original(x)

        monkeypatch.setattr(encoder, "forward_features", counted)
    model(image=_image(), table=_table())
    assert calls == {"image": 1, "table": 1}


@pytest.mark.parametrize("value", [-50.0, 0.0, 3.0, 4.7, 50.0])
def test_logit_scale_is_clamped_to_1_100(model: PretrainModel, value: float) -> None:
    with torch.no_grad():
        model.log_logit_scale.fill_(value)
    scale = model.logit_scale
    assert 1.0 <= scale.item() <= 100.0 + 1e-4
    expected = math.exp(min(max(value, 0.0), math.log(100.0)))
    assert scale.item() == pytest.approx(expected, rel=1e-5)
    with torch.no_grad():
        model.log_logit_scale.fill_(math.log(1 / 0.07))


def test_logit_scale_gets_a_gradient_inside_the_range(model: PretrainModel) -> None:
    model.zero_grad()
    model.logit_scale.backward()
    torch.testing.assert_close(model.log_logit_scale.grad, model.logit_scale.detach())  # d e^x / dx
    model.zero_grad()
    with torch.no_grad():
        model.log_logit_scale.fill_(10.0)
    model.logit_scale.backward()
    assert model.log_logit_scale.grad.item() == 0.0  # clamped: the optimiser cannot push it further
    with torch.no_grad():
        model.log_logit_scale.fill_(math.log(1 / 0.07))
    model.zero_grad()


def test_match_logits_and_reconstruct_shapes(model: PretrainModel) -> None:
    out = model(image=_image(), table=_table())
    # 3 rows per sample, as ITM stacks one positive and two negatives
    table_tokens = out["table_tokens"].repeat(3, 1, 1)
    image_tokens = out["image_tokens"].repeat(3, 1, 1)
    assert model.match_logits(table_tokens, image_tokens).shape == (3 * B, 2)
    continuous, logits = model.reconstruct(out["table_tokens"], out["image_tokens"])
    assert continuous.shape == (B, N_CONT)
    assert [t.shape for t in logits] == [(B, s) for s in SIZES]


def test_masked_table_tokens_come_from_the_masked_input(model: PretrainModel) -> None:
    model.eval()
    table = _table()
    masked = {k: v.clone() for k, v in table.items()}
    masked["missing"][:, 0] = True
    with torch.no_grad():
        out = model(image=_image(), table=table, masked_table=masked)
        assert out["masked_table_tokens"].shape == out["table_tokens"].shape
        assert not torch.allclose(out["masked_table_tokens"], out["table_tokens"])
        torch.testing.assert_close(out["masked_table_tokens"], model(table=masked)["table_tokens"])
    model.train()


def test_every_parameter_gets_a_gradient(model: PretrainModel) -> None:
    model.zero_grad()
    table = _table()
    masked = {k: v.clone() for k, v in table.items()}
    masked["missing"][:, 0] = True
    out = model(image=_image(), table=table, masked_table=masked)
    loss = (out["image_features"] * out["table_features"]).sum() * out["logit_scale"]
    loss = loss + model.match_logits(out["table_tokens"], out["image_tokens"]).square().mean()
    continuous, logits = model.reconstruct(out["masked_table_tokens"], out["image_tokens"])
    loss = loss + continuous.square().mean() + sum(t.square().mean() for t in logits)
    loss.backward()
    missing = [
        n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
    ]
    assert not missing, f"parameters without gradient: {missing}"
    model.zero_grad()


def test_forward_and_match_alone_reach_every_parameter_without_reconstruction() -> None:
    torch.manual_seed(0)
    model = _pm(*_encoders("slice_lstm_resnet10t"), **SMALL)
    out = model(image=_image(), table=_table())
    assert out["image_tokens"].shape == (B, 16, 16)  # one token per slice (last axis)
    loss = (out["image_features"] * out["table_features"]).sum() * out["logit_scale"]
    loss = loss + model.match_logits(out["table_tokens"], out["image_tokens"]).square().mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"


def test_no_batchnorm_anywhere_by_default(model: PretrainModel) -> None:
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_fusion_with_tabular_mlp_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="ft_transformer"):
        _pm(*_encoders(table="tabular_mlp"), **SMALL)
    # without fusion the MLP is a fine CLIP tower
    model = _pm(*_encoders(table="tabular_mlp"), fusion=False, **SMALL)
    assert set(model(image=_image(), table=_table())) == {
        "image_features",
        "table_features",
        "logit_scale",
    }


def test_fusion_dim_must_divide_heads() -> None:
    with pytest.raises(ConfigError, match="fusion_heads"):
        MatchingFusion(dim=10, depth=1, heads=4)


def test_single_branch_models_have_only_their_branch() -> None:
    image_encoder, table_encoder = _encoders()
    small = {k: v for k, v in SMALL.items() if not k.startswith("fusion")}
    simclr = _pm(image_encoder, None, fusion=False, **small)
    assert (
        simclr.table_encoder is None and simclr.table_projection is None and simclr.fusion is None
    )
    assert set(simclr(image=_image())) == {"image_features"}
    assert set(encoder_state_dicts(simclr)) == {"image_encoder"}
    with pytest.raises(ValueError, match="no tabular encoder"):
        simclr(table=_table())
    scarf = _pm(None, table_encoder, fusion=False, **small)
    assert scarf.image_encoder is None and scarf.image_projection is None
    assert set(scarf(table=_table())) == {"table_features"}
    assert not any(n.startswith("image") for n, _ in scarf.named_parameters())
    with pytest.raises(ValueError, match="fusion=False"):
        _pm(image_encoder, None, **small)


def test_encoder_state_dicts_are_the_trunks(model: PretrainModel) -> None:
    states = encoder_state_dicts(model)
    assert set(states) == {"image_encoder", "table_encoder"}
    assert states["image_encoder"].keys() == model.image_encoder.state_dict().keys()
    fresh = create_encoder(
        "ft_transformer", num_continuous=N_CONT, category_sizes=SIZES, **TAB_ARGS
    )
    fresh.load_state_dict(states["table_encoder"])  # strict: exactly what fine-tuning loads


@pytest.mark.parametrize("image_encoder", ["resnet3d_10", "slice_lstm_resnet10t"])
def test_build_from_configs(image_encoder: str) -> None:
    image_args = {"lstm_hidden": 8} if image_encoder.startswith("slice") else {}
    model_config = from_dict(ModelConfig, dict(image_encoder=image_encoder, image_encoder_args=image_args, tabular_encoder_args=TAB_ARGS))
    pretrain = PretrainConfig(objectives={"clip": 1.0, "itm": 1.0, "masked_tabular": 0.5}, **SMALL)
    model = _build(model_config, pretrain, 2, N_CONT, SIZES)
    assert model.image_encoder.num_features == (16 if image_encoder.startswith("slice") else 512)
    assert model.fusion is not None and model.fusion.match_head is not None
    assert model.reconstruction_head is not None
    out = model(image=_image(), table=_table())
    assert out["image_features"].shape == out["table_features"].shape == (B, 16)
    assert model.match_logits(out["table_tokens"], out["image_tokens"]).shape == (B, 2)

    clip_only = _build(
        model_config, PretrainConfig(objectives={"clip": 1.0}, **SMALL), 2, N_CONT, SIZES
    )
    assert clip_only.fusion is None and clip_only.reconstruction_head is None
    simclr = _build(
        model_config, PretrainConfig(objectives={"simclr": 1.0}), 2, N_CONT, SIZES
    )
    assert simclr.table_encoder is None and simclr.image_encoder is not None
    scarf = _build(
        model_config, PretrainConfig(objectives={"scarf": 1.0}), 2, N_CONT, SIZES
    )
    assert scarf.image_encoder is None and scarf.table_encoder is not None


def test_build_refuses_mlp_with_itm_and_data_arguments_in_config() -> None:
    pretrain = PretrainConfig(**SMALL, objectives={"clip": 1.0, "itm": 1.0})
    with pytest.raises(ConfigError, match="ft_transformer"):
        _build(
            from_dict(ModelConfig, dict(image_encoder="resnet3d_10", tabular_encoder="tabular_mlp")),
            pretrain,
            2,
            N_CONT,
            SIZES,
        )
    with pytest.raises(ConfigError, match="in_channels"):
        _build(
            from_dict(ModelConfig, dict(image_encoder="resnet3d_10", image_encoder_args={"in_channels": 3})),
            pretrain,
            2,
            N_CONT,
            SIZES,
        )
    with pytest.raises(ConfigError, match="not an image encoder"):
        _build(
            from_dict(ModelConfig, dict(image_encoder="ft_transformer")), pretrain, 2, N_CONT, SIZES
        )


def test_image_ssl_encodes_two_views_in_one_pass() -> None:
    image_encoder, table_encoder = _encoders()
    model = _pm(image_encoder, table_encoder, image_ssl=True, **SMALL).eval()
    first, second = _image(), torch.flip(_image(), dims=[-1])
    out = model(image=torch.stack([first, second], dim=1), table=_table())
    assert out["image_view_features"].shape == (2 * B, SMALL["projection_dim"])
    # the first view is the one that meets the table, through the CLIP head (not the SimCLR head)
    torch.testing.assert_close(out["image_features"], model.encode_image(first), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(out["image_view_features"][:B], out["image_features"])
    with pytest.raises(ValueError, match="both encoders"):
        _pm(image_encoder, None, fusion=False, image_ssl=True, **SMALL)
