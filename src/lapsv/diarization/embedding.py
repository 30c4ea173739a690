"""Window embeddings of a recording streamed block by block (bounded memory).

Two ways to embed the windows of a :class:`~lapsv.model.SpeakerModel` (any frontend):

- ``window``: every window is cut out and embedded alone, in length-sorted batches
  through the :class:`~lapsv.speaker.Speaker` facade (any lapsv model: built-in GE2E,
  trained model directories, exported ONNX / TorchScript files);
- ``shared``: the frontend runs once per block (for Whisper: one encoder pass per 30 s),
  and each window inside the block is pooled by the backend from that block's hidden
  states; a window that straddles two blocks is embedded alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch

from lapsv.inference import embed_waveforms
from lapsv.model import SpeakerModel
from lapsv.speaker import Speaker

EMBEDDING_PASSES = ("window", "shared")


def cut_windows(
    blocks: Iterable[np.ndarray], spans: np.ndarray
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield (block number, window index, samples) of (W, 2) sample spans sorted by start,
    from consecutive blocks; the block number is the one the window ends in. Memory holds
    one block plus the start of the windows not yet complete.

    >>> spans = np.array([[0, 3], [2, 6], [5, 9]])
    >>> [(b, i, w.tolist()) for b, i, w in cut_windows([np.arange(4), np.arange(4, 9)], spans)]
    [(0, 0, [0.0, 1.0, 2.0]), (1, 1, [2.0, 3.0, 4.0, 5.0]), (1, 2, [5.0, 6.0, 7.0, 8.0])]
    """
    buffer = np.zeros(0, np.float32)
    buffer_start, following = 0, 0
    number = -1
    for number, block in enumerate(blocks):
        buffer = np.concatenate([buffer, np.asarray(block, np.float32)])
        end = buffer_start + len(buffer)
        while following < len(spans) and spans[following, 1] <= end:
            a, b = spans[following]
            yield number, following, buffer[a - buffer_start : b - buffer_start].copy()
            following += 1
        keep_from = spans[following, 0] if following < len(spans) else end
        cut = max(0, min(int(keep_from), end) - buffer_start)
        buffer, buffer_start = buffer[cut:], buffer_start + cut
    for index in range(following, len(spans)):  # ends rounded past the audio: what is there
        a, b = spans[index]
        yield max(number, 0), index, buffer[max(a - buffer_start, 0) : b - buffer_start].copy()


def window_embeddings(
    model: Speaker, blocks: Iterable[np.ndarray], spans: np.ndarray, *, batch_size: int = 32
) -> np.ndarray:
    """(W, E) raw embedding of each (W, 2) sample span, each window embedded alone."""
    out = np.zeros((len(spans), model.embed_dim), np.float32)
    pending: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        _embed_alone(model, pending, out, batch_size)
        pending.clear()

    for _, index, samples in cut_windows(blocks, spans):
        pending.append((index, samples))
        if len(pending) >= 4 * batch_size:
            flush()
    if pending:
        flush()
    return out


def shared_pass_embeddings(
    model: SpeakerModel,
    blocks: Iterable[np.ndarray],
    spans: np.ndarray,
    *,
    batch_size: int = 32,
) -> np.ndarray:
    """(W, E) raw embeddings, each window pooled from its block's hidden states (one
    frontend pass per block); windows across a block edge are embedded alone."""
    out = np.zeros((len(spans), model.embed_dim), np.float32)
    inside: list[int] = []  # windows of the current block, pooled when the block is done
    straddling: list[tuple[int, np.ndarray]] = []
    current: list[tuple[int, np.ndarray]] = []  # [(start sample, samples)] of the block

    def pool() -> None:
        if inside:
            start, block = current[0]
            out[inside] = _pool_block(model, block, spans[inside] - start, batch_size)
            inside.clear()

    def tracked() -> Iterator[np.ndarray]:
        start = 0
        for block in blocks:
            current[:] = [(start, block)]
            yield block
            pool()  # cut_windows asks for the next block once this one's windows are out
            start += len(block)

    for _, index, samples in cut_windows(tracked(), spans):
        if (
            current
            and spans[index, 0] >= current[0][0]
            and spans[index, 1] <= current[0][0] + len(current[0][1])
        ):
            inside.append(index)
        else:
            straddling.append((index, samples))
    if straddling:
        _embed_alone(model, straddling, out, batch_size)
    return out


def _embed_alone(
    model: Speaker | SpeakerModel,
    windows: list[tuple[int, np.ndarray]],
    out: np.ndarray,
    batch_size: int,
) -> None:
    """Write the embedding of each (row, samples) window, each alone, into ``out[row]``."""
    out[[i for i, _ in windows]] = embed_waveforms(
        model,
        [w for _, w in windows],
        batch_size=batch_size,
        device=model.device,
        max_seconds=None,
    )


@torch.no_grad()
def _pool_block(
    model: SpeakerModel, block: np.ndarray, spans: np.ndarray, batch_size: int
) -> np.ndarray:
    """(n, E) embeddings of (n, 2) sample spans of one block from one frontend pass."""
    with model.evaluating():
        wave = torch.as_tensor(block, dtype=torch.float32, device=model.device)[None]
        length = torch.tensor([len(block)], device=model.device)
        hidden, frames = model.frontend(wave, length)  # (1, L, T, D), (1,)
        return pool_windows(model, hidden, int(frames[0]), spans, batch_size=batch_size)


@torch.no_grad()
def pool_windows(
    model: SpeakerModel,
    hidden: torch.Tensor,
    frames: int,
    spans: np.ndarray,
    *,
    batch_size: int = 32,
) -> np.ndarray:
    """(n, E) embeddings of (n, 2) sample spans, pooled by the backend from the (1, L, T, D)
    hidden states of one frontend pass whose first sample is span 0 (``frames`` valid)."""
    device = hidden.device
    with model.evaluating():
        edges = model.frontend.frame_lengths(torch.as_tensor(spans.reshape(-1), device=device))
        edges = edges.reshape(-1, 2).clamp(max=frames)
        edges[:, 1] = torch.maximum(edges[:, 1], edges[:, 0] + 1)
        out = []
        for first in range(0, len(spans), batch_size):
            part = edges[first : first + batch_size]
            lengths = part[:, 1] - part[:, 0]
            batch = hidden.new_zeros(
                len(part), hidden.shape[1], int(lengths.max()), hidden.shape[3]
            )
            for row, (f0, f1) in enumerate(part.tolist()):
                batch[row, :, : f1 - f0] = hidden[0, :, f0:f1]
            out.append(model.backend(batch, lengths).float().cpu().numpy())
    return np.concatenate(out)
