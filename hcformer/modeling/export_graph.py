"""HCFormer's inference up to post-processing as one traceable function of an image tensor.

This is the graph ``tools/export_model.py`` writes to ONNX or TorchScript (the contract is in
``hcformer_deploy.contract``): it computes what ``HCFormer.inference`` computes before the
per-image post-processing, for one image fed at its own size. The panoptic and instance rules
(thresholds, segment merging, top-k) stay outside, in ``hcformer_deploy.postprocess``, which the
eager model and the runner of exported models share.
"""
from typing import Tuple

import torch.nn.functional as F
from detectron2.structures import ImageList
from torch import Tensor, nn

from hcformer.data.image_reading import check_image_format
from hcformer_deploy.postprocess import semantic_inference

__all__ = ["ExportGraph"]


class ExportGraph(nn.Module):
    """image (1, 3, H, W) float32 RGB 0–255 → pred_logits, pred_masks, sem_seg [, level maps].

    Args:
        model: an ``HCFormer`` in eval mode.
        input_format: the channel order the model was trained on (INPUT.FORMAT, "RGB" or
            "BGR"); the graph's input is RGB whatever it is.
        pad: pad the image inside the graph to the model's size divisibility (a dynamic-size
            export); without it, H and W must already be multiples of it.
        clusterings: also return the hard cluster ids of every hierarchy level, (1, H, W)
            int64 each, level 0 (finest) first.

    Returns:
        pred_logits (1, Q, K+1); pred_masks (1, Q, H_pad / s, W_pad / s) mask logits decoded
        through the hierarchy to its finest grid (stride s); sem_seg (1, K, H, W) the eager
        model's "sem_seg" for an output of size H×W; then the level maps if asked for.
    """

    def __init__(self, model: nn.Module, input_format: str = "RGB", pad: bool = False, clusterings: bool = False):
        super().__init__()
        self.model = model
        self.pad = pad
        self.clusterings = clusterings
        self.size_divisibility = max(model.size_divisibility, 1)
        check_image_format(input_format)
        self.bgr = input_format == "BGR"

    def forward(self, image: Tensor) -> Tuple[Tensor, ...]:
        if self.bgr:
            image = image.flip(1)
        x = (image - self.model.pixel_mean) / self.model.pixel_std
        height, width = x.shape[-2:]
        if self.pad:  # zeros after normalisation, as ImageList.from_tensors pads
            d = self.size_divisibility
            x = F.pad(x, (0, (d - width % d) % d, 0, (d - height % d) % d))
        images = ImageList(x, [(height, width)])
        outputs, hierarchy = self.model.run(images)
        logits = outputs["pred_logits"]
        masks = hierarchy.decode(outputs["pred_masks"])
        # as HCFormer.inference: to the padded size, then cropped to the image (no resize: the
        # output size is the fed size)
        full = F.interpolate(masks, size=x.shape[-2:], mode="bilinear", align_corners=False)
        full = full[:, :, :height, :width]
        sem_seg = semantic_inference(logits[0], full[0])[None]
        results = (logits, masks, sem_seg)
        if self.clusterings:
            results += tuple(_cluster_map(hierarchy, k, tuple(x.shape[-2:]))[:, :height, :width]
                             for k in range(hierarchy.num_levels + 1))
        return results


def _cluster_map(hierarchy, level: int, padded_size: Tuple[int, int]) -> Tensor:
    """(1, H_pad, W_pad) ids of ``level``: ``hierarchy.hard_labels(level, padded_size)``.

    A grid hierarchy's finest cells tile the padded input exactly, so the nearest resize is a
    repetition by the finest stride, which a trace keeps for any input size (``resize_ids``
    turns the target size into Python integers, which a trace freezes).
    """
    strides = getattr(hierarchy, "level_strides", None)
    if strides is None:  # a hierarchy of segments (CAST): no grid to repeat
        return hierarchy.hard_labels(level, output_size=padded_size)
    stride_y, stride_x = strides[0]
    labels = hierarchy.hard_labels(level)
    return labels.repeat_interleave(stride_y, dim=1).repeat_interleave(stride_x, dim=2)
