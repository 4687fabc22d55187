from .hc_transformer_decoder import (
    TRANSFORMER_DECODER_REGISTRY,
    HCStandardTransformerDecoder,
    HCTransformerDecoder,
    build_transformer_decoder,
)
from .hcformer_head import HCFormerHead
