"""Run by tests/test_training_recovery.py in a subprocess (not a test module): train with
``hcformer.engine.launch`` in several CPU processes, then let every rank write what it ended with.

    python tests/distributed_probe.py --num-gpus 2 --config-file CONFIG [KEY VALUE ...]

Each rank writes OUTPUT_DIR/rank<r>.json: the losses of one fixed batch under a fixed seed
(equal on every rank only if the weights are), a checksum of the parameters, the world size,
and whether this rank's checkpointer writes files.
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
from hcformer.engine.setup import setup  # noqa: E402
from hcformer.engine.trainer import Trainer  # noqa: E402


def main(args):
    cfg = setup(args)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()

    model = getattr(trainer.model, "module", trainer.model)
    record = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[0]
    torch.manual_seed(0)  # flips and point sampling: the same on every rank
    batch = [build_dataset_mapper(cfg, is_train=True)(record)]
    torch.manual_seed(1)
    model.train()
    with torch.no_grad():
        losses = {k: float(v) for k, v in model(batch).items()}
    checksum = float(sum(p.double().abs().sum() for p in model.parameters()))
    result = {
        "rank": comm.get_rank(),
        "world_size": comm.get_world_size(),
        "local_rank": comm.get_local_rank(),
        "losses": losses,
        "param_checksum": checksum,
        "saves": bool(trainer.checkpointer.save_to_disk),
    }
    with open(os.path.join(cfg.OUTPUT_DIR, f"rank{comm.get_rank()}.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(main, args.num_gpus, args.num_machines, args.machine_rank, args.dist_url, args=(args,))
