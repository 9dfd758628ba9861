"""Behaviour of ternary_hf.search.index and `ternary-hf search`: cosine done right, recall, ids, save/load, errors.

Most tests use random clustered vectors behind a fake encoder (fast, exact ground truth by numpy); one
test uses the real bundled all-MiniLM-L6-v2 and one runs the CLI end to end.
"""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest
import torch

from ternary_hf.search.index import (
    ALLOWED_INDEX_FORMS,
    Hit,
    SemanticIndex,
    binarize,
    normalize_embeddings,
    recall_at_k,
)

DIM = 64


@pytest.fixture(autouse=True, scope="module")
def _one_faiss_thread():
    # OpenMP spinning on a shared 2-core machine makes small faiss calls much slower with 2 threads.
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


class FakeEncoder:
    """Maps each known text to a fixed vector; records the size of every encode call."""

    def __init__(self, table: dict[str, np.ndarray], as_torch: bool = False) -> None:
        self.table, self.as_torch, self.calls = table, as_torch, []

    def encode(self, texts, batch_size=32, **kwargs):
        self.calls.append(len(texts))
        out = np.stack([self.table[t] for t in texts]).astype(np.float32)
        return torch.from_numpy(out) if self.as_torch else out


def clustered(n: int, dim: int = DIM, seed: int = 0, latent: int = 8, noise: float = 0.1) -> np.ndarray:
    """Vectors near an 8-dimensional subspace (like real embeddings, far from isotropic), varied norms."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(99).standard_normal((latent, dim))
    x = rng.standard_normal((n, latent)) @ basis + noise * np.sqrt(latent) * rng.standard_normal((n, dim))
    x *= rng.uniform(0.2, 5.0, (n, 1))  # varied norms: an L2 index or a missing normalisation shows up
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def corpus():
    docs = clustered(2000, seed=0)
    queries = clustered(60, seed=1)
    texts = [f"doc-{i}" for i in range(len(docs))]
    qtexts = [f"query-{i}" for i in range(len(queries))]
    table = dict(zip(texts, docs, strict=True)) | dict(zip(qtexts, queries, strict=True))
    return {"docs": docs, "queries": queries, "texts": texts, "qtexts": qtexts, "table": table}


def numpy_topk(docs: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    d = docs / np.linalg.norm(docs, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = q @ d.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, axis=1), order


# ------------------------------------------------------------------------------------------- cosine


def test_flat_index_returns_numpy_cosine_top_k(corpus):
    enc = FakeEncoder(corpus["table"])
    index = SemanticIndex.build(enc, corpus["texts"], "Flat", show_progress_bar=False)
    hits = index.search(corpus["qtexts"], k=10)
    ref_scores, ref_pos = numpy_topk(corpus["docs"], corpus["queries"], 10)
    got_pos = np.array([[h.position for h in row] for row in hits])
    got_scores = np.array([[h.score for h in row] for row in hits])
    assert (got_pos == ref_pos).mean() > 0.99  # ties aside, identical order
    np.testing.assert_allclose(got_scores, ref_scores, atol=1e-5)
    assert all(h.id == h.position and h.text == f"doc-{h.position}" for h in hits[0])


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF16,Flat", "IVF16,PQ8x4", "SQ8", "int8", "PQ8x4"])
def test_every_float_index_uses_inner_product(factory, corpus):
    index = SemanticIndex.from_embeddings(corpus["docs"][:500], factory)
    assert index.index.metric_type == faiss.METRIC_INNER_PRODUCT
    assert index.metadata()["metric"] == "cosine"
    scores, _ = index.search_arrays(corpus["queries"][:5], k=3)
    assert np.all(scores <= 1.05) and np.all(scores >= -1.05)  # cosines, not L2 distances


def test_string_that_faiss_would_make_l2_is_refused():
    # faiss silently builds HNSW32,PQ16 with L2 whatever metric is asked for.
    with pytest.raises(ValueError, match="not inner product"):
        SemanticIndex.from_embeddings(np.ones((300, DIM), np.float32), "HNSW32,PQ16")


def test_dot_product_mode_keeps_norms(corpus):
    index = SemanticIndex.from_embeddings(corpus["docs"][:200], "Flat", normalize=False)
    scores, pos = index.search_arrays(corpus["queries"][:3], k=1)
    ref = corpus["queries"][:3] @ corpus["docs"][:200].T
    np.testing.assert_array_equal(pos[:, 0], ref.argmax(axis=1))
    np.testing.assert_allclose(scores[:, 0], ref.max(axis=1), rtol=1e-4)
    assert index.metadata()["metric"] == "dot"


def test_torch_and_numpy_inputs_give_the_same_results(corpus):
    a = SemanticIndex.from_embeddings(torch.from_numpy(corpus["docs"][:300]), "Flat")
    b = SemanticIndex.from_embeddings(corpus["docs"][:300].astype(np.float64), "Flat")
    sa, pa = a.search_arrays(torch.from_numpy(corpus["queries"][:5]), k=5)
    sb, pb = b.search_arrays(corpus["queries"][:5], k=5)
    np.testing.assert_array_equal(pa, pb)
    np.testing.assert_allclose(sa, sb, atol=1e-6)
    enc = FakeEncoder(corpus["table"], as_torch=True)
    c = SemanticIndex.build(enc, corpus["texts"][:300], show_progress_bar=False)
    np.testing.assert_array_equal(c.search_arrays(corpus["queries"][:5], k=5)[1], pa)


# ------------------------------------------------------------------------------------------- recall


@pytest.mark.parametrize(
    ("factory", "kwargs", "min_recall"),
    [
        ("HNSW32", {}, 0.95),
        ("IVF16,Flat", {"search_params": {"nprobe": 16}}, 0.999),
        ("IVF16,Flat", {}, 0.9),
        ("SQ8", {}, 0.95),
        ("IVF16,PQ16x4", {"search_params": {"nprobe": 16}}, 0.4),
        ("binary,HNSW32", {}, 0.75),
    ],
)
def test_approximate_indexes_reach_expected_recall(factory, kwargs, min_recall, corpus):
    _, exact = numpy_topk(corpus["docs"], corpus["queries"], 10)
    index = SemanticIndex.from_embeddings(corpus["docs"], factory, **kwargs)
    _, pos = index.search_arrays(corpus["queries"], k=10)
    assert recall_at_k(pos, exact) >= min_recall


def test_binary_rescoring_improves_recall_over_binary_alone(corpus):
    _, exact = numpy_topk(corpus["docs"], corpus["queries"], 10)
    recalls = {}
    for rescore in (None, "int8", "float16", "float32"):
        index = SemanticIndex.from_embeddings(corpus["docs"], "binary", rescore=rescore, rescore_multiplier=8)
        recalls[rescore] = recall_at_k(index.search_arrays(corpus["queries"], k=10)[1], exact)
    assert recalls["int8"] > recalls[None] + 0.2
    assert recalls["float32"] >= recalls["int8"] - 0.02
    assert recalls["float16"] >= recalls["float32"] - 0.01
    assert recalls["float32"] > 0.9


def test_binary_rescored_scores_are_cosines(corpus):
    index = SemanticIndex.from_embeddings(corpus["docs"], "binary", rescore="float32", rescore_multiplier=50)
    scores, pos = index.search_arrays(corpus["queries"][:4], k=5)
    d = normalize_embeddings(corpus["docs"])
    q = normalize_embeddings(corpus["queries"][:4])
    expected = np.einsum("qkd,qd->qk", d[pos], q)
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-7)  # sorted best first
    assert index.nbytes()["index"] < index.nbytes()["rescore"]


def test_binarize_is_sign_bits():
    x = np.array([[0.5, -1, 0, 2, -0.1, 3, 1, -2]], np.float32)
    assert binarize(x).tolist() == [[0b10010110]]
    with pytest.raises(ValueError, match="multiple of 8"):
        binarize(np.ones((1, 12)))


def test_recall_at_k_counts_overlap():
    assert recall_at_k([[1, 2, 3]], [[3, 2, 9]]) == pytest.approx(2 / 3)
    hits = [[Hit(id="a", score=1.0), Hit(id="b", score=0.5)]]
    assert recall_at_k(hits, [["b", "a"]], k=1) == 0.0
    assert recall_at_k(np.array([[4, -1]]), np.array([[4, 5]])) == 0.5
    with pytest.raises(ValueError, match="same queries"):
        recall_at_k([[1]], [[1], [2]])


# ------------------------------------------------------------------------------------------- truncation


def test_truncation_truncates_then_renormalises(corpus):
    enc = FakeEncoder(corpus["table"])
    index = SemanticIndex.build(enc, corpus["texts"][:500], truncate_dim=16, show_progress_bar=False)
    assert (index.model_dim, index.dim, index.index.d) == (DIM, 16, 16)
    hits = index.search(corpus["qtexts"][:3], k=3)
    ref_scores, ref_pos = numpy_topk(corpus["docs"][:500, :16], corpus["queries"][:3, :16], 3)
    np.testing.assert_array_equal([[h.position for h in row] for row in hits], ref_pos)
    np.testing.assert_allclose([[h.score for h in row] for row in hits], ref_scores, atol=1e-5)
    v = normalize_embeddings(np.array([[3.0, 4.0, 100.0]]), truncate_dim=2)
    np.testing.assert_allclose(v, [[0.6, 0.8]])


def test_truncate_dim_larger_than_model_is_an_error(corpus):
    with pytest.raises(ValueError, match="truncate_dim=128"):
        SemanticIndex.from_embeddings(corpus["docs"][:10], truncate_dim=128)


# ------------------------------------------------------------------------------------------- ids, streaming


def test_ids_and_texts_map_back_to_documents(corpus):
    enc = FakeEncoder(corpus["table"])
    ids = [f"id-{i:04d}" for i in range(300)]
    index = SemanticIndex.build(enc, corpus["texts"][:300], ids=ids, show_progress_bar=False)
    hit = index.search([corpus["texts"][123]], k=1)[0][0]  # a document finds itself
    assert (hit.id, hit.text, hit.position) == ("id-0123", "doc-123", 123)
    assert hit.score == pytest.approx(1.0, abs=1e-5)
    assert index.get_documents([5, 0]) == [("id-0005", "doc-5"), ("id-0000", "doc-0")]
    pairs = ((i * 10, t) for i, t in enumerate(corpus["texts"][:50]))  # (id, text) pairs
    index2 = SemanticIndex.build(enc, pairs, show_progress_bar=False, store_texts=False)
    hit2 = index2.search([corpus["texts"][7]], k=1)[0][0]
    assert (hit2.id, hit2.text) == (70, None)


def test_streaming_build_from_a_generator_encodes_chunk_by_chunk(corpus):
    enc = FakeEncoder(corpus["table"])
    texts = corpus["texts"]
    index = SemanticIndex.build(
        enc, (t for t in texts), "binary", chunk_size=128, batch_size=16, show_progress_bar=False
    )
    assert index.ntotal == len(texts)
    assert max(enc.calls) <= 128 and len(enc.calls) == -(-len(texts) // 128)
    reference = SemanticIndex.from_embeddings(corpus["docs"], "binary")
    np.testing.assert_array_equal(
        index.search_arrays(corpus["queries"], k=10)[1], reference.search_arrays(corpus["queries"], k=10)[1]
    )


def test_streaming_binary_build_never_holds_all_float_vectors():
    import tracemalloc

    class OnTheFly:
        def encode(self, texts, **kwargs):
            first = int(texts[0].split("-")[1])
            return np.random.default_rng(first).standard_normal((len(texts), 256)).astype(np.float32)

    n = 40_000  # 40 MB of float32 embeddings in all
    tracemalloc.start()
    try:
        index = SemanticIndex.build(
            OnTheFly(), (f"doc-{i}" for i in range(n)), "binary", chunk_size=1000, store_texts=False,
            show_progress_bar=False,
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert index.ntotal == n and index.nbytes()["rescore"] == n * (256 + 4)  # int8 + scale, on disk
    assert peak < 0.2 * n * 256 * 4, f"peak Python/numpy allocation {peak / 1e6:.1f} MB"


def test_streaming_ivf_trains_on_the_first_train_size_vectors(corpus):
    enc = FakeEncoder(corpus["table"])
    index = SemanticIndex(enc, "IVF16,Flat", train_size=400)
    with pytest.warns(UserWarning, match="on 400 vectors; FAISS recommends at least 624"):
        index.add(iter(corpus["texts"][:1000]), chunk_size=100, show_progress_bar=False)
    assert index.is_trained and index.ntotal == 1000
    assert [h.position for h in index.search([corpus["texts"][999]], k=1)[0]] == [999]
    index.add(corpus["texts"][1000:1100], show_progress_bar=False)  # later adds go straight in
    assert index.ntotal == 1100 and index.get_documents([1099]) == [(1099, "doc-1099")]


def test_train_documents_sample_trains_before_adding(corpus):
    enc = FakeEncoder(corpus["table"])
    index = SemanticIndex(enc, "IVF32,Flat")
    index.add(corpus["texts"][:40], train_documents=corpus["texts"][::5], show_progress_bar=False)
    assert index.is_trained and index.ntotal == 40


# ------------------------------------------------------------------------------------------- save / load


@pytest.mark.parametrize(
    ("factory", "rescore"), [("Flat", "auto"), ("binary", "auto"), ("IVF8,Flat", "float16")]
)
def test_save_load_round_trip_gives_identical_results(factory, rescore, corpus, tmp_path):
    enc = FakeEncoder(corpus["table"])
    index = SemanticIndex.build(
        enc, corpus["texts"][:600], factory, ids=[f"d{i}" for i in range(600)], rescore=rescore,
        truncate_dim=32, show_progress_bar=False,
    )
    before = index.search(corpus["qtexts"][:8], k=5)
    index.save(tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / "metadata.json").read_text())
    assert meta["dim"] == 32 and meta["model_dim"] == DIM and meta["truncate_dim"] == 32
    assert meta["index_factory"] == factory and meta["normalize"] is True and meta["ntotal"] == 600
    loaded = SemanticIndex.load(tmp_path / "idx", query_model=enc)
    assert loaded.search(corpus["qtexts"][:8], k=5) == before


def test_adding_to_a_loaded_index_leaves_the_saved_folder_unchanged(corpus, tmp_path):
    enc = FakeEncoder(corpus["table"])
    SemanticIndex.build(enc, corpus["texts"][:100], "binary", show_progress_bar=False).save(tmp_path / "a")
    saved = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}
    loaded = SemanticIndex.load(tmp_path / "a", model=enc)
    loaded.add(corpus["texts"][100:150], show_progress_bar=False)
    assert loaded.ntotal == 150
    assert loaded.search([corpus["texts"][140]], k=1)[0][0].id == 140
    assert {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()} == saved
    loaded.save(tmp_path / "b")
    assert SemanticIndex.load(tmp_path / "b").ntotal == 150


# ------------------------------------------------------------------------------------------- asymmetric


def test_asymmetric_search_uses_the_query_model(corpus):
    teacher = FakeEncoder(corpus["table"])
    rng = np.random.default_rng(3)
    student_table = {
        t: v + 0.02 * np.linalg.norm(v) * rng.standard_normal(DIM) for t, v in corpus["table"].items()
    }
    student = FakeEncoder(student_table)
    index = SemanticIndex.build(teacher, corpus["texts"], show_progress_bar=False)
    n_teacher_calls = len(teacher.calls)
    _, exact = numpy_topk(corpus["docs"], corpus["queries"], 10)
    asym = index.search(corpus["qtexts"], k=10, query_model=student)
    assert len(teacher.calls) == n_teacher_calls and len(student.calls) == 1
    assert 0.6 < recall_at_k([[h.position for h in r] for r in asym], exact) < 1.0
    index2 = SemanticIndex.build(teacher, corpus["texts"][:10], query_model=student, show_progress_bar=False)
    index2.search(["query-0"], k=1)
    assert len(student.calls) == 2


def test_metadata_records_a_quantized_model(corpus, tmp_path):
    class Config:
        _name_or_path = "/models/minilm"
        quantization_config = {"quant_method": "ternary", "granularity": "channel"}

    enc = FakeEncoder(corpus["table"])
    enc.config = Config()
    index = SemanticIndex.build(enc, corpus["texts"][:20], show_progress_bar=False)
    meta = json.loads((index.save(tmp_path / "q") / "metadata.json").read_text())
    assert meta["model_name"] == "/models/minilm"
    assert meta["model_quantization"]["quant_method"] == "ternary"
    assert SemanticIndex.load(tmp_path / "q").model_quantization == meta["model_quantization"]


# ------------------------------------------------------------------------------------------- errors


def test_empty_corpus_is_an_error(corpus):
    with pytest.raises(ValueError, match="corpus is empty"):
        SemanticIndex.build(FakeEncoder(corpus["table"]), iter([]), show_progress_bar=False)
    with pytest.raises(ValueError, match="empty"):
        SemanticIndex.from_embeddings(np.zeros((0, DIM), np.float32))


def test_query_model_of_another_dimension_is_refused(corpus, tmp_path):
    index = SemanticIndex.build(FakeEncoder(corpus["table"]), corpus["texts"][:50], show_progress_bar=False)
    other = FakeEncoder({"q": np.ones(32, np.float32)})
    with pytest.raises(ValueError, match="dimension mismatch.*32.*64"):
        index.search(["q"], query_model=other)
    with pytest.raises(ValueError, match="dimension mismatch"):
        index.search_arrays(np.ones((1, 48), np.float32))
    index.save(tmp_path / "i")

    class Sized(FakeEncoder):
        def get_sentence_embedding_dimension(self):
            return 32

    with pytest.raises(ValueError, match="dimension mismatch"):
        SemanticIndex.load(tmp_path / "i", query_model=Sized({}))

    class Sized64(FakeEncoder):
        def get_sentence_embedding_dimension(self):
            return DIM

    with pytest.raises(ValueError, match="dimension mismatch"):
        SemanticIndex(Sized64({}), query_model=Sized({}))


@pytest.mark.parametrize("bad", ["Foo", "IVF16,PQ7", "LSH", "binary,Nope"])
def test_invalid_index_string_lists_the_allowed_forms(bad):
    with pytest.raises(ValueError) as info:
        SemanticIndex.from_embeddings(np.ones((20, DIM), np.float32), bad)
    assert bad in str(info.value) and ALLOWED_INDEX_FORMS in str(info.value)


def test_idmap_and_odd_binary_dimensions_are_refused():
    with pytest.raises(ValueError, match="IDMap"):
        SemanticIndex(None, "IDMap,Flat")
    with pytest.raises(ValueError, match="multiple of 8"):
        SemanticIndex.from_embeddings(np.ones((5, 12), np.float32), "binary")


def test_an_index_string_is_checked_before_encoding_when_the_model_reports_its_dimension():
    class Sized(FakeEncoder):
        def get_sentence_embedding_dimension(self):
            return DIM

    enc = Sized({})
    with pytest.raises(ValueError, match="could not parse|invalid"):
        SemanticIndex(enc, "Nonsense42")
    assert enc.calls == []


def test_ivf_with_too_few_training_vectors_says_what_to_do(corpus):
    with pytest.raises(ValueError, match="at least 256 training vectors but only 100.*IVF10"):
        SemanticIndex.from_embeddings(corpus["docs"][:100], "IVF256,Flat")
    with pytest.raises(ValueError, match="at least 256 training vectors"):
        SemanticIndex.from_embeddings(corpus["docs"][:100], "IVF4,PQ8")


def test_querying_an_untrained_or_empty_index_is_an_error(corpus):
    index = SemanticIndex(FakeEncoder(corpus["table"]), "IVF16,Flat")
    with pytest.raises(ValueError, match="empty|not trained"):
        index.search(["query-0"])
    index._init_dim(DIM)  # the faiss index exists but was never trained
    with pytest.raises(ValueError, match="not trained"):
        index.search_arrays(corpus["queries"][:1])
    with pytest.raises(ValueError, match="nothing to save"):
        index.save("unused")


def test_ids_must_match_documents(corpus):
    enc = FakeEncoder(corpus["table"])
    with pytest.raises(ValueError, match="fewer ids"):
        SemanticIndex.build(enc, corpus["texts"][:10], ids=range(5), show_progress_bar=False)
    with pytest.raises(ValueError, match="more ids"):
        SemanticIndex.build(enc, corpus["texts"][:10], ids=range(11), show_progress_bar=False)
    with pytest.raises(TypeError, match="single string"):
        SemanticIndex.build(enc, "doc-1", show_progress_bar=False)


def test_loading_a_folder_that_is_not_an_index_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved SemanticIndex"):
        SemanticIndex.load(tmp_path)


def test_k_larger_than_the_corpus_pads_with_minus_one(corpus):
    index = SemanticIndex.from_embeddings(corpus["docs"][:3], ids=["a", "b", "c"])
    scores, pos = index.search_arrays(corpus["queries"][:1], k=5)
    assert sorted(pos[0, :3].tolist()) == [0, 1, 2] and pos[0, 3:].tolist() == [-1, -1]
    assert len(index.search_embeddings(corpus["queries"][:1], k=5)[0]) == 3


# ------------------------------------------------------------------------------------------- real model + CLI

SENTENCES = [
    "The cat sat on the mat.", "A dog is playing fetch in the park.", "Stock markets fell sharply today.",
    "The central bank raised interest rates.", "How do I bake sourdough bread?",
    "This recipe makes a crusty loaf of bread.", "The football team won the championship.",
    "She scored the winning goal in the final minute.", "Python is a popular programming language.",
    "I wrote a function to parse JSON files.", "The hurricane caused flooding along the coast.",
    "Heavy rain is expected this weekend.", "The museum opened a new exhibition of paintings.",
    "He plays the violin in an orchestra.", "Electric cars are becoming more affordable.",
    "The battery of my phone drains quickly.", "Doctors recommend regular exercise.",
    "A balanced diet keeps you healthy.", "The spacecraft landed on Mars.",
    "Astronomers discovered a new exoplanet.", "The train to Paris was delayed.",
    "Flights were cancelled because of the storm.", "She is reading a mystery novel.",
    "The library has thousands of books.", "Quantum computers use qubits.",
    "The laptop overheats when gaming.", "Coffee prices rose this year.",
    "The garden is full of roses.", "Kids are building a sandcastle on the beach.",
    "The company reported record profits.",
]


@pytest.mark.integration
def test_real_minilm_finds_paraphrases_with_every_index_kind(minilm_path):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(minilm_path, device="cpu")
    queries = [
        "a kitten resting on a rug", "rates were increased by the central bank", "landing on the red planet"
    ]
    expected = [0, 3, 18]
    exact = SemanticIndex.build(model, SENTENCES, "Flat", show_progress_bar=False)
    assert [r[0].position for r in exact.search(queries, k=1)] == expected
    for factory in ("HNSW32", "binary", "SQ8"):
        index = SemanticIndex.build(model, SENTENCES, factory, truncate_dim=128, show_progress_bar=False)
        assert [r[0].position for r in index.search(queries, k=1)] == expected, factory
    assert exact.model_name == minilm_path and exact.model_dim == 384


@pytest.mark.integration
def test_cli_build_then_query_round_trip(minilm_path, tmp_path, capsys):
    from ternary_hf.cli import main

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "\n".join(json.dumps({"key": f"s{i}", "body": s}) for i, s in enumerate(SENTENCES)) + "\n",
        encoding="utf-8",
    )
    out = tmp_path / "index"
    rc = main(["search", "build", minilm_path, str(corpus), str(out), "--index", "binary",
               "--text-field", "body", "--id-field", "key", "--no-progress"])
    assert rc == 0
    assert "indexed 30 documents" in capsys.readouterr().out
    rc = main(["search", "query", str(out), "a kitten resting on a rug", "-k", "3", "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["hits"][0]["id"] == "s0" and result["hits"][0]["text"] == SENTENCES[0]
    assert len(result["hits"]) == 3
    bad = ["search", "build", minilm_path, str(corpus), str(tmp_path / "x"), "--index", "Bogus"]
    rc = main([*bad, "--no-progress"])
    assert rc == 1 and "Bogus" in capsys.readouterr().err
    lines = tmp_path / "lines.txt"
    lines.write_text("first line\n\nthird line about cats\n", encoding="utf-8")
    assert main(["search", "build", minilm_path, str(lines), str(tmp_path / "l"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["search", "query", str(tmp_path / "l"), "kittens", "-k", "1"]) == 0
    assert "[3]  third line about cats" in capsys.readouterr().out
