"""Run by tests/integration/distributed/test_grad_sync.py under `torch.distributed.run --nproc_per_node 2`: the
bucketed, overlapped gradient averaging against a plain all-reduce of the same gradients."""

import json
import sys

import torch
import torch.distributed as dist
from torch import nn

from trgl_hf.distributed.grad_sync import GradientAverager

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
modules = [nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 8)),
           nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 4))]  # fmt: skip
unused = nn.Parameter(torch.ones(3))  # in module 2's list, reached by no loss
params = [list(modules[0].parameters()), [*modules[1].parameters(), unused]]
bucket_bytes = 10_000  # a 64x64 weight (16 KiB) is a bucket alone (reduced in place); small tensors are packed
averager = GradientAverager(params, bucket_bytes=bucket_bytes)
generator = torch.Generator().manual_seed(100 + rank)  # different data on each rank
x = torch.randn(16, 64, generator=generator)

expected = []
for step in range(2):
    hidden = modules[0](x)
    second = modules[1](hidden.detach())
    losses = [hidden.pow(2).mean() * (step + 1), second.pow(2).mean()]
    local = [torch.autograd.grad(loss, [p for p in group if p.requires_grad], retain_graph=True, allow_unused=True)
             for loss, group in zip(losses, params)]  # fmt: skip
    flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                      for grads, group in zip(local, params) for g, p in zip(grads, group)])  # fmt: skip
    dist.all_reduce(flat)
    expected.append(flat / world)

    for group in params:
        for p in group:
            p.grad = None
    averager.start_step()
    losses[0].backward()
    first_launched = [b.launched for b in averager.buckets]
    losses[1].backward()
    averager.finish()
    got = torch.cat([p.grad.reshape(-1) for group in params for p in group])
    torch.testing.assert_close(got, expected[-1], rtol=0, atol=0)

first_module = {id(p) for p in params[0]}
in_first = [all(id(p) in first_module for p in b.params) for b in averager.buckets]
result = {
    "buckets": len(averager.buckets),
    "packed": sum(len(b.params) > 1 for b in averager.buckets),
    "buckets_never_mix_modules": all(
        in_first[i] or not any(id(p) in first_module for p in b.params) for i, b in enumerate(averager.buckets)
    ),  # fmt: skip
    "first_module_launched_before_second_backward": [s for s, f in zip(first_launched, in_first) if f],
    "second_module_launched_before_its_backward": [s for s, f in zip(first_launched, in_first) if not f],
    "max_buffer_bytes": averager.max_buffer_bytes,
    "bucket_bytes": bucket_bytes,
}
averager.remove()

shared = nn.Parameter(torch.ones(4))  # one weight in two modules' losses: refused, never averaged half-way
guard = GradientAverager([[shared], []], bucket_bytes=bucket_bytes)
guard.start_step()
(shared * 2).sum().backward()
try:
    (shared * 3).sum().backward()
    result["shared_weight_refused"] = False
except RuntimeError as error:
    result["shared_weight_refused"] = "shared between modules" in str(error)
guard.finish()
guard.remove()
with open(f"{sys.argv[1]}/rank{rank}.json", "w") as stream:
    json.dump(result, stream)
dist.destroy_process_group()
