"""Long prompts: computed in slices that attend to the slices before, so memory stays bounded; scores
equal one-piece runs on the tiny exported graph, and a subprocess bounds the memory (the slicing plan
itself is tested on a fake in test_scorer.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ENGINES

from rerank_onnx import Reranker


def test_sliced_scores_equal_one_piece_scores_on_the_graph(fp32_artifact: Path) -> None:
    query = "where do rivers flood in spring?"
    documents = ["river " * 300, "bank money " * 90, "short one", "fish " * 40]
    whole = Reranker(fp32_artifact, slice_tokens=None)
    for slice_tokens in (16, 64):
        sliced = Reranker(fp32_artifact, slice_tokens=slice_tokens)
        np.testing.assert_allclose(
            sliced.predict([query] * 4, documents), whole.predict([query] * 4, documents), atol=1e-4
        )
        sliced.model.share_prefix = False
        np.testing.assert_allclose(
            sliced.predict([query] * 4, documents), whole.predict([query] * 4, documents), atol=1e-4
        )


@pytest.mark.openvino
def test_auto_slices_and_budgets_follow_the_engine_and_bad_sizes_are_refused(fp32_artifact: Path) -> None:
    from rerank_onnx.errors import InvalidInputError

    onnxruntime = Reranker(fp32_artifact, backend="onnxruntime").model._scorer
    openvino = Reranker(fp32_artifact, backend="openvino", precision="fp32").model._scorer
    assert (onnxruntime.slice_tokens, onnxruntime.max_batch_tokens) == (512, 4096)
    assert (openvino.slice_tokens, openvino.max_batch_tokens) == (1024, 1024)
    asked = Reranker(fp32_artifact, backend="openvino", precision="fp32", slice_tokens=64, max_batch_tokens=300)
    assert (asked.model._scorer.slice_tokens, asked.model._scorer.max_batch_tokens) == (64, 300)
    # what a batch attends over after a shared prefix: bounded where the engine keeps it (OpenVINO), unless the
    # caller sized the batches
    assert (onnxruntime.max_batch_context, openvino.max_batch_context, asked.model._scorer.max_batch_context) == (
        None,
        8192,
        None,
    )
    for bad in ("big", 0, 1.5):
        with pytest.raises(InvalidInputError, match="slice_tokens: expected a positive integer"):
            Reranker(fp32_artifact, slice_tokens=bad)
        with pytest.raises(InvalidInputError, match="max_batch_tokens: expected a positive integer"):
            Reranker(fp32_artifact, max_batch_tokens=bad)


MEMORY_PROBE = """
import json, sys
from rerank_onnx import Reranker

def rss():
    status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
    return int(status["VmRSS"].split()[0]) * 1024, int(status["VmHWM"].split()[0]) * 1024

