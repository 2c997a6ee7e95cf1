"""The pretraining model: two encoders, their projection heads, a temperature and matching fusion.

``PretrainModel`` is composed, not inherited: one encoder per modality from ``multimodal.encoders``
(image and / or table, plus any registered other: ``simclr`` trains the image branch only,
``scarf`` the tabular one), one lightly projection head per modality, a learnable CLIP temperature, and,
for ``itm`` / ``masked_tabular``, a ``MatchingFusion`` (``pretrain.fusion``) in which tabular tokens cross-attend to
image tokens. Losses live in the objectives; ``forward`` returns a dict whose keys match their
argument names (open_clip ``CLIP.forward``)::

    out = model(image=vol, table=batch)       # one encoder pass per modality (others by name)
    out["image_features"], out["table_features"]   # (B, P), L2-normalised; "<m>_features" for others
    out["logit_scale"]                        # (), in [1, 100]
    out["image_tokens"], out["table_tokens"]  # (B, Ti, Df), (B, Tt, Df) when fusion is on
    model.match_logits(out["table_tokens"], out["image_tokens"])   # (B, 2), class 1 = matched

``build_pretrain_model`` makes one from the run config; ``encoder_state_dicts`` extracts what
fine-tuning loads.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from lightly.models.modules.heads import ProjectionHead
from torch import nn

from multimodal.config import ModelConfig
from multimodal.encoders import TabularMLP, build_encoder
from multimodal.errors import ConfigError
from pretrain.config import PretrainConfig
from pretrain.fusion import MatchingFusion, TabularReconstructionHead
from pretrain.volume_decoder import VolumeDecoder

MAX_LOGIT_SCALE = 100.0  # CLIP's cap; the floor of 1 keeps the softmax from flattening entirely
Table = dict[str, torch.Tensor]


def projection_head(input_dim: int, hidden_dim: int, output_dim: int) -> ProjectionHead:
    """SimCLR's head without BatchNorm: ``(B, input_dim) -> (B, output_dim)``.

    "We use a MLP with one hidden layer to obtain z = g(h) = W2 σ(W1 h)" (SimCLR, Chen et al.
    2020), σ = GELU. lightly's ``SimCLRProjectionHead`` adds BatchNorm1d by default, but
    BatchNorm is per-rank under DDP (and SyncBatchNorm needs GPUs), so it is used only where the
    config asks for it: a BN-free head keeps 1 and N processes equivalent.
    """
    return ProjectionHead(
        [(input_dim, hidden_dim, None, nn.GELU()), (hidden_dim, output_dim, None, None)]
    )


def _token_projection(input_dim: int, dim: int) -> nn.Sequential:
    """``(B, T, input_dim) -> (B, T, dim)``: Linear + LayerNorm, so both modalities enter the
    fusion at one width and scale."""
    return nn.Sequential(nn.Linear(input_dim, dim), nn.LayerNorm(dim))


class PretrainModel(nn.Module):
    """Image and / or tabular encoder + projection heads + temperature (+ matching fusion).

    Args:
        encoders: modality -> ``multimodal.encoders`` module (``forward_features``,
            ``num_features``); at least one. Registered as ``<modality>_encoder`` with a
            ``<modality>_projection`` head (``image_encoder``, ``table_projection``, ...).
        projection_dim, projection_hidden: P and the hidden width of each ``projection_head``.
        temperature_init: the CLIP logit scale starts at ``1 / temperature_init``. The learnable
            temperature exists only with both encoders (the unimodal baselines use a fixed one).
        fusion: build the token projections and ``MatchingFusion`` (needs both encoders and a
            tabular encoder with tokens, i.e. ``ft_transformer``).
        fusion_dim, fusion_depth, fusion_heads: Df and the fusion transformer's size.
        matching: give the fusion its 2-way head (off for ``masked_tabular`` without ``itm``).
        reconstruction: ``(n_cont, category_sizes)`` adds a ``TabularReconstructionHead``
            (needs fusion); the counts must match the tabular encoder's.
        image_ssl: with both encoders, a second image projection head for SimCLR between two
            augmented views beside the image–table objectives (SLIP, Mu et al. 2022: a separate
            head, so the instance task does not fight the cross-modal one in one space).
        volume_decoder: a ``VolumeDecoder`` for ``masked_volume`` (pretraining only: not among the
            encoders fine-tuning loads); it reads ``image_encoder.forward_feature_maps``.
        projections: build the projection heads; without them (``masked_volume`` alone trains no
            shared space) each ``<modality>_projection`` is the identity, so ``encode_image`` gives
            the L2-normalised pooled embedding and no parameter goes without gradient under DDP.
    """

    def __init__(
        self,
        encoders: dict[str, nn.Module | None],
        *,
        projection_dim: int = 128,
        projection_hidden: int = 512,
        temperature_init: float = 0.07,
        fusion: bool = True,
        fusion_dim: int = 128,
        fusion_depth: int = 2,
        fusion_heads: int = 4,
        matching: bool = True,
        reconstruction: tuple[int, list[int]] | None = None,
        image_ssl: bool = False,
        volume_decoder: nn.Module | None = None,
        projections: bool = True,
    ) -> None:
        super().__init__()
        encoders = {m: enc for m, enc in encoders.items() if enc is not None}
        if not encoders:
            raise ValueError("PretrainModel needs at least one encoder (image, table, ...)")
        image_encoder, table_encoder = encoders.get("image"), encoders.get("table")
        both = image_encoder is not None and table_encoder is not None
        if fusion and not both:
            raise ValueError(
                "fusion=True needs both encoders; pass fusion=False for a one-modality model"
            )
        if fusion and isinstance(table_encoder, TabularMLP):
            raise ConfigError(
                "matching fusion needs per-feature tabular tokens, which 'tabular_mlp' does not "
                "have; set model.encoders.table.name: ft_transformer (or drop itm / masked_tabular)"
            )
        if reconstruction is not None and not fusion:
            raise ValueError("reconstruction reads the fused table tokens; it needs fusion=True")
        if not 0.0 < temperature_init <= 1.0:
            raise ConfigError(f"temperature_init must be in (0, 1], got {temperature_init}")

        self.modalities = list(encoders)
        # Encoders first, then heads: the parameter order (and so the float summation order of the
        # gradient clipping) of runs made before any third modality existed.
        for modality, encoder in encoders.items():
            self.add_module(f"{modality}_encoder", encoder)
        for modality, encoder in encoders.items():
            self.add_module(f"{modality}_projection",
                            projection_head(encoder.num_features, projection_hidden, projection_dim)
                            if projections else nn.Identity())
        for absent in ("image", "table"):  # the usual names stay readable as None
            if absent not in encoders:
                self.register_module(f"{absent}_encoder", None)
                self.register_module(f"{absent}_projection", None)
        # log(1 / T), as in CLIP; clamped on read (see logit_scale). Absent for one modality so
        # that no parameter goes without gradient under DDP.
        self.log_logit_scale = (
            nn.Parameter(torch.tensor(math.log(1.0 / temperature_init))) if len(encoders) > 1 else None
        )
        if image_ssl and not both:
            raise ValueError("image_ssl adds SimCLR beside the image-table objectives; it needs both encoders")
        self.simclr_projection = (
            projection_head(image_encoder.num_features, projection_hidden, projection_dim) if image_ssl else None
        )
        self.image_token_projection = self.table_token_projection = self.fusion = None
        if fusion:
            self.image_token_projection = _token_projection(image_encoder.num_features, fusion_dim)
            self.table_token_projection = _token_projection(table_encoder.num_features, fusion_dim)
            self.fusion = MatchingFusion(
                fusion_dim, fusion_depth, fusion_heads, match_head=matching
            )
        self.reconstruction_head = None
        if reconstruction is not None:
            n_cont, sizes = reconstruction
            expected = (
                getattr(table_encoder, "num_continuous", n_cont),
                getattr(table_encoder, "num_categorical", len(sizes)),
            )
            if (n_cont, len(sizes)) != expected:
                raise ValueError(
                    f"reconstruction for {n_cont} continuous + {len(sizes)} categorical features, "
                    f"but the tabular encoder has {expected[0]} + {expected[1]}"
                )
            self.reconstruction_head = TabularReconstructionHead(fusion_dim, n_cont, list(sizes))
        if volume_decoder is not None and not hasattr(image_encoder, "forward_feature_maps"):
            raise ValueError("volume_decoder reads the image encoder's forward_feature_maps, which it lacks")
        self.volume_decoder = volume_decoder

    # ----------------------------------------------------------------------- temperature
    @property
    def logit_scale(self) -> torch.Tensor:
        """``()`` tensor ``exp(clamp(log_logit_scale, 0, ln 100))`` ∈ [1, 100].

        Clamping the log on read keeps the scale bounded whatever the optimiser does (on small
        cohorts it otherwise drifts); the gradient flows while the parameter is inside the range.
        """
        if self.log_logit_scale is None:
            raise ValueError("a one-modality model has no CLIP temperature (logit_scale)")
        return self.log_logit_scale.clamp(0.0, math.log(MAX_LOGIT_SCALE)).exp()

    # ----------------------------------------------------------------------- encoders
    def _image_features(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.image_encoder is None:
            raise ValueError("this model has no image encoder; pass table= only")
        return self.image_encoder.forward_features(image)

    def _image_pass(self, image: torch.Tensor, decode_rows: int = 0
                    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """``(B, C, H, W, D)`` -> (``forward_features``' dict, the ``volume_decoder``'s
        ``(decode_rows, C, H, W, D)`` reconstruction of the first ``decode_rows`` volumes, or None
        for 0), from one encoder pass."""
        if not decode_rows:
            return self._image_features(image), None
        if self.volume_decoder is None:
            raise ValueError("this model has no volume decoder (objective masked_volume is off)")
        maps = self.image_encoder.forward_feature_maps(image)
        decoded = self.volume_decoder({k: v[:decode_rows] for k, v in maps.items()}, image.shape[2:])
        return self.image_encoder.features_from_maps(maps), decoded

    def _table_features(self, table: Table) -> dict[str, torch.Tensor]:
        if self.table_encoder is None:
            raise ValueError("this model has no tabular encoder; pass image= only")
        return self.table_encoder.forward_features(table)

    def encode(self, modality: str, inputs: Any) -> torch.Tensor:
        """A modality's batch input -> ``(B, P)``, L2-normalised projection of the pooled embedding."""
        if modality not in self.modalities:
            raise ValueError(f"this model has no {modality} encoder (it has {self.modalities})")
        embedding = getattr(self, f"{modality}_encoder").forward_features(inputs)["embedding"]
        return F.normalize(getattr(self, f"{modality}_projection")(embedding), dim=-1)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W, D) -> (B, P)``, L2-normalised projection of the pooled embedding."""
        embedding = self._image_features(image)["embedding"]
        return F.normalize(self.image_projection(embedding), dim=-1)

    def encode_table(self, table: Table) -> torch.Tensor:
        """Preprocessor dict (``continuous``, ``categorical``, ``missing``) -> ``(B, P)``, L2-normalised."""
        embedding = self._table_features(table)["embedding"]
        return F.normalize(self.table_projection(embedding), dim=-1)

    def forward(
        self,
        image: torch.Tensor | None = None,
        table: Table | None = None,
        masked_table: Table | None = None,
        masked_image: torch.Tensor | None = None,
        reconstruct_image: bool = False,
        **others: Any,
    ) -> dict[str, torch.Tensor]:
        """One encoder pass per input -> dict of the keys that apply:

        - ``<modality>_features (B, P)`` for every other modality passed by name (``others``);

        - ``image_features (B, P)`` / ``table_features (B, P)``: L2-normalised projections;
        - ``logit_scale ()`` in [1, 100], with both encoders;
        - ``image_tokens (B, Ti, Df)`` / ``table_tokens (B, Tt, Df)``: projected tokens, with fusion;
        - ``image_view_features (2B, P)``: with ``image (B, 2, C, H, W, D)`` (two augmented views,
          ``image_ssl``), the SimCLR projections of view 1 then view 2; the image outputs above
          come from view 1;
        - ``masked_table_tokens (B, Tt, Df)``: the tokens of ``masked_table`` (the table with the
          masked features flagged missing) for ``reconstruct``, so ``masked_tabular`` needs no
          second call of the (DDP-wrapped) model;
        - ``image_reconstruction (B, C, H, W, D)``: the ``volume_decoder``'s reconstruction
          (``masked_volume``), of ``masked_image`` from a pass of its own, or, with
          ``reconstruct_image``, of ``image`` (its first view) from the pass that gives the image
          outputs above (the caller passes the masked volume as ``image``: one pass serves both).
        """
        if reconstruct_image and (image is None or masked_image is not None):
            raise ValueError("reconstruct_image decodes the image pass: pass image= (masked), not masked_image=")
        out: dict[str, torch.Tensor] = {}
        if image is not None and image.ndim == 6:  # (B, 2, C, H, W, D): two views, one encoder pass
            if self.simclr_projection is None:
                raise ValueError("two image views need a model built with image_ssl=True (objective simclr)")
            batch = image.shape[0]
            feats, decoded = self._image_pass(torch.cat([image[:, 0], image[:, 1]]),  # (2B, ...)
                                              batch if reconstruct_image else 0)
            if decoded is not None:
                out["image_reconstruction"] = decoded
            out["image_view_features"] = F.normalize(self.simclr_projection(feats["embedding"]), dim=-1)  # (2B, P)
            feats = {key: value[:batch] for key, value in feats.items()}  # the first view meets the table
            image = None
            out["image_features"] = F.normalize(self.image_projection(feats["embedding"]), dim=-1)
            if self.fusion is not None:
                out["image_tokens"] = self.image_token_projection(feats["tokens"])
        if image is not None:
            feats, decoded = self._image_pass(image, image.shape[0] if reconstruct_image else 0)
            if decoded is not None:
                out["image_reconstruction"] = decoded
            out["image_features"] = F.normalize(self.image_projection(feats["embedding"]), dim=-1)
            if self.fusion is not None:
                out["image_tokens"] = self.image_token_projection(feats["tokens"])
        if table is not None:
            feats = self._table_features(table)
            out["table_features"] = F.normalize(self.table_projection(feats["embedding"]), dim=-1)
            if self.fusion is not None:
                out["table_tokens"] = self.table_token_projection(feats["tokens"])
        if masked_table is not None:
            if self.fusion is None:
                raise ValueError("masked_table needs a model built with fusion (masked_tabular)")
            tokens = self._table_features(masked_table)["tokens"]
            out["masked_table_tokens"] = self.table_token_projection(tokens)
        if masked_image is not None:
            out["image_reconstruction"] = self._image_pass(masked_image, masked_image.shape[0])[1]
        for modality, inputs in others.items():
            if inputs is not None:
                out[f"{modality}_features"] = self.encode(modality, inputs)
        if self.log_logit_scale is not None:
            out["logit_scale"] = self.logit_scale
        return out

    # ----------------------------------------------------------------------- fusion heads
    def _fusion(self) -> MatchingFusion:
        if self.fusion is None:
            raise ValueError(
                "this model was built without fusion (objectives without itm / masked_tabular)"
            )
        return self.fusion

    def match_logits(self, table_tokens: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """``(M, Tt, Df), (M, Ti, Df) -> (M, 2)`` matching logits (class 1 = matched); row i
        pairs table i with image i, so the objective stacks positives and negatives into M rows."""
        return self._fusion().match_logits(table_tokens, image_tokens)

    def reconstruct(
        self, table_tokens: torch.Tensor, image_tokens: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Masked-tabular predictions from the fusion of ``(B, Tt, Df)`` table tokens (usually
        ``masked_table_tokens``) with their ``(B, Ti, Df)`` image tokens:
        ``-> (continuous (B, n_cont), [logits (B, K_j + 1)])``, one per feature in encoder order."""
        if self.reconstruction_head is None:
            raise ValueError(
                "this model has no reconstruction head (objective masked_tabular is off)"
            )
        fused = self._fusion()(table_tokens, image_tokens)  # (B, 1 + Tt, Df)
        return self.reconstruction_head(fused[:, 1:])


