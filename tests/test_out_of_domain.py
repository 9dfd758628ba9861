"""Out-of-domain evaluation (issue 28): reST sections, the held-out retrieval pairs and long passages of
the evaluation-only corpora, the tasks on the real MiniLM, per-length encoding, reusable teacher embeddings.

Model tests use the real all-MiniLM-L6-v2 on subsets of 12 pairs / passages so the file stays fast.
"""

from __future__ import annotations

import copy
import shutil

import numpy as np
import pytest
import torch

from ternary_hf import evaluation as ev
from ternary_hf.data import broad, load_dataset, ood
from ternary_hf.data import broad_formats as fmt
from ternary_hf.data.corpora import default_distillation_texts, distillation_sources
from ternary_hf.data.splits import is_test_group
from ternary_hf.errors import InvalidInputError
from ternary_hf.evaluation.encoders import Encoder

OOD_TASKS = ["ood-docs-retrieval", "ood-terms-retrieval", "ood-length-agreement"]


# ------------------------------------------------------------------------------------------------ data
def test_rest_sections_split_at_titles_and_keep_prose_only():
    page = ("=======\nA guide\n=======\n\nIntro text of the guide with enough words.\n\n"
            "How do I ``save`` a model?\n==========================\n\n"
            "Call :meth:`~Model.save` on the instance, as the `docs <https://x>`_ say.\n\n"
            ".. code-block:: python\n\n    obj.save()\n\n"
            "Sub part\n--------\n\nShort but real prose text of the part.\n")
    assert fmt.rest_sections(page) == [
        ("", ""),
        ("A guide", "Intro text of the guide with enough words."),
        ("How do I save a model?", "Call ~Model.save on the instance, as the docs say."),
        ("Sub part", "Short but real prose text of the part."),
    ]
    docs = list(fmt.rest_docs(_tar({"docs/a.txt": page}), "docs/"))
    assert docs and not any("===" in text or "---" in text for _, text in docs)  # no title adornment leaks


def _tar(files: dict[str, str]) -> bytes:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_retrieval_pairs_come_from_held_out_pages_and_headwords_only():
    queries, docs = ood.load_retrieval_pairs("django-sections")
    assert len(queries) == len(docs) > 300 and queries.labels == docs.labels == list(range(len(docs)))
    assert len(set(queries.texts)) == len(queries)  # a title names one section
    held_out_pages = {page for page, _ in broad.django_pages() if is_test_group("django-docs", page)}
    sections = {prose for page, sections in broad.django_pages() if page in held_out_pages for _, prose in sections}
    assert set(docs.texts) <= sections
    terms, definitions = ood.load_retrieval_pairs("foldoc-terms", limit=200, seed=1)
    assert len(terms) == 200 and all(is_test_group("foldoc", term) for term in terms.texts)
    assert all(len(d.split()) >= 8 for d in definitions.texts)
    assert ood.load_retrieval_pairs("foldoc-terms", limit=200, seed=1)[0].texts == terms.texts
    with pytest.raises(InvalidInputError, match="unknown retrieval set"):
        ood.load_retrieval_pairs("wiki")


def test_long_texts_are_long_and_held_out():
    texts = ood.long_texts(min_words=200)
    assert len(texts) > 200 and all(len(t.split()) >= 200 for t in texts.texts)
    train_pages = {page for page, _ in broad.django_pages() if not is_test_group("django-docs", page)}
    assert not set(texts.groups) & train_pages


def test_evaluation_domains_are_in_no_distillation_mix():
    assert not set(broad.EVALUATION_DOMAINS) & set(distillation_sources("broad"))
    mix = set(default_distillation_texts(mix="broad", limit=20_000))
    for name in broad.EVALUATION_DOMAINS:
        for split in ("train", "test"):
            assert not mix & set(broad.load_broad_corpus(name, split).texts), (name, split)


def test_excluded_sources_leave_the_mix_and_unknown_names_are_refused():
    tweets = set(default_distillation_texts(mix="classic")) & set(load_dataset("tweets", "train").texts)
    assert tweets
    without = default_distillation_texts(mix="classic", exclude=["tweets"])
    assert not set(without) & tweets
    with pytest.raises(InvalidInputError, match="its sources are 20ng, r52"):
        default_distillation_texts(exclude=["wordnet"])  # a broad source, not a classic one
    with pytest.raises(InvalidInputError, match="every source"):
        default_distillation_texts(exclude=distillation_sources("classic"))


# --------------------------------------------------------------------------------------------- metrics
def test_recall_at_k_counts_relevant_items_found_over_those_findable():
    corpus_labels = [0, 1, 1, 2]
    hits = np.array([[0, 3], [3, 0], [1, 2]])
    # query 0 (label 0): found 1 of 1; query 1 (label 1): 0 of min(2, 2); query 2 (label 1): 2 of 2
    assert ev.recall_at_k(hits, [0, 1, 1], corpus_labels, k=2) == pytest.approx((1 + 0 + 1) / 3)
    assert ev.recall_at_k(np.array([[0, 1]]), [9], corpus_labels, k=2) == 0.0


