"""Measuring Expedit on an HCFormer: configs, the original / expedited pair, evaluation, backbone
FLOPs, CPU latency and the similarity of the stage features. Shared by ``tools/*.py`` and the
tests; not imported by ``import expedit`` (it pulls in the trainer and fvcore).

FLOPs are fvcore's (one multiply-add = one FLOP, ``hcformer.engine.analysis``'s op handles),
with the products of the local clustering primitive counted analytically: Expedit's with
``clustering_macs`` ((κ+1) distance maps of C+1 channels, κ centre updates and one
reconstruction of C channels, per slot and candidate), HCFormer's clustering layers as
9·EMB_DIM per fine pixel (their affinity). :func:`backbone_flops` traces the backbone with the
primitive's "reference" backend, whose products are element-wise multiply-adds that fvcore
does not count, so that nothing is counted twice; the clustering layers, whose assignments the
traced function does not return, drop out of the trace altogether. Element-wise work
(softmax, top-k, norms) is counted nowhere, as fvcore counts no element-wise op.
"""
import copy
import statistics
import time
from typing import Callable, Dict, Iterable, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from torch import Tensor, nn

import hcformer  # noqa: F401  registers models and datasets
from hcformer.checkpoint import HCFormerCheckpointer
from hcformer.engine.analysis import flop_count_analysis
from hcformer.layers.local_clustering import use_backend

from .config import apply_expedit
from .swin import ExpeditSwinStage

__all__ = [
    "expedit_cfg",
    "valid_alphas",
    "build_trained",
    "expedited_copy",
    "evaluate",
    "headline_metrics",
    "Features",
    "hc_clustering_macs",
    "backbone_flops",
    "median_latency",
    "interleaved_latency",
    "features_of_test_images",
    "per_image",
    "mean_cosine_similarity",
]


# ---------------------------------------------------------------------------------- configs
def expedit_cfg(cfg: CfgNode, enabled: bool = True, **settings) -> CfgNode:
    """A copy of ``cfg`` with MODEL.EXPEDIT.ENABLED = ``enabled`` and the given MODEL.EXPEDIT
    keys, e.g. ``expedit_cfg(cfg, ALPHA=5, CLUSTER_WINDOW=6)``."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.EXPEDIT.ENABLED = enabled
    for key, value in settings.items():
        if key not in cfg.MODEL.EXPEDIT:
            raise KeyError(f"MODEL.EXPEDIT has no key {key!r}")
        cfg.MODEL.EXPEDIT[key] = value
    return cfg


def valid_alphas(cfg: CfgNode) -> List[int]:
    """Every α inside MODEL.EXPEDIT.STAGE of the config's Swin (blocks of the whole backbone
    before the clustering): depths [2, 2, 2, 2], stage 2 → [4, 5]."""
    depths = list(cfg.MODEL.SWIN.DEPTHS)
    stage = cfg.MODEL.EXPEDIT.STAGE
    first = sum(depths[:stage])
    return list(range(first, first + depths[stage]))


# ----------------------------------------------------------------------------------- models
def build_trained(cfg: CfgNode, seed: int = 0) -> nn.Module:
    """The *original* model of ``cfg`` (MODEL.EXPEDIT.ENABLED ignored) with MODEL.WEIGHTS loaded
    by HCFormer's checkpointer (no download; an empty MODEL.WEIGHTS keeps the random init drawn
    with ``seed``), in eval mode."""
    from hcformer.engine.trainer import Trainer

    cfg = expedit_cfg(cfg, enabled=False)
    torch.manual_seed(seed)
    model = Trainer.build_model(cfg)
    HCFormerCheckpointer(model, allow_pickle=cfg.MODEL.ALLOW_PICKLE).load(cfg.MODEL.WEIGHTS)
    return model.eval()


def expedited_copy(model: nn.Module, cfg: CfgNode) -> nn.Module:
    """A deep copy of the (loaded) original ``model`` with MODEL.EXPEDIT of ``cfg`` applied (the
    weights are shared by value: nothing is reloaded)."""
    return apply_expedit(copy.deepcopy(model), expedit_cfg(cfg, enabled=True)).eval()


# ------------------------------------------------------------------------------- evaluation
def evaluate(cfg: CfgNode, model: nn.Module) -> Dict:
    """The project's test loop (``Trainer.test``) on DATASETS.TEST: the evaluators' result dict
    (per dataset when there are several)."""
    from hcformer.engine.trainer import Trainer

    return Trainer.test(cfg, model)


def headline_metrics(results: Dict) -> Dict[str, float]:
    """PQ, PQ_th, PQ_st (panoptic), mIoU (semantic) and AP (mask) of one dataset's results;
    the metrics an evaluator did not report are left out."""
    picks = {"panoptic_seg": ("PQ", "PQ_th", "PQ_st"), "sem_seg": ("mIoU",), "segm": ("AP",)}
    out = {}
    for task, keys in picks.items():
        for key in keys:
            if key in results.get(task, {}):
                out[key] = float(results[task][key])
    return out


# ------------------------------------------------------------------------------------ FLOPs
class Features(nn.Module):
    """The backbone as a function of the image returning only tensors (for tracing)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, image: Tensor) -> Tuple[Tensor, ...]:
        out = self.backbone(image)
        return tuple(out[k] for k in ("res2", "res3", "res4", "res5") if k in out)


