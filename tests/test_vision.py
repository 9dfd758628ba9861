"""Image embeddings on scikit-learn's real 8x8 digits: ViT teacher, ternary ViT, distillation, evaluation."""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import AutoModel

from ternary_hf import TernaryConfig, TernaryLinear
from ternary_hf.train.student import FakeTernaryLinear
from ternary_hf.vision import data as vision_data
from ternary_hf.vision import (
    distill_vision,
    embed_images,
    evaluate_vision,
    load_image_dataset,
    model_bytes,
    train_vit_teacher,
)

ROOT = Path(__file__).resolve().parents[1]
SMALL_VIT = dict(hidden_size=48, num_layers=2, num_heads=4, epochs=12, batch_size=64, show_progress_bar=False)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: these models are tiny, and on a shared 2-core CI box 2 threads mostly wait."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    return load_image_dataset("digits", "train"), load_image_dataset("digits", "test")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("vision") / "teacher"
    result = train_vit_teacher("digits", out, **SMALL_VIT)
    return result


def test_digits_split_is_fixed_stratified_and_disjoint(digits):
    train, test = digits
    assert train.images.dtype == np.uint8 and train.images.shape[1:] == (8, 8)
    assert len(train.labels) + len(test.labels) == 1797
    assert set(np.unique(test.labels)) == set(range(10))
    again = load_image_dataset("digits", "test")
    assert np.array_equal(again.images, test.images) and np.array_equal(again.labels, test.labels)
    train_rows = {img.tobytes() + bytes([lab]) for img, lab in zip(train.images, train.labels, strict=True)}
    assert sum(img.tobytes() + bytes([lab]) in train_rows for img, lab in zip(test.images, test.labels,
                                                                              strict=True)) < 5
    sub = load_image_dataset("digits", "train", limit=100, seed=1)
    assert len(sub.labels) == 100 and not np.array_equal(sub.images, load_image_dataset(
        "digits", "train", limit=100, seed=2).images)


def test_teacher_training_beats_chance_and_saves_a_loadable_backbone(teacher):
    assert teacher.test_accuracy > 0.5, teacher  # chance is 0.1
    model, info = AutoModel.from_pretrained(teacher.output_dir, output_loading_info=True)
    assert type(model).__name__ == "ViTModel"
    assert not info["missing_keys"] and not info["unexpected_keys"]
    saved = json.loads((Path(teacher.output_dir) / "teacher_training.json").read_text())
    assert saved["test_accuracy"] == teacher.test_accuracy


def test_embeddings_are_normalised_and_accept_every_image_form(teacher, digits):
    images = digits[1].images[:20]
    model = AutoModel.from_pretrained(teacher.output_dir).eval()
    ref = embed_images(model, images)
    assert ref.dtype == np.float32 and ref.shape == (20, 48) and ref.flags["C_CONTIGUOUS"]
    assert np.allclose(np.linalg.norm(ref, axis=1), 1, atol=1e-5)
    as_float = images.astype(np.float32) / 255
    pixel_values = (torch.from_numpy(as_float)[:, None] - 0.5) / 0.5
    for same in (as_float, images[..., None], np.repeat(images[..., None], 3, axis=-1), pixel_values,
                 torch.from_numpy(images)):
        assert np.allclose(embed_images(model, same), ref, atol=1e-5)
    assert np.allclose(embed_images(teacher.output_dir, images), ref, atol=1e-6)  # a folder works too
    assert not np.allclose(embed_images(model, images, pooling="mean"), ref)
    with pytest.raises(ValueError, match="'cls' or 'mean'"):
        embed_images(model, images, pooling="max")
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        embed_images(model, images[0])