# ------------------------------------------------------------------------------------------ the model
@pytest.fixture(scope="module")
def minilm(minilm_path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(minilm_path, device="cpu")


def test_encoding_at_a_max_length_cuts_the_input_and_is_cached_apart(minilm):
    text = " ".join(["documentation"] * 50)
    enc = Encoder(minilm, "m", batch_size=4, show_progress_bar=False)
    full, short = enc.encode([text]), enc.encode([text], max_length=8)
    held = minilm.max_seq_length
    minilm.max_seq_length = 8
    try:
        expected = minilm.encode([text], normalize_embeddings=True)
    finally:
        minilm.max_seq_length = held
    assert minilm.max_seq_length == held == enc.max_seq_length
    np.testing.assert_allclose(short, expected, atol=1e-5)
    assert float(full[0] @ short[0]) < 0.999 and enc.n_encoded == 2
    enc.encode([text], max_length=8)
    assert enc.n_encoded == 2


@pytest.mark.integration
def test_ood_tasks_keep_everything_against_itself_and_see_a_damaged_student(minilm):
    same = ev.evaluate(minilm, teacher=minilm, tasks=OOD_TASKS, limit=12, show_progress_bar=False, num_threads=1)
    rows = {(r.task, r.metric): r for r in same.metrics}
    assert {m for t, m in rows if t == "ood-length-agreement"} == {f"mean_cosine@{n}" for n in (32, 64, 128, 256)}
    for (task, _), row in rows.items():
        if task == "ood-length-agreement":
            assert row.student == pytest.approx(1.0, abs=1e-5)
        else:
            assert row.retention == pytest.approx(100.0) and row.teacher > 0.3  # far above chance (1/12)
    noisy = copy.deepcopy(minilm)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in noisy.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.add_(0.5 * module.weight.std() * torch.randn(module.weight.shape, generator=gen))
    damaged = ev.evaluate(noisy, teacher=minilm, tasks=["ood-length-agreement"], limit=12,
                          show_progress_bar=False, num_threads=1)
    cosines = [damaged.get("ood-length-agreement", f"mean_cosine@{n}").student for n in (32, 64, 128, 256)]
    assert max(cosines) < 0.97


def test_length_buckets_above_the_models_limit_are_skipped_with_a_note(minilm):
    short = copy.deepcopy(minilm)
    short.max_seq_length = 64
    result = ev.evaluate(short, teacher=short, tasks=["ood-length-agreement"], limit=4, show_progress_bar=False,
                         num_threads=1)
    assert [r.metric for r in result.metrics] == ["mean_cosine@32", "mean_cosine@64"]
    assert any("above 64 tokens skipped" in note for note in result.notes)


@pytest.mark.integration
def test_teacher_embeddings_file_is_reused_for_the_same_teacher_only(minilm_path, tmp_path, monkeypatch):
    cache = tmp_path / "teacher.npz"
    kwargs = dict(tasks=["ood-docs-retrieval", "ood-length-agreement"], limit=6, show_progress_bar=False,
                  num_threads=1, teacher_embeddings=cache)
    first = ev.evaluate(minilm_path, teacher=minilm_path, **kwargs)
    assert cache.is_file()
    calls = []
    original = Encoder._encode

    def counting(self, texts, max_length):
        calls.append((self.name, len(texts)))
        return original(self, texts, max_length)

    monkeypatch.setattr(Encoder, "_encode", counting)
    second = ev.evaluate(minilm_path, teacher=minilm_path, **kwargs)
    assert calls and not any(name.startswith("teacher") for name, _ in calls)  # the student only
    assert [(r.metric, r.teacher, r.student) for r in second.metrics] == [
        (r.metric, r.teacher, r.student) for r in first.metrics]
    other = tmp_path / "other-teacher"
    shutil.copytree(minilm_path, other)  # another folder: another fingerprint, so the file is not used
    calls.clear()
    ev.evaluate(minilm_path, teacher=other, **kwargs)
    assert any(name.startswith("teacher") for name, _ in calls)



def test_teacher_embeddings_need_a_teacher_folder(minilm, minilm_path, tmp_path):
    # a loaded model may have been changed since it was read from its folder: its embeddings are not the folder's
    with pytest.raises(InvalidInputError, match="needs the teacher as a model folder"):
        ev.evaluate(minilm_path, teacher=minilm, tasks=["ood-docs-retrieval"], limit=3,
                    teacher_embeddings=tmp_path / "x.npz", show_progress_bar=False)
