"""Frozen model configurations for KoCLIP's two towers, with named presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

VisionKind = Literal["clip", "vit"]


def _check_heads(name: str, hidden: int, heads: int) -> None:
    if hidden <= 0 or heads <= 0 or hidden % heads:
        raise ValueError(
            f"{name}: hidden_size {hidden} must be a positive multiple of num_heads {heads}"
        )


@dataclass(frozen=True)
class TowerSizes:
    """The sizes every transformer tower has; each tower's config adds its own fields."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    layer_norm_eps: float = 1e-5


def tower_sizes(hidden: int, layers: int, heads: int, intermediate: int) -> dict[str, int]:
    """A tower's four sizes as its config's keywords: `TextConfig(**tower_sizes(...), ...)`."""
    return {
        "hidden_size": hidden,
        "num_layers": layers,
        "num_heads": heads,
        "intermediate_size": intermediate,
    }


@dataclass(frozen=True)
class TextConfig(TowerSizes):
    """RoBERTa text tower; `TextConfig.roberta_large()` is `klue/roberta-large`."""

    vocab_size: int = 32000
    max_positions: int = 514
    type_vocab_size: int = 1
    pad_token_id: int = 1

    def __post_init__(self) -> None:
        _check_heads("TextConfig", self.hidden_size, self.num_heads)
        if min(self.vocab_size, self.num_layers, self.intermediate_size, self.max_positions) <= 0:
            raise ValueError("TextConfig: sizes must be positive")
        if self.type_vocab_size < 1:
            raise ValueError("TextConfig: type_vocab_size must be >= 1")

    @classmethod
    def roberta_large(cls) -> TextConfig:
        """`klue/roberta-large`, the text tower of both KoCLIP checkpoints."""
        return cls(**tower_sizes(1024, 24, 16, 4096))


@dataclass(frozen=True)
class VisionConfig(TowerSizes):
    """Vision tower: CLIP ViT (`kind='clip'`) or google ViT (`kind='vit'`)."""

    kind: VisionKind = "clip"
    image_size: int = 224
    patch_size: int = 32
    num_channels: int = 3

    def __post_init__(self) -> None:
        if self.kind not in ("clip", "vit"):
            raise ValueError(f"VisionConfig: kind must be 'clip' or 'vit', not {self.kind!r}")
        _check_heads("VisionConfig", self.hidden_size, self.num_heads)
        if self.image_size % self.patch_size:
            raise ValueError(
                f"VisionConfig: image_size {self.image_size} is not a multiple of "
                f"patch_size {self.patch_size}"
            )

    @classmethod
    def clip_base_patch32(cls) -> VisionConfig:
        """`openai/clip-vit-base-patch32`'s vision tower (`koclip-base`)."""
        return cls(**tower_sizes(768, 12, 12, 3072))

    @classmethod
    def vit_large_patch16(cls) -> VisionConfig:
        """`google/vit-large-patch16-224` (`koclip-large`)."""
        return cls(
            kind="vit", patch_size=16, layer_norm_eps=1e-12, **tower_sizes(1024, 24, 16, 4096)
        )

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def activation(self) -> str:
        # CLIP was trained with quick_gelu; google ViT with exact GELU.
        return "quick_gelu" if self.kind == "clip" else "gelu"


