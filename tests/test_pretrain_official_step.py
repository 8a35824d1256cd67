"""One pretraining step of ours (``pretrain.meta_arch.SSLMetaArch``) against the official 2023 DINOv2
training step (``dinov2/train/ssl_meta_arch.py``), both on CPU in float32.

Both are built with the same tiny settings: the embedded ``dinov2_dense_tiny`` backbone (96 wide, 4
blocks, patch 14; trained weights, so that a step that re-randomised or skipped a weight shows) on
84-pixel global and 28-pixel local crops (2 + 2 per image, the local ones through the interpolated
position embedding), iBOT masking on, KoLeo on, drop path off (it draws random numbers), random
3-layer heads. Ours is built first and its weights copied into the official modules by parameter name
(only the heads' weight-norm names differ); the teacher is a perturbed copy of the student, so that
the two roles cannot be swapped unseen. Both get the same collated batch (four photographs cut into
crops by ``pretrain.data.collate``, whose layout is the official one) and teacher temperature, and
these are compared, for softmax centring and Sinkhorn-Knopp, with the iBOT head shared and separate:

- each loss term of the returned dict (DINO on local and on global crops, KoLeo, iBOT) and the total
  that is backpropagated;
- the gradient of every student parameter;
- the optimiser groups of every student parameter (layer-wise lr decay, patch-embed multiplier, no
  weight decay on biases, norms and gammas, the heads' last layers marked);
- the teacher after ``update_teacher(0.992)``;
- the teachers' DINO and iBOT centres after the step (softmax centring).

The official step needs xFormers (CUDA) and FSDP. Here, for the length of each build and step, and
removed after it: a stand-in ``xformers.ops`` in plain torch (a ``BlockDiagonalMask`` and
``memory_efficient_attention`` doing per-sequence softmax attention: the official student runs its
global and local crops as one nested list through it); ``Tensor.cuda`` as the identity; a stand-in
``dinov2.fsdp`` (no resharding, and ``get_fsdp_modules`` handing ``update_teacher`` each part's
parameters, as an FSDP unit would: with plain modules the official update moves nothing); no process
group, so the official iBOT Sinkhorn-Knopp's unconditional all-reduce of the masked-patch count is a
no-op, as it is on one process. ``dinov2.train``'s package (the training loop: torchvision, fvcore)
is not imported: the module is loaded from its file.

Deliberate deviations of ours, documented in ``pretrain.meta_arch`` and the README, not compared:
the student runs its global and local crops as two backbone passes (plain attention) where the
official code nests them; the cell loss (ours, off by default) stays off.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import random
import sys
import types
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

dinov2 = pytest.importorskip("dinov2", reason="the official dinov2 package is the test oracle")
yaml = pytest.importorskip("yaml")
if importlib.util.find_spec("xformers") is not None:  # the official losses would bind its CUDA kernels
    pytest.skip("xFormers is installed: this test runs the official step on its plain-torch stand-in",
                allow_module_level=True)

# The oracle's own deprecation warnings (torch.cuda.amp.autocast, torch.nn.utils.weight_norm).
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*torch.cuda.amp.autocast.*:FutureWarning", "ignore:.*torch.nn.utils.weight_norm.*:FutureWarning"
)

HEAD = dict(head_n_prototypes=256, head_bottleneck_dim=32, head_hidden_dim=64, head_nlayers=3)
IBOT_HEAD = dict(head_n_prototypes=128, head_bottleneck_dim=24, head_hidden_dim=48, head_nlayers=3)
CROPS = dict(global_crops_size=84, local_crops_size=28, local_crops_number=2)
TEACHER_TEMP, MOMENTUM = 0.07, 0.992
LOSSES = ("dino_local_crops_loss", "dino_global_crops_loss", "koleo_loss", "ibot_loss")
# ours -> official parameter names: the heads' last layer (parametrizations.weight_norm vs torch.nn.utils.weight_norm)
_NAMES = {"last_layer.parametrizations.weight.original0": "last_layer.weight_g",
          "last_layer.parametrizations.weight.original1": "last_layer.weight_v"}
CASES = [("centering", False), ("centering", True), ("sinkhorn_knopp", False), ("sinkhorn_knopp", True)]


def official_name(name: str) -> str:
    for ours, theirs in _NAMES.items():
        if name.endswith(ours):
            return name[: -len(ours)] + theirs
    return name


def to_official(state: dict) -> dict:
    return {official_name(k): v for k, v in state.items()}


# --- the stand-ins for what the official step needs beyond torch on a CPU ---------------------------


class BlockDiagonalMask:
    """xFormers' ``fmha.BlockDiagonalMask``, as far as the official code uses it: sequences of the
    given lengths concatenated along dim 1 of a batch of one, each attending only to itself."""

    nested: list[list[int]] = []  # the sequence lengths of each nested backbone pass (from_seqlens)

    def __init__(self, seqlens: list[int]):
        self.seqlens, self._batch_sizes = [int(n) for n in seqlens], None

    @classmethod
    def from_seqlens(cls, q_seqlen, kv_seqlen=None):
        assert kv_seqlen is None
        cls.nested.append(list(q_seqlen))
        return cls(q_seqlen)

    @classmethod
    def from_tensor_list(cls, tensors):
        mask = cls([x.shape[1] for x in tensors for _ in range(x.shape[0])])
        mask._batch_sizes = [x.shape[0] for x in tensors]
        return mask, torch.cat([x.reshape(1, -1, *x.shape[2:]) for x in tensors], dim=1)

    def split(self, x):
        assert x.shape[0] == 1 and x.shape[1] == sum(self.seqlens), (tuple(x.shape), self.seqlens)
        batch_sizes = self._batch_sizes or [1] * len(self.seqlens)
        starts = [sum(batch_sizes[:i]) for i in range(len(batch_sizes) + 1)]
        chunks = [sum(self.seqlens[a:b]) for a, b in zip(starts, starts[1:])]
        return [t.reshape(b, -1, *t.shape[2:]) for b, t in zip(batch_sizes, x.split(chunks, dim=1))]


def _attention(q, k, v):
    """Softmax attention on (B, H, N, d), written out (not torch's scaled_dot_product_attention, which ours uses)."""
    return torch.softmax((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1), dim=-1) @ v


def memory_efficient_attention(q, k, v, attn_bias=None, op=None):
    """xFormers' attention on (B, N, H, d) queries, keys and values; a BlockDiagonalMask splits dim 1."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    if attn_bias is None:
        out = _attention(q, k, v)
    else:
        assert isinstance(attn_bias, BlockDiagonalMask) and q.shape[0] == 1
        parts = zip(*(t.split(attn_bias.seqlens, dim=2) for t in (q, k, v)))
        out = torch.cat([_attention(*p) for p in parts], dim=2)
    return out.transpose(1, 2)


def _xformers_modules() -> dict[str, types.ModuleType]:
    fmha = types.ModuleType("xformers.ops.fmha")
    fmha.BlockDiagonalMask = BlockDiagonalMask
    fmha.MemoryEfficientAttentionFlashAttentionOp = "stand-in"
    fmha.memory_efficient_attention = memory_efficient_attention
    ops = types.ModuleType("xformers.ops")  # no cross_entropy: the official iBOT loss then uses its torch formula
    ops.fmha, ops.memory_efficient_attention, ops.unbind = fmha, memory_efficient_attention, torch.unbind
    root = types.ModuleType("xformers")
    root.ops = ops
    return {"xformers": root, "xformers.ops": ops, "xformers.ops.fmha": fmha}


def _fsdp_module() -> types.ModuleType:
    def unavailable(*args, **kwargs):
        raise AssertionError("FSDP is not used in this test")

    fsdp = types.ModuleType("dinov2.fsdp")
    fsdp.get_fsdp_wrapper = fsdp.ShardedGradScaler = unavailable
    fsdp.get_fsdp_modules = lambda module: [types.SimpleNamespace(params=list(module.parameters()))]
    fsdp.reshard_fsdp_model = lambda module: None
    return fsdp


def official_meta_arch(mp: pytest.MonkeyPatch) -> types.ModuleType:
    """``dinov2.train.ssl_meta_arch``, loaded from its file with the stand-ins in place (``mp`` undoes them)."""
    block = importlib.import_module("dinov2.layers.block")  # imported first: bound to no xFormers outside this test
    attention = importlib.import_module("dinov2.layers.attention")
    vits = importlib.import_module("dinov2.models.vision_transformer")
    ibot = importlib.import_module("dinov2.loss.ibot_patch_loss")
    modules = _xformers_modules()
    for name, module in modules.items():
        mp.setitem(sys.modules, name, module)
    mp.setitem(sys.modules, "dinov2.fsdp", _fsdp_module())
    ops = modules["xformers.ops"]
    for module, names in ((block, ("fmha",)), (attention, ("fmha", "memory_efficient_attention", "unbind"))):
        mp.setattr(module, "XFORMERS_AVAILABLE", True)
        for name in names:
            mp.setattr(module, name, getattr(ops, name), raising=False)
    mp.setattr(block, "attn_bias_cache", {})
    mp.setattr(ibot, "dist", types.SimpleNamespace(all_reduce=lambda *a, **k: None, is_initialized=lambda: False,
                                                   get_world_size=lambda: 1))
    mp.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    block_fn = partial(vits.Block, attn_class=attention.MemEffAttention)  # as the official vit_small & co.
    mp.setattr(vits, "vit_tiny_test", partial(vits.DinoVisionTransformer, embed_dim=96, depth=4, num_heads=3,
                                              mlp_ratio=4, block_fn=block_fn), raising=False)
    path = Path(dinov2.__file__).parent / "train" / "ssl_meta_arch.py"
    spec = importlib.util.spec_from_file_location("_official_ssl_meta_arch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _namespace(d):
    return types.SimpleNamespace(**{k: _namespace(v) for k, v in d.items()}) if isinstance(d, dict) else d


def official_cfg(centering: str, separate_head: bool):
    """The official default config with the tiny settings."""
    cfg = yaml.safe_load((Path(dinov2.__file__).parent / "configs" / "ssl_default_config.yaml").read_text())
    cfg["student"].update(arch="vit_tiny_test", patch_size=14, drop_path_rate=0.0, block_chunks=0)
    cfg["dino"].update(HEAD)
    cfg["ibot"].update(IBOT_HEAD, separate_head=separate_head)
    cfg["crops"].update(CROPS)
    cfg["train"]["centering"] = centering
    cfg["compute_precision"]["grad_scaler"] = False
    return _namespace(cfg)


def our_cfg(centering: str, separate_head: bool) -> dict:
    from pretrain.config import resolve

    return resolve(dict(student=dict(arch="custom", embed_dim=96, depth=4, num_heads=3, drop_path_rate=0.0),
                        dino=dict(HEAD), ibot=dict(IBOT_HEAD, separate_head=separate_head), crops=dict(CROPS),
                        train=dict(centering=centering)))


def batch(seed: int = 0) -> dict:
    """Four photographs, each cut into 2 global and 2 local crops (normalised), collated with iBOT masks."""
    import skimage.data

    from pretrain.data.collate import collate_data_and_cast
    from pretrain.data.masking import MaskingGenerator

    gen = torch.Generator().manual_seed(seed)
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]

    def crop(image, window: int, size: int):
        y, x = (int(torch.randint(0, s - window + 1, (1,), generator=gen)) for s in image.shape[1:])
        patch = image[None, :, y:y + window, x:x + window]
        return F.interpolate(patch, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]

    samples = []
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        image = (torch.from_numpy(getattr(skimage.data, name)()).permute(2, 0, 1).float() / 255 - mean) / std
        samples.append(({"global_crops": [crop(image, 224, 84) for _ in range(2)],
                         "local_crops": [crop(image, 96, 28) for _ in range(2)]}, None))
    side = CROPS["global_crops_size"] // 14
    random.seed(seed)
    return collate_data_and_cast(samples, (0.1, 0.5), 0.5, torch.float32, n_tokens=side * side,
                                 mask_generator=MaskingGenerator(side, max_num_patches=0.5 * side * side))


# --- one step of each ----------------------------------------------------------------------------------


def build_pair(module: types.ModuleType, centering: str, separate_head: bool):
    """Ours (the embedded trained backbone, seeded heads, a perturbed teacher) and the official one with
    the same weights."""
    from dinov2_dense import load_backbone
    from pretrain.meta_arch import SSLMetaArch

    torch.manual_seed(0)
    ours = SSLMetaArch(our_cfg(centering, separate_head))
    trained = load_backbone("dinov2_dense_tiny").state_dict()
    ours.student.backbone.load_state_dict(trained)
    gen = torch.Generator().manual_seed(1)
    teacher = {k: v + 0.05 * v.abs().mean().clamp(min=0.01) * torch.randn(v.shape, generator=gen)
               for k, v in ours.student.state_dict().items()}
    ours.teacher.load_state_dict(teacher)
    theirs = module.SSLMetaArch(official_cfg(centering, separate_head))
    theirs.student.load_state_dict(to_official(ours.student.state_dict()))
    theirs.teacher.load_state_dict(to_official(ours.teacher.state_dict()))
    theirs.need_to_synchronize_fsdp_streams = False  # torch.cuda.synchronize and the FSDP streams: none here
    return ours, theirs


def group_settings(groups, model) -> dict[str, tuple]:
    """(lr_multiplier, wd_multiplier, is_last_layer) of each parameter, by its official name."""
    names = {id(p): official_name(n) for n, p in model.student.named_parameters()}
    return {names[id(p)]: (g["lr_multiplier"], g["wd_multiplier"], g["is_last_layer"]) for g in groups
            for p in g["params"]}


def run_step(model, data: dict, mp: pytest.MonkeyPatch) -> dict:
    """forward_backward (the backpropagated total recorded), then update_teacher: what is compared."""
    totals = []
    backward = torch.Tensor.backward

    def recording_backward(self, *args, **kwargs):
        totals.append(self.detach().clone())
        return backward(self, *args, **kwargs)

    model.train()
    with mp.context() as m:
        m.setattr(torch.Tensor, "backward", recording_backward)
        losses = model.forward_backward(copy.deepcopy(data), teacher_temp=TEACHER_TEMP)
    assert len(totals) == 1
    centres = {}
    for name in ("dino_loss", "ibot_patch_loss"):
        loss = getattr(model, name)
        loss.apply_center_update()  # the step's batch centre is applied at the next centring: apply it now
        centres[name] = loss.center.clone()
    teacher_before = {official_name(n): p.detach().clone() for n, p in model.teacher.named_parameters()}
    model.update_teacher(MOMENTUM)
    return dict(
        losses={k: v.detach().float() for k, v in losses.items()},
        total=totals[0],
        grads={official_name(n): p.grad for n, p in model.student.named_parameters()},
        groups=group_settings(model.get_params_groups(), model),
        teacher_before=teacher_before,
        teacher={official_name(n): p.detach().clone() for n, p in model.teacher.named_parameters()},
        centres=centres,
    )


@pytest.fixture(scope="module", params=CASES, ids=[f"{c}-{'separate' if s else 'shared'}_ibot_head" for c, s in CASES])
def steps(request):
    """(ours, official) results of one step on the same weights and batch."""
    centering, separate_head = request.param
    with pytest.MonkeyPatch.context() as mp:
        module = official_meta_arch(mp)
        ours, theirs = build_pair(module, centering, separate_head)
        data = batch()
        assert int(data["n_masked_patches"]) > 0 and data["upperbound"] >= int(data["n_masked_patches"])
        BlockDiagonalMask.nested.clear()
        results = dict(centering=centering, separate_head=separate_head, ours=run_step(ours, data, mp),
                       official=run_step(theirs, data, mp))
        # the official student ran its 8 global crops (1 + 36 tokens) and 8 local crops (1 + 4) as one nested list
        assert BlockDiagonalMask.nested == [[37] * 8 + [5] * 8]
        return results


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


# --- the comparisons ---------------------------------------------------------------------------------------


def test_loss_terms_equal_the_official(steps):
    ours, official = steps["ours"]["losses"], steps["official"]["losses"]
    assert set(official) == set(LOSSES) and set(LOSSES) <= set(ours)
    for key in LOSSES:
        torch.testing.assert_close(ours[key], official[key], rtol=1e-5, atol=1e-7, msg=lambda m: f"{key}: {m}")
    torch.testing.assert_close(steps["ours"]["total"], steps["official"]["total"], rtol=1e-5, atol=1e-7)


def test_student_gradients_equal_the_official(steps):
    ours, official = steps["ours"]["grads"], steps["official"]["grads"]
    assert ours.keys() == official.keys()
    for name, g in official.items():
        assert g is not None and ours[name] is not None, name
        assert max_rel(ours[name], g) < 1e-4, (name, max_rel(ours[name], g))


def test_param_groups_equal_the_official(steps):
    ours, official = steps["ours"]["groups"], steps["official"]["groups"]
    assert ours.keys() == official.keys()
    for name, (lr, wd, last) in official.items():
        assert ours[name] == (pytest.approx(lr, rel=1e-12), wd, last), name
    # the settings compared are not all trivial: decayed and patch-embed rates, no-decay params, last layers
    assert official["backbone.patch_embed.proj.weight"][0] == pytest.approx(0.2 * 0.9 ** 5)
    assert official["backbone.blocks.0.norm1.weight"][:2] == (pytest.approx(0.9 ** 4), 0.0)
    assert official["dino_head.last_layer.weight_g"] == (1.0, 1.0, True)


def test_teacher_update_equals_the_official(steps):
    ours, official = steps["ours"], steps["official"]
    assert ours["teacher"].keys() == official["teacher"].keys()
    for name, t in official["teacher"].items():
        assert not torch.equal(t, official["teacher_before"][name]), f"{name}: the official update left it"
        torch.testing.assert_close(ours["teacher"][name], t, rtol=1e-6, atol=1e-7, msg=lambda m: f"{name}: {m}")


def test_centres_equal_the_official(steps):
    if steps["centering"] != "centering":
        pytest.skip("Sinkhorn-Knopp keeps no centre")
    for name in ("dino_loss", "ibot_patch_loss"):
        ours, official = steps["ours"]["centres"][name], steps["official"]["centres"][name]
        assert official.abs().max() > 0
        torch.testing.assert_close(ours, official, rtol=1e-5, atol=1e-8, msg=lambda m: f"{name}: {m}")
