"""Many bags -> episodes, in parallel worker processes: the library behind ``qt-ros convert``.

Each bag is converted in its own worker (:func:`convert_one`, never raises: a bad bag becomes a
message naming the problem), results come back in bag order through a bounded window of submitted
bags (memory stays flat however many bags), and a worker that dies (killed, out of memory) is
reported on the bag it was converting. Appending the results to the dataset is the caller's
(the writer is single-process).
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from qt_ros.data.conversion_results import (
    ConvertedEpisode,
    ConvertOptions,
    Deferred,
    EpisodeError,
    NoSteps,
    Skipped,
)
from qt_ros.data.episode_conversion import convert_bag
from qt_ros.data.images import ImageConversionError
from qt_ros.data.topic_mapping import MappingError
from qt_ros.episodes.bag_metadata import BagError
from qt_ros.episodes.bag_reader import BagReader
from qt_ros.qtransformer.tokenizer import ActionTokenizer

WORKER_DIED = ("a conversion worker process died (killed, or out of memory?) before finishing "
               "this bag; retry with fewer --workers")
NOT_RUN = "not converted: a worker process died earlier in this run; run the command again"

# One bag's outcome: its steps, a bag already in the dataset, no step with a state, waiting for
# the dataset's state size, or why it failed (text).
BagResult = ConvertedEpisode | Skipped | NoSteps | Deferred | str


def load_tokenizer_config(path: str | Path) -> dict:
    """A tokenizer config from a JSON file, a checkpoint's config.json, or a checkpoint dir."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the tokenizer from {p}: {exc}") from exc
    config = data.get("tokenizer", data) if isinstance(data, dict) else None
    if not isinstance(config, dict):
        raise ValueError(f"{p} holds no tokenizer config")
    return ActionTokenizer.from_config(config).to_config()


def convert_one(task: tuple[str, ConvertOptions, frozenset[str]]) -> BagResult:
    """Worker: one bag -> a :data:`BagResult` (never raises)."""
    bag, options, skip = task
    try:
        return convert_bag(bag, options, skip)
    except (BagError, EpisodeError, MappingError, ImageConversionError) as exc:
        return str(exc).replace(f"{bag}: ", "", 1)
    except Exception as exc:  # noqa: BLE001 - one bad bag must not stop the others
        return f"unexpected {type(exc).__name__} while reading the bag: {exc}"


def convert_bags(bags: list[Path], options: ConvertOptions, skip: frozenset[str],
                 workers: int) -> Iterator[tuple[str, BagResult]]:
    """Yield ``(bag, result)`` for every bag, in order; bags whose key is in ``skip`` come back
    as :class:`Skipped`. ``workers`` > 1 converts that many bags at a time in processes."""
    tasks = [(str(b), options, skip) for b in bags]
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            yield task[0], convert_one(task)
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    if method == "fork":
        _warm_up(tasks[0][0])
    ctx = multiprocessing.get_context(method)
    # A bounded window of submitted bags keeps memory flat; results come back in bag order.
    with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=ctx,
                             initializer=_worker_init) as pool:
        pending: deque = deque()
        todo = iter(tasks)

        def submit(task) -> Future | None:
            try:
                return pool.submit(convert_one, task)
            except BrokenProcessPool:
                return None

        for task in itertools.islice(todo, 2 * workers):
            pending.append((task, submit(task)))
        broken = False
        while pending:
            task, future = pending.popleft()
            try:
                result = future.result() if future is not None else NOT_RUN
            except BrokenProcessPool:
                result = NOT_RUN if broken else WORKER_DIED
                broken = True
            yield task[0], result
            for nxt in itertools.islice(todo, 1):
                pending.append((nxt, submit(nxt)))


def _warm_up(bag: str) -> None:
    """Build the message typestores once, before forking, so workers inherit them (building
    one costs about as much as converting a short bag)."""
    try:
        BagReader.open(bag).close()
    except Exception:  # noqa: BLE001 - the worker reports what is wrong with the bag
        pass


def _worker_init() -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core already
