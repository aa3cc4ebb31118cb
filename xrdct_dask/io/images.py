"""Calibration images (dark, flat) given as several files or a stack, read with fabio.

A dark current measured as a series has zingers (cosmic rays) in some frames: the pixel-wise
median keeps them out.  A flat field series is averaged (its noise falls as 1/sqrt(n)).  Any
fabio-readable image (EDF, TIFF, CBF, ...; multi-frame EDF and TIFF stacks frame by frame) or a
``.npy`` of one (2D) or several (3D) images."""

from __future__ import annotations

from pathlib import Path

import fabio
import numpy as np

HOW = {"dark": "median", "flat": "mean"}


def image_frames(path) -> list[np.ndarray]:
    """Every frame of one file: ``[(ny, nx), ...]``."""
    path = Path(path)
    if path.suffix == ".npy":
        a = np.load(path, allow_pickle=False)
        return [a] if a.ndim == 2 else list(a)
    with fabio.open(str(path)) as img:
        n = int(getattr(img, "nframes", 1) or 1)
        if n == 1:
            return [np.asarray(img.data)]
        return [np.asarray(img.getframe(k).data) for k in range(n)]


def load_stack(paths) -> np.ndarray:
    """The frames of one file or several, ``(n, ny, nx)`` float64.  ValueError (one line) where
    they differ in shape."""
    names = [paths] if isinstance(paths, (str, Path)) else list(paths)
    frames = [(name, f) for name in names for f in image_frames(name)]
    shapes = {f.shape for _, f in frames}
    if len(shapes) > 1:
        first = frames[0]
        other = next((n, f) for n, f in frames if f.shape != first[1].shape)
        raise ValueError(f"{other[0]} is {other[1].shape[0]} x {other[1].shape[1]} but {first[0]} is "
                         f"{first[1].shape[0]} x {first[1].shape[1]}")
    return np.stack([f.astype(np.float64) for _, f in frames])


def combined_image(paths, how: str) -> np.ndarray:
    """One image from one file or several (or a stack): their pixel-wise ``median`` (darks: a
    zinger in one frame is not in the median of three or more) or ``mean`` (flats)."""
    stack = load_stack(paths)
    if stack.shape[0] == 1:
        return stack[0]
    return np.median(stack, axis=0) if how == "median" else stack.mean(axis=0)
