from .atomic_files import remove_abandoned_temporary_files, write_atomically
from .checkpointer import (
    CheckpointMismatchError,
    CheckpointWriteError,
    HCFormerCheckpointer,
    last_complete_checkpoint,
    read_last_checkpoint,
)
from .resnet_weights import adapt_to_deformable, convert_resnet_state_dict, is_imagenet_resnet
from .conversion import LoadReport, read_state_dict, weights_hint, write_backbone_weights
from .safe_loading import (
    ALLOW_PICKLE_ENV,
    CheckpointFileError,
    PickleNotAllowedError,
    load_checkpoint_file,
    pickle_allowed,
)
from .swin_weights import convert_swin_state_dict, is_imagenet_swin, swin_architecture
