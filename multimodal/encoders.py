"""Encoders by name: 3D ResNet, 2D ResNet per slice + LSTM, FT-Transformer / MLP for tables.

Every encoder exposes ``num_features`` (D), ``forward_tokens(x) -> (B, T, D)`` and
``forward(x) -> (B, D)`` (DESIGN.md §6), so pretraining and fusion treat them alike.
``forward_features(x) -> {"embedding": (B, D), "tokens": (B, T, D), ...}`` gives both from one
backbone pass (contrastive + matching training needs both; two passes of a 3D ResNet would double
the cost); ``forward`` and ``forward_tokens`` are views of it. The MLP tabular encoder has no
tokens, so its dict holds ``embedding`` only. A config
names one (``image_encoder: resnet3d_10``); ``create_encoder`` builds it, optionally loading
local weights (timm ``register_model`` / ``create_model`` style). Nothing is ever downloaded.
"""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import torch
from monai.networks import nets as monai_nets
from monai.networks.layers.utils import get_norm_layer
from timm.layers import GroupNorm
from torch import nn

from multimodal.checkpoint import load_into, load_weights
from multimodal.errors import ConfigError, StrokeSSLError
from multimodal.registry import Registry

logger = logging.getLogger(__name__)

EntryFn = Callable[..., nn.Module]
ENCODERS = Registry("encoder")
_KINDS: dict[str, str] = {}  # encoder name -> "image" | "tabular"
ENCODER_KINDS = ("image", "tabular")
NORMS = ("group", "batch", "instance")
_MAX_GROUPS = 16  # GroupNorm groups: the largest divisor of the channel count up to 16


# --------------------------------------------------------------------------- registry


def register_encoder(name: str, kind: str = "image") -> Callable[[EntryFn], EntryFn]:
    """Decorator storing an entry function under ``name``; a duplicate name is a ``ValueError``."""
    if kind not in ENCODER_KINDS:
        raise ValueError(f"encoder kind {kind!r} is not one of {ENCODER_KINDS}")

    def decorate(entry: EntryFn) -> EntryFn:
        ENCODERS.register(name)(entry)
        _KINDS[name] = kind
        return entry

    return decorate


def list_encoders(kind: str | None = None) -> list[str]:
    """Sorted registered names, optionally only those of ``kind`` ("image" or "tabular")."""
    if kind is not None and kind not in ENCODER_KINDS:
        raise ConfigError(f"encoder kind {kind!r} is not one of {ENCODER_KINDS}")
    return sorted(name for name in ENCODERS if kind is None or _KINDS[name] == kind)


def create_encoder(name: str, weights: str | Path | None = None, **kwargs: Any) -> nn.Module:
    """Build the encoder registered as ``name``; ``None`` kwargs are dropped (config defaults).

    ``weights`` is a local ``.safetensors`` / tensors-only ``.pt`` file loaded strictly.
    Raises ``ConfigError`` for an unknown name or argument, ``StrokeSSLError`` for weights that
    do not fit.
    """
    entry = ENCODERS.lookup(name)
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    try:
        model = entry(**kwargs)
    except TypeError as err:
        # Only a bad or missing keyword is the user's; another TypeError inside a model is a bug.
        if "argument" not in str(err):
            raise
        raise ConfigError(
            f"encoder {name!r} does not accept these arguments ({err}); given {sorted(kwargs)}"
        ) from err
    if weights is not None:
        try:
            load_into(model, weights)
        except RuntimeError as err:  # load_state_dict's answer to a tensor shape mismatch
            raise StrokeSSLError(
                f"weights file {weights} does not fit encoder {name!r} with {kwargs}: {err}; "
                "use the name and arguments the weights were trained with"
            ) from err
    return model


def build_image_encoder(model_config: Any, in_channels: int) -> nn.Module:
    """The image encoder ``model.image_encoder`` names, for ``in_channels`` MRI sequences, with
    ``model.image_encoder_args`` and local ``model.image_weights`` (a ``ModelConfig``)."""
    return _from_config("image", model_config.image_encoder, model_config.image_encoder_args,
                        model_config.image_weights, {"in_channels": in_channels})


