"""The ``dinov2-dense`` command: ``info``, ``features``, ``pca``, ``train``, ``test``, ``eval-depth``, ``synth``.

Exit codes: 0 done; 2 a user error (a bad path, file, option or config: one line on stderr that
names it; ``--debug`` or ``DINOV2_DENSE_DEBUG=1`` shows the traceback); 130 interrupted (Ctrl-C;
nothing half-written is left); 1 a bug in dinov2-dense (with its traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
from functools import partial
from pathlib import Path

from .fileio import WEIGHT_SUFFIXES

from .options import (ATTENTION_KERNEL_NAMES, COMPILE_MODES, check_device, float_range, int_range, nonnegative_int,
                      positive_int)


DEBUG_ENV = "DINOV2_DENSE_DEBUG"
MAX_THREADS = 4 * (os.cpu_count() or 1)


class OneLineParser(argparse.ArgumentParser):
    """argparse with one-line errors: ``prog: error: message (see prog --help)``, exit code 2."""

    def error(self, message: str):
        if message.startswith("unrecognized arguments: ") and self._subparsers is not None:
            # the program's own options (a command's are refused by its parser): `--debg info`
            message += self._did_you_mean(message.split(": ", 1)[1].split())
        if message.startswith("the following arguments are required") and self._given is not None:
            # a mistyped option (`--ouput g.npy`) is what left the required one out: name it too
            unknown = self._unknown_options(self._given)
            if unknown:
                message += f"; unrecognized argument{'s' if len(unknown) > 1 else ''} " + ", ".join(
                    option + (f" (did you mean {close}?)" if (close := self._closest_option(option)) else "")
                    for option in unknown)
        self.exit(2, f"{self.prog}: error: {message}{self._order_hint(message)} (see {self.prog} --help)\n")

    #: The arguments a command's parser was given (for its errors), or None.
    _given: list[str] | None = None

    def _unknown_options(self, args: list[str]) -> list[str]:
        """The ``--options`` among ``args`` (before a ``--``) that this parser does not know, nor as an
        abbreviation: argparse leaves them over, and names them only once every required one is there."""
        args = args[:args.index("--")] if "--" in args else args
        known = [o for o in self._option_string_actions if o.startswith("--")]
        unknown = []
        for arg in args:
            option = arg.split("=", 1)[0]
            if (not option.startswith("--") or option == "--" or option in self._option_string_actions
                    or (self.allow_abbrev and any(o.startswith(option) for o in known)) or option in unknown):
                continue
            unknown.append(option)
        return unknown

    def _closest_option(self, option: str) -> str | None:
        """The option of this parser that an unknown ``option`` was meant to be, if one is close (a typo:
        --ouput, --sise; or a known name and more: --output), for a "did you mean"."""
        import difflib

        names = {o[2:]: o for o in self._option_string_actions if o.startswith("--") and o != "--help"}
        name = option[2:]
        close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.7)
        if not close:  # --output, --outdir: a known option and more
            close = sorted((n for n in names if len(n) >= 3 and name.startswith(n)), key=len, reverse=True)[:1]
        return names[close[0]] if close else None

    #: For arguments left over (``unrecognized arguments``) that look like more inputs, what the command
    #: takes instead (knn's one folder); a command taking several inputs says where to put them.
    extra_inputs_hint: str | None = None

    def parse_known_args(self, args=None, namespace=None):
        if args is None or self._subparsers is not None:
            return super().parse_known_args(args, namespace)
        # a command's own parser: its left-over arguments are refused here, under the command's name (the
        # program's parser, which argparse hands them to, would name only the program) and with a hint
        self._given = list(args)
        self._check_after_double_dash(self._given)
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}{self._extras_hint(extras)}")
        return namespace, extras

    def _did_you_mean(self, args: list[str]) -> str:
        """"; --ouput: did you mean --out?" for each unknown option among ``args`` that is close to a known one."""
        meant = [(option, self._closest_option(option)) for option in self._unknown_options(args)]
        return "".join(f"; {option}: did you mean {close}?" for option, close in meant if close)

    def _extras_hint(self, extras: list[str]) -> str:
        """For left-over file names (``features a.png --out f.npy b.png``: argparse takes the inputs
        given together, once), where inputs go; nothing for an unknown option or a stray value."""
        if any(arg.startswith("-") or not _looks_like_a_path(arg) for arg in extras):
            return self._did_you_mean(extras)
        takes = next((a for a in self._actions if not a.option_strings and a.nargs in ("+", "*")), None)
        if takes is not None:
            return f"; put the {takes.dest} together, before the options"
        return f"; {self.extra_inputs_hint}" if self.extra_inputs_hint else ""

    def _check_after_double_dash(self, args: list[str]) -> None:
        """After ``--`` every argument is an input: one there that is an option of this command
        (``features --size 56 -- a.png --out f.npy``; no file of that name) means it was put on the
        wrong side, and the error says so, instead of taking it for an image."""
        if "--" not in args:
            return
        for arg in args[args.index("--") + 1:]:
            option = arg.split("=", 1)[0]
            if option.startswith("--") and option in self._option_string_actions and not os.path.exists(arg):
                takes = next((a.dest for a in self._actions if not a.option_strings), "input")
                self.error(f"{option} comes after `--`, which ends the options (every argument after it is taken for "
                           f"{'an image' if takes == 'images' else f'the {takes}'}): put {option} and every other "
                           "option before `--`")

    def _order_hint(self, message: str) -> str:
        """For a bad value of an option that takes several (``--size 56 a.png``: the option took the
        image), where to put the option; nothing for a value that is no file name (``--size 1.5``)."""
        m = re.match(r"argument (-[^\s:/]+).*?'([^']*)'", message)
        option = next((a for a in self._actions if m and m.group(1) in a.option_strings), None)
        takes = next((a for a in self._actions if not a.option_strings and a.nargs in ("+", "*")), None)
        if option is None or option.nargs not in ("+", "*") or takes is None:
            return ""
        if not _looks_like_a_path(m.group(2)):
            return ""  # a mistyped number ("1.5") or value: nothing to reorder
        return f"; put {m.group(1)} after the {takes.dest}"


def _looks_like_a_path(value: str) -> bool:
    """Whether a command-line argument is an input's name (a suffix, a folder, skimage:NAME, or an existing
    file or folder), not a number or a word: where it was put is what the order hints speak of."""
    try:
        float(value)
        return False
    except ValueError:
        pass
    return bool(Path(value).suffix or "/" in value or ":" in value or os.path.exists(value))


def _cmd_info(args: argparse.Namespace) -> int:
    from .distributed import under_torchrun
    from .hub import OFFLINE_ENV, WEIGHTS_ENV, hub_checkpoint_dir, offline, weights_status

    from dinov2_dense.zoo import model_weights_status

    if under_torchrun() and os.environ.get("LOCAL_RANK", os.environ.get("RANK")) != "0":
        return 0  # torchrun's processes of one machine see the same files: its first one lists them, once
    rows = [dict(r, kind="backbone") for r in weights_status()]
    models = model_weights_status()
    if args.json:
        print(json.dumps(rows + models, indent=2))
        return 0
    fetched = (f"missing files are not downloaded: {OFFLINE_ENV} is set" if offline()
               else "missing files are downloaded on first use")
    print(f"weights are looked for in ${WEIGHTS_ENV} ({os.environ.get(WEIGHTS_ENV) or 'unset'}), "
          f"then in {hub_checkpoint_dir()}; {fetched}")
    print("backbones:")
    for r in rows:
        where = r["found"] or f"not found ({r['url']})"
        arch = "ours" if r.get("embedded") else r["arch"]
        where = f"in the package: {where}" if r.get("embedded") and r["found"] else where
        if r.get("problem"):
            where = f"{where} -- NOT a whole weight file: {r['problem']} (delete or replace it)"
        print(f"  {r['name']:<18} {arch:<10}  registers {r['registers']}  {r['file']:<34} {where}")
    print("full models (backbone + official head):")
    for r in models:
        where = r["found"] or "not found"
        print(f"  {r['name']:<32} {r['task']:<12} {r['file']:<44} {where}")
    return 0


def _weights_arg(weights: str) -> str | None:
    return None if weights == "random" else weights


def _model_name(args: argparse.Namespace):
    """``--model`` as given; by default the architecture JSON beside a ``--weights`` file (a
    pretraining export) or its Hugging Face folder's config.json, else dinov2_vits14. Also sets
    ``args.model`` to a printable name."""
    if hasattr(args, "model_arch"):
        return args.model_arch
    weights = _weights_arg(args.weights)
    args.model_arch = args.model
    if args.model is None:
        from .hub import _arch_files_beside

        w = _weights_path(args)
        beside = _architecture_beside_weights(args)
        args.model = str(w) if beside else "dinov2_vits14"
        args.model_arch = None if beside else "dinov2_vits14"
        # a weights file taken for dinov2_vits14 only because nothing else was named: the architecture files
        # looked for beside it (none for a URL), for _load_model's error; None where nothing was guessed
        args.model_guessed = (None if beside or weights in (None, "official") else
                              (_arch_files_beside(w) if w is not None else []))
    return args.model_arch


def _weights_path(args: argparse.Namespace) -> Path | None:
    """The local --weights file or folder (a file:// URL's path too); None for official, random or a URL."""
    from .hub import _file_url_path

    local = _file_url_path(_weights_arg(args.weights))  # a file:// URL is a path here
    return Path(local) if local not in (None, "official") and "://" not in str(local) else None


def _architecture_beside_weights(args: argparse.Namespace) -> bool:
    """Whether the --weights file brings its architecture: a JSON beside it (a pretraining export's
    backbone.json), or a Hugging Face folder's config.json."""
    from .hub import architecture_beside

    w = _weights_path(args)
    return bool(w is not None and architecture_beside(w))


def _model_inputs(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """The local files and folders the backbone is read from, each with how an error names it: the
    --weights file or folder (a file:// URL's path too), the zoo file that --weights official finds
    (looked for, never downloaded, here) and an architecture JSON given as --model. A command's
    outputs must never land on them."""
    from .hub import BACKBONES, _file_url_path, find_weights

    model = _model_name(args)
    weights = _file_url_path(_weights_arg(args.weights))
    inputs = []
    if weights == "official":
        found = find_weights(model) if isinstance(model, str) and model in BACKBONES else None
        if found is not None:
            inputs.append((f"the weights file of {model} (what --weights official reads)", found))
    elif weights is not None and "://" not in str(weights):
        path = Path(weights).expanduser()
        inputs.append((f"the --weights {'folder' if path.is_dir() else 'file'}", path))
    if isinstance(model, str) and model not in BACKBONES and Path(model).is_file():
        inputs.append(("the --model file", Path(model)))
    return inputs


#: Files that loading a weights folder may read (weight files; a Hugging Face save's index and config).
_WEIGHT_SUFFIXES = (*WEIGHT_SUFFIXES, ".json")


def _refuse_writing_over_inputs(out: str | os.PathLike, inputs: list[tuple[str, Path]], option: str) -> None:
    """An output file ``out`` that is one of the command's ``inputs`` ((how to name it, path), a
    folder's files included) is refused, naming both, before anything runs: writing it would destroy
    what the command reads (``--out`` equal to ``--weights``). Inside a weights folder, a file of a kind
    that loading the folder reads (``.safetensors``, ``.bin``, ``.json``, ...) is refused too; others
    (an ``.npy``) may go there."""
    from .fileio import is_inside

    out = Path(out)
    for what, path in inputs:
        same = out.exists() and path.exists() and os.path.samefile(out, path)  # a hard link too
        if same or (is_inside(out, path) and not path.is_dir()):
            raise ValueError(f"{option} {out} is {what} ({path}), which this command reads: writing it would "
                             f"destroy that input; give another {option}")
        if is_inside(out, path) and out.suffix.lower() in _WEIGHT_SUFFIXES:
            raise ValueError(f"{option} {out} lies inside {what} ({path}), which this command reads: a "
                             f"{out.suffix} file there could replace its files or be read with them; give another "
                             f"{option}")


def _guessed_model_error(args: argparse.Namespace, exc: Exception) -> str:
    """The error for a --weights file that does not fit dinov2_vits14, taken because no --model was given and
    no architecture file is beside it (a training checkpoint copied out of its run folder): it says
    so, as load_backbone(None, ...) does, instead of naming a model the user never gave."""
    looked = args.model_guessed
    where = f" and no architecture file is beside it (looked for {', '.join(map(str, looked))})" if looked else ""
    looks = re.search(r"The checkpoint looks like ([^\n]*?)\.?(\n|$)", str(exc))
    shape = f"; it looks like {looks.group(1)}" if looks else ""
    return (f"--weights {args.weights}: no --model was given{where}, and it does not fit dinov2_vits14, the "
            f"default{shape}. Give --model NAME (a zoo name) or --model ARCH.json (an architecture JSON, e.g. the "
            "backbone.json of the run that wrote it)")


def _load_model(args: argparse.Namespace, device):
    """The backbone of --model/--weights; random weights drawn from --seed (default 0), so every command
    and every rerun builds the same ones (a rerun then finds its cache, store or basis), without changing
    the rest of the command's random state."""
    import torch

    from .checkpoints import CheckpointError, CheckpointReadError
    from .hub import load_backbone

    dtype = getattr(args, "dtype", "fp32")
    weights = _weights_arg(args.weights)
    with torch.random.fork_rng(devices=[]):
        if weights is None:
            torch.manual_seed(getattr(args, "seed", 0))
        name = _model_name(args)
        # dinov2_vits14 taken for a --weights file only because no --model was given: errors name the file
        label = str(args.weights) if getattr(args, "model_guessed", None) is not None else None
        try:
            return load_backbone(name, weights=weights, device=device, label=label,
                                 dtype=None if dtype == "fp32" else dtype,
                                 compile=getattr(args, "compile", None) or False,
                                 attention=getattr(args, "attention", "auto"), float8=getattr(args, "float8", False))
        except CheckpointError as exc:  # only the default's strict-load mismatch: other refusals say their own
            if (isinstance(exc, CheckpointReadError) or getattr(args, "model_guessed", None) is None
                    or "does not fit this model" not in str(exc)):
                raise
            raise CheckpointError(_guessed_model_error(args, exc)) from None


def _num_workers(args: argparse.Namespace) -> int:
    """--num-workers, or its default: 2 decoding processes (0 when the machine has one core)."""
    if args.num_workers is not None:
        return args.num_workers
    return 2 if (os.cpu_count() or 1) > 1 else 0


def _planned_grids(images: list[str], size, fit: str, patch: int = 14) -> dict[tuple[int, int], list[str]]:
    """Feature-map grid (h, w) of each image, from its header, grouped: known before any model work."""
    from .features import _grid, check_input

    grids: dict[tuple[int, int], list[str]] = {}
    for image in images:
        grids.setdefault(_grid(*check_input(image), size, fit, patch), []).append(image)
    return grids


def _cmd_features(args: argparse.Namespace) -> int:
    import torch

    from .features import FeatureOptions, feature_batches
    from .fileio import check_output_file, check_replaceable_file
    from .hub import architecture

    out = Path(args.out)
    if out.suffix not in (".npy", ".safetensors"):
        raise ValueError(f"--out {out}: use a .npy or .safetensors file name")
    images = [("an input image", Path(p)) for p in args.images if not str(p).startswith("skimage:")]
    _refuse_writing_over_inputs(out, _model_inputs(args) + images, "--out")
    size = _size_value(args.size, "--size")
    _check_resize_8bit(args, size)
    device = check_device(args.device)
    name = _model_name(args)
    with torch.device("meta"):  # the architecture's sizes, without allocating or loading it
        arch = architecture(name, _weights_arg(args.weights))
    grids = _planned_grids(list(args.images), size, args.fit, arch.patch_size)
    depth = len(arch.blocks)
    if args.last and args.last > depth:  # the library's message speaks of its argument, layers=
        raise ValueError(f"--last {args.last}: {args.model} has {depth} blocks; give at most --last {depth}")
    try:
        arch.resolve_layers(args.layers if args.layers else None)
    except ValueError as exc:
        raise ValueError(f"--layers {' '.join(map(str, args.layers))}: {exc} ({args.model})") from None
    if out.suffix == ".npy" and len(grids) > 1:
        shown = "; ".join(f"{h}x{w} patches: {', '.join(v[:2])}{', ...' if len(v) > 2 else ''}"
                          for (h, w), v in list(grids.items())[:3])
        raise ValueError(f"--out {out}: one .npy holds maps of one size, and these images give several ({shown}); "
                         "pass --size H W to resize every image to one size, or write .safetensors")
    layers = args.layers if args.layers else (args.last if args.last else None)
    n_layers = len(args.layers) if args.layers else (args.last or 1)
    estimate = sum(len(v) * h * w for (h, w), v in grids.items()) * n_layers * arch.embed_dim * 4
    check_replaceable_file(out, f"a features file of a {arch.embed_dim}-wide model written by dinov2-dense features",
                           partial(_is_feature_file, width=arch.embed_dim), overwrite=args.overwrite,
                           never_in=_weights_folders(args))
    check_output_file(out, expected_bytes=estimate, what="--out")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = _load_model(args, device)
    # the weights' dtype that runs (a CPU without native bf16, or fp16 on a CPU, keeps float32: _load_model warns)
    ran = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(next(model.parameters()).dtype, "fp32")
    batches = feature_batches(model, list(args.images), options=FeatureOptions(
        layers=layers, fit=args.fit, size=size, tile=args.tile, batch_size=args.batch_size, autocast=args.bf16,
        norm=not args.no_norm, resize_8bit=args.resize_8bit), progress=True, num_workers=_num_workers(args))
    ran_as = [f"{ran} weights"] * (ran != "fp32") + ["bf16 autocast"] * bool(args.bf16) + ["FP8"] * bool(args.float8)
    note = " (random weights)" if args.weights == "random" else ""
    note += f" ({', '.join(ran_as)})" if ran_as else ""
    if out.suffix == ".npy":
        layer_ids, shape = _write_feature_npy(out, batches, len(args.images))
        # a .npy holds no metadata: the line says which block each index of the layer axis is
        axes = "image, layer, channel, row, column" if len(layer_ids) > 1 else "image, channel, row, column"
        blocks = (f"its layer axis holds blocks {layer_ids}, in that order" if len(layer_ids) > 1
                  else f"block {layer_ids[0]}")
        print(f"wrote {out}: {len(args.images)} image(s), an array of shape {(len(args.images), *shape)} "
              f"({axes}); {blocks}{_layer_order_note(args, layer_ids, depth)}{note}")
    else:
        layer_ids, shape = _write_feature_safetensors(out, batches, args, size, ran)
        print(f"wrote {out}: {len(args.images)} image(s), layers {layer_ids}"
              f"{_layer_order_note(args, layer_ids, depth)}, maps of {shape}{note}")
    return 0


def _layer_order_note(args: argparse.Namespace, layer_ids: list[int], depth: int) -> str:
    """Where --layers named blocks in another order, or one twice: that they are taken in block
    order, each once (as the library resolves them)."""
    if not args.layers:
        return ""
    given = [i + depth if i < 0 else i for i in args.layers]
    if given == list(layer_ids):
        return ""
    return f" (--layers {' '.join(map(str, args.layers))} are taken in block order, each once)"


def _write_feature_npy(out: Path, batches, count: int) -> tuple[list[int], tuple[int, ...]]:
    """The maps of every image into the .npy ``out`` as each batch arrives: (N, C, h, w), or
    (N, L, C, h, w) for several layers. Memory holds one batch; the file is allocated whole at the
    first batch (a full disk fails there, naming ``out``) and replaces ``out`` only once complete.
    Each batch is read back from the device while the next one runs. Returns the layers and one
    image's shape."""
    import torch

    from .features import HostCopy
    from .fileio import NpyRows, atomic_path, discard_stale_temporaries

    discard_stale_temporaries(out)  # a killed run's file, as large as the output
    with atomic_path(out) as tmp:
        file, layer_ids, in_flight = None, [], None
        try:
            for chunk, feats in batches:
                layer_ids = feats.layers
                maps = torch.stack([feats.maps[l] for l in layer_ids], 1)  # (B, L, C, h, w)
                maps = maps[:, 0] if len(layer_ids) == 1 else maps
                if file is None:
                    file = NpyRows(tmp, (count, *maps.shape[1:]))
                copy = HostCopy(maps)
                if in_flight is not None:
                    file.write(in_flight[0], in_flight[1].wait().numpy())
                in_flight = (chunk, copy)
            file.write(in_flight[0], in_flight[1].wait().numpy())
        finally:
            if file is not None:
                file.close()
    return layer_ids, file.shape[1:]


def _write_feature_safetensors(out: Path, batches, args: argparse.Namespace, size,
                               dtype: str) -> tuple[list[int], str]:
    """Each image's maps, class tokens and registers (moved off the device batch by batch) in the
    .safetensors ``out``, with what they came from in its metadata (every value a JSON string but
    ``model`` and ``weights``): enough to compute them again (the weights, their seed when random,
    and the settings: size, fit, tile, norm, ...) and to place them on each image (its size, the
    size the backbone saw after resizing and padding, and the padding, in those pixels); returns the
    layers and the maps' shape (C, h, w), or their shapes when the images give several. ``dtype``: the
    weights' dtype that ran (fp32, bf16, fp16)."""
    from .checkpoints import save_safetensors
    from .hub import describe_weights

    tensors, padding, image_sizes, input_sizes, shapes = {}, {}, {}, {}, {}
    for chunk, feats in batches:
        layer_ids = feats.layers
        cpu = {l: (feats.maps[l].cpu(), feats.cls_tokens[l].cpu(), feats.registers[l].cpu()) for l in layer_ids}
        for k, i in enumerate(chunk):
            padding[i], image_sizes[i], input_sizes[i] = feats.padding, feats.image_size, feats.input_size
            for l, (maps, cls, regs) in cpu.items():
                tensors[f"{i}/layer{l}"] = maps[k]
                tensors[f"{i}/cls{l}"] = cls[k]
                if regs.shape[1]:
                    tensors[f"{i}/registers{l}"] = regs[k]
        shape = tuple(feats.maps[layer_ids[-1]].shape[1:])
        shapes[shape] = shapes.get(shape, 0) + len(chunk)
    order = sorted(padding)
    meta = {
        "model": args.model,
        "weights": describe_weights(args.model, _weights_arg(args.weights)),
        "layers": json.dumps(layer_ids),
        "images": json.dumps([str(p) for p in args.images]),
        "padding": json.dumps([padding[i] for i in order]),
        "image_sizes": json.dumps([image_sizes[i] for i in order]),
        "input_sizes": json.dumps([input_sizes[i] for i in order]),
        "size": json.dumps(list(size) if isinstance(size, tuple) else size),
        "fit": json.dumps(args.fit),
        "tile": json.dumps(args.tile),
        "norm": json.dumps(not args.no_norm),
        "resize_8bit": json.dumps(bool(args.resize_8bit)),
        "bf16_autocast": json.dumps(bool(args.bf16)),
        "dtype": json.dumps(dtype),  # the weights' dtype that ran, not the one asked for
        "float8": json.dumps(bool(args.float8)),
    }
    if args.weights == "random":
        meta["seed"] = json.dumps(args.seed)
    save_safetensors(tensors, out, metadata=meta)
    if len(shapes) == 1:
        return layer_ids, str(next(iter(shapes)))
    return layer_ids, f"{len(shapes)} shapes: " + ", ".join(f"{s} ({n} image{'s' * (n > 1)})" for s, n in shapes.items())


#: The metadata every features .safetensors holds (_write_feature_safetensors), and its tensors' names.
_FEATURE_METADATA = ("layers", "images", "padding", "image_sizes", "input_sizes")
_FEATURE_TENSOR = re.compile(r"\d+/(layer|cls|registers)\d+")


def _is_feature_file(path: Path, width: int) -> bool:
    """Whether ``path`` is what ``features --out`` writes, read from its header alone: a .safetensors whose
    metadata hold ours and whose tensors are all ``i/layerL``, ``i/clsL``, ``i/registersL``; a .npy holding
    a whole C-order float32 array of 4 or 5 axes (N, [L,] C, h, w) with C = ``width`` (the model's, as a
    rerun's: a batch of float32 images, (N, 3, H, W), is no such file), the most a .npy, without metadata, tells."""
    import numpy as np

    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        if path.suffix == ".safetensors":
            n = int.from_bytes(f.read(8), "little")
            if not 2 <= n <= min(size - 8, 100 * 2**20):
                return False
            header = json.loads(f.read(n))
            meta = header.pop("__metadata__", None) if isinstance(header, dict) else None
            return (isinstance(meta, dict) and all(k in meta for k in _FEATURE_METADATA) and bool(header)
                    and all(_FEATURE_TENSOR.fullmatch(k) for k in header))
        if path.suffix == ".npy":
            read = {(1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0}.get(np.lib.format.read_magic(f))
            if read is None:
                return False
            shape, fortran, dtype = read(f)
            return (dtype == np.dtype("<f4") and not fortran and len(shape) in (4, 5) and min(shape) > 0
                    and shape[-3] == width and size == f.tell() + 4 * int(np.prod(shape, dtype=np.int64)))
    return False


def _weights_folders(args: argparse.Namespace | None = None) -> list[tuple[str, Path]]:
    """The folders in which an output never replaces a file: ``$DINOV2_DENSE_WEIGHTS``, the weights cache, the
    package's own weights, and a ``--weights`` folder (each (how to name it, folder))."""
    from .hub import EMBEDDED_DIR, WEIGHTS_ENV, hub_checkpoint_dir

    folders = [(f"the weights folder ${WEIGHTS_ENV}", Path(os.environ[WEIGHTS_ENV]).expanduser())] \
        if os.environ.get(WEIGHTS_ENV) else []
    folders += [("the weights cache", hub_checkpoint_dir()), ("the package's weights folder", EMBEDDED_DIR)]
    if args is not None and hasattr(args, "weights"):  # the --weights folder, as the command reads it
        folders += [(what, path) for what, path in _model_inputs(args) if path.is_dir()]
    return folders


def _size_value(size: list[int] | None, option: str):
    """``--size N`` (shorter side) or ``--size H W``; None and [0] (pca: keep) give None."""
    if not size or size == [0]:
        return None
    if len(size) > 2:
        raise ValueError(f"{option} {' '.join(map(str, size))}: give one number (the shorter side) or two (H W)")
    if 0 in size:
        raise ValueError(f"{option} {' '.join(map(str, size))}: 0 only alone (keep the image size)")
    return size[0] if len(size) == 1 else (size[0], size[1])


def _threshold_arg(text: str):
    if text in ("otsu", "zero", "none"):
        return None if text == "none" else text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use otsu, zero, none or a number (a z-score)") from None
    if not math.isfinite(value) or abs(value) > 100:
        raise argparse.ArgumentTypeError(f"{text}: a z-score threshold is a finite number in [-100, 100]")
    return value


PCA_SIZE = 448  # pca's --size when neither it nor a --basis gives one


def _size_text(size) -> str:
    """A size as --size takes it: "448", "112 140", or "0" (the image's own size)."""
    return "0" if size is None else " ".join(map(str, size)) if isinstance(size, (tuple, list)) else str(size)


def _pca_size(args: argparse.Namespace, basis) -> int | tuple[int, int] | None:
    """pca's size: --size; else the size --basis was fitted at, where it records one (the colours and
    masks are fitted to the features of that size); else PCA_SIZE. A --size other than the basis's
    is taken, with a warning."""
    recorded, fitted = basis is not None and "size" in basis.info, None
    if recorded:
        fitted = basis.info["size"]
        if isinstance(fitted, list) and len(fitted) == 2:
            fitted = tuple(fitted)
        from .features import FeatureOptions

        try:
            FeatureOptions(size=fitted)  # the one check of a size
        except ValueError:
            raise ValueError(f"--basis {args.basis}: its recorded size {basis.info['size']!r} is not a size; "
                             "give --size") from None
    if args.size is None:
        if not recorded:
            return PCA_SIZE
        print(f"note: --size {_size_text(fitted)}, the size {args.basis} was fitted at (give --size for another)",
              file=sys.stderr)
        return fitted
    size = _size_value(args.size, "--size")
    if recorded and size != fitted:
        print(f"warning: --size {_size_text(size)}, but {args.basis} was fitted at --size {_size_text(fitted)}: its "
              "colours and foreground threshold fit features of that size, so the masks and colours may be off "
              "(leave --size out to use the basis's)", file=sys.stderr)
    return size


def _pca_fit(args: argparse.Namespace, basis) -> str:
    """pca's --fit to the patch grid: as given; left out, "resize", or as --basis was fitted (one that records
    its size but no fit was fitted before the option, padded), said in a note where that is padding (naming the
    earlier version where the basis records no fit); given otherwise than the basis's, the given one, with a
    warning."""
    from .viz.pca import basis_fit

    fitted = basis_fit(basis)
    if args.fit is None:
        if fitted == "pad":
            why = "give --fit resize for another" if "fit" in basis.info else \
                "padded to the patch grid, as pca did before --fit"
            print(f"note: --fit pad, as {args.basis} was fitted ({why})", file=sys.stderr)
        return fitted or "resize"
    if fitted is not None and args.fit != fitted:
        print(f"warning: --fit {args.fit}, but {args.basis} was fitted with --fit {fitted}: its colours and "
              "foreground threshold fit features made so, so the masks and colours may be off (leave --fit out to "
              "use the basis's)", file=sys.stderr)
    return args.fit


@contextlib.contextmanager
def _fit_said():
    """pca_maps / pca_video without their warning of a fit other than the basis's: _pca_fit said it, naming
    --basis and --fit."""
    import warnings

    from .viz.pca import OtherFitWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OtherFitWarning)
        yield


def _pca_tile_and_8bit(args: argparse.Namespace, basis, size) -> None:
    """pca's --tile (0: none) and --resize-8bit, set in ``args``: as given; left out, as --basis was
    fitted (it records both, as it records its size: its colours fit features computed that way), said
    in a note; given otherwise than the basis's, the given one, and a line says which is used."""
    tile = args.tile or None
    recorded = basis is not None and "tile" in basis.info
    fitted = basis.info.get("tile") if recorded else None
    if recorded and fitted is not None and not (isinstance(fitted, int) and not isinstance(fitted, bool)
                                                and fitted >= 1):
        raise ValueError(f"--basis {args.basis}: its recorded tile {fitted!r} is not a tile size; give --tile")
    tiling = lambda t: f"--tile {t}" if t is not None else "no tiling"  # noqa: E731
    if recorded and args.tile is None:
        tile = fitted
        if fitted is not None:
            print(f"note: --tile {fitted}, the tiling {args.basis} was fitted with (give --tile 0 for none, or "
                  "another --tile)", file=sys.stderr)
    elif recorded and tile != fitted:
        print(f"warning: {tiling(tile)}, but {args.basis} was fitted with {tiling(fitted)}: tiled features differ "
              "from whole-image ones, so the masks and colours may be off (leave --tile out to use the basis's)",
              file=sys.stderr)
    args.tile = tile
    fitted_8bit = basis is not None and bool(basis.info.get("resize_8bit", False))
    if args.resize_8bit is None:  # left out
        args.resize_8bit = fitted_8bit and size is not None
        if args.resize_8bit:
            print(f"note: --resize-8bit, as {args.basis} was fitted (give --no-resize-8bit for the float resize)",
                  file=sys.stderr)
    elif basis is not None and size is not None and args.resize_8bit != fitted_8bit:
        used, other = ("--resize-8bit", "the float resize") if args.resize_8bit else ("the float resize",
                                                                                     "--resize-8bit")
        print(f"note: {used}, as given; {args.basis} was fitted with {other} (features differ slightly; leave "
              "the option out to use the basis's)", file=sys.stderr)


def _random_weights_record(args: argparse.Namespace) -> str | None:
    """How a basis records random weights (its info's ``weights``): "random (seed N)"; None for others."""
    return f"random (seed {args.seed})" if _weights_arg(args.weights) is None else None


def _named_backbone(model, weights_record) -> str:
    """A backbone as pca's messages name it: the model, and random weights as such, with the seed a basis
    records for them ("dinov2_dense_tiny with random weights, seed 0"), never as the model alone."""
    if not (isinstance(weights_record, str) and weights_record.startswith("random")):
        return str(model)
    seed = re.search(r"seed \d+", weights_record)
    return f"{model} with random weights" + (f", {seed.group(0)}" if seed else "")


def _pca_model(args: argparse.Namespace, basis) -> None:
    """pca's --model left out with a --basis: the model the basis was fitted on (not the default
    dinov2_vits14), where it records a zoo name and the --weights bring no architecture of their own (a
    backbone.json or config.json beside them), said in a note, as the basis's size is; with --weights left
    out too, the weights file (and architecture file) it was fitted on, where they bring the architecture. A
    --model given is taken as given, and weights other than the basis's are warned of (_other_backbone_warning)."""
    from .hub import BACKBONES, architecture_beside

    if basis is None or args.model is not None or _architecture_beside_weights(args):
        return
    recorded = basis.info.get("model")
    # fitted on a weights file (or folder) that brings its architecture, or with an architecture file: those, not
    # the default model (it went to dinov2_vits14, and offline named only its download). An older basis records
    # no weights_file: its model is the weights file where no --model was given
    weights_file = basis.info.get("weights_file")
    if weights_file is None and isinstance(recorded, str) and not recorded.endswith(".json") \
            and recorded not in BACKBONES:
        weights_file = recorded
    model_file = recorded if isinstance(recorded, str) and recorded.endswith(".json") else None
    if args.weights == "official" and isinstance(weights_file, str) and Path(weights_file).exists() \
            and (model_file and Path(model_file).is_file() or architecture_beside(weights_file)):
        args.weights = weights_file
        if model_file:
            args.model = model_file
        given = f"--model {model_file} --weights {weights_file}" if model_file else f"--weights {weights_file}"
        print(f"note: {given}, the weights {args.basis} was fitted on (give --weights or --model for others)",
              file=sys.stderr)
        return
    if args.weights == "official" and isinstance(weights_file, str) and not Path(weights_file).exists():
        # (an earlier version recorded the path as given: relative to the folder it was fitted in)
        raise ValueError(f"--basis {args.basis} was fitted on the weights {weights_file}, which are not there (from "
                         f"{Path.cwd()}): give them as --weights (with --model where no backbone.json is beside them), or "
                         "--model to colour another model's features")
    if not isinstance(recorded, str) or recorded not in BACKBONES or recorded == "dinov2_vits14":
        return  # (dinov2_vits14: the default, taken anyway)
    args.model = recorded
    print(f"note: --model {recorded}, the model {args.basis} was fitted on (give --model for another)",
          file=sys.stderr)


def _other_backbone_warning(args: argparse.Namespace, basis, weights_id: dict[str, str]) -> str | None:
    """The warning for a --basis fitted on other weights than these: told by the fingerprints where the
    basis records them for weights loaded in the same form (``features_sha256`` where both have it, so
    the same weights read from another file format, such as timm's, are the same; else, for an older
    basis, the weights' SHA-256); else (an older basis still, or another --dtype) by the model's name or
    weights path, and random weights' seed, as recorded. Random weights are named as such, with their seed."""
    from .checkpoints import backbone_difference, forward_difference

    fitted_on = _named_backbone(basis.info.get("model", "unknown model"), basis.info.get("weights"))
    mine = _random_weights_record(args)
    these = _named_backbone(args.model, mine)
    if basis.info.get("weights_sha256") is not None and basis.info.get("weights_form") == weights_id["weights_form"]:
        difference = backbone_difference(basis.info, weights_id, weights_key="weights_sha256")
        if difference is None:
            settings = forward_difference(basis.info, weights_id)  # the same weights, read with other settings
            return None if settings is None else (
                f"warning: {args.basis} was fitted on these weights computed with other settings ({settings}: "
                "another architecture file), so their features differ")
        label, theirs, ours = difference
        return (f"warning: {args.basis} was fitted on other weights ({fitted_on}, {label} {theirs[:12]}), "
                f"colouring features of {these} ({label} {ours[:12]})")
    random_differs = "model" in basis.info and basis.info.get("weights") != mine and (
        mine is not None or str(basis.info.get("weights", "")).startswith("random"))
    if basis.info.get("model") not in (None, args.model) or random_differs:
        return f"warning: {args.basis} was fitted on {fitted_on}, colouring features of {these}"
    return None


def _inside_out(save_basis: str, out: Path) -> Path | None:
    """Where --save-basis lies inside the --out folder (a relative path), or None when it lies
    elsewhere; the folder itself is refused."""
    from .fileio import is_inside

    if not is_inside(save_basis, out):
        return None
    where = Path(save_basis).resolve().relative_to(out.resolve())
    if not where.parts:
        raise ValueError(f"--save-basis {save_basis} is the --out folder; give a file name inside it "
                         f"({Path(save_basis) / 'pca_basis.npz'}) or elsewhere")
    return where


#: Suffixes of images and videos: a pca --out named so was meant as one file, but --out is a folder.
_NOT_A_FOLDER = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".mp4", ".avi")


def _cmd_pca(args: argparse.Namespace) -> int:
    import torch

    from .checkpoints import weights_identity
    from .features import FeatureOptions, check_forward_tokens, check_input
    from .fileio import check_output_file, check_replaceable_file, is_inside, staged_dir
    from .hub import architecture
    from .viz.pca import PCABasis, describe, is_still_image, pca_map_stream, pca_video, save_figure, save_maps
    from .viz.video import video_info

    # check everything that can be checked before loading a model or writing a file
    if args.video and args.images:
        raise ValueError("give images or --video, not both (use --basis to colour images with a video's basis)")
    if not args.video and not args.images:
        raise ValueError("nothing to do: give image files or --video FILE")
    for flag, value in (("--frames", args.frames), ("--frame-step", args.frame_step != 1),
                        ("--max-frames", args.max_frames is not None), ("--avi", args.avi)):
        if value and not args.video:
            raise ValueError(f"{flag} is a --video option; these are images")
    sizes: dict[tuple[int, int], str] = {}  # (H, W) of the inputs, from their headers -> a name for messages
    if args.video:
        from .images import opencv_path

        opencv_path(args.out, "video's output folder")  # (OpenCV writes it by name: before any work)
        vinfo = video_info(args.video)  # a missing or unreadable video (or a folder) stops us here
        if is_still_image(args.video):  # (OpenCV takes it for a one-frame video at 25 fps)
            raise ValueError(f"{args.video}: an image, not a video (one still frame): give it without --video")
        frame = vinfo.size
        if min(frame) > 0:
            sizes[frame] = f"{args.video} (frames of {frame[1]}x{frame[0]})"
    for image in args.images:  # a missing or unreadable image stops us before any work or output
        sizes.setdefault(check_input(image), image)
    if args.save_basis and Path(args.save_basis).suffix != ".npz":
        raise ValueError(f"--save-basis {args.save_basis}: a PCA basis is written as .npz; use that suffix")
    if args.basis and args.save_basis:
        raise ValueError("--basis reuses a fitted basis; --save-basis saves a new fit: give one of them")
    if args.basis:
        given = [flag for flag, value in (("--joint", args.joint), ("--threshold", hasattr(args, "threshold")))
                 if value]
        if given:
            raise ValueError(f"{', '.join(given)}: these choose how a basis is fitted; --basis {args.basis} reuses "
                             "one as it was fitted")
    threshold = getattr(args, "threshold", "otsu")
    if not args.joint and not args.basis and not args.video and args.save_basis and len(args.images) > 1:
        raise ValueError("--save-basis needs one basis: add --joint to fit one over all the images")
    out = Path(args.out)
    if out.suffix.lower() in _NOT_A_FOLDER:
        raise ValueError(f"--out {out}: pca writes a folder of files (figure.png, <name>_pca.png, ...), not one "
                         f"{out.suffix} file; give a folder name, e.g. --out {out.with_suffix('')}")
    if args.save_basis:
        if not is_inside(args.save_basis, out):  # inside --out it is one of the folder's outputs
            check_replaceable_file(args.save_basis, "a PCA basis written by dinov2-dense pca", PCABasis.is_basis_file,
                                   overwrite=args.overwrite, option="--save-basis", never_in=_weights_folders(args))
        check_output_file(args.save_basis, what="--save-basis")
    basis = PCABasis.load(args.basis) if args.basis else None
    _pca_model(args, basis)
    size = _pca_size(args, basis)
    _pca_tile_and_8bit(args, basis, size)
    fit = _pca_fit(args, basis)
    _check_resize_8bit(args, size)
    device = check_device(args.device)
    weights = _weights_arg(args.weights)
    with torch.device("meta"):  # the patch size and depth, without allocating or loading the model
        arch = architecture(_model_name(args), weights)
    patch = arch.patch_size
    if args.layer is not None:  # the library's message does not name the option
        try:
            arch.resolve_layers([args.layer])
        except ValueError as exc:
            raise ValueError(f"--layer {args.layer}: {exc} ({args.model})") from None
    check_forward_tokens(sizes, FeatureOptions(size=size, tile=args.tile, fit=fit), patch)  # before a download
    model_inputs = _model_inputs(args)
    inputs = [p for p in [*args.images, args.video, args.basis] if p and not str(p).startswith("skimage:")]
    if args.save_basis:
        _refuse_writing_over_inputs(args.save_basis, model_inputs + [("an input", Path(p)) for p in inputs],
                                    "--save-basis")
    protect = inputs + [path for _, path in model_inputs]
    # a --save-basis inside --out is written with the other outputs (so the folder's marker lists it, and
    # a rerun with --overwrite replaces it): its place in the folder
    basis_in_out = _inside_out(args.save_basis, out) if args.save_basis else None
    with staged_dir(out, overwrite=args.overwrite, protect=protect) as stage:  # --out is checked now
        if args.threads:
            torch.set_num_threads(args.threads)
        if weights is None:
            torch.manual_seed(args.seed)  # the maps' later random draws (the weights are seeded in _load_model)
        model = _load_model(args, device)
        if basis is not None and basis.dim != model.embed_dim:
            raise ValueError(f"--basis {args.basis}: fitted on {basis.dim}-channel features "
                             f"({basis.info.get('model', 'unknown model')}), {args.model} has {model.embed_dim}")
        if basis is not None and "layer" in basis.info:
            try:
                model.resolve_layers([basis.info["layer"]])
            except ValueError:  # (the library's message named neither --basis nor the block it was fitted on)
                raise ValueError(f"--basis {args.basis}: fitted on block {basis.info['layer']} "
                                 f"({basis.info.get('model', 'unknown model')}), and {args.model} has "
                                 f"{len(model.blocks)} block{'s' if len(model.blocks) != 1 else ''}: a basis colours the block it was fitted on; fit one "
                                 "on this model (leave --basis out)") from None
        weights_id = weights_identity(model, features=True)  # (dtype and FP8: the form the bytes are in)
        if basis is not None and (warning := _other_backbone_warning(args, basis, weights_id)):
            print(warning, file=sys.stderr)
        info = {"model": args.model, "size": size, "tile": args.tile, **weights_id}
        if _weights_path(args) is not None:  # a reuse without --weights takes them (_pca_model)
            info["weights_file"] = str(_weights_path(args).resolve())
        if args.resize_8bit:
            info["resize_8bit"] = True
        if weights is None:
            info["weights"] = _random_weights_record(args)
        random_note = f"{args.model} with RANDOM weights (seed {args.seed}): the maps mean nothing. " \
            if weights is None else ""
        layer = args.layer if args.layer is not None else (basis.info.get("layer", -1) if basis is not None else -1)
        if basis is not None and args.layer is not None and "layer" in basis.info and \
                model.resolve_layers([args.layer]) != model.resolve_layers([basis.info["layer"]]):
            raise ValueError(f"--layer {args.layer}: {args.basis} was fitted on block {basis.info['layer']}; "
                             "leave --layer out to use that block")
        options = FeatureOptions(layers=[layer], size=size, tile=args.tile, fit=fit, batch_size=args.batch_size,
                                 resize_8bit=args.resize_8bit)
        common = dict(threshold=threshold, upsample=args.upsample, info=info, options=options)
        if args.video:
            stem = Path(args.video).stem
            suffix = ".avi" if args.avi else ".mp4"
            with _fit_said():
                result = pca_video(
                    model, args.video, stage / f"{stem}_pca{suffix}", basis=basis, step=args.frame_step,
                    max_frames=args.max_frames, frames_dir=stage / f"{stem}_frames" if args.frames else None,
                    progress=True, **common,
                )
            basis_used, samples = result
            save_figure(samples, stage / "figure.png", alpha=args.alpha, title=random_note + describe(basis_used))
            fitted = None if basis is not None else basis_used
            frames_note = f", {stem}_frames/ (a PNG of colours per frame)" if args.frames else ""
            done = (f"wrote {out / (stem + '_pca' + suffix)} ({result.frames} frames, frame | PCA colours), "
                    f"figure.png ({len(samples)} of the frames){frames_note}")
        else:
            with _fit_said():
                # the maps made and written one image at a time (a list of them all held every image's full-size maps)
                maps = pca_map_stream(model, args.images, basis=basis, joint=args.joint or len(args.images) == 1,
                                      progress=True, num_workers=_num_workers(args), **common)
            one = maps.bases[0] if all(b is maps.bases[0] for b in maps.bases) else None
            title = describe(one) if one is not None else f"PCA of each image on its own ({len(maps)} images)"
            written = save_maps(maps, stage, alpha=args.alpha, title=random_note + title)
            fitted = one if basis is None else None
            figures = [p.name for p in written if re.fullmatch(r"figure(_\d+)?\.png", p.name)]
            with_basis = fitted is not None and (not args.save_basis or basis_in_out is not None)
            each = f"each of the {len(maps)} images" if len(maps) > 1 else "the image"
            done = (f"wrote {len(written) + with_basis} files to {out}/: {', '.join(figures)} (one row per image), "
                    f"<name>_pca{'/_mask' if any(b.masked for b in maps.bases) else ''}/_overlay.png for {each}"
                    + (f" and {(basis_in_out or Path('pca_basis.npz')).as_posix()}" if with_basis else ""))
        if fitted is not None and (not args.save_basis or basis_in_out is not None):
            fitted.save(stage / (basis_in_out or "pca_basis.npz"))
    print(done)
    if fitted is not None:
        target = Path(args.save_basis) if args.save_basis else out / "pca_basis.npz"
        if args.save_basis and basis_in_out is None:
            fitted.save(target)
        print(f"wrote {target}: reuse it with --basis {target}")
        print(describe(fitted))
    elif basis is not None:
        print(f"colours from {args.basis} ({describe(basis)})")
    if weights is None:
        print("note: random weights (--weights random): the maps show nothing learned", file=sys.stderr)
    return 0


_BF16_HELP = ("bfloat16 autocast: faster on GPUs and on CPUs with native bf16 (AVX512-BF16, AMX); "
              "3-4x slower than fp32 on other CPUs")
_THREADS_HELP = "torch CPU threads (0: torch's default)"


def _add_resize_8bit_argument(parser: argparse.ArgumentParser, basis: bool = False) -> None:
    """--resize-8bit, the same for every command that reads and resizes image files; with ``basis``
    (pca, whose --basis records it) also --no-resize-8bit, and None when neither is given."""
    parser.add_argument("--resize-8bit", action=argparse.BooleanOptionalAction if basis else "store_true",
                        default=None if basis else False,
                        help="resize 8-bit images in 8 bits: about 4x faster resizing on CPUs, within one grey level "
                             "of the float resize (rounded to whole grey levels, as any 8-bit resize, e.g. PIL's); "
                             "changes features slightly (default: float resize"
                             + (", or as a --basis was fitted)" if basis else ")"))


def _check_resize_8bit(args: argparse.Namespace, size) -> None:
    """--resize-8bit without a resize: the error says why there is none (no --size, --size 0, or a
    --basis fitted at the images' own size)."""
    if not args.resize_8bit or size is not None:
        return
    if args.size:  # pca's --size 0
        raise ValueError(f"--resize-8bit with --size {_size_text(args.size)}: --size 0 keeps each image's own "
                         "size, so nothing is resized; give a size to resize to (e.g. --size 448), or leave "
                         "--resize-8bit out")
    if getattr(args, "basis", None):
        raise ValueError(f"--resize-8bit: --basis {args.basis} was fitted at --size 0 (each image's own size), so "
                         "nothing is resized; give --size N to resize, or leave --resize-8bit out")
    raise ValueError("--resize-8bit applies to the resize of --size only; give --size")


def _common_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="zoo name (see `dinov2-dense info`) or an architecture JSON (default: dinov2_vits14, or "
                             "the backbone.json beside a --weights file: a pretraining export; or a Hugging Face "
                             "folder's config.json)")
    parser.add_argument("--weights", default="official",
                        help="'official' (find or download), a file, a URL, or 'random' (random weights, for a try)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--device", default=None, help="e.g. cpu, cuda, cuda:1 (default: cpu)")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32",
                        help="backbone weights' dtype: bf16/fp16 halve memory and are faster where the device has "
                             "them natively (a CPU without native bf16 keeps fp32 and says so); outputs are float32")
    parser.add_argument("--threads", type=int_range(0, MAX_THREADS), default=0, help=_THREADS_HELP)
    parser.add_argument("--num-workers", type=nonnegative_int, default=None,
                        help="processes that read and decode images while the backbone runs (default 2; 0: none)")
    parser.add_argument("--compile", nargs="?", const="default", default=None, choices=list(COMPILE_MODES),
                        help="torch.compile the backbone's blocks (default mode: dynamic shapes; 'reduce-overhead': "
                             "CUDA graphs for a fixed size); without a compiler it runs uncompiled and says so")
    parser.add_argument("--attention", choices=list(ATTENTION_KERNEL_NAMES), default="auto",
                        help="preferred attention kernel of scaled_dot_product_attention (default auto: torch's choice)")
    parser.add_argument("--float8", action="store_true", help="the blocks' linear layers in FP8 (H100/Ada-class GPUs; "
                        "faster with --compile, slower without; changes the features slightly: cosine 0.9928-0.9964 for the "
                        "class token, 0.9997-0.99999 for the patch maps, as measured)")


