"""serving.security without a cluster: the environment it asks for, and the token file's place and mode."""

import os
import stat

import pytest

from serving import security


@pytest.fixture
def token_env(monkeypatch, tmp_path):
    monkeypatch.delenv(security.TOKEN, raising=False)
    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)
    path = tmp_path / "ray" / "auth_token"
    monkeypatch.setenv(security.TOKEN_PATH, str(path))
    return path


def test_local_cluster_env_keeps_token_auth_and_loopback():
    assert security.init_env() == {"RAY_AUTH_MODE": "token", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    # Joining a cluster: this driver needs a routable address, so only the token setting remains.
    assert security.init_env("10.0.0.5:6379") == {"RAY_AUTH_MODE": "token"}


@pytest.mark.parametrize("mode", ["disabled", "k8s"])
def test_apply_env_refuses_an_auth_mode_other_than_token(monkeypatch, mode):
    monkeypatch.setenv("RAY_AUTH_MODE", mode)
    with pytest.raises(ValueError, match=f"RAY_AUTH_MODE={mode}"):
        security.apply_env()
    assert os.environ["RAY_AUTH_MODE"] == mode  # refused, not overridden


def test_token_file_is_created_owner_only(token_env):
    assert security.ensure_token_file() == token_env
    assert stat.S_IMODE(token_env.stat().st_mode) == 0o600
    assert len(token_env.read_text()) == 64  # 256 bits in hex, as Ray's own generator


def test_a_world_readable_token_file_is_made_owner_only(token_env):
    token_env.parent.mkdir(parents=True)
    token_env.write_text("a" * 64)
    token_env.chmod(0o644)  # what Ray 2.60 writes under a 022 umask
    security.ensure_token_file()
    assert stat.S_IMODE(token_env.stat().st_mode) == 0o600
    assert token_env.read_text() == "a" * 64


def test_joining_without_a_token_file_says_where_to_put_it(token_env):
    with pytest.raises(ValueError, match="copy the cluster's token"):
        security.ensure_token_file(create=False)
    assert not token_env.exists()


@pytest.mark.parametrize("inside", ["repo", "gradio", "served"])
def test_token_file_in_the_repo_or_a_served_folder_is_refused(monkeypatch, tmp_path, token_env, inside):
    served = tmp_path / "served"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    base = {"repo": security.REPO_ROOT, "gradio": tmp_path / "gradio", "served": served}[inside]
    monkeypatch.setenv(security.TOKEN_PATH, str(base / "auth_token"))
    with pytest.raises(ValueError, match="keep the Ray token elsewhere"):
        security.ensure_token_file(served=[served])
    assert not (base / "auth_token").exists()


def test_an_inline_token_needs_no_file(monkeypatch, token_env):
    monkeypatch.setenv(security.TOKEN, "b" * 64)
    assert security.ensure_token_file() is None
    assert not token_env.exists()
