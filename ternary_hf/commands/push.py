"""``ternary-hf push DIR REPO_ID``: publish a saved (ternary) model folder to the Hugging Face Hub.

A thin shell over :func:`ternary_hf.hub.push_folder` so the upload, the model card and the error
messages are the same from Python and from the shell. Exit code 0 on success (including "nothing
changed"), 1 when the push failed (the message on stderr says why and what to do).
"""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "push",
        help="upload a saved ternary model folder to the Hugging Face Hub",
        description=(
            "Upload DIR (written by save_pretrained / SentenceTransformer.save) to REPO_ID on the Hub "
            "(HF_ENDPOINT, default https://huggingface.co). README.md is rendered from the folder's "
            "config.json, distillation.json and eval_results.json. Pushing an unchanged folder makes no commit."
        ),
    )
    parser.add_argument("dir", metavar="DIR", help="saved model folder (config.json + weights)")
    parser.add_argument("repo_id", metavar="REPO_ID", help="target repo, owner/name")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument(
        "--revision",
        metavar="BRANCH",
        default=None,
        help="branch to push to (created from main if missing; default main)",
    )
    parser.add_argument("--token", default=None, help="Hub token with write access (default: HF_TOKEN / login)")
    parser.add_argument("--message", "-m", default=None, help="commit message")
    parser.add_argument(
        "--base-model", default=None, help="Hub id (or local folder) of the model this one was made from, for the card"
    )
    parser.add_argument("--license", default=None, help="license for the card (default: the base model's)")
    parser.add_argument(
        "--no-card", action="store_true", help="upload the folder's README.md as is instead of rendering the model card"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..hub.push import push_folder

    result = push_folder(  # HubPushError is a TernaryHfError: cli.main prints it on one line, exit 1
        args.dir, args.repo_id, private=args.private, revision=args.revision, token=args.token,
        commit_message=args.message, model_card=not args.no_card, base_model=args.base_model, license=args.license,
    )
    state = "pushed" if result.changed else "nothing changed, no new commit"
    print(f"{state}: {result.repo_id}@{result.revision} -> commit {result.commit_id}")
    print(result.commit_url)
    return 0
