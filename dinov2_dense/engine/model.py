"""mmengine model wrapper: a frozen backbone under no_grad and a trained head.

``DenseModel`` is a second door to ``heads.DensePredictor``: configs name either a zoo model
(``zoo="dinov2_vits14_ade20k_linear"``) or a backbone, a head class of ``heads`` and the blocks to
read. Its state dict holds ``decode_head.*`` only while the backbone is frozen, so a training
checkpoint is an official-style head file (``load_model(name, weights=checkpoint)`` reads it).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from mmengine.model import BaseModel
from torch import Tensor, nn

import heads
from dinov2_dense.checkpoints import fingerprints, forward_settings, key_mismatches, load_backbone_weights
from dinov2_dense.hub import BACKBONES, load_backbone
from dinov2_dense.models import DinoVisionTransformer
from heads.predictor import DensePredictor
from dinov2_dense.zoo import build_model

from .registry import MODELS

# The released protocols' losses (configs/_base_/models/*.py cite them): mmseg 0.x's cross-entropy,
# averaged over all pixels (avg_non_ignore=False); SigLoss with its 100-iteration warm-up for depth, on
# groups of 2 images (each GPU's of the released runs)
# (the released configs' GradientLoss x0.5 is exactly 0 at their 2 images per GPU:
# configs/_base_/models/depth_linear.py says why).
_DEFAULT_LOSSES = {
    "segmentation": [dict(type="CrossEntropyLoss", ignore_index=255, avg_non_ignore=False)],
    "depth": [dict(type="SigLoss", loss_weight=1.0, warm_up=True, warm_iter=100, group_size=2)],
}


def build_backbone_from_cfg(backbone: str | dict | None, weights: Any = "official",
                            seed: int = 0) -> DinoVisionTransformer:
    """A zoo name (weights found like ``load_backbone``'s), an architecture JSON file (a pretraining
    export's ``backbone.json``), None (the architecture JSON beside the ``weights`` file, as
    ``load_backbone(None, weights=...)`` finds it) or DinoVisionTransformer keyword arguments.
    JSON files are read by ``load_backbone``, so every setting they hold (registers, the position
    embedding's interpolation) is the export's.

    ``weights=None`` gives random weights drawn from ``seed``, so that every command building the
    same config (train, test, resume, another process of a DDP run) gets the same backbone.
    """
    check_backbone_cfg(backbone, weights)
    backbone = str(backbone) if _is_arch_file(backbone) else backbone
    if backbone is None or (isinstance(backbone, str) and weights is not None):
        return load_backbone(backbone, weights=weights)
    if not isinstance(backbone, str) and weights == "official":
        raise ValueError("a backbone given by its settings has no official weights: pass a file or None")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = load_backbone(backbone, weights=None) if isinstance(backbone, str) else DinoVisionTransformer(**backbone)
    if weights is not None:
        load_backbone_weights(model, weights)
    return model.eval()


def _is_arch_file(backbone) -> bool:
    return isinstance(backbone, (str, os.PathLike)) and str(backbone).endswith(".json")


def check_backbone_cfg(backbone, weights) -> None:
    """``model.backbone`` and ``model.backbone_weights`` that can build a backbone, or a one-line error
    naming the keys (before any file is read)."""
    if backbone is None:
        if not isinstance(weights, (str, os.PathLike)) or str(weights) == "official":
            raise ValueError(f"model.backbone=None takes the architecture from the backbone.json beside "
                             f"model.backbone_weights, which is {weights!r}: give model.backbone_weights=FILE (a "
                             "pretraining export), or name the backbone (a zoo name or an architecture JSON)")
    elif _is_arch_file(backbone):
        if not Path(backbone).expanduser().is_file():
            raise FileNotFoundError(f"model.backbone={backbone}: no such architecture file")
        if isinstance(weights, str) and weights == "official":
            raise ValueError(f"model.backbone={backbone}: an architecture file has no official weights; give "
                             "model.backbone_weights=FILE (e.g. the backbone.safetensors beside it), or None for "
                             "random weights")
    elif isinstance(backbone, str) and backbone not in BACKBONES:
        raise KeyError(f"model.backbone={backbone!r}: unknown backbone; give a zoo name ({', '.join(BACKBONES)}), "
                       "an architecture JSON (a pretraining export's backbone.json), or None for the backbone.json "
                       "beside model.backbone_weights")
    elif not isinstance(backbone, (str, Mapping)):
        raise ValueError(f"model.backbone={backbone!r}: give a zoo name, an architecture JSON, None (the "
                         "backbone.json beside model.backbone_weights) or DinoVisionTransformer settings (a dict)")


def _width_source(backbone, weights) -> str:
    """Where the backbone's width comes from, in the config's words (for ``check_head_fits``)."""
    if isinstance(weights, (str, os.PathLike)) and str(weights) != "official":
        return f"the backbone of model.backbone_weights={weights}"
    if isinstance(backbone, Mapping):
        return "the backbone of model.backbone (its embed_dim)"
    return f"model.backbone={backbone}"


def check_head_fits(predictor: DensePredictor, source: str = "the backbone") -> None:
    """Refuse, in one line naming the config's keys, a head that cannot read what the backbone feeds it:
    ``len(predictor.layers)`` inputs (``model.layers``, resolved: sorted, without repeats), each a
    (B, D, h, w) map of the backbone's width D (``embed_dim``), or a (map, (B, D) class token) pair with
    ``model.class_token``. The rule of each head of ``heads``:

    - ``LinearHead``: ``in_channels[j]`` = D for every input it reads (its width before the class token:
      ``use_cls_token`` doubles it inside the head, and needs ``model.class_token=True``; pairs without it
      are refused); every ``in_index`` < the number of layers.
    - ``LinearDepthHead`` (lin.1 / lin.4: the class token concatenated to each map): one ``in_channels``
      entry per layer, each D; ``model.class_token=True``.
    - ``DPTHead``: ``embed_dim`` = D (the readout projects 2D -> D, then D -> each
      ``post_process_channels`` width, which may be any); 4 layers; ``model.class_token=True``.

    Other head classes are not checked. ``source`` says where D comes from (the weights file). A head whose
    inputs a forward pre-hook rearranges (the demo repeats the blocks of a backbone of fewer than 4 for a
    4-input head) is checked for widths only."""
    head, width, n = predictor.decode_head, int(predictor.backbone.embed_dim), len(predictor.layers)
    if head._forward_pre_hooks:  # its inputs are not the layers as given: their number is the hook's to set
        n = len(getattr(head, "in_channels", None) or [None] * 4)
    name = type(head).__name__
    gives = f"{source} gives {width}-wide features"
    layers = f"model.layers resolves to {n} block{'s' if n != 1 else ''} {predictor.layers}"
    if isinstance(head, (heads.LinearDepthHead, heads.DPTHead)) and not predictor.class_token:
        raise ValueError(f"model.head.type={name} reads (map, class token) pairs: set model.class_token=True")
    if isinstance(head, heads.LinearHead):
        if head.use_cls_token != predictor.class_token:
            raise ValueError(
                f"model.head.use_cls_token={head.use_cls_token} but model.class_token={predictor.class_token}: "
                "LinearHead reads (map, class token) pairs with use_cls_token=True and maps without; give both "
                "the same value")
        if max(head.in_index) >= n:
            raise ValueError(f"model.head.in_index={head.in_index} reads more inputs than the backbone gives ({layers}): "
                             f"give indices below {n}, or more model.layers")
        fits = [width] * len(head.in_channels)
        if head.in_channels != fits:
            extra = " (before the class token: use_cls_token doubles it inside the head)" if head.use_cls_token else ""
            raise ValueError(f"model.head.in_channels={head.in_channels} does not fit the backbone: {gives}; "
                             f"LinearHead takes each input map's width{extra}: give model.head.in_channels={fits}")
    elif isinstance(head, heads.LinearDepthHead):
        fits = [width] * n
        if head.in_channels != fits:
            why = (f"{gives}" if len(head.in_channels) == n
                   else f"{layers} and {gives}")
            raise ValueError(f"model.head.in_channels={head.in_channels} does not fit the backbone: {why}; "
                             "LinearDepthHead takes one width per layer, before the class token it concatenates: "
                             f"give model.head.in_channels={fits}")
    elif isinstance(head, heads.DPTHead):
        if n != 4:
            raise ValueError(f"DPTHead reads 4 blocks and {layers}: give model.layers 4 block indices")
        if head.embed_dim != width:
            raise ValueError(f"model.head.embed_dim={head.embed_dim} does not fit the backbone: {gives}; give "
                             f"model.head.embed_dim={width} (post_process_channels may be any 4 widths)")


def _build_from(module, cfg: dict):
    cfg = copy.deepcopy(cfg)
    name = cfg.pop("type")
    cls = getattr(module, name, None)
    if cls is None:
        raise KeyError(f"{module.__name__} has no {name!r}")
    return cls(**cfg)


def _weights_label(backbone, weights, seed: int) -> str:
    """Where a config's backbone weights come from, as checkpoints record it (``meta.backbone.weights``) and
    messages name it: ``"official"`` is named with the backbone's name, and an embedded backbone's
    (``dinov2_dense_tiny``) as embedded: ``"dinov2_vits14 (official weights)"``,
    ``"dinov2_dense_tiny (embedded weights)"``."""
    if weights is None:
        return f"random weights (seed {seed})"
    if isinstance(weights, str) and weights == "official" and isinstance(backbone, str):
        from dinov2_dense.hub import BACKBONES

        spec = BACKBONES.get(backbone)
        return f"{backbone} ({'embedded' if spec is not None and spec.embedded else 'official'} weights)"
    return str(weights)


class TrainingDiverged(ValueError):
    """A training loss became NaN or infinite: the run stops before that step, so nothing of it is written."""


#: What to do about a run that diverged (its loss, or the weights a checkpoint would hold).
DIVERGED_ADVICE = "lower optim_wrapper.optimizer.lr (or set optim_wrapper.clip_grad), or check the data"


def _iteration() -> str:
    from mmengine.logging import MessageHub

    it = MessageHub.get_current_instance().get_info("iter")
    return f" at iteration {it + 1}" if isinstance(it, int) else ""


def _diverged_message(log_vars: Mapping[str, Tensor]) -> str:
    logged = {k: float(v.detach()) for k, v in log_vars.items()}
    values = ", ".join(f"{k} {v:.4g}" for k, v in logged.items() if k != "loss")
    return (f"the loss is {logged['loss']}{_iteration()} ({values}); stopped before this step, so no checkpoint "
            f"holds it: {DIVERGED_ADVICE}")


@MODELS.register_module()
class DenseModel(BaseModel):
    """Backbone + head for mmengine runs (``mode``: "loss", "predict" or "tensor").

    Args:
        zoo: a zoo model name (``dinov2_dense.zoo.MODELS``); its backbone, head and layers are used.
        backbone: a zoo backbone name, an architecture JSON (a pretraining export's ``backbone.json``), None
            (the architecture JSON beside the ``backbone_weights`` file) or DinoVisionTransformer kwargs
            (when ``zoo`` is None).
        backbone_weights: "official", a file, or None (random, drawn from ``backbone_seed``: for tests).
        backbone_seed: seed of a random backbone.
        head: ``dict(type="LinearHead", ...)``: a class of ``heads`` and its arguments.
        task, layers, norm, class_token: as ``heads.DensePredictor``.
        losses: list of ``dict(type=<class in heads.losses>, ...)``; defaults: the protocols' (mmseg's
            cross-entropy averaged over all pixels; SigLoss with warm-up).
        test_cfg: ``DensePredictor.predict`` defaults (mode, crop_size, stride, scales, flip, scale,
            crop_batch_size). With ``zoo``, the keys given replace those of the zoo model's official test
            protocol and the others are kept (``model.test_cfg.crop_batch_size=1`` changes the batching
            only); ``_delete_=True`` among them replaces the protocol whole, as in mmengine configs.
    """

    def __init__(
        self,
        zoo: str | None = None,
        backbone: str | dict | None = "dinov2_vits14",
        backbone_weights: Any = "official",
        head: dict | None = None,
        task: str = "segmentation",
        layers: list[int] | None = None,
        norm: bool = True,
        class_token: bool = False,
        losses: list[dict] | None = None,
        test_cfg: dict | None = None,
        data_preprocessor: dict | None = None,
        init_cfg: dict | None = None,
        backbone_seed: int = 0,
    ):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        replace = False
        if test_cfg is not None:  # at the start of a training run, not at its first validation
            from heads.predictor import check_test_cfg

            test_cfg = dict(test_cfg)
            replace = bool(test_cfg.pop("_delete_", False))
            check_test_cfg(test_cfg, "model.test_cfg")
        if zoo is not None:
            from dinov2_dense.zoo import get_model_spec

            name = get_model_spec(zoo).backbone
            predictor = build_model(zoo, backbone=build_backbone_from_cfg(name, backbone_weights, backbone_seed))
            if test_cfg is not None:  # over the zoo's official protocol, key by key (unless _delete_)
                predictor.test_cfg = dict(test_cfg) if replace else {**predictor.test_cfg, **test_cfg}
                check_test_cfg(predictor.test_cfg, "model.test_cfg")  # a stride beyond the zoo's window, say
        else:
            if head is None or layers is None:
                raise ValueError("DenseModel needs zoo=..., or head=dict(type=...) and layers=[...]")
            predictor = DensePredictor(
                build_backbone_from_cfg(backbone, backbone_weights, backbone_seed), _build_from(heads, head), task=task,
                layers=layers, norm=norm, class_token=class_token, test_cfg=test_cfg,
            )
            # at the start, naming the keys: a head of another width failed at the first step, in its own words
            check_head_fits(predictor, _width_source(backbone, backbone_weights))
        self.task = predictor.task
        self.backbone = predictor.backbone
        self.decode_head = predictor.decode_head
        self._predictor = [predictor]  # a list: not a second registration of the same modules
        self.losses = nn.ModuleList(_build_from(heads, cfg) for cfg in (losses or _DEFAULT_LOSSES[self.task]))
        self._register_state_dict_hook(_drop_frozen_backbone)
        self._register_load_state_dict_pre_hook(_keep_frozen_backbone, with_module=True)
        self.backbone_source = _weights_label(name if zoo is not None else backbone, backbone_weights, backbone_seed)
        self._fingerprint: dict[str, str] | None = None  # fingerprints(backbone); None: to hash (again)
        self.keep_backbone = False  # checkpoints hold a frozen backbone too (one a checkpoint brought)

    @property
    def predictor(self) -> DensePredictor:
        return self._predictor[0]

    def init_weights(self) -> None:
        """Every module is initialised when built and the backbone's weights are loaded then:
        mmengine's ``Runner.train()`` calls this, and it must not re-randomise the frozen backbone."""
        self.backbone.is_init = True
        super().init_weights()

    def backbone_info(self) -> dict[str, str]:
        """Where the backbone's weights came from and their fingerprints (kept in checkpoints'
        ``meta.backbone``): ``sha256`` of the weights as loaded (:func:`~dinov2_dense.checkpoints.fingerprint`)
        and ``features_sha256`` of what they compute (:func:`~dinov2_dense.checkpoints.features_fingerprint`:
        the same for the same weights from an official, timm or Hugging Face file), and the settings that
        change its features without changing a tensor (``forward``:
        :func:`~dinov2_dense.checkpoints.forward_settings`)."""
        if self._fingerprint is None or not self.predictor.freeze_backbone:
            self._fingerprint = fingerprints(self.backbone)
        return {"weights": self.backbone_source, **self._fingerprint, "forward": forward_settings(self.backbone)}

    def head_inputs(self) -> dict:
        """What the head reads of the backbone (kept in checkpoints' ``meta.head_inputs``, which a test or
        a run loading them compares): the blocks, whether through the final norm, and class tokens."""
        predictor = self.predictor
        return {"layers": [int(i) for i in predictor.layers], "norm": bool(predictor.norm),
                "class_token": bool(predictor.class_token)}

    def head_output(self) -> dict:
        """:func:`~dinov2_dense.checkpoints.head_output` of the predictor (kept in checkpoints'
        ``meta.head_output``, which a test or a run loading them compares)."""
        from dinov2_dense.checkpoints import head_output

        return head_output(self.predictor)

    def state_dict_problems(self, state: Mapping[str, Tensor]) -> list[str]:
        """What keeps ``state`` from loading strictly (missing, unexpected, mis-shaped keys); a
        frozen backbone's keys may be absent (head-only checkpoints, official head files)."""
        own = {f"backbone.{k}": v for k, v in self.backbone.state_dict().items()}
        if self.predictor.freeze_backbone and not any(k.startswith("backbone.") for k in state):
            own = {}
        own.update({k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")})
        return key_mismatches(own, state)

    def train(self, mode: bool = True):
        super().train(mode)
        self.predictor.train(mode)  # keeps the frozen backbone in eval mode
        return self

    def forward(self, inputs: Tensor, data_samples: list[dict] | None = None, mode: str = "tensor"):
        if mode == "loss":
            return self.loss(inputs, data_samples)
        if mode == "predict":
            return self.predict(inputs, data_samples)
        return self.predictor(inputs)

    def parse_losses(self, losses: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """mmengine's, with the logged values averaged over the processes of a distributed run, as mmseg 0.x
        (the released protocols' code) logged them: mmengine logs process 0's alone, the loss of its part of the
        batch (a reviewer's 2-process run logged 0.3514 where the processes' mean, and one process on the whole
        batch, gave 0.3362). The loss that is optimised stays each process's own (DDP averages the gradients)."""
        loss, log_vars = super().parse_losses(losses)
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            names = list(log_vars)
            values = torch.stack([log_vars[name].detach().float().reshape(()) for name in names])
            dist.all_reduce(values)
            values /= dist.get_world_size()
            log_vars = type(log_vars)(zip(names, values.unbind()))
        total = log_vars.get("loss")
        if total is not None and not bool(torch.isfinite(total)):  # (the processes' mean: every process stops)
            raise TrainingDiverged(_diverged_message(log_vars))
        return loss, log_vars

    def loss(self, inputs: Tensor, data_samples: list[dict]) -> dict[str, Tensor]:
        key = "seg" if self.task == "segmentation" else "depth"
        target = torch.stack([s[key] for s in data_samples]).to(inputs.device)
        try:
            return self.predictor.head_losses(self.predictor.extract_features(inputs), target, self.losses)
        except heads.losses.LabelRangeError as exc:  # a data set that does not range-check (no classes given)
            raise ValueError(_label_files(exc, data_samples)) from None

    @torch.no_grad()
    def predict(self, inputs: Tensor, data_samples: list[dict] | None = None) -> list[dict]:
        """The official test protocol, predicting at the ground truth's size (test pipelines may
        rescale the image, not the labels; mmseg resizes the logits to it before the softmax)."""
        key = "seg" if self.task == "segmentation" else "depth"
        targets = [s.get(key) for s in data_samples] if data_samples else []
        sizes = {tuple(t.shape[-2:]) for t in targets if t is not None}
        if len(sizes) <= 1:  # the logits of every view go to the ground truth's size before the softmax
            outs = [self.predictor.predict(inputs, out_size=next(iter(sizes), None))]
        else:
            outs = [self.predictor.predict(inputs[i : i + 1], out_size=targets[i].shape[-2:])
                    for i in range(inputs.shape[0])]
        out = torch.cat(outs)
        results = []
        for i in range(out.shape[0]):
            sample = dict(data_samples[i]) if data_samples else {}
            pred = out[i : i + 1]
            target = sample.get(key)
            if self.task == "segmentation":
                sample["pred_sem_seg"] = pred[0].argmax(0)
                if target is not None:
                    sample["gt_sem_seg"] = target
            else:
                sample["pred_depth"] = pred[0, 0]
                if target is not None:
                    sample["gt_depth"] = target.reshape(target.shape[-2:])
            results.append(sample)
        return results


def _label_files(exc, data_samples: list[dict]) -> str:
    """The loss's out-of-range error with the label maps that hold such values (the loss saw only a batch; a data
    set given its classes or num_classes refuses such a map by name as it reads it)."""
    files = [str((data_samples[i].get("meta") or {}).get("target_path") or f"sample {i} of the batch")
             for i in exc.samples]
    return (f"{', '.join(files[:3])}{' ...' if len(files) > 3 else ''}: label values {exc.values} are outside the "
            f"head's {exc.classes} classes (0..{exc.classes - 1}) and are not ignore {exc.ignore_index} (after "
            "augmentation); give the data set its classes or num_classes (each map is then checked as it is read), "
            "or set model.head.num_classes, and check reduce_zero_label")


def _keep_frozen_backbone(module: DenseModel, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
    """A head-only checkpoint leaves the frozen backbone as built (its weights come from the config)."""
    if module.predictor.freeze_backbone and not any(k.startswith(prefix + "backbone.") for k in state_dict):
        for key, value in module.backbone.state_dict().items():
            state_dict[prefix + "backbone." + key] = value


def _drop_frozen_backbone(module: DenseModel, state_dict, prefix: str, local_metadata) -> None:
    """Checkpoints leave a frozen backbone out (the config rebuilds it), unless a loaded checkpoint
    replaced the config's (``keep_backbone``, see ``DenseRunner.load_checkpoint``)."""
    if module.predictor.freeze_backbone and not module.keep_backbone:
        for key in [k for k in state_dict if k.startswith(prefix + "backbone.")]:
            del state_dict[key]
