"""TensorBoard event files, written with the `tensorboard` package alone (no TensorFlow).

Training logs scalars and the validation strip here. `flax.metrics.tensorboard` would import
TensorFlow, which a JAX install on a GPU or TPU machine often lacks; the event-file writer and
the protocol buffers that ship with `tensorboard` are all this needs.
"""

from __future__ import annotations

import io
import os
import time

import numpy as np
from PIL import Image
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

__all__ = ["SummaryWriter"]


class SummaryWriter:
    """Scalars and images into ``<log_dir>/events.out.tfevents.*``, like flax's writer."""

    def __init__(self, log_dir: str | os.PathLike):
        self._writer = EventFileWriter(str(log_dir))

    def _add(self, step: int, value: summary_pb2.Summary.Value) -> None:
        event = event_pb2.Event(wall_time=time.time(), step=int(step),
                                summary=summary_pb2.Summary(value=[value]))
        self._writer.add_event(event)

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._add(step, summary_pb2.Summary.Value(tag=tag, simple_value=float(value)))

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """A uint8 ``(H, W, 3)`` or ``(H, W)`` image, stored as PNG."""
        pixels = np.asarray(image)
        if pixels.dtype != np.uint8:
            pixels = np.clip(np.round(pixels * 255.0), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels.squeeze(-1) if pixels.ndim == 3 and pixels.shape[-1] == 1 else pixels).save(
            buffer, format="PNG")
        encoded = summary_pb2.Summary.Image(height=pixels.shape[0], width=pixels.shape[1],
                                            colorspace=1 if pixels.ndim == 2 or pixels.shape[-1] == 1 else 3,
                                            encoded_image_string=buffer.getvalue())
        self._add(step, summary_pb2.Summary.Value(tag=tag, image=encoded))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
