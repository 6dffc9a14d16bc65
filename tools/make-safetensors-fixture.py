#!/usr/bin/env python3
"""Writes the safetensors fixtures of qtune's tests, byte for byte as the
reference implementation (Hugging Face's safetensors, Rust core used by its
Python package) writes them.

    python3 tools/make-safetensors-fixture.py [--out tests/fixtures/safetensors]

Outputs (committed; the C tests compare against the values listed here):
  tiny.safetensors      F32, F16, BF16, I64 and U8 tensors with known values,
                        incl. rounding ties, subnormals, infinities, NaN, -0,
                        a scalar and an empty tensor; two metadata entries.
  vit_tiny.safetensors  a ViT with timm's parameter names: patch 4, width 8,
                        depth 1, MLP 32, 8 px images (2x2 patches + class
                        token), 3 classes; random weights (seed 0). The hub
                        fixture tests/fixtures/hubs/tiny.yaml points at it.

Only the Python standard library is needed (struct, json, fractions), because
neither Debian 12 nor this project's machines ship the safetensors package
(Debian has no python3-safetensors, and PyPI is out of reach). The layout
follows the reference's `prepare()` (safetensors/src/tensor.rs):
  - tensors sorted by descending dtype (the enum order BOOL < U8 < I8 <
    F8_E5M2 < F8_E4M3 < I16 < U16 < F16 < BF16 < I32 < U32 < F32 < F64 < I64 <
    U64), then by name; data_offsets laid out contiguously in that order;
  - the header is serde_json's compact output: "__metadata__" first, then
    the tensors in that order, each {"dtype","shape","data_offsets"};
  - spaces pad the header to a multiple of 8 bytes; the 8-byte prefix is
    the header length, little-endian.
(The reference keeps "__metadata__" in a hash map, so with several keys its
order varies between runs; this script and qtune's writer sort the keys.)
The C test suite also checks qtune's writer against byte strings copied
from the reference's own unit tests.

Element conversions are computed independently of qtune's C code: F16 by
CPython's struct 'e' format (IEEE binary16, round half to even); BF16 by
exact rational rounding of the float32 value to the nearest bfloat16, ties
to even. When Debian's python3-torch is importable (apt-get install
python3-torch), the script also checks that torch's float32 -> float16 and
float32 -> bfloat16 conversions give the same bytes, and says so; torch 1.13
(Debian 12) cannot write safetensors files itself.
"""
import argparse
import json
import math
import os
import random
import struct
import sys
from fractions import Fraction

# The reference's dtype enum, in its order (increasing alignment).
DTYPE_ORDER = ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16",
               "I32", "U32", "F32", "F64", "I64", "U64"]


# ---------------------------------------------------------------------------
# Element encodings
# ---------------------------------------------------------------------------

def f32_bits(x):
    """float32 bit pattern of x (CPython rounds double -> float to nearest even)."""
    return struct.unpack("<I", struct.pack("<f", x))[0]


def bits_f32(b):
    return struct.unpack("<f", struct.pack("<I", b))[0]


def bf16_bits(x):
    """bfloat16 bits of float32(x): the nearest bfloat16, ties to even,
    computed with exact fractions rather than bit tricks."""
    b = f32_bits(x)
    if (b & 0x7FFFFFFF) > 0x7F800000:  # NaN: keep sign and top payload, quiet
        return (b >> 16) | 0x0040
    if (b & 0x7FFFFFFF) == 0x7F800000:
        return b >> 16
    value = Fraction(bits_f32(b))
    low = b >> 16  # truncation: same sign, magnitude <= |value|
    high = low + 1  # next magnitude up (may be infinity: 0x7f80)
    low_value = Fraction(bits_f32(low << 16))
    if (high & 0x7FFF) == 0x7F80:
        # Above the largest bfloat16 the next value is the overflow threshold.
        high_value = Fraction(2) ** 128 * (1 if value > 0 else -1)
    else:
        high_value = Fraction(bits_f32(high << 16))
    d_low, d_high = abs(value - low_value), abs(high_value - value)
    if d_low < d_high or (d_low == d_high and low % 2 == 0):
        return low
    return high


def encode(dtype, values):
    if dtype == "F32":
        return b"".join(struct.pack("<f", v) for v in values)
    if dtype == "F16":
        return b"".join(struct.pack("<e", v) for v in values)
    if dtype == "BF16":
        return b"".join(struct.pack("<H", bf16_bits(v)) for v in values)
    if dtype == "I64":
        return b"".join(struct.pack("<q", v) for v in values)
    if dtype == "U8":
        return bytes(values)
    raise ValueError(dtype)


# ---------------------------------------------------------------------------
# The file layout of the reference implementation
# ---------------------------------------------------------------------------

def save_file(tensors, metadata, path):
    """tensors: {name: (dtype, shape, values)}; metadata: {str: str} or None."""
    order = sorted(tensors, key=lambda name: (-DTYPE_ORDER.index(tensors[name][0]), name))
    header = {}
    if metadata:
        header["__metadata__"] = dict(sorted(metadata.items()))
    buffers = []
    offset = 0
    for name in order:
        dtype, shape, values = tensors[name]
        data = encode(dtype, values)
        count = 1
        for size in shape:
            count *= size
        assert len(values) == count, name
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        buffers.append(data)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for data in buffers:
            f.write(data)


# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------

F16_VALUES = [1.0, -2.0, 65504.0, 2.0 ** -24, 1023 * 2.0 ** -24, 2.0 ** -14, math.inf, -math.inf,
              math.nan, -0.0, 1.0 / 3.0, 0.1]
# Ties: 1 + 2^-11 lies halfway between 1 and 1 + 2^-10 (-> 1, even);
# 1 + 3 * 2^-11 halfway between 1 + 2^-10 and 1 + 2^-9 (-> 1 + 2^-9, even);
# 2^-25 halfway between 0 and the smallest subnormal (-> 0); 3 * 2^-25
# halfway between 2^-24 and 2^-23 (-> 2^-23, even).
F16_TIES = [1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11, 2.0 ** -25, 3 * 2.0 ** -25]
BF16_VALUES = [1.0, -3.0, 1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8, math.pi, 1e-40, math.inf, math.nan]
F32_VALUES = [0.0, 1.0, -2.5, 3.25, 0.1, 1e30]


def tiny_tensors():
    return {
        "f32.values": ("F32", [2, 3], F32_VALUES),
        "f32.scalar": ("F32", [], [42.0]),
        "empty": ("F32", [0, 4], []),
        "f16.values": ("F16", [12], F16_VALUES),
        "f16.ties": ("F16", [2, 2], F16_TIES),
        "bf16.values": ("BF16", [2, 4], BF16_VALUES),
        "i64.step": ("I64", [1], [123456789012]),
        "u8.mask": ("U8", [3], [0, 7, 255]),
    }


def vit_tiny_tensors(seed=0):
    """timm VisionTransformer names; patch 4, width 8, depth 1, mlp 32,
    image 8 (2 x 2 patches + class token), 3 classes."""
    rng = random.Random(seed)
    width, patch, hidden, classes, positions = 8, 4, 32, 3, 5

    def normal(*shape):
        count = 1
        for size in shape:
            count *= size
        return ("F32", list(shape), [rng.gauss(0.0, 0.02) for _ in range(count)])

    def const(value, *shape):
        return ("F32", list(shape), [value] * shape[0])

    tensors = {
        "cls_token": normal(1, 1, width),
        "pos_embed": normal(1, positions, width),
        "patch_embed.proj.weight": normal(width, 3, patch, patch),
        "patch_embed.proj.bias": normal(width),
        "blocks.0.norm1.weight": const(1.0, width),
        "blocks.0.norm1.bias": const(0.0, width),
        "blocks.0.attn.qkv.weight": normal(3 * width, width),
        "blocks.0.attn.qkv.bias": normal(3 * width),
        "blocks.0.attn.proj.weight": normal(width, width),
        "blocks.0.attn.proj.bias": normal(width),
        "blocks.0.norm2.weight": const(1.0, width),
        "blocks.0.norm2.bias": const(0.0, width),
        "blocks.0.mlp.fc1.weight": normal(hidden, width),
        "blocks.0.mlp.fc1.bias": normal(hidden),
        "blocks.0.mlp.fc2.weight": normal(width, hidden),
        "blocks.0.mlp.fc2.bias": normal(width),
        "norm.weight": const(1.0, width),
        "norm.bias": const(0.0, width),
        "head.weight": normal(classes, width),
        "head.bias": normal(classes),
    }
    return tensors


# ---------------------------------------------------------------------------
# Optional cross-check with torch
# ---------------------------------------------------------------------------

def check_with_torch():
    try:
        import torch  # noqa: F401  (Debian's python3-torch)
    except ImportError:
        print("torch is not installed: conversions checked by this script's own rules only")
        return
    import torch
    for name, dtype, values, ours in (
            ("F16", torch.float16, F16_VALUES + F16_TIES, lambda v: struct.unpack("<H", struct.pack("<e", v))[0]),
            ("BF16", torch.bfloat16, BF16_VALUES, bf16_bits)):
        theirs = torch.tensor(values, dtype=torch.float32).to(dtype).view(torch.int16).tolist()
        for v, t in zip(values, theirs):
            t &= 0xFFFF
            o = ours(v)
            if math.isnan(v):
                # Any quiet NaN will do; torch and CPython agree on 0x7e00 / 0x7fc0.
                ok = (t & 0x7FFF) > (0x7C00 if name == "F16" else 0x7F80)
            else:
                ok = o == t
            if not ok:
                sys.exit(f"{name} conversion of {v!r}: this script gives {o:#06x}, torch {t:#06x}")
    print(f"F16 and BF16 bytes agree with torch {torch.__version__}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures",
                               "safetensors")
    parser.add_argument("--out", default=default_out, help="output folder")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    check_with_torch()
    save_file(tiny_tensors(), {"format": "pt", "producer": "tools/make-safetensors-fixture.py"},
              os.path.join(args.out, "tiny.safetensors"))
    save_file(vit_tiny_tensors(), {"format": "pt"}, os.path.join(args.out, "vit_tiny.safetensors"))
    print(f"wrote tiny.safetensors and vit_tiny.safetensors in {os.path.normpath(args.out)}")


if __name__ == "__main__":
    main()
