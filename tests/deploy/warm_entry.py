"""A warm ClientApp server whose children run a probe instead of Flower's
ClientApp (tests/deploy/test_warm_clientapp.py): ``python warm_entry.py SOCKET
VERSION_FILE`` (the file's text stands for fedshield's installed version)."""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path


def probe() -> None:
    """What a forked ClientApp sees, and the randomness it would draw."""
    import numpy as np
    import torch

    from fedshield.client.app import training_seed
    from fedshield.client.config import ClientConfig
    from fedshield.privacy.client_dp import secure_normal

    args = sys.argv[1:]
    if args and args[0] == "sleep":
        sys.stdout.write(f"sleeping {os.getpid()}\n")
        sys.stdout.flush()
        time.sleep(float(args[1]))
        return
    cfg = ClientConfig.from_run_config({"dp.enabled": True})
    sys.stdout.write(
        json.dumps(
            {
                "argv": sys.argv,
                "cwd": os.getcwd(),
                "pid": os.getpid(),
                "dp_seed": training_seed(cfg, "site", 1),
                "noise": secure_normal(torch.Size([4]), std=1.0).tolist(),
                "urandom": os.urandom(16).hex(),
                "random": random.random(),
                "numpy": float(np.random.rand()),
                "torch": float(torch.rand(1)),
                "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
            }
        )
        + "\n"
    )
    sys.stderr.write("to stderr\n")
    if "exit" in args:
        raise SystemExit(int(args[args.index("exit") + 1]))


def version_in(path: Path) -> str:
    """The "installed version" the test controls: the text of ``path``."""
    return path.read_text()


if __name__ == "__main__":
    from fedshield.deploy.warm_clientapp import serve

    version_file = Path(sys.argv[2])
    serve(
        Path(sys.argv[1]),
        entry=probe,
        preload=("fedshield.client.app",),
        version=lambda: version_in(version_file),
    )
