"""Image embeddings: a ternary ViT, distilled from a float ViT and evaluated on real images.

Why this exists: the founding paper (arXiv 2411.15438) ternarizes vision embedding models too, but no
pretrained image model ships in any package this project can install, so the float teacher is trained
here and the rest is the text machinery applied to pixels.

Owns: :mod:`.data` (image data sets from packages; images -> ``pixel_values``), :mod:`.teacher` (the
ViT teacher, trained with ``transformers.Trainer``), :mod:`.embed` (image embeddings from any ViT-like
model), :mod:`.distill` (image distillation on the one training loop of :mod:`ternary_hf.train`) and
:mod:`.evaluate` (linear probe, retrieval P@k, size and timing).
Imports: :mod:`ternary_hf.train`, :mod:`ternary_hf.integrations`, :mod:`ternary_hf.errors` and
:mod:`ternary_hf.utils`.
"""

from .data import DATASETS, FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, ImageSplit, load_image_dataset, to_pixel_values
from .distill import VisionDistillResult, distill_vision, finalize_vision
from .embed import embed_images
from .evaluate import evaluate_vision, model_bytes, time_embedding
from .teacher import TeacherResult, train_vit_teacher

__all__ = [
    "DATASETS",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "ImageSplit",
    "TeacherResult",
    "VisionDistillResult",
    "distill_vision",
    "embed_images",
    "evaluate_vision",
    "finalize_vision",
    "load_image_dataset",
    "model_bytes",
    "time_embedding",
    "to_pixel_values",
    "train_vit_teacher",
]
