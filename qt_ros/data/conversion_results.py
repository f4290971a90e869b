"""What converting one bag takes and gives: the options, and the four outcomes of
:func:`qt_ros.data.episode_conversion.convert_bag` besides an error.

A bag becomes a :class:`ConvertedEpisode` (its steps), or is :class:`Skipped` (already in the
dataset), or has :class:`NoSteps` (every step dropped for want of a state: a policy episode that
ended before the robot's first joint state), or is :class:`Deferred` (its state topic stayed silent
and the dataset's state size is not known yet). Anything else is an :class:`EpisodeError` whose
text names the bag and the problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qt_ros.data.returns import DEFAULT_GAMMA
from qt_ros.data.topic_mapping import TopicMapping
from qt_ros.qtransformer.tokenizer import ActionTokenizer

DEFAULT_IMAGE_SIZE = (128, 128)  # (H, W), the training resolution when none is asked


@dataclass
class ConvertOptions:
    """How bags become steps (the ``qt-ros convert`` options)."""

    tokenizer: dict = field(default_factory=lambda: ActionTokenizer().to_config())
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE  # (H, W)
    gamma: float = DEFAULT_GAMMA
    mapping: TopicMapping | None = None
    max_image_age: float | None = None  # overrides the mapping's
    rate: float | None = None  # overrides the mapping's
    # The dataset's state size, when it has one. A qt_ros bag whose recorded state topic has no
    # message then has every step dropped (no_state), unless it is 0 (a robot without state).
    # None: such a bag has no state (S = 0), or is Deferred with ``defer_silent_state``.
    state_dim: int | None = None
    defer_silent_state: bool = False


@dataclass
class ConvertedEpisode:
    """The steps of one bag (arrays of equal length T) and the episode's record."""

    key: str
    record: dict[str, Any]
    arrays: dict[str, np.ndarray]
    warnings: list[str] = field(default_factory=list)


@dataclass
class Skipped:
    """A bag already in the dataset (its key); ``outcome`` is its current label, if it has one."""

    key: str
    bag: str
    outcome: str | None = None


@dataclass
class NoSteps:
    """A bag all of whose steps were dropped for want of a state (counts by reason in
    ``dropped``): reported, not an error."""

    key: str
    bag: str
    dropped: dict[str, int]


@dataclass
class Deferred:
    """A bag whose state topic stayed silent, to convert once the dataset's state size is known
    (``ConvertOptions.state_dim``)."""

    key: str
    bag: str


class EpisodeError(Exception):
    """A bag that cannot become an episode; the text names the bag and the problem."""
