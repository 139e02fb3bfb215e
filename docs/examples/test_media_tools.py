"""Testing module subprocesses from cassettes: neither ffmpeg nor tar runs in CI.

``cassettes/test_media_tools/`` holds one cassette per test. The ``tar`` one was recorded
with ``pytest --taskbed-record=once`` in a workspace holding ``bundle.tar``; the ``ffmpeg``
one is written by hand in the same format (ffmpeg was not installed where the examples were
recorded; ``--taskbed-record=all`` re-records it where it is).
"""

import subprocess

import pytest

from media_tools import list_bundle, probe_ffmpeg

pytestmark = [pytest.mark.asyncio, pytest.mark.taskbed(module="media")]


async def test_the_ffmpeg_probe_shows_the_version_line(taskbed):
    await taskbed.call_action(probe_ffmpeg)

    (toast,) = taskbed.emitted.toasts
    assert toast["message"].startswith("ffmpeg version ")
    assert taskbed.processes.calls[0].argv == ["ffmpeg", "-version"]


async def test_the_bundle_is_listed_in_its_workspace(taskbed):
    response = await taskbed.call_action(list_bundle)

    (message,) = response["effects"][0]["messages"]
    assert message["stateUpdate"]["values"]["/bundle"] == [
        "bundle/",
        "bundle/manifest.json",
        "bundle/models/",
        "bundle/models/weights.bin",
    ]
    assert taskbed.processes.calls[0].cwd == "/srv/acme/bundles"


async def test_a_missing_bundle_fails_as_check_true_says(taskbed):
    taskbed.processes.register(
        ["tar", "-tf", "bundle.tar"],
        cwd="/srv/acme/empty",
        returncode=2,
        stderr="tar: bundle.tar: Cannot open: No such file or directory\n",
    )
    with pytest.raises(subprocess.CalledProcessError) as failed:
        await taskbed.call_action(list_bundle, {"workspace_dir": "/srv/acme/empty"})
    assert failed.value.returncode == 2
