"""Training without decoding every prediction (MODEL.HC.POINT_DECODING) gives the same losses,
whichever backend computes the clustering primitive."""
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Instances

from hcformer.layers.local_clustering import use_backend
from hcformer.modeling.hierarchy import LocalGridHierarchy


def _sample(h, w, boxes, classes):
    inst = Instances((h, w))
    masks = torch.zeros(len(boxes), h, w, dtype=torch.bool)
    for i, (y0, y1, x0, x1) in enumerate(boxes):
        masks[i, y0:y1, x0:x1] = True
    inst.gt_masks = masks
    inst.gt_classes = torch.tensor(classes)
    return {"image": torch.rand(3, h, w) * 255, "instances": inst}


def _losses_and_grads(model, batch, point_decoding, seed=0):
    model.point_decoding = point_decoding
    model.zero_grad()
    torch.manual_seed(seed)  # the same matching and sampling points in both runs
    losses = model(batch)
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


@pytest.mark.parametrize("level", [1, 3])
def test_losses_and_gradients_match_full_decoding(make_cfg, level):
    torch.manual_seed(0)
    model = build_model(make_cfg(**{"MODEL.HC.LEVEL": level})).train()
    batch = [
        _sample(64, 96, [(0, 40, 0, 50), (20, 64, 30, 96), (5, 15, 70, 90)], [1, 4, 2]),
        _sample(48, 80, [(10, 48, 0, 40)], [3]),  # padded in the batch
    ]
    full, full_grads = _losses_and_grads(model, batch, point_decoding=False)
    lazy, lazy_grads = _losses_and_grads(model, batch, point_decoding=True)
    assert full.keys() == lazy.keys()
    for k in full:
        torch.testing.assert_close(lazy[k], full[k], rtol=1e-5, atol=1e-7, msg=k)
    assert full_grads.keys() == lazy_grads.keys()
    for n, ref in full_grads.items():
        # gradients are sums in another order: equal up to fp32 rounding of the tensor's scale
        error = (lazy_grads[n] - ref).abs().max().item()
        assert error <= 1e-5 * ref.abs().max().item() + 1e-6, (n, error)


@pytest.mark.parametrize("backend", ["unfold", "reference"])
def test_every_backend_of_the_primitive_trains_the_same(make_cfg, backend):
    """A training step with the GPU's default backend ("unfold") or the definition gives the
    CPU default's ("blocked") losses and gradients, with point decoding and without."""
    torch.manual_seed(0)
    model = build_model(make_cfg()).train()
    batch = [_sample(64, 96, [(0, 40, 0, 50), (20, 64, 30, 96)], [1, 4]), _sample(48, 80, [(10, 48, 0, 40)], [3])]
    for point_decoding in (True, False):
        with use_backend("blocked"):
            want, want_grads = _losses_and_grads(model, batch, point_decoding)
        with use_backend(backend):
            got, got_grads = _losses_and_grads(model, batch, point_decoding)
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=k)
        assert got_grads.keys() == want_grads.keys()
        for n, ref in want_grads.items():
            error = (got_grads[n] - ref).abs().max().item()
            assert error <= 1e-4 * ref.abs().max().item() + 1e-6, (n, point_decoding, error)


def test_batch_without_targets_still_reaches_the_clustering(make_cfg):
    model = build_model(make_cfg()).train()
    batch = [_sample(64, 64, [], [])]
    batch[0]["instances"].gt_classes = torch.zeros(0, dtype=torch.int64)
    losses = model(batch)
    sum(losses.values()).backward()
    for layer in model.backbone.clustering_layers:
        assert layer.fine_emb.weight.grad is not None


def test_decode_selected_is_a_subset_of_decode():
    torch.manual_seed(0)
    B, Q = 3, 5
    assignments = [torch.rand(B, 9, 4, 6).softmax(1), torch.rand(B, 9, 8, 12).softmax(1)]
    hierarchy = LocalGridHierarchy(assignments, coarsest_size=(2, 3), coarsest_stride=32)
    x = torch.randn(B, Q, 2, 3)
    batch_index = torch.tensor([2, 0, 2, 2, 1])
    query_index = torch.tensor([4, 1, 0, 4, 3])
    out = hierarchy.decode_selected(x, batch_index, query_index)
    torch.testing.assert_close(out, hierarchy.decode(x)[batch_index, query_index])
    empty = hierarchy.decode_selected(x, batch_index[:0], query_index[:0])
    assert empty.shape == (0, 8, 12)


def test_clustering_recompute_gives_the_same_assignments_and_gradients():
    from hcformer.layers.clustering import ClusteringLayer

    torch.manual_seed(0)
    layer = ClusteringLayer(16, 32, emb_dim=8)
    fine, coarse = torch.randn(2, 16, 10, 12), torch.randn(2, 32, 5, 6)
    valid = torch.ones(2, 1, 5, 6, dtype=torch.bool)
    valid[1, :, :, 4:] = False
    results = []
    # the layer recomputes its logits in backward; the softmax of its logits keeps them
    for assign in (layer, lambda f, c, v: layer.logits(f, c, v).softmax(dim=1)):
        layer.zero_grad()
        f, c = fine.clone().requires_grad_(), coarse.clone().requires_grad_()
        out = assign(f, c, valid)
        (out * torch.linspace(0, 1, out.numel()).view_as(out)).sum().backward()
        results.append([out, f.grad, c.grad] + [p.grad for p in layer.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
