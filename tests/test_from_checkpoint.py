"""Ranking straight from a checkpoint folder or a hub id: exported once into the cache, loaded from there after
(rerank_onnx/from_checkpoint.py). The hub is never reached: its cache is filled by hand and HF_HUB_OFFLINE=1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rerank_onnx import ModelLoadError, Reranker

QUERY = "what is a cat?"
DOCS = ["a cat is a feline", "bananas are yellow", "cats purr when happy"]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _rank(model: str, cache: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`rerank-onnx rank MODEL` in its own process, with its own cache."""
    return subprocess.Popen(
        [sys.executable, "-m", "rerank_onnx.cli", "rank", model, "--query", QUERY, "-", "--json"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RERANK_ONNX_CACHE_DIR": str(cache), **(env or {})},
    )


def _scores(ran: subprocess.Popen) -> tuple[list[float], str]:
    out, err = ran.communicate("\n".join(DOCS) + "\n", timeout=600)
    assert ran.returncode == 0, err
    return [row["score"] for row in sorted(json.loads(out), key=lambda row: row["index"])], err


def test_a_checkpoint_folder_is_exported_once_then_loaded(
    tiny_checkpoint: Path, int8_artifact: Path, tmp_path: Path, capsys
) -> None:
    cache = tmp_path / "cache"
    expected = Reranker(int8_artifact).predict([QUERY] * 3, DOCS)
    first = Reranker(tiny_checkpoint, cache_dir=cache)
    assert "exporting" in capsys.readouterr().err
    np.testing.assert_array_equal(first.predict([QUERY] * 3, DOCS), expected)  # the same artifact, to the bit
    (exported,) = (cache / "artifacts").glob("*/rerank_config.json")
    Reranker(tiny_checkpoint, cache_dir=cache)
    assert "exporting" not in capsys.readouterr().err  # the second load reads the cache
    assert list((cache / "artifacts").glob("*/rerank_config.json")) == [exported]


@pytest.mark.slow
def test_a_changed_checkpoint_is_exported_again(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    copy = Path(shutil.copytree(tiny_checkpoint, tmp_path / "ckpt"))
    cache = tmp_path / "cache"
    Reranker(copy, cache_dir=cache)
    config = copy / "config.json"
    config.write_text(config.read_text())  # new modification time: maybe new content
    capsys.readouterr()
    Reranker(copy, cache_dir=cache)
    assert "exporting" in capsys.readouterr().err
    assert len(list((cache / "artifacts").glob("*/rerank_config.json"))) == 2


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_hub_id_from_an_offline_hub_cache_and_two_processes_export_once(
    tiny_checkpoint: Path, int8_artifact: Path, tmp_path: Path
) -> None:
    hub = tmp_path / "hub"
    repo = hub / "models--acme--tiny-reranker"
    shutil.copytree(tiny_checkpoint, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub)}
    cache = tmp_path / "cache"
    both = [_rank("acme/tiny-reranker", cache, env), _rank("acme/tiny-reranker", cache, env)]  # at once
    results = [_scores(ran) for ran in both]
    assert sum("exporting" in err for _, err in results) == 1  # the other waited for the lock, then loaded
    expected = Reranker(int8_artifact).predict([QUERY] * 3, DOCS)
    for scores, _ in results:
        np.testing.assert_allclose(scores, expected, atol=1e-6)
    (exported,) = (cache / "artifacts").glob("*/rerank_config.json")
    assert exported.parent.name.startswith("acme--tiny-reranker-")
    config = json.loads(exported.read_text())
    assert config["source_model"] == "acme/tiny-reranker" and config["source_revision"] == COMMIT
    scores, err = _scores(_rank("acme/tiny-reranker", cache, env))
    assert "exporting" not in err


@pytest.mark.subprocess
def test_without_the_export_extra_a_checkpoint_is_one_clear_error(tiny_checkpoint: Path, tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "sys.modules['rerank_onnx_export'] = None\n"
        "from rerank_onnx.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, "rank", str(tiny_checkpoint), "--query", QUERY, "-"],
        input="a cat\n",
        capture_output=True,
        text=True,
        env={**os.environ, "RERANK_ONNX_CACHE_DIR": str(tmp_path)},
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "pip install 'rerank-onnx[export]'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_folder_that_is_neither_is_still_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"rerank_config\.json"):
        Reranker(tmp_path)


def test_a_hub_id_that_is_not_in_the_offline_cache_is_a_load_error(tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelLoadError, match="cannot export acme/absent: could not fetch 'acme/absent'"):
        Reranker("acme/absent", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "artifacts").exists() or not any((tmp_path / "cache" / "artifacts").iterdir())
