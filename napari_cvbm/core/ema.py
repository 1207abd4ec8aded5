"""Exponential moving average teacher (spec 5)."""

import torch


@torch.no_grad()
def ema_update(teacher: torch.nn.Module, student: torch.nn.Module, decay: float = 0.99) -> None:
    """theta_t <- decay * theta_t + (1 - decay) * theta_s for every parameter; buffers are copied."""
    for t_param, s_param in zip(teacher.parameters(), student.parameters()):
        t_param.mul_(decay).add_(s_param.detach(), alpha=1.0 - decay)
    for t_buf, s_buf in zip(teacher.buffers(), student.buffers()):
        t_buf.copy_(s_buf)
