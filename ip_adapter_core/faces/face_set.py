"""The faces found in a batch of pictures, as nodes pass them (socket IPA_FACES): one chosen face per
picture (or every face, for the portrait adapters), with what FaceID needs of each."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .align import norm_crop


@dataclass(frozen=True, eq=False)
class FaceSet:
    """``embeddings`` [n, 512] as the recogniser gives them (not normalised); ``landmarks`` [n, 5, 2] and
    ``boxes`` [n, 4] in pixels of picture ``image_index[i]`` of ``images`` [B, H, W, 3] (0..1)."""

    embeddings: torch.Tensor
    landmarks: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    image_index: tuple[int, ...]
    images: torch.Tensor
    pack: str = ""

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def normed(self) -> torch.Tensor:
        """L2-normalised embeddings (insightface's ``normed_embedding``), what most FaceID files read."""
        return self.embeddings / self.embeddings.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def embeddings_for(self, normed: bool) -> torch.Tensor:
        return self.normed() if normed else self.embeddings

    def crops(self, size: int) -> torch.Tensor:
        """Aligned crops [n, size, size, 3] (0..1) on the ArcFace template scaled to ``size``: the face
        pictures FaceID Plus encodes with CLIP (224 in the reference), rounded to 8 bits as the reference's are."""
        out = []
        for i in range(len(self)):
            picture = self.images[self.image_index[i], ..., :3].float() * 255
            out.append(norm_crop(picture.round(), self.landmarks[i], size).round().clamp(0, 255) / 255)
        return torch.stack(out) if out else torch.zeros(0, size, size, 3)

    def box_crops(self, size: int) -> torch.Tensor:
        """Square crops [n, size, size, 3] (0..1) around each face's box, resized to ``size``: Kolors' face pictures
        (its pipeline squares the box about its centre, crops with PIL, black beyond the picture, and resizes with
        PIL's default bicubic filter; done with PIL here too, so the pixels match)."""
        from PIL import Image

        out = []
        for i in range(len(self)):
            picture = (self.images[self.image_index[i], ..., :3].float() * 255).round().clamp(0, 255)
            left, top, right, bottom = (float(v) for v in self.boxes[i][:4])
            cx, cy, r = (left + right) / 2, (top + bottom) / 2, max(right - left, bottom - top) / 2
            img = Image.fromarray(picture.to(torch.uint8).cpu().numpy())
            crop = img.crop((cx - r, cy - r, cx + r, cy + r)).resize((size, size), Image.BICUBIC)
            out.append(torch.from_numpy(np.asarray(crop, dtype=np.float32).copy()) / 255)
        return torch.stack(out) if out else torch.zeros(0, size, size, 3)

    def select(self, rows) -> "FaceSet":
        rows = list(rows)
        return FaceSet(self.embeddings[rows], self.landmarks[rows], self.boxes[rows], self.scores[rows],
                       tuple(self.image_index[r] for r in rows), self.images, self.pack)
