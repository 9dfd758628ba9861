"""Publish a saved (ternary) model folder to the Hugging Face Hub.

Why a wrapper around ``HfApi.upload_folder``: a push of a ternary model must (1) refuse folders that are
not loadable models before anything leaves the machine, (2) ship a model card that tells users to
``import ternary_hf`` and links the base model, (3) create the repo and the target branch when missing,
(4) make no commit at all when nothing changed, and (5) turn the many ways an upload can break (HTTP 401 /
5xx, a dropped connection, an LFS error) into one error that says what happened and what to do next.

Behaviour of ``huggingface_hub`` 2.x this relies on: ``upload_folder`` asks the ``preupload`` endpoint for
the remote ``oid`` of every file and drops unchanged ones, and makes no commit when nothing is left (it
returns the current head instead). With ``hf_xet`` installed it uploads through a pipelined, Xet-based
path (commit retried with backoff); with ``HF_HUB_DISABLE_XET=1`` it uses ``create_commit`` (LFS batch +
PUT, README metadata validated by the Hub). The endpoint comes from ``HF_ENDPOINT``, read once when
``huggingface_hub`` is imported.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, ModelCard, constants, get_token
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

from ..errors import TernaryHfError
from ..utils.io import read_json
from .model_card import ModelCardError, redact_local_paths, write_model_card

__all__ = ["HubPushError", "PushResult", "push_folder", "push_to_hub", "validate_model_folder"]

logger = logging.getLogger(__name__)

#: Local clutter that must never reach a model repo.
IGNORE_PATTERNS = [
    "__pycache__",
    "__pycache__/*",
    "**/__pycache__/*",
    "*.pyc",
    ".ipynb_checkpoints/*",
    ".README.md.*.tmp",
    "*.tmp",
    ".DS_Store",
]
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


class HubPushError(TernaryHfError, RuntimeError):
    """A push failed; the message names the cause and the next step. The local folder is left intact."""


@dataclasses.dataclass(frozen=True)
class PushResult:
    """What a push did: the commit the branch now points to, and whether this push created it."""

    repo_id: str
    revision: str
    commit_id: str
    commit_url: str
    changed: bool


def validate_model_folder(folder: str | os.PathLike[str]) -> Path:
    """Check that ``folder`` is a saved model (``config.json`` plus weights) and return it as a ``Path``.

    Raises:
        HubPushError: naming the missing or broken file.
    """
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise HubPushError(f"{path} is not a folder: pass the directory written by save_pretrained()")
    config = path / "config.json"
    if not config.is_file():
        raise HubPushError(
            f"{path} has no config.json, so it is not a saved model folder. Save the model with "
            "model.save_pretrained(DIR) (or SentenceTransformer.save(DIR)) and push DIR."
        )
    config_data = read_json(config, error=HubPushError, hint="re-save the model")
    if not isinstance(config_data, dict) or not config_data.get("model_type"):
        raise HubPushError(f"{config} has no model_type: it is not a transformers config; re-save the model")
    for index_name in _WEIGHT_INDEXES:
        index = path / index_name
        if index.is_file():
            weight_index = read_json(index, error=HubPushError, hint="re-save the model")
            try:
                shards = set(weight_index["weight_map"].values())
            except (KeyError, TypeError, AttributeError) as exc:
                raise HubPushError(f"{index} is not a valid weight index ({exc}); re-save the model") from exc
            missing = sorted(s for s in shards if not (path / s).is_file())
            if missing:
                raise HubPushError(f"{index} lists weight shards missing from {path}: {', '.join(missing)}")
            return path
    if not any((path / name).is_file() for name in _WEIGHT_FILES):
        raise HubPushError(
            f"{path} has a config.json but no weights (model.safetensors or pytorch_model.bin). Save the model "
            "with save_pretrained() into this folder, then push it."
        )
    return path


def _root_cause(exc: BaseException) -> BaseException:
    seen = {id(exc)}
    while True:
        nxt = exc.__cause__ or exc.__context__
        if nxt is None or id(nxt) in seen:
            return exc
        seen.add(id(nxt))
        exc = nxt


def _find_http_error(exc: BaseException | None) -> HfHubHTTPError | None:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, HfHubHTTPError) and exc.response is not None:
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _describe(exc: BaseException) -> str:
    """One readable line for an upload failure: the HTTP answer, or the innermost network error."""
    http = _find_http_error(exc)
    if http is not None:
        response = http.response
        try:
            where = f" from {response.request.method} {response.request.url}"
        except RuntimeError:  # response built without a request
            where = ""
        message = "; ".join(line.strip() for line in (http.server_message or "").splitlines() if line.strip())
        return f"HTTP {response.status_code}{where}: {message or response.reason_phrase}"
    text = f"{type(exc).__name__}: {str(exc).strip()}"
    root = _root_cause(exc)
    if root is not exc and str(root).strip() not in text:
        text += f" (cause: {type(root).__name__}: {str(root).strip()})"
    return text


def _status(exc: BaseException) -> int | None:
    http = _find_http_error(exc)
    return http.response.status_code if http is not None else None


def _hint(exc: BaseException, token_given: bool) -> str:
    status = _status(exc)
    if isinstance(exc, OfflineModeIsEnabled) or isinstance(_root_cause(exc), OfflineModeIsEnabled):
        return "Offline mode is on (HF_HUB_OFFLINE=1): unset HF_HUB_OFFLINE to push."
    if status == 401:
        if not token_given:
            return (
                "The Hub rejected the request as unauthenticated and no token was found: pass token=... "
                "(CLI: --token), set HF_TOKEN, or run `hf auth login`, with a token that has write access."
            )
        return "The Hub rejected the token: check that it is valid, not expired, and has write access."
    if status == 403:
        return "The token cannot write to this repo: use a token with write access to its namespace."
    if status == 404:
        return "The repo or branch was not found: check the repo id (owner/name) and --revision."
    return (
        "The upload was interrupted. Your local folder is intact (a push only writes README.md, before "
        "uploading); run the same push again to retry: files that already reached the Hub are not uploaded "
        "twice, and an unchanged folder makes no new commit."
    )


def _validate_card(readme: Path) -> None:
    """Check README.md metadata locally and with the Hub's validate-yaml endpoint."""
    try:
        card = ModelCard.load(readme, ignore_metadata_errors=False)
    except Exception as exc:  # ModelCard raises ValueError/YAMLError for bad metadata
        raise HubPushError(f"{readme} has invalid YAML metadata ({exc}); fix or delete it and push again") from exc
    try:
        card.validate()
    except ValueError as exc:
        raise HubPushError(f"The Hub rejected the metadata of {readme}: {exc}. Fix it and push again.") from exc
    except Exception as exc:  # validation is advisory: an unreachable endpoint shows up in the upload anyway
        logger.debug("model card validation skipped: %s", exc)


