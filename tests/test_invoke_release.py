"""Tests of the image, pool, release and Google Cloud set-up tasks in tasks.py: exact commands."""

from __future__ import annotations

import inspect
import json
import re
import tempfile
from pathlib import Path

import pytest
from invoke import Config, Exit, MockContext, Result

import tasks

ROOT = tasks.ROOT

pytestmark = pytest.mark.usefixtures("without_venv")
POETRY = "poetry"
TEST_HOME = Path(tempfile.mkdtemp(prefix="pyflow-invoke-tests-")) / ".prefect"
"""The Prefect home these tests give the tasks: `invoke push` records its digests there."""
SETTINGS = "poetry run python -m pyflow.config json"
GAR = "us-central1-docker.pkg.dev/acme-prod/pyflow/pyflow"
VERSION = tasks.project_version()
DIGEST = "sha256:" + "ab" * 32


def settings(**changes: str) -> str:
    """Return the JSON `python -m pyflow.config json` prints, with some keys changed."""
    data = {
        "gcp_project": "acme-prod",
        "image_name": "pyflow",
        "image_repository": GAR,
    } | changes
    return json.dumps(data)


def mock_context(extra: dict[str, Result] | None = None, **setting_changes: str) -> MockContext:
    """Return a MockContext with the project's settings, a clean commit abc1234 and any extra results.

    Commands not listed succeed with no output.
    """
    config = Config(
        overrides={
            "pyflow": {"poetry": POETRY, "podman_isolation": "", "home": str(TEST_HOME)},
            "run": {"echo": True},
        }
    )
    results = {
        SETTINGS: Result(stdout=settings(**setting_changes)),
        "git rev-parse --short=7 HEAD": Result(stdout="abc1234\n"),
        "git status --porcelain --untracked-files=no": Result(stdout=""),
    } | (extra or {})
    results[re.compile(".*")] = Result()  # any other command (build, push) succeeds
    return MockContext(config=config, run=results, repeat=True)


def commands(c: MockContext) -> list[str]:
    """Return the commands a MockContext was asked to run, in order."""
    return [call.args[0] for call in c.run.call_args_list]


