#!/usr/bin/env python3
"""engine-reference.py - the PyTorch side of bench/engine.

Times fine-tuning steps (forward, cross-entropy, backward, AdamW step) of
one of five models (--model), in train mode, on the CPU or a CUDA device
(--device):

  vit_tiny         ViT-Ti/16, below;
  vit_small        ViT-S/16 (width 384, 6 heads, MLP 1536), the same code;
  vit_base         ViT-B/16 (width 768, 12 heads, MLP 3072), the same code;
  mobilenetv2_100  torchvision.models.mobilenet_v2(dropout=0): the structure
                   and parameter count (3,504,872 with 1000 classes) of
                   timm's mobilenetv2_100, which qtune's qt_cnn_write_init
                   writes (timm's head has no dropout either);
  resnet18         torchvision.models.resnet18() (11,689,512 parameters,
                   timm's resnet18).

The CNNs need Debian's python3-torchvision; their batch norms run in train
mode (batch statistics, running ones updated), as qtune's TRAIN mode.

ViT-Ti/16 (timm's vit_tiny_patch16_224 layout) is written in plain torch, so
that Debian's python3-torch runs it without timm: a patch convolution, a
class token, a position embedding, `depth` pre-norm blocks

    x = x + proj(attention(qkv(norm1(x))))
    x = x + fc2(gelu(fc1(norm2(x))))

(layer norms with eps 1e-6, exact GELU, attention as timm 0.6 computes it
with explicit q k^T, softmax and a product with v), the final norm of the
class token and the head. AdamW as torch.optim.AdamW (lr 1e-3, betas 0.9 /
0.999, eps 1e-8, weight decay 0.01) with weight decay only on tensors of 2
or more dimensions except pos_embed and cls_token (timm's
param_groups_weight_decay, as qtune does).

The ViT's parameter names are not timm's; the structure and the parameter
count (5,717,416 with 1000 classes, as qtune's qt_vit_default_config) are.
The count of the model built is printed to stderr.

--source timm builds timm's model of the same name instead (vit_*_patch16_224,
mobilenetv2_100, resnet18; random weights, no dropout): for a ViT that is
timm's current attention, F.scaled_dot_product_attention, which PyTorch runs
as a fused (flash) kernel on a GPU in BF16. --source auto (the default) takes
timm where it imports, the models above where not (Debian has no timm); the
line on stderr names the one that ran.

Inputs are random normal images and random labels. The last line printed is

    RESULT images_per_s=X peak_rss_kib=Y base_rss_kib=Z step_s=S cpu_step_s=U device_mib=D

where peak_rss_kib is the process's getrusage ru_maxrss (KiB) at the end
and base_rss_kib its resident size before the model was built (the
interpreter and torch's libraries); step_s is wall-clock seconds per timed
step and cpu_step_s CPU seconds (all threads) per timed step, which a loaded
machine inflates less. device_mib is torch.cuda.max_memory_reserved in
MiB on a CUDA device (the caching allocator's peak, without the CUDA
context), 0 on the CPU. On CUDA the images and labels go up at every step
from page-locked host memory (.to(device, non_blocking=True)), as
bench/engine's qtune side does, and every timed step ends with
torch.cuda.synchronize(); matrix products are FP32 unless --tf32 (which
sets torch.backends.cuda.matmul.allow_tf32 and cudnn.allow_tf32) or
--amp bf16 (forward and loss under torch.autocast with bfloat16, the
PyTorch recipe of BF16 mixed precision: FP32 parameters, no loss scaler
needed for BF16). A torch
without CUDA fails with a message (bench/engine then reports the reference
unavailable). bench/engine parses that line.

usage: engine-reference.py [--model vit_tiny|vit_small|vit_base|mobilenetv2_100|resnet18]
                           [--batch 32] [--threads T] [--warmup 1]
                           [--steps 3] [--classes 1000] [--image-size 224]
                           [--device cpu|cuda] [--tf32 | --amp bf16]
                           [--source auto|plain|timm]
"""
import argparse
import resource
import sys
import time

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, width, heads, mlp_hidden):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.fc1 = nn.Linear(width, mlp_hidden)
        self.fc2 = nn.Linear(mlp_hidden, width)
        self.act = nn.GELU()

    def attention(self, x):
        b, t, c = x.shape
        hs = c // self.heads
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, hs).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        att = (q * hs ** -0.5) @ k.transpose(-2, -1)
        att = att.softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, c)
        return self.proj(y)

    def forward(self, x):
        x = x + self.attention(self.norm1(x))
        x = x + self.fc2(self.act(self.fc1(self.norm2(x))))
        return x


