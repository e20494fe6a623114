"""`adapt push`: the Hub is not reachable from the test machines, so huggingface_hub's HfApi calls are
replaced by recorders (monkeypatched); what is checked is what adapt asks of the Hub, and its errors."""

from __future__ import annotations

import json

import pytest

from tests.cli.test_bundle_e2e import invoke
from tests.conftest import exported_tiny_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return exported_tiny_run(tmp_path_factory.mktemp("push"))


@pytest.fixture
def hub(monkeypatch):
    """HfApi.create_repo / upload_folder recorded instead of sent (no hub is reachable here)."""
    from huggingface_hub import HfApi

    calls = []

    def create_repo(self, **kwargs):
        calls.append(("create_repo", kwargs))

    def upload_folder(self, **kwargs):
        from pathlib import Path

        calls.append(("upload_folder", {**kwargs, "files": sorted(p.relative_to(kwargs["folder_path"]).as_posix() for p in Path(kwargs["folder_path"]).rglob("*") if p.is_file())}))
        return "https://huggingface.co/org/model/commit/abc"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_push_uploads_the_chosen_folder_as_one_commit(run, hub):
    topic = run
    row = json.loads(invoke(["push", str(topic), "--repo", "org/topic-lora"]).output)
    assert row == {"repo": "org/topic-lora", "folder": str(topic / "adapter"), "commit": "https://huggingface.co/org/model/commit/abc"}
    (kind, created), (upload, sent) = hub
    assert kind == "create_repo" and created == {"repo_id": "org/topic-lora", "private": False, "exist_ok": True}
    assert upload == "upload_folder" and sent["folder_path"] == str(topic / "adapter") and sent["repo_id"] == "org/topic-lora"
    assert "adapter_model.safetensors" in sent["files"] and ".adapt*" in sent["ignore_patterns"]
    invoke(["push", str(topic), "--repo", "org/topic", "--what", "merged", "--private"])
    assert hub[-1][1]["folder_path"] == str(topic / "merged") and hub[-2][1]["private"] is True
    topic.chmod(0o555)  # pushing only reads: a read-only run is pushed too
    try:
        invoke(["push", str(topic), "--repo", "org/topic", "--what", "export"])
    finally:
        topic.chmod(0o755)
    assert hub[-1][1]["folder_path"] == str(topic / "export")


def test_push_errors_name_the_fix(run, hub, monkeypatch, tmp_path):
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    topic = run

    def refused(self, **kwargs):
        raise HfHubHTTPError("401 Unauthorized: invalid token", response=httpx2.Response(401, request=httpx2.Request("POST", "https://huggingface.co")))

    monkeypatch.setattr(HfApi, "upload_folder", refused)
    result = invoke(["push", str(topic), "--repo", "org/x"], code=2)
    assert "the Hub refused the upload to org/x: 401 Unauthorized" in result.output and "huggingface-cli login" in result.output

    def offline(self, **kwargs):
        raise httpx2.ConnectError("no route to host")

    monkeypatch.setattr(HfApi, "upload_folder", offline)
    assert "could not reach the Hub to push to org/x" in invoke(["push", str(topic), "--repo", "org/x"], code=2).output
    assert "is not a run directory made by adapt" in invoke(["push", str(tmp_path), "--repo", "org/x"], code=2).output
