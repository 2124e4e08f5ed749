"""Regenerate the shipped examples (needs scikit-image, installed with the test extra).

    python examples/make_examples.py

- ``shepp-logan.png``: scikit-image's Shepp-Logan phantom (400 x 400) resized to
  128 x 128 with anti-aliasing, 16-bit grey: the reference image.
- ``shepp-logan-25.npz``: its parallel-beam sinogram at 25 angles over [0, 180)
  (``sinogram`` 25 x 128, ``angles`` in degrees) plus Gaussian noise of std 1 % of the
  sinogram's maximum (seed 0). The noise std is printed: pass it as ``--noise``.
"""

from pathlib import Path

import numpy as np
import torch
from skimage.data import shepp_logan_phantom
from skimage.transform import resize

from resample_cli.fileio.ct import equal_angles
from resample_cli.fileio.images import write_image
from resample_cli.operators import ParallelBeamCT

HERE = Path(__file__).parent
ANGLES = 25


def main() -> None:
    phantom = np.clip(resize(shepp_logan_phantom(), (128, 128), anti_aliasing=True), 0, 1)
    write_image(HERE / "shepp-logan.png", phantom[None], bit_depth=16)
    x = torch.from_numpy(np.round(phantom * 65535) / 65535).float()[None, None]  # as stored
    angles = equal_angles(ANGLES)
    with torch.no_grad():
        sinogram = ParallelBeamCT(list(angles), 128)(x)[0, 0]
    sigma = 0.01 * float(sinogram.max())
    noise = torch.randn(sinogram.shape, generator=torch.Generator().manual_seed(0))
    np.savez(HERE / f"shepp-logan-{ANGLES}.npz", sinogram=(sinogram + sigma * noise).numpy(), angles=angles)
    print(f"wrote {HERE}/shepp-logan.png and shepp-logan-{ANGLES}.npz; noise std {sigma:.4f}")


if __name__ == "__main__":
    main()