def _stage_for_upload(folder: Path, staging: Path) -> Path:
    """A copy of ``folder`` to upload: files hard-linked (copied across file systems), except the
    top-level JSON records, which are rewritten without local paths (:func:`redact_local_paths`)."""
    for source in folder.rglob("*"):
        target = staging / source.relative_to(folder)
        if source.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.parent == folder and source.suffix == ".json":
            record = read_json(source, invalid=None)
            redacted = redact_local_paths(record)
            if record is not None and redacted != record:
                target.write_text(json.dumps(redacted, indent=2) + "\n", encoding="utf-8")
                continue
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)
    return staging


def push_folder(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    model_card: bool = True,
    base_model: str | os.PathLike[str] | None = None,
    license: str | None = None,
) -> PushResult:
    """Upload ``folder`` like :func:`push_to_hub`; return a :class:`PushResult` (commit id, URL, whether
    anything changed).

    Args:
        folder: directory written by ``save_pretrained`` (transformers) or ``save`` (sentence-transformers).
        repo_id: ``"owner/name"`` (a bare name goes to the token owner's namespace).
        private: create the repo as private (an existing repo keeps its visibility).
        revision: branch to push to; created from ``main`` when missing. Defaults to ``main``.
        token: a Hub token with write access; defaults to ``HF_TOKEN`` / the stored login.
        commit_message: summary of the commit.
        model_card: write / refresh README.md before uploading.
        base_model: Hub id (or local folder) of the model this one was made from, for the card metadata.
        license: license for the card; defaults to the base model's.
    """
    path = validate_model_folder(folder)
    if repo_id.count("/") > 1 or not repo_id.strip("/"):
        raise HubPushError(f"Invalid repo id {repo_id!r}: use 'owner/name' (or just 'name' for your namespace)")
    api = HfApi(token=token)
    branch = revision or constants.DEFAULT_REVISION
    token_given = bool(token or get_token())

    def failure(step: str, exc: BaseException) -> HubPushError:
        return HubPushError(
            f"Pushing {path} to {api.endpoint}/{repo_id} (branch {branch!r}) failed while {step}: "
            f"{_describe(exc)}\n{_hint(exc, token_given)}"
        )

    if "/" not in repo_id:  # the card's usage snippet needs the full id: ask whose token this is
        try:
            repo_id = f"{api.whoami()['name']}/{repo_id}"
        except Exception as exc:
            raise failure("looking up your user name", exc) from exc

    readme = path / "README.md"
    if model_card:
        try:
            readme = write_model_card(path, repo_id, base_model=base_model, license=license)
        except ModelCardError as exc:
            raise HubPushError(f"Cannot render the model card: {exc}") from exc
    if readme.is_file():
        _validate_card(readme)

    step = "creating the repo"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if branch != constants.DEFAULT_REVISION:
            step = f"creating branch {branch!r}"
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        step = "reading the current head"
        previous = api.repo_info(repo_id, revision=branch).sha
        step = "uploading"
        with tempfile.TemporaryDirectory(prefix="ternary-hf-push-") as staging:
            info = api.upload_folder(
                repo_id=repo_id,
                folder_path=_stage_for_upload(path, Path(staging) / path.name),
                revision=branch,
                commit_message=commit_message or f"Upload {path.name} with ternary-hf",
                ignore_patterns=list(IGNORE_PATTERNS),
            )
    except Exception as exc:
        raise failure(step, exc) from exc
    changed = info.oid != previous
    if not changed:
        logger.info("%s: nothing changed since commit %s, no new commit made", repo_id, info.oid)
    return PushResult(repo_id=repo_id, revision=branch, commit_id=info.oid, commit_url=info.commit_url, changed=changed)


