"""How the trained UNet is spread over ranks: replicated (one process, or DDP) or sharded (FSDP2).

The loop talks to one of two small classes with the same methods, so it never branches on the
strategy: the module the step runs, the parameters the optimizer updates, the EMA update, and the
collective calls that produce what a checkpoint writes (full weights of the UNet and its EMA, the
optimizer state) and what probes sample from (the full EMA).

FSDP2 (``train.parallel=fsdp``, ``torch.distributed.fsdp.fully_shard``): every down, mid and up
block and the root are sharded, so each rank holds 1/world of the weights, gradients and AdamW
moments. The EMA is sharded the same way: each rank keeps the EMA of its own shards (one fused
``lerp`` over local tensors, no communication per step) and the full EMA is gathered only to write
a checkpoint or sample probes. Checkpoint weights are full diffusers ``save_pretrained`` folders
(export and the cascade read them whatever the strategy); the optimizer state is the strategy's
own (FSDP2's is keyed by parameter name), so a run resumes with the strategy it was saved with.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager, nullcontext

import torch
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.nn.parallel import DistributedDataParallel as DDP


class Replicated:
    """One process, or DDP over a process group: every rank holds the whole UNet and its EMA."""

    kind = "ddp"

    def __init__(self, unet: torch.nn.Module, ema: torch.nn.Module, device: torch.device, distributed: bool,
                 bucket_mb: int = 25, bucket_view: bool = False):
        self.unet, self.ema = unet, ema
        self.module = unet
        if distributed:
            self.module = DDP(unet, device_ids=[device.index] if device.type == "cuda" else None,
                              bucket_cap_mb=bucket_mb, gradient_as_bucket_view=bucket_view)
        else:
            self.kind = None

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.unet.parameters() if p.requires_grad]

    def gradient_sync(self, on: bool):
        """Context for one micro-batch's backward: DDP all-reduces gradients only when ``on`` (the
        last micro-batch of an accumulation window); before it they accumulate locally."""
        if on or self.module is self.unet:
            return nullcontext()
        return self.module.no_sync()

    @torch.no_grad()
    def ema_update(self, decay: float) -> None:
        torch._foreach_lerp_(list(self.ema.parameters()), [p.detach() for p in self.unet.parameters()], 1.0 - decay)

    def full_modules(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        """(UNet, EMA) with full weights, for rank 0 to save (every rank calls it)."""
        return self.unet, self.ema

    def full_ema(self) -> torch.nn.Module:
        return self.ema

    def optimizer_state(self, opt: torch.optim.Optimizer) -> dict:
        return opt.state_dict()

    def load_optimizer_state(self, opt: torch.optim.Optimizer, state: dict) -> None:
        opt.load_state_dict(state)


def _shard_units(unet: torch.nn.Module) -> list[torch.nn.Module]:
    """The UNet's blocks, each its own FSDP unit (all-gathered just before it runs)."""
    units = []
    for name in ("down_blocks", "up_blocks"):
        units.extend(getattr(unet, name, []) or [])
    for name in ("mid_block", "transformer_in", "image_latents_context_embedding", "context_embedding"):
        m = getattr(unet, name, None)
        if isinstance(m, torch.nn.Module):
            units.append(m)
    return units


class Sharded:
    """FSDP2 over the process group's ranks (NCCL on GPUs, gloo on CPUs)."""

    kind = "fsdp"

    def __init__(self, unet: torch.nn.Module, ema: torch.nn.Module, device: torch.device, rank: int):
        self.rank = rank
        # Rank 0 keeps full-size copies on the CPU to write checkpoints from; the others hold none.
        self.unet_host = copy.deepcopy(unet).to("cpu").requires_grad_(False) if rank == 0 else None
        self.ema_host = ema.to("cpu") if rank == 0 else None
        for unit in _shard_units(unet):
            fully_shard(unit)
        fully_shard(unet)
        self.unet = self.module = unet
        self.names = [n for n, _ in unet.named_parameters()]
        # The EMA of this rank's shards, from the EMA weights the run starts with (a resume's).
        full_ema = dict(ema.named_parameters())
        self.ema_shards = [self._local_part(full_ema[n].detach(), p) for n, p in unet.named_parameters()]

    @staticmethod
    def _local_part(full: torch.Tensor, like) -> torch.Tensor:
        return distribute_tensor(full.to(like.device, like.dtype), like.device_mesh, like.placements).to_local().clone()

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.unet.parameters() if p.requires_grad]

    @contextmanager
    def gradient_sync(self, on: bool):
        """Context for one micro-batch's backward: FSDP2 reduce-scatters gradients only when ``on``
        (the last micro-batch of an accumulation window); before it they accumulate unsharded."""
        if on:
            yield
            return
        self.unet.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            self.unet.set_requires_gradient_sync(True)

    @torch.no_grad()
    def ema_update(self, decay: float) -> None:
        torch._foreach_lerp_(self.ema_shards, [p.detach().to_local() for p in self.unet.parameters()], 1.0 - decay)

    def _gather_ema(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, p, shard in zip(self.names, self.unet.parameters(), self.ema_shards):
            full = DTensor.from_local(shard, p.device_mesh, p.placements, shape=p.shape, stride=p.stride()).full_tensor()
            if self.rank == 0:
                out[name] = full.cpu()
        return out

    def full_modules(self) -> tuple[torch.nn.Module | None, torch.nn.Module | None]:
        """Collective: every rank calls it; rank 0 gets CPU modules with the full weights."""
        unet_sd = get_model_state_dict(self.unet, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        ema_sd = self._gather_ema()
        if self.rank != 0:
            return None, None
        self.unet_host.load_state_dict(unet_sd, strict=True)
        self.ema_host.load_state_dict(ema_sd, strict=False)  # parameters; buffers are the UNet's own
        return self.unet_host, self.ema_host

    def full_ema(self) -> torch.nn.Module | None:
        return self.full_modules()[1]

    def optimizer_state(self, opt: torch.optim.Optimizer) -> dict:
        return get_optimizer_state_dict(self.unet, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_optimizer_state(self, opt: torch.optim.Optimizer, state: dict) -> None:
        set_optimizer_state_dict(self.unet, opt, state, options=StateDictOptions(full_state_dict=True))


def spread(unet: torch.nn.Module, ema: torch.nn.Module, device: torch.device, cfg,
           distributed: bool, rank: int) -> Replicated | Sharded:
    """The wrapper for ``train.parallel`` (``ddp`` or ``fsdp``; one process: plain), with the
    communication settings of ``cfg`` (a ``TrainConfig``)."""
    if distributed and cfg.parallel == "fsdp":
        return Sharded(unet, ema, device, rank)
    return Replicated(unet, ema, device, distributed, bucket_mb=cfg.ddp_bucket_mb, bucket_view=cfg.ddp_bucket_view)
