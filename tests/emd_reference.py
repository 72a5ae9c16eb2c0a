"""Independent references for EMD tests: scipy's HiGHS LP and random problems."""
import numpy as np
import torch
from scipy.optimize import linprog


def lp_emd(cost: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Optimal value of min <cost, x> s.t. x >= 0, x 1 = a, x^T 1 = b (scipy HiGHS)."""
    M, N = cost.shape
    A_eq = np.vstack([np.kron(np.eye(M), np.ones((1, N))), np.kron(np.ones((1, M)), np.eye(N))])
    res = linprog(cost.ravel(), A_eq=A_eq, b_eq=np.concatenate([a, b]), bounds=(0, None),
                  method="highs")
    assert res.status == 0, res.message
    return float(res.fun)


def cosine_problems(B: int, M: int, N: int, dtype=torch.float64, seed: int = 0, dim: int = 16,
                    mass: float = None):
    """DeepEMD-like problems: cost = 1 - cos of random vectors, random positive weights."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(B, M, dim, generator=g, dtype=torch.float64), dim=-1)
    y = torch.nn.functional.normalize(torch.randn(B, N, dim, generator=g, dtype=torch.float64), dim=-1)
    cost = 1 - x @ y.transpose(1, 2)
    total = float(M) if mass is None else mass
    a = torch.rand(B, M, generator=g, dtype=torch.float64) + 0.05
    b = torch.rand(B, N, generator=g, dtype=torch.float64) + 0.05
    a = a * total / a.sum(1, keepdim=True)
    b = b * total / b.sum(1, keepdim=True)
    return cost.to(dtype), a.to(dtype), b.to(dtype)
