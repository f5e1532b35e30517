"""The dihedral augmentation of a training batch, on the device.

The data streams draw each crop's transform on the host (`drn_jax.data.crops.crop_window`)
but ship the crop untransformed, with the transform beside it: flipping and rotating is
pure data movement, nearly free on an accelerator and a strided copy per crop on the
host (docs/performance.md measures what it cost the JPEG stream).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Transform t = np.rot90(crop, t % 4) (counter-clockwise), then a left-right flip when
# t >= 4, written as: swap H and W when t is odd, then reverse rows, then reverse columns.
_REVERSE_ROWS = (False, True, True, False, False, True, True, False)
_REVERSE_COLUMNS = (False, False, True, True, True, True, False, False)


def dihedral(images: jax.Array, transforms: jax.Array) -> jax.Array:
    """Each image of a batch under its own transform of the dihedral group.

    Transform ``t`` in [0, 8) is ``np.rot90(image, t % 4)`` (quarter turns
    counter-clockwise on the H, W axes), then a left-right flip when ``t >= 4``: the same
    as `drn_jax.data.crops.dihedral` on the host. Jittable; every image costs the same
    (three selects), so a batch sharded along its first axis needs no communication.

    Args:
      images: (B, S, S, C), any dtype; square, since quarter turns swap H and W.
      transforms: integer (B,), each in [0, 8).

    Returns:
      (B, S, S, C), of ``images``' dtype.
    """
    if images.ndim != 4 or images.shape[1] != images.shape[2]:
        raise ValueError(f"dihedral: images must be square, (B, S, S, C), got {images.shape}")
    if transforms.shape != images.shape[:1]:
        raise ValueError(f"dihedral: transforms must be ({images.shape[0]},), got {transforms.shape}")
    t = transforms.astype(jnp.int32).reshape(-1, 1, 1, 1)
    x = jnp.where(t % 2 == 1, jnp.swapaxes(images, 1, 2), images)
    x = jnp.where(jnp.asarray(_REVERSE_ROWS)[t], x[:, ::-1], x)
    return jnp.where(jnp.asarray(_REVERSE_COLUMNS)[t], x[:, :, ::-1], x)
