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


def mass_preserving_direction(cost, a, b, seed: int = 0):
    """A random direction (d cost, d a, d b) with sum(d a) = sum(d b) = 0 per problem."""
    g = torch.Generator().manual_seed(seed)
    dc = torch.randn(cost.shape, generator=g, dtype=torch.float64)
    da = torch.randn(a.shape, generator=g, dtype=torch.float64)
    db = torch.randn(b.shape, generator=g, dtype=torch.float64)
    return dc, da - da.mean(1, keepdim=True), db - db.mean(1, keepdim=True)


def check_directional_derivative(value_fn, cost, a, b, h: float, atol: float, rtol: float,
                                 seed: int = 0):
    """Autograd gradients of value_fn(cost, a, b) [B] against central finite differences
    along a mass-preserving random direction. Returns the gradients."""
    cost, a, b = (t.detach().clone().requires_grad_(True) for t in (cost, a, b))
    gc, ga, gb = torch.autograd.grad(value_fn(cost, a, b).sum(), (cost, a, b))
    dc, da, db = mass_preserving_direction(cost, a, b, seed)
    with torch.no_grad():
        fd = (value_fn(cost + h * dc, a + h * da, b + h * db)
              - value_fn(cost - h * dc, a - h * da, b - h * db)) / (2 * h)
    analytic = (gc * dc).sum((1, 2)) + (ga * da).sum(1) + (gb * db).sum(1)
    torch.testing.assert_close(analytic, fd, atol=atol, rtol=rtol)
    return gc, ga, gb


def solver_inputs(solver: str, cost: torch.Tensor, seed: int = 0) -> dict:
    """Extra options a solver needs besides (cost, a, b): random node features for ``chain``."""
    from fewshot import emd
    if solver == "learned":                      # an untrained model: the checks are structural
        torch.manual_seed(seed)
        return dict(model=emd.MatchingTransformer(dim=16, layers=1).to(cost.dtype))
    if not emd.spec(solver).needs_points:
        return {}
    g = torch.Generator().manual_seed(seed)
    B, M, N = cost.shape
    return dict(x=torch.randn(B, M, 8, generator=g, dtype=torch.float64).to(cost.dtype),
                y=torch.randn(B, N, 8, generator=g, dtype=torch.float64).to(cost.dtype))