def _tile_or_none(text: str) -> int:
    """pca's --tile: a tile side of at least one patch, or 0 (no tiling, whatever a --basis records)."""
    value = nonnegative_int(text)
    if 0 < value < 14:
        raise argparse.ArgumentTypeError(f"{text}: expected 0 (no tiling) or an integer >= 14 (at least one "
                                         "14-pixel patch)")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="dinov2-dense", description="Dense prediction with DINOv2.",
        epilog="Exit codes: 0 done, 2 a user error (one line naming the file or option), 130 interrupted, "
               f"1 a bug. --debug (or {DEBUG_ENV}=1) shows tracebacks.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"dinov2-dense {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="list the model zoo and where each weight file was found")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=_cmd_info)

    patch_side = int_range(14, what="at least one 14-pixel patch")
    feat = sub.add_parser("features", help="extract dense patch features of images")
    feat.add_argument("images", nargs="+", help="image files (or skimage:NAME for a scikit-image sample)")
    _common_model_arguments(feat)
    which = feat.add_mutually_exclusive_group()
    which.add_argument("--layers", type=int, nargs="+", help="block indices (negative: from the end)")
    which.add_argument("--last", type=positive_int, help="take the last N blocks (default: the last one)")
    feat.add_argument("--fit", choices=["pad", "resize"], default="pad", help="how to reach the 14-pixel grid")
    feat.add_argument("--size", type=patch_side, nargs="+", metavar="N",
                      help="resize first: one number sets the shorter side, two set H W (one size for all images)")
    feat.add_argument("--tile", type=patch_side, help="tiled mode: tile size in pixels (bounded memory)")
    feat.add_argument("--bf16", action="store_true", help=_BF16_HELP)
    feat.add_argument("--no-norm", action="store_true", help="skip the final LayerNorm (depth protocol)")
    _add_resize_8bit_argument(feat)
    feat.add_argument("--seed", type=nonnegative_int, default=0, help="seed of --weights random (default 0)")
    feat.add_argument("--out", required=True, help="output .npy or .safetensors file")
    feat.add_argument("--overwrite", action="store_true",
                      help="replace an --out that an earlier `features` run wrote (never another file)")
    feat.set_defaults(func=_cmd_features)

    pca = sub.add_parser(
        "pca", help="PCA maps of patch features: foreground masks and part colours, for images or a video",
        description="First principal component -> foreground mask; three components of the foreground -> RGB. "
                    "Writes <name>_pca.png, <name>_mask.png, <name>_overlay.png and figure.png (figure_1.png, "
                    "figure_2.png, ... beyond 8 images) to --out, "
                    "and, for one image or with --joint (or --video), the fitted basis (pca_basis.npz) for "
                    "reuse with --basis.",
    )
    pca.add_argument("images", nargs="*", help="image files (or skimage:NAME for a scikit-image sample)")
    _common_model_arguments(pca)
    pca.add_argument("--out", default="pca_out", help="output folder (default: pca_out); must be empty or new "
                                                       "unless --overwrite")
    pca.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty --out folder "
                                                              "and a --save-basis file that pca wrote")
    pca.add_argument("--joint", action="store_true", default=None,
                     help="one PCA over all images, so the same parts get the same colours (default: one per image)")
    pca.add_argument("--video", help="a video file: joint PCA over its frames; writes <name>_pca.mp4 "
                                     "(frame | colours side by side)")
    pca.add_argument("--basis", help="colour with this saved basis (.npz) instead of fitting one (left out, --model, "
                                     "--size, --tile, --fit and --resize-8bit are the basis's, said in a note)")
    pca.add_argument("--save-basis", help="where to save the fitted basis of one image, --joint or --video "
                                          "(default: OUT/pca_basis.npz)")
    pca.add_argument("--size", type=int_range(0), nargs="+", default=None, metavar="N",
                     help=f"resize first: the shorter side (or H W); larger gives finer maps (default {PCA_SIZE}, "
                          "or the size a --basis was fitted at; 0 keeps the image's own size)")
    pca.add_argument("--tile", type=_tile_or_none, help="tiled features: tile size in pixels (bounded memory for "
                                                        "large --size); 0: none (default: none, or the tiling a "
                                                        "--basis was fitted with)")
    _add_resize_8bit_argument(pca, basis=True)
    pca.add_argument("--fit", choices=["resize", "pad"], default=None,
                     help="how to reach the 14-pixel grid: resize (default, or a --basis's: the image resized to "
                          "the nearest multiple) or pad (zeros, as `features` does by default; padded border "
                          "patches can flip which side is the foreground)")
    pca.add_argument("--layer", type=int, default=None, help="block whose patch tokens are used (default: the last)")
    pca.add_argument("--upsample", choices=["nearest", "bilinear"], default="bilinear",
                     help="from the patch grid to the image (default bilinear)")
    pca.add_argument("--threshold", type=_threshold_arg, default=argparse.SUPPRESS,
                     help="foreground split of the first component: otsu (default), zero, none (no mask), "
                          "or a number (z-score on the oriented component)")
    pca.add_argument("--alpha", type=float_range(0.0, 1.0), default=0.5,
                     help="overlay opacity of the colours, 0-1 (default 0.5)")
    pca.add_argument("--frames", action="store_true", help="with --video: also write one PNG of colours per frame")
    pca.add_argument("--frame-step", type=positive_int, default=1, help="with --video: take every N-th frame")
    pca.add_argument("--max-frames", type=positive_int, help="with --video: at most this many frames")
    pca.add_argument("--avi", action="store_true", help="with --video: write MJPG .avi instead of mp4v .mp4")
    pca.add_argument("--seed", type=nonnegative_int, default=0, help="seed of --weights random (default 0)")
    pca.set_defaults(func=_cmd_pca)

    _add_engine_commands(sub)
    _add_knn_command(sub)
    _add_curate_command(sub)
    _add_demo_command(sub)
    for command in sub.choices.values():  # --debug also after the command's name
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the traceback of an error")
    return parser


