"""Where and how a command runs: device choice, torchrun setup, and signal handling.

Ctrl-C and SIGTERM become requests that a loop honours between steps (or images), and DataLoader workers
leave both signals to the main process.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading

import torch
import torch.distributed as dist

from ssl_seg.errors import TrainError


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise TrainError(f"--device {name!r} is not one ssl-seg runs on; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainError(f"--device {name} asked for, but torch sees no CUDA device; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise TrainError(f"--device {name}: torch sees {torch.cuda.device_count()} CUDA device(s), numbered from 0")
    return device


@contextlib.contextmanager
def stop_on_interrupt(distributed: bool = False):
    """Turn Ctrl-C (SIGINT) and SIGTERM (a scheduler's preemption) into a request (the list yielded gains
    an entry) that the loop honours after its step. In a single process a second signal acts at once.
    Under torchrun every signal is only a request: it forwards the terminal's Ctrl-C to ranks that got it
    already, and kills them itself after its --shutdown_timeout. Only in the main thread."""
    requested: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    # a process started with a signal ignored (a background job of a script ignores SIGINT) keeps ignoring it
    handled = [sig for sig, handler in previous.items() if handler is not signal.SIG_IGN]

    def on_signal(signum, frame):
        requested.append(signum)
        if not distributed:
            for sig in handled:
                signal.signal(sig, previous[sig])

    for sig in handled:
        signal.signal(sig, on_signal)
    try:
        yield requested
    finally:
        for sig in handled:
            signal.signal(sig, previous[sig])


@contextlib.contextmanager
def workers_released_on_exit():
    """A shared flag that DataLoader workers read (see ``worker_signals``), set once the run no longer needs them."""
    released = multiprocessing.RawValue("b", 0)  # lock-free: a signal handler reads it
    try:
        yield released
    finally:
        released.value = 1


def worker_signals(released, worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C and SIGTERM to the main process, which stops them after saving: a
    worker killed by one would make the main process fail mid-step. In a process group of their own,
    signals sent to the run's group (by a terminal or torchrun) miss them, and while the run lasts they
    ignore SIGTERM sent to each process (as Slurm does). Once ``released`` is set, a SIGTERM ends them at
    once (exit status 0): multiprocessing terminates leftover workers at interpreter exit and waits for them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def on_sigterm(signum, frame):
        if released.value:
            os._exit(0)  # not killed by the signal: torch's SIGCHLD handler would report that as an error

    signal.signal(signal.SIGTERM, on_sigterm)
    if hasattr(os, "setpgid"):
        os.setpgid(0, 0)


def setup_distributed(device_name: str = "auto") -> tuple[int, int, int]:
    """(rank, world_size, local_rank); starts the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        on_gpu = torch.cuda.is_available() and (device_name == "auto" or device_name.startswith("cuda"))
        backend = "nccl" if on_gpu else "gloo"  # NCCL cannot reduce CPU tensors (--device cpu on a GPU machine)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))
