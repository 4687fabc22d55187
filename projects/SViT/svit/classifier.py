"""The ImageNet classifier of SViT: the trunk, a 1×1 projection to 1024 + BN + Swish, average
pooling and a linear layer. Here to check sizes against the released models and to load their
weights as they are (``svit.checkpoint``)."""
from timm.layers import trunc_normal_
from torch import Tensor, nn

from .model import SVIT_VARIANTS, SViT


class SViTClassifier(SViT):
    """SViT with the classification head of the released models (``proj``, ``norm``, ``head``).

    Args:
        num_classes: outputs of the linear layer.
        projection: channels of the 1×1 projection of the last stage.
        trunk_kwargs: ``SViT`` arguments (architecture, regularisation).
    """

    def __init__(self, num_classes: int = 1000, projection: int = 1024, **trunk_kwargs):
        super().__init__(out_features=("res5",), level=0, return_hierarchy=False, **trunk_kwargs)
        channels = self.output_shape()["res5"].channels
        self.proj = nn.Conv2d(channels, projection, 1)
        self.norm = nn.BatchNorm2d(projection)
        self.act = nn.SiLU()  # "Swish"
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(projection, num_classes)
        trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        """(B, 3, H, W) images → (B, num_classes) logits."""
        x = super().forward(x)["res5"]
        x = self.pool(self.act(self.norm(self.proj(x)))).flatten(1)
        return self.head(x)


def svit_classifier(variant: str, **kwargs) -> SViTClassifier:
    """SViT-S / B / L ("small", "base", "large") with the released ImageNet settings; ``kwargs``
    override them (e.g. ``drop_path_rate``)."""
    if variant not in SVIT_VARIANTS:
        raise ValueError(f"unknown SViT variant {variant!r}; choose from {sorted(SVIT_VARIANTS)}")
    v = SVIT_VARIANTS[variant]
    settings = dict(
        embed_dims=v.embed_dims,
        depths=v.depths,
        num_heads=v.num_heads,
        layer_scale=v.layer_scale,
        drop_path_rate=v.drop_path_rate,
    )
    settings.update(kwargs)
    return SViTClassifier(**settings)
