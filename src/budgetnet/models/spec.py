"""The declarative model spec: one pydantic model that describes every network budgetnet builds.

A spec is data, not code, so the same network can come from a preset, a YAML file or CLI
flags, be counted without building it, be searched over, and be saved next to a checkpoint.
Optional fields left as ``None`` are *derived* (see the ``layer_*`` properties); `resolved()`
writes them out so a saved spec keeps its meaning even if a default changes later.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from budgetnet.errors import BudgetnetError

StageKind = Literal["residual", "conv_pool"]
BlockType = Literal["basic", "bottleneck", "preact", "plain"]
Activation = Literal["relu", "gelu", "silu"]
StemKind = Literal["conv", "whiten"]
ConvInit = Literal["kaiming", "dirac"]

# Inner width of a bottleneck block is channels / BOTTLENECK_EXPANSION (1x1 down, kxk, 1x1 up).
BOTTLENECK_EXPANSION = 4


def _odd_kernel(k: int) -> int:
    if k % 2 == 0:
        raise ValueError(f"kernel {k} is even; same padding needs an odd kernel (1, 3, 5, ...)")
    return k


# Upper bounds far beyond any useful network, so absurd input fails validation at once instead
# of overflowing in torch or building millions of modules.
Width = Annotated[int, Field(gt=0, le=65_536)]
Kernel = Annotated[int, Field(gt=0, le=31), AfterValidator(_odd_kernel)]


class ResNetSpec(BaseModel):
    """A residual network for small images, described layer by layer.

    A *layer* (stage) ``i`` has ``blocks[i]`` residual blocks of width ``channels[i]``.
    ``stage_kinds[i]`` says how the layer enters its width:

    * ``residual``: the classic stride-based stage; its first block applies ``strides[i]`` and
      gets a projection shortcut (kernel ``skip_kernel``) where stride or width changes.
    * ``conv_pool``: a ResNet-9 / airbench stage: conv 3x3 -> MaxPool2d(``strides[i]``) -> BN ->
      activation, then ``blocks[i]`` (possibly 0) identity-skip blocks at that width. Pooling
      before BN is deliberate: BN and the activation then touch 4x fewer elements.

    ``block: plain`` is a single conv-BN-activation with no skip (airbench's second conv of a
    stage); with ``conv_init: dirac`` it starts as an identity map, which is what lets such a
    net train as fast as a residual one without the skip's memory traffic.

    ``stem: whiten`` replaces the stem conv by a frozen ``whiten_kernel`` x ``whiten_kernel``
    patch-whitening conv (no padding) with both signs of each eigenvector, so it has
    ``2 * in_channels * whiten_kernel**2`` outputs; its weights are set from the training
    data's patch covariance before training (`init_whitening`), only its bias trains;
    ``whiten_eps`` caps how much it amplifies the faintest patch directions.

    ``channels`` is always the width a layer *outputs*, for every block type, so counts and
    width fitting mean the same thing for all of them (a bottleneck's inner width is
    ``channels / 4``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    blocks: list[Annotated[int, Field(ge=0, le=1_000)]] = Field(min_length=1, max_length=64)
    channels: list[Width] = Field(min_length=1, max_length=64)
    strides: list[Width] | None = None
    stage_kinds: list[StageKind] | None = None
    block: BlockType = "basic"
    block_kernels: list[Kernel] | None = None
    skip_kernel: Kernel = 1
    stem_width: Width | None = None
    stem_kernel: Kernel = 3
    stem: StemKind = "conv"
    whiten_kernel: int = Field(default=2, ge=1, le=8)
    whiten_eps: float = Field(
        default=5e-4, gt=0.0, lt=1.0, allow_inf_nan=False,
        description="added to each patch-covariance eigenvalue before its 1/sqrt: caps the gain of "
        "the faintest patch directions (airbench's 5e-4)",
    )
    se_ratio: float = Field(
        default=0.0, ge=0.0, le=1.0, allow_inf_nan=False,
        description="squeeze-excitation after every layer: its hidden width as a fraction of the layer's "
        "(0: none). Gates cost ~2 * width**2 * ratio FLOPs an image, next to nothing",
    )
    pool_blur: bool = Field(
        default=False,
        description="conv_pool layers pool anti-aliased (Zhang 2019): the max over each window at stride 1, "
        "then a fixed [1,2,1] x [1,2,1] / 16 blur at the pool's stride (same output size)",
    )
    pool: Width | Literal["global"] = "global"
    pool_op: Literal["avg", "max"] = "avg"
    conv_init: ConvInit = "kaiming"
    bn_momentum: float = Field(default=0.1, gt=0.0, le=1.0, description="PyTorch convention: weight of the new batch")
    bn_eps: float = Field(default=1e-5, gt=0.0, lt=1.0)
    bn_frozen_scale: bool = Field(default=False, description="BN scales fixed at 1; only the shifts train")
    head_bias: bool = True
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    head_scale: float = Field(default=1.0, gt=0.0, allow_inf_nan=False)
    activation: Activation = "relu"
    classes: Width = 10
    input_size: Width = 32
    design_size: Width | None = Field(
        None, description="input side the derived strides are designed for; at another input_size the "
        "first layer's stride scales with it (see layer_strides)",
    )
    in_channels: Width = 3

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    @property
    def layer_kinds(self) -> list[StageKind]:
        return list(self.stage_kinds) if self.stage_kinds is not None else ["residual"] * self.num_layers

    @property
    def layer_strides(self) -> list[int]:
        """Explicit strides, else 1 for the first residual layer and 2 elsewhere.

        A conv_pool layer defaults to 2 even in first place: its whole point is the pool.
        With ``design_size``, the first derived stride is multiplied by the power of two
        nearest ``input_size / design_size`` (never below 1), so every later layer sees the
        feature maps it was designed for: speedrun_2m (design 32) pools 4x in its first layer
        at 64x64 and 1x at 16x16, ending on its 3x3 map at all three sizes.
        """
        if self.strides is not None:
            return list(self.strides)
        strides = [1 if i == 0 and kind == "residual" else 2 for i, kind in enumerate(self.layer_kinds)]
        if self.design_size is not None:
            scale = 2.0 ** round(math.log2(self.input_size / self.design_size))
            strides[0] = max(1, round(strides[0] * scale))
        return strides

    @property
    def kernels(self) -> list[int]:
        """Kernels of the spatial convs inside a block: two for basic/preact, one (the middle
        conv) for bottleneck, whose 1x1 convs are fixed."""
        if self.block_kernels is not None:
            return list(self.block_kernels)
        return [3] if self.block in ("bottleneck", "plain") else [3, 3]

    @property
    def stem_channels(self) -> int:
        if self.stem == "whiten":
            return 2 * self.in_channels * self.whiten_kernel**2
        return self.stem_width if self.stem_width is not None else self.channels[0]

    @property
    def stem_size(self) -> int:
        """Side of the stem's output: a whitening stem is unpadded."""
        return self.input_size - self.whiten_kernel + 1 if self.stem == "whiten" else self.input_size

    @property
    def feature_sizes(self) -> list[int]:
        """Side of the (square) feature map after each layer, at ``input_size``."""
        sizes, side = [], self.stem_size
        for kind, stride in zip(self.layer_kinds, self.layer_strides):
            # Odd-kernel same-padded conv with stride s gives ceil(side/s); MaxPool2d(s) floors.
            side = math.ceil(side / stride) if kind == "residual" else side // stride
            sizes.append(side)
        return sizes

    @property
    def head_features(self) -> int:
        """Inputs of the Linear head: channels times positions left after pooling."""
        final = self.feature_sizes[-1]
        positions = 1 if self.pool == "global" else (final // self.pool) ** 2
        return self.channels[-1] * positions

    def resolved(self) -> ResNetSpec:
        """A copy with every derived field written out (for saving a spec to disk)."""
        return self.model_copy(
            update={
                "strides": self.layer_strides,
                "stage_kinds": self.layer_kinds,
                "block_kernels": self.kernels,
                "stem_width": self.stem_channels,
                # Explicit strides no longer scale; a spec without a design size was designed as is.
                "design_size": self.design_size if self.design_size is not None else self.input_size,
            }
        )

    @model_validator(mode="after")
    def _consistent(self) -> ResNetSpec:
        n = self.num_layers
        for name in ("channels", "strides", "stage_kinds"):
            values = getattr(self, name)
            if values is not None and len(values) != n:
                raise ValueError(
                    f"{name} has {len(values)} entries but blocks has {n}; give one per layer"
                )
        for i, (kind, count) in enumerate(zip(self.layer_kinds, self.blocks)):
            if kind == "residual" and count == 0:
                raise ValueError(
                    f"blocks[{i}] is 0 but a residual layer needs at least one block "
                    "(only conv_pool layers may have 0)"
                )
        want = 1 if self.block in ("bottleneck", "plain") else 2
        if len(self.kernels) != want:
            raise ValueError(
                f"block_kernels has {len(self.kernels)} entries but a {self.block} block has "
                f"{want} spatial conv{'s' if want > 1 else ''}"
            )
        if self.block == "bottleneck":
            for i, c in enumerate(self.channels):
                if c % BOTTLENECK_EXPANSION:
                    raise ValueError(
                        f"channels[{i}] is {c}; bottleneck layers need a multiple of "
                        f"{BOTTLENECK_EXPANSION} (the inner width is channels/{BOTTLENECK_EXPANSION})"
                    )
        if self.stem == "whiten" and self.stem_width is not None and self.stem_width != self.stem_channels:
            raise ValueError(
                f"stem_width {self.stem_width} does not match the whitening stem, which has "
                f"2 * in_channels * whiten_kernel**2 = {self.stem_channels} outputs; leave stem_width out"
            )
        if self.block == "plain" and "residual" in self.layer_kinds:
            raise ValueError(
                "block plain has no skip, so it only goes after a conv_pool layer's pooling; "
                "set stage_kinds to conv_pool or use a basic/preact/bottleneck block"
            )
        if self.stem_size < 1:
            raise ValueError(f"whiten_kernel {self.whiten_kernel} is larger than the {self.input_size}-pixel input")
        sizes = self.feature_sizes
        if sizes[-1] < 1:
            raise ValueError(
                f"strides {self.layer_strides} shrink the {self.input_size}x{self.input_size} "
                "input to nothing; use smaller strides, fewer layers or a larger input_size"
            )
        if self.pool != "global" and self.pool > sizes[-1]:
            raise ValueError(
                f"pool {self.pool} is larger than the final {sizes[-1]}x{sizes[-1]} feature map; "
                "use a pool of at most that size or pool: global"
            )
        return self


def format_validation_error(exc: ValidationError, section: str | None = None) -> str:
    """One line naming every bad field, e.g. ``model.channels[1]: Input should be greater
    than 0 (got 0)``; `section` prefixes paths so the user knows which part of a config."""
    parts = []
    for err in exc.errors():
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
        where = ".".join(p for p in (section, path) if p) or "value"
        if err["type"] in ("extra_forbidden", "unknown_setting"):  # the latter: train/tagged.py's, which says why
            why = err["msg"] if err["type"] == "unknown_setting" else "check the spelling; keys use underscores"
            parts.append(f"unknown key '{where}' ({why})")
            continue
        if err["type"] in ("value_error", "missing"):  # nothing to quote, or already quoted
            parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
            continue
        got = repr(err.get("input"))
        got = got if len(got) <= 40 else got[:37] + "..."
        parts.append(f"{where}: {err['msg']} (got {got})")
    return "; ".join(parts)


def validate_spec(fields: Mapping[str, Any], section: str | None = "model") -> ResNetSpec:
    """`ResNetSpec` from a field mapping, with errors as one-line `BudgetnetError`s."""
    try:
        return ResNetSpec.model_validate(dict(fields))
    except ValidationError as exc:
        raise BudgetnetError(f"invalid model spec: {format_validation_error(exc, section)}") from None


def match_data(fields: Mapping[str, Any], classes: int, input_size: int, data_name: str) -> dict[str, Any]:
    """Spec `fields` with ``classes`` and ``input_size`` taken from the data (`classes`
    classes of `input_size`-pixel images) where they are not set; a one-line `BudgetnetError`
    where they are set to something else, since that model could not train on that data."""
    out = dict(fields)
    if out.setdefault("classes", classes) != classes:
        raise BudgetnetError(
            f"model.classes is {out['classes']} but {data_name} has {classes} classes; leave model.classes out "
            f"(it follows the data) or make it {classes}"
        )
    if out.setdefault("input_size", input_size) != input_size:
        raise BudgetnetError(
            f"model.input_size is {out['input_size']} but the images of {data_name} are {input_size}x{input_size} "
            "(data.input_size, else their own size); leave model.input_size out (it follows the data) or make the "
            "two equal"
        )
    return out
