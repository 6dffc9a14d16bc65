#!/usr/bin/env python3
"""Writes tests/fixtures/methods/spd_adam.safetensors: a golden sequence of
Selective Projection Decay steps from a PyTorch transcription of the official
optimizer (GT-RIPL/Selective-Projection-Decay, adamSPD.py, as transcribed in
specs/algorithms.md section 2.1), for tests/test_methods.c.

    /usr/bin/python3 tools/make-spd-fixture.py [--out tests/fixtures/methods]

Needs Debian's python3-torch (float32 arithmetic as torch does it). The
transcription below follows the reference code line by line: Adam moments,
bias-corrected step without any decoupled decay, the condition
c = -<g, theta - theta0> on the old theta and the raw gradient, the deviation
ratio hardtanh((||theta~ - theta0|| - ||theta - theta0||) / ||theta~ -
theta0||, 0, 1) and the projection theta~ -= lambda r (theta~ - theta0).

Contents (all F32): "theta0" (3, 5) the anchor (= the start), "grads"
(STEPS, 3, 5) the raw gradient of each step, "theta" (STEPS, 3, 5) the
tensor after each step, "ratio" (STEPS) r of each step (0 when the condition
does not hold); metadata: lr, beta1, beta2, eps, lambda. The gradients are
drawn so that both branches occur (the script checks it).
"""
import argparse
import json
import math
import os
import struct

import torch

STEPS = 8
LR, BETA1, BETA2, EPS, LAMBDA = 0.05, 0.9, 0.999, 1e-8, 0.7


class AdamSPD(torch.optim.Optimizer):
    """adamSPD.py's step (amsgrad off), one param group with 'pre'."""

    def __init__(self, params, pre, lr, betas, eps, weight_decay):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      pre=pre))
        self.ratios = []

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for j, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                beta1, beta2 = group["betas"]
                state["step"] += 1
                bias_correction1 = 1 - beta1 ** state["step"]
                bias_correction2 = 1 - beta2 ** state["step"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (exp_avg_sq.sqrt() / math.sqrt(bias_correction2)).add_(group["eps"])
                step_size = group["lr"] / bias_correction1
                d_p = p.addcdiv(exp_avg, denom, value=-step_size)
                pre = group["pre"][j]
                condition = -torch.sum(torch.mul(grad, p - pre))
                ratio = 0.0
                if condition < 0.0:
                    new_norm = torch.norm(d_p - pre)
                    old_norm = torch.norm(p - pre)
                    r = torch.nn.functional.hardtanh((new_norm - old_norm) / new_norm, 0.0, 1.0)
                    d_p = d_p - group["weight_decay"] * r * (d_p - pre)
                    ratio = float(r)
                self.ratios.append(ratio)
                p.copy_(d_p)


def write_safetensors(path, tensors, metadata):
    """tensors: list of (name, shape, flat float list), written as F32."""
    header = {"__metadata__": dict(sorted(metadata.items()))}
    blobs, offset = [], 0
    for name, shape, values in sorted(tensors, key=lambda t: t[0]):
        blob = struct.pack("<%df" % len(values), *values)
        header[name] = {"dtype": "F32", "shape": list(shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/methods")
    args = ap.parse_args()
    torch.manual_seed(0)
    theta0 = torch.randn(3, 5)
    p = torch.nn.Parameter(theta0.clone())
    opt = AdamSPD([p], [theta0.clone()], LR, (BETA1, BETA2), EPS, LAMBDA)
    grads, thetas = [], []
    for s in range(STEPS):
        # A drift along one direction plus noise: the steps move away from
        # theta0 (projections), and some gradients point back (no condition).
        g = 0.5 * torch.randn(3, 5) + (1.0 if s % 3 != 2 else -3.0) * torch.ones(3, 5) * 0.3
        p.grad = g.clone()
        opt.step()
        grads.append(g.flatten().tolist())
        thetas.append(p.detach().flatten().tolist())
    projected = sum(1 for r in opt.ratios if r > 0.0)
    assert 0 < projected < STEPS, opt.ratios
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "spd_adam.safetensors")
    write_safetensors(path, [
        ("theta0", (3, 5), theta0.flatten().tolist()),
        ("grads", (STEPS, 3, 5), [x for g in grads for x in g]),
        ("theta", (STEPS, 3, 5), [x for t in thetas for x in t]),
        ("ratio", (STEPS,), opt.ratios),
    ], {"lr": repr(LR), "beta1": repr(BETA1), "beta2": repr(BETA2), "eps": repr(EPS),
        "lambda": repr(LAMBDA), "torch": torch.__version__})
    print("wrote %s (%d of %d steps projected; ratios %s)" %
          (path, projected, STEPS, ", ".join("%.4f" % r for r in opt.ratios)))


if __name__ == "__main__":
    main()
