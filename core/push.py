"""``adapt push RUN_DIR --repo NAME``: a run's adapter, merged model or export to the Hugging
Face Hub, with ``huggingface_hub`` (its token: ``HF_TOKEN`` or ``huggingface-cli login``).

Each folder is what the Hub's tools open: ``adapter/`` is PEFT's layout, ``merged/`` the
backbone library's own folder with a model card the Hub reads, ``export/`` the ONNX files,
predict.py and the browser page. adapt's own bookkeeping (locks, temporary files) stays home.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapt.errors import AdaptError

#: What can be pushed: the run directory's folder of that name.
WHAT = ("adapter", "merged", "export")
#: adapt's bookkeeping files, never uploaded.
IGNORED = [".adapt*", "*.tmp", "*.old", "**/.adapt*"]


def push(run_dir: Path, repo: str, what: str = "adapter", private: bool = False) -> dict[str, Any]:
    """Create ``repo`` (if it is not there) and upload the run's ``what`` folder as one commit;
    returns the repository, the folder and the commit's URL."""
    from adapt.rundir import MARKER_FILE, is_run

    if not is_run(run_dir):  # reading only: a read-only run may be pushed
        raise AdaptError(
            f"{run_dir} is not a run directory made by adapt (it has no {MARKER_FILE})",
            hint="give the folder `adapt run` printed, e.g. runs/<name>",
        )
    if what not in WHAT:
        raise AdaptError(f"--what is {what!r}", hint=f"give one of {', '.join(WHAT)}")
    folder = run_dir / what
    if not folder.is_dir() or folder.is_symlink():
        step = {"adapter": "train", "merged": "merge", "export": "export"}[what]
        raise AdaptError(f"{run_dir} has no {what}/ folder to push", hint=f"make it first: adapt {step} {run_dir}")
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError
    except ImportError:  # pragma: no cover - transformers depends on it
        raise AdaptError("huggingface_hub is not installed", hint="pip install huggingface_hub") from None
    api = HfApi()
    try:
        api.create_repo(repo_id=repo, private=private, exist_ok=True)
        commit = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo,
            commit_message=f"adapt push: {run_dir.name}/{what}",
            ignore_patterns=IGNORED,
        )
    except HfHubHTTPError as exc:
        raise AdaptError(
            f"the Hub refused the upload to {repo}: {str(exc).splitlines()[0]}",
            hint="log in (huggingface-cli login, or set HF_TOKEN) with write access to the repository",
        ) from None
    except Exception as exc:  # noqa: BLE001 - the Hub's client raises its HTTP library's own errors
        if not network_error(exc):
            raise
        raise AdaptError(
            f"could not reach the Hub to push to {repo}: {type(exc).__name__}: {exc}",
            hint="check the network (or HF_ENDPOINT), then push again",
        ) from None
    return {"repo": repo, "folder": str(folder), "commit": str(getattr(commit, "commit_url", commit))}


def network_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the network failing (an OSError, or an error of the HTTP library
    huggingface_hub uses: httpx or requests, by module, as their versions move)."""
    return isinstance(exc, OSError) or type(exc).__module__.split(".")[0] in ("httpx", "httpx2", "requests", "urllib3")
