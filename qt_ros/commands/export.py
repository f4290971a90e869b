"""``qt-ros export CHECKPOINT --format onnx|torchscript``: the acting path as standalone graphs.

Writes ``encode_frame`` and ``decide`` (the per-frame encoder, and the trunk with the greedy
decoder) and ``export.json`` (tokenizer, instruction encoder, sizes) into ``--out`` (default
``CHECKPOINT/export-<format>``), then acts with the checkpoint's PyTorch policy and with the
export on ``--check`` random observations and reports how many picked the same bins (exit 1
when any differs). The policy node runs an export like a checkpoint
(``checkpoint:=CHECKPOINT/export-onnx``, ONNX Runtime on the CPU); ``qt-ros bench act
--runtime both`` compares their speed. The work is :mod:`qt_ros.qtransformer.policy_export`.

    qt-ros export ckpt/ --format onnx
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint directory (qt-ros train output)")
    parser.add_argument("--format", dest="fmt", choices=("onnx", "torchscript"), default="onnx",
                        help="onnx (ONNX Runtime) or torchscript (default: onnx)")
    parser.add_argument("--out", help="export directory (default: CHECKPOINT/export-FORMAT)")
    parser.add_argument("--check", type=int, default=100,
                        help="observations on which the export must pick the PyTorch policy's "
                             "bins (0: no check; default: 100)")


def run(args: argparse.Namespace) -> int:
    """Export and check; a missing or unreadable checkpoint is a message and exit status 2."""
    from qt_ros.qtransformer.checkpoint import CheckpointError
    from qt_ros.qtransformer.policy_export import ExportError, check_export, export_checkpoint

    out = Path(args.out or Path(args.checkpoint) / f"export-{args.fmt}")
    start = time.monotonic()
    try:
        export_checkpoint(args.checkpoint, out, args.fmt)
    except (CheckpointError, ExportError, OSError) as exc:
        print(f"qt-ros export: {exc}", file=sys.stderr)
        return 2
    result = {"export": str(out), "format": args.fmt,
              "seconds": round(time.monotonic() - start, 1)}
    if args.check > 0:
        result["check"] = check_export(args.checkpoint, out, args.check)
    print(json.dumps(result))
    check = result.get("check")
    if check and check["same_bins"] != check["observations"]:
        print(f"qt-ros export: the export picked other bins than the PyTorch policy on "
              f"{check['observations'] - check['same_bins']} of {check['observations']} "
              f"observations", file=sys.stderr)
        return 1
    return 0
