"""HCFormer for detectron2. Importing this package registers its models, datasets and mappers."""
from . import data, modeling  # noqa: F401
from .config import add_hcformer_config

__version__ = "0.1.0"
