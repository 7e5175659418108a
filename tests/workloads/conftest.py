"""Session fixtures for the model tests: one trained tiny ViT, one Bento, one server.

Training (~15 s), a Bento build (~5 s) and starting `bentoml serve` (~5 s)
are each done once per session and shared.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dyff.tinymodels import Split, digits_splits

if TYPE_CHECKING:
    from tests.workloads.evaluation_fixtures import Platform

# Offline, no telemetry, and BentoML never touches the user's ~/bentoml. Set before
# anything imports bentoml, which reads BENTOML_HOME once.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["BENTOML_DO_NOT_TRACK"] = "true"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
_BENTOML_HOME = Path(tempfile.mkdtemp(prefix="dyff-test-bentoml-"))
os.environ["BENTOML_HOME"] = str(_BENTOML_HOME)


@pytest.fixture(scope="session", autouse=True)
def _cleanup_bentoml_home() -> Iterator[None]:
    yield
    shutil.rmtree(_BENTOML_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def bentoml_home() -> Path:
    return _BENTOML_HOME


@pytest.fixture(scope="session")
def digits_test() -> Split:
    """The held-out digits (RGB uint8 8x8 images and labels)."""
    return digits_splits()[1]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ~18k-parameter ViT trained on the digits (read-only: copy before changing)."""
    from dyff.tinymodels import train_tiny_vit

    return train_tiny_vit(tmp_path_factory.mktemp("tiny-vit") / "model")


@pytest.fixture(scope="session")
def tiny_bento(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model packaged by dyff and exported (a tar.gz Bento archive)."""
    from dyff.models import package_transformers

    return package_transformers(tiny_model_dir, tmp_path_factory.mktemp("tiny-bento"))


@pytest.fixture(scope="session")
def platform(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_bento: Path
) -> Platform:
    """The session's evaluation platform (`shared_platform`): the tiny model and the
    datasets, public, in account OWNER. Modules with a platform of their own override it."""
    from tests.workloads.evaluation_fixtures import shared_platform

    return shared_platform(tmp_path_factory, tiny_model_dir, tiny_bento)


@pytest.fixture(scope="session")
def served_tiny(tiny_bento: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of `bentoml serve` running the tiny Bento on loopback."""
    from dyff.runtime.serve import serve_bento

    home = tmp_path_factory.mktemp("serve-home")
    with serve_bento(tiny_bento, bentoml_home=home, workdir=home / "work") as url:
        yield url
