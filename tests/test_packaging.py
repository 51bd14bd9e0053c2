"""A release that says what it is: one version, the license, dependency ranges that the two
lock files sit at the ends of, docs that install from the repository."""

import configparser
import re

import pytest
from conftest import ROOT
from packaging.requirements import Requirement
from packaging.version import Version

import maskproxy_losses


def _install_requires():
    from setuptools.config.setupcfg import read_configuration

    options = read_configuration(ROOT / "setup.cfg")["options"]
    return [Requirement(r) for r in options["install_requires"]], {
        extra: [Requirement(r) for r in reqs] for extra, reqs in options["extras_require"].items()
    }


def _lock(name):
    pins = {}
    for line in (ROOT / "requirements" / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[req.name.lower().replace("_", "-").replace(".", "-")] = Version(spec.version)
    return pins


def _key(name):
    return name.lower().replace("_", "-").replace(".", "-")


def test_one_version_everywhere(cli):
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["metadata"]["version"] == "attr: maskproxy_losses.__version__"
    code, out, _ = cli("--version")
    assert code == 0 and out.strip() == f"maskproxy {maskproxy_losses.__version__}"
    code, out, _ = cli("embed", "--version")
    assert out.strip() == f"maskproxy {maskproxy_losses.__version__}"
    changelog = (ROOT / "CHANGELOG.md").read_text()
    first = re.search(r"^## (\S+)", changelog, re.M).group(1)
    assert first == maskproxy_losses.__version__
    section = changelog.split("\n## ")[1]
    assert "metrics.json" in section and "requirements/lock.txt" in section


def test_license_file_is_the_declared_one():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["metadata"]["license"] == "Apache-2.0"
    assert cfg["metadata"]["license_files"].strip() == "LICENSE"
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_ranges_and_the_locks_at_their_ends():
    requires, extras = _install_requires()
    assert not [r for r in requires if str(r).startswith("#")]  # comments are not requirements
    newest, lowest = _lock("lock.txt"), _lock("lock-lowest.txt")
    direct = requires + extras["test"]
    for req in direct:
        for lock in (newest, lowest):
            assert lock[_key(req.name)] in req.specifier, (req, lock[_key(req.name)])
    for req in extras["pyannote"]:  # in the tested environment only (needs torch >= 2.8)
        assert newest[_key(req.name)] in req.specifier
    by_name = {_key(r.name): r for r in requires}
    for name in ("torch", "torchaudio", "speechbrain"):  # each lower bound is tested
        (low,) = [s for s in by_name[name].specifier if s.operator == ">="]
        assert lowest[name] == Version(low.version), name
    assert lowest["torch"] == Version("2.7.1")  # the lowest SpeechBrain 1.1.2 allows
    for lock in (newest, lowest):  # torch and torchaudio: one release pair
        assert lock["torch"].release[:2] == lock["torchaudio"].release[:2]
    assert str(by_name["speechbrain"].specifier) in ("<1.2,>=1.1.2", ">=1.1.2,<1.2")


def test_the_running_torch_pair_matches():
    import torch
    import torchaudio

    def minor(v):
        return Version(v.split("+")[0]).release[:2]

    assert minor(torch.__version__) == minor(torchaudio.__version__)


@pytest.mark.parametrize("path", sorted(p.name for p in (ROOT / "docs").glob("*.md")))
def test_docs_install_from_the_repository(path):
    text = (ROOT / "docs" / path).read_text()
    assert "../shared" not in text
    assert not re.search(r"pip install \S*maskproxy-losses", text)  # not on a package index


def test_readme_installs_from_the_lock():
    readme = (ROOT / "README.md").read_text()
    assert "requirements/lock.txt" in readme and "pip install ." in readme
    setup = (ROOT / "scripts" / "setup_env.sh").read_text()
    assert 'LOCK="${LOCK:-$ROOT/requirements/lock.txt}"' in setup and '-r "$LOCK"' in setup
    assert "--no-deps -e" in setup  # the project itself adds nothing beyond the lock
