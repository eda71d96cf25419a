"""Mounts that would hide files or record one folder twice are refused before mounting."""

from __future__ import annotations

from pathlib import Path

import pytest

from lanvault.mount import refuse_unsafe_mount
from lanvault.state import CommandError, StateDir


def test_a_mountpoint_with_files_of_its_own_needs_force(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    state.root.mkdir()
    source, mountpoint = tmp_path / "data", tmp_path / "vault"
    source.mkdir()
    mountpoint.mkdir()
    refuse_unsafe_mount(state, source, mountpoint, force=False)  # empty: fine
    (mountpoint / "notes.txt").write_text("would be hidden")
    with pytest.raises(CommandError, match="is not empty: its files would be out of sight"):
        refuse_unsafe_mount(state, source, mountpoint, force=False)
    refuse_unsafe_mount(state, source, mountpoint, force=True)
    (source / "file.txt").write_text("the real files")
    refuse_unsafe_mount(state, source, source, force=False)  # over SOURCE itself: protected


def test_a_live_mountpoint_or_a_source_mounted_elsewhere_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lanvault.mount as mount

    state = StateDir(tmp_path / "state")
    state.root.mkdir()
    source, first, second = tmp_path / "data", tmp_path / "vault", tmp_path / "vault2"
    for folder in (source, first, second):
        folder.mkdir()
    state.record_mount(first, source)
    live = {first}
    monkeypatch.setattr(mount, "is_live", lambda path: path in live)
    monkeypatch.setattr(mount, "mounted_fsname", lambda path: "lanvault")
    with pytest.raises(CommandError, match="is already mounted"):
        refuse_unsafe_mount(state, source, first, force=True)
    with pytest.raises(CommandError, match=f"is already mounted at {first}"):
        refuse_unsafe_mount(state, source, second, force=True)
    live.clear()  # unmounted: both are fine again
    refuse_unsafe_mount(state, source, second, force=False)


def test_a_mounts_files_are_shown_by_the_path_people_see(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    state.root.mkdir()
    source, vault = tmp_path / ".vault-data", tmp_path / "vault"
    state.record_mount(vault, source)
    assert state.shown_path(f"{source}/docs/a.txt") == f"{vault}/docs/a.txt"
    assert state.shown_path(str(source)) == str(vault)
    assert state.shown_path(f"{source}-other/a.txt") == f"{source}-other/a.txt"
    assert state.shown_path("/elsewhere/b.txt") == "/elsewhere/b.txt"