# --------------------------------------------------------------------------- construction


def build_pretrain_model(
    model_config: ModelConfig,
    pretrain: PretrainConfig,
    from_data: dict[str, dict[str, Any]],
) -> PretrainModel:
    """The ``PretrainModel`` the objectives of ``pretrain`` need.

    One encoder per key of ``from_data`` (``pretrain_modalities``), built by name from
    ``model.encoders`` with what the data fixes (image ``in_channels``; table ``num_continuous``,
    ``category_sizes``, the fitted preprocessor's). Fusion is built for ``itm`` or
    ``masked_tabular``, its matching head for ``itm``, the reconstruction head for ``masked_tabular``,
    the volume decoder for ``masked_volume`` (alone it trains no projection heads).
    """
    encoders = {m: build_encoder(model_config, m, **sizes) for m, sizes in from_data.items()}
    objectives = set(pretrain.objectives)
    decoder = None
    if "masked_volume" in objectives:
        image = encoders["image"]
        if not hasattr(image, "stage_specs"):
            raise ConfigError(
                f"pretrain.objectives.masked_volume decodes the image encoder's feature maps, which "
                f"model.encoders.image.name {model_config.encoders['image'].name!r} does not give; "
                "use a 3D ResNet (e.g. resnet3d_10) or drop masked_volume"
            )
        decoder = VolumeDecoder(image.stage_specs(), from_data["image"]["in_channels"],
                                pretrain.masked_volume_decoder_width)
    table = from_data.get("table", {})
    reconstruct = "masked_tabular" in objectives
    return PretrainModel(
        encoders,
        projection_dim=pretrain.projection_dim,
        projection_hidden=pretrain.projection_hidden,
        temperature_init=pretrain.temperature_init,
        fusion=bool({"itm", "masked_tabular"} & objectives),
        fusion_dim=pretrain.fusion_dim,
        fusion_depth=pretrain.fusion_depth,
        fusion_heads=pretrain.fusion_heads,
        matching="itm" in objectives,
        reconstruction=(table["num_continuous"], list(table["category_sizes"])) if reconstruct else None,
        image_ssl="simclr" in objectives and {"image", "table"} <= set(from_data),
        volume_decoder=decoder,
        projections=objectives != {"masked_volume"},
    )