def hc_clustering_macs(backbone: nn.Module, image: Tensor) -> int:
    """9 · EMB_DIM per fine pixel of each HCFormer clustering layer (its affinity)."""
    with torch.no_grad():
        hierarchy = backbone(image)["assign"]
    # both coarsest first: assignments (B, 9, H, W) of the fine pixels of each layer
    layers = backbone.clustering_layers
    return sum(a.numel() * layer.fine_emb.out_channels for a, layer in zip(hierarchy.assignments, layers))


def backbone_flops(backbone: nn.Module, image: Tensor) -> Dict[str, object]:
    """GFLOPs of an (expedited or original) HC-Swin backbone on ``image`` (1, 3, H, W).

    Keys: ``fvcore + HC clustering (analytic)`` (the traced backbone, ``aux`` included),
    ``HC clustering (analytic)``, ``swin`` (without ``aux``), ``aux``, ``clustering (analytic)``
    (Expedit's), ``swin + clustering``, ``backbone total`` (everything: traced + both analytic
    terms), ``stage 3 (layers.2)`` and fvcore's ``unsupported ops``.
    """
    hc = hc_clustering_macs(backbone, image)
    with torch.no_grad(), use_backend("reference"):
        analysis = flop_count_analysis(Features(backbone), (image,))
        by_module = analysis.by_module()
        traced = analysis.total()
    total = traced + hc
    aux = by_module.get("backbone.aux", 0)
    clustering = sum(m.last_clustering_macs for m in backbone.modules() if isinstance(m, ExpeditSwinStage))
    return {
        "fvcore + HC clustering (analytic)": total / 1e9,
        "HC clustering (analytic)": hc / 1e9,
        "swin": (total - aux) / 1e9,
        "aux": aux / 1e9,
        "clustering (analytic)": clustering / 1e9,
        "swin + clustering": (total - aux + clustering) / 1e9,
        "backbone total": (total + clustering) / 1e9,
        "stage 3 (layers.2)": by_module.get("backbone.layers.2", 0) / 1e9,
        "unsupported ops": dict(analysis.unsupported_ops()),
    }


# ---------------------------------------------------------------------------------- latency
def median_latency(fn: Callable[[], object], runs: int, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``runs`` calls of ``fn`` (under ``no_grad``) after
    ``warmup`` untimed ones."""
    times = []
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        for _ in range(runs):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_latency(fns: Sequence[Callable[[], object]], runs: int, warmup: int = 1) -> List[float]:
    """Median seconds of each of ``fns``, timed in turns (f0, f1, f0, f1, ...), so that the load
    of a shared machine weighs on all of them alike."""
    times: List[List[float]] = [[] for _ in fns]
    with torch.no_grad():
        for _ in range(warmup):
            for fn in fns:
                fn()
        for _ in range(runs):
            for fn, bucket in zip(fns, times):
                start = time.perf_counter()
                fn()
                bucket.append(time.perf_counter() - start)
    return [statistics.median(bucket) for bucket in times]


# ----------------------------------------------------------------------- feature similarity
@torch.no_grad()
def features_of_test_images(cfg: CfgNode, model: nn.Module, names: Iterable[str] = ("res4", "res5")) -> Dict[object, Dict[str, Tensor]]:
    """Backbone features of every image of DATASETS.TEST[0], keyed by ``image_id`` (or
    ``file_name``): {key: {name: (C, h, w)}} float32 on the CPU, cropped to the cells of the
    image (those the batch padding did not add). The images are read by the project's test
    loader, so they are the ones :func:`evaluate` scores."""
    from hcformer.engine.trainer import Trainer

    names = tuple(names)
    strides = {n: model.backbone.output_shape()[n].stride for n in names}
    features: Dict[object, Dict[str, Tensor]] = {}
    for batch in Trainer.build_test_loader(cfg, cfg.DATASETS.TEST[0]):
        images = model.preprocess(batch)
        outputs = model.backbone(images.tensor)
        for i, (x, (h, w)) in enumerate(zip(batch, images.image_sizes)):
            key = x.get("image_id", x.get("file_name", len(features)))
            features[key] = {
                n: outputs[n][i, :, : -(-h // strides[n]), : -(-w // strides[n])].float().cpu() for n in names
            }
    return features


def per_image(outputs: Dict[str, object], names: Iterable[str] = ("res4", "res5")) -> Dict[int, Dict[str, Tensor]]:
    """A backbone's batch outputs {name: (B, C, H, W)} as {image index: {name: (C, H, W)}}."""
    names = tuple(names)
    return {i: {n: outputs[n][i].float() for n in names} for i in range(len(outputs[names[0]]))}


def mean_cosine_similarity(
    reference: Dict[object, Dict[str, Tensor]], features: Dict[object, Dict[str, Tensor]]
) -> Dict[str, float]:
    """Per-token cosine similarity (over channels) of ``features`` to ``reference``, averaged
    over every token of every image, per feature name.

    Both map image keys to {name: (C, H, W)} (``features_of_test_images``, ``per_image``) and
    must cover the same images.
    """
    if not reference or reference.keys() != features.keys():
        raise ValueError(f"the feature sets cover different images ({len(reference)} vs {len(features)})")
    names = list(next(iter(reference.values())))
    out = {}
    for n in names:
        sims = [F.cosine_similarity(features[k][n], reference[k][n], dim=0).flatten() for k in reference]
        out[n] = torch.cat(sims).mean().item()
    return out
