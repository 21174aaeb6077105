"""Pretrained weights without the network: a real state dict in torchvision's layout, written where torch looks.

torchvision.models.resnet18()'s own (seeded, untrained) state dict, saved with torch.save under the
name torchvision's weights URL ends with (`resnet18-f37072fd.pth`) in `$TORCH_HOME/hub/checkpoints`:
the file a user's download leaves there, read through the same code path. Its content differs from
torchvision's published file, so the hash prefix in its name does not match it; torch checks that
prefix only while downloading (torch.hub.load_state_dict_from_url), never for a file already there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

RESNET18_URL_FILE = "resnet18-f37072fd.pth"  # the last part of ResNet18_Weights.IMAGENET1K_V1.url


def write_resnet18_weights(path: Path, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """A resnet18 state dict (1000 classes, as torchvision's) saved at `path`; returns it."""
    import torchvision

    torch.manual_seed(seed)
    state = torchvision.models.resnet18().state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def photo_project(folder: Path, name: str, *, size: int = 16, per_class: int = 12, model: str = "") -> Path:
    """An image folder project (3 classes of RGB PNGs, one colour per class plus noise) and its project.yaml."""
    rng = np.random.default_rng(0)
    colours = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}
    for label, colour in colours.items():
        (folder / "photos" / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.integers(-40, 40, (size, size, 3))
            pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / "photos" / label / f"{i}.png")
    (folder / "project.yaml").write_text(
        f"name: {name}\ntask: {{type: image_classification}}\ndata: {{source: {{kind: image_folder, root: photos}}}}\n"
        f"image: {{size: {size}, channels: 3}}\nsplit: {{val: 0.2, test: 0.2}}\n{model}"
    )
    return folder