def test_any_vit_folder_embeds_images_of_another_size_and_channel_count(tiny_model_dirs, digits):
    """A user's own (pretrained) ViT folder: images are resized and channel-matched to its config."""
    folder = tiny_model_dirs["vit"]  # 16x16, 1 channel, random weights
    images = digits[1].images[:10]  # 8x8 gray
    rgb = np.repeat(images[..., None], 3, axis=-1)
    fp32 = embed_images(folder, rgb, pooling="mean")
    assert fp32.shape == (10, 32) and np.allclose(embed_images(folder, images, pooling="mean"), fp32, atol=1e-6)
    ternary = AutoModel.from_pretrained(folder, quantization_config=TernaryConfig()).eval()
    got = embed_images(ternary, rgb, pooling="mean")
    assert got.shape == fp32.shape and np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)


def test_quantized_vit_saves_and_reloads_bit_identically(teacher, digits, tmp_path):
    images = digits[1].images[:64]
    quantized = AutoModel.from_pretrained(teacher.output_dir, quantization_config=TernaryConfig()).eval()
    assert sum(isinstance(m, TernaryLinear) for m in quantized.modules()) == 2 * 6 + 1  # 6 per layer + pooler
    before = embed_images(quantized, images)
    quantized.save_pretrained(tmp_path / "ternary")
    with safe_open(str(tmp_path / "ternary" / "model.safetensors"), "pt") as f:
        assert any(f.get_slice(k).get_dtype() == "U8" for k in f.keys())
    reloaded = AutoModel.from_pretrained(tmp_path / "ternary").eval()
    assert np.array_equal(embed_images(reloaded, images), before)
    for (n1, t1), (n2, t2) in zip(quantized.state_dict().items(), reloaded.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(t1, t2)
    assert model_bytes(tmp_path / "ternary") < 0.5 * model_bytes(teacher.output_dir)


@pytest.mark.parametrize("activations", ["float", "int8"])
def test_distillation_finalizes_to_the_trained_student(teacher, digits, tmp_path, activations):
    cfg = TernaryConfig(activations=activations)
    result = distill_vision(teacher.output_dir, tmp_path / "student", digits[0].images, cfg, steps=6,
                            batch_size=32, lr=1e-3, save_every=3, show_progress_bar=False)
    assert result.steps == 6 and np.isfinite(result.final_loss)
    assert any(isinstance(m, FakeTernaryLinear) for m in result.student.modules())
    packed = AutoModel.from_pretrained(tmp_path / "student").eval()
    assert any(isinstance(m, TernaryLinear) for m in packed.modules())
    assert json.loads((tmp_path / "student" / "distillation.json").read_text())["steps"] == 6
    images = digits[1].images
    got, expected = embed_images(packed, images), embed_images(result.student, images)
    row_error = np.abs(got - expected).max(axis=1)
    if activations == "float":
        assert row_error.max() < 1e-4, row_error.max()
    else:
        # The student computes (q * s_x) @ (s_w * T) in float, the packed model q @ T then scales: equal up
        # to float rounding, which very rarely moves an int8 activation across a rounding boundary in
        # the next layer. Nearly every image must match to 1e-4, and every one to a cosine of 0.999.
        assert np.mean(row_error < 1e-4) >= 0.98, np.sort(row_error)[-10:]
        assert (got * expected).sum(axis=1).min() > 0.999


def test_resumed_distillation_ends_with_the_same_weights(teacher, digits, tmp_path):
    kwargs = dict(steps=6, batch_size=32, lr=1e-3, save_every=2, show_progress_bar=False)
    images = digits[0].images[:400]
    full = distill_vision(teacher.output_dir, tmp_path / "a", images, **kwargs)
    partial = distill_vision(teacher.output_dir, tmp_path / "b", images, stop_after=3, **kwargs)
    assert partial.steps == 3 and not (tmp_path / "b").exists()
    resumed = distill_vision(teacher.output_dir, tmp_path / "b", images, **kwargs)
    assert resumed.steps == 6
    for (n1, t1), (n2, t2) in zip(full.student.state_dict().items(), resumed.student.state_dict().items(),
                                  strict=True):
        assert n1 == n2 and torch.allclose(t1, t2, atol=1e-6), n1


def test_distillation_brings_the_ternary_model_closer_to_the_teacher(teacher, digits, tmp_path):
    images = digits[1].images
    plain = AutoModel.from_pretrained(teacher.output_dir, quantization_config=TernaryConfig()).eval()
    distill_vision(teacher.output_dir, tmp_path / "s", digits[0].images, steps=40, batch_size=64, lr=1e-3,
                   show_progress_bar=False)
    reference = embed_images(teacher.output_dir, images)
    plain_cos = (embed_images(plain, images) * reference).sum(1).mean()
    distilled_cos = (embed_images(tmp_path / "s", images) * reference).sum(1).mean()
    assert distilled_cos > plain_cos, (distilled_cos, plain_cos)


def test_evaluation_metrics_are_in_range(teacher):
    report = evaluate_vision(teacher.output_dir, teacher=teacher.output_dir, dataset="digits", limit=600)
    assert report["n_train"] == 600 and report["n_test"] == 450
    assert 0.5 < report["linear_probe_accuracy"] <= 1 and 0.3 < report["p_at_10"] <= 1
    assert report["retention_linear_probe_accuracy"] == pytest.approx(1.0)
    assert report["retention_p_at_10"] == pytest.approx(1.0)
    train, test = load_image_dataset("digits", "train", limit=300), load_image_dataset("digits", "test", limit=50)
    arrays = evaluate_vision(teacher.output_dir, dataset=(train, tuple(test)), k=5)
    assert arrays["n_test"] == 50 and 0 <= arrays["p_at_5"] <= 1


def test_unknown_dataset_and_split_name_the_allowed_ones():
    with pytest.raises(ValueError, match=r"unknown image dataset 'cifar'.*'digits', 'fashion-mnist'"):
        load_image_dataset("cifar")
    with pytest.raises(ValueError, match=r"split='val'.*'train', 'test'"):
        load_image_dataset("digits", "val")


def test_missing_fashion_mnist_files_say_which_package_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(vision_data, "FASHION_MNIST_DIR", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match=r"apt-get install -y dataset-fashion-mnist"):
        load_image_dataset("fashion-mnist", "test")
    with pytest.raises(FileNotFoundError, match=r"dataset-fashion-mnist"):
        load_image_dataset("fashion-mnist", "test", data_dir=tmp_path)


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_format_is_read_from_an_explicit_folder(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8), rng.integers(0, 10, 7)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    for data in (load_image_dataset("fashion-mnist", "test", data_dir=tmp_path),
                 load_image_dataset(str(tmp_path), "test")):
        assert np.array_equal(data.images, images) and np.array_equal(data.labels, labels)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x09abc"))
    with pytest.raises(ValueError, match="truncated"):
        load_image_dataset(str(tmp_path), "test")


@pytest.mark.skipif(not os.path.isdir(vision_data.FASHION_MNIST_DIR), reason="dataset-fashion-mnist not installed")
def test_installed_fashion_mnist_loads():
    test = load_image_dataset("fashion-mnist", "test", limit=100)
    assert test.images.shape == (100, 28, 28) and test.images.dtype == np.uint8
    assert set(np.unique(load_image_dataset("fashion-mnist", "test").labels)) == set(range(10))


def test_example_script_runs_with_small_settings(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "examples" / "vision_fashion_mnist.py"), "--dataset", "digits",
           "--steps", "20", "--epochs", "3", "--hidden-size", "32", "--layers", "2", "--threads", "1",
           "--speed-images", "128", "--rounds", "1", "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| ternary (distilled) |" in proc.stdout and "speed ratio" in proc.stdout
    report = json.loads((out / "results.json").read_text())
    assert set(report["scores"]) == {"teacher", "ternary (plain)", "ternary (distilled)"}
    assert report["bytes"]["ternary (distilled)"] < report["bytes"]["teacher"]
    assert report["distill_steps"] == 20
