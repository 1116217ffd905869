"""Model zoo: the papers' LeNets and small ResNet/VGG nets for 28x28 inputs."""

from nncompress.models.lenet import LeNet5, LeNet300100
from nncompress.models.registry import MODELS, arch_of, build_model, register_model
from nncompress.models.resnet import ResNet20
from nncompress.models.vgg import SmallVGG

__all__ = [
    "MODELS", "LeNet5", "LeNet300100", "ResNet20", "SmallVGG",
    "arch_of", "build_model", "register_model",
]