@pytest.fixture(autouse=True)
def engines_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend docker and podman are on PATH, and pip's index is a known one."""
    monkeypatch.setattr(tasks.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(tasks, "pip_index_url", lambda: "https://index.test/simple")


def size_result(engine: str, tag: str) -> dict[str, Result]:
    """Return the result of the size query `invoke build` makes at the end."""
    return {f"{engine} image inspect --format '{{{{.Size}}}}' {tag}": Result(stdout="485000000\n")}


def test_build_tags_the_artifact_registry_image_with_version_and_commit(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`invoke build` builds with docker, tags version and commit, labels them, and reports the size."""
    c = mock_context(size_result("docker", f"{GAR}:{VERSION}"))
    tasks.build(c)
    assert commands(c) == [
        SETTINGS,
        "git rev-parse --short=7 HEAD",
        "git status --porcelain --untracked-files=no",
        "docker build --build-arg PIP_INDEX_URL=https://index.test/simple "
        f"--label org.opencontainers.image.version={VERSION} "
        "--label org.opencontainers.image.revision=abc1234 "
        f"--tag {GAR}:{VERSION} --tag {GAR}:abc1234 {ROOT}",
        f"docker image inspect --format '{{{{.Size}}}}' {GAR}:{VERSION}",
    ]
    assert c.run.call_args_list[3].kwargs["env"] == {"DOCKER_BUILDKIT": "1"}
    assert f"Built {GAR}:{VERSION} and {GAR}:abc1234: 485 MB in " in capsys.readouterr().out


def test_build_with_podman_passes_base_image_secrets_index_and_isolation(tmp_path: Path) -> None:
    """Every flag reaches `podman build`; the registry override replaces Artifact Registry's path."""
    ca = tmp_path / "ca bundle.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    repository = "127.0.0.1:5000/test/pyflow"
    c = mock_context(size_result("podman", f"{repository}:{VERSION}"))
    tasks.build(
        c,
        engine="podman",
        base_image="localhost/pyflow-base:bookworm",
        secret=[f"ca={ca}"],
        index_url="https://mirror.test/simple",
        isolation="chroot",
        registry="127.0.0.1:5000/test/",
    )
    assert commands(c)[3] == (
        "podman build --isolation chroot --build-arg BASE_IMAGE=localhost/pyflow-base:bookworm "
        "--build-arg PIP_INDEX_URL=https://mirror.test/simple "
        f"--secret 'id=ca,src={ca}' "
        f"--label org.opencontainers.image.version={VERSION} "
        "--label org.opencontainers.image.revision=abc1234 "
        f"--tag {repository}:{VERSION} --tag {repository}:abc1234 {ROOT}"
    )
    assert c.run.call_args_list[3].kwargs["env"] == {}


def test_build_takes_the_engine_from_the_settings_and_isolation_from_invoke_config() -> None:
    """PYFLOW_CONTAINER_ENGINE picks podman, and pyflow.podman_isolation its isolation."""
    c = mock_context(size_result("podman", f"{GAR}:{VERSION}"), container_engine="podman")
    c.config.pyflow.podman_isolation = "chroot"
    tasks.build(c)
    assert commands(c)[3].startswith("podman build --isolation chroot --build-arg PIP_INDEX_URL=")


def test_build_marks_a_commit_with_uncommitted_changes_dirty() -> None:
    """Changes to tracked files make the commit tag abc1234-dirty."""
    c = mock_context(
        {
            "git status --porcelain --untracked-files=no": Result(stdout=" M pyflow/flow.py\n"),
            **size_result("docker", f"{GAR}:{VERSION}"),
        }
    )
    tasks.build(c)
    assert commands(c)[3].endswith(f"--tag {GAR}:{VERSION} --tag {GAR}:abc1234-dirty {ROOT}")


@pytest.mark.parametrize(
    ("kwargs", "changes", "message"),
    [
        (
            {},
            {"image_repository": "us-central1-docker.pkg.dev/your-project-id/pyflow/pyflow"},
            "PYFLOW_GCP_PROJECT",
        ),
        ({"engine": "rkt"}, {}, "--engine='rkt' is not an engine"),
        ({}, {"container_engine": "buildah"}, "PYFLOW_CONTAINER_ENGINE='buildah'"),
        ({"secret": ["ca"]}, {}, "is not ID=PATH"),
        ({"secret": ["ca=/no/such/file.crt"]}, {}, "does not exist"),
        ({"isolation": "chroot"}, {}, "--isolation is a podman option"),
    ],
)
def test_build_refuses_bad_settings_and_flags_before_building(
    kwargs: dict, changes: dict[str, str], message: str
) -> None:
    """A placeholder project, an unknown engine, a bad secret or a docker-only misuse stop the build."""
    c = mock_context(**changes)
    with pytest.raises(Exit, match=message.replace("(", r"\(")):
        tasks.build(c, **kwargs)
    assert not any(" build " in command for command in commands(c))


def test_build_refuses_a_missing_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the engine's binary, `invoke build` says so and runs nothing."""
    monkeypatch.setattr(tasks.shutil, "which", lambda name: None)
    c = mock_context()
    with pytest.raises(Exit, match="podman is not installed"):
        tasks.build(c, engine="podman")
    assert commands(c) == [SETTINGS]


def test_build_refuses_a_version_that_is_not_a_valid_tag(monkeypatch: pytest.MonkeyPatch) -> None:
    """A version such as 1.0+local (`+` is not allowed in a tag) stops the build."""
    monkeypatch.setattr(tasks, "project_version", lambda: "1.0+local")
    c = mock_context()
    with pytest.raises(Exit, match=r"'1.0\+local', is not a valid image tag"):
        tasks.build(c)


def test_build_stops_on_invalid_settings() -> None:
    """When the settings do not validate, their error is the message."""
    c = mock_context({SETTINGS: Result(exited=2, stderr="pyflow: invalid settings: X\n")})
    with pytest.raises(Exit, match="pyflow: invalid settings: X"):
        tasks.build(c)


def test_push_with_podman_pushes_both_tags_and_prints_the_digest(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`invoke push --engine podman --insecure` skips TLS checks and reads the digest podman wrote."""
    (tmp_path / "digest").write_text(DIGEST)
    monkeypatch.setattr(tasks.tempfile, "mkdtemp", lambda prefix: str(tmp_path))
    repository = "127.0.0.1:5000/pyflow"
    c = mock_context()
    tasks.push(c, engine="podman", registry="127.0.0.1:5000", insecure=True)
    digest_file = tmp_path / "digest"
    assert commands(c)[3:] == [
        f"podman push --tls-verify=false --digestfile {digest_file} {repository}:abc1234",
        f"podman push --tls-verify=false --digestfile {digest_file} {repository}:{VERSION}",
    ]
    out = capsys.readouterr().out
    assert f"Pushed {repository}:{VERSION} as {repository}@{DIGEST}" in out
    assert f"Pushed {repository}:abc1234 as {repository}@{DIGEST}" in out


def test_push_with_docker_reads_the_digest_from_its_output(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`invoke push` with docker pushes to Artifact Registry and parses the digest it printed."""
    output = f"abc1234: digest: {DIGEST} size: 1573\n"
    c = mock_context(
        {
            f"docker push {GAR}:{VERSION}": Result(
                stdout=f"{VERSION}: digest: {DIGEST} size: 1573\n"
            ),
            f"docker push {GAR}:abc1234": Result(stdout=output),
        }
    )
    tasks.push(c)
    assert commands(c)[3:] == [f"docker push {GAR}:abc1234", f"docker push {GAR}:{VERSION}"]
    assert f"Pushed {GAR}:abc1234 as {GAR}@{DIGEST}" in capsys.readouterr().out


def test_push_fails_when_docker_prints_no_digest() -> None:
    """A push whose output has no digest is an error, not a silent success."""
    c = mock_context({f"docker push {GAR}:abc1234": Result(stdout="pushed?\n")})
    with pytest.raises(Exit, match="printed no digest"):
        tasks.push(c)


def test_push_refuses_insecure_with_docker() -> None:
    """--insecure is podman's; with docker it explains where docker takes it from."""
    c = mock_context()
    with pytest.raises(Exit, match=r"daemon\.json"):
        tasks.push(c, insecure=True)


@pytest.mark.parametrize(
    ("version", "commit", "valid"),
    [
        ("0.1.0", "abc1234", True),
        ("0.1.0", "abc1234-dirty", True),
        ("1.0+local", "abc1234", False),
        ("0.1.0", "-x", False),
        ("0.1.0", "a" * 129, False),
    ],
)
def test_image_tags_accept_only_valid_tags(version: str, commit: str, valid: bool) -> None:
    """Tags are letters, digits, `_`, `.` and `-`, at most 128, not starting with `.` or `-`."""
    if valid:
        assert tasks.image_tags("r/i", version, commit) == [f"r/i:{version}", f"r/i:{commit}"]
    else:
        with pytest.raises(ValueError, match="is not a valid image tag"):
            tasks.image_tags("r/i", version, commit)


def test_every_image_task_flag_is_documented_with_its_default() -> None:
    """Every flag of build, push, release, deploy and gcp-setup has a help string with its default."""
    for task in (tasks.build, tasks.push, tasks.release, tasks.deploy, tasks.gcp_setup):
        assert task.__doc__ and task.__doc__.strip()
        flags = [name for name in inspect.signature(task.body).parameters if name != "c"]
        assert {name.replace("-", "_") for name in task.help} == set(flags), task.name
        for text in task.help.values():
            assert "default" in text, f"{task.name}: {text}"


# --- invoke pool, invoke deploy --env production -----------------------------------------

HOME = tasks.shlex.quote(str(TEST_HOME))
PRODUCTION = {"env": "production", "work_pool": "pyflow-kubernetes"}


def test_pool_creates_the_kubernetes_pool_with_production_settings() -> None:
    """`invoke pool` runs the pool registration with PREFECT_FLOW_ENV=production."""
    c = mock_context()
    tasks.pool(c)
    assert commands(c) == [f"poetry run python -m pyflow.deploy --pool-only --home {HOME}"]
    assert c.run.call_args.kwargs["env"] == {"PREFECT_FLOW_ENV": "production"}


def test_deploy_production_uses_the_image_this_machine_pushed(tmp_path: Path) -> None:
    """Without --image, production deploys the version tag `invoke push` recorded, by digest."""
    c = mock_context(
        {
            SETTINGS: Result(stdout=settings(**PRODUCTION)),
            f"docker push {GAR}:abc1234": Result(stdout=f"abc1234: digest: {DIGEST} size: 1\n"),
            f"docker push {GAR}:{VERSION}": Result(stdout=f"{VERSION}: digest: {DIGEST} size: 1\n"),
        }
    )
    c.config.pyflow.home = str(tmp_path)
    tasks.push(c)
    tasks.deploy(c, env="production")
    assert json.loads((tmp_path / tasks.PUSHED_FILE).read_text()) == {
        f"{GAR}:abc1234": DIGEST,
        f"{GAR}:{VERSION}": DIGEST,
    }
    assert commands(c)[-1] == (
        f"poetry run python -m pyflow.deploy --home {tmp_path} "
        f"--image {GAR}:{VERSION}@{DIGEST} --version {VERSION}"
    )
    assert c.run.call_args.kwargs["env"] == {"PREFECT_FLOW_ENV": "production"}


def test_deploy_production_refuses_an_image_never_pushed(tmp_path: Path) -> None:
    """Without a pushed image, production deploy says how to push one, or to pass --image."""
    c = mock_context({SETTINGS: Result(stdout=settings(**PRODUCTION))})
    c.config.pyflow.home = str(tmp_path)
    with pytest.raises(
        Exit, match=r"has not been pushed from here: run `invoke build` and `invoke push`"
    ):
        tasks.deploy(c, env="production")
    assert not any("pyflow.deploy" in command for command in commands(c))


# --- invoke release ----------------------------------------------------------------------

CHECK_SETTINGS = "poetry run python -m pyflow.release settings"
CHECK_PREFECT = "poetry run python -m pyflow.release prefect"


def check_registry(version: str = "1.2.3", commit: str = "abc1234") -> str:
    """Return the registry check command for a version and commit."""
    return f"poetry run python -m pyflow.release registry --version {version} --commit {commit}"


@pytest.fixture(autouse=True)
def project_at_1_2_3(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Give pyproject.toml's version as 1.2.3 for the release tests, as a release commit would."""
    if request.node.name.startswith("test_release_"):
        monkeypatch.setattr(tasks, "project_version", lambda: "1.2.3")


def release_context(**results: Result) -> MockContext:
    """Return a MockContext for a clean tree tagged v1.2.3 whose checks all pass."""
    return mock_context(
        {
            "git status --porcelain --untracked-files=no": Result(stdout=""),
            "git describe --exact-match --tags HEAD": Result(stdout="v1.2.3\n"),
            SETTINGS: Result(stdout=settings(**PRODUCTION)),
            CHECK_SETTINGS: Result(stdout=json.dumps({"image": GAR})),
            check_registry(): Result(stdout=json.dumps({"action": "build", "digest": None})),
            CHECK_PREFECT: Result(stdout=json.dumps({"ui_url": "https://app.prefect.test"})),
            f"docker push {GAR}:1.2.3": Result(stdout=f"1.2.3: digest: {DIGEST} size: 1\n"),
            f"docker push {GAR}:abc1234": Result(stdout=f"abc1234: digest: {DIGEST} size: 1\n"),
            **size_result("docker", f"{GAR}:1.2.3"),
            **results,
        }
    )


DEPLOY = (
    f"poetry run python -m pyflow.deploy --home {HOME} --image {GAR}:1.2.3@{DIGEST} --version 1.2.3"
)


def test_release_checks_then_builds_pushes_and_deploys(capsys: pytest.CaptureFixture[str]) -> None:
    """A clean tree at a semver tag passes every check, then builds, pushes and deploys."""
    c = release_context()
    tasks.release(c)
    ran = commands(c)
    order = [
        "git status --porcelain --untracked-files=no",
        "git describe --exact-match --tags HEAD",
        CHECK_SETTINGS,
        check_registry(),
        CHECK_PREFECT,
        f"docker push {GAR}:abc1234",
        f"docker push {GAR}:1.2.3",
        DEPLOY,
    ]
    remaining = iter(ran)
    assert all(command in remaining for command in order), ran
    [build] = [command for command in ran if command.startswith("docker build")]
    assert ran.index(CHECK_PREFECT) < ran.index(build) < ran.index(f"docker push {GAR}:abc1234")
    assert f"--tag {GAR}:1.2.3 --tag {GAR}:abc1234" in build
    assert all(
        call.kwargs.get("env") == {"PREFECT_FLOW_ENV": "production"}
        for call in c.run.call_args_list
        if call.args[0] in (CHECK_SETTINGS, check_registry(), CHECK_PREFECT, DEPLOY)
    )
    out = capsys.readouterr().out
    assert f"Released 1.2.3:\n  image:       {GAR}:1.2.3 ({DIGEST})" in out
    assert "Prefect UI:  https://app.prefect.test" in out


@pytest.mark.parametrize(
    ("results", "message"),
    [
        (
            {"git status --porcelain --untracked-files=no": Result(stdout=" M pyflow/flow.py\n")},
            "uncommitted changes",
        ),
        ({"git describe --exact-match --tags HEAD": Result(exited=128)}, "HEAD has no tag"),
        (
            {"git describe --exact-match --tags HEAD": Result(stdout="release-5\n")},
            "the tag 'release-5' is not a semantic version",
        ),
        ({CHECK_SETTINGS: Result(exited=1)}, "check 'every production setting is set'"),
        ({check_registry(): Result(exited=1)}, f"check 'Artifact Registry can take {GAR}:1.2.3'"),
        ({CHECK_PREFECT: Result(exited=1)}, "check 'the Prefect API answers and accepts the key'"),
    ],
)
def test_release_stops_before_building_when_a_check_fails(
    results: dict[str, Result], message: str
) -> None:
    """A dirty tree, a missing or non-semver tag, or a failed check stops it with one message."""
    c = release_context(**results)
    with pytest.raises(Exit, match=re.escape(message)):
        tasks.release(c)
    ran = commands(c)
    assert not [command for command in ran if " build " in command or " push " in command]
    assert DEPLOY not in ran


def test_release_reuses_the_image_an_earlier_attempt_pushed() -> None:
    """Re-run after a failed deploy, it skips build and push and deploys the pushed digest."""
    c = release_context(
        **{check_registry(): Result(stdout=json.dumps({"action": "reuse", "digest": DIGEST}))}
    )
    tasks.release(c)
    ran = commands(c)
    assert not [command for command in ran if command.startswith(("docker build", "docker push"))]
    assert ran[-1] == DEPLOY


def test_release_dry_run_prints_the_plan_without_acting(capsys: pytest.CaptureFixture[str]) -> None:
    """--dry-run runs the checks, and passes build, push and deploy to invoke as dry runs."""
    c = release_context(
        **{f"{check_registry()} --dry-run": Result(stdout=json.dumps({"action": "build"}))}
    )
    tasks.release(c, dry_run=True)
    assert f"{check_registry()} --dry-run" in commands(c)
    acting = [
        call
        for call in c.run.call_args_list
        if call.args[0].startswith(
            ("docker build", "docker push", "poetry run python -m pyflow.deploy")
        )
    ]
    assert len(acting) == 4
    assert all(call.kwargs.get("dry") for call in acting)
    assert "Planned 1.2.3:" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("tag", "version"), [("1.2.3", "1.2.3"), ("v1.2.3", "1.2.3"), ("v2.0.0-rc.1", "2.0.0-rc.1")]
)
def test_release_version_reads_semver_tags(tag: str, version: str) -> None:
    """Tags 1.2.3 and v1.2.3 (and pre-releases) give the version."""
    assert tasks.release_version(tag) == version


@pytest.mark.parametrize("tag", ["1.2", "version-1.2.3", "v1.2.3.4", "latest"])
def test_release_version_refuses_other_tags(tag: str) -> None:
    """Any other tag is refused with the form to use."""
    with pytest.raises(ValueError, match=re.escape("tag the release 1.2.3 or v1.2.3")):
        tasks.release_version(tag)


# --- invoke gcp-setup --------------------------------------------------------------------

GCP = {
    "gcp_project": "acme-data",
    "github_repository": "acme/pyflow",
    "gcp_region": "us-central1",
    "artifact_repository": "pyflow",
    "release_service_account": "pyflow-release",
}
NUMBER = "123456789012"


def gcp_context(existing: set[str], **results: Result) -> MockContext:
    """Return a MockContext where the described resources in ``existing`` exist."""
    values = tasks.gcp_values(GCP)
    answers = {
        SETTINGS: Result(stdout=settings(**GCP)),
        tasks.project_number_command("acme-data"): Result(stdout=NUMBER + "\n"),
    }
    for step in tasks.gcp_plan(values, NUMBER):
        if step.describe:
            answers[step.describe] = Result(
                exited=0 if any(k in step.describe for k in existing) else 1
            )
    return mock_context({**answers, **results})


def test_gcp_setup_restricts_the_provider_to_the_one_github_repository() -> None:
    """The OIDC provider trusts GitHub's tokens only from this repository."""
    [provider] = [
        s for s in tasks.gcp_plan(tasks.gcp_values(GCP), NUMBER) if "create-oidc" in s.create
    ]
    assert "--issuer-uri=https://token.actions.githubusercontent.com" in provider.create
    assert "--attribute-condition=\"assertion.repository=='acme/pyflow'\"" in provider.create


def test_gcp_setup_grants_least_privilege() -> None:
    """The workflows may act as the account, and the account may write to one repository only."""
    bindings = [
        s.create
        for s in tasks.gcp_plan(tasks.gcp_values(GCP), NUMBER)
        if "add-iam-policy-binding" in s.create
    ]
    assert bindings == [
        "gcloud iam service-accounts add-iam-policy-binding "
        "pyflow-release@acme-data.iam.gserviceaccount.com --project=acme-data "
        "--role=roles/iam.workloadIdentityUser --member=principalSet://iam.googleapis.com/"
        f"projects/{NUMBER}/locations/global/workloadIdentityPools/github-actions/"
        "attribute.repository/acme/pyflow",
        "gcloud artifacts repositories add-iam-policy-binding pyflow --project=acme-data "
        "--location=us-central1 --role=roles/artifactregistry.writer "
        "--member=serviceAccount:pyflow-release@acme-data.iam.gserviceaccount.com",
    ]


def test_gcp_setup_skips_what_exists_and_creates_the_rest(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A resource whose describe succeeds is skipped; the others are created; bindings always run."""
    monkeypatch.setattr(tasks.shutil, "which", lambda name: f"/usr/bin/{name}")
    c = gcp_context({"service-accounts describe", "repositories describe"})
    tasks.gcp_setup(c)
    ran = commands(c)
    plan = tasks.gcp_plan(tasks.gcp_values(GCP), NUMBER)
    skipped = [
        s.create
        for s in plan
        if s.describe
        and ("service-accounts describe" in s.describe or "repositories describe" in s.describe)
    ]
    created = [s.create for s in plan if s.create not in skipped]
    assert len(skipped) == 2 and not set(skipped) & set(ran)
    assert [command for command in ran if command in created] == created
    out = capsys.readouterr().out
    assert (
        "exists, skipped: service account pyflow-release@acme-data.iam.gserviceaccount.com" in out
    )
    assert (
        f"GCP_WORKLOAD_IDENTITY_PROVIDER=projects/{NUMBER}/locations/global/workloadIdentityPools/github-actions/providers/pyflow"
        in out
    )


def test_gcp_setup_dry_run_prints_every_command_and_runs_no_gcloud(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--dry-run prints the commands with the user's values and runs nothing but the settings read."""
    c = gcp_context(set())
    tasks.gcp_setup(c, dry_run=True)
    assert commands(c) == [SETTINGS]
    printed = capsys.readouterr().out
    assert "gcloud artifacts repositories create pyflow --project=acme-data" in printed
    assert "PROJECT_NUMBER" in printed


def test_gcp_setup_refuses_placeholders() -> None:
    """The placeholder project or GitHub repository stops it, naming both settings."""
    c = mock_context(
        {
            SETTINGS: Result(
                stdout=settings(
                    **{
                        **GCP,
                        "gcp_project": "your-project-id",
                        "github_repository": "your-org/your-repo",
                    }
                )
            )
        }
    )
    with pytest.raises(
        Exit, match="PYFLOW_GCP_PROJECT is still 'your-project-id'; PYFLOW_GITHUB_REPOSITORY"
    ):
        tasks.gcp_setup(c)
    assert commands(c) == [SETTINGS]


def test_release_stops_when_the_tag_and_pyproject_disagree(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tag whose version is not pyproject.toml's stops the release, saying how to fix it."""
    c = release_context()
    monkeypatch.setattr(tasks, "project_version", lambda: "1.2.2")
    with pytest.raises(
        Exit, match=r"the tag says 1\.2\.3 but pyproject\.toml says 1\.2\.2: set the version"
    ):
        tasks.release(c)
    assert CHECK_SETTINGS not in commands(c)


def test_release_dry_run_without_a_tag_plans_the_pyproject_version(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """On a fresh clone (no tag), a dry run plans the version in pyproject.toml."""
    c = release_context(**{"git describe --exact-match --tags HEAD": Result(exited=128)})
    tasks.release(c, dry_run=True)
    out = capsys.readouterr().out
    assert "dry run: HEAD has no tag, so this plans version 1.2.3 from pyproject.toml" in out
    assert "Planned 1.2.3:" in out


def test_masked_hides_credentials_in_urls() -> None:
    """An index URL with a token is echoed with the token hidden."""
    command = "docker build --build-arg PIP_INDEX_URL=https://user:s3cr3t@pypi.corp.test/simple ."
    assert (
        tasks.masked(command)
        == "docker build --build-arg PIP_INDEX_URL=https://***@pypi.corp.test/simple ."
    )