def push_to_hub(folder: str | os.PathLike[str], repo_id: str, *args: Any, **kwargs: Any) -> str:
    """Upload a saved (ternary) model folder to the Hub and return the commit id the branch points to.

    Steps: check the folder is a saved model; write or refresh ``README.md`` (see
    :func:`ternary_hf.hub.model_card.write_model_card`; ``model_card=False`` uploads the folder's README as
    is) and validate its metadata; create the repo (``exist_ok``) and the branch ``revision`` (from
    ``main``) if needed; upload every file in one commit. Files the Hub already has are skipped, and when
    nothing changed no commit is made and the current head is returned.

    Args:
        folder: directory written by ``save_pretrained`` (transformers) or ``save`` (sentence-transformers).
        repo_id: ``"owner/name"``.
        args, kwargs: as for :func:`push_folder`; ``private``, ``revision``, ``token`` and
            ``commit_message`` may also be given by position, in this order.

    Raises:
        HubPushError: the folder is not a model, the card metadata is invalid, or the upload failed (the
            message says why and what to do; the local folder is left intact).

    Example:
        >>> import ternary_hf.hub
        >>> ternary_hf.hub.push_to_hub("minilm-ternary", "me/minilm-ternary")  # doctest: +SKIP
    """
    positional = ("private", "revision", "token", "commit_message")
    if len(args) > len(positional):
        raise TypeError(f"push_to_hub takes at most {2 + len(positional)} positional arguments")
    return push_folder(folder, repo_id, **dict(zip(positional, args, strict=False)), **kwargs).commit_id
