from .res5_encoder import Res5TransformerEncoder, build_res5_aux
from .resnet import D2HCResNet, HCResNet
from .swin import HCSwin, HCSwinTransformer
