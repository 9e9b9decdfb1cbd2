"""The image module: names from the settings and the git checkout, build and push with docker.

Podman's build and push run for real in test_image.py; docker needs an engine that cannot run
here, so its CLI is replaced by a fake that logs its arguments (the client boundary).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import FakeDocker, git
from pyflow_kit import deploy, image
from pyflow_kit.errors import ImageError
from pyflow_kit.image import BuildOptions, Image
from pyflow_kit.settings import get_settings

IMAGE = Image("127.0.0.1:5000/test/pyflow", "1.2.3", "abc1234")


def test_image_for_names_the_artifact_registry_path_version_and_commit(
    git_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The image is REGION-docker.pkg.dev/PROJECT/REPOSITORY/NAME, tagged version and commit."""
    monkeypatch.setenv("PYFLOW_GCP_PROJECT", "acme")
    monkeypatch.setenv("PYFLOW_IMAGE_NAME", "flows")
    commit = git(git_project, "rev-parse", "--short=7", "HEAD").strip()
    named = image.image_for(get_settings(), root=git_project)
    assert named.tags == [
        "us-central1-docker.pkg.dev/acme/pyflow/flows:1.2.3",
        f"us-central1-docker.pkg.dev/acme/pyflow/flows:{commit}",
    ]
    assert named.pinned("sha256:1") == "us-central1-docker.pkg.dev/acme/pyflow/flows:1.2.3@sha256:1"


def test_image_for_takes_a_registry_and_a_version(git_project: Path) -> None:
    """--registry names REGISTRY/IMAGE instead, and --version replaces pyproject's version."""
    named = image.image_for(get_settings(), "127.0.0.1:5000/test/", "2.0.0", git_project)
    assert named.repository == "127.0.0.1:5000/test/pyflow"
    assert named.version == "2.0.0"


def test_image_for_refuses_the_placeholder_project(git_project: Path) -> None:
    """The template's placeholder project is refused with the setting to change."""
    with pytest.raises(ImageError, match=r"set PYFLOW_GCP_PROJECT in \.env"):
        image.image_for(get_settings(), root=git_project)


@pytest.mark.parametrize("version", ["1.2.3+build.7", "-1", "x" * 129])
def test_image_for_refuses_a_version_that_is_not_a_tag(git_project: Path, version: str) -> None:
    """A version an image tag cannot hold (a '+', a leading '-', too long) is refused."""
    with pytest.raises(ImageError, match=r"the version, .* is not a valid image tag"):
        image.image_for(get_settings(), "127.0.0.1:5000", version, git_project)


@pytest.mark.parametrize(
    ("change", "dirty"),
    [
        ("none", False),
        ("tracked", True),
        ("untracked", True),
        ("ignored", False),
    ],
)
def test_git_commit_is_dirty_when_files_differ_from_head(
    git_project: Path, change: str, dirty: bool
) -> None:
    """Changed and untracked files (both would ship in the image) mark the commit dirty."""
    if change == "tracked":
        (git_project / "pyflow" / "flow.py").write_text("VALUE = 2\n")
    elif change == "untracked":
        (git_project / "pyflow" / "new.py").write_text("")
    elif change == "ignored":
        (git_project / ".prefect").mkdir()
        (git_project / ".prefect" / "state.db").write_text("")
    assert image.git_commit(git_project).endswith("-dirty") is dirty


def test_git_commit_outside_a_repository_says_why(tmp_path: Path) -> None:
    """Outside a git repository the image cannot be named, and the message says so."""
    with pytest.raises(ImageError, match="build from a git repository"):
        image.git_commit(tmp_path)


def test_build_command_passes_every_option_to_podman(tmp_path: Path) -> None:
    """Base image, index, secrets, isolation, labels and both tags reach the engine."""
    ca = tmp_path / "ca.pem"
    ca.write_text("CA")
    options = BuildOptions("debian-python", [f"ca={ca}"], "https://u:p@index.test/simple", "chroot")
    command = image.build_command("podman", IMAGE, options, tmp_path)
    assert command == [
        "podman", "build", "--isolation", "chroot",
        "--build-arg", "BASE_IMAGE=debian-python",
        "--build-arg", "PIP_INDEX_URL=https://u:p@index.test/simple",
        "--secret", f"id=ca,src={ca}",
        "--label", "org.opencontainers.image.version=1.2.3",
        "--label", "org.opencontainers.image.revision=abc1234",
        "--tag", IMAGE.tags[0], "--tag", IMAGE.tags[1],
        str(tmp_path),
    ]  # fmt: skip
    assert "u:p@" not in image.shown(command)


@pytest.mark.parametrize(
    ("engine", "options", "message"),
    [
        ("docker", BuildOptions(isolation="chroot"), "--isolation is a podman option"),
        ("podman", BuildOptions(cache_from="type=gha"), "are docker buildx options"),
        ("podman", BuildOptions(secrets=["ca"]), "is not ID=PATH"),
        ("podman", BuildOptions(secrets=["ca=/no/such/file"]), "does not exist"),
    ],
)
def test_build_command_refuses_options_of_the_other_engine(
    engine: str, options: BuildOptions, message: str
) -> None:
    """Each engine's own options are refused for the other, and bad secrets before building."""
    with pytest.raises(ImageError, match=message):
        image.build_command(engine, IMAGE, options)