def build_tabular_encoder(model_config: Any, num_continuous: int, category_sizes: list[int]) -> nn.Module:
    """The tabular encoder ``model.tabular_encoder`` names, sized by a fitted preprocessor."""
    return _from_config("tabular", model_config.tabular_encoder, model_config.tabular_encoder_args,
                        model_config.tabular_weights,
                        {"num_continuous": num_continuous, "category_sizes": list(category_sizes)})


def _from_config(kind: str, name: str, args: dict[str, Any], weights: str | Path | None,
                 from_data: dict[str, Any]) -> nn.Module:
    key = "image_encoder" if kind == "image" else "tabular_encoder"
    if name not in list_encoders(kind):
        article = "an" if kind == "image" else "a"
        raise ConfigError(f"model.{key} {name!r} is not {article} {kind} encoder; choose one of {list_encoders(kind)}")
    clash = sorted(set(args) & set(from_data))
    if clash:
        raise ConfigError(
            f"model.{key}_args sets {clash}, which come from the data (imaging sequences / "
            "preprocessor); remove them"
        )
    return create_encoder(name, weights=weights, **from_data, **args)


def _check_norm(norm: str) -> None:
    if norm not in NORMS:
        close = difflib.get_close_matches(norm, NORMS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"norm {norm!r} is not one of {NORMS}{hint}")


def _num_groups(channels: int) -> int:
    return math.gcd(channels, _MAX_GROUPS)


# --------------------------------------------------------------------------- backbone weights


