"""The DINOv2 Vision Transformer (Oquab et al. 2023), official state-dict layout.

Keys: ``cls_token``, ``pos_embed``, ``register_tokens`` (register models, Darcet et al. 2024),
``mask_token``, ``patch_embed.proj``, ``blocks.N.*``, ``norm``. The numerics follow
facebookresearch/dinov2 ``dinov2/models/vision_transformer.py``: position embeddings are
interpolated bicubically in fp32, with the 0.1 scale-factor offset of the original models or the
explicit size and antialiasing of the register models; registers are inserted after the position
embedding, giving the token order ``[cls, registers, patches]``.
"""

from __future__ import annotations

import math
import sys
import numbers
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import Block, Mlp, PatchEmbed, SwiGLUFFNFused


def _fully_sharded(module: nn.Module) -> bool:
    """Whether ``fully_shard`` was applied to ``module``. torch's FSDP package is not imported for
    this (a second of every command's start): a module can only be sharded once it is loaded."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    return fsdp is not None and isinstance(module, getattr(fsdp, "FSDPModule", ()))

FFN_LAYERS = {"mlp": Mlp, "swiglu": SwiGLUFFNFused, "swiglufused": SwiGLUFFNFused}


def interpolate_pos_embed(
    pos_embed: Tensor,
    grid: tuple[int, int],
    interpolate_offset: float = 0.1,
    antialias: bool = False,
) -> Tensor:
    """Resample a (1, 1 + M*M, D) position embedding to a (h0, w0) patch grid.

    Returns (1, 1 + h0*w0, D) in fp32. ``interpolate_offset > 0`` reproduces the original models'
    ``scale_factor=((h0 + offset) / M, (w0 + offset) / M)``; ``0`` uses ``size=(h0, w0)``.
    """
    pos_embed = pos_embed.float()
    n = pos_embed.shape[1] - 1
    m = int(math.sqrt(n))
    if m * m != n:
        raise ValueError(f"pos_embed holds {n} patch positions, which is not a square grid")
    dim = pos_embed.shape[-1]
    h0, w0 = grid
    patch = pos_embed[:, 1:].reshape(1, m, m, dim).permute(0, 3, 1, 2)
    if interpolate_offset:
        scale = (float(h0 + interpolate_offset) / m, float(w0 + interpolate_offset) / m)
        patch = F.interpolate(patch, scale_factor=scale, mode="bicubic", antialias=antialias)
    else:
        patch = F.interpolate(patch, size=(h0, w0), mode="bicubic", antialias=antialias)
    if patch.shape[-2:] != (h0, w0):
        raise RuntimeError(f"position embedding resampled to {tuple(patch.shape[-2:])}, expected {(h0, w0)}")
    patch = patch.permute(0, 2, 3, 1).reshape(1, h0 * w0, dim)
    return torch.cat((pos_embed[:, :1], patch), dim=1)


class _PosEmbedCache:
    """Interpolated position embeddings of a model, most recent last: ``(key, source, value)`` with
    ``source`` a detached alias of the ``pos_embed`` they came from (it keeps that memory allocated,
    so no later tensor can take its address and match the key). Not a module state: a deep copy
    (the EMA teacher of pretraining) or a pickle of the model starts with an empty cache."""

    def __init__(self) -> None:
        self.entries: list[tuple[tuple, Tensor, Tensor]] = []

    def __deepcopy__(self, memo: dict) -> "_PosEmbedCache":
        return _PosEmbedCache()

    def __reduce__(self):
        return (_PosEmbedCache, ())


class DinoVisionTransformer(nn.Module):
    """DINOv2 ViT backbone.

    Args:
        img_size: pretraining resolution; sets the stored position grid (518 -> 37x37 + cls).
        patch_size: 14 for all released models.
        embed_dim, depth, num_heads, mlp_ratio: the architecture.
        init_values: LayerScale init (None or 0: no LayerScale).
        ffn_layer: "mlp" or "swiglufused" (ViT-g).
        num_register_tokens: 0, or 4 for the register models.
        interpolate_antialias, interpolate_offset: position-embedding resampling mode (see above).
        drop_path_rate: stochastic depth, linearly increasing over blocks (or uniform).

    ``pos_embed_cache_size``: how many interpolated position embeddings (grid, device, dtype) are kept
    for calls that cannot send a gradient to ``pos_embed``; 0 turns the cache off.
    """

    pos_embed_cache_size: int = 4

    def __init__(
        self,
        img_size: int = 518,
        patch_size: int = 14,
        in_chans: int = 3,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        ffn_bias: bool = True,
        proj_bias: bool = True,
        drop_path_rate: float = 0.0,
        drop_path_uniform: bool = False,
        init_values: float | None = 1.0,
        ffn_layer: str = "mlp",
        num_register_tokens: int = 0,
        interpolate_antialias: bool = False,
        interpolate_offset: float = 0.1,
    ):
        super().__init__()
        if ffn_layer not in FFN_LAYERS:
            raise ValueError(f"ffn_layer must be one of {sorted(FFN_LAYERS)}, got {ffn_layer!r}")
        if num_register_tokens < 0:
            raise ValueError(f"num_register_tokens must be >= 0, got {num_register_tokens}")
        self.num_features = self.embed_dim = embed_dim
        self.num_tokens = 1
        self.n_blocks = depth
        self.chunked_blocks = False  # the official attribute (blocks are never chunked here)
        self.num_heads = num_heads
        self.patch_size = patch_size
        self.num_register_tokens = num_register_tokens
        self.interpolate_antialias = interpolate_antialias
        self.interpolate_offset = interpolate_offset
        # the LayerScale init the blocks were built with (None: no LayerScale), which arch_kwargs records:
        # the gammas themselves move in training, and a random init rebuilt from the JSON must start here
        self.init_values = float(init_values) if init_values else None
        self._pos_embed_cache = _PosEmbedCache()

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, img_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim)) if num_register_tokens else None
        )
        rates = [drop_path_rate] * depth if drop_path_uniform else np.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                proj_bias=proj_bias,
                ffn_bias=ffn_bias,
                drop_path=rates[i],
                init_values=init_values,
                ffn_layer=FFN_LAYERS[ffn_layer],
            )
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Identity()
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self.init_weights()
        # mmengine's (and mmcv's) BaseModule.init_weights re-initialises every child that has an
        # ``init_weights`` unless it says ``is_init``: Runner.train() would otherwise overwrite the
        # weights loaded into a frozen backbone. Built means initialised; loading replaces that.
        self.is_init = True

    def init_weights(self) -> None:
        """timm ViT init, as the official code: truncated normal (std 0.02) for Linear and pos_embed."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    # -- tokens ---------------------------------------------------------------------------
    def interpolate_pos_encoding(self, x: Tensor, h: int, w: int) -> Tensor:
        """Position embedding for an input of h x w pixels (x: the (B, 1 + N, D) tokens).

        In eval mode, when no gradient can reach ``pos_embed`` (grad mode off, or the parameter
        frozen), the interpolated embedding is cached per grid, device and dtype: the bicubic resampling is slow
        on a GPU for wide models (ViT-L, 640x640 crops padded to 644, batches of 32: 8.2 ms of each
        forward in a profile on an H100). A cached value is the uncached one bit for bit, and is
        used only while ``pos_embed`` is the same memory at the same in-place version
        (``load_state_dict``, an optimiser or EMA step and ``.to()`` all start afresh); never while
        compiling or tracing, nor on a backbone sharded by ``fully_shard``, nor in train mode (a
        teacher updated the DINO v1 way, ``p.data.mul_(m).add_(...)``, bypasses the version
        counter), and :meth:`train` forgets it on the way from train to eval mode. Such writes in eval mode (``pos_embed.data[...] = ...``, or FSDP applied only to
        a module above the backbone) are not seen: call :meth:`clear_pos_embed_cache` after them,
        or set ``pos_embed_cache_size = 0``. The result must not be modified in place.
        """
        pos_embed = self.pos_embed
        n = pos_embed.shape[1] - 1
        if x.shape[1] - 1 == n and h == w:
            return pos_embed
        grid = (h // self.patch_size, w // self.patch_size)
        if not self._pos_embed_cacheable(pos_embed):
            return self._interpolated_pos_embed(pos_embed, grid, x.dtype)
        key = (grid, x.dtype, pos_embed.device, pos_embed.dtype, tuple(pos_embed.shape), pos_embed.stride(),
               pos_embed.data_ptr(), pos_embed._version, self.interpolate_offset, self.interpolate_antialias)
        cache = self._pos_embed_cache
        for i, (k, _, value) in enumerate(cache.entries):
            if k == key:
                cache.entries.append(cache.entries.pop(i))  # most recently used last
                return value
        with torch.inference_mode(False), torch.no_grad():  # a plain tensor, usable outside inference mode
            source = pos_embed.detach()
            value = self._interpolated_pos_embed(source, grid, x.dtype)
        cache.entries.append((key, source, value))
        del cache.entries[: -self.pos_embed_cache_size]
        return value

    def _interpolated_pos_embed(self, pos_embed: Tensor, grid: tuple[int, int], dtype: torch.dtype) -> Tensor:
        pos = interpolate_pos_embed(pos_embed, grid, self.interpolate_offset, self.interpolate_antialias)
        return pos.to(dtype)

    def _pos_embed_cacheable(self, pos_embed: Tensor) -> bool:
        """Whether an interpolated ``pos_embed`` may come from the cache: eval mode, no gradient to
        it, not while compiling or tracing (the graph would hold a constant), and not under FSDP (which
        refills the gathered parameter with its version counter kept) or for a view of another
        tensor (e.g. a flat parameter)."""
        return (
            not torch.compiler.is_compiling()
            and self.pos_embed_cache_size > 0
            and not self.training
            and not (torch.is_grad_enabled() and pos_embed.requires_grad)
            and not torch.jit.is_tracing()
            and not _fully_sharded(self)
            and not pos_embed._is_view()
        )

    def clear_pos_embed_cache(self) -> None:
        """Forget the cached interpolated position embeddings (see :meth:`interpolate_pos_encoding`)."""
        self._pos_embed_cache.entries.clear()

    def train(self, mode: bool = True):
        if self.training and not mode:
            # into eval mode from train mode, where weights may have been written through .data (a teacher updated
            # the DINO v1 way) unseen by the cache: whatever it kept from an earlier eval-mode spell is forgotten
            # (a diff review: features 3.64 off after extract_features, a .data update and eval())
            self.clear_pos_embed_cache()
        return super().train(mode)

    def _apply(self, fn, recurse: bool = True):
        # .to(), .cuda(), .half(), ...: the cached values (and the memory they keep) belong to the old weights
        self.clear_pos_embed_cache()
        return super()._apply(fn, recurse)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_pos_embed_cache", _PosEmbedCache())  # a model pickled before the cache

    def prepare_tokens_with_masks(self, x: Tensor, masks: Tensor | None = None) -> Tensor:
        """(B, 3, H, W) image -> (B, 1 + R + N, D) tokens; ``masks`` (B, N) bool swaps in mask_token."""
        _, _, h, w = x.shape
        x = self.patch_embed(x.to(self.patch_embed.proj.weight.dtype))  # float32 images into bf16/fp16 weights too
        if masks is not None:
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.interpolate_pos_encoding(x, h, w)
        if self.register_tokens is not None:
            x = torch.cat((x[:, :1], self.register_tokens.expand(x.shape[0], -1, -1), x[:, 1:]), dim=1)
        return x

    # -- forward --------------------------------------------------------------------------
    def _output_dict(self, x: Tensor, masks: Tensor | None) -> dict[str, Tensor | None]:
        x_norm = self.norm(x)
        r = self.num_register_tokens
        return {
            "x_norm_clstoken": x_norm[:, 0],
            "x_norm_regtokens": x_norm[:, 1 : r + 1],
            "x_norm_patchtokens": x_norm[:, r + 1 :],
            "x_prenorm": x,
            "masks": masks,
        }

    def forward_features(self, x: Tensor | list[Tensor], masks: Tensor | list | None = None):
        """Official output dict; a list of images (e.g. multi-crop) gives a list of dicts."""
        if isinstance(x, list):
            masks_list = masks if masks is not None else [None] * len(x)
            return [self.forward_features(xi, mi) for xi, mi in zip(x, masks_list)]
        x = self.prepare_tokens_with_masks(x, masks)
        for block in self.blocks:
            x = block(x)
        return self._output_dict(x, masks)

    def arch_kwargs(self) -> dict:
        """The keyword arguments that rebuild this architecture (``DinoVisionTransformer(**kwargs)``):
        what a pretraining export's ``backbone.json`` holds and ``load_backbone`` reads. The biases
        (``qkv_bias``, ``proj_bias``, ``ffn_bias``) are named only where a layer has none (all have in
        DINOv2), so the files of models with them stay as they were."""
        block = self.blocks[0]
        mlp = block.mlp
        ffn = "swiglufused" if hasattr(mlp, "w12") else "mlp"
        hidden = mlp.w3.in_features if ffn == "swiglufused" else mlp.fc1.out_features
        biases = dict(qkv_bias=block.attn.qkv.bias is not None, proj_bias=block.attn.proj.bias is not None,
                      ffn_bias=(mlp.w12 if ffn == "swiglufused" else mlp.fc1).bias is not None)
        return {k: False for k, v in biases.items() if not v} | dict(img_size=int(self.patch_embed.img_size[0]) if hasattr(self.patch_embed, "img_size") else None,
                    patch_size=int(self.patch_size), embed_dim=int(self.embed_dim), depth=len(self.blocks),
                    num_heads=int(self.num_heads), mlp_ratio=hidden / self.embed_dim if ffn == "mlp" else 4.0,
                    ffn_layer=ffn, num_register_tokens=int(self.num_register_tokens),
                    interpolate_antialias=bool(self.interpolate_antialias),
                    interpolate_offset=float(self.interpolate_offset),
                    init_values=self._layerscale_init(block))

    def _layerscale_init(self, block: nn.Module) -> float | None:
        """The LayerScale init this model was built with (None: no LayerScale). A model unpickled from
        before it was kept says 1.0 where it has LayerScale (the official hub's value, what was written then)."""
        if not hasattr(block, "ls1") or isinstance(block.ls1, nn.Identity):
            return None
        return self.__dict__.get("init_values", 1.0) or 1.0

    def resolve_layers(self, layers: int | Sequence[int] | None) -> list[int]:
        """Block indices, sorted and unique, from ``None`` (the last block), an int ``n`` (the last n
        blocks, as the official ``get_intermediate_layers``) or indices (negative count from the end).
        The one resolver of the toolkit: features, heads and the official API all use it."""
        depth = len(self.blocks)
        if layers is None:
            return [depth - 1]
        if isinstance(layers, numbers.Integral):
            n = int(layers)
            if not 1 <= n <= depth:
                raise ValueError(f"layers={n}: an int takes the last n blocks, and this model has {depth}")
            return list(range(depth - n, depth))
        chosen = list(layers)
        if not chosen:
            raise ValueError("layers=[]: give at least one block index (or None for the last block)")
        out: set[int] = set()
        for i in chosen:
            j = int(i) + depth if int(i) < 0 else int(i)
            if not 0 <= j < depth:
                raise ValueError(f"layer {i} out of range: this model has {depth} blocks (0..{depth - 1}, or -1..-{depth})")
            out.add(j)
        return sorted(out)

    def forward_layers(self, x: Tensor, layers: Sequence[int], norm: bool = True) -> list[Tensor]:
        """Full token sequences (B, 1 + R + N, D) after the given blocks, in block order.

        Stops after the last block needed; ``norm`` applies the final LayerNorm to each.
        """
        wanted = set(layers)
        tokens = self.prepare_tokens_with_masks(x)
        outputs = []
        last = max(wanted)
        for i, block in enumerate(self.blocks):
            tokens = block(tokens)
            if i in wanted:
                outputs.append(self.norm(tokens) if norm else tokens)
            if i == last:
                break  # later blocks cannot change the outputs
        return outputs

    def intermediate_maps(
        self, x: Tensor, layers: int | Sequence[int] | None, norm: bool = True
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Per chosen block (in block order): patch maps (B, D, h, w), class tokens (B, D) and
        register tokens (B, R, D). ``x`` (B, 3, H, W) must be a multiple of the patch size.
        The one image-to-features routine: ``extract_features``, the heads' predictor and
        ``get_intermediate_layers`` all go through it."""
        tokens = self.forward_layers(x, self.resolve_layers(layers), norm=norm)
        b, _, h, w = x.shape
        r, p = self.num_register_tokens, self.patch_size
        maps = [t[:, 1 + r :].reshape(b, h // p, w // p, -1).permute(0, 3, 1, 2) for t in tokens]
        return maps, [t[:, 0] for t in tokens], [t[:, 1 : 1 + r] for t in tokens]

    def get_intermediate_layers(
        self,
        x: Tensor,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ):
        """Outputs of chosen blocks, as the official method.

        ``n``: an int takes the last n blocks, a sequence takes those block indices (in block
        order; negative ones count from the end). Returns a tuple of (B, N, D) patch tokens, or
        (B, D, h, w) maps with ``reshape``; with ``return_class_token`` a tuple of
        (patch_tokens, (B, D) class token) pairs. Class and register tokens are dropped from the
        patch outputs.
        """
        maps, class_tokens, _ = self.intermediate_maps(x, n, norm=norm)
        if reshape:
            patches = [m.contiguous() for m in maps]
        else:
            patches = [m.flatten(2).transpose(1, 2) for m in maps]
        if return_class_token:
            return tuple(zip(patches, class_tokens))
        return tuple(patches)

    def forward(self, *args, is_training: bool = False, **kwargs):
        ret = self.forward_features(*args, **kwargs)
        return ret if is_training else self.head(ret["x_norm_clstoken"])


def _vit(size: str, patch_size: int, num_register_tokens: int, /, **kwargs) -> DinoVisionTransformer:
    from ..settings import BACKBONE_SETTINGS

    s = BACKBONE_SETTINGS[size]
    settings = dict(embed_dim=s.embed_dim, depth=s.depth, num_heads=s.num_heads, mlp_ratio=4)
    settings.update(kwargs)  # e.g. a shallower copy for tests: depth=2
    return DinoVisionTransformer(patch_size=patch_size, num_register_tokens=num_register_tokens, **settings)


def vit_small(patch_size: int = 14, num_register_tokens: int = 0, **kwargs) -> DinoVisionTransformer:
    """ViT-S: 12 blocks, width 384, 6 heads (21 M parameters)."""
    return _vit("s", patch_size, num_register_tokens, **kwargs)


def vit_base(patch_size: int = 14, num_register_tokens: int = 0, **kwargs) -> DinoVisionTransformer:
    """ViT-B: 12 blocks, width 768, 12 heads (86 M parameters)."""
    return _vit("b", patch_size, num_register_tokens, **kwargs)


def vit_large(patch_size: int = 14, num_register_tokens: int = 0, **kwargs) -> DinoVisionTransformer:
    """ViT-L: 24 blocks, width 1024, 16 heads (300 M parameters)."""
    return _vit("l", patch_size, num_register_tokens, **kwargs)


def vit_giant2(patch_size: int = 14, num_register_tokens: int = 0, **kwargs) -> DinoVisionTransformer:
    """ViT-g: 40 blocks, width 1536, 24 heads (64 per head); use with ffn_layer="swiglufused" (1.1 B)."""
    return _vit("g", patch_size, num_register_tokens, **kwargs)
