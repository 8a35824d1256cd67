"""DensePredictor: official whole forward, slide windows, multi-scale + flip, frozen backbone."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from heads.predictor import DensePredictor

from .conftest import tiny_vit


class ConvSegHead(nn.Module):
    """A stand-in head: 1x1 conv on the concatenated maps (any head would do for these checks)."""

    def __init__(self, dim=48, layers=2, classes=5):
        super().__init__()
        self.conv_seg = nn.Conv2d(dim * layers, classes, 1)

    def forward(self, feats):
        return self.conv_seg(torch.cat(feats, 1))


class ClsDepthHead(nn.Module):
    min_depth, max_depth = 0.5, 3.0

    def __init__(self, dim=48):
        super().__init__()
        self.conv_depth = nn.Conv2d(2 * dim, 1, 1)

    def forward(self, feats):
        x, cls = feats[-1]
        return 4 * self.conv_depth(torch.cat([x, cls[:, :, None, None].expand_as(x)], 1))


def seg_model():
    torch.manual_seed(0)
    return DensePredictor(tiny_vit(), ConvSegHead(), task="segmentation", layers=[1, 2]).eval()


def test_whole_forward_is_padded_features_resized_to_input():
    model = seg_model()
    x = torch.randn(2, 3, 61, 77)
    out = model(x)
    assert out.shape == (2, 5, 61, 77)
    # independent: pad (3 top, 3 bottom? no: 61 -> 70 is 4 / 5), run blocks, head, resize
    padded = F.pad(x, (3, 4, 4, 5))
    feats = model.backbone.get_intermediate_layers(padded, n=[1, 2], reshape=True)
    ref = F.interpolate(model.decode_head(list(feats)), size=(61, 77), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, ref)
    assert set(k.split(".")[0] for k in model.state_dict()) == {"backbone", "decode_head"}


def test_slide_equals_whole_when_one_crop_covers_the_image():
    model = seg_model()
    x = torch.randn(1, 3, 56, 70)
    whole = model.predict(x, mode="whole")
    slide = model.predict(x, mode="slide", crop_size=(56, 84), stride=20)
    torch.testing.assert_close(slide, whole)
    assert torch.allclose(whole.sum(1), torch.ones(1, 56, 70))  # probabilities


def test_slide_windows_are_bounded_by_the_crop():
    model = seg_model()
    seen = []
    model.backbone.patch_embed.register_forward_pre_hook(lambda m, a: seen.append(tuple(a[0].shape[-2:])))
    x = torch.randn(1, 3, 100, 150)
    out = model.slide_inference(x, crop_size=42, stride=28)
    assert out.shape == (1, 5, 100, 150)
    assert max(h for h, _ in seen) == 42 and max(w for _, w in seen) == 42
    assert len(seen) == 4 * 5  # ceil((100-42)/28)+1 rows, ceil((150-42)/28)+1 cols
    # a crop's own prediction appears unchanged where only that crop covers the image
    corner = model.encode_decode(x[:, :, :42, :42])
    torch.testing.assert_close(out[:, :, :28, :28], corner[:, :, :28, :28])


def test_flip_tta_of_a_mirror_symmetric_input_is_mirror_symmetric():
    model = seg_model()
    half = torch.randn(1, 3, 42, 28)
    x = torch.cat([half, half.flip(-1)], -1)
    plain = model.predict(x)
    assert not torch.allclose(plain, plain.flip(-1), atol=1e-4)  # the model itself is not symmetric
    tta = model.predict(x, flip=True, scales=(1.0, 1.32))
    torch.testing.assert_close(tta, tta.flip(-1), atol=1e-6, rtol=0)


def test_multi_scale_outputs_at_input_size_and_average_views():
    model = seg_model()
    x = torch.randn(1, 3, 42, 56)
    views = [model.predict(x, scales=(s,)) for s in (1.0, 1.5)]
    both = model.predict(x, scales=(1.0, 1.5))
    assert both.shape == (1, 5, 42, 56)
    torch.testing.assert_close(both, (views[0] + views[1]) / 2)


def test_depth_is_clamped_and_backbone_frozen():
    torch.manual_seed(0)
    model = DensePredictor(tiny_vit(), ClsDepthHead(), task="depth", layers=[2], norm=False, class_token=True)
    model.train()
    assert not model.backbone.training and model.decode_head.training
    x = torch.randn(2, 3, 50, 64)
    out = model(x)
    assert out.shape == (2, 1, 50, 64)
    assert out.min() >= 0.5 - 1e-6 and out.max() <= 3.0 + 1e-6  # clamp, then a bilinear (convex) resize
    assert (out == 3.0).any() or (out == 0.5).any()  # the clamp is active on this head
    out.mean().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.decode_head.conv_depth.weight.grad is not None


def test_depth_training_does_not_clamp_a_head_that_overshoots_the_range():
    """The losses see the head's output unclamped, as the official ``forward_train`` (it clamps at inference
    only): a DPT head whose output exceeds max_depth everywhere got zero gradient, and never came back."""
    from heads import DPTHead, GradientLoss, SigLoss

    torch.manual_seed(0)
    head = DPTHead(48, channels=16, post_process_channels=[6, 12, 24, 48], min_depth=0.001, max_depth=10.0)
    with torch.no_grad():
        head.conv_depth.head[-1].bias.fill_(11.0)  # above max_depth at every pixel
    model = DensePredictor(tiny_vit(depth=4), head, task="depth", layers=[0, 1, 2, 3], norm=False, class_token=True)
    gen = torch.Generator().manual_seed(1)
    feats = [(torch.randn(2, 48, 2, 3, generator=gen), torch.randn(2, 48, generator=gen)) for _ in range(4)]
    gt = torch.rand(2, 40, 52, generator=gen) * 9.0 + 0.5
    gt[0, :5] = 0.0  # invalid pixels
    losses = model.head_losses(feats, gt, [SigLoss(warm_up=False), GradientLoss(loss_weight=0.5)])
    out = F.interpolate(head(feats), size=(40, 52), mode="bilinear", align_corners=False)
    assert out.min() > 10.0  # the whole output overshoots
    # the official SigLoss: g = log(pred + 1e-3) - log(gt + 1e-3) on gt > 0, sqrt(var(g) + 0.15 mean(g)^2)
    valid = gt[:, None] > 0
    g = torch.log(out[valid] + 1e-3) - torch.log(gt[:, None][valid] + 1e-3)
    torch.testing.assert_close(losses["loss_SigLoss"], torch.sqrt(torch.var(g) + 0.15 * g.mean() ** 2))
    sum(losses.values()).backward()
    assert head.conv_depth.head[-1].bias.grad.abs().item() > 0
    assert all(torch.isfinite(q.grad).all() for q in head.parameters() if q.grad is not None)
    with torch.no_grad():  # inference still clamps
        assert model.predict(torch.randn(1, 3, 28, 42)).max() <= 10.0 + 1e-5

    negative = DensePredictor(tiny_vit(), ClsDepthHead(), task="depth", layers=[2], norm=False, class_token=True)
    with torch.no_grad():
        negative.decode_head.conv_depth.bias.fill_(-5.0)
    pairs = [(torch.randn(1, 48, 2, 3, generator=gen), torch.randn(1, 48, generator=gen))]
    with pytest.raises(ValueError, match="SigLoss: pred holds negative depths"):  # its log would be NaN
        negative.head_losses(pairs, gt[:1], [SigLoss()])


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="task"):
        DensePredictor(tiny_vit(), ConvSegHead(), task="detection", layers=[2])
    with pytest.raises(ValueError, match="min_depth"):
        DensePredictor(tiny_vit(), ConvSegHead(), task="depth", layers=[2])
    with pytest.raises(ValueError, match="mode"):
        seg_model().predict(torch.randn(1, 3, 28, 28), mode="tiles")


@pytest.mark.parametrize("cfg, message", [
    (dict(mode="slid"), r"test_cfg.mode='slid': use 'whole' or 'slide'"),
    (dict(crop_size=0), r"test_cfg.crop_size=0: a positive integer"),
    (dict(mode="slide", crop_size=40, stride=60), r"test_cfg: stride=60 is larger than crop_size=40"),
    (dict(mode="slide", crop_size=(40, 80), stride=(30, 90)), r"stride=\(30, 90\) is larger than crop_size=\(40, 80\)"),
    (dict(mode="slide", crop_size=224), r"stride 341 \(the default\) is larger than crop_size=224"),
    (dict(scales=[]), r"test_cfg.scales=\[\]: one or more positive ratios"),
    (dict(scales=(1.0, -0.5)), r"test_cfg.scales="),
    (dict(crop_batch_size=0), r"test_cfg.crop_batch_size=0"),
    (dict(flip="yes"), r"test_cfg.flip='yes': true or false"),
    (dict(scale=(2048, 0)), r"test_cfg.scale=\(2048, 0\): \(long side, short side\)"),
    (dict(strides=341), r"test_cfg.strides: unknown test setting"),
])
def test_test_settings_are_checked_when_the_predictor_is_built(cfg, message):
    """A stride beyond the window left the pixels between windows unpredicted (NaN from slide_inference,
    uniform probabilities or 0 m from predict); the others failed only at the first prediction."""
    with pytest.raises(ValueError, match=message):
        DensePredictor(tiny_vit(), ConvSegHead(), task="segmentation", layers=[1, 2], test_cfg=cfg)


def test_window_settings_of_whole_mode_are_left_to_the_slide_calls():
    """Whole mode uses no window: crop_size=224 alone (the default stride 341 beyond it) is no error, and a
    predict() that slides with its own stride takes it."""
    model = DensePredictor(tiny_vit(), ConvSegHead(), task="segmentation", layers=[1, 2],
                           test_cfg=dict(mode="whole", crop_size=28)).eval()
    assert model.predict(torch.randn(1, 3, 42, 56), mode="slide", stride=14).shape == (1, 5, 42, 56)


def test_a_stride_beyond_the_window_is_refused_when_given_to_predict():
    model, x = seg_model(), torch.randn(1, 3, 100, 150)
    with pytest.raises(ValueError, match="stride 60 is larger than crop_size 40"):
        model.slide_inference(x, 40, 60)
    with pytest.raises(ValueError, match=r"predict\(\): stride=60 is larger than crop_size=40"):
        model.predict(x, mode="slide", crop_size=40, stride=60, out_size=(50, 75))
    assert torch.isfinite(model.slide_inference(x, 40, 40)).all()  # a stride equal to the window covers it all


@pytest.mark.parametrize("bad, said", [
    (dict(crop_batch_size=1.5), "predict().crop_batch_size=1.5: windows a batch, an integer >= 1"),  # was a TypeError
    (dict(crop_batch_size=0), "predict().crop_batch_size=0: windows a batch, an integer >= 1"),
    (dict(mode="tiles"), "predict().mode='tiles': use 'whole' or 'slide'"),
    (dict(scales=()), "predict().scales=(): one or more positive ratios"),
    (dict(flip="yes"), "predict().flip='yes': true or false"),
])
def test_predict_arguments_are_checked_as_the_configs_test_cfg(bad, said):
    model = seg_model()
    with pytest.raises(ValueError) as caught:
        model.predict(torch.randn(1, 3, 28, 28), **{"mode": "slide", "crop_size": 14, "stride": 14, **bad})
    assert said in str(caught.value), str(caught.value)


def test_one_image_to_features_routine_and_one_layer_resolver():
    """DensePredictor, extract_features and the official get_intermediate_layers read the same
    features through one routine; negative block indices count from the end everywhere."""
    from dinov2_dense.features import extract_features

    vit = tiny_vit(registers=4, depth=4)
    x = torch.randn(2, 3, 56, 70)
    pred = DensePredictor(vit, ConvSegHead(layers=2), task="segmentation", layers=[-3, -1])
    assert pred.layers == [1, 3]
    maps = pred.extract_features(x)
    official = vit.get_intermediate_layers(x, n=[1, 3], reshape=True)
    negative = vit.get_intermediate_layers(x, n=[-3, -1], reshape=True)
    feats = extract_features(vit, x, layers=[-3, -1])
    for i, layer in enumerate([1, 3]):
        torch.testing.assert_close(maps[i], official[i], rtol=0, atol=0)
        torch.testing.assert_close(negative[i], official[i], rtol=0, atol=0)
        torch.testing.assert_close(feats.maps[layer], official[i], rtol=0, atol=0)
    with pytest.raises(ValueError, match="out of range"):
        DensePredictor(vit, ConvSegHead(layers=1), task="segmentation", layers=[4])


def test_multi_scale_flip_follows_mmseg_order():
    """mmseg 0.x aug_test over inference(rescale=True): each view's logits are resized to the input,
    then softmaxed, then flipped back; the probabilities are averaged. Written out by hand here."""
    model = seg_model()
    x = torch.randn(1, 3, 42, 56)
    expected = []
    for scale in (1.0, 1.32, 1.73):
        size = (round(42 * scale), round(56 * scale))
        xs = x if scale == 1.0 else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        for flip in (False, True):
            logits = model(xs.flip(-1) if flip else xs)
            logits = F.interpolate(logits, size=(42, 56), mode="bilinear", align_corners=False)
            probs = logits.softmax(1)
            expected.append(probs.flip(-1) if flip else probs)
    got = model.predict(x, scales=(1.0, 1.32, 1.73), flip=True)
    torch.testing.assert_close(got, torch.stack(expected).mean(0), atol=1e-6, rtol=1e-5)


def test_batched_windows_and_mirrors_equal_one_at_a_time():
    """Slide windows in batches of crop_batch_size and a view with its mirror in one batch give the
    one-window, one-view-at-a-time result (two images, windows that overlap unevenly)."""
    model = seg_model()
    x = torch.randn(2, 3, 70, 100)
    single = model.slide_inference(x, crop_size=42, stride=28, crop_batch_size=1)
    for n in (2, 3, 100):
        torch.testing.assert_close(model.slide_inference(x, crop_size=42, stride=28, crop_batch_size=n), single,
                                   atol=1e-5, rtol=1e-5)
    expected = []
    for scale in (1.0, 1.5):
        xs = x if scale == 1.0 else F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
        for flip in (False, True):
            logits = model.slide_inference(xs.flip(-1) if flip else xs, 42, 28, crop_batch_size=1)
            probs = F.interpolate(logits, size=(70, 100), mode="bilinear", align_corners=False).softmax(1)
            expected.append(probs.flip(-1) if flip else probs)
    got = model.predict(x, mode="slide", crop_size=42, stride=28, scales=(1.0, 1.5), flip=True, crop_batch_size=5)
    torch.testing.assert_close(got, torch.stack(expected).mean(0), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="crop_batch_size"):
        model.slide_inference(x, 42, 28, crop_batch_size=0)


def test_slide_resampled_to_the_output_equals_resizing_the_averaged_map():
    """slide_inference(out_size=...) never builds the map at the view's size, yet equals it resized:
    smaller, equal and larger outputs, uneven overlaps, a crop taller than the image, a depth model."""
    seg = seg_model()
    torch.manual_seed(1)
    depth = DensePredictor(tiny_vit(), ClsDepthHead(), task="depth", layers=[2], norm=False, class_token=True).eval()
    x = torch.randn(2, 3, 70, 100)
    for model, crop, stride in ((seg, 42, 28), (seg, (84, 56), 30), (depth, 42, 17)):
        with torch.no_grad():
            full = model.slide_inference(x, crop, stride, crop_batch_size=3)
            for size in ((23, 31), (70, 100), (131, 177), (70, 41)):
                want = F.interpolate(full, size=size, mode="bilinear", align_corners=False)
                got = model.slide_inference(x, crop, stride, crop_batch_size=4, out_size=size)
                assert got.shape == want.shape
                torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)


def test_multi_scale_slide_reads_no_value_back_from_the_device():
    """The +ms path reads nothing back from the model's device (a GPU read waits for all queued
    work, idling the GPU while the next windows are prepared): on the "meta" device, which holds
    shapes but no values, every data-dependent step would raise."""
    model = seg_model().to("meta")
    x = torch.randn(2, 3, 70, 100, device="meta")
    out = model.predict(x, mode="slide", crop_size=42, stride=28, scales=(1.0, 1.5), flip=True, crop_batch_size=3,
                        out_size=(60, 80))
    assert out.shape == (2, 5, 60, 80) and out.device.type == "meta"


def test_depth_flip_averaging_of_a_mirror_symmetric_input():
    """Depth test-time flip (the DINOv2 depth configs' MultiScaleFlipAug(flip=True)): the average
    of the prediction and the flipped-back prediction of the flipped image. A mirror-symmetric input
    is its own flip, so its flip-averaged depth is the mean of the plain prediction and that
    prediction's mirror image: mirror-symmetric itself, whatever the model."""
    torch.manual_seed(0)
    model = DensePredictor(tiny_vit(), ClsDepthHead(), task="depth", layers=[2], norm=False, class_token=True).eval()
    half = torch.randn(1, 3, 42, 28)
    x = torch.cat([half, half.flip(-1)], -1)
    plain = model.predict(x)
    assert not torch.allclose(plain, plain.flip(-1), atol=1e-4)  # the model itself is not symmetric
    averaged = model.predict(x, flip=True)
    torch.testing.assert_close(averaged, (plain + plain.flip(-1)) / 2, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(averaged, averaged.flip(-1), atol=1e-6, rtol=0)
    y = torch.randn(1, 3, 42, 56)
    torch.testing.assert_close(model.predict(y, flip=True), (model(y) + model(y.flip(-1)).flip(-1)) / 2,
                               atol=1e-6, rtol=1e-5)


def test_official_view_sizes_from_the_original_image():
    """With scale=(long, short) the views are the official test pipeline's: mmcv's rescale rule from
    the image's own size, times each ratio; the output is at out_size, logits resized before the
    softmax."""
    from dinov2_dense.features import rescale_size

    assert rescale_size(512, 683, (2048, 512)) == (512, 683)
    assert rescale_size(375, 500, (99999999, 640), 1.32) == (844, 1125)  # short side int(640 * 1.32)
    assert rescale_size(1024, 2048, (2048, 512)) == (512, 1024)
    model = seg_model()
    seen = []
    real = model.encode_decode
    model.encode_decode = lambda x: seen.append(tuple(x.shape[:1]) + tuple(x.shape[-2:])) or real(x)
    x = torch.randn(1, 3, 30, 40)
    out = model.predict(x, scale=(99999, 28), scales=(1.0, 1.5), flip=True, out_size=(60, 80))
    assert seen == [(2, 28, 37), (2, 42, 56)]  # each view size once, the image and its mirror in one batch
    assert out.shape == (1, 5, 60, 80)
    view = F.interpolate(real(F.interpolate(x, size=(28, 37), mode="bilinear", align_corners=False)), size=(60, 80),
                         mode="bilinear", align_corners=False).softmax(1)
    view_flip = F.interpolate(real(F.interpolate(x, size=(28, 37), mode="bilinear", align_corners=False).flip(-1)),
                              size=(60, 80), mode="bilinear", align_corners=False).softmax(1).flip(-1)
    one = model.predict(x, scale=(99999, 28), flip=True, out_size=(60, 80))
    torch.testing.assert_close(one, (view + view_flip) / 2, atol=1e-6, rtol=1e-5)


def test_views_of_8bit_images_are_resized_in_8_bits_as_mmseg_does():
    """mmseg's test pipelines resize the 8-bit image (mmcv.imresize: OpenCV's bilinear resize) and then
    normalise it. Images normalised from 8-bit ones (as the data sets make them) get their views that
    way: the multi-scale + flip prediction equals the average, computed here, of the one-view predictions
    of views made by OpenCV from the 8-bit image. Other images (floats) are resized as floats. The
    normalised images used to be resized, which moved the reviewer's synthetic mIoU by 0.03-0.1."""
    import cv2
    import numpy as np

    from dinov2_dense.features import normalise_8bit

    model = seg_model()
    rng = np.random.default_rng(0)
    eight = rng.integers(0, 256, (2, 50, 64, 3), dtype=np.uint8)
    x = normalise_8bit(torch.from_numpy(eight).permute(0, 3, 1, 2))
    scales = (0.75, 1.3)
    with torch.no_grad():
        got = model.predict(x, scales=scales, flip=True)
        want = 0
        for ratio in scales:
            size = (round(50 * ratio), round(64 * ratio))
            view = np.stack([cv2.resize(im, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) for im in eight])
            view = normalise_8bit(torch.from_numpy(view).permute(0, 3, 1, 2))
            for flipped in (False, True):
                out = model.predict(view.flip(-1) if flipped else view, out_size=(50, 64))
                want = want + (out.flip(-1) if flipped else out)
        torch.testing.assert_close(got, want / 4, atol=1e-6, rtol=1e-5)
        floats = model.predict(x, scales=scales, flip=True)  # the same images, no longer 8-bit: resized as floats
        y = x + 1e-3
        as_floats = model.predict(y, scales=scales, flip=True)
        float_views = [F.interpolate(y, size=(round(50 * r), round(64 * r)), mode="bilinear", align_corners=False)
                       for r in scales]
        manual = sum(model.predict(v.flip(-1) if f else v, out_size=(50, 64)).flip(-1) if f else
                     model.predict(v, out_size=(50, 64)) for v in float_views for f in (False, True)) / 4
        torch.testing.assert_close(as_floats, manual, atol=1e-6, rtol=1e-5)
        assert torch.equal(floats, got)
        # an 8-bit image batched with a float one keeps its 8-bit views: its prediction is the one it has alone
        # (the batch was resized as floats where any image was not 8-bit; a reviewer: 80 of 4800 pixels moved)
        mixed = model.predict(torch.cat([x[:1], y[1:]]), scales=scales, flip=True)
        torch.testing.assert_close(mixed[:1], model.predict(x[:1], scales=scales, flip=True), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(mixed[1:], model.predict(y[1:], scales=scales, flip=True), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(mixed[:1], got[:1], atol=1e-6, rtol=1e-5)


def test_slide_to_another_size_builds_no_matrix_of_the_images_side(monkeypatch):
    """The final resize's weights are made for the block each window reaches: a whole (out, in) float64
    matrix per axis (and the identity it was made from) grew with the square of the image's long side,
    +3 GB for a 12,000-pixel panorama (a review), where the docstring promises memory bounded by the crops
    and the output map."""
    import heads.predictor as predictor

    sizes = []
    made = predictor._resize_matrix
    monkeypatch.setattr(predictor, "_resize_matrix", lambda n, m, device: sizes.append((n, m)) or made(n, m, device))
    model = seg_model()
    x = torch.randn(1, 3, 42, 300)
    out = model.predict(x, mode="slide", crop_size=42, stride=28, out_size=(40, 290))
    assert out.shape == (1, 5, 40, 290) and sizes and max(n for n, _ in sizes) <= 42, sizes


def test_a_resize_block_is_the_block_of_the_whole_resize_matrix():
    from heads.predictor import _resize_block, _resize_matrix

    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        n, m = (int(v) for v in torch.randint(1, 200, (2,), generator=gen))
        first = int(torch.randint(0, m, (1,), generator=gen))
        last = int(torch.randint(first + 1, m + 1, (1,), generator=gen))
        a = int(torch.randint(0, n, (1,), generator=gen))
        b = int(torch.randint(a + 1, n + 1, (1,), generator=gen))
        torch.testing.assert_close(_resize_block(n, m, (first, last), (a, b), "cpu"),
                                   _resize_matrix(n, m, "cpu")[first:last, a:b], atol=1e-12, rtol=0)