def adapt_input_channels(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """First-conv weight ``(O, I, *k)`` for ``channels`` inputs: the sum over the I input
    channels shared equally, so a uniform image gives the same response. MRI sequences have
    nothing to do with RGB channels, so no colour-specific filter is worth keeping."""
    shared = weight.sum(dim=1, keepdim=True) / channels
    return shared.repeat(1, channels, *([1] * (weight.dim() - 2)))


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> None:
    """Load a local ImageNet (timm) or MedicalNet (MONAI) checkpoint into ``backbone``.

    Classifier and BatchNorm running-statistics keys the backbone lacks are skipped, and the
    first convolution is adapted to the backbone's input channels (one per MRI sequence).
    A file that matches no tensor is a ``StrokeSSLError``.
    """
    own = backbone.state_dict()
    # The input convolution is the first conv kernel (timm's deep stems name it conv1.0).
    input_conv = next(k for k, v in own.items() if k.endswith("weight") and v.dim() >= 4)
    usable = {}
    for key, value in load_weights(path).items():
        if key not in own:
            continue
        target = own[key]
        if key == input_conv and value.dim() == target.dim() and value.shape[1] != target.shape[1]:
            value = adapt_input_channels(value, target.shape[1])
        if value.shape == target.shape:
            usable[key] = value
    if not usable:
        raise StrokeSSLError(
            f"backbone weights {path} match none of {type(backbone).__name__}'s tensors; "
            "check they are for this architecture (e.g. timm resnet18 for slice_lstm_resnet18, "
            "MedicalNet ResNet-10 for resnet3d_10)"
        )
    backbone.load_state_dict(usable, strict=False)
    logger.info("loaded %d of %d backbone tensors from %s", len(usable), len(own), path)


# --------------------------------------------------------------------------- 3D ResNet


_MONAI_RESNETS: dict[int, Callable[..., nn.Module]] = {
    10: monai_nets.resnet10,
    18: monai_nets.resnet18,
    34: monai_nets.resnet34,
    50: monai_nets.resnet50,
}


def _replace_batchnorm3d(module: nn.Module, norm: str) -> None:
    """Swap every ``BatchNorm3d`` below ``module`` for ``norm`` with the same channel count.

    MONAI 1.6's ResNet passes ``norm`` to the stem only (the residual blocks keep BatchNorm) and
    crashes on non-affine norms (Project-MONAI/MONAI PR #9028), so we build with BatchNorm and swap.
    """
    for child_name, child in module.named_children():
        if isinstance(child, nn.BatchNorm3d):
            channels = child.num_features
            spec = ("group", {"num_groups": _num_groups(channels)})
            if norm == "instance":
                spec = ("instance", {"affine": True})
            setattr(module, child_name, get_norm_layer(spec, spatial_dims=3, channels=channels))
        else:
            _replace_batchnorm3d(child, norm)


class ImageEncoder3D(nn.Module):
    """MONAI 3D ResNet over a whole volume.

    Input ``(B, C, H, W, D)``. The last feature map ``(B, F, h, w, d)`` (h = H / 32 with the
    stride-2 stem) gives ``forward_tokens -> (B, token_grid**3, F)`` (average-pooled to a
    ``token_grid``³ grid plus learned positions, so attention has more than one vector to look at)
    and ``forward -> (B, F)`` (global average). F = 512 for depth 10/18/34, 2048 for 50.
    """

    def __init__(
        self,
        depth: int = 18,
        in_channels: int = 1,
        norm: str = "group",
        stem_stride: int = 2,
        token_grid: int = 2,
        backbone_weights: str | Path | None = None,
        widen_factor: float = 1.0,
    ) -> None:
        super().__init__()
        if depth not in _MONAI_RESNETS:
            raise ConfigError(f"3D ResNet depth {depth} is not one of {sorted(_MONAI_RESNETS)}")
        _check_norm(norm)
        if token_grid < 1 or stem_stride < 1:
            raise ConfigError(
                f"token_grid ({token_grid}), stem_stride ({stem_stride}) must be >= 1"
            )
        # MONAI's default stem stride is 1; stride 2 (the usual ResNet stem) measured ~13x faster.
        self.backbone = _MONAI_RESNETS[depth](
            spatial_dims=3,
            n_input_channels=in_channels,
            feed_forward=False,
            conv1_t_stride=stem_stride,
            # < 1 narrows every stage (0.25: 16..128 channels, ~1/16 of the FLOPs) for CPU-sized runs.
            widen_factor=widen_factor,
        )  # built with MONAI's BatchNorm, swapped below (see _replace_batchnorm3d)
        if norm != "batch":
            _replace_batchnorm3d(self.backbone, norm)
        if backbone_weights is not None:  # e.g. MedicalNet weights from a local file
            load_backbone_weights(self.backbone, backbone_weights)
        self.num_features: int = self.backbone.in_planes  # MONAI leaves the last layer's width here
        self.token_grid = token_grid
        self.token_pool = nn.AdaptiveAvgPool3d(token_grid)
        self.pos_embed = nn.Parameter(torch.zeros(1, token_grid**3, self.num_features))
        # Small, so positions do not swamp the image features at init.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward_feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W, D) -> (B, F, h, w, d)``, the last ResNet stage (for attribution)."""
        net = self.backbone
        x = net.act(net.bn1(net.conv1(x)))
        if not net.no_max_pool:
            x = net.maxpool(x)
        return net.layer4(net.layer3(net.layer2(net.layer1(x))))

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, C, H, W, D)`` -> dict ``embedding (B, F)`` (global average of the last feature
        map), ``tokens (B, token_grid**3, F)`` (its ``token_grid``³ average pool + positions)."""
        fmap = self.forward_feature_map(x)  # (B, F, h, w, d), the one backbone pass
        pooled = self.token_pool(fmap)  # (B, F, g, g, g)
        tokens = pooled.flatten(2).transpose(1, 2) + self.pos_embed
        return {"embedding": fmap.mean(dim=(2, 3, 4)), "tokens": tokens}

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W, D) -> (B, token_grid**3, F)``."""
        return self.forward_features(x)["tokens"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W, D) -> (B, F)``."""
        return self.forward_features(x)["embedding"]


# --------------------------------------------------------------------------- slices + LSTM


def _timm_norm_layer(norm: str) -> Callable[..., nn.Module]:
    if norm == "batch":
        return nn.BatchNorm2d

    def make(num_channels: int, **kwargs: Any) -> nn.Module:  # timm passes device/dtype kwargs
        if norm == "instance":
            return nn.InstanceNorm2d(num_channels, affine=True, **kwargs)
        return GroupNorm(num_channels, num_groups=_num_groups(num_channels), **kwargs)

    return make


class SliceSequenceEncoder(nn.Module):
    """A 2D timm ResNet shared over axial slices, then a bidirectional LSTM (the MISRP model).

    The slice axis is the last axis of MONAI's ``(B, C, H, W, S)`` (axial in RAS); channels are
    the MRI sequences. ``(B, C, H, W, S) -> (B*S, C, H, W) -> ResNet -> (B, S, F) -> LSTM ->
    (B, S, 2h) -> mean over slices -> (B, 2h)``; ``num_features = 2 * lstm_hidden``.
    ``slice_chunk`` runs the ResNet on that many slices at a time to bound memory.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        in_channels: int = 1,
        norm: str = "group",
        lstm_hidden: int = 256,
        lstm_layers: int = 1,
        slice_chunk: int | None = None,
        backbone_weights: str | Path | None = None,
    ) -> None:
        super().__init__()
        _check_norm(norm)
        if slice_chunk is not None and slice_chunk < 1:
            raise ConfigError(
                f"slice_chunk must be a positive slice count or None, got {slice_chunk}"
            )
        self.backbone = timm.create_model(
            backbone,
            pretrained=False,  # never download; create_encoder(weights=...) loads local files
            in_chans=in_channels,
            num_classes=0,
            global_pool="avg",
            norm_layer=_timm_norm_layer(norm),
        )
        if backbone_weights is not None:  # e.g. ImageNet weights of the timm ResNet, local file
            load_backbone_weights(self.backbone, backbone_weights)
        self.slice_chunk = slice_chunk
        feats = self.backbone.num_features
        self.lstm = nn.LSTM(feats, lstm_hidden, lstm_layers, batch_first=True, bidirectional=True)
        self.num_features: int = 2 * lstm_hidden

    def forward_slices(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W, S) -> (B, S, F)``: the shared 2D ResNet applied to each slice."""
        b, c, h, w, s = x.shape
        slices = x.permute(0, 4, 1, 2, 3).reshape(b * s, c, h, w)  # subject-major: row i*S + j
        chunk = self.slice_chunk or b * s
        feats = torch.cat([self.backbone(part) for part in slices.split(chunk)])  # (B*S, F)
        return feats.view(b, s, -1)

    def forward_features(
        self, x: torch.Tensor, slice_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """``(B, C, H, W, S)`` -> dict ``embedding (B, 2h)``, ``tokens (B, S, 2h)``,
        ``slice_features (B, S, F)``. ``slice_mask`` ``(B, S)`` bool, True for real slices,
        restricts the mean to them (the LSTM still reads every slice)."""
        slice_features = self.forward_slices(x)
        tokens, _ = self.lstm(slice_features)  # (B, S, 2h)
        if slice_mask is None:
            embedding = tokens.mean(dim=1)
        else:
            weights = slice_mask.to(tokens.dtype).unsqueeze(-1)  # (B, S, 1)
            embedding = (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
        return {"embedding": embedding, "tokens": tokens, "slice_features": slice_features}

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W, S) -> (B, S, 2h)``, one LSTM output per slice."""
        return self.forward_features(x)["tokens"]

    def forward(self, x: torch.Tensor, slice_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, C, H, W, S) -> (B, 2h)``."""
        return self.forward_features(x, slice_mask)["embedding"]


# --------------------------------------------------------------------------- tabular


def _check_features(num_continuous: int, category_sizes: list[int]) -> tuple[int, int]:
    """Validate the preprocessor's feature counts; returns ``(n_categorical, n_features)``."""
    if num_continuous + len(category_sizes) == 0:
        raise ConfigError("a tabular encoder needs at least one continuous or categorical feature")
    if num_continuous < 0 or any(size < 1 for size in category_sizes):
        raise ConfigError(
            f"num_continuous must be >= 0 ({num_continuous}) and each category size must count "
            f"the index-0 missing bucket, so >= 1 ({category_sizes})"
        )
    return len(category_sizes), num_continuous + len(category_sizes)


