#!/usr/bin/python3
"""Golden numbers for the data pipeline (tests/test_data.c), from the
reference implementations: Pillow's Image.resize (what torchvision uses for
PIL images), torchvision's augmentation ops on uint8 tensors
(torchvision.transforms.autoaugment._apply_op, the function TrivialAugmentWide
and RandAugment call), ToTensor + Normalize, and timm's evaluation transform
(Resize(floor(size / crop_pct)) + CenterCrop(size)).

Needs Debian's python3-torchvision (which brings python3-torch and
python3-pil); the test itself needs no Python. Writes
tests/fixtures/data/torchvision-golden.json:

  {"version": 1, "generator": "...", "cases": [
     {"kind": "resize", "src": "rgb", "height": H, "width": W,
      "interpolation": "bilinear"|"bicubic", "out": "<hex bytes, HWC>"},
     {"kind": "op", "src": "rgb"|"gray"|"big", "op": "ShearX", "magnitude": m,
      "out": "<hex bytes, HWC>"},
     {"kind": "normalize", "src": "rgb", "mean": [...], "std": [...],
      "out": "<hex of float32 little-endian, CHW>"},
     {"kind": "eval", "src": "rgb", "size": S, "crop_pct": c,
      "interpolation": ..., "mean": [...], "std": [...], "out": "<hex f32 CHW>"}],
   "magnitudes": [{"policy": "trivial"|"rand", "num_bins": n, "height": h,
                   "width": w, "op": "ShearX", "signed": true,
                   "values": [bin 0, bin 1, ...]}]}

The source images are defined by formulas that the test repeats:
  rgb  (10, 12, 3): r = (37 y + 11 x^2) % 256, g = (200 - 13 x + 7 y) % 256,
                    b = (29 x y + 5) % 256
  gray (10, 12, 1): the r plane of rgb
  big  (18, 16, 3): the same formulas on an 18x16 grid (enough pixels for
                    Equalize to act: step = floor(sum / 255) >= 1)

Usage: tools/make-data-golden.py [OUT]
"""
import json
import math
import struct
import sys

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F
from torchvision.transforms.autoaugment import RandAugment, TrivialAugmentWide, _apply_op


def make_rgb(h, w):
    img = np.zeros((h, w, 3), dtype=np.uint8)
    for y in range(h):
        for x in range(w):
            img[y, x, 0] = (37 * y + 11 * x * x) % 256
            img[y, x, 1] = (200 - 13 * x + 7 * y) % 256
            img[y, x, 2] = (29 * x * y + 5) % 256
    return img


def hex_bytes(array):
    return np.ascontiguousarray(array).astype(np.uint8).tobytes().hex()


def hex_f32(array):
    return np.ascontiguousarray(array, dtype="<f4").tobytes().hex()


def pil_image(hwc):
    return Image.fromarray(hwc if hwc.shape[2] == 3 else hwc[:, :, 0], "RGB" if hwc.shape[2] == 3 else "L")