class ViT(nn.Module):
    def __init__(self, image_size=224, patch=16, width=192, depth=12, heads=3,
                 mlp_hidden=768, classes=1000):
        super().__init__()
        tokens = (image_size // patch) ** 2 + 1
        self.patch_embed = nn.Conv2d(3, width, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, width) * 1e-6)
        self.pos_embed = nn.Parameter(torch.randn(1, tokens, width) * 0.02)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.head = nn.Linear(width, classes)

    def forward(self, images):
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 0]))


VIT_SHAPES = {  # width, depth, heads, MLP features
    "vit_tiny": (192, 12, 3, 768),
    "vit_small": (384, 12, 6, 1536),
    "vit_base": (768, 12, 12, 3072),
}


TIMM_NAMES = {
    "vit_tiny": "vit_tiny_patch16_224",
    "vit_small": "vit_small_patch16_224",
    "vit_base": "vit_base_patch16_224",
    "mobilenetv2_100": "mobilenetv2_100",
    "resnet18": "resnet18",
}


def timm_available():
    try:
        import timm  # noqa: F401
    except ImportError:
        return False
    return True


def build_model(name, image_size, classes, source):
    if source == "timm":
        import timm
        extra = {"img_size": image_size} if name in VIT_SHAPES else {}
        return timm.create_model(TIMM_NAMES[name], pretrained=False, num_classes=classes,
                                 drop_rate=0.0, **extra)
    if name in VIT_SHAPES:
        width, depth, heads, mlp = VIT_SHAPES[name]
        return ViT(image_size=image_size, width=width, depth=depth, heads=heads,
                   mlp_hidden=mlp, classes=classes)
    import torchvision
    if name == "mobilenetv2_100":
        return torchvision.models.mobilenet_v2(num_classes=classes, dropout=0.0)
    if name == "resnet18":
        return torchvision.models.resnet18(num_classes=classes)
    raise SystemExit(f"engine-reference.py: unknown model '{name}'")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="vit_tiny",
                    choices=list(VIT_SHAPES) + ["mobilenetv2_100", "resnet18"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--tf32", action="store_true")
    ap.add_argument("--amp", choices=["bf16"], default=None)
    ap.add_argument("--source", choices=["auto", "plain", "timm"], default="auto")
    args = ap.parse_args()
    if args.source == "auto":
        args.source = "timm" if timm_available() else "plain"
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("engine-reference.py: this torch has no CUDA device "
                         f"(torch {torch.__version__}, built with CUDA {torch.version.cuda})")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
    base_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch.manual_seed(0)
    model = build_model(args.model, args.image_size, args.classes, args.source).to(args.device)
    model.train()
    params = sum(p.numel() for p in model.parameters())
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim <= 1 or name in ("pos_embed", "cls_token"):
            no_decay.append(p)
        else:
            decay.append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    images = torch.randn(args.batch, 3, args.image_size, args.image_size)
    labels = torch.randint(0, args.classes, (args.batch,))
    if cuda:
        # As bench/engine's qtune side and a training loop: the batch goes up
        # at every step, from page-locked memory.
        images, labels = images.pin_memory(), labels.pin_memory()
    loss_fn = nn.CrossEntropyLoss()

    amp = args.amp == "bf16"
    if amp and not cuda:
        raise SystemExit("engine-reference.py: --amp bf16 is for --device cuda")

    def step():
        x = images.to(args.device, non_blocking=True)
        y = labels.to(args.device, non_blocking=True)
        opt.zero_grad(set_to_none=False)
        with torch.autocast(device_type=args.device, dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        if cuda:
            torch.cuda.synchronize()
        return float(loss.detach())

    for _ in range(args.warmup):
        step()
    start = time.perf_counter()
    cpu_start = time.process_time()
    for _ in range(args.steps):
        loss = step()
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    per_step = seconds / max(args.steps, 1)
    source = "timm" if args.source == "timm" else "plain torch/torchvision"
    print(f"reference: {args.model} ({source}), {params} parameters, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, last loss {loss:.4f}", file=sys.stderr)
    print(f"RESULT images_per_s={args.batch * args.steps / seconds:.4f} peak_rss_kib={peak} "
          f"base_rss_kib={base_rss_kib} step_s={per_step:.4f} "
          f"cpu_step_s={cpu_seconds / max(args.steps, 1):.4f} "
          f"device_mib={torch.cuda.max_memory_reserved() / 1048576.0 if cuda else 0.0:.1f}")


if __name__ == "__main__":
    main()
