"""FromLast, which sends a pipeline step's result and logs from the last stage to every stage: two real gloo
processes send a sequence of payloads of every kind, and each stage must end up with what the last stage
had (values, dtypes, options), with a payload of an already seen layout sent as one tensor, not pickled.
Both ways: one broadcast per step (NCCL), and receives posted before the step with point-to-point sends
(gloo), the values arriving before or after the receiving stage asks for them."""
import os
import pickle
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from surge.launch import find_free_port
from surge.strategies.pipeline_steps import FromLast

OPTIONS = dict(prog_bar=True, logger=True, on_step=True, on_epoch=False, reduce_fx="mean", sync_dist=False,
               batch_size=None)


def payloads() -> list:
    """(what the last stage leaves, whether it may go as a tensor) for each step, in order."""
    loss = torch.tensor(0.25)
    logs = [("loss", torch.tensor(0.25), OPTIONS), ("acc", torch.tensor(0.5, dtype=torch.float64), OPTIONS)]
    many = [(f"m{i}", torch.tensor(float(i)), OPTIONS) for i in range(FromLast.CAPACITY)]
    return [
        ((loss, logs), False),                                  # a new layout: an object, and kept
        ((torch.tensor(0.125), [("loss", torch.tensor(0.125), OPTIONS), ("acc", torch.tensor(1 / 3,
          dtype=torch.float64), OPTIONS)]), True),              # the same layout, other values
        ((loss, [("loss", torch.tensor(0.5), dict(OPTIONS, batch_size=8))]), False),  # other options
        ((torch.tensor(2.0), logs), True),                      # the first layout again
        ((None, []), False),                                    # no loss, nothing logged
        ((None, []), True),
        ((torch.tensor(1.5, dtype=torch.float16), []), False),  # a half-precision loss
        ((torch.tensor(1.5, dtype=torch.float16), []), True),
        ((torch.arange(6.0).reshape(2, 3), []), False),         # a prediction: always an object
        ((torch.arange(6.0).reshape(2, 3), []), False),
        (({"loss": loss, "n": 3}, logs), False),                # a dict: always an object
        ((loss, many), False),                                  # more values than the tensor holds
        ((loss, many), False),
        ((loss, logs), True),
    ]


def worker(rank: int, port: int, out: str, posted: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    group = dist.new_group([0, 1], backend="gloo") if posted else None
    pickled = []
    original = dist.broadcast_object_list

    def counting(*args, **kwargs):
        pickled.append(None)
        return original(*args, **kwargs)

    dist.broadcast_object_list = counting
    channel, got = FromLast(), []
    for step, (payload, _) in enumerate(payloads()):
        before = len(pickled)
        receive = channel.post(1, group, torch.device("cpu")) if posted and rank == 0 else None
        if posted and step % 2 == rank:  # the "step": the values come late on even steps, early on odd ones
            time.sleep(0.05)
        received = channel.send(payload if rank == 1 else None, rank == 1, 1, group, torch.device("cpu"),
                                torch.device("cpu"), receive, p2p=posted)
        got.append((received, len(pickled) == before))
    with open(f"{out}/rank{rank}.pkl", "wb") as f:
        pickle.dump((got, len(channel.layouts)), f)
    dist.barrier()
    dist.destroy_process_group()


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


@pytest.mark.parametrize("posted", [False, True], ids=["broadcast", "posted"])
def test_every_stage_gets_what_the_last_stage_left(tmp_path, posted):
    mp.start_processes(worker, args=(find_free_port(), str(tmp_path), posted), nprocs=2, start_method="spawn")
    expected = payloads()
    for rank in (0, 1):
        with open(tmp_path / f"rank{rank}.pkl", "rb") as f:
            got, layouts = pickle.load(f)
        assert layouts == 4  # (loss, acc), (loss with batch_size), (), (half loss): the others are not kept
        for step, ((payload, as_tensor), (received, went_as_tensor)) in enumerate(zip(expected, got)):
            assert same(payload, received), f"rank {rank}, step {step}: {received!r} != {payload!r}"
            assert went_as_tensor == as_tensor, f"rank {rank}, step {step}"