def _cmd_synth(args: argparse.Namespace) -> int:
    from .data import synthetic
    from .fileio import staged_dir

    if args.layout == "folder" and args.val is not None:
        raise ValueError("--val: the folder layout has no validation split (--train sets the number of scenes)")
    val = 50 if args.val is None else args.val
    problem = args.class_sizes and synthetic.class_sizes_problem(args.class_sizes, args.classes)
    if problem:
        raise ValueError(f"--class-sizes {' '.join(map(str, args.class_sizes))}: {problem} (--classes {args.classes})")
    config = synthetic.SceneConfig(size=(args.size, args.size), num_classes=args.classes, appearance=args.appearance,
                                   class_sizes=tuple(args.class_sizes) if args.class_sizes else None)
    synthetic.check_memory(config)
    out = Path(args.out)
    counts = f"{args.train} training and {val} validation scenes" if args.layout != "folder" else f"{args.train} scenes"
    what = f"{counts} ({args.layout} layout, {args.size}x{args.size}, seed {args.seed})"
    # as the Python writers: the very set asked for is left as it is; another synthetic set is refused naming both
    if synthetic.check_set_folder(out, args.layout, args.train, val if args.layout != "folder" else 0, config=config,
                                  seed=args.seed, overwrite=args.overwrite, option="--overwrite"):
        print(f"{out} already holds these {what}: left as it is (--overwrite writes them again)")
        return 0
    scenes = args.train + (val if args.layout != "folder" else 0)
    need = scenes * args.size * args.size * synthetic.SCENE_DISK_BYTES_PER_PIXEL
    with staged_dir(out, overwrite=args.overwrite, expected_bytes=need) as stage:
        writer = {"ade20k": synthetic.write_ade20k_layout, "nyu": synthetic.write_nyu_layout}.get(args.layout)
        if writer is not None:
            writer(stage, args.train, val, config=config, seed=args.seed)
        else:
            synthetic.write_folder_layout(stage, args.train, config=config, seed=args.seed)
    print(f"wrote {what} under {out}")
    return 0


