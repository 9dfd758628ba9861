"""Publishing to the Hugging Face Hub: the upload and the model card that tells a reader what the model is.

Owns: :mod:`.push` (``push_folder`` / ``push_to_hub``: validate, stage, upload), :mod:`.model_card` (the
card rendered from ``templates/ternary_embedding.md``) and :mod:`.stock_push` (the same card for the
libraries' own ``push_to_hub`` / ``save`` of a ternary model, once :func:`.stock_push.install` ran).
Imports: ``huggingface_hub``, ``transformers`` (to hook its push), :mod:`ternary_hf.utils` and
:mod:`ternary_hf.errors`.
"""

from .model_card import render_model_card, write_model_card
from .push import HubPushError, PushResult, push_folder, push_to_hub

__all__ = ["HubPushError", "PushResult", "push_folder", "push_to_hub", "render_model_card", "write_model_card"]
