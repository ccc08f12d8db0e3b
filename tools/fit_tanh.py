"""Fits the rational tanh of the AVX2 cell rows (csrc/cpu/cell_rows_avx2.cpp).

    tanh(x) ~= x P(x^2) / Q(x^2),  |x| <= 9 (beyond, tanh rounds to +-1 in float32)

P has 7 coefficients and Q 4 (Q(0) = 1). The fit minimises the largest relative error
over [0, 9]: weighted linear least squares on P - f Q (f = tanh(x) / x), the weights
updated from the error each round (Lawson's iteration), in the variable (x / 9)^2 so that
the system stays well conditioned. Prints the coefficients and the error of the fit in
float64. The kernel's own error in float32 is specified by tests/test_activation_accuracy.py
and quoted in the kernel's comment.

    python tools/fit_tanh.py
"""

import numpy as np

CLAMP = 9.0
NP, NQ = 7, 4


def fit(rounds: int = 400):
    x = np.linspace(1e-5, CLAMP, 60000)
    t = (x / CLAMP) ** 2
    f = np.tanh(x) / x
    q_prev = np.ones_like(t)
    weight = np.ones_like(t)
    best = (np.inf, None, None)
    for _ in range(rounds):
        a = np.hstack([np.vander(t, NP, increasing=True),
                       -f[:, None] * np.vander(t, NQ, increasing=True)[:, 1:]])
        w = weight / (f * q_prev)
        coef, *_ = np.linalg.lstsq(a * w[:, None], f * w, rcond=None)
        p, q = coef[:NP], np.concatenate([[1.0], coef[NP:]])
        q_prev = np.polyval(q[::-1], t)
        err = np.abs(np.polyval(p[::-1], t) / q_prev / f - 1)
        if err.max() < best[0]:
            best = (err.max(), p.copy(), q.copy())
        weight = weight * (err / err.max()) ** 0.3
        weight /= weight.mean()
    err, p, q = best
    scale = CLAMP ** (-2.0 * np.arange(max(NP, NQ)))  # back to powers of x^2
    return err, p * scale[:NP], q * scale[:NQ]


if __name__ == "__main__":
    err, p, q = fit()
    print(f"max relative error of the fit (float64): {err:.3g}")
    print("P:", ", ".join(f"{c:.17g}f" for c in p))
    print("Q:", ", ".join(f"{c:.17g}f" for c in q))