def _run_with_teacher_head_origin(run, args: argparse.Namespace) -> int:
    """``pretrain`` / ``distill``: a refused ``distill.teacher_head`` says where its value came from (the
    config, --cfg-options or --teacher-head) and which option trains a fresh head instead. Leaving
    --teacher-head out is not enough where the config sets one (distill_tiny_cpu.py does)."""
    from pretrain.train import FRESH_HEAD_HINT

    option = getattr(args, "teacher_head", None)
    given = "distill.teacher_head" in (args.cfg_options or {})  # before distill folds --teacher-head in
    try:
        return run(args)
    except (FileNotFoundError, ValueError) as exc:
        if type(exc) not in (FileNotFoundError, ValueError) or FRESH_HEAD_HINT not in str(exc):
            raise
        fresh = "give --cfg-options distill.teacher_head=None to train a fresh random head instead"
        if option is not None:
            in_config = _config_teacher_head(args.config)
            hint = (f"it came from --teacher-head; {fresh} (without --teacher-head, the config's "
                    f"distill.teacher_head={in_config} is taken)" if in_config else
                    "it came from --teacher-head; leave --teacher-head out to train a fresh random head instead")
        elif given:
            hint = f"it came from --cfg-options; {fresh}"
        else:
            keeps = " (leaving --teacher-head out keeps the config's)" if hasattr(args, "teacher_head") else ""
            hint = f"it came from the config {args.config}; {fresh}{keeps}"
        raise type(exc)(str(exc).replace(FRESH_HEAD_HINT, hint)) from None


