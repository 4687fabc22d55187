from .clustering import ClusteringLayer
from .deform_conv import ModulatedDeformConv
from .local_clustering import affinity, gather, hard_assignment, scatter
from .position_encoding import PositionEmbeddingSine
