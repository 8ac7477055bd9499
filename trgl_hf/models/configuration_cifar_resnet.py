"""Configuration of the CIFAR-style ResNet (He et al. 2016, CIFAR variant, option-A shortcuts).

Self-contained (transformers only): copied next to checkpoints that load with `trust_remote_code`.
"""

from typing import ClassVar

from transformers import PreTrainedConfig


class CifarResNetConfig(PreTrainedConfig):
    r"""
    Configuration of a [`CifarResNetModel`] or [`CifarResNetForImageClassification`]: the CIFAR variant of ResNet
    (ResNet-20/32/44/56/110 of He et al., 2016) with a 3x3 stem without max-pooling and parameter-free "option A"
    shortcuts (strided subsampling and zero-padding of the channels). The defaults give ResNet-20.

    The module layout mirrors transformers' [`ResNetConfig`] models (`embedder`, `encoder.stages[i].layers[j]`,
    `shortcut`, `layer`, `pooler`, `classifier`), so code that walks an HF ResNet can walk this one.

    Args:
        num_channels (`int`, *optional*, defaults to 3):
            The number of input channels.
        embedding_size (`int`, *optional*, defaults to 16):
            Number of output channels of the stem (a 3x3 convolution, batch norm and activation).
        hidden_sizes (`list[int]`, *optional*, defaults to `[16, 32, 64]`):
            Number of channels of each stage. Option-A shortcuts can only widen, so the sizes must not decrease (and
            the first one must be at least `embedding_size`).
        depths (`list[int]`, *optional*, defaults to `[3, 3, 3]`):
            Number of basic blocks of each stage (`n` for ResNet-`6n+2`). A stage may have 0 blocks only when all the
            following stages also have 0 blocks; such stages are skipped (truncated models). Stage lists may also be
            shorter than three entries, e.g. `depths=[3, 1], hidden_sizes=[16, 32]`.
        hidden_act (`str`, *optional*, defaults to `"relu"`):
            The non-linear activation function of each block and of the stem (a key of `transformers.ACT2FN`).
        layer_type (`str`, *optional*, defaults to `"basic"`):
            The block type; only `"basic"` (two 3x3 convolutions) is supported.
        downsample_in_first_stage (`bool`, *optional*, defaults to `False`):
            If `True`, the first block of the first stage downsamples its input with a stride of 2. Every later stage
            always starts with a stride-2 block.
        image_size (`int`, *optional*, defaults to 32):
            The size (resolution) of the input images (informative; the network accepts any size).

    Example:

    ```python
    >>> from trgl_hf.models.configuration_cifar_resnet import CifarResNetConfig
    >>> from trgl_hf.models.modeling_cifar_resnet import CifarResNetForImageClassification

    >>> config = CifarResNetConfig.from_depth(56, num_labels=10)
    >>> config.depths
    [9, 9, 9]
    >>> model = CifarResNetForImageClassification(config)
    ```
    """

    model_type = "cifar_resnet"
    layer_types: ClassVar[list[str]] = ["basic"]

    num_channels: int = 3
    embedding_size: int = 16
    hidden_sizes: list[int] | tuple[int, ...] = (16, 32, 64)
    depths: list[int] | tuple[int, ...] = (3, 3, 3)
    hidden_act: str = "relu"
    layer_type: str = "basic"
    downsample_in_first_stage: bool = False
    image_size: int = 32

    def __post_init__(self, **kwargs):
        self.hidden_sizes = list(self.hidden_sizes)
        self.depths = list(self.depths)
        self._check_architecture()
        super().__post_init__(**kwargs)

    def _check_architecture(self) -> None:
        """Raise a `ValueError` if the fields do not describe a buildable CIFAR ResNet."""
        if self.layer_type not in self.layer_types:
            raise ValueError(f"layer_type={self.layer_type!r} is not supported; use one of {self.layer_types}.")
        if len(self.depths) != len(self.hidden_sizes):
            raise ValueError(
                f"depths ({self.depths}) and hidden_sizes ({self.hidden_sizes}) must have the same length "
                "(one entry per stage)."
            )
        if any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in self.depths):
            raise ValueError(f"depths must be non-negative integers, got {self.depths}.")
        if sum(self.depths) < 1:
            raise ValueError(f"The model needs at least one block in total, got depths={self.depths}.")
        num_stages = self.num_nonempty_stages
        if any(d > 0 for d in self.depths[num_stages:]):
            raise ValueError(
                f"A stage may have 0 blocks only if all later stages also have 0 blocks, got depths={self.depths}."
            )
        sizes = [self.embedding_size, *self.hidden_sizes[:num_stages]]
        if any(isinstance(s, bool) or not isinstance(s, int) or s <= 0 for s in sizes):
            raise ValueError(
                f"embedding_size and hidden_sizes must be positive integers, got {self.embedding_size} and "
                f"{self.hidden_sizes}."
            )
        if any(b < a for a, b in zip(sizes, sizes[1:])):
            raise ValueError(
                "Option-A (zero-padding) shortcuts cannot reduce the channel count: embedding_size and the "
                f"hidden_sizes of the non-empty stages must not decrease, got {sizes}."
            )

    @property
    def num_nonempty_stages(self) -> int:
        """Number of leading stages with at least one block (the stages the model actually builds)."""
        count = 0
        for depth in self.depths:
            if depth <= 0:
                break
            count += 1
        return count

    @property
    def output_channels(self) -> int:
        """Number of channels of the model's last feature map (`hidden_sizes` of the last non-empty stage)."""
        return self.hidden_sizes[self.num_nonempty_stages - 1]

    @classmethod
    def from_depth(cls, depth: int, **kwargs) -> "CifarResNetConfig":
        """
        Build the configuration of the CIFAR ResNet-`depth` of He et al. (2016): three stages of 16, 32 and 64
        channels with `n = (depth - 2) / 6` basic blocks each.

        Args:
            depth (`int`):
                Total number of weighted layers: 20, 32, 44, 56, 110 (any `6n + 2` with `n >= 1`).
            kwargs:
                Other fields of the configuration (e.g. `num_labels=10`); `depths` is set from `depth`.

        Returns:
            [`CifarResNetConfig`]: the configuration.

        Raises:
            ValueError: if `depth` is not of the form `6n + 2` with `n >= 1`, or `depths` is also given.
        """
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(
                f"CIFAR ResNet depth must be 6n + 2 with n >= 1 (e.g. 20, 32, 44, 56, 110), got {depth!r}."
            )
        if "depths" in kwargs:
            raise ValueError("from_depth() sets `depths` from `depth`; do not pass `depths` as well.")
        n = (depth - 2) // 6
        return cls(depths=[n, n, n], **kwargs)


__all__ = ["CifarResNetConfig"]
