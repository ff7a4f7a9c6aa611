"""deploy/: every burstq command line parses against the real CLI, and the manifests are
valid YAML with the fields Kubernetes requires (no cluster needed)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer

from burstcli.cli import app
from burstcli.config import Shard

try:  # Typer vendors click from 0.2x on
    from click.exceptions import UsageError as ClickUsageError
except ImportError:  # pragma: no cover - depends on the Typer release
    from typer._click.exceptions import UsageError as ClickUsageError  # type: ignore[no-redef]

yaml = pytest.importorskip("yaml", reason="pyyaml is a dev dependency")

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))


def docs() -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                out.append((path, doc))
    return out


def parse_burstq(argv: list[str]) -> Any:
    """Parse like the real CLI would (types, ranges, unknown flags), without running it."""
    group: Any = typer.main.get_command(app)
    ctx = group.make_context("burstq", list(argv), resilient_parsing=False)
    args = _rest(ctx)
    sub: Any = ctx
    cmd: Any = group
    while hasattr(cmd, "commands") and args:
        name, args = args[0], args[1:]
        found = cmd.get_command(sub, name)
        assert found is not None, f"burstq has no command {name!r}: {argv}"
        cmd = found
        sub = cmd.make_context(name, args, parent=sub)
        args = _rest(sub)
    assert not args, f"unexpected arguments {args}: {argv}"
    return sub


def _rest(ctx: Any) -> list[str]:
    # A group's context keeps the subcommand and its arguments (click 8.2 renamed the field).
    protected = getattr(ctx, "_protected_args", None)
    if protected is None:
        protected = getattr(ctx, "protected_args", [])
    return list(protected) + list(ctx.args)


def _expand(arg: str) -> str:
    return arg.replace("$(JOB_COMPLETION_INDEX)", "0")


def pod_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    kind, spec = doc["kind"], doc.get("spec", {})
    if kind in ("Deployment", "Job"):
        return [spec["template"]["spec"]]
    if kind == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]["spec"]]
    return []


def burstq_commands() -> list[tuple[str, list[str], dict[str, Any]]]:
    found = []
    for path, doc in docs():
        for pod in pod_specs(doc):
            for c in pod["containers"]:
                if not c["image"].startswith("burstq"):
                    continue
                if "command" in c:  # a shell line: every `burstq ...` in it
                    for line in c.get("args", []):
                        for part in re.split(r"&&|;|\|\|", line):
                            tokens = shlex.split(part)
                            if tokens and tokens[0] == "burstq":
                                found.append((path.name, tokens[1:], doc))
                else:  # the image's entrypoint is burstq
                    found.append((path.name, [_expand(a) for a in c["args"]], doc))
    return found


def test_every_burstq_command_line_parses_against_the_cli() -> None:
    commands = burstq_commands()
    assert {name for name, _, _ in commands} >= {"indexed-job.yaml", "cronjob.yaml"}
    for name, argv, doc in commands:
        ctx = parse_burstq(argv)
        shard = ctx.params.get("shard")
        if shard:
            spec = Shard.parse(shard, {"JOB_COMPLETION_INDEX": "0"})
            if shard.startswith("auto/"):  # the Indexed Job runs exactly N pods
                assert doc["spec"]["completionMode"] == "Indexed", name
                assert doc["spec"]["completions"] == spec.count, name


def test_dockerfile_example_parses_and_image_is_non_root() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r'^ENTRYPOINT \["burstq"\]$', text, re.M)
    assert re.search(r"^FROM python:3\.\d+-slim", text, re.M)
    user = re.findall(r"^USER (\S+)$", text, re.M)
    assert user and user[-1] not in ("root", "0")
    runs = [ln for ln in text.splitlines() if "docker run" in ln]
    assert runs
    for ln in runs:
        tokens = shlex.split(ln.lstrip("# "))
        parse_burstq(tokens[tokens.index("burstq") + 1 :])


def test_a_stale_flag_would_be_caught() -> None:
    with pytest.raises(ClickUsageError, match="no-such-flag"):
        parse_burstq(["run", "in.jsonl", "--no-such-flag"])
    with pytest.raises(ClickUsageError, match="valid number"):
        parse_burstq(["run", "in.jsonl", "--rpm", "fast"])
    with pytest.raises(AssertionError, match="no command"):
        parse_burstq(["limiter", "stats", "redis://x"])


REQUIRED = {
    "Deployment": ["spec.selector.matchLabels", "spec.template.metadata.labels"],
    "Service": ["spec.ports"],
    "Job": ["spec.template.spec.containers", "spec.template.spec.restartPolicy"],
    "CronJob": ["spec.schedule", "spec.jobTemplate.spec.template.spec.containers"],
    "Secret": [],
    "PersistentVolumeClaim": ["spec.accessModes", "spec.resources.requests.storage"],
}


def _get(doc: dict[str, Any], dotted: str) -> Any:
    cur: Any = doc
    for part in dotted.split("."):
        assert isinstance(cur, dict) and part in cur, f"missing {dotted}"
        cur = cur[part]
    return cur


def test_manifests_have_the_fields_kubernetes_requires() -> None:
    all_docs = docs()
    assert len(MANIFESTS) >= 4
    names: dict[str, set[str]] = {}
    for path, doc in all_docs:
        for field in ("apiVersion", "kind", "metadata"):
            assert field in doc, f"{path.name}: no {field}"
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])
        kind = doc["kind"]
        assert kind in REQUIRED, f"{path.name}: unexpected kind {kind}"
        for dotted in REQUIRED[kind]:
            assert _get(doc, dotted), f"{path.name}: empty {dotted}"
        names.setdefault(kind, set()).add(doc["metadata"]["name"])
        if kind == "Deployment":
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items()
        if kind == "Secret":
            assert "data" in doc or "stringData" in doc
        for pod in pod_specs(doc):
            if kind != "Deployment":
                assert pod["restartPolicy"] in ("Never", "OnFailure"), path.name
            for c in pod["containers"]:
                assert c["name"] and c["image"], path.name
    # Every reference resolves to something deploy/ defines.
    for path, doc in all_docs:
        for pod in pod_specs(doc):
            for c in pod["containers"]:
                for env in c.get("env", []):
                    ref = env.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        assert ref["name"] in names["Secret"], path.name
            for vol in pod.get("volumes", []):
                if "persistentVolumeClaim" in vol:
                    claim = vol["persistentVolumeClaim"]["claimName"]
                    assert claim in names["PersistentVolumeClaim"], path.name
    # The limiter URL the pods name is the Service deploy/ defines.
    for _, argv, _ in burstq_commands():
        if "--limiter" in argv:
            host = argv[argv.index("--limiter") + 1].split("//")[1].split(":")[0]
            assert host in names["Service"]
