"""Image embeddings: a ternary ViT, distilled from a float ViT and evaluated on real images.

Owns: :mod:`.distill` (image data from packages, the ViT teacher, image distillation, linear probe and
P@10 evaluation).
Imports: :mod:`ternary_hf.train`, :mod:`ternary_hf.integrations` and :mod:`ternary_hf.utils`.
"""

from .distill import (
    distill_vision,
    embed_images,
    evaluate_vision,
    load_image_dataset,
    model_bytes,
    time_embedding,
    to_pixel_values,
    train_vit_teacher,
)

__all__ = [
    "distill_vision",
    "embed_images",
    "evaluate_vision",
    "load_image_dataset",
    "model_bytes",
    "time_embedding",
    "to_pixel_values",
    "train_vit_teacher",
]
