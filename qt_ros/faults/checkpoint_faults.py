"""Malformed checkpoints (part of ``qt-ros bench faults --only recorder``).

:data:`MALFORMED` damages a good tiny checkpoint in each way a file can lie: config.json not JSON
or not UTF-8, wrong types, missing and unknown fields, negative and huge sizes, safetensors headers
that lie, tensor shapes that do not match. :func:`run_checkpoints` loads each in a child process
with a 6 GB address-space limit (a checkpoint that allocates what it describes cannot take the
machine) and counts clear errors (a ``CheckpointError`` naming the file) against raw exceptions,
crashes, hangs and checkpoints loaded anyway. No ROS.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def _edit_config(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    def apply(ckpt: Path) -> None:
        config = json.loads((ckpt / "config.json").read_text())
        edit(config)
        (ckpt / "config.json").write_text(json.dumps(config))
    return apply


def _write(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda ckpt: (ckpt / name).write_bytes(data)


def _edit_header(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    """Rewrite the safetensors header (padded to its old length so the data stays in place)."""
    def apply(ckpt: Path) -> None:
        raw = (ckpt / "model.safetensors").read_bytes()
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + n])
        edit(header)
        text = json.dumps(header).encode().ljust(n)
        (ckpt / "model.safetensors").write_bytes(len(text).to_bytes(8, "little") + text
                                                 + raw[8 + n:])
    return apply


def _first(header: dict) -> dict:
    return header[next(k for k in header if k != "__metadata__")]


# name -> how a good tiny checkpoint is damaged
MALFORMED: dict[str, Callable[[Path], None]] = {
    "config not JSON": _write("config.json", b"{not json"),
    "config not UTF-8": _write("config.json", b'{"format": "qt_ros.checkpoint\xff\xfe"}'),
    "config a JSON list": _write("config.json", b"[1, 2, 3]"),
    "config deeply nested": _write("config.json", b"[" * 100000 + b"]" * 100000),
    "version a string": _edit_config(lambda c: c.update(version="1")),
    "model missing": _edit_config(lambda c: c.pop("model")),
    "model a list": _edit_config(lambda c: c.update(model=[1, 2])),
    "extra a list": _edit_config(lambda c: c.update(extra=[1])),
    "model_id a number": _edit_config(lambda c: c.update(model_id=5)),
    "d_model a string": _edit_config(lambda c: c["model"].update(d_model="32")),
    "d_model negative": _edit_config(lambda c: c["model"].update(d_model=-32)),
    "num_heads zero": _edit_config(lambda c: c["model"].update(num_heads=0)),
    "image_size one value": _edit_config(lambda c: c["model"].update(image_size=[32])),
    "mlp_ratio NaN": _edit_config(lambda c: c["model"].update(mlp_ratio=float("nan"))),
    "unknown model field": _edit_config(lambda c: c["model"].update(dmodel=32)),
    "tokenizer bins strings": _edit_config(lambda c: c["tokenizer"].update(bins=["a"] * 8)),
    "tokenizer names a number": _edit_config(lambda c: c["tokenizer"].update(names=7)),
    "encoder dim mismatch": _edit_config(lambda c: c["encoder"].update(dim=16)),
    "encoder missing": _edit_config(lambda c: c.pop("encoder")),
    "d_model 65536 (51 GB)": _edit_config(lambda c: c["model"].update(d_model=65536)),
    "num_layers 100000": _edit_config(lambda c: c["model"].update(num_layers=100000)),
    "d_model 64 (weights 32)": _edit_config(lambda c: c["model"].update(d_model=64)),
    "weights empty": _write("model.safetensors", b""),
    "header length lies": lambda ckpt: (ckpt / "model.safetensors").write_bytes(
        (10 ** 12).to_bytes(8, "little") + (ckpt / "model.safetensors").read_bytes()[8:]),
    "header not JSON": _write("model.safetensors",
                              (6).to_bytes(8, "little") + b"\xff{nope" + b"\0" * 64),
    "header offsets past the end": _edit_header(
        lambda h: _first(h).update(data_offsets=[0, 10 ** 9])),
    "header shape lies": _edit_header(lambda h: _first(h).update(
        shape=[int(x) * 2 for x in _first(h)["shape"]])),
    "header dtype int": _edit_header(lambda h: _first(h).update(dtype="I32")),
    "weights truncated": lambda ckpt: (ckpt / "model.safetensors").write_bytes(
        (ckpt / "model.safetensors").read_bytes()[:-100]),
}


def load_case(root: Path, name: str, max_parameters: int | None = None) -> str:
    """Load one case of :data:`MALFORMED`: ``clear`` (a CheckpointError naming the file),
    ``unnamed: <message>``, ``raw: <exception>`` or ``loaded``."""
    from qt_ros.qtransformer.checkpoint import CheckpointError, load_policy, make_random_checkpoint

    ckpt = make_random_checkpoint(root / name.replace(" ", "_"), preset="tiny")
    MALFORMED[name](ckpt)
    try:
        load_policy(ckpt, **({} if max_parameters is None else  # the landed code had none
                             {"max_parameters": max_parameters}))
        return "loaded"
    except CheckpointError as exc:
        return "clear" if str(ckpt) in str(exc) else f"unnamed: {exc}"
    except BaseException as exc:  # noqa: BLE001 - what is being counted
        return f"raw: {type(exc).__name__}: {str(exc)[:120]}"
    finally:
        shutil.rmtree(ckpt, ignore_errors=True)


def _checkpoint_child(root: Path, names: list[str]) -> None:
    """``python -m qt_ros.faults.checkpoint_faults checkpoints DIR NAME...``: one JSON line per
    case, in a process whose address space is limited (6 GB), so a checkpoint that allocates
    what it describes cannot take the machine (it dies instead: counted as a raw failure)."""
    limit = 6 << 30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for name in names:
        print(json.dumps({"start": name}), flush=True)
        started = time.monotonic()
        result = load_case(root, name)
        print(json.dumps({"name": name, "result": result,
                          "seconds": round(time.monotonic() - started, 2)}), flush=True)


def run_checkpoints(case_timeout: float = 60.0) -> dict:
    """Every malformed checkpoint, loaded in child processes (a new one after a crash or a case
    that runs past ``case_timeout``)."""
    results: dict[str, str] = {}
    seconds: dict[str, float] = {}
    todo = list(MALFORMED)
    with tempfile.TemporaryDirectory(prefix="qt_ros_ckpt_faults_") as tmp:
        out = Path(tmp) / "results.jsonl"
        while todo:
            with open(out, "w") as f:
                child = subprocess.Popen([sys.executable, "-m", "qt_ros.faults.checkpoint_faults",
                                          "checkpoints", tmp, *todo], stdout=f,
                                         stderr=subprocess.DEVNULL)
            running, since = None, time.monotonic()
            while child.poll() is None:
                time.sleep(0.2)
                last = _json_lines(out)[-1:]
                name = last[0].get("start") if last else None
                if name != running:
                    running, since = name, time.monotonic()
                elif name and time.monotonic() - since > case_timeout:
                    child.kill()
                    child.wait()
            lines = _json_lines(out)
            for line in lines:
                if "result" in line:
                    results[line["name"]] = line["result"]
                    seconds[line["name"]] = line["seconds"]
            if lines and "start" in lines[-1]:  # the child died or hung in this case
                name, elapsed = lines[-1]["start"], time.monotonic() - since
                results[name] = (f"raw: hung past {case_timeout:g} s" if elapsed > case_timeout
                                 else f"raw: the process died (exit {child.returncode})")
                seconds[name] = round(elapsed, 1)
            elif not lines:
                return {"error": f"the checkpoint child failed (exit {child.returncode})"}
            todo = [n for n in todo if n not in results]
    return {"injected": len(results),
            "clear_errors": sum(r == "clear" for r in results.values()),
            "raw_exceptions": sum(r.startswith("raw") for r in results.values()),
            "loaded_anyway": sum(r == "loaded" for r in results.values()),
            "not_clear": {k: v for k, v in results.items() if v != "clear"},
            "slowest_case_s": max(seconds.values(), default=0.0)}


def _json_lines(path: Path) -> list[dict]:
    lines = []
    for text in path.read_text().splitlines():
        try:
            lines.append(json.loads(text))
        except ValueError:  # a line being written
            break
    return lines




if __name__ == "__main__" and sys.argv[1:2] == ["checkpoints"]:
    _checkpoint_child(Path(sys.argv[2]), sys.argv[3:])
