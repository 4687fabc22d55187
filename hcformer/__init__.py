"""HCFormer for detectron2. Importing this package registers its models, datasets and mappers."""
__version__ = "0.1.0"
