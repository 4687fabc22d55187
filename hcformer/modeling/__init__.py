from . import backbone, head  # noqa: F401  (registers backbones, heads, decoders)
from .hierarchy import Hierarchy, LocalGridHierarchy
from .meta_arch import HCFormer