slices = {"none": None, "auto": "auto"}[sys.argv[2]] if sys.argv[2] in ("none", "auto") else int(sys.argv[2])
reranker = Reranker(sys.argv[1], slice_tokens=slices, backend=sys.argv[3], precision=sys.argv[4])
reranker.rank("q", ["warm up"])
before, _ = rss()
reranker.rank("where do rivers flood?", ["river bank " * 4000], truncate=True)
reranker.rank("q", ["the next request runs on what the long one gave back"])
after, peak = rss()
whole = getattr(reranker.model._scorer.session._engine, "_whole", None)  # OpenVINO's long-prompt child process
child_runs, child_peak = (whole.runs, whole.peak_rss) if whole is not None else (0, 0)
print(json.dumps({"before": before, "after": after, "peak": peak, "child_runs": child_runs, "child_peak": child_peak}))
"""


def _probe(artifact: Path, slice_tokens: str, engine: tuple[str, str]) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(artifact), slice_tokens, *engine],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.openvino
@pytest.mark.parametrize("engine", ENGINES)
def test_an_8k_pair_stays_within_a_memory_bound(fp32_artifact: Path, engine) -> None:
    sliced = _probe(fp32_artifact, "1024", engine)
    whole = _probe(fp32_artifact, "none", engine)
    # one 8k-token pair on the tiny model: attention of 1024 x 8192 per slice instead of 8192 x 8192
    # (measured: onnxruntime ~0.3 GB over its resting RSS, OpenVINO ~0.65 GB; in one piece several GB)
    assert sliced["peak"] - sliced["before"] < 1e9, sliced
    assert sliced["peak"] - sliced["before"] < (whole["peak"] - whole["before"]) / 3, (sliced, whole)


@pytest.mark.openvino
@pytest.mark.parametrize("engine", ENGINES)
def test_the_memory_of_an_8k_pair_is_given_back(fp32_artifact: Path, engine) -> None:
    sliced = _probe(fp32_artifact, "1024", engine)
    # once it is scored (and a short request after it), the process holds about what it held before
    assert sliced["after"] - sliced["before"] < 0.15 * sliced["before"], sliced


@pytest.mark.openvino
def test_openvino_runs_an_8k_pair_whole_in_a_child_process_within_the_bound(fp32_artifact: Path) -> None:
    auto = _probe(fp32_artifact, "auto", ("openvino", "fp32"))
    # the pair ran in the child (openvino_whole.py) while this process had dropped its compiled model; the two
    # processes' peaks together stay within the bound the slices keep, and the child's memory left with it
    assert auto["child_runs"] == 1 and auto["child_peak"] > 0, auto
    assert auto["peak"] - auto["before"] + auto["child_peak"] < 1e9, auto
    assert auto["after"] - auto["before"] < 0.15 * auto["before"], auto


@pytest.mark.openvino
def test_a_failing_long_prompt_process_is_a_model_load_error(tmp_path: Path) -> None:
    from rerank_onnx.backends.openvino import Compilation
    from rerank_onnx.backends.openvino_whole import WholeRowProcess
    from rerank_onnx.errors import ModelLoadError

    child = WholeRowProcess(tmp_path / "missing.onnx", Compilation("fp32", 1), cache_dir=None)
    ids = np.ones((1, 8), dtype=np.int64)
    with pytest.raises(ModelLoadError, match=r"long-prompt process failed: .*missing\.onnx"):
        child.run(ids, np.array([8], dtype=np.int64))
    with pytest.raises(ModelLoadError, match="long-prompt process failed"):  # a second call starts a new child
        child.run(ids, np.array([8], dtype=np.int64))
    child.close()


@pytest.mark.openvino
def test_a_long_prompt_process_killed_mid_call_says_so(fp32_artifact: Path, monkeypatch) -> None:
    import signal

    from rerank_onnx.backends import openvino_whole
    from rerank_onnx.backends.openvino import Compilation
    from rerank_onnx.errors import ModelLoadError

    child = openvino_whole.WholeRowProcess(fp32_artifact / "model.onnx", Compilation("fp32", 1), cache_dir=None)
    real_write = openvino_whole._write_frame

    def killed_first(stream, payload: bytes) -> None:  # as the kernel's out-of-memory killer would
        process = child._child
        assert process is not None
        process.send_signal(signal.SIGKILL)
        process.wait()
        real_write(stream, payload)

    monkeypatch.setattr(openvino_whole, "_write_frame", killed_first)
    ids = np.ones((1, 8), dtype=np.int64)
    with pytest.raises(ModelLoadError, match="killed by signal 9"):
        child.run(ids, np.array([8], dtype=np.int64))
    monkeypatch.setattr(openvino_whole, "_write_frame", real_write)
    assert child.run(ids, np.array([8], dtype=np.int64)).shape == (1,)  # the next call starts a new child
    child.close()


def test_only_long_attention_counts_as_a_large_run() -> None:
    from rerank_onnx.backends.memory import is_large

    def feeds(rows: int, width: int, past: int | None) -> dict[str, np.ndarray]:
        out = {"input_ids": np.zeros((rows, width), dtype=np.int64)}
        if past is not None:
            out["past_keys"] = np.zeros((2, 2, past, 4), dtype=np.float32)
        return out

    assert not is_large(feeds(16, 256, 0)) and not is_large(feeds(4, 64, 1000)) and not is_large(feeds(1, 512, None))
    assert is_large(feeds(8, 512, 40)) and is_large(feeds(1, 1024, 4096)) and is_large(feeds(1, 8192, None))


@pytest.mark.openvino
@pytest.mark.parametrize("engine", ENGINES)
def test_the_engine_builds_its_model_again_after_a_long_prompt_and_scores_the_same(fp32_artifact: Path, engine) -> None:
    from rerank_onnx.backends.memory import Rebuildable

    backend, precision = engine
    reranker = Reranker(fp32_artifact, backend=backend, precision=precision)
    model = reranker.model._scorer.session._engine.model  # type: ignore[attr-defined]
    assert isinstance(model, Rebuildable)
    query, documents = "where do rivers flood?", ["rivers flood in spring when the snow melts", "a recipe for bread"]
    before = reranker.predict([query] * 2, documents)
    assert model.rebuilds == 0  # short calls keep the compiled model and its buffers
    long_document = "river bank " * (model.rebuild_length // 2)
    assert len(reranker.model.encode([query], [long_document]).input_ids[0]) > model.rebuild_length
    reranker.rank(query, [long_document])
    assert model.rebuilds == 1  # dropped after the call (with what the long prompt grew), built again
    np.testing.assert_array_equal(reranker.predict([query] * 2, documents), before)
    reranker.predict([query] * 2, documents)
    assert model.rebuilds == 1


@pytest.mark.openvino
def test_a_failed_background_build_is_retried_on_the_next_use() -> None:
    from rerank_onnx.backends.memory import Rebuildable
    from rerank_onnx.errors import ModelLoadError

    builds: list[int] = []

    def build() -> int:
        builds.append(len(builds))
        if len(builds) == 2:  # the first rebuild, on the background thread
            raise ModelLoadError("openvino cannot compile: the cache folder went away")
        return len(builds)

    model = Rebuildable(build, rebuild_length=100)
    assert model.get() == 1
    model.ran({"input_ids": np.zeros((1, 60), dtype=np.int64)})
    model.release()
    assert model.rebuilds == 0 and model.get() == 1  # 60 tokens: kept
    model.ran({"input_ids": np.zeros((1, 60), dtype=np.int64), "past_keys": np.zeros((2, 2, 50, 4), np.float32)})
    model.release()
    assert model.rebuilds == 1
    assert model.get() == 3 and len(builds) == 3  # the failed background build, then one here


@pytest.mark.openvino
def test_openvino_presents_from_new_token_outputs_equal_the_exported_presents(fp32_artifact: Path) -> None:
    # OpenVINO compiles the graph with each layer's new keys and values as outputs (openvino_graph.py) and
    # joins them with the past; onnxruntime runs the presents as exported
    openvino = Reranker(fp32_artifact, backend="openvino", precision="fp32").model._scorer.session
    onnxruntime = Reranker(fp32_artifact, backend="onnxruntime").model._scorer.session
    layers = openvino._empty_prefix.keys.shape[0]  # type: ignore[attr-defined]
    assert openvino._engine._layers == layers  # type: ignore[attr-defined]
    first = np.arange(3, 40, dtype=np.int64).reshape(1, -1)
    second = np.arange(50, 70, dtype=np.int64).reshape(1, -1)
    prefixes = {}
    for name, session in (("openvino", openvino), ("onnxruntime", onnxruntime)):
        before = session.prefill(first)  # type: ignore[attr-defined]
        prefixes[name] = (before, session.prefill(second, before))  # type: ignore[attr-defined]
    for got, want, tokens in zip(prefixes["openvino"], prefixes["onnxruntime"], (37, 57)):
        assert got.keys.shape == want.keys.shape and got.keys.shape[0] == layers and got.keys.shape[2] == tokens
        np.testing.assert_allclose(got.keys, want.keys, atol=1e-4)
        np.testing.assert_allclose(got.values, want.values, atol=1e-4)


@pytest.mark.openvino
def test_openvino_keeps_the_rewritten_graph_in_the_cache_folder(fp32_artifact: Path, tmp_path: Path) -> None:
    query, documents = "where do rivers flood?", ["rivers flood in spring", "a recipe for bread"]
    first = Reranker(fp32_artifact, backend="openvino", precision="fp32", cache_dir=tmp_path)
    written = sorted(tmp_path.glob("openvino/*/new-kv-*/scores.xml"))
    assert len(written) == 1 and written[0].with_suffix(".bin").stat().st_size > 0
    assert list(written[0].parent.glob("blobs-*/*.blob"))  # OpenVINO's compiled blob beside the graph it came from
    # a second load compiles from it (no second copy, no second blob) and scores the same
    blobs = sorted(tmp_path.glob("openvino/*/*/blobs-*/*.blob"))
    second = Reranker(fp32_artifact, backend="openvino", precision="fp32", cache_dir=tmp_path)
    assert sorted(tmp_path.glob("openvino/*/new-kv-*/scores.xml")) == written
    assert sorted(tmp_path.glob("openvino/*/*/blobs-*/*.blob")) == blobs
    np.testing.assert_array_equal(second.predict([query] * 2, documents), first.predict([query] * 2, documents))


@pytest.mark.openvino
def test_each_compilation_of_one_graph_keeps_its_own_blobs(int8_artifact: Path, tmp_path: Path) -> None:
    """One cache folder, the int8 graph compiled with int8 activations beside fp32 and then beside bf16 (two
    planned CPU classes): OpenVINO's cache key did not tell the two apart and the second load imported the first's
    blob, which scored NaN on an AMX Xeon. Each compilation now has its own blob folder and scores as it does
    with no cache at all."""
    from rerank_onnx.artifact import load_artifact
    from rerank_onnx.backends import open_session
    from rerank_onnx.backends.select import BackendChoice

    graph, block = int8_artifact / "model.onnx", load_artifact(int8_artifact).quantization_block
    queries, documents = ["what is a cat?"] * 3, ["a cat is a small animal", "paris is a city", "x"]
    for planned in ("avx512-vnni", "avx512-bf16"):  # int8 activations beside fp32, then beside bf16
        choice = BackendChoice("openvino", "int8", planned, "test")
        cached = open_session(graph, choice, threads=1, cache_dir=tmp_path, int8_block=block)
        uncached = open_session(graph, choice, threads=1, int8_block=block)
        scores = Reranker(int8_artifact, session=cached).predict(queries, documents)
        assert np.isfinite(scores).all(), planned
        np.testing.assert_array_equal(scores, Reranker(int8_artifact, session=uncached).predict(queries, documents))
    assert len(list(tmp_path.glob("*/blobs-*"))) == 2


@pytest.mark.openvino
def test_two_copies_of_one_artifact_share_their_cache_folder(fp32_artifact: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(fp32_artifact, copy)  # a new path and new modification times, the same bytes
    Reranker(fp32_artifact, backend="openvino", precision="fp32", cache_dir=tmp_path / "cache")
    written = sorted((tmp_path / "cache").glob("openvino/*/new-kv-*/scores.xml"))
    Reranker(copy, backend="openvino", precision="fp32", cache_dir=tmp_path / "cache")
    assert len(written) == 1 and sorted((tmp_path / "cache").glob("openvino/*/new-kv-*/scores.xml")) == written


@pytest.mark.openvino
def test_a_changed_rewrite_replaces_what_the_old_one_left_in_the_cache(
    fp32_artifact: Path, tmp_path: Path, monkeypatch
) -> None:
    from rerank_onnx.backends import openvino_graph

    Reranker(fp32_artifact, backend="openvino", precision="fp32", cache_dir=tmp_path)
    (old,) = tmp_path.glob("openvino/*/new-kv-*")
    folder = old.parent
    kept = folder / "stateful-0123456789abcdef"  # another rewrite's folder stays
    kept.mkdir()
    flat = [folder / "scores-new-kv-0123456789abcdef.xml", folder / "1234.blob"]  # the earlier flat layout
    for path in flat:
        path.write_bytes(b"stale")
    monkeypatch.setitem(openvino_graph.REVISIONS, openvino_graph.NEW_KV, openvino_graph.REVISIONS["new-kv"] + 1)
    reranker = Reranker(fp32_artifact, backend="openvino", precision="fp32", cache_dir=tmp_path)
    (new,) = folder.glob("new-kv-*")
    assert new != old and not old.exists() and kept.is_dir()
    assert not any(path.exists() for path in flat)
    assert (new / "scores.xml").exists() and list(new.glob("blobs-*/*.blob"))
    assert len(reranker.predict(["q"], ["a document"])) == 1


@pytest.mark.openvino
def test_openvino_compiles_from_memory_and_leaves_no_partial_file_when_the_graph_cannot_be_written(
    fp32_artifact: Path, tmp_path: Path, monkeypatch
) -> None:
    import openvino

    real_save = openvino.save_model

    def disk_full(model: object, path: str, compress_to_fp16: bool) -> None:
        real_save(model, path, compress_to_fp16=compress_to_fp16)  # the partial files are on disk...
        raise OSError(28, "No space left on device")  # ...when the disk fills up

    monkeypatch.setattr(openvino, "save_model", disk_full)
    reranker = Reranker(fp32_artifact, backend="openvino", precision="fp32", cache_dir=tmp_path)
    assert reranker.model._scorer.session._engine._layers > 0  # type: ignore[attr-defined]  # still rewritten
    assert not list(tmp_path.glob("openvino/*/new-kv-*/*scores*"))  # no IR, no partial IR
    assert len(reranker.predict(["q"], ["a document"])) == 1


def _runtime_ops(compiled: object) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in compiled.get_runtime_model().get_ordered_ops():  # type: ignore[attr-defined]
        kind = node.get_rt_info()["layerType"].astype(str)
        counts[kind] = counts.get(kind, 0) + 1
    return counts


@pytest.mark.openvino
def test_openvino_fuses_the_stateful_graph_into_its_attention_kernel(fp32_artifact: Path) -> None:
    import openvino

    from rerank_onnx.backends.openvino import Compilation
    from rerank_onnx.backends.openvino_graph import BEAM_INDEX, stateful_attention

    core = openvino.Core()
    model = core.read_model(str(fp32_artifact / "model.onnx"))
    layers = model.get_parameters()[[p.get_friendly_name() for p in model.get_parameters()].index("past_keys")]
    assert stateful_attention(model)
    assert {p.get_friendly_name() for p in model.get_parameters()} == {"input_ids", "lengths", BEAM_INDEX}
    compiled = core.compile_model(model, "CPU", {**Compilation("fp32", 2).properties(), "KV_CACHE_PRECISION": "f32"})
    ops = _runtime_ops(compiled)
    # one fused attention per layer, with its keys and values as state: no score matrix, no expanded heads; but
    # the last layer, whose queries are each row's scored token only (export/graph.py), keeps its own attention
    assert ops.get("ScaledDotProductAttention") == layers.get_partial_shape()[0].get_length() - 1, ops
    assert ops.get("Softmax", 0) + ops.get("Subgraph", 0) == 1, ops
    # a graph without the exported attention is left as it is
    plain = core.read_model(str(fp32_artifact / "model.onnx"))
    plain.remove_parameter(plain.get_parameters()[-1])
    assert not stateful_attention(plain)


@pytest.mark.openvino
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_openvino_scores_rows_whole_as_in_slices_and_alone_as_in_a_batch(fp32_artifact: Path, precision: str) -> None:
    from rerank_onnx.artifact import INPUT_IDS, LENGTHS, PAST_KEYS, PAST_VALUES

    reranker = Reranker(fp32_artifact, backend="openvino", precision=precision, compile_cache=False)
    engine = reranker.model._scorer.session._engine  # type: ignore[attr-defined]
    threshold = engine.limits.whole_row_tokens
    assert threshold is not None and reranker.model._scorer.whole_row_tokens == threshold
    rng = np.random.default_rng(0)
    width = threshold + 64
    ids = rng.integers(10, 1000, (3, width)).astype(np.int64)
    lengths = np.array([width, width - 40, width - 7], dtype=np.int64)
    past = reranker.model._scorer.session._empty_prefix  # type: ignore[attr-defined]
    feeds = {INPUT_IDS: ids, LENGTHS: lengths, PAST_KEYS: past.keys, PAST_VALUES: past.values}
    batch = engine.run_whole(feeds)
    alone = [engine.run_whole({**feeds, INPUT_IDS: ids[i : i + 1], LENGTHS: lengths[i : i + 1]})[0] for i in range(3)]
    # every row of a batch gets its own attention mask (the plugin's bf16 kernel misread a shared one)
    np.testing.assert_allclose(batch, alone, atol=1e-4 if precision == "fp32" else 2e-2)
    engine.release_memory()
    if precision == "fp32":  # the same rows in 1,024-token slices on the compiled graph, as before
        sliced = Reranker(fp32_artifact, backend="openvino", precision="fp32", slice_tokens=1024, compile_cache=False)
        assert sliced.model._scorer.whole_row_tokens is None
        rows = [list(ids[i, : lengths[i]]) for i in range(3)]
        np.testing.assert_allclose(sliced.model._scorer.score(rows), batch, atol=1e-4)