def _config_teacher_head(config: str):
    """``distill.teacher_head`` as the config file sets it (its ``_base_`` included), or None."""
    from .engine.entry import load_config

    try:
        distill = load_config(config, known_sections=None).get("distill") or {}
        return distill.get("teacher_head")
    except Exception:  # noqa: BLE001 - only for a hint; the config was read once already
        return None


def _add_engine_commands(sub) -> None:
    """train / test (mmengine runs), eval-depth and synth: the same code as tools/*.py."""
    from .engine.entry import (add_distill_arguments, add_pretrain_arguments, add_test_arguments, add_train_arguments,
                               run_distill, run_pretrain, run_test, run_train)

    train = sub.add_parser("train", help="train a head on a frozen backbone (an mmengine config)")
    add_train_arguments(train).set_defaults(func=run_train)
    test = sub.add_parser("test", help="evaluate a checkpoint with a config; --out saves predictions")
    add_test_arguments(test).set_defaults(func=run_test)
    pre = sub.add_parser("pretrain", help="self-supervised DINOv2 pretraining (DINO + iBOT + KoLeo); "
                                          "exports the teacher backbone")
    add_pretrain_arguments(pre).set_defaults(func=partial(_run_with_teacher_head_origin, run_pretrain))
    dist = sub.add_parser("distill", help="distil a frozen teacher into one or more student ViTs (the DINOv2 "
                                          "losses on the teacher's head outputs); exports each student")
    add_distill_arguments(dist).set_defaults(func=partial(_run_with_teacher_head_origin, run_distill))
    ev = sub.add_parser("eval-depth", help="metrics of saved depth maps against ground truth")
    _add_eval_depth_arguments(ev).set_defaults(func=_cmd_eval_depth)
    synth = sub.add_parser("synth", help="write synthetic scenes with exact segmentation and depth")
    synth.add_argument("out", help="output folder: new or empty; one holding exactly this set is left as it is; "
                                   "another set is replaced only with --overwrite")
    synth.add_argument("--layout", choices=["ade20k", "nyu", "folder"], default="ade20k",
                       help="the data set layout to write (default ade20k)")
    synth.add_argument("--train", type=positive_int, default=400, help="training scenes (folder layout: all scenes; default 400)")
    synth.add_argument("--val", type=positive_int, default=None,
                       help="validation scenes (default 50; not for the folder layout)")
    synth.add_argument("--size", type=int_range(28, 8192), default=224, help="image side in pixels (28-8192; default 224)")
    synth.add_argument("--classes", type=int_range(2, 254), default=5, help="classes including the background (default 5)")
    synth.add_argument("--appearance", choices=["colour", "texture"], default="colour",
                       help="colour: a colour per class; texture: classes show by texture only (the demo's scenes)")
    synth.add_argument("--class-sizes", type=float, nargs="+", default=None, metavar="SIZE",
                       help="one physical size per shape class (classes - 1 values): apparent size = size / depth, "
                            "as in the demo's scenes (0.2 0.3 0.45 0.65); by default sizes and depths are independent")
    synth.add_argument("--seed", type=nonnegative_int, default=0)
    synth.add_argument("--overwrite", action="store_true",
                       help="replace an earlier set in the folder whole (or write this one again); never files that "
                            "dinov2-dense did not write")
    synth.set_defaults(func=_cmd_synth)


