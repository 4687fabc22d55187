"""Run by tests/test_training_recovery.py in a subprocess (not a test module): train with
``hcformer.engine.launch`` in several CPU processes, then let every rank write what it ended with.

    python tests/distributed_probe.py --num-gpus 2 [--nan-on-rank R --nan-at-iter I] --config-file CONFIG [KEY VALUE ...]

Each rank writes OUTPUT_DIR/rank<r>.json: the losses of one fixed batch under a fixed seed
(equal on every rank only if the weights are), a checksum of the parameters, the world size,
and whether this rank's checkpointer writes files. With ``--nan-on-rank``, that rank's loss
becomes NaN at iteration ``--nan-at-iter``; every rank then writes the ``NonFiniteLossError`` it
got instead, waits for the others at a barrier (proof that none is stuck in a collective) and
exits with the error.
"""
import json
import os
import sys

import torch
from detectron2.data import DatasetCatalog
from detectron2.engine import default_argument_parser
from detectron2.utils import comm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import hcformer  # noqa: E402,F401
from hcformer.data.build import build_dataset_mapper  # noqa: E402
from hcformer.engine.launch import launch  # noqa: E402
from hcformer.engine.loss_guard import NonFiniteLossError  # noqa: E402
from hcformer.engine.setup import setup  # noqa: E402
from hcformer.engine.trainer import Trainer  # noqa: E402


def write_result(cfg, result: dict) -> None:
    with open(os.path.join(cfg.OUTPUT_DIR, f"rank{comm.get_rank()}.json"), "w") as f:
        json.dump(result, f)


def inject_nan(model: torch.nn.Module, trainer: Trainer, iteration: int) -> None:
    """Make ``model``'s mask loss NaN at ``iteration`` (on this process only), inside the model,
    where its loss check sees it."""
    criterion_forward = model.criterion.forward

    def diverge(*args, **kwargs):
        losses = criterion_forward(*args, **kwargs)
        if trainer.iter == iteration:
            losses["loss_mask"] = losses["loss_mask"] * float("nan")
        return losses

    model.criterion.forward = diverge


def main(args):
    cfg = setup(args)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    model = getattr(trainer.model, "module", trainer.model)
    if comm.get_rank() == args.nan_on_rank:
        inject_nan(model, trainer, args.nan_at_iter)
    try:
        trainer.train()
    except NonFiniteLossError as error:
        write_result(cfg, {"rank": comm.get_rank(), "error": str(error),
                           "saves": bool(trainer.checkpointer.save_to_disk)})
        comm.synchronize()
        raise

    record = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[0]
    torch.manual_seed(0)  # flips and point sampling: the same on every rank
    batch = [build_dataset_mapper(cfg, is_train=True)(record)]
    torch.manual_seed(1)
    model.train()
    with torch.no_grad():
        losses = {k: float(v) for k, v in model(batch).items()}
    checksum = float(sum(p.double().abs().sum() for p in model.parameters()))
    write_result(cfg, {
        "rank": comm.get_rank(),
        "world_size": comm.get_world_size(),
        "local_rank": comm.get_local_rank(),
        "losses": losses,
        "param_checksum": checksum,
        "saves": bool(trainer.checkpointer.save_to_disk),
    })


if __name__ == "__main__":
    parser = default_argument_parser()
    parser.add_argument("--nan-on-rank", type=int, default=-1, help="rank whose loss becomes NaN")
    parser.add_argument("--nan-at-iter", type=int, default=-1, help="the iteration it does")
    args = parser.parse_args()
    launch(main, args.num_gpus, args.num_machines, args.machine_rank, args.dist_url, args=(args,))
