"""Synthetic model inputs for the benchmarks, as detectron2's mappers give them: seeded, so that
every process and every tree (bench_vs_commit.py, original/compare_outputs.py) sees the same
images. It imports nothing of this project's hcformer, since the original's side of
compare_outputs.py imports it next to the original's package of the same name.
"""
from typing import Dict, List

import torch


def synthetic_batch(size: int, batch: int, segments: int, num_classes: int, device: str) -> List[Dict]:
    """Images with ``segments`` random rectangles each (overlaps allowed), as mappers give them."""
    from detectron2.structures import Instances

    g = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(batch):
        masks = torch.zeros(segments, size, size, dtype=torch.bool)
        for m in masks:
            y0, x0 = torch.randint(0, size * 3 // 4, (2,), generator=g).tolist()
            h, w = torch.randint(size // 16, size // 2, (2,), generator=g).tolist()
            m[y0 : y0 + h, x0 : x0 + w] = True
        inst = Instances((size, size))
        inst.gt_masks = masks.to(device)
        inst.gt_classes = torch.randint(0, num_classes, (segments,), generator=g).to(device)
        samples.append({"image": (torch.rand(3, size, size, generator=g) * 255).to(device), "instances": inst})
    return samples


def eval_input(height: int, width: int, device: str) -> List[Dict]:
    g = torch.Generator().manual_seed(0)
    return [{"image": (torch.rand(3, height, width, generator=g) * 255).to(device), "height": height, "width": width}]