@dataclass(frozen=True)
class KoCLIPConfig:
    """The dual encoder: both towers and the shared projection size (default: `koclip-base`)."""

    text: TextConfig = field(default_factory=TextConfig.roberta_large)
    vision: VisionConfig = field(default_factory=VisionConfig.clip_base_patch32)
    projection_dim: int = 512
    logit_scale_init: float = 2.6592

    def __post_init__(self) -> None:
        if self.projection_dim <= 0:
            raise ValueError("KoCLIPConfig: projection_dim must be positive")

    @classmethod
    def base(cls) -> KoCLIPConfig:
        """`koclip-base`: klue/roberta-large + openai/clip-vit-base-patch32."""
        return cls(text=TextConfig.roberta_large(), vision=VisionConfig.clip_base_patch32())

    @classmethod
    def large(cls) -> KoCLIPConfig:
        """`koclip-large`: klue/roberta-large + google/vit-large-patch16-224."""
        return cls(text=TextConfig.roberta_large(), vision=VisionConfig.vit_large_patch16())

    @classmethod
    def tiny(cls, vision: VisionKind = "clip", vocab_size: int = 64) -> KoCLIPConfig:
        """Test-sized model with prime-ish dimensions; 224 px input like the real ones."""
        text = TextConfig(vocab_size=vocab_size, max_positions=40, **tower_sizes(24, 2, 3, 37))
        eps = 1e-5 if vision == "clip" else 1e-12
        vis = VisionConfig(kind=vision, layer_norm_eps=eps, **tower_sizes(20, 2, 2, 29))
        return cls(text=text, vision=vis, projection_dim=16)

    def replace(self, **changes: Any) -> KoCLIPConfig:
        return dataclasses.replace(self, **changes)

    # --- the hub's config.json shapes -------------------------------------------------

    def to_hybrid_clip_json(self) -> dict[str, Any]:
        """The `config.json` of the hub's Flax `hybrid-clip` checkpoints."""
        return {
            "model_type": "hybrid-clip",
            "architectures": ["FlaxHybridCLIP"],
            "projection_dim": self.projection_dim,
            "text_config": _text_json(self.text),
            "vision_config": _vision_json(self.vision),
        }

    def to_dual_encoder_json(self) -> dict[str, Any]:
        """The `config.json` of transformers' `vision-text-dual-encoder` checkpoints."""
        return {
            "model_type": "vision-text-dual-encoder",
            "architectures": ["VisionTextDualEncoderModel"],
            "projection_dim": self.projection_dim,
            "logit_scale_init_value": self.logit_scale_init,
            "text_config": _text_json(self.text),
            "vision_config": _vision_json(self.vision),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KoCLIPConfig:
        """Read either hub config.json layout; raises ValueError on anything else."""
        model_type = data.get("model_type")
        if model_type not in ("hybrid-clip", "vision-text-dual-encoder"):
            raise ValueError(
                f"unsupported model_type {model_type!r}: expected 'hybrid-clip' or "
                "'vision-text-dual-encoder'"
            )
        try:
            text = _text_from_json(data["text_config"])
            vision = _vision_from_json(data["vision_config"])
        except KeyError as exc:
            raise ValueError(f"config.json lacks {exc.args[0]!r}") from None
        return cls(
            text=text,
            vision=vision,
            projection_dim=int(data.get("projection_dim", 512)),
            logit_scale_init=float(data.get("logit_scale_init_value", 2.6592)),
        )


def _text_json(t: TextConfig) -> dict[str, Any]:
    return {
        "model_type": "roberta",
        "vocab_size": t.vocab_size,
        "hidden_size": t.hidden_size,
        "num_hidden_layers": t.num_layers,
        "num_attention_heads": t.num_heads,
        "intermediate_size": t.intermediate_size,
        "max_position_embeddings": t.max_positions,
        "type_vocab_size": t.type_vocab_size,
        "layer_norm_eps": t.layer_norm_eps,
        "hidden_act": "gelu",
        "pad_token_id": t.pad_token_id,
        "bos_token_id": 0,
        "eos_token_id": 2,
    }


def _vision_json(v: VisionConfig) -> dict[str, Any]:
    out = {
        "model_type": "clip_vision_model" if v.kind == "clip" else "vit",
        "hidden_size": v.hidden_size,
        "num_hidden_layers": v.num_layers,
        "num_attention_heads": v.num_heads,
        "intermediate_size": v.intermediate_size,
        "image_size": v.image_size,
        "patch_size": v.patch_size,
        "num_channels": v.num_channels,
        "layer_norm_eps": v.layer_norm_eps,
        "hidden_act": v.activation,
    }
    if v.kind == "vit":
        out["qkv_bias"] = True
    return out


def _text_from_json(d: dict[str, Any]) -> TextConfig:
    if d.get("model_type", "roberta") not in ("roberta", "bert"):
        raise ValueError(f"unsupported text model_type {d.get('model_type')!r}: expected 'roberta'")
    act = d.get("hidden_act", "gelu")
    if act != "gelu":
        raise ValueError(f"unsupported text hidden_act {act!r}: expected 'gelu'")
    return TextConfig(
        vocab_size=int(d["vocab_size"]),
        hidden_size=int(d["hidden_size"]),
        num_layers=int(d["num_hidden_layers"]),
        num_heads=int(d["num_attention_heads"]),
        intermediate_size=int(d["intermediate_size"]),
        max_positions=int(d["max_position_embeddings"]),
        type_vocab_size=int(d.get("type_vocab_size", 1)),
        layer_norm_eps=float(d.get("layer_norm_eps", 1e-5)),
        pad_token_id=int(d.get("pad_token_id", 1)),
    )


def _vision_from_json(d: dict[str, Any]) -> VisionConfig:
    model_type = d.get("model_type")
    if model_type == "clip" and "vision_config" in d:
        # A full CLIP config was stored; its vision half is the tower.
        d, model_type = d["vision_config"], "clip_vision_model"
    if model_type in ("clip_vision_model", "clip"):
        kind: VisionKind = "clip"
        defaults = VisionConfig.clip_base_patch32()
    elif model_type == "vit":
        kind = "vit"
        defaults = VisionConfig.vit_large_patch16()
    else:
        raise ValueError(f"unsupported vision model_type {model_type!r}: expected 'clip' or 'vit'")
    act = d.get("hidden_act", "quick_gelu" if kind == "clip" else "gelu")
    expected = "quick_gelu" if kind == "clip" else "gelu"
    if act != expected:
        raise ValueError(f"unsupported {kind} hidden_act {act!r}: expected {expected!r}")
    return VisionConfig(
        kind=kind,
        hidden_size=int(d.get("hidden_size", defaults.hidden_size)),
        num_layers=int(d.get("num_hidden_layers", defaults.num_layers)),
        num_heads=int(d.get("num_attention_heads", defaults.num_heads)),
        intermediate_size=int(d.get("intermediate_size", defaults.intermediate_size)),
        image_size=int(d.get("image_size", defaults.image_size)),
        patch_size=int(d.get("patch_size", defaults.patch_size)),
        num_channels=int(d.get("num_channels", 3)),
        layer_norm_eps=float(d.get("layer_norm_eps", defaults.layer_norm_eps)),
    )
