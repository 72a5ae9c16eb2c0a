"""Batch augmentation on the device (data.gpu_augment) against torchvision's per-image ops."""
import pytest
import torch
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms import functional as TF

from fewshot.data import BatchAugment, build_transform
from fewshot.data.augment import resized_crops, sample_boxes
from fewshot.data.transforms import MEAN, STD
from fewshot.errors import ConfigError

@pytest.mark.parametrize("size", [32, 12])          # up- and downsampling
def test_resized_crops_equal_torchvision_resized_crop(size):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8, 3, 30, 41), generator=g, dtype=torch.uint8)
    boxes = sample_boxes(8, 30, 41, g)
    flip = torch.arange(8) % 2 == 1
    out = resized_crops(images, boxes, size, flip)
    assert out.shape == (8, 3, size, size) and out.dtype == torch.float32
    for k in range(8):
        top, left, h, w = boxes[k].tolist()
        ref = TF.resized_crop(images[k].float(), top, left, h, w, [size, size], antialias=False)
        if flip[k]:
            ref = TF.hflip(ref)
        torch.testing.assert_close(out[k], ref, atol=2e-3, rtol=0)

def test_boxes_follow_random_resized_crop():
    g = torch.Generator().manual_seed(1)
    H, W = 60, 80
    boxes = sample_boxes(4000, H, W, g).double()
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= H).all() and (left + w <= W).all()
    frac = h * w / (H * W)
    assert frac.min() >= 0.07 and frac.max() <= 1.0
    aspect = w / h
    assert aspect.min() >= 0.7 and aspect.max() <= 1.45     # 3/4 .. 4/3 up to whole-pixel rounding
    torch.manual_seed(0)
    ref = torch.tensor([RandomResizedCrop.get_params(torch.empty(1, H, W), (0.08, 1.0), (3 / 4, 4 / 3))
                        for _ in range(4000)], dtype=torch.float64)
    ref_frac = ref[:, 2] * ref[:, 3] / (H * W)
    assert float(frac.mean()) == pytest.approx(float(ref_frac.mean()), abs=0.02)
    position = (top / (H - h + 1)).mean()                    # uniform positions, as torchvision's
    assert float(position) == pytest.approx(float((ref[:, 0] / (H - ref[:, 2] + 1)).mean()), abs=0.02)
    # the same generator seed gives the same boxes
    again = sample_boxes(4000, H, W, torch.Generator().manual_seed(1)).double()
    assert torch.equal(boxes, again)

def test_impossible_scale_falls_back_to_torchvision_centre_crop():
    for H, W in [(40, 100), (100, 40), (50, 50)]:
        boxes = sample_boxes(3, H, W, torch.Generator().manual_seed(0), scale=(2.0, 3.0))
        ref = RandomResizedCrop.get_params(torch.empty(1, H, W), (2.0, 3.0), (3 / 4, 4 / 3))
        assert boxes.tolist() == [list(ref)] * 3

def test_batch_augment_normalises_and_flips_half():
    aug = BatchAugment(16, MEAN, STD)
    mean_image = (torch.tensor(MEAN) * 255)[None, :, None, None].expand(64, 3, 20, 20)
    out = aug(mean_image, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, torch.zeros(64, 3, 16, 16), atol=1e-5, rtol=0)
    # a left-dark / right-bright image: mirrored outputs are bright on the left
    ramp = torch.zeros(400, 3, 20, 20, dtype=torch.uint8)
    ramp[..., 10:] = 255
    out = aug(ramp, torch.Generator().manual_seed(0))
    mirrored = (out[..., 0] > out[..., -1]).flatten(1).all(1)
    plain = (out[..., 0] < out[..., -1]).flatten(1).all(1)
    spans = (mirrored | plain).sum()        # crops that hold both halves
    assert spans > 100 and abs(float(mirrored.sum()) / float(spans) - 0.5) < 0.1
    with pytest.raises(ValueError, match=r"images must have shape \[B, 3, H, W\], got \(3, 20, 20\)"):
        aug(ramp[0], torch.Generator())

def test_decode_only_transform_gives_uint8_and_rejects_other_transforms():
    from PIL import Image
    img = Image.new("RGB", (30, 20), (10, 20, 30))
    t = build_transform("deepemd", 16, train=True, on_device=True)(img)
    assert t.dtype == torch.uint8 and t.shape == (3, 16, 16) and t[0, 0, 0].item() == 10
    with pytest.raises(ConfigError, match="^gpu_augment: applies to .* 'deepemd'; the transform is 'grayscale'"):
        build_transform("grayscale", 16, train=True, on_device=True)
