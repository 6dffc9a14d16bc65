#!/usr/bin/python3
"""Writes the golden fixtures of qtune's ViT engine (tests/test_finetune_vit.c)
with PyTorch, from a ViT built here in plain torch with timm's parameter
names and timm's computation (timm itself is not needed):

    /usr/bin/python3 tools/make-vit-fixture.py [--out tests/fixtures/vit]

Run it with Debian's python3-torch (apt-get install python3-torch; the
fixtures were made with torch 1.13). The C tests need neither Python nor
torch: they read the files written here.

Outputs (safetensors, F32, written with the standard library as
tools/make-safetensors-fixture.py does):

  vit.safetensors           a checkpoint: timm's VisionTransformer layout with
                            patch 4, width 16, depth 2, 2 heads, MLP 64, 8 px
                            images (a 2x2 grid + class token in pos_embed),
                            3 classes, qkv bias; random weights (seed 0).
  vit_expected.safetensors  for that checkpoint at 8 px: three batches of 2
                            images ("images.S", "labels.S" for steps S = 0, 1,
                            2), the logits and mean loss (label smoothing 0.1)
                            of batch 0 ("logits", "loss"), the gradient of
                            every parameter for batch 0 ("grad.NAME"), and
                            every parameter after three AdamW steps on
                            batches 0, 1, 2 ("step3.NAME"). Metadata: the
                            hyperparameters.
  deit3.safetensors         a DeiT III checkpoint: as above but layer scale
                            (ls1, ls2), no_embed_class (pos_embed has no
                            class-token row), no qkv bias; pretrained grid
                            2x2 (8 px).
  deit3_expected.safetensors
                            the same record for that checkpoint fine-tuned at
                            12 px: pos_embed resampled to a 3x3 grid as timm's
                            resample_abs_pos_embed does (bicubic, antialias),
                            stored as "pos_embed.resampled"; grad.pos_embed and
                            step3.pos_embed refer to the resampled tensor.
  resample.safetensors      F.interpolate(mode='bicubic', antialias=True,
                            align_corners=False) on grids of vectors in
                            qtune's (h, w, c) layout: "CASE.in", "CASE.out" for
                            an upsampling, a downsampling and a non-square
                            case.

The model (timm 0.9 VisionTransformer, global_pool='token', class token,
LayerNorm eps 1e-6, exact GELU, attention with q scaled by head_dim^-0.5)
and the optimizer setup (AdamW with timm's param_groups_weight_decay: no
decay for 1-d tensors, biases, pos_embed and cls_token) are restated below.
"""
import argparse
import json
import os
import struct
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

HYPER = {"lr": 1e-2, "weight_decay": 0.05, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
         "label_smoothing": 0.1}


# ---------------------------------------------------------------------------
# The model, with timm's names
# ---------------------------------------------------------------------------

class PatchEmbed(nn.Module):
    def __init__(self, patch, width, bias):
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=bias)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim, heads, qkv_bias):
        super().__init__()
        self.num_heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q = q * self.scale
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class LayerScale(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, heads, hidden, qkv_bias, layer_scale):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, qkv_bias)
        self.ls1 = LayerScale(dim) if layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, hidden)
        self.ls2 = LayerScale(dim) if layer_scale else nn.Identity()

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    def __init__(self, image, patch, width, depth, heads, hidden, classes, qkv_bias=True,
                 layer_scale=False, no_embed_class=False):
        super().__init__()
        grid = image // patch
        self.no_embed_class = no_embed_class
        self.patch_embed = PatchEmbed(patch, width, True)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + (0 if no_embed_class else 1),
                                                  width))
        self.blocks = nn.ModuleList(
            [Block(width, heads, hidden, qkv_bias, layer_scale) for _ in range(depth)])
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        x = self.patch_embed(x)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        if self.no_embed_class:  # timm's _pos_embed
            x = torch.cat((cls, x + self.pos_embed), dim=1)
        else:
            x = torch.cat((cls, x), dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return self.head(x[:, 0])


def randomize(model, gen):
    """Weights far from timm's init (std 0.02, zero biases, unit norms), so
    that every term of every gradient matters."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "norm.weight":
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".gamma"):
                p.copy_(0.5 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name in ("cls_token", "pos_embed"):
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in ** 0.5)


def param_groups(model):
    """timm.optim.param_groups_weight_decay with model.no_weight_decay()."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim <= 1 or name.endswith(".bias") or name in ("pos_embed", "cls_token"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": no_decay, "weight_decay": 0.0},
            {"params": decay, "weight_decay": HYPER["weight_decay"]}]


