"""The cluster visualiser (paper §3.3): the logits it draws are those whose softmax over the
positions is the assignment every block's attention uses (stage-wise, block-wise, teacher),
the grid has one tile per cluster showing where that cluster is, and the script writes one
band per stage (or per block with --every-block)."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from paca.modeling import PaCaViT
from paca.visualization import block_cluster_logits, cluster_logits, render_cluster_grid

PROJECT = Path(__file__).resolve().parents[1]
SHAPES_CONFIGS = PROJECT / "configs" / "shapes"

# stage grids of a 64 × 48 image: strides 4, 8, 16, 32
GRIDS = [(16, 12), (8, 6), (4, 3), (2, 2)]


def _recorded_assignments(vit: PaCaViT):
    """{(stage, block): the assignment (B, M, N) that block's attention received}, filled by
    forward hooks at every forward of ``vit``."""
    seen = {}
    for i, stage in enumerate(vit.stages):
        for j, block in enumerate(stage.blocks):
            def keep(module, args, output, key=(i, j)):
                seen[key] = args[1]
            block.attn.register_forward_hook(keep)
    return seen


@pytest.mark.parametrize("scope", ["stage", "block", "teacher"])
def test_drawn_logits_give_the_assignments_the_model_uses(scope):
    torch.manual_seed(0)
    teacher = scope == "teacher"
    vit = PaCaViT(
        dims=(16, 16, 32, 32), depths=(2, 1, 2, 1), num_heads=(2,) * 4,
        num_clusters=(6, 4, 3, 2 if teacher else 0), clustering_scope="stage" if teacher else scope,
        teacher_depths=(1, 1, 1, 1) if teacher else None, drop_path_rate=0.0,
    ).eval()
    seen = _recorded_assignments(vit)
    image = torch.randn(1, 3, 64, 48)
    per_stage = cluster_logits(vit, image)  # one forward, the hooks above see the same one
    per_block = block_cluster_logits(vit, image)

    clusters = vit.num_clusters
    assert [None if lg is None else tuple(lg.shape) for lg in per_stage] == [
        (1, m, *grid) if m else None for m, grid in zip(clusters, GRIDS)
    ]
    assert len(seen) == 6  # every block ran
    for (stage, block), assignment in seen.items():
        if not clusters[stage]:
            assert assignment is None  # plain MHSA
            continue
        # the heatmaps are sigmoid(logits); their softmax over positions is what the block pools with
        drawn = per_stage[stage] if scope != "block" else per_block[f"stage {stage + 1}, block {block + 1}"]
        torch.testing.assert_close(drawn.flatten(2).softmax(-1), assignment)

    if scope == "block":
        assert list(per_block) == [
            "stage 1, block 1", "stage 1, block 2", "stage 2, block 1", "stage 3, block 1", "stage 3, block 2"
        ]
        # every block clusters its own features: the two bands of a stage differ
        assert not torch.allclose(per_block["stage 1, block 1"], per_block["stage 1, block 2"])
        assert torch.equal(per_stage[0], per_block["stage 1, block 1"])
    elif scope == "stage":
        assert list(per_block) == ["stage 1, block 1", "stage 2, block 1", "stage 3, block 1"]
    else:
        assert list(per_block) == [f"stage {i}, teacher" for i in range(1, 5)]


def _hot(cells, shape=(8, 8)) -> torch.Tensor:
    """Logits (h, w): +4 on ``cells``, -4 elsewhere."""
    logits = torch.full(shape, -4.0)
    for r, c in cells:
        logits[r, c] = 4.0
    return logits


@pytest.mark.parametrize("mode", ["heatmap", "mask"])
def test_grid_has_a_tile_per_cluster_showing_where_it_is(tmp_path: Path, mode: str):
    """Stage 1: 3 clusters of one cell each; stage 2 plain MHSA; stage 3: 5 clusters of 1..5
    cells, of which max_clusters=3 keeps the 3 largest in their order. Tiles of 8 px on 8×8
    grids (no resampling) of a grey image: each tile must light exactly its cluster's cells."""
    stage1 = [[(m, 2 * m)] for m in range(3)]
    stage3 = [[(m, c) for c in range(m + 1)] for m in range(5)]
    logits = [torch.stack([_hot(c) for c in stage1]), None, torch.stack([_hot(c) for c in stage3]), None]
    grey = np.full((32, 24, 3), 128, dtype=np.uint8)
    path = render_cluster_grid(
        grey, logits, str(tmp_path / "grid.png"), columns=4, tile_size=8, max_clusters=3, mode=mode
    )
    grid = np.asarray(Image.open(path))
    band = 14 + 8  # label, one row of tiles
    assert grid.shape == (2 * band, 4 * 8, 3)  # stage 2 has no band

    for b, expected in enumerate([stage1, stage3[2:]]):
        tiles = [grid[b * band + 14 : (b + 1) * band, 8 * t : 8 * (t + 1)] for t in range(4)]
        assert (tiles[3] == 255).all()  # 3 clusters: the 4th slot stays empty
        for tile, cells in zip(tiles, expected):
            hot = _hot(cells).numpy() > 0
            if mode == "mask":  # eq. (8): the image on the cluster's cells, black elsewhere
                assert np.array_equal(tile.max(axis=-1) > 0, hot) and (tile[hot] == 128).all()
            else:  # jet: red on the cluster's cells, blue elsewhere
                assert np.array_equal(tile[..., 0] > tile[..., 2], hot)


def _load_script():
    path = PROJECT / "tools" / "visualize_paca_clusters.py"
    spec = importlib.util.spec_from_file_location("visualize_paca_clusters", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


@pytest.mark.parametrize("every_block", [False, True])
def test_visualisation_script(tmp_path: Path, every_block: bool):
    """PaCa-Tiny (M = 100, 100, 100, 0; depths 2, 2, 4, 2), 8 clusters drawn per band of 10
    tiles of 64 px: 3 bands (stage-wise), or 8 (block-wise, --every-block)."""
    image = tmp_path / "input.png"
    Image.fromarray((np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)).save(image)
    flags, opts = (["--every-block"], ["MODEL.PACA.CLUSTERING_SCOPE", "block"]) if every_block else ([], [])
    (path,) = _load_script().main([
        "--config-file", str(SHAPES_CONFIGS / "paca_head_paca_tiny_shapes.yaml"), "--input", str(image),
        "--output", str(tmp_path / "out"), "--max-clusters", "8", *flags, "MODEL.DEVICE", "cpu", *opts,
    ])
    assert path == tmp_path / "out" / "input_clusters.png"
    with Image.open(path) as picture:
        assert picture.size == (10 * 64, (8 if every_block else 3) * (14 + 64))