def pretrain_modalities(model_config: ModelConfig, pretrain: PretrainConfig) -> list[str]:
    """What pretraining reads: the objectives' modalities, plus (with clip) every other modality of
    ``model.encoders``, aligned with the rest by pairwise CLIP."""
    modalities = list(pretrain.modalities)
    if "clip" in pretrain.objectives:
        modalities += [m for m in model_config.encoders if m not in modalities]
    for pair in pretrain.clip_pairs:  # each pair: a modality beyond image-table and one before it
        a, b = pair.split("-")
        if a not in modalities or b not in modalities or modalities.index(a) >= modalities.index(b) or b in ("image", "table"):
            pairs = [f"{x}-{y}" for j, y in enumerate(modalities) for x in modalities[:j] if y not in ("image", "table")]
            raise ConfigError(f"pretrain.clip_pairs names {pair!r}; this run's pairs beyond image-table are "
                              f"{pairs or 'none (model.encoders has no third modality)'}")
    return modalities


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module under DistributedDataParallel (``.module``) / ``torch.compile`` (``._orig_mod``)."""
    while True:
        inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def encoder_state_dicts(model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """``{"<modality>_encoder": state_dict}`` (``image_encoder``, ``table_encoder``, ...) of the
    trunks fine-tuning loads (no projection heads, no fusion)."""
    bare = unwrap(model)
    return {f"{m}_encoder": getattr(bare, f"{m}_encoder").state_dict() for m in bare.modalities}
