"""Configuration of ResNet1D_MoE, the space-group classifier for powder XRD patterns.

This file is self-contained (it imports only the standard library, ``transformers`` and, if it is
installed, ``physmoe``) because checkpoints carry a copy of it for ``trust_remote_code=True``
loading where physmoe is not installed.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import re
from typing import Any, ClassVar

from transformers import PretrainedConfig

logger = logging.getLogger(__name__)

__all__ = ["ResNet1DMoEConfig", "RESNET1D_MOE_PRESETS", "CRYSTAL_SYSTEM_FIRST_SPACE_GROUP"]

#: International Tables number of the first space group of each crystal system, in the order of
#: ``physmoe.crystallography.CRYSTAL_SYSTEMS`` (triclinic .. cubic). Repeated here so that
#: inference works without physmoe; a test checks it against ``physmoe.crystallography``.
CRYSTAL_SYSTEM_FIRST_SPACE_GROUP = (1, 3, 16, 75, 143, 168, 195)
NUM_CRYSTAL_SYSTEMS = len(CRYSTAL_SYSTEM_FIRST_SPACE_GROUP)
NUM_SPACE_GROUPS = 230

#: Names of ``physmoe.loss.LOSS_PRESETS`` (repeated so a config validates without physmoe).
LOSS_PRESET_NAMES = (
    "physmoe",
    "physmoe_no_contrast",
    "scheme2",
    "cross_entropy",
    "balanced_softmax",
    "balanced_experts",
)
#: Default ``(tau_min, tau_max)`` of the ``"balanced_experts"`` preset's experts (repeated from
#: ``physmoe.loss.DEFAULT_EXPERT_TAU_RANGE`` so that inference works without physmoe).
BALANCED_EXPERTS_TAU_RANGE = (0.0, 2.0)
RULE_MATRIX_SOURCES = ("physmoe", "operator_cosine")
EXPERT_MODES = ("independent", "shared")
HIERARCHICAL_INFERENCE_MODES = ("soft", "hard", "none")
POOL_TYPES = ("max", "avg", "none")
#: Keyword arguments that PretrainedConfig.__post_init__ consumes or that saved configs carry
#: without being fields; any other keyword that is no field is probably a typo.
_BASE_KWARGS = frozenset(
    {
        "num_labels",
        "torch_dtype",
        "name_or_path",
        "output_attentions",
        "attn_implementation",
        "experts_implementation",
        "per_layer_config",
        "auto_map",
        "model_type",
        "use_cache",  # the Trainer sets config.use_cache = False on every model it trains
    }
)

# The published trunk: 13 residual blocks; max pooling after the first four, average pooling
# (some with one zero of padding) after the rest, taking 8500 points to exactly 1.
_REFERENCE_HIDDEN_SIZES = (32, 32, 64, 128, 128, 256, 256, 512, 512, 1024, 1024, 1024, 1024)
_REFERENCE_POOL_TYPES = ("max",) * 4 + ("avg",) * 9
_REFERENCE_POOL_PADDINGS = (0, 0, 0, 0, 1, 0, 1, 1, 0, 0, 0, 0, 0)

#: Named architectures for :meth:`ResNet1DMoEConfig.from_preset`: only what differs from the
#: defaults (which are the published "reference" architecture).
RESNET1D_MOE_PRESETS: dict[str, dict[str, Any]] = {
    # The published architecture: 8500-point grid, 13 full-resolution-first blocks, one residual
    # stage per expert, 32-d projections (81 M parameters in the public code, 48 M here because
    # the 3-tap convolutions on the length-1 expert input keep only their centre tap).
    "reference": {},
    # Same grid and widths; a stride-2 stem convolution replaces the first 32-channel block at
    # full resolution (the costliest layer in backward) and the experts share one residual stage
    # with 256-d projections (the public work's recommended setting).
    "base": {
        "stem_channels": 32,
        "stem_kernel_size": 7,
        "stem_stride": 2,
        "hidden_sizes": _REFERENCE_HIDDEN_SIZES[1:],
        "pool_types": _REFERENCE_POOL_TYPES[1:],
        "pool_paddings": _REFERENCE_POOL_PADDINGS[1:],
        "dropout_blocks": (8, 9, 10),
        "expert_mode": "shared",
    },
    # Fast on two CPU cores: a 0.02-degree grid (4250 points), a stride-4 stem and a narrow trunk
    # ending at 256 channels; shared expert stage with 64-d projections.
    "small": {
        "num_points": 4250,
        "stem_channels": 32,
        "stem_kernel_size": 9,
        "stem_stride": 4,
        "hidden_sizes": (32, 64, 64, 128, 128, 256, 256),
        "pool_types": ("max", "max", "avg", "avg", "avg", "avg", "avg"),
        "pool_paddings": (0, 0, 1, 0, 1, 1, 0),
        "dropout_blocks": (5,),
        "feature_dim": 256,
        "expert_mode": "shared",
        "projection_dim": 64,
    },
}

_LOSS_OVERRIDE_FIELDS = (
    "lambda_scl",
    "lambda_dol",
    "lambda_col",
    "lambda_hier",
    "lambda_reg",
    "lambda_hnm",
    "tau",
    "contrastive_temperature",
    "rule_threshold",
    "focal_gamma",
    "prior_floor",
    "expert_tau_min",
    "expert_tau_max",
)
_SPACE_GROUP_IN_LABEL = re.compile(r"\((\d{1,3})\)\s*$")


def _default_id2label() -> dict[int, str]:
    """``physmoe.crystallography.ID2LABEL`` ("P2_1/c (14)", ...) or, without physmoe, "SG (n)"."""
    try:
        from physmoe.crystallography import ID2LABEL

        return dict(ID2LABEL)
    except ModuleNotFoundError as error:
        if error.name is None or not error.name.startswith("physmoe"):
            raise
        return {label: f"SG ({label + 1})" for label in range(NUM_SPACE_GROUPS)}


def crystal_system_of_space_group(number: int) -> int:
    """Crystal-system index 0..6 (triclinic .. cubic) of space group ``number`` (1..230)."""
    if not 1 <= number <= NUM_SPACE_GROUPS:
        raise ValueError(f"space-group number must be in 1..230, got {number}")
    return sum(number >= first for first in CRYSTAL_SYSTEM_FIRST_SPACE_GROUP) - 1


def pooled_length(length: int, pool_type: str, padding: int) -> int:
    """Sequence length after one pooling layer (kernel 2, stride 2, ``padding`` zeros per side)."""
    if pool_type == "none":
        return length
    return (length + 2 * padding - 2) // 2 + 1


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int_list(value: Any, name: str) -> list[int]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{name} must be a list of ints, got {type(value).__name__}")
    value = list(value)
    if not all(_is_int(v) for v in value):
        raise TypeError(f"{name} must be a list of ints, got {value}")
    return value


class ResNet1DMoEConfig(PretrainedConfig):
    r"""Configuration of :class:`ResNet1DMoEForSpaceGroupClassification`.

    The defaults are the published architecture (preset ``"reference"``); see
    :meth:`from_preset` for ``"base"`` and ``"small"``. Every argument is validated; bad values
    raise ``ValueError``/``TypeError`` naming the field.

    Input grid (inputs are intensities on this grid, scaled to a maximum of 1; the grid semantics
    are those of ``physmoe.data.grid.TwoThetaGrid``: point ``i`` is ``two_theta_min + i * step``,
    ``step = (two_theta_max - two_theta_min) / num_points``):

    Args:
        two_theta_min (`float`, defaults to 5.0): first grid point, degrees 2θ.
        two_theta_max (`float`, defaults to 90.0): end of the grid (exclusive), degrees 2θ.
        num_points (`int`, defaults to 8500): input length ``L`` (0.01-degree step by default).
        wavelength (`float`, defaults to 1.54056): X-ray wavelength in Å the 2θ axis refers to
            (Cu Kα1).

    Trunk (a 1D ResNet: optional stem, then residual blocks ``1x1 conv (if the width changes) ->
    conv3-BN-LeakyReLU-conv3-BN -> + residual -> LeakyReLU``, each followed by a pooling layer):

    Args:
        input_batch_norm (`bool`, defaults to True): a one-channel BatchNorm on the raw
            intensities (the published model has it).
        stem_channels (`int`, defaults to 0): width of a strided stem convolution
            (conv-BN-LeakyReLU) before the blocks; 0 = no stem (the published model).
        stem_kernel_size (`int`, defaults to 7): odd kernel size of the stem.
        stem_stride (`int`, defaults to 1): stride of the stem.
        hidden_sizes (`list[int]`): output width of every residual block; default the published
            1→32→32→64→128→128→256→256→512→512→1024→1024→1024→1024.
        pool_types (`list[str]`): pooling after each block, ``"max"``, ``"avg"`` (kernel 2,
            stride 2) or ``"none"``; default max after the first four blocks, average after
            the rest.
        pool_paddings (`list[int]`): zero padding (0 or 1) of each pooling layer; average pooling
            counts the padding (PyTorch's default ``count_include_pad``). The default takes 8500
            points to exactly 1.
        dropout_blocks (`list[int]`): indices of the blocks followed by dropout (default 9, 10, 11).
        hidden_dropout_prob (`float`, defaults to 0.1): that dropout probability.
        negative_slope (`float`, defaults to 0.01): LeakyReLU slope.
        feature_dim (`int`, defaults to 1024): pooled feature size ``D``; must equal
            ``hidden_sizes[-1]``. The trunk ends with a global average over what length is left.

    Mixture of experts (rule-guided gating from the crystal-system head):

    Args:
        num_experts (`int`, defaults to 8): ``K``.
        tail_expert_ids (`list[int]`, defaults to [4, 5, 6, 7]): experts trained with the focal
            loss (the PhysMoE loss's tail experts).
        expert_mode (`str`, defaults to "independent"): ``"independent"``: one residual stage
            per expert, per-expert projection and cosine classifier (the spec's original);
            ``"shared"``: one shared residual stage, the crystal-system projection is shared and
            the experts are ``K`` cosine classifiers (the public work's recommended setting).
            The stages act on the pooled ``[B, D]`` features: where the published model applies
            3-tap convolutions to a length-1 sequence only their centre taps see data, so each
            stage is exactly a pair of linear maps with BatchNorm.
        projection_dim (`int`, optional): projection size ``P`` of the crystal-system head and the
            experts; default 32 (independent) or 256 (shared).
        logit_scale (`float`, defaults to 30.0): scale of the cosine classifiers.
        rule_bias_init (`list[list[float]]`, optional): initial ``[7, K]`` rule bias of the gate
            (a trained parameter); default zeros.

    Inference and labels:

    Args:
        hierarchical_inference (`str`, defaults to "soft"): how ``logits`` combine the crystal-
            system head and the gated ensemble. ``"soft"``: log p(sg) = log p(system of sg) +
            log p(sg | system) (per-system softmax of the ensemble); ``"hard"``: the ensemble
            logits with every group outside the predicted crystal system masked (space-group
            accuracy can then never exceed crystal-system accuracy); ``"none"``: the ensemble.
        label_space_groups (`list[int]`, optional): space-group number (1..230) of every label.
            Default: parsed from ``id2label`` names ending in ``"(n)"`` (physmoe's names such as
            ``"P2_1/c (14)"``), else ``1..230`` when there are 230 labels. Needed for the
            hierarchy and the PhysMoE loss when fine-tuning on another label set.
        num_labels / id2label / label2id: 230 space groups by default, named as in
            ``physmoe.crystallography.ID2LABEL``.

    Loss (the ``physmoe.loss`` wrapper the model computes when ``labels`` are given):

    Args:
        loss_preset (`str`, defaults to "physmoe"): a name of ``physmoe.loss.LOSS_PRESETS``:
            ``"physmoe"``, ``"physmoe_no_contrast"``, ``"scheme2"``, ``"cross_entropy"``,
            ``"balanced_softmax"``, ``"balanced_experts"``. ``"balanced_experts"`` (beyond the
            spec; needs ``class_prior``) trains expert ``k`` with ``CE(z_k + tau_k log(prior),
            y)``, ``tau_k`` evenly spaced from ``expert_tau_min`` to ``expert_tau_max``, plus the
            hierarchical, contrastive, centre and HNM terms (``lambda_dol``, ``lambda_hier``,
            ``lambda_scl``, ``lambda_reg``, ``lambda_hnm``; defaults 1, 1, 0.1, 0.001, 0). With it
            the model's ``ensemble_logits`` are the **balanced ensemble**
            ``sum_k g_k z_k + (sum_k g_k tau_k - 1) log(prior)`` (``g`` the gating weights; with a
            uniform gate and mean tau 1 the plain average of the expert logits, BalPoE's rule),
            and ``logits`` apply ``hierarchical_inference`` to it as in the other presets (the
            crystal-system factor of ``"soft"`` / ``"hard"`` is the system head, not re-balanced).
        expert_tau_min, expert_tau_max (`float`, optional): the range of the experts' logit
            adjustments for ``"balanced_experts"``; ``None`` keeps the preset's 0 and 2 (mean 1:
            for K = 8 the taus are 0, 2/7, ..., 2; one expert gets the midpoint).
            :meth:`balanced_expert_taus` gives the values.
        inference_prior_weight (`float`, defaults to 0.0): ``"balanced_experts"`` only: the weight
            ``w`` of the training log prior added back to the balanced ensemble at inference,
            ``... + (sum_k g_k tau_k - 1 + w) log(prior)``. 0 gives the balanced posterior (every
            space group equally likely a priori: best balanced and rare-group accuracy); 1 the
            posterior under the training frequencies (best top-1 when the structures you classify
            follow them, as real ones follow the ICSD's). The same weights serve both; training
            does not depend on it. Must lie in [0, 1].
        lambda_scl, lambda_dol, lambda_col, lambda_hier, lambda_reg, lambda_hnm, tau
            (`float`, optional): explicit loss weights and logit-adjustment strength; ``None``
            keeps the preset's value.
        contrastive_temperature, rule_threshold, focal_gamma, prior_floor (`float`, optional):
            the contrastive temperature (0.07), the rule-similarity positive threshold (0.8), the
            tail experts' focal exponent (2.0) and the floor of zero-count class priors (1e-6);
            ``None`` keeps the loss default.
        detach_ensemble (`bool`, optional): whether the collaboration loss detaches its ensemble
            target (the loss default: True); ``None`` keeps the default.
        rule_matrix (`str`, defaults to "physmoe"): ``"physmoe"``
            (``physmoe.crystallography.rule_similarity_matrix``) or ``"operator_cosine"`` (the
            public reference's matrix, for the ablation).
        class_prior (`list[float]`, optional): ``[num_labels]`` class frequencies (counts or
            probabilities) for logit adjustment (``tau > 0``, ``"balanced_softmax"``).
        hnm_momentum (`float`, defaults to 0.9), hnm_temperature (`float`, defaults to 0.07),
            hnm_k (`int`, defaults to 3): hard-negative miner settings (``hnm_k`` is capped at
            ``num_labels - 1``).
        validate_inputs (`bool`, defaults to True): check inputs for NaN/inf and labels for range
            in every forward: one host sync each, measured at about 15 µs and 5 µs on one CPU core
            at batch 32 (a forward takes ~100 ms); on a GPU the syncs also stall the queue. Skipped
            under ``torch.compile``, and during ``PhysMoETrainer.train`` with a ``PXRDCollator``
            (which checks labels and patterns on the host as it collates). Shapes are always
            checked.
        calibration_temperature (`float`, defaults to 1.0): softmax temperature ``T`` fitted on
            the validation split after training (``physmoe train`` does it): calibrated
            probabilities are ``softmax(logits / T)``. The logits themselves are not changed.
    """

    model_type = "resnet1d_moe"
    keys_to_ignore_at_inference: ClassVar[list[str]] = [
        "expert_logits",
        "features",
        "gating_weights",
        "loss_components",
    ]

    two_theta_min: float | int = 5.0
    two_theta_max: float | int = 90.0
    num_points: int = 8500
    wavelength: float | int = 1.54056

    input_batch_norm: bool = True
    stem_channels: int = 0
    stem_kernel_size: int = 7
    stem_stride: int = 1
    hidden_sizes: list[int] | tuple[int, ...] = _REFERENCE_HIDDEN_SIZES
    pool_types: list[str] | tuple[str, ...] = _REFERENCE_POOL_TYPES
    pool_paddings: list[int] | tuple[int, ...] = _REFERENCE_POOL_PADDINGS
    dropout_blocks: list[int] | tuple[int, ...] = (9, 10, 11)
    hidden_dropout_prob: float | int = 0.1
    negative_slope: float | int = 0.01
    feature_dim: int | None = None

    num_experts: int = 8
    tail_expert_ids: list[int] | tuple[int, ...] = (4, 5, 6, 7)
    expert_mode: str = "independent"
    projection_dim: int | None = None
    logit_scale: float | int = 30.0
    rule_bias_init: list[list[float]] | None = None

    hierarchical_inference: str = "soft"
    label_space_groups: list[int] | None = None

    loss_preset: str = "physmoe"
    lambda_scl: float | int | None = None
    lambda_dol: float | int | None = None
    lambda_col: float | int | None = None
    lambda_hier: float | int | None = None
    lambda_reg: float | int | None = None
    lambda_hnm: float | int | None = None
    tau: float | int | None = None
    contrastive_temperature: float | int | None = None
    rule_threshold: float | int | None = None
    focal_gamma: float | int | None = None
    prior_floor: float | int | None = None
    expert_tau_min: float | int | None = None
    expert_tau_max: float | int | None = None
    inference_prior_weight: float | int = 0.0
    detach_ensemble: bool | None = None
    rule_matrix: str = "physmoe"
    class_prior: list[float] | None = None
    hnm_momentum: float | int = 0.9
    hnm_temperature: float | int = 0.07
    hnm_k: int = 3
    validate_inputs: bool = True
    calibration_temperature: float | int = 1.0

    def __post_init__(self, **kwargs: Any) -> None:
        num_labels = kwargs.get("num_labels")
        if self.id2label is None and num_labels in (None, NUM_SPACE_GROUPS):
            self.id2label = _default_id2label()
            self.label2id = {name: label for label, name in self.id2label.items()}
            kwargs.pop("num_labels", None)
        for name in ("hidden_sizes", "pool_paddings", "dropout_blocks", "tail_expert_ids"):
            setattr(self, name, _int_list(getattr(self, name), name))
        self.pool_types = [str(kind) for kind in self.pool_types]
        if self.label_space_groups is not None:
            self.label_space_groups = _int_list(self.label_space_groups, "label_space_groups")
        if self.class_prior is not None:
            self.class_prior = [float(p) for p in self.class_prior]
        if self.rule_bias_init is not None:
            self.rule_bias_init = [[float(v) for v in row] for row in self.rule_bias_init]
        if self.feature_dim is None and self.hidden_sizes:
            self.feature_dim = self.hidden_sizes[-1]
        if self.projection_dim is None:
            self.projection_dim = 256 if self.expert_mode == "shared" else 32
        self._warn_unknown(kwargs)
        super().__post_init__(**kwargs)
        self._validate()

    def to_diff_dict(self) -> dict[str, Any]:
        """transformers' diff against ``PretrainedConfig()``, always with the labels: a 2-label
        config equals that default's ``id2label`` and would otherwise reload with our 230."""
        diff = super().to_diff_dict()
        full = self.to_dict()
        for key in ("id2label", "label2id"):
            if key in full:
                diff.setdefault(key, full[key])
        return diff

    def _warn_unknown(self, kwargs: dict[str, Any]) -> None:
        """Log a warning for keywords that are no field (PretrainedConfig stores them silently,
        by design, for Hub configs; a typo such as ``tua`` would otherwise have no effect)."""
        fields = sorted(field.name for field in dataclasses.fields(self))
        for name in sorted(set(kwargs) - _BASE_KWARGS - set(fields)):
            if name.startswith("_"):  # private keys saved by transformers (_name_or_path, ...)
                continue
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            logger.warning(
                "%s: unknown field %r%s is stored but not used", type(self).__name__, name, hint
            )

    # -- validation -----------------------------------------------------------------------------

    def _validate(self) -> None:
        self._validate_grid()
        self._validate_trunk()
        self._validate_experts()
        self._validate_loss()
        if not (_is_number(self.calibration_temperature) and self.calibration_temperature > 0):
            raise ValueError(
                "calibration_temperature must be a positive number, "
                f"got {self.calibration_temperature!r}"
            )
        if self.hierarchical_inference not in HIERARCHICAL_INFERENCE_MODES:
            raise ValueError(
                f"hierarchical_inference must be one of {HIERARCHICAL_INFERENCE_MODES}, "
                f"got {self.hierarchical_inference!r}"
            )
        if self.label_space_groups is not None:
            if len(self.label_space_groups) != self.num_labels:
                raise ValueError(
                    f"label_space_groups has {len(self.label_space_groups)} entries "
                    f"but num_labels is {self.num_labels}"
                )
            bad = [n for n in self.label_space_groups if not 1 <= n <= NUM_SPACE_GROUPS]
            if bad:
                raise ValueError(f"label_space_groups must hold numbers 1..230, got {bad[:5]}")
            seen = self.label_space_groups
            repeated = sorted({n for i, n in enumerate(seen) if n in seen[:i]})
            if repeated:
                raise ValueError(f"label_space_groups repeats the space groups {repeated[:5]}")

    def _validate_grid(self) -> None:
        for name in ("two_theta_min", "two_theta_max", "wavelength"):
            if not _is_number(getattr(self, name)):
                raise TypeError(f"{name} must be a finite number, got {getattr(self, name)!r}")
        if not 0.0 <= self.two_theta_min < self.two_theta_max < 180.0:
            raise ValueError(
                f"need 0 <= two_theta_min < two_theta_max < 180 degrees, got "
                f"{self.two_theta_min} and {self.two_theta_max}"
            )
        if not self.wavelength > 0:
            raise ValueError(
                f"wavelength must be a positive number of Angstrom, got {self.wavelength}"
            )
        if not _is_int(self.num_points) or self.num_points < 2:
            raise ValueError(f"num_points must be an integer >= 2, got {self.num_points!r}")

    def _validate_trunk(self) -> None:
        sizes = self.hidden_sizes
        if not sizes or any(size < 1 for size in sizes):
            raise ValueError(
                f"hidden_sizes must be a non-empty list of positive widths, got {sizes}"
            )
        for name in ("pool_types", "pool_paddings"):
            if len(getattr(self, name)) != len(sizes):
                raise ValueError(
                    f"{name} needs one entry per residual block ({len(sizes)}), "
                    f"got {len(getattr(self, name))}"
                )
        bad_types = [kind for kind in self.pool_types if kind not in POOL_TYPES]
        if bad_types:
            raise ValueError(f"pool_types must be in {POOL_TYPES}, got {bad_types}")
        if any(padding not in (0, 1) for padding in self.pool_paddings):
            raise ValueError(f"pool_paddings must be 0 or 1, got {self.pool_paddings}")
        bad_dropout = [i for i in self.dropout_blocks if not 0 <= i < len(sizes)]
        if bad_dropout:
            raise ValueError(
                f"dropout_blocks must index the {len(sizes)} blocks, got {bad_dropout}"
            )
        if not (_is_number(self.hidden_dropout_prob) and 0 <= self.hidden_dropout_prob < 1):
            raise ValueError(
                f"hidden_dropout_prob must lie in [0, 1), got {self.hidden_dropout_prob!r}"
            )
        if not (_is_number(self.negative_slope) and self.negative_slope >= 0):
            raise ValueError(f"negative_slope must be a number >= 0, got {self.negative_slope!r}")
        if not _is_int(self.stem_channels) or self.stem_channels < 0:
            raise ValueError(
                f"stem_channels must be an int >= 0 (0 = no stem), got {self.stem_channels!r}"
            )
        if not _is_int(self.stem_stride) or self.stem_stride < 1:
            raise ValueError(f"stem_stride must be an int >= 1, got {self.stem_stride!r}")
        if (
            not _is_int(self.stem_kernel_size)
            or self.stem_kernel_size < 1
            or self.stem_kernel_size % 2 == 0
        ):
            raise ValueError(
                f"stem_kernel_size must be an odd int >= 1, got {self.stem_kernel_size!r}"
            )
        if self.stem_channels == 0 and self.stem_stride != 1:
            raise ValueError("stem_stride > 1 needs a stem: set stem_channels > 0")
        if self.feature_dim != sizes[-1]:
            raise ValueError(
                f"feature_dim ({self.feature_dim}) must equal the last block width "
                f"hidden_sizes[-1] ({sizes[-1]})"
            )
        lengths = self.block_lengths()
        if lengths[-1][1] < 1:
            raise ValueError(
                f"the trunk pools {self.num_points} input points below length 1 "
                f"(lengths {[out for _, out in lengths]}); "
                "use fewer pooling layers or a longer grid"
            )

    def _validate_experts(self) -> None:
        if not _is_int(self.num_experts) or self.num_experts < 1:
            raise ValueError(f"num_experts must be an int >= 1, got {self.num_experts!r}")
        tail = self.tail_expert_ids
        if len(set(tail)) != len(tail) or any(not 0 <= i < self.num_experts for i in tail):
            raise ValueError(
                "tail_expert_ids must be distinct expert indices in "
                f"0..{self.num_experts - 1}, got {tail}"
            )
        if self.expert_mode not in EXPERT_MODES:
            raise ValueError(f"expert_mode must be one of {EXPERT_MODES}, got {self.expert_mode!r}")
        if not _is_int(self.projection_dim) or self.projection_dim < 1:
            raise ValueError(f"projection_dim must be an int >= 1, got {self.projection_dim!r}")
        if not (_is_number(self.logit_scale) and self.logit_scale > 0):
            raise ValueError(f"logit_scale must be a number > 0, got {self.logit_scale!r}")
        if self.rule_bias_init is not None:
            shape = (len(self.rule_bias_init), {len(row) for row in self.rule_bias_init})
            if shape != (NUM_CRYSTAL_SYSTEMS, {self.num_experts}):
                raise ValueError(
                    f"rule_bias_init must be [7, num_experts={self.num_experts}] "
                    f"(one row per crystal system), got {len(self.rule_bias_init)} rows "
                    f"of lengths {shape[1]}"
                )

    def _validate_loss(self) -> None:
        if self.loss_preset not in LOSS_PRESET_NAMES:
            raise ValueError(
                f"loss_preset must be one of {LOSS_PRESET_NAMES}, got {self.loss_preset!r}"
            )
        if self.rule_matrix not in RULE_MATRIX_SOURCES:
            raise ValueError(
                f"rule_matrix must be one of {RULE_MATRIX_SOURCES}, got {self.rule_matrix!r}"
            )
        for name in _LOSS_OVERRIDE_FIELDS:
            value = getattr(self, name)
            if value is not None and not (_is_number(value) and value >= 0):
                raise ValueError(
                    f"{name} must be None (preset value) or a finite number >= 0, got {value!r}"
                )
        if self.detach_ensemble is not None and not isinstance(self.detach_ensemble, bool):
            raise TypeError(f"detach_ensemble must be None or a bool, got {self.detach_ensemble!r}")
        for name in ("contrastive_temperature", "hnm_temperature", "prior_floor"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if not (_is_number(self.hnm_momentum) and 0 <= self.hnm_momentum <= 1):
            raise ValueError(f"hnm_momentum must lie in [0, 1], got {self.hnm_momentum!r}")
        if not _is_int(self.hnm_k) or self.hnm_k < 1:
            raise ValueError(f"hnm_k must be an int >= 1, got {self.hnm_k!r}")
        if self.num_labels is None or self.num_labels < 2:
            raise ValueError(f"num_labels must be >= 2, got {self.num_labels}")
        if not (_is_number(self.inference_prior_weight) and 0 <= self.inference_prior_weight <= 1):
            raise ValueError(
                f"inference_prior_weight must lie in [0, 1], got {self.inference_prior_weight!r}"
            )
        if self.inference_prior_weight and self.loss_preset != "balanced_experts":
            raise ValueError(
                f"inference_prior_weight={self.inference_prior_weight!r} applies to "
                "loss_preset='balanced_experts' "
                "only (the other presets' ensembles already carry the training prior), "
                f"got {self.loss_preset!r}"
            )
        low, high = self._expert_tau_range()
        if low > high:
            raise ValueError(f"expert_tau_min ({low}) must not exceed expert_tau_max ({high})")
        if self.class_prior is not None:
            prior = self.class_prior
            if len(prior) != self.num_labels:
                raise ValueError(
                    f"class_prior has {len(prior)} entries, num_labels is {self.num_labels}"
                )
            if not all(_is_number(p) and p >= 0 for p in prior) or not sum(prior) > 0:
                raise ValueError(
                    "class_prior must hold finite non-negative counts or probabilities "
                    "with a positive sum"
                )

    # -- derived quantities ---------------------------------------------------------------------

    def block_lengths(self) -> list[tuple[int, int]]:
        """Sequence length (in, out) of every residual block's pooling layer, stem included."""
        length = self.num_points
        if self.stem_channels:
            length = (length - 1) // self.stem_stride + 1  # padding = kernel // 2
        lengths = []
        for pool_type, padding in zip(self.pool_types, self.pool_paddings, strict=True):
            pooled = pooled_length(length, pool_type, padding)
            lengths.append((length, pooled))
            length = pooled
        return lengths

    @property
    def space_group_numbers(self) -> list[int] | None:
        """Space-group number (1..230) of every label, or ``None`` if it cannot be told.

        ``label_space_groups`` if set; else parsed from ``id2label`` names ending in ``"(n)"``;
        else ``1..230`` when there are exactly 230 labels.
        """
        num_labels = self.num_labels
        if self.label_space_groups is not None:
            if len(self.label_space_groups) != num_labels:
                raise ValueError(
                    f"label_space_groups has {len(self.label_space_groups)} entries "
                    f"but num_labels is {num_labels}"
                )
            return list(self.label_space_groups)
        numbers = []
        for label in range(num_labels):
            match = _SPACE_GROUP_IN_LABEL.search(str(self.id2label.get(label, "")))
            if match is None or not 1 <= int(match.group(1)) <= NUM_SPACE_GROUPS:
                numbers = None
                break
            numbers.append(int(match.group(1)))
        if numbers is None and num_labels == NUM_SPACE_GROUPS:
            numbers = list(range(1, NUM_SPACE_GROUPS + 1))
        return numbers

    @property
    def label_crystal_systems(self) -> list[int] | None:
        """Crystal-system index 0..6 of every label (``None`` if the space groups are unknown)."""
        numbers = self.space_group_numbers
        return None if numbers is None else [crystal_system_of_space_group(n) for n in numbers]

    @property
    def feat_dim(self) -> int:
        """Alias of ``feature_dim`` (the name ``physmoe.loss`` reads)."""
        return self.feature_dim

    def _expert_tau_range(self) -> tuple[float, float]:
        low, high = BALANCED_EXPERTS_TAU_RANGE
        if self.expert_tau_min is not None:
            low = float(self.expert_tau_min)
        if self.expert_tau_max is not None:
            high = float(self.expert_tau_max)
        return low, high

    def balanced_expert_taus(self) -> list[float]:
        """The ``"balanced_experts"`` preset's per-expert logit adjustments ``tau_k``:
        ``tau_min + (tau_max - tau_min) * k / (K - 1)`` (the midpoint for one expert), the same
        values as ``physmoe.loss.expert_taus``."""
        low, high = self._expert_tau_range()
        if self.num_experts == 1:
            return [(low + high) / 2.0]
        return [low + (high - low) * k / (self.num_experts - 1) for k in range(self.num_experts)]

    def loss_overrides(self) -> dict[str, float | bool]:
        """The explicitly set loss settings, as keyword arguments of ``physmoe.loss.build_loss``."""
        renamed = {
            "contrastive_temperature": "temperature",
            "focal_gamma": "gamma",
            "expert_tau_min": "tau_min",
            "expert_tau_max": "tau_max",
        }
        overrides: dict[str, float | bool] = {
            renamed.get(name, name): float(getattr(self, name))
            for name in _LOSS_OVERRIDE_FIELDS
            if getattr(self, name) is not None
        }
        if self.detach_ensemble is not None:
            overrides["detach_ensemble"] = bool(self.detach_ensemble)
        return overrides

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ResNet1DMoEConfig:
        """A configuration from a named preset (``"reference"``, ``"base"``, ``"small"``) with
        ``overrides`` applied, e.g. ``from_preset("small", num_points=1024)``."""
        if name not in RESNET1D_MOE_PRESETS:
            raise ValueError(
                f"unknown preset {name!r}; choose one of {sorted(RESNET1D_MOE_PRESETS)}"
            )
        return cls(**{**RESNET1D_MOE_PRESETS[name], **overrides})


__all__ += ["crystal_system_of_space_group", "pooled_length"]
