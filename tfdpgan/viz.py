"""Pictures of image+label pairs (numpy only), shared by training, sampling and the audit."""
import numpy as np

__all__ = ["overlay_grid"]


def overlay_grid(images, labels, columns: int = 8) -> np.ndarray:
    """RGB uint8 grid; each cell is the image beside the image with the label in red.

    ``images`` [n, P, P] in [-1, 1]; ``labels`` [n, P, P], non-zero = vessel."""
    gray = np.clip((np.asarray(images) + 1.0) * 127.5, 0, 255).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    over = rgb.copy()
    labels = np.asarray(labels)
    over[labels > 0] = (0.4 * over[labels > 0] + [153, 0, 0]).astype(np.uint8)
    pairs = np.concatenate([rgb, over], axis=2)                     # [n, P, 2P, 3]
    n, h, w, _ = pairs.shape
    rows = -(-n // columns)
    grid = np.zeros((rows * (h + 2), columns * (w + 2), 3), np.uint8)
    for i, cell in enumerate(pairs):
        r, c = divmod(i, columns)
        grid[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = cell
    return grid