def _tabular_inputs(
    batch: dict[str, torch.Tensor], n_cont: int, n_cat: int
) -> tuple[torch.Tensor, ...]:
    """Check the preprocessor's dict against the feature counts -> (cont, cat, missing)."""
    missing = batch["missing"]
    b = missing.shape[0]
    cont = batch.get("continuous", missing.new_zeros((b, 0), dtype=torch.float32))
    cat = batch.get("categorical", missing.new_zeros((b, 0), dtype=torch.long))
    if cont.shape[1] != n_cont or cat.shape[1] != n_cat or missing.shape[1] != n_cont + n_cat:
        raise ConfigError(
            f"tabular encoder built for {n_cont} continuous + {n_cat} categorical features got "
            f"continuous {tuple(cont.shape)}, categorical {tuple(cat.shape)}, "
            f"missing {tuple(missing.shape)}; build the encoder from the preprocessor that made them"
        )
    return cont, cat, missing.bool()


class _CategoricalEmbedding(nn.Module):
    """One embedding table for all categorical features; feature j owns rows offsets[j]..+size_j."""

    def __init__(self, category_sizes: list[int], dim: int) -> None:
        super().__init__()
        offsets = torch.tensor([0, *category_sizes[:-1]], dtype=torch.long).cumsum(0)
        self.register_buffer("offsets", offsets[: len(category_sizes)], persistent=False)
        self.table = nn.Embedding(max(sum(category_sizes), 1), dim)

    def forward(self, cat: torch.Tensor) -> torch.Tensor:
        """``(B, n_cat) int64 -> (B, n_cat, dim)``."""
        return self.table(cat + self.offsets)