def pil_to_hwc(img):
    a = np.asarray(img)
    return a if a.ndim == 3 else a[:, :, None]


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/data/torchvision-golden.json"
    sources = {"rgb": make_rgb(10, 12), "big": make_rgb(18, 16)}
    sources["gray"] = sources["rgb"][:, :, :1].copy()
    cases = []
    modes = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}

    # Resizes: down, up, one axis only, both ways at once.
    for src in ("rgb", "gray"):
        for (h, w) in ((4, 5), (13, 17), (10, 5), (3, 12), (7, 20), (1, 1)):
            for name, mode in modes.items():
                img = pil_image(sources[src]).resize((w, h), mode)
                cases.append({"kind": "resize", "src": src, "height": h, "width": w,
                              "interpolation": name, "out": hex_bytes(pil_to_hwc(img))})

    # Augmentation ops on uint8 tensors, nearest interpolation, fill None.
    ops = [
        ("Identity", 0.0), ("ShearX", 0.3), ("ShearX", -0.99), ("ShearY", 0.45), ("ShearY", -0.2),
        ("TranslateX", 3.0), ("TranslateX", -5.7), ("TranslateY", 4.0), ("TranslateY", -2.0),
        ("Rotate", 30.0), ("Rotate", -135.0), ("Rotate", 17.5), ("Rotate", 90.0),
        ("Brightness", 0.5), ("Brightness", -0.66), ("Color", 0.6), ("Color", -0.9),
        ("Contrast", 0.7), ("Contrast", -0.45), ("Sharpness", 0.9), ("Sharpness", -0.99),
        ("Posterize", 3.0), ("Posterize", 6.0), ("Solarize", 128.0), ("Solarize", 77.5),
        ("AutoContrast", 0.0), ("Equalize", 0.0),
    ]
    for src in ("rgb", "gray", "big"):
        chw = torch.from_numpy(sources[src]).permute(2, 0, 1).contiguous()
        for op, magnitude in ops:
            if src == "big" and op not in ("Equalize", "AutoContrast", "Sharpness", "Rotate"):
                continue
            res = _apply_op(chw.clone(), op, magnitude, interpolation=InterpolationMode.NEAREST,
                            fill=None)
            cases.append({"kind": "op", "src": src, "op": op, "magnitude": magnitude,
                          "out": hex_bytes(res.permute(1, 2, 0).numpy())})

    # ToTensor + Normalize.
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    t = F.normalize(F.to_tensor(pil_image(sources["rgb"])), mean, std)
    cases.append({"kind": "normalize", "src": "rgb", "mean": mean, "std": std,
                  "out": hex_f32(t.numpy())})

    # timm's eval transform (scale_size = floor(size / crop_pct), Resize of
    # the shorter side, CenterCrop), then ToTensor + Normalize.
    for size, crop_pct, name in ((7, 0.875, "bilinear"), (6, 0.9, "bicubic"), (9, 1.0, "bilinear"),
                                 (11, 0.875, "bicubic")):
        scale = math.floor(size / crop_pct)
        img = F.resize(pil_image(sources["rgb"]), scale,
                       interpolation=InterpolationMode.BILINEAR if name == "bilinear"
                       else InterpolationMode.BICUBIC)
        img = F.center_crop(img, size)
        t = F.normalize(F.to_tensor(img), mean, std)
        cases.append({"kind": "eval", "src": "rgb", "size": size, "crop_pct": crop_pct,
                      "interpolation": name, "mean": mean, "std": std, "out": hex_f32(t.numpy())})

    # The magnitude bins of both policies (float32 values, as used).
    magnitudes = []
    for num_bins in (31, 11):
        spaces = [("trivial", 0, 0, TrivialAugmentWide()._augmentation_space(num_bins))]
        for (h, w) in ((224, 224), (10, 331)):
            spaces.append(("rand", h, w, RandAugment()._augmentation_space(num_bins, (h, w))))
        for policy, h, w, space in spaces:
            for op, (values, signed) in space.items():
                # float32 values, written with the 9 digits that identify them.
                values = ([float(format(v, ".9g")) for v in values.reshape(-1).tolist()]
                          if values.ndim > 0 else [])
                magnitudes.append({"policy": policy, "num_bins": num_bins, "height": h, "width": w,
                                   "op": op, "signed": bool(signed), "values": values})

    doc = {"version": 1,
           "generator": "tools/make-data-golden.py with torch %s, torchvision %s, Pillow %s"
                        % (torch.__version__, torchvision.__version__, Image.__version__),
           "cases": cases,
           "magnitudes": magnitudes}
    # One case per line: small, and diffs show which case changed.
    with open(out, "w") as f:
        f.write('{"version": 1,\n"generator": %s,\n' % json.dumps(doc["generator"]))
        for key in ("cases", "magnitudes"):
            f.write('"%s": [\n' % key)
            f.write(",\n".join(json.dumps(item, separators=(",", ":")) for item in doc[key]))
            f.write("\n]%s\n" % ("," if key == "cases" else "}"))
    print("wrote %d cases to %s" % (len(cases), out))


if __name__ == "__main__":
    main()
