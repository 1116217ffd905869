"""Model zoo: the papers' LeNets and small ResNet/VGG nets for 28x28 inputs, plus
efficient blocks (depthwise separable, ShuffleNet unit, fire, bottleneck) and small nets
built from them."""

from nncompress.models import hf_arch  # noqa: F401  (registers the tokenizer record)
from nncompress.models.blocks import (
    Bottleneck,
    DepthwiseSeparable,
    Fire,
    ShuffleUnit,
    channel_shuffle,
)
from nncompress.models.efficient import MobileNetSmall, ShuffleNetSmall, SqueezeNetSmall
from nncompress.models.lbcnn import LBConv2d, lbcnn_lenet5  # noqa: F401  (E4; registers the lbconv record)
from nncompress.models.lenet import LeNet5, LeNet300100
from nncompress.models.registry import MODELS, arch_of, build_model, register_model
from nncompress.models.resnet import ResNet20
from nncompress.models.vgg import SmallVGG

__all__ = [
    "MODELS", "LeNet5", "LeNet300100", "ResNet20", "SmallVGG",
    "arch_of", "build_model", "register_model",
    "Bottleneck", "DepthwiseSeparable", "Fire", "MobileNetSmall", "ShuffleNetSmall", "ShuffleUnit",
    "SqueezeNetSmall", "channel_shuffle",
]