def test_container_engine_refuses_an_unknown_or_missing_engine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An unknown engine names the two choices; a missing one says to install it."""
    with pytest.raises(ImageError, match="use docker or podman"):
        image.container_engine("kaniko", get_settings())
    monkeypatch.setenv("PATH", "")
    with pytest.raises(ImageError, match="docker is not installed"):
        image.container_engine("", get_settings())
    assert image.container_engine("", get_settings(), required=False) == "docker"


def test_build_with_docker_builds_then_reports_the_size(
    fake_docker: FakeDocker, capsys: pytest.CaptureFixture[str]
) -> None:
    """Docker builds with the cache options of buildx, then the size is read back."""
    image.build("docker", IMAGE, BuildOptions(cache_from="type=gha"), Path("/context"))
    build_call, inspect_call = fake_docker.calls()
    assert build_call[:4] == ["buildx", "build", "--load", "--label"]
    assert build_call[-3:] == ["--cache-from", "type=gha", "/context"]
    assert inspect_call == ["image", "inspect", "--format", "{{.Size}}", IMAGE.tags[0]]
    assert f"Built {IMAGE.tags[0]} and {IMAGE.tags[1]}: 485 MB" in capsys.readouterr().out


def test_build_that_fails_stops_with_the_engines_status(
    fake_docker: FakeDocker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failing build raises, and nothing is inspected or tagged afterwards."""
    monkeypatch.setenv("FAKE_DOCKER_EXIT_BUILD", "1")
    with pytest.raises(ImageError, match=r"building .*:1\.2\.3 failed"):
        image.build("docker", IMAGE, BuildOptions(), Path("/context"))
    assert len(fake_docker.calls()) == 1


def test_smoke_run_with_docker_locks_the_container_down_as_the_pods(
    fake_docker: FakeDocker,
) -> None:
    """The smoke run's `docker run` locks the container down as the job template does its pod.

    Read-only, but for the pod's empty folders (in memory here), as the pod's user, with no
    capabilities and no privilege gained; the container is removed after its run.
    """
    from pyflow_kit import smoke

    template = json.loads(deploy.KIT_JOB_TEMPLATE.read_text())
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    [spec] = pod["containers"]
    result = smoke.run_in_image("docker", IMAGE.tags[0], {}, ["echo", "ran"])
    assert (result.returncode, result.stdout.strip()) == (0, "ran")
    run, remove = fake_docker.calls()
    options = run[: run.index(IMAGE.tags[0])]
    assert spec["securityContext"]["readOnlyRootFilesystem"] is True
    assert "--read-only" in options
    tmpfs = {option.removeprefix("--tmpfs=") for option in options if option.startswith("--tmpfs=")}
    assert tmpfs == {mount["mountPath"] for mount in spec["volumeMounts"]}
    user = f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
    assert f"--user={user}" in options
    assert spec["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert "--cap-drop=ALL" in options
    assert spec["securityContext"]["allowPrivilegeEscalation"] is False
    assert "--security-opt=no-new-privileges" in options
    assert remove == ["rm", "--force", run[2].removeprefix("--name=")]


def test_push_with_docker_pushes_the_commit_then_the_version_and_records_the_digest(
    fake_docker: FakeDocker, tmp_path: Path
) -> None:
    """The version tag goes last; the digest docker printed is recorded for `invoke deploy`."""
    digest = image.push("docker", IMAGE, tmp_path / "home")
    assert digest == fake_docker.digest
    assert fake_docker.calls() == [["push", IMAGE.tags[1]], ["push", IMAGE.tags[0]]]
    assert image.pushed_image(tmp_path / "home", IMAGE) == IMAGE.pinned(fake_docker.digest)
    recorded = json.loads((tmp_path / "home" / image.PUSHED_FILE).read_text())
    assert recorded == {IMAGE.tags[0]: digest, IMAGE.tags[1]: digest}


def test_push_that_fails_records_nothing(
    fake_docker: FakeDocker, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A failed push stops before the version tag, and leaves no record behind."""
    monkeypatch.setenv("FAKE_DOCKER_EXIT_PUSH", "1")
    with pytest.raises(ImageError, match=r"pushing .*:abc1234 failed"):
        image.push("docker", IMAGE, tmp_path)
    assert fake_docker.calls() == [["push", IMAGE.tags[1]]]
    assert not (tmp_path / image.PUSHED_FILE).exists()


def test_push_refuses_insecure_with_docker() -> None:
    """--insecure is podman's; docker's insecure registries live in its daemon settings."""
    with pytest.raises(ImageError, match=r"daemon\.json"):
        image.push_command("docker", IMAGE.tags[0], insecure=True)


def test_pushed_digest_needs_a_digest_in_the_output() -> None:
    """Output without a digest is an error, not an empty digest."""
    with pytest.raises(ImageError, match="printed no digest"):
        image.pushed_digest("denied: requested access to the resource is denied")


def test_pushed_image_refuses_an_image_never_pushed_from_here(tmp_path: Path) -> None:
    """Deploying an image this machine never pushed says how to push it, or pass --image."""
    with pytest.raises(ImageError, match="invoke push"):
        image.pushed_image(tmp_path, IMAGE)


def test_main_prints_one_message_for_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m pyflow_kit.image` exits 1 with one line naming the problem, no traceback."""
    assert image.main(["build", "--engine", "kaniko"]) == 1
    assert capsys.readouterr().err == (
        "pyflow image: --engine='kaniko' is not an engine: use docker or podman\n"
    )