class TabularEncoder(nn.Module):
    """FT-Transformer (Gorishniy et al. 2021, "Revisiting Deep Learning Models for Tabular Data").

    Hand-written: none of our libraries (timm, MONAI, lightly) ships a tabular transformer.
    Input: the preprocessor's dict ``continuous (B, n_cont)``, ``categorical (B, n_cat)``,
    ``missing (B, n_cont + n_cat)`` (continuous first). Each feature becomes one token
    (continuous ``x_j * W_j + b_j``, categorical an embedding row); where ``missing`` is True the
    token is a learned per-feature MISSING token, so a missing value is never read as 0.
    ``forward_tokens -> (B, n_cont + n_cat, dim)``; ``forward -> (B, dim)``, the [CLS] output.
    """

    def __init__(
        self,
        num_continuous: int,
        category_sizes: list[int],
        dim: int = 64,
        depth: int = 3,
        heads: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.num_continuous = num_continuous
        self.num_categorical, n_features = _check_features(num_continuous, category_sizes)
        if dim % heads:
            raise ConfigError(f"tabular dim ({dim}) must be divisible by heads ({heads})")
        self.cont_weight = nn.Parameter(torch.empty(num_continuous, dim))
        self.cont_bias = nn.Parameter(torch.zeros(num_continuous, dim))
        self.cat_embed = _CategoricalEmbedding(list(category_sizes), dim)
        self.missing_token = nn.Parameter(torch.empty(n_features, dim))
        self.cls_token = nn.Parameter(torch.empty(1, 1, dim))
        for param in (self.cont_weight, self.missing_token, self.cls_token):
            nn.init.trunc_normal_(param, std=0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        # Nested tensors are a no-op with norm_first and only trigger a warning.
        self.transformer = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.num_features: int = dim

    def _encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``-> (B, 1 + n_features, dim)``: [CLS] then the feature tokens, after the final norm."""
        cont, cat, missing = _tabular_inputs(batch, self.num_continuous, self.num_categorical)
        cont_tokens = cont.unsqueeze(-1) * self.cont_weight + self.cont_bias  # (B, n_cont, dim)
        tokens = torch.cat([cont_tokens, self.cat_embed(cat)], dim=1)  # (B, n_features, dim)
        tokens = torch.where(missing.unsqueeze(-1), self.missing_token.to(tokens.dtype), tokens)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return self.norm(self.transformer(torch.cat([cls, tokens], dim=1)))

    def forward_features(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """-> dict ``embedding (B, dim)`` (the [CLS] output), ``tokens (B, n_cont + n_cat, dim)``
        (one per feature, continuous first, no [CLS]), from one transformer pass."""
        encoded = self._encode(batch)
        return {"embedding": encoded[:, 0], "tokens": encoded[:, 1:]}

    def forward_tokens(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``-> (B, n_cont + n_cat, dim)``, one token per feature (no [CLS])."""
        return self.forward_features(batch)["tokens"]

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``-> (B, dim)``, the [CLS] token."""
        return self.forward_features(batch)["embedding"]


class TabularMLP(nn.Module):
    """MLP baseline: ``concat(continuous, missing mask, categorical embeddings) -> depth x
    (Linear, LayerNorm, GELU, Dropout) -> (B, dim)``. No per-feature tokens."""

    def __init__(
        self,
        num_continuous: int,
        category_sizes: list[int],
        dim: int = 64,
        depth: int = 3,
        dropout: float = 0.1,
        category_dim: int = 8,
    ) -> None:
        super().__init__()
        self.num_continuous = num_continuous
        self.num_categorical, n_features = _check_features(num_continuous, category_sizes)
        self.cat_embed = _CategoricalEmbedding(list(category_sizes), category_dim)
        layers: list[nn.Module] = []
        width = num_continuous + n_features + self.num_categorical * category_dim
        for _ in range(depth):
            layers += [nn.Linear(width, dim), nn.LayerNorm(dim), nn.GELU(), nn.Dropout(dropout)]
            width = dim
        self.mlp = nn.Sequential(*layers)
        self.num_features: int = dim

    def forward_features(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """-> dict ``embedding (B, dim)`` only: an MLP has no per-feature tokens, so there is no
        ``tokens`` key (callers that need tokens, like matching fusion, need ``ft_transformer``)."""
        cont, cat, missing = _tabular_inputs(batch, self.num_continuous, self.num_categorical)
        cat_flat = self.cat_embed(cat).flatten(1)  # (B, n_cat * category_dim)
        return {"embedding": self.mlp(torch.cat([cont, missing.to(cont.dtype), cat_flat], dim=1))}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``-> (B, dim)``."""
        return self.forward_features(batch)["embedding"]

    def forward_tokens(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Always a ``ConfigError``: the MLP has no per-feature tokens."""
        raise ConfigError(
            "the MLP tabular encoder ('tabular_mlp') has no per-feature tokens; "
            "matching fusion needs tabular encoder 'ft_transformer'"
        )


# --------------------------------------------------------------------------- registered names


@register_encoder("resnet3d_10")
def resnet3d_10(**kwargs: Any) -> ImageEncoder3D:
    return ImageEncoder3D(depth=10, **kwargs)


@register_encoder("resnet3d_18")
def resnet3d_18(**kwargs: Any) -> ImageEncoder3D:
    return ImageEncoder3D(depth=18, **kwargs)


@register_encoder("resnet3d_34")
def resnet3d_34(**kwargs: Any) -> ImageEncoder3D:
    return ImageEncoder3D(depth=34, **kwargs)


@register_encoder("resnet3d_50")
def resnet3d_50(**kwargs: Any) -> ImageEncoder3D:
    return ImageEncoder3D(depth=50, **kwargs)


@register_encoder("slice_lstm_resnet18")
def slice_lstm_resnet18(**kwargs: Any) -> SliceSequenceEncoder:
    return SliceSequenceEncoder(backbone="resnet18", **kwargs)


@register_encoder("slice_lstm_resnet34")
def slice_lstm_resnet34(**kwargs: Any) -> SliceSequenceEncoder:
    return SliceSequenceEncoder(backbone="resnet34", **kwargs)


@register_encoder("slice_lstm_resnet10t")
def slice_lstm_resnet10t(**kwargs: Any) -> SliceSequenceEncoder:
    return SliceSequenceEncoder(backbone="resnet10t", **kwargs)


@register_encoder("ft_transformer", kind="tabular")
def ft_transformer(**kwargs: Any) -> TabularEncoder:
    return TabularEncoder(**kwargs)


@register_encoder("tabular_mlp", kind="tabular")
def tabular_mlp(**kwargs: Any) -> TabularMLP:
    return TabularMLP(**kwargs)
