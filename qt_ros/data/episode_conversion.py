"""One bag -> one episode of training steps: alignment, images, tokens, reward, MC return.

Control steps come from the command stream (every ``PolicyStep``, or every message of the mapping's
``step`` topic) or from a fixed ``rate``. Each step takes the latest image and state received at
or before it (bag log time); a step whose image is older than ``max_image_age``, or that has no
image or no state yet, is dropped and counted by reason. A command step is one decision: its
action is each action topic's last value when the decision closes (the next camera frame, the
next step, or ``step_window`` after the step), so commands answering one frame on separate
topics form one step in any order; its state is the one stamped with its frame, if stamped.
Images are converted to RGB and resized once, to the training resolution (``cv2.INTER_AREA``, no
crop). Actions are tokenized with the dataset's
:class:`~qt_ros.qtransformer.tokenizer.ActionTokenizer`, or their bins taken from ``PolicyStep``.

A bag its CRCs find damaged is refused (``BagReader.verify``). Several ``actions`` entries may
read fields of one message. A bag all of whose steps lack a state (a policy episode that ended
before the robot's first joint state) gives :class:`NoSteps`, counted, not an error.

Rewards are sparse (Q-Transformer): the episode's reward (1 for success, else 0, unless the label
gave another value) at the last step, 0 before; ``done`` is 1 at the last step; the Monte Carlo
return is ``mc_return[t] = sum_{j>=t} gamma^(j-t) reward[j]``.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qt_ros.data.conversion_results import (
    ConvertedEpisode,
    ConvertOptions,
    Deferred,
    EpisodeError,
    NoSteps,
    Skipped,
)
from qt_ros.data.images import ImageConversionError, resize_frame, to_rgb8
from qt_ros.data.returns import mc_returns
from qt_ros.data.topic_mapping import (
    EVENT_TYPE,
    IMAGE_TYPES,
    ActionSource,
    MappingError,
    TopicMapping,
    cdr_header_stamp,
    default_fields,
    header_stamp,
    infer_roles,
    mapping_from_roles,
    read_fields,
)
from qt_ros.episodes.bag_metadata import BagError
from qt_ros.episodes.bag_reader import BagReader, episode_metadata
from qt_ros.episodes.catalog import reward_for
from qt_ros.qtransformer.tokenizer import ActionTokenizer


def convert_bag(path: str | Path, options: ConvertOptions, skip_keys: frozenset[str] = frozenset()
                ) -> ConvertedEpisode | Skipped | NoSteps | Deferred:
    """Read one bag into steps; raises :class:`EpisodeError` (or BagError) saying what is wrong,
    also when its CRCs say it is damaged (``BagReader.verify``)."""
    path = Path(path)
    with BagReader.open(path) as bag:
        if bag.message_count == 0:
            raise EpisodeError(f"{path}: the bag is empty (no messages)")
        _refuse_damaged(bag)
        meta = episode_metadata(bag)
        key = f"episode:{meta['episode_id']}" if meta.get("episode_id") else \
            f"bag:{bag.fingerprint()}"
        if key in skip_keys:
            return Skipped(key, str(path), meta.get("outcome"))
        mapping = _mapping_for(bag, meta, options)
        if mapping is None:
            return Deferred(key, str(path))
        return _Converter(bag, meta, mapping, options, key).run()


def _refuse_damaged(bag: BagReader) -> None:
    """A bag its CRCs find damaged is not trained on: EpisodeError naming bag and episode."""
    if not bag.verify():
        return
    try:
        episode = episode_metadata(bag).get("episode_id")
    except BagError:
        episode = None
    raise EpisodeError(f"{bag.path}: damaged{f' (episode {episode})' if episode else ''}: "
                       f"{'; '.join(bag.damage)}; not converted. `qt-ros repair {bag.path}` "
                       f"rewrites it with the messages of its intact chunks")


def _mapping_for(bag: BagReader, meta: dict[str, Any],
                 options: ConvertOptions) -> TopicMapping | None:
    """The bag's mapping; None when the bag must wait for the dataset's state size."""
    types = {t: info.msgtype for t, info in bag.topics.items()}
    roles = dict(meta.get("topics") or {})
    if not roles and EVENT_TYPE in types.values():
        roles = infer_roles(types)
    if roles:
        state = roles.get("state")
        if state and (state not in bag.topics or bag.topics[state].count == 0):
            # Recorded but silent: a robot without state (S = 0), or an episode that ended
            # before its first state; the dataset's state size tells which.
            if options.state_dim is None and options.defer_silent_state:
                return None
            if not options.state_dim:
                roles.pop("state")
        mapping = mapping_from_roles(roles).merged(options.mapping)
    elif options.mapping is not None:
        mapping = options.mapping
    else:
        raise EpisodeError(f"{bag.path}: not a qt_ros episode bag (no episode metadata) and no "
                           f"--mapping given; write a topic mapping YAML for it (topics in the "
                           f"bag: {_topic_list(bag)})")
    if options.max_image_age is not None:
        mapping.max_image_age = options.max_image_age
    if options.rate is not None:
        mapping.rate = options.rate
    return mapping


def _topic_list(bag: BagReader) -> str:
    return ", ".join(f"{t} ({i.msgtype}, {i.count})" for t, i in bag.topics.items()) or "none"


@dataclass
class _Decision:  # a command step, taking commands until it closes
    t: int  # log time of its step message or tick (ns)
    image: tuple[int, str, bytes] | None  # (log time, type, CDR) of its frame
    state: np.ndarray | None  # the latest state at t


class _Converter:
    def __init__(self, bag: BagReader, meta: dict[str, Any], mapping: TopicMapping,
                 options: ConvertOptions, key: str) -> None:
        self.bag, self.meta, self.m, self.options, self.key = bag, meta, mapping, options, key
        self.tokenizer = ActionTokenizer.from_config(options.tokenizer)
        self.where = str(bag.path)
        self.dropped: Counter[str] = Counter()
        self.warnings: list[str] = []
        self.image_error = ""
        # outputs, one entry per kept step
        self.frames: list[np.ndarray] = []
        self.states: list[np.ndarray] = []
        self.actions: list[np.ndarray] = []
        self.bins: list[np.ndarray] = []
        self.times: list[int] = []
        self.ages: list[float] = []
        # stream state
        self.images: deque = deque()
        self.decoded: tuple[int, np.ndarray] | None = None
        self.state: np.ndarray | None = None
        self.stamped_states: deque = deque(maxlen=1024)  # (header stamp ns, values)
        self.state_fields: list[str] | None = None
        self.held: dict[int, np.ndarray] = {}  # actions entry index -> its latest values
        self.pending: _Decision | None = None  # the command step still taking commands
        self.instruction = ""
        self.policy_instruction = ""
        self.model_id = ""

    # -- checks -------------------------------------------------------------------------------

    def _require(self, topic: str, role: str) -> str:
        info = self.bag.topics.get(topic)
        if not topic:
            raise EpisodeError(f"{self.where}: no {role} topic is mapped (topics in the bag: "
                               f"{_topic_list(self.bag)})")
        if info is None or info.count == 0:
            state = "has no messages on" if info is not None else "has no"
            raise EpisodeError(f"{self.where}: the bag {state} {role} topic '{topic}' (topics in "
                               f"the bag: {_topic_list(self.bag)})")
        return info.msgtype

    def run(self) -> ConvertedEpisode | NoSteps:
        m = self.m
        image_type = self._require(m.image, "image")
        if image_type not in IMAGE_TYPES:
            raise EpisodeError(f"{self.where}: image topic '{m.image}' has type {image_type}, "
                               f"not one of {IMAGE_TYPES}")
        try:
            m.check_dims(self.tokenizer.names, self.tokenizer.terminate)
        except MappingError as exc:
            raise EpisodeError(f"{self.where}: {exc}") from exc
        wanted = {m.image}
        if m.actions:
            for i, src in enumerate(m.actions):
                msgtype = self._require(src.topic, f"action ({', '.join(src.dims)})")
                src.fields = src.fields or default_fields(msgtype, src.topic)
                if src.initial is not None:
                    initial = np.asarray(src.initial, dtype=np.float64).reshape(-1)
                    self.held[i] = self._scaled(i, src, np.resize(initial, len(src.dims))
                                                if initial.size == 1 else initial, "initial")
                wanted.add(src.topic)
        else:
            self._require(m.policy_step, "policy_step")
            wanted.add(m.policy_step)
        if m.state is not None:
            info = self.bag.topics.get(m.state.topic)
            if not (self.options.state_dim and info is not None and info.count == 0):
                self._require(m.state.topic, "state")  # (recorded but silent: no_state)
            wanted.add(m.state.topic)
        if m.instruction_topic and m.instruction_topic in self.bag.topics:
            wanted.add(m.instruction_topic)
        self._stream(wanted)
        return self._finish()

    # -- streaming ----------------------------------------------------------------------------

    def _stream(self, wanted: set[str]) -> None:
        m = self.m
        period = int(1e9 / m.rate) if (m.actions and not m.step and m.rate > 0) else 0
        window = int(m.step_window * 1e9) if m.step_window is not None else None
        next_tick: int | None = None
        last_t = 0
        for topic, msgtype, t, data in self.bag.messages(wanted):
            last_t = t
            if period and next_tick is not None:
                while next_tick <= t:
                    self._open_decision(next_tick)
                    next_tick += period
            if self.pending is not None and (
                    t > self.pending.t + window if window is not None else topic == m.image):
                self._close_decision()
            if topic == m.image:
                self.images.append((t, msgtype, data))
                self._prune(t)
            elif topic == m.policy_step and not m.actions:
                self._policy_step(t, self.bag.deserialize(data, msgtype))
            elif m.state is not None and topic == m.state.topic:
                self._read_state(self.bag.deserialize(data, msgtype))
            elif topic == m.instruction_topic:
                if not self.instruction:
                    self.instruction = str(self.bag.deserialize(data, msgtype).data)
            else:
                msg = self.bag.deserialize(data, msgtype)
                for i, src in enumerate(m.actions):  # several entries may read one message
                    if src.topic == topic:
                        self.held[i] = self._scaled(i, src, read_fields(
                            msg, src.fields or [], f"{self.where}: topic {topic}"), "fields")
                if topic == m.step:
                    self._open_decision(t)
            if period and next_tick is None and self._ready():
                next_tick = t
        if period and next_tick is not None and next_tick <= last_t:
            self._open_decision(next_tick)
        self._close_decision()

    def _prune(self, now: int) -> None:
        horizon = now - int(self.m.max_image_age * 1e9) - 1
        while len(self.images) > 1 and self.images[1][0] <= horizon:
            self.images.popleft()

    def _ready(self) -> bool:
        return bool(self.images) and len(self.held) == len(self.m.actions)

    def _scaled(self, i: int, src: ActionSource, values: np.ndarray, what: str) -> np.ndarray:
        """``values`` (from the entry's ``fields``, or its ``initial``) times its ``scale``;
        a size that does not fit ``dims`` is an error naming the entry, topic and sizes."""
        scale = np.asarray(src.scale, dtype=np.float64).reshape(-1)
        for name, size in ((what, values.size), ("scale", scale.size)):
            if size != len(src.dims) and (name != "scale" or size != 1):
                raise EpisodeError(f"{self.where}: mapping actions[{i}] (topic {src.topic}): "
                                   f"its {name} give{'s' if name == 'fields' else ''} {size} "
                                   f"value(s) for its {len(src.dims)} dims {src.dims}; fix "
                                   f"'{name}' or 'dims' of that entry")
        return values * scale

    def _read_state(self, msg: Any) -> None:
        if self.state_fields is None:
            msgtype = getattr(msg, "__msgtype__", "")
            self.state_fields = self.m.state.fields or default_fields(msgtype, self.m.state.topic)
        self.state = read_fields(msg, self.state_fields,
                                 f"{self.where}: state topic {self.m.state.topic}")
        if stamp := header_stamp(msg):
            self.stamped_states.append((stamp, self.state))

    def _policy_step(self, t: int, msg: Any) -> None:
        names = list(msg.dimension_names)
        if names and names != self.tokenizer.names:
            raise EpisodeError(f"{self.where}: policy steps have dimensions {names} but the "
                               f"dataset's tokenizer has {self.tokenizer.names}; convert with the "
                               f"policy's tokenizer (--tokenizer)")
        episode = self.meta.get("episode_id")
        if msg.episode_id and episode and msg.episode_id != episode:
            self.dropped["other_episode"] += 1
            return
        bins = np.asarray(msg.action_bins, dtype=np.int64)
        d = self.tokenizer.num_dims
        if bins.shape != (d,) or (bins < 0).any() or \
                (bins >= np.asarray(self.tokenizer.bins)).any():
            self.dropped["bad_bins"] += 1
            return
        action = np.asarray(msg.action, dtype=np.float64)
        if action.shape != (d,):
            action = self.tokenizer.decode(bins)
        self.policy_instruction = self.policy_instruction or str(msg.instruction)
        self.model_id = self.model_id or str(msg.model_id)
        self._add_step(t, action, bins, self._image_at(t), self.state)

    def _image_at(self, t: int) -> tuple[int, str, bytes] | None:
        return next((entry for entry in reversed(self.images) if entry[0] <= t), None)

    # A step is one decision: the commands answering one frame, in any order (design.md 4.4).
    def _open_decision(self, t: int) -> None:
        self._close_decision()
        self.pending = _Decision(t, self._image_at(t), self.state)

    def _close_decision(self) -> None:
        d, self.pending = self.pending, None
        if d is None:
            return
        if len(self.held) < len(self.m.actions):
            self.dropped["no_command"] += 1
            return
        tok = self.tokenizer
        action = np.zeros(tok.num_dims, dtype=np.float64)
        for i, src in enumerate(self.m.actions):
            for name, value in zip(src.dims, self.held[i], strict=True):
                action[tok.names.index(name)] = value
        for name, value in self.m.constants.items():
            if name in tok.names:
                action[tok.names.index(name)] = value
        self._add_step(d.t, action, None, d.image, self._state_of_frame(d))

    def _state_of_frame(self, d: _Decision) -> np.ndarray | None:
        """The state stamped last at or before the frame's stamp, else the state at the step."""
        frame = cdr_header_stamp(d.image[2]) if d.image is not None else 0
        for stamp, state in reversed(self.stamped_states) if frame else ():
            if stamp <= frame:
                return state if frame - stamp <= self.m.max_image_age * 1e9 else d.state
        return d.state

    def _add_step(self, t: int, action: np.ndarray, bins: np.ndarray | None,
                  image: tuple[int, str, bytes] | None, state: np.ndarray | None) -> None:
        if image is None:
            self.dropped["no_image"] += 1
            return
        age = (t - image[0]) / 1e9
        if age > self.m.max_image_age:
            self.dropped["stale_image"] += 1
            return
        if self.m.state is not None and state is None:
            self.dropped["no_state"] += 1
            return
        frame = self._frame(image)
        if frame is None:
            self.dropped["bad_image"] += 1
            return
        self.frames.append(frame)
        self.states.append(state if state is not None else np.zeros(0))
        self.actions.append(action)
        self.bins.append(bins)
        self.times.append(t)
        self.ages.append(age)

    def _frame(self, image: tuple[int, str, bytes]) -> np.ndarray | None:
        t, msgtype, data = image
        if self.decoded is not None and self.decoded[0] == t:
            return self.decoded[1]
        try:
            rgb = to_rgb8(self.bag.deserialize(data, msgtype), self.m.image)
        except (ImageConversionError, BagError) as exc:
            self.image_error = self.image_error or str(exc)
            return None
        rgb = resize_frame(rgb, self.options.image_size)
        self.decoded = (t, rgb)
        return rgb

    # -- result -------------------------------------------------------------------------------

    def _finish(self) -> ConvertedEpisode | NoSteps:
        n = len(self.frames)
        dropped = dict(self.dropped)
        if n == 0 and set(dropped) == {"no_state"}:  # e.g. ended before the first state
            return NoSteps(self.key, str(self.bag.path), dropped)
        if n == 0:
            why = f"; first image error: {self.image_error}" if self.image_error else ""
            raise EpisodeError(f"{self.where}: no usable control step (dropped: "
                               f"{dropped or 'none'}; max_image_age {self.m.max_image_age:g} s)"
                               f"{why}")
        if self.image_error:
            self.warnings.append(f"{dropped.get('bad_image', 0)} step(s) dropped for bad images: "
                                 f"{self.image_error}")
        tok = self.tokenizer
        actions = np.stack(self.actions)
        if self.m.actions:  # commands: terminate at the last step, bins by the tokenizer
            if tok.terminate is not None and tok.terminate not in self.m.constants and \
                    not any(tok.terminate in s.dims for s in self.m.actions):
                actions[:, tok.terminate_index] = tok.low[tok.terminate_index]
                actions[-1, tok.terminate_index] = tok.high[tok.terminate_index]
            bins, clipped = tok.encode_with_report(actions)
            if clipped.any():
                counts = {tok.names[i]: int(c) for i, c in enumerate(clipped.sum(0)) if c}
                self.warnings.append(f"action values outside the tokenizer bounds were clipped "
                                     f"({counts}); check the mapping's 'scale'")
        else:
            bins = np.stack(self.bins)
        meta, name = self.meta, self.bag.path.name
        if name in self.m.labels:  # the mapping's per-bag label wins
            outcome = self.m.labels[name]
            reward = reward_for(outcome)
        elif meta.get("episode_id"):  # a qt_ros episode: its (latest) label
            outcome = meta.get("outcome") or "unknown"
            reward = reward_for(outcome, meta.get("reward"))
        else:
            outcome = self.m.outcome
            reward = reward_for(outcome)
        if outcome == "unknown":
            self.warnings.append("episode is not labelled (outcome unknown): reward 0")
        rewards = np.zeros(n, dtype=np.float32)
        rewards[-1] = reward
        done = np.zeros(n, dtype=np.uint8)
        done[-1] = 1
        instruction = meta.get("instruction") or self.instruction or \
            self.policy_instruction or self.m.instructions.get(name) or self.m.instruction
        if not instruction:
            raise EpisodeError(f"{self.where}: no instruction (no episode metadata, no message "
                               f"on the instruction topic, no 'instruction' in the mapping)")
        states = np.stack(self.states).astype(np.float32)
        if states.ndim == 1:
            states = states.reshape(n, 0)
        if not self.bag.complete:
            self.warnings.append("; ".join(self.bag.problems))
        record = {
            "key": self.key,
            "episode_id": meta.get("episode_id") or self.bag.path.name,
            "bag": str(self.bag.path.resolve()),
            "instruction": instruction,
            "outcome": outcome,
            "reward": float(reward),
            "source": meta.get("source") or self.m.source,
            "robot": meta.get("robot", ""),
            "checkpoint": meta.get("checkpoint") or self.model_id,
            "start_time": meta.get("start_time", ""),
            "incomplete": not self.bag.complete,
            "length": n,
            "dropped": dropped,
        }
        arrays = {
            "frames": np.stack(self.frames),
            "state": states,
            "action": actions.astype(np.float32),
            "action_bins": bins.astype(np.int16),
            "reward": rewards,
            "done": done,
            "mc_return": mc_returns(rewards, self.options.gamma),
            "timestamp": np.asarray(self.times, dtype=np.int64),
            "image_age": np.asarray(self.ages, dtype=np.float32),
        }
        return ConvertedEpisode(self.key, record, arrays, self.warnings)