# -- knn -------------------------------------------------------------------------------------------
def _cmd_knn(args: argparse.Namespace) -> int:
    import torch

    from .evaluation.knn import evaluate_folder
    from .features import check_on_grid
    from .fileio import check_output_file, check_replaceable_file, check_writable_dir, json_object_with, write_json
    if not Path(args.folder).is_dir():
        raise FileNotFoundError(f"{args.folder}: no such image folder (one sub-folder per class, or train/ and val/)")
    if args.out is not None:
        if Path(args.out).suffix.lower() != ".json":
            raise ValueError(f"--out {args.out}: the results are written as JSON; give a .json file name")
        check_replaceable_file(args.out, "results written by dinov2-dense knn",
                               lambda p: json_object_with(p, ("knn", "num_train", "num_val", "class_names")),
                               overwrite=args.overwrite, never_in=_weights_folders(args))
        check_output_file(args.out, what="--out")
    if args.cache is not None:
        check_writable_dir(args.cache, what="--cache")
    device = check_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    weights = _weights_arg(args.weights)
    model = _load_model(args, device).eval()
    check_on_grid((args.size,), int(getattr(model, "patch_size", 1)), f"--size {args.size}")
    result = evaluate_folder(model, args.folder, k=args.k, temperature=args.temperature, linear=not args.no_linear,
                             size=args.size, pooling=args.pooling, batch_size=args.batch_size,
                             val_fraction=args.val_fraction, seed=args.seed, autocast=args.bf16, progress=True,
                             cache=args.cache, num_workers=_num_workers(args), resize_8bit=args.resize_8bit)
    note = " (random weights)" if weights is None else ""
    k = result["k_used"]  # (the kNN takes all of a smaller training set)
    taken = f"k {k}: all {k} training images, fewer than --k {args.k}" if k < args.k else f"k {k}"
    line = f"kNN ({taken}, T {args.temperature:g}) top-1 {result['knn']['top1']:.2f}%"
    if "top5" in result["knn"]:
        line += f", top-5 {result['knn']['top5']:.2f}%"
    if "linear" in result:
        line += f"; linear probe top-1 {result['linear']['top1']:.2f}% (weight decay {result['linear']['weight_decay']:g})"
    print(f"{args.model}{note}: {line}; {result['num_train']} train / {result['num_val']} val images, "
          f"{len(result['class_names'])} classes")
    if args.out is not None:
        write_json(args.out, result)
        print(f"wrote {args.out}")
    return 0


def _add_knn_command(sub) -> None:
    knn = sub.add_parser("knn", help="kNN and linear-probe accuracy of frozen features on an image folder "
                                     "(folder name = label)")
    knn.add_argument("folder", help="one sub-folder per class, or train/ and val/ each with one per class")
    _common_model_arguments(knn)
    knn.add_argument("--k", type=positive_int, default=20, help="neighbours (default 20, as the official eval)")
    knn.add_argument("--temperature", type=float_range(0.0, strict_min=True), default=0.07,
                     help="softmax temperature of the votes (default 0.07)")
    knn.add_argument("--no-linear", action="store_true", help="kNN only, no linear probe")
    knn.add_argument("--size", type=int_range(14, 4096), default=224, help="images are resized to size x size (default 224)")
    knn.add_argument("--pooling", choices=["cls", "mean", "cls+mean"], default="cls",
                     help="class token, mean of the patch tokens, or both (default cls)")
    knn.add_argument("--val-fraction", type=float_range(0.0, 1.0, strict_min=True, strict_max=True), default=0.2,
                     help="held-out share when the folder has no val/ (default 0.2)")
    knn.add_argument("--seed", type=nonnegative_int, default=0,
                     help="seed of the held-out split and of --weights random (default 0)")
    knn.add_argument("--bf16", action="store_true", help=_BF16_HELP)
    _add_resize_8bit_argument(knn)
    knn.add_argument("--out", help="write the results as JSON")
    knn.add_argument("--overwrite", action="store_true",
                     help="replace an --out that an earlier knn run wrote (never another file)")
    knn.add_argument("--cache", metavar="DIR", help="keep the features in DIR: a second run with the same weights, "
                     "images, size, pooling and --resize-8bit reads them instead of running the backbone")
    knn.extra_inputs_hint = ("knn takes one folder (one sub-folder per class, or train/ and val/ each with one "
                             "per class)")
    knn.set_defaults(func=_cmd_knn)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected whole numbers separated by commas, e.g. 1000,200,50") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected non-negative whole numbers separated by commas")
    return values


#: curate's options that are each process's own (its machine's threads, workers, device, progress bars)
_CURATE_PER_PROCESS = frozenset({"func", "command", "debug", "launcher", "threads", "num_workers", "device",
                                 "no_progress"})


def _option_name(dest: str) -> str:
    """An argparse destination as the user writes it: ``--seeds-k`` (``inputs``, a positional, as it is)."""
    return dest if dest == "inputs" else f"--{dest.replace('_', '-')}"


