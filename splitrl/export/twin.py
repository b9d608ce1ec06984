"""The PyTorch twin of `splitrl.agents.networks.HierarchicalNet`, batched, with the greedy action, and
the copy of one member's flax weights into it (a flax Dense kernel is [in, out], a torch Linear weight
[out, in]: transposed). Masked logits use the same MASKED_LOGIT as the JAX distributions."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from splitrl.agents.distributions import MASKED_LOGIT


class ExportError(RuntimeError):
    pass


class TorchMLP(nn.Module):
    def __init__(self, n_in: int, hidden):
        super().__init__()
        dims = [n_in, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))

    def forward(self, x):
        for lin in self.layers:
            x = torch.tanh(lin(x))
        return x


def _mask(logits, mask):
    """splitrl.agents.distributions.mask_logits: masked -> -1e9, unless everything is masked."""
    any_allowed = mask.any(dim=-1, keepdim=True)
    return torch.where(mask | ~any_allowed, logits, torch.full_like(logits, MASKED_LOGIT))


class TorchHierarchical(nn.Module):
    """splitrl.agents.networks.HierarchicalNet, batched, with the greedy action."""

    def __init__(self, obs_dim: int, num_boundaries: int, num_formats: int, num_units: int, hidden, critic: str):
        super().__init__()
        h = hidden[-1]
        self.nb, self.nf, self.nu, self.critic = num_boundaries, num_formats, num_units, critic
        self.manager_torso = TorchMLP(obs_dim, hidden)
        self.boundary_head = nn.Linear(h, num_boundaries)
        self.format_head = nn.Linear(h, num_formats)
        self.worker_torso = TorchMLP(obs_dim + num_boundaries + num_formats + num_units, hidden)
        self.unit_head = nn.Linear(h, num_units + 1)          # [split gate, one edge logit per unit]
        self.critic_torso = TorchMLP(obs_dim, hidden) if critic == "separate" else None
        self.value_head = nn.Linear(h, 1)

    def forward(self, features, boundary_mask, format_mask, unit_mask):
        z = self.manager_torso(features)
        b_logits = _mask(self.boundary_head(z), boundary_mask)
        f_logits = _mask(self.format_head(z), format_mask)
        zv = self.critic_torso(features) if self.critic_torso is not None else z
        value = self.value_head(zv)[:, 0]
        b = torch.argmax(b_logits, dim=-1)
        f = torch.argmax(f_logits, dim=-1)
        b_1h = (torch.arange(self.nb, device=b.device)[None, :] == b[:, None]).to(features.dtype)
        f_1h = (torch.arange(self.nf, device=f.device)[None, :] == f[:, None]).to(features.dtype)
        allowed = (b_1h[:, :, None] * unit_mask.to(features.dtype)).sum(dim=1) > 0.5          # unit_mask[b]
        x = torch.cat([features, b_1h, f_1h, allowed.to(features.dtype)], dim=-1)
        out = self.unit_head(self.worker_torso(x))
        gate, edge = out[:, 0], out[:, 1:]
        gate = torch.where(allowed.any(dim=-1), gate, torch.full_like(gate, MASKED_LOGIT))
        s_logits = torch.stack([torch.zeros_like(gate), gate], dim=-1)
        edge = torch.where(allowed, edge, torch.full_like(edge, MASKED_LOGIT))
        u_logits = torch.stack([torch.zeros_like(edge), edge], dim=-1)
        units = torch.argmax(u_logits, dim=-1) * torch.argmax(s_logits, dim=-1)[:, None]
        return b_logits, f_logits, u_logits, b, f, units, value, s_logits


def _copy_dense(lin: nn.Linear, p: dict) -> None:
    kernel, bias = np.array(p["kernel"], np.float32), np.array(p["bias"], np.float32)
    if tuple(kernel.shape) != (lin.in_features, lin.out_features):
        raise ExportError(f"flax kernel {kernel.shape} does not fit torch Linear({lin.in_features}, {lin.out_features})")
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(kernel.T.copy()))
        lin.bias.copy_(torch.from_numpy(bias))


def load_flax_weights(net: TorchHierarchical, params: dict) -> TorchHierarchical:
    """Copy one member's flax params ({"params": {...}} or the inner dict) into the torch twin."""
    p = params.get("params", params)
    for name in ("manager_torso", "worker_torso") + (("critic_torso",) if net.critic_torso is not None else ()):
        mlp = getattr(net, name)
        dense = sorted(p[name], key=lambda k: int(k.split("_")[-1]))
        if len(dense) != len(mlp.layers):
            raise ExportError(f"{name}: the checkpoint has {len(dense)} layers, the config says {len(mlp.layers)}")
        for lin, key in zip(mlp.layers, dense, strict=True):
            _copy_dense(lin, p[name][key])
    for name in ("boundary_head", "format_head", "unit_head", "value_head"):
        _copy_dense(getattr(net, name), p[name])
    return net.eval()


def build_torch_policy(agent, env) -> TorchHierarchical:
    return TorchHierarchical(env.obs_dim, env.num_boundaries, env.num_formats, env.num_units,
                             agent.hidden, agent.critic)
