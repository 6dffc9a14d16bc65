#!/usr/bin/env python3
"""Fits the polynomial of qt_vphif (src/finetune/cpu/qt_cpu_vmath.h).

The standard normal CDF's lower tail is written as
    Phi(-y) = t * exp(-y^2 / 2 + g(t)),   t = 1 / (1 + y / K),  K = 2 sqrt(2),
for y >= 0, where g(t) = ln(Phi(-y) / t) + y^2 / 2 is smooth on t in (0, 1]
(g(1) = ln(1/2); as y grows, Phi(-y) ~ exp(-y^2/2) / (y sqrt(2 pi)), so g
tends to -ln(K sqrt(2 pi)) at t = 0). This script interpolates g at
Chebyshev nodes on [t(16), 1] (float's Phi(-y) is 0 from y = 14.1 on),
converts the series to powers of s = (2 t - a - b) / (b - a), which maps
that interval [a, b] onto [-1, 1] (there the coefficients fall off, so
Horner's rule in float loses little), and prints the map's two constants,
the coefficients (highest power first) and the fit's largest error in g
over a fine grid, which is the relative error it adds to Phi(-y).

Uses only Python's standard library (math.erfc, double precision).
    tools/fit-normal-cdf.py [DEGREE]   (default 10)
"""
import math
import sys

K = 2.0 * math.sqrt(2.0)
Y_MAX = 16.0


def g(t):
    y = K * (1.0 / t - 1.0)
    phi = 0.5 * math.erfc(y / math.sqrt(2.0))
    return math.log(phi / t) + 0.5 * y * y


def chebyshev(f, a, b, degree, nodes=64):
    xs = [math.cos(math.pi * (j + 0.5) / nodes) for j in range(nodes)]
    fs = [f(0.5 * (b - a) * x + 0.5 * (b + a)) for x in xs]
    c = [2.0 / nodes * sum(fs[j] * math.cos(math.pi * k * (j + 0.5) / nodes)
                           for j in range(nodes)) for k in range(degree + 1)]
    c[0] *= 0.5
    return c


def powers(c, a, b):
    """The series sum c_k T_k((2t - a - b) / (b - a)) in powers of t."""
    alpha, beta = 2.0 / (b - a), -(a + b) / (b - a)
    T = [[1.0], [beta, alpha]]
    while len(T) < len(c):
        prev, prev2 = T[-1], T[-2]
        nxt = [0.0] * (len(prev) + 1)
        for i, v in enumerate(prev):
            nxt[i] += 2.0 * beta * v
            nxt[i + 1] += 2.0 * alpha * v
        for i, v in enumerate(prev2):
            nxt[i] -= v
        T.append(nxt)
    out = [0.0] * len(c)
    for k, ck in enumerate(c):
        for i, v in enumerate(T[k]):
            out[i] += ck * v
    return out


def main():
    degree = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    a, b = 1.0 / (1.0 + Y_MAX / K), 1.0
    p = powers(chebyshev(g, a, b, degree), -1.0, 1.0)
    worst = 0.0
    for j in range(100001):
        t = a + (b - a) * j / 100000
        s = (2.0 * t - a - b) / (b - a)
        v = 0.0
        for coef in reversed(p):
            v = v * s + coef
        worst = max(worst, abs(v - g(t)))
    print(f"/* degree {degree} on t in [{a:.9f}, 1]: |error in g| <= {worst:.2e} */")
    print(f"s = t * {2.0 / (b - a):.9e}f + {-(a + b) / (b - a):.9e}f")
    for coef in reversed(p):
        print(f"  {coef:+.9e}f,")


if __name__ == "__main__":
    main()