def _cmd_curate(args: argparse.Namespace) -> int:
    import torch

    from pretrain.curation import curate
    from pretrain.curation.pipeline import interrupted_stores, is_embeddings, shortfall

    from .distributed import agree_to_start, check_same_settings, implied_launcher, say_distributed

    levels = args.levels  # as given: checked against --clusters below; compared and run as the levels it makes
    args.levels = len(args.clusters) if args.clusters is not None else (4 if levels is None else levels)
    launcher = implied_launcher(args.launcher)  # torchrun without --launcher: as with pytorch
    if launcher == "pytorch":
        import datetime

        if not all(k in os.environ for k in ("RANK", "WORLD_SIZE")):
            raise ValueError("--launcher pytorch: start the command with torchrun (RANK and WORLD_SIZE are not set)")
        if not torch.distributed.is_initialized():  # long steps run on rank 0 while the others wait
            torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(days=1))
        if launcher != args.launcher:
            say_distributed("curation")
        # every process must curate the same pool the same way (another --seed mixed two runs' clusters)
        check_same_settings({_option_name(k): v for k, v in vars(args).items() if k not in _CURATE_PER_PROCESS},
                            "", given="command and options")  # curate has no config
    if args.threads:
        torch.set_num_threads(args.threads)

    def start():  # on every process, with the group up: one that refuses its options or model stops them all
        if args.clusters is not None and min(args.clusters) < 1:
            raise ValueError(f"--clusters {','.join(map(str, args.clusters))}: every level needs at least 1 cluster")
        if args.clusters is not None and levels is not None and levels != len(args.clusters):
            # (--clusters sets the levels: --levels 2 --clusters 3 ran one level without a word)
            raise ValueError(f"--levels {levels} and --clusters {','.join(map(str, args.clusters))} "
                             f"({len(args.clusters)} level{'s' if len(args.clusters) != 1 else ''}) disagree: "
                             "--clusters gives one count a level, so leave --levels out or give as many counts")
        if not is_embeddings(args.inputs) or (args.seeds is not None and not is_embeddings(args.seeds)):
            from .distributed import local_device

            return _load_model(args, local_device(check_device(args.device))).eval()  # each process its own GPU
        return None

    model = agree_to_start(start, main=True)
    try:
        summary = curate(
            args.inputs, args.out, args.target, model=model, names=args.names, seeds=args.seeds,
            seeds_names=args.seeds_names, dedup_threshold=None if args.no_dedup else args.dedup_threshold,
            keep=args.keep, seeds_k=args.seeds_k, seeds_threshold=args.seeds_threshold, levels=args.levels,
            clusters=args.clusters, resample_steps=args.resample_steps, sampling=args.sampling, seed=args.seed,
            n_iters=args.iters, ivf_above=args.ivf_above, nprobe=args.nprobe, overwrite=args.overwrite,
            progress=not args.no_progress,
            embed_kw=dict(size=args.size, batch_size=args.batch_size, dtype=args.store_dtype, pooling=args.pooling,
                          autocast=args.bf16, num_workers=_num_workers(args), resize_8bit=args.resize_8bit),
        )
    except KeyboardInterrupt as exc:  # an interrupted embedding is kept: say so (not "nothing half-written")
        kept = interrupted_stores(args.out) if int(os.environ.get("RANK", "0")) == 0 else []
        if not kept:
            raise
        if args.debug or os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes"):
            import traceback

            traceback.print_exc()
        what = "terminated" if isinstance(exc, _Terminated) else "interrupted"
        print(f"\ndinov2-dense curate: {what}; the embeddings done so far are kept (" + ", ".join(
            f"{done} of {n} images in {folder}" for folder, done, n in kept) + "): run the same command again to "
            "resume", file=sys.stderr)
        _ignore_ended_data_workers()  # (the workers' end is expected: no traceback after the line)
        return 143 if isinstance(exc, _Terminated) else 130
    if int(os.environ.get("RANK", "0")) == 0:
        short = (f" (fewer than --target {summary['target']}: {shortfall(summary)})" if summary["short_of_target"]
                 else "")
        dedup = ("no near-duplicate removal (--no-dedup)" if summary["dedup_threshold"] is None
                 else f"{summary['duplicates_removed']} near-duplicates removed")
        print(f"curated {summary['pool']} rows: {dedup}, "
              f"{summary['clustered']} clustered ({', '.join(map(str, summary['clusters']))} clusters), "
              f"{summary['selected']} selected{short}; top-level cluster entropy {summary['top_cluster_entropy_pool']:.3f}"
              f" -> {summary['top_cluster_entropy_selected']:.3f}; {Path(args.out) / 'selected.txt'}, report "
              f"{Path(args.out) / 'report.html'}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from .demo import DemoSettings, default_backbone, run_demo

    if args.threads:
        torch.set_num_threads(args.threads)
    extra = {k: v for k, v in (("appearance", args.scenes),) if v is not None}
    settings = DemoSettings.quick(**extra) if args.quick else DemoSettings(**extra)
    if args.weights == "random":
        raise ValueError("--weights random: the demo compares a backbone with random init; give real weights")
    if args.model is None and args.weights == "official":
        args.model, why = default_backbone()
        print(why, file=sys.stderr, flush=True)
    model = _model_name(args)
    report = run_demo(args.work_dir, model, _weights_arg(args.weights), settings=settings, label=args.model,
                      overwrite=args.overwrite, progress=not args.no_progress)
    print(f"report: {report} (also {report.with_suffix('.md')} and {report.with_suffix('.json')})")
    return 0


def _add_demo_command(sub) -> None:
    demo = sub.add_parser("demo", help="the toolkit end to end on synthetic scenes: heads on a frozen backbone "
                                       "against random init, metrics, PCA maps, an HTML report")
    demo.add_argument("--work-dir", default="work_dirs/demo", help="where scenes, caches, predictions and the "
                                                                   "report go (a rerun continues; default work_dirs/demo)")
    demo.add_argument("--model", default=None, help="zoo name or architecture JSON (default: dinov2_vits14 where its "
                                                    "weights are on this machine, else the embedded dinov2_dense_tiny; "
                                                    "or the backbone.json beside a --weights file, or a "
                                                    "Hugging Face folder's config.json)")
    demo.add_argument("--weights", default="official", help="'official' (find or download), a file or a URL")
    demo.add_argument("--quick", action="store_true", help="smaller scenes, fewer of them, shorter training")
    demo.add_argument("--scenes", choices=["colour", "texture"], default=None,
                      help="scene appearance: classes shown by texture only (default: random features hardly "
                           "see them) or by colour and texture")
    demo.add_argument("--overwrite", action="store_true", help="start afresh in a work dir with another demo")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.add_argument("--threads", type=int_range(0, MAX_THREADS), default=0, help=_THREADS_HELP)
    demo.set_defaults(func=_cmd_demo)


def _add_curate_command(sub) -> None:
    cur = sub.add_parser("curate", help="curate an image pool before pretraining: embed, remove near-duplicates, "
                                        "retrieve around seeds, hierarchical k-means, balanced sampling")
    cur.add_argument("inputs", help="images (a folder, a text file of paths, a glob in quotes) or embeddings (an .npy "
                                    "(N, D) with a names .txt of the same stem, or an embedding store folder)")
    cur.add_argument("--target", type=positive_int, required=True, help="how many images to select")
    cur.add_argument("--out", required=True, help="output folder: selected.txt, duplicates.txt, clusters.npy, report")
    cur.add_argument("--names", default=None, help="names file of an .npy input (default: its .txt beside it)")
    _common_model_arguments(cur)
    cur.add_argument("--size", type=int_range(14, 4096), default=224, help="images are resized to size x size (default 224)")
    cur.add_argument("--pooling", choices=["cls", "mean", "cls+mean"], default="cls",
                     help="what embeds an image: the class token (default), the mean patch token, or both")
    cur.add_argument("--store-dtype", choices=["float32", "float16"], default="float32",
                     help="stored embedding rows (float16 halves the store)")
    cur.add_argument("--bf16", action="store_true", help=_BF16_HELP)
    _add_resize_8bit_argument(cur)
    cur.add_argument("--dedup-threshold", type=float_range(-1.0, 1.0), default=0.9,
                     help="cosine similarity above which two images are near-duplicates (default 0.9)")
    cur.add_argument("--no-dedup", action="store_true", help="skip near-duplicate removal")
    cur.add_argument("--keep", choices=["first", "central"], default="first",
                     help="which image of a duplicate group stays: the first by name, or the most central")
    cur.add_argument("--ivf-above", type=positive_int, default=200_000,
                     help="pools larger than this use an IVF index for duplicates and retrieval (default 200000)")
    cur.add_argument("--nprobe", type=positive_int, default=16,
                     help="IVF lists scanned per query (default 16; fewer is faster, with a little less recall)")
    cur.add_argument("--seeds", default=None, help="a curated seed set (images or embeddings): keep only the pool "
                                                   "images near it (the DINOv2 retrieval step)")
    cur.add_argument("--seeds-names", default=None, help="names file of an .npy --seeds")
    cur.add_argument("--seeds-k", type=positive_int, default=8, help="neighbours retrieved per seed (default 8)")
    cur.add_argument("--seeds-threshold", type=float_range(-1.0, 1.0), default=None,
                     help="instead of --seeds-k: every pool image above this similarity to a seed")
    cur.add_argument("--levels", type=int_range(1, 10), default=None,
                     help="hierarchical k-means levels (default 4; with --clusters, as many as it gives)")
    cur.add_argument("--clusters", type=_int_list, default=None,
                     help="clusters per level, finest first, e.g. 1000,200,50,10 (default: from the pool size)")
    cur.add_argument("--resample-steps", type=_int_list, default=None,
                     help="resampling steps per level (default 0 at level 1, 10 above, as the reference)")
    cur.add_argument("--iters", type=positive_int, default=20, help="Lloyd iterations per k-means (default 20)")
    cur.add_argument("--sampling", choices=["random", "closest"], default="random",
                     help="points drawn within the finest clusters: at random or closest to the centroid")
    cur.add_argument("--seed", type=nonnegative_int, default=0,
                     help="seed of the sampling and k-means and of --weights random (default 0)")
    cur.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in --out")
    cur.add_argument("--no-progress", action="store_true", help="no progress bars")
    cur.add_argument("--launcher", choices=["none", "pytorch"], default="none",
                     help="pytorch: under torchrun, the k-means steps share the rows between the processes")
    cur.set_defaults(func=_cmd_curate)


# -- eval-depth --------------------------------------------------------------------------------
def _add_eval_depth_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``eval-depth`` arguments (``tools/eval_depth.py`` goes through :func:`main`)."""
    from .evaluation.depth_files import DATASET_PRESETS
    from .options import nonnegative_float, positive_float

    parser.add_argument("pred_dir", type=Path, help="predicted depth maps (16-bit PNG or TIFF, or integer .npy, with --pred-scale, or float .npy in metres)")
    parser.add_argument("gt_dir", type=Path, help="ground-truth depth maps (16-bit PNG or TIFF, or integer .npy, with --gt-scale, or float .npy in metres)")
    parser.add_argument("--dataset", choices=sorted(DATASET_PRESETS), default="nyu",
                        help="protocol preset: nyu (0.001-10 m, Eigen crop, PNG/1000), kitti (0.001-80 m, kb + "
                             "Garg crop, PNG/256), folder (0.001-10 m, no crop, --gt-scale needed for PNGs)")
    parser.add_argument("--gt-scale", type=positive_float, default=None, help="ground-truth PNG value per metre (> 0)")
    parser.add_argument("--pred-scale", type=positive_float, default=None,
                        help="prediction PNG value per metre (> 0; default: --gt-scale)")
    parser.add_argument("--min-depth", type=nonnegative_float, default=None,
                        help="lower bound of valid ground truth, metres (>= 0, below --max-depth)")
    parser.add_argument("--max-depth", type=positive_float, default=None,
                        help="upper bound of valid ground truth, metres (> 0)")
    parser.add_argument("--crop", choices=["eigen", "garg", "kitti_eigen", "none"], default=None,
                        help="evaluation crop (default: the preset's): eigen (NYU, 480x640), garg (KITTI), kitti_eigen "
                             "(KITTI's Eigen crop in the BTS and AdaBins evaluations)")
    parser.add_argument("--kb-crop", action=argparse.BooleanOptionalAction, default=None,
                        help="KITTI benchmark crop of the ground truth to 352x1216 (default: on for kitti)")
    parser.add_argument("--median-scaling", action="store_true", help="scale each prediction by median(gt)/median(pred)")
    parser.add_argument("--silog", choices=["toolbox", "depth_anything"], default="toolbox", help="silog convention")
    parser.add_argument("--resize", action="store_true", help="resize predictions bilinearly to the ground-truth size")
    parser.add_argument("--strict", action="store_true", help="unmatched files are an error")
    parser.add_argument("--out", type=Path, default=None,
                        help="write JSON here: the nine metrics, the image count and the invalid-prediction counts")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an --out that an earlier eval-depth wrote (never another file)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _names(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def _cmd_eval_depth(args: argparse.Namespace) -> int:
    from .evaluation.depth_files import (DATASET_PRESETS, depth_results_json, evaluate_depth_dirs, format_depth_table,
                                         write_metrics_json)
    from .evaluation.depth import DEPTH_METRIC_KEYS, ground_truth_warning
    from .fileio import check_output_file, check_replaceable_file, json_object_with

    preset = DATASET_PRESETS[args.dataset]
    lo = preset["min_depth"] if args.min_depth is None else args.min_depth
    hi = preset["max_depth"] if args.max_depth is None else args.max_depth
    if lo >= hi:
        origin = lambda given: "" if given is not None else f" (the {args.dataset} preset's)"  # noqa: E731
        raise ValueError(f"--max-depth {hi:g}{origin(args.max_depth)} must be greater than --min-depth {lo:g}"
                         f"{origin(args.min_depth)}")
    if args.out is not None:  # before the evaluation, not after it
        if args.out.suffix.lower() != ".json":
            raise ValueError(f"--out {args.out}: the metrics are written as JSON; give a .json file name")
        check_replaceable_file(args.out, "metrics written by dinov2-dense eval-depth",
                               lambda p: json_object_with(p, DEPTH_METRIC_KEYS),
                               overwrite=args.overwrite, never_in=_weights_folders())
        check_output_file(args.out, what="--out")
    report = evaluate_depth_dirs(
        args.pred_dir, args.gt_dir, dataset=args.dataset, gt_scale=args.gt_scale, pred_scale=args.pred_scale,
        min_depth=args.min_depth, max_depth=args.max_depth,
        crop="preset" if args.crop is None else (None if args.crop == "none" else args.crop),
        kb=args.kb_crop, median_scaling=args.median_scaling, silog=args.silog, resize=args.resize,
        strict=args.strict, progress=not args.no_progress)
    for what, files in (("prediction(s) without ground truth", report.unmatched_pred),
                        ("ground-truth file(s) without prediction", report.unmatched_gt)):
        if files:
            print(f"warning: {len(files)} {what}, not evaluated: {_names([str(p) for p in files])}", file=sys.stderr)
    if report.skipped:
        print(f"warning: {len(report.skipped)} image(s) without a valid ground-truth pixel, skipped: "
              f"{_names(report.skipped)}", file=sys.stderr)
    s, bad = report.settings, report.invalid_predictions
    gt_units = ("--gt-scale: ground truth as .npy floats is read as metres" if s["gt_scale"] is None else
                f"--gt-scale {s['gt_scale']:g} for PNGs and integer .npy")
    if warning := ground_truth_warning(report.ground_truth, s["min_depth"], s["max_depth"], gt_units):
        print(f"warning: {warning}", file=sys.stderr)
    if bad["images"]:
        print(f"warning: invalid predictions on evaluated pixels in {bad['images']} of {report.count} image(s), "
              f"clipped to [{s['min_depth']:g}, {s['max_depth']:g}] m as the protocol does: "
              f"{bad['nonfinite_pixels']} non-finite, {bad['negative_pixels']} negative, {bad['zero_pixels']} zero "
              f"pixel(s): {_names(report.invalid_images)}", file=sys.stderr)
    if bad["all_zero_images"]:
        print(f"warning: {bad['all_zero_images']} prediction(s) zero on every evaluated pixel (blank output?): "
              f"{_names(report.all_zero_images)}", file=sys.stderr)
    clipped = report.clipped_predictions
    if any(clipped.values()):
        most = sum(clipped.values()) > 0.5 * report.evaluated_pixels  # not a model's edges: other units?
        units = ".npy floats are read as metres" + (
            "" if s["pred_scale"] is None else f"; PNGs and integer .npy are divided by --pred-scale {s['pred_scale']:g}")
        print(f"{'warning' if most else 'note'}: {clipped['below_min_pixels']} prediction pixel(s) below "
              f"{s['min_depth']:g} m and {clipped['above_max_pixels']} above {s['max_depth']:g} m, of "
              f"{report.evaluated_pixels} evaluated, clipped to the range as the protocol does"
              + (f" (wrong units? {units})" if most else ""), file=sys.stderr)
    if args.pred_scale is not None and report.metre_predictions:
        pairs = report.count + len(report.skipped)
        every = "any of" if report.metre_predictions == pairs else f"{report.metre_predictions} of"
        print(f"warning: --pred-scale {args.pred_scale:g} is not applied to {every} the predictions: .npy floats are "
              "read as metres", file=sys.stderr)
    if report.metrics["d1"] < 0.05:
        print(f"warning: d1 is {report.metrics['d1']:.4f}: hardly any prediction is within 25% of the ground truth; "
              "wrong units (--pred-scale, or .npy floats that are not metres)? For a model of relative depth, "
              "--median-scaling", file=sys.stderr)
    print(f"dataset {s['dataset']}: depth range ({s['min_depth']:g}, {s['max_depth']:g}) m, crop {s['crop']}, "
          f"kb-crop {'on' if s['kb_crop'] else 'off'}, silog {s['silog']}"
          + (", median scaling" if s["median_scaling"] else ""))
    print(format_depth_table(report.metrics))
    truth = report.ground_truth
    print(f"images evaluated: {report.count} ({report.evaluated_pixels} pixels; of {truth['measured_pixels']} measured "
          f"ground-truth pixels in the crop, {truth['outside_range_pixels']} lie outside the depth range)")
    if args.out is not None:
        write_metrics_json(args.out, depth_results_json(report))
        print(f"metrics written to {args.out}")
    return 0


def _one_line(exc: BaseException) -> str:
    """The message of a user error on one line; for an error raised in a DataLoader worker (whose
    message carries the worker's traceback), the original error's own message."""
    message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    message = str(message)
    if "Original Traceback" in message:
        last = [line for line in message.strip().splitlines() if line.strip()][-1]
        head, sep, rest = last.partition(": ")
        message = rest if sep and "." in head and " " not in head else last
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions a user's input causes: bad files and paths (OSError), values and configs
    (ValueError), names (KeyError); and running out of memory."""
    errors: list[type[BaseException]] = [OSError, ValueError, KeyError, MemoryError]
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "OutOfMemoryError"):
        errors.append(torch.OutOfMemoryError)
    return tuple(errors)


def _peer_failed(exc: BaseException) -> bool:
    """A collective operation failed because another process of a distributed run stopped."""
    torch = sys.modules.get("torch")
    dist = getattr(torch, "distributed", None) if torch is not None else None
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return False
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(k in text for k in ("connection closed", "connection reset",
                                                                       "gloo", "nccl", "broken pipe", "timed out"))


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C so that staged outputs and locks are cleaned up."""


def _quiet_third_party() -> None:
    """Warnings as one line each; no OpenCV or FFmpeg log lines on stderr (our errors say it)."""
    import warnings

    warnings.formatwarning = lambda message, category, *_a, **_k: f"warning: {message}\n"
    if os.environ.get("RANK", "0") != "0":  # mmengine's, the same in every process of a run: said by process 0
        warnings.filterwarnings("ignore", message=r"Setting (OMP|MKL)_NUM_THREADS environment variable for each process")
    os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    cv2 = sys.modules.get("cv2")
    if cv2 is not None and hasattr(cv2, "setLogLevel"):
        cv2.setLogLevel(0)


def main(argv: list[str] | None = None) -> int:
    import signal

    _quiet_third_party()
    parser = build_parser()
    parser._given = list(sys.argv[1:] if argv is None else argv)  # (`--debg` alone: named with the missing command)
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes")
    prog = f"dinov2-dense {args.command}"

    def terminate(signum, frame):
        # a SIGTERM to the process group ends the DataLoader workers too: torch's SIGCHLD handler is left out from
        # now on, before the unwinding collects their iterators (curate printed its traceback before its line)
        _ignore_ended_data_workers()
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, terminate) if _in_main_thread() else None
    code = 1
    try:
        with _names_printable():
            code = run_command(args, prog, debug)
        try:  # output buffered for a pipe is written here, not by the command: a reader that left shows now
            sys.stdout.flush()
        except BrokenPipeError:
            if not _stdout_closed():
                raise
            code = 141
    finally:
        distributed = _close_process_group(wait=code == 0)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if distributed and os.environ.get("TORCHELASTIC_RUN_ID"):
        # a torchrun child: leave without the interpreter's finalisation, where gloo's worker threads
        # can still hold tensors and abort the process ("terminate called without an active
        # exception") after a finished run; every output is already written and closed
        import logging

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


@contextlib.contextmanager
def _names_printable():
    """Standard output and error that print any file name: one that is not UTF-8 (os.fsdecode keeps its bytes
    as lone surrogates) as its bytes, as ls prints it, on a UTF-8 stream, else escaped; Python's standard
    output raised UnicodeEncodeError on it (and standard error, where captured)."""
    changed = []
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            utf8 = (getattr(stream, "encoding", "") or "").lower().replace("-", "") == "utf8"
            with contextlib.suppress(Exception):  # (a stream that cannot change keeps its rule)
                stream.reconfigure(errors="surrogateescape" if utf8 else "backslashreplace")
                changed.append(stream)
    try:
        yield
    finally:
        for stream in changed:
            with contextlib.suppress(Exception):
                stream.reconfigure(errors="strict")


#: Commands that may run under torchrun: those with a distributed mode, and info (it only reads; each machine's
#: first process lists that machine's files).
TORCHRUN_COMMANDS = frozenset({"train", "test", "pretrain", "distill", "curate", "info"})


def _refuse_under_torchrun(prog: str, command: str | None) -> None:
    """A command without a distributed mode (``command`` not in :data:`TORCHRUN_COMMANDS`; None: a tool of
    its own, such as the mmseg converter) started by torchrun (WORLD_SIZE above 1) would run whole in every
    process, each writing the same files: refused before any model is loaded."""
    from .distributed import under_torchrun

    if command not in TORCHRUN_COMMANDS and under_torchrun():
        raise ValueError(f"runs in one process, and torchrun started {os.environ.get('WORLD_SIZE')} (WORLD_SIZE): "
                         f"each would do the whole work and write the same files; start `{prog}` without torchrun")


def _ignore_ended_data_workers() -> None:
    """A SIGTERM to the process group (``timeout``, ``kill -- -PGID``, a batch scheduler) ends the DataLoader
    workers too, and torch's SIGCHLD handler then raised "DataLoader worker (pid N) is killed by signal:
    Terminated" with a traceback when the loader was collected, after our one line. The command is over:
    the workers' end is expected, and the handler is left out."""
    import signal

    if hasattr(signal, "SIGCHLD") and _in_main_thread():
        # a handler that does nothing, not SIG_DFL: a SIGCHLD already pending for torch's handler then raised
        # "OSError: Signal 17 ignored due to race condition" in the unwinding
        signal.signal(signal.SIGCHLD, _ended_child)
    # and the thread of multiprocessing's resource sharer (which hands the workers' tensors' file descriptors
    # over) printed "ConnectionResetError: [Errno 104] Connection reset by peer" with a traceback when a worker
    # ended in the middle of a hand-over: through sys.excepthook, which leaves that thread's errors out now
    previous = sys.excepthook
    if getattr(previous, "_ended_workers_quiet", False):
        return

    def quiet(kind, value, tb):
        if issubclass(kind, (OSError, EOFError)) and _raised_in_resource_sharer(tb):
            return
        previous(kind, value, tb)

    quiet._ended_workers_quiet = True
    sys.excepthook = quiet


def _ended_child(signum, frame) -> None:
    """SIGCHLD once the command is over: a DataLoader worker's end is expected."""


def _raised_in_resource_sharer(tb) -> bool:
    """Whether a traceback passes through multiprocessing's resource sharer (its serving thread)."""
    from multiprocessing import resource_sharer

    while tb is not None:
        if tb.tb_frame.f_code.co_filename == resource_sharer.__file__:
            return True
        tb = tb.tb_next
    return False


def run_command(args: argparse.Namespace, prog: str, debug: bool) -> int:
    """The command, with every error turned into one line and an exit code."""
    from .distributed import StartRefused

    def interrupted(exc: KeyboardInterrupt) -> int:
        if debug:
            import traceback

            traceback.print_exc()
        what = "terminated" if isinstance(exc, _Terminated) else "interrupted"
        print(f"\n{prog}: {what}; no half-written file was left", file=sys.stderr)
        _ignore_ended_data_workers()
        return 130 if not isinstance(exc, _Terminated) else 143

    try:
        _refuse_under_torchrun(prog, getattr(args, "command", None))
        return args.func(args)
    except KeyboardInterrupt as exc:
        return interrupted(exc)
    except _user_errors() as exc:
        if isinstance(exc, BrokenPipeError) and _stdout_closed():
            return 141  # the reader of our output left (`dinov2-dense info | head`): quietly, as a shell tool does
        if debug:
            import traceback

            traceback.print_exc()
        if isinstance(exc, StartRefused):  # another process refused the start; its error is its own line
            print(f"{prog}: {exc}", file=sys.stderr)
        elif (line := _resource_error(exc)) is not None:
            print(f"{prog}: error: {line}", file=sys.stderr)
        else:
            print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a bug, or a peer's failure in a distributed run
        if (interrupt := _interrupt_behind(exc)) is not None and (_ended_worker(exc) or _config_text(exc)):
            # raised while the interrupt unwound: a SIGTERM to the process group ended the DataLoader workers
            # too, and torch's SIGCHLD handler raised "DataLoader worker (pid N) is killed by signal" inside it;
            # or mmengine's config formatting (every checkpoint save) turned the interrupt into a SyntaxError
            # (any other error while unwinding is a failed clean-up, reported as a bug)
            return interrupted(interrupt)
        if (line := _resource_error(exc)) is not None:  # (torch raises RuntimeError for these)
            if debug:
                import traceback

                traceback.print_exc()
            print(f"{prog}: error: {line}", file=sys.stderr)
            return 2
        if _peer_failed(exc) and not debug:
            print(f"{prog}: stopped: another process of this distributed run ended (its error is above where it "
                  "printed one; torchrun's summary names a process that was killed)", file=sys.stderr)
            return 2
        import traceback

        traceback.print_exc()
        print(f"{prog}: internal error (a bug in dinov2-dense; please report it with the traceback above)",
              file=sys.stderr)
        return 1


def _interrupt_behind(exc: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM (:class:`_Terminated`) that ``exc`` was raised while handling, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, KeyboardInterrupt):
            return exc
        exc = exc.__context__
    return None


def _resource_error(exc: BaseException) -> str | None:
    """The line for a machine that ran out of memory or of shared memory (None: another error). torch's CPU
    allocator raises RuntimeError, not MemoryError; a full /dev/shm (a container's 64 MB) is a DataLoader
    worker's RuntimeError, its tensor given no memory there (``share_memory_``, or the hand-over of a batch)."""
    text = str(exc)
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or (
            isinstance(exc, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in text):
        text = _one_line(exc)
        if "you tried to allocate" in text:  # torch's CPU allocator: the size, not its C++ location
            text = "tried to allocate" + text.split("you tried to allocate", 1)[1]
        return f"out of memory ({text[:200]}); try a smaller --batch-size, --size or --tile"
    if isinstance(exc, RuntimeError) and ("</torch_" in text or "shared memory" in text.lower()) and any(
            k in text for k in ("unable to resize file", "unable to write to file", "No space left on device",
                                "unable to allocate shared memory")):
        return ("shared memory (/dev/shm) ran out: the data loading workers hand their images over through it; run "
                "with --num-workers 0 (in a config: *_dataloader.num_workers=0, or train.num_workers=0 for "
                "pretraining), or give the machine more (docker run --shm-size 8g)")
    return None


def _config_text(exc: BaseException) -> bool:
    """mmengine's ``Config.pretty_text`` error: it formats the config with yapf under a bare ``except``, which
    turns a Ctrl-C or SIGTERM during a checkpoint save into this SyntaxError."""
    return isinstance(exc, SyntaxError) and str(exc).startswith("Failed to format the config")


def _ended_worker(exc: BaseException) -> bool:
    """torch's error for a DataLoader worker ended by a signal (its SIGCHLD handler's)."""
    text = str(exc)
    return isinstance(exc, RuntimeError) and text.startswith("DataLoader worker") and (
        "killed by signal" in text or "exited unexpectedly" in text)


def _stdout_closed() -> bool:
    """Whether standard output is a pipe whose reader has gone; if so it is pointed at /dev/null, so
    that the interpreter's last flush does not fail again."""
    import select

    try:
        fd = sys.stdout.fileno()
        poll = select.poll()
        poll.register(fd, select.POLLOUT)
        closed = any(events & select.POLLERR for _, events in poll.poll(0))  # a pipe without a reader
    except (AttributeError, OSError, ValueError):  # no file descriptor, or no poll on this platform
        return False
    if closed:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    return closed


def _close_process_group(wait: bool = False) -> bool:
    """End a torch.distributed process group that a command started (torchrun runs). A gloo process
    that exits with its group alive, or tears it down while a peer still talks to it, can abort in
    C++ teardown ("terminate called without an active exception"), which turns a finished run into a
    failure of the whole launch: after a success (``wait``) the processes meet at a barrier first, so
    that none leaves while another is still working; after a failure they do not wait for peers that
    may be gone."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return False
    try:
        if wait:
            dist.barrier()
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - best effort at exit; the command's own result stands
        pass
    return True


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
