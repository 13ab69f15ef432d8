"""``torch.nn.modules.instancenorm``: instance normalisation and its base."""

from ..layers.sample_norm import (_InstanceNorm, InstanceNorm1d, InstanceNorm2d,  # noqa: F401
                                  InstanceNorm3d)
