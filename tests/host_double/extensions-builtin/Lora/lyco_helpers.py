"""Built-in Lora double, ``lyco_helpers``: ΔW from factor tensors (reference §2.3)."""
import torch


def _as_matrix(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def rebuild_conventional(up, down, shape, dyn_dim=None):
    """up @ down reshaped to `shape`; with `dyn_dim`, only the first dyn_dim ranks take part."""
    u, d = _as_matrix(up), _as_matrix(down)
    if dyn_dim is not None:
        u, d = u[:, :dyn_dim], d[:dyn_dim]
    return torch.mm(u, d).reshape(shape)


def rebuild_cp_decomposition(up, down, mid):
    """Tucker form: ΔW[o, i, kh, kw] = Σ_a,b up[o, a] · mid[a, b, kh, kw] · down[b, i]."""
    core = torch.tensordot(_as_matrix(up), mid, dims=([1], [0]))          # (o, b, kh, kw)
    return torch.tensordot(core, _as_matrix(down), dims=([1], [0])).permute(0, 3, 1, 2)
