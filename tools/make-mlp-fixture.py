#!/usr/bin/python3
"""Golden numbers for tests/test_mlp.c: qtune's MLP for tabular data (see
"MLP for tabular data" in src/finetune/qt_finetune.h) built in plain
PyTorch with the same parameter names, run in double.

Block i: fc (Linear) -> optional LayerNorm (eps 1e-5) -> ReLU or GELU; then
the head (Linear). Run from the repository root with Debian's python3-torch
(/usr/bin/python3); writes to tests/fixtures/mlp/:

  <case>.safetensors           the checkpoint (metadata "activation", "arch")
  <case>_expected.safetensors  "inputs" (6, 5), "labels" (6, as floats),
                               "logits", "loss" (label smoothing 0.1),
                               "grad.<name>" for every parameter, and
                               "adamw.<name>": every parameter after 3 AdamW
                               steps on the same batch (lr 1e-2, betas
                               (0.9, 0.999), eps 1e-8, weight decay 0.05 on
                               the 2-d weights only, 0 on biases and norms),
                               "adamw_loss" (3) the loss before each step

Cases: mlp_relu (widths 5 -> 8 -> 7 -> 6, LayerNorm in the first two blocks
only, ReLU, 4 classes) and mlp_gelu (5 -> 8 -> 8, LayerNorm in both, GELU,
3 classes).
"""
import json
import os
import struct

import torch
import torch.nn as nn
import torch.nn.functional as F

OUT = "tests/fixtures/mlp"
SMOOTHING = 0.1
LR, WD = 1e-2, 0.05


class Block(nn.Module):
    def __init__(self, inp, out, norm, act):
        super().__init__()
        self.fc = nn.Linear(inp, out)
        if norm:
            self.norm = nn.LayerNorm(out, eps=1e-5)
        self.act = nn.GELU() if act == "gelu" else nn.ReLU()

    def forward(self, x):
        x = self.fc(x)
        if hasattr(self, "norm"):
            x = self.norm(x)
        return self.act(x)


class MLP(nn.Module):
    def __init__(self, widths, norms, act, classes):
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(widths[i], widths[i + 1], norms[i], act) for i in range(len(widths) - 1))
        self.head = nn.Linear(widths[-1], classes)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def write_safetensors(path, tensors, metadata=None):
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


def make_case(name, seed, widths, norms, act, classes, batch=6):
    torch.manual_seed(seed)
    model = MLP(widths, norms, act, classes)
    # LayerNorm starts at (1, 0); perturb it so the test sees its gradients
    # with non-trivial values.
    with torch.no_grad():
        for b in model.blocks:
            if hasattr(b, "norm"):
                b.norm.weight.add_(0.2 * torch.randn_like(b.norm.weight))
                b.norm.bias.add_(0.2 * torch.randn_like(b.norm.bias))
    # Round the parameters and inputs to float32 first, so that the C engine
    # reads exactly what PyTorch computes with (in double).
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.float())
    model = model.double()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    write_safetensors(os.path.join(OUT, name + ".safetensors"), state,
                      {"activation": act, "arch": "mlp", "format": "pt"})

    x = torch.randn(batch, widths[0]).float().double()
    labels = torch.randint(0, classes, (batch,))
    expected = {"inputs": x, "labels": labels.double()}
    logits = model(x)
    loss = F.cross_entropy(logits, labels, label_smoothing=SMOOTHING)
    loss.backward()
    expected["logits"] = logits
    expected["loss"] = loss.reshape(1)
    for n, p in model.named_parameters():
        expected["grad." + n] = p.grad.clone()

    decay = [p for n, p in model.named_parameters() if p.ndim == 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim != 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WD},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=LR, betas=(0.9, 0.999), eps=1e-8)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        step_loss = F.cross_entropy(model(x), labels, label_smoothing=SMOOTHING)
        step_loss.backward()
        losses.append(step_loss.item())
        opt.step()
    expected["adamw_loss"] = torch.tensor(losses, dtype=torch.float64)
    for n, p in model.named_parameters():
        expected["adamw." + n] = p.detach().clone()
    write_safetensors(os.path.join(OUT, name + "_expected.safetensors"), expected)
    print("%s: loss %.6f, %d parameters" % (name, loss.item(),
                                            sum(p.numel() for p in model.parameters())))


def main():
    os.makedirs(OUT, exist_ok=True)
    make_case("mlp_relu", 1, [5, 8, 7, 6], [True, True, False], "relu", 4)
    make_case("mlp_gelu", 2, [5, 8, 8], [True, True], "gelu", 3)


if __name__ == "__main__":
    main()
