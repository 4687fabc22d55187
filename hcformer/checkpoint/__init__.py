from .checkpointer import HCFormerCheckpointer
from .resnet_weights import adapt_to_deformable, convert_resnet_state_dict, is_imagenet_resnet
from .conversion import LoadReport, read_state_dict, write_backbone_weights
from .swin_weights import convert_swin_state_dict, is_imagenet_swin, swin_architecture