def resample_abs_pos_embed(posemb, new_grid, num_prefix_tokens):
    """timm.layers.resample_abs_pos_embed (bicubic, antialias=True)."""
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    old = int(round(grid.shape[1] ** 0.5))
    grid = grid.reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", antialias=True,
                         align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, -1)
    return torch.cat([prefix, grid], dim=1)


# ---------------------------------------------------------------------------
# safetensors (F32 only)
# ---------------------------------------------------------------------------

def write_safetensors(path, tensors, metadata=None):
    """tensors: dict name -> float32 tensor. All F32, so the reference's
    order is by name alone."""
    names = sorted(tensors)
    header = {}
    if metadata:
        header["__metadata__"] = {k: metadata[k] for k in sorted(metadata)}
    blobs, offset = [], 0
    for name in names:
        t = tensors[name].detach().to(torch.float32).contiguous()
        data = struct.pack("<%df" % t.numel(), *t.flatten().tolist())
        header[name] = {"dtype": "F32", "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------

def make_case(out, name, seed, ckpt_image, run_image, **arch):
    gen = torch.Generator().manual_seed(seed)
    patch, width, depth, heads, hidden, classes = 4, 16, 2, 2, 64, 3
    model = VisionTransformer(ckpt_image, patch, width, depth, heads, hidden, classes, **arch)
    randomize(model, gen)
    checkpoint = {k: v.clone() for k, v in model.state_dict().items()}
    write_safetensors(os.path.join(out, name + ".safetensors"), checkpoint,
                      {"format": "pt"})

    expected = {}
    if run_image != ckpt_image:
        run = VisionTransformer(run_image, patch, width, depth, heads, hidden, classes, **arch)
        state = dict(checkpoint)
        prefix = 0 if arch.get("no_embed_class") else 1
        state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], run_image // patch, prefix)
        run.load_state_dict(state)
        model = run
        expected["pos_embed.resampled"] = state["pos_embed"]

    batch = 2
    images = [torch.randn(batch, 3, run_image, run_image, generator=gen) for _ in range(3)]
    labels = [torch.randint(0, classes, (batch,), generator=gen) for _ in range(3)]
    optimizer = torch.optim.AdamW(param_groups(model), lr=HYPER["lr"],
                                  betas=(HYPER["beta1"], HYPER["beta2"]), eps=HYPER["eps"])
    for step in range(3):
        optimizer.zero_grad()
        logits = model(images[step])
        loss = F.cross_entropy(logits, labels[step], label_smoothing=HYPER["label_smoothing"])
        loss.backward()
        if step == 0:
            expected["logits"] = logits.detach()
            expected["loss"] = loss.detach().reshape(1)
            for pname, p in model.named_parameters():
                expected["grad." + pname] = p.grad.detach().clone()
        optimizer.step()
        expected["images.%d" % step] = images[step]
        expected["labels.%d" % step] = labels[step].to(torch.float32)
    for pname, p in model.named_parameters():
        expected["step3." + pname] = p.detach().clone()
    metadata = {k: repr(v) for k, v in HYPER.items()}
    metadata.update({"heads": str(heads), "image_size": str(run_image), "batch": str(batch),
                     "torch": torch.__version__})
    write_safetensors(os.path.join(out, name + "_expected.safetensors"), expected, metadata)
    print("%s: loss %.6f, %d parameters" % (name, expected["loss"].item(),
                                             sum(p.numel() for p in model.parameters())))


def make_resample(out, seed):
    gen = torch.Generator().manual_seed(seed)
    cases = {"up": (3, 3, 5, 5), "down": (7, 7, 3, 3), "mixed": (4, 6, 6, 3)}
    tensors = {}
    for case, (h, w, nh, nw) in cases.items():
        grid = torch.randn(h, w, 4, generator=gen)  # qtune's (h, w, c)
        result = F.interpolate(grid.permute(2, 0, 1).unsqueeze(0), size=(nh, nw), mode="bicubic",
                               antialias=True, align_corners=False)
        tensors[case + ".in"] = grid
        tensors[case + ".out"] = result.squeeze(0).permute(1, 2, 0)
    write_safetensors(os.path.join(out, "resample.safetensors"), tensors,
                      {"torch": torch.__version__})


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests",
                                                      "fixtures", "vit"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    make_case(args.out, "vit", 0, 8, 8)
    make_case(args.out, "deit3", 1, 8, 12, qkv_bias=False, layer_scale=True, no_embed_class=True)
    make_resample(args.out, 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
