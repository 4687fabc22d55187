"""Integer id maps: ``resize_ids`` lives in ``hcformer_deploy.id_maps`` (no detectron2 there),
which the runner of exported models shares; re-exported here for the model and the tools."""
from hcformer_deploy.id_maps import resize_ids

__all__ = ["resize_ids"]
