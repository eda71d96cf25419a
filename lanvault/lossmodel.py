"""The closed form the durability simulator is checked against: one chunk's copies as a
continuous-time Markov chain.

State ``i`` is how many good copies (or shares) the chunk has, ``n`` at the start. Each good
copy is lost independently at rate ``failure`` (per hour); each missing one is re-made
independently at rate ``repair`` (exponential repair, all missing copies at once, as every
holder's repair pass makes them), as long as at least ``k`` are left to make it from. Fewer
than ``k`` (``k = 1`` for plain copies) is absorbing: the chunk is lost. The probability of
being absorbed by time ``t`` is computed by uniformization (exact up to a truncation of the
Poisson sum below 1e-12), in plain Python: the chain has at most 17 states.
"""

from __future__ import annotations

import math


def generator(n: int, k: int, failure: float, repair: float) -> list[list[float]]:
    """The chain's rate matrix over states 0..n (state ``i``: ``i`` good copies; every state
    below ``k`` is folded into state 0, absorbing)."""
    size = n + 1
    q = [[0.0] * size for _ in range(size)]
    for i in range(k, n + 1):
        down = i - 1 if i - 1 >= k else 0
        q[i][down] += i * failure
        if i < n:
            q[i][i + 1] += (n - i) * repair
        q[i][i] = -sum(q[i][j] for j in range(size) if j != i)
    return q


def loss_probability(n: int, k: int, failure: float, repair: float, hours: float) -> float:
    """P(a chunk stored as ``n`` copies/shares, ``k`` needed, is lost within ``hours``)."""
    if not 1 <= k <= n:
        raise ValueError("need 1 <= k <= n")
    q = generator(n, k, failure, repair)
    rate = max(-q[i][i] for i in range(n + 1)) or 1.0
    # P = I + Q / rate: a stochastic matrix; the state after j jumps of a Poisson process.
    p = [[(1.0 if i == j else 0.0) + q[i][j] / rate for j in range(n + 1)] for i in range(n + 1)]
    vector = [0.0] * (n + 1)
    vector[n] = 1.0
    mean = rate * hours
    # Poisson weights in log space, summed until the tail past the mean is negligible.
    last = int(mean + 12 * math.sqrt(mean) + 30)
    absorbed = 0.0
    for jumps in range(last + 1):
        weight = (
            math.exp(-mean + jumps * math.log(mean) - math.lgamma(jumps + 1))
            if mean
            else (1.0 if jumps == 0 else 0.0)
        )
        absorbed += weight * vector[0]
        vector = [sum(vector[i] * p[i][j] for i in range(n + 1)) for j in range(n + 1)]
    return min(1.0, absorbed)


def wilson(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (sound near 0 and 1, unlike the normal one)."""
    if trials == 0:
        return 0.0, 1.0
    phat = successes / trials
    centre = phat + z * z / (2 * trials)
    spread = z * math.sqrt(phat * (1 - phat) / trials + z * z / (4 * trials * trials))
    scale = 1 + z * z / trials
    return max(0.0, (centre - spread) / scale), min(1.0, (centre + spread) / scale)
