"""Encoder/decoder networks, chosen with `net=NAME` and injected into every model family.

A network is an `nn.Module` built as `Net(image_shape=(C, H, W), latent_dim=D, **its config)`
with two parts:

- `encoder`: images (N, C, H, W) -> features (N, `features`), where `features` is an int
  attribute of the network; each model puts its own head on them (a code, or mu and log sigma^2);
- `decoder`: codes (N, D) -> logits (N, C, H, W), before the model's output activation; its
  last module with a bias (or the network's `output_layer`), one bias per pixel or per channel,
  is the one `model.output_bias=data` sets (aelab.nets.init).

Your own network is one such class in your own module and one YAML in your own config folder
(`# @package model.net`, `_target_: your_module.YourNet`); see the README.
"""

from aelab.nets.conv import ConvNet
from aelab.nets.layers import ACTIVATIONS, activation
from aelab.nets.mlp import MLP
from aelab.nets.resnet import ResNet

__all__ = ["ACTIVATIONS", "MLP", "ConvNet", "ResNet", "activation"]
