"""rerank_onnx.ray on a local Ray instance (2 CPUs): the batch callable and job, and the Serve deployment.

The batch scores must equal `Reranker.predict` on the same pairs; order is kept; bad rows are reported in
their own column; the Serve replicas answer the server's routes.
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the ray extra is part of the dev extra; install it: pip install -e '.[dev]'")
from ray import serve  # noqa: E402

from rerank_onnx import Reranker  # noqa: E402
from rerank_onnx.cli import main  # noqa: E402
from rerank_onnx.errors import InvalidInputError  # noqa: E402
from rerank_onnx.ray import BatchOptions, RerankBatch, run_batch  # noqa: E402
from rerank_onnx.ray.serve import build, deployment  # noqa: E402
from rerank_onnx.server import ServerSettings  # noqa: E402

QUERIES = ["what do cats eat", "how tall is the eiffel tower", "best pizza dough recipe"]
DOCUMENTS = [
    "Cats are obligate carnivores and eat meat.",
    "The Eiffel Tower is 330 metres tall.",
    "Pizza dough needs flour, water, yeast and salt.",
    "Dogs are loyal companions.",
    "Paris is the capital of France, home of the tower. " * 30,  # long: truncated by the short-context model
    "",
]


def _rows() -> list[dict[str, object]]:
    return [
        {"id": len(QUERIES) * d + q, "query": query, "document": doc}
        for d, doc in enumerate(DOCUMENTS)
        for q, query in enumerate(QUERIES)
    ]


@pytest.fixture(scope="module")
def local_ray():
    # 2 cores for actors plus the slot for reading files that run_batch gives a local instance (job.py)
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    yield ray
    serve.shutdown()
    ray.shutdown()


@pytest.mark.subprocess
def test_core_runtime_never_imports_ray():
    code = "import sys, rerank_onnx, rerank_onnx.cli, rerank_onnx.server, rerank_onnx.serverless; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.subprocess
def test_missing_ray_extra_is_one_error_line(tmp_path: Path):
    code = (
        "import sys\n"
        "sys.modules['ray'] = None\n"
        "from rerank_onnx.cli import main\n"
        f"sys.exit(main(['batch', 'model', 'in.jsonl', {str(tmp_path / 'out.jsonl')!r}]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        "error: ray[data] (the ray extra) is required for this feature but is not installed: "
        "pip install 'rerank-onnx[ray]'"
    ]


def test_batch_equals_predict_in_order_across_actors(local_ray, fp32_artifact: Path):
    rows = _rows()
    ds = ray.data.from_items(rows, override_num_blocks=3).map_batches(
        RerankBatch,
        fn_constructor_args=(str(fp32_artifact),),
        fn_constructor_kwargs={"backend": "onnxruntime"},
        batch_size=5,  # batches cut across queries: each must still score as predict does
        compute=ray.data.ActorPoolStrategy(size=2),
        num_cpus=1,
    )
    out = ds.take_all()
    assert [r["id"] for r in out] == [r["id"] for r in rows]
    expected = Reranker(fp32_artifact, backend="onnxruntime").predict(
        [r["query"] for r in rows], [r["document"] for r in rows]
    )
    np.testing.assert_allclose([r["score"] for r in out], expected, atol=1e-4)
    assert all(r["error"] is None for r in out)


def test_batch_reports_bad_rows_and_truncation(local_ray, short_context_artifact: Path):
    rows = _rows()
    rows[1]["document"] = None
    rows[4]["query"] = 7
    rows[7]["document"] = "bad \ud800 text"
    ds = ray.data.from_items(rows, override_num_blocks=1).map_batches(  # one block: mixed types as Python objects
        RerankBatch,
        fn_constructor_args=(str(short_context_artifact),),
        fn_constructor_kwargs={"score_column": "relevance", "normalize": True},
        batch_size=8,
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=2,
    )
    out = ds.take_all()
    assert len(out) == len(rows)
    bad = {i: out[i]["error"] for i in (1, 4, 7)}
    assert "document: expected a string, got a missing value" in bad[1]
    assert "query: expected a string, got int 7" in bad[4]
    assert "lone surrogate" in bad[7]
    assert all(math.isnan(out[i]["relevance"]) for i in bad)
    good = [i for i in range(len(rows)) if i not in bad]
    assert all(out[i]["error"] is None for i in good)
    model = Reranker(short_context_artifact)
    expected = model.predict([rows[i]["query"] for i in good], [rows[i]["document"] for i in good], normalize=True)
    np.testing.assert_allclose([out[i]["relevance"] for i in good], expected, atol=0.02)
    long_rows = [i for i in good if rows[i]["document"] == DOCUMENTS[4]]
    assert long_rows and all(out[i]["truncated"] for i in long_rows)
    assert not any(out[i]["truncated"] for i in good if i not in long_rows)


def test_actor_threads_follow_num_cpus(local_ray, int8_artifact: Path):
    def threads_of(cpus: int) -> int:
        probe = ray.remote(num_cpus=cpus)(lambda: RerankBatch(str(int8_artifact)).threads)
        return ray.get(probe.remote())

    assert threads_of(1) == 1
    assert threads_of(2) == 2
    assert RerankBatch(str(int8_artifact), threads=1).threads == 1  # asked for: kept


def test_batch_command_writes_the_file_in_order(local_ray, int8_artifact: Path, tmp_path: Path, capsys):
    rows = _rows()
    rows[2]["document"] = 42
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    target = tmp_path / "scored.parquet"
    code = main(
        [
            "batch",
            str(int8_artifact),
            str(source),
            str(target),
            "--actors",
            "2",
            "--threads-per-actor",
            "1",
            "--batch-rows",
            "4",
            # onnxruntime's blockwise int8 scores a row the same in any batch and on any thread count, on every
            # CPU, so the file's scores must be each row's own (bf16 on an AMX Xeon moves the tiny model's by ~2%)
            "--backend",
            "onnxruntime",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1, err  # one row failed: said, and the file still holds every row
    assert "error: 1 row(s) could not be scored" in err
    assert f"scored {len(rows) - 1} of {len(rows)} rows" in err

    import pyarrow.parquet as pq

    table = pq.read_table(target).to_pylist()
    assert [r["id"] for r in table] == [r["id"] for r in rows]
    assert table[2]["error"] == "document: expected a string, got int 42" and table[2]["document"] is None
    good = [i for i in range(len(rows)) if i != 2]
    reranker = Reranker(int8_artifact, backend="onnxruntime")
    expected = reranker.predict([rows[i]["query"] for i in good], [rows[i]["document"] for i in good])
    np.testing.assert_allclose([table[i]["score"] for i in good], expected, atol=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.jsonl", "scored.parquet"]  # no partial file


def test_batch_job_jsonl_and_its_errors(local_ray, int8_artifact: Path, tmp_path: Path, capsys):
    source = tmp_path / "in.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"q": QUERIES, "text": DOCUMENTS[:3]}), source)
    target = tmp_path / "out.jsonl"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    options = BatchOptions(query_column="q", document_column="text")
    report = run_batch(str(int8_artifact), str(source), str(target), options=options)
    # defaults: one actor holding the node's CPUs but the reader's slot (3 slots: 2 cores + 1)
    assert (report.rows, report.failed, report.actors, report.threads_per_actor) == (3, 0, 1, 2)
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert [r["q"] for r in lines] == QUERIES and all(isinstance(r["score"], float) for r in lines)

    with pytest.raises(InvalidInputError, match="normalize: expected True or False"):
        run_batch(str(int8_artifact), str(source), str(tmp_path / "n.jsonl"), options=BatchOptions(normalize="yes"))  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="exists"):
        run_batch(str(int8_artifact), str(source), str(target), options=options)
    for argv, message in [
        (["batch", str(int8_artifact), str(source), str(tmp_path / "out.csv")], "expected a .parquet or .jsonl path"),
        (["batch", str(int8_artifact), str(tmp_path / "no.jsonl"), str(tmp_path / "o.jsonl")], "FileNotFoundError"),
        (["batch", str(int8_artifact), str(empty), str(tmp_path / "o.jsonl")], "expected rows to score, got none"),
        (["batch", str(tmp_path / "none"), str(source), str(tmp_path / "o.jsonl")], "does not exist"),
        (
            ["batch", str(int8_artifact), str(source), str(tmp_path / "o.jsonl")],
            "expected columns ['query', 'document']",
        ),
        (["batch", str(int8_artifact), str(source), str(tmp_path / "o.jsonl"), "--actors", "0"], "actors: expected"),
        (["batch", str(int8_artifact), str(source), str(tmp_path / "o.jsonl"), "--actors", "3"], "at most 2 CPUs"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: ") and message in err[-1], err
    assert not (tmp_path / "o.jsonl").exists() and not list(tmp_path.glob(".*partial"))


def test_batch_jsonl_keeps_every_value_as_written(local_ray, int8_artifact: Path, tmp_path: Path) -> None:
    """Ray's own JSON reader falls back to pandas, which turned "\\ud800" into "" (scored as an empty document)
    and wrote 5 back as null: each line now reaches the checks as written and is written back whole."""
    source = tmp_path / "in.jsonl"
    source.write_text(
        '{"id": 1, "query": "q", "document": "\\ud800", "meta": {"k": [1, 2]}}\n'
        '{"id": 2, "query": "q", "document": 5}\n'
        '{"id": 3, "query": "q", "document": "cats purr"}\n'
        '{"id": 4, "query": "q"}\n'
        "not json\n"
    )
    target = tmp_path / "out.jsonl"
    report = run_batch(str(int8_artifact), str(source), str(target))
    assert (report.rows, report.failed) == (5, 4)
    lines = target.read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert '"document": "\\ud800"' in lines[0] and rows[0]["meta"] == {"k": [1, 2]}
    assert "lone surrogate" in rows[0]["error"] and rows[0]["score"] is None
    assert rows[1]["document"] == 5 and "expected a string, got int 5" in rows[1]["error"]
    assert rows[1]["score"] is None
    expected = Reranker(int8_artifact).predict(["q"], ["cats purr"])[0]
    assert rows[2]["error"] is None and abs(rows[2]["score"] - expected) < 1e-5
    assert "missing value" in rows[3]["error"] and rows[4]["input"] == "not json" and "malformed" in rows[4]["error"]
    parquet = tmp_path / "out.parquet"
    import pyarrow.parquet as pq

    ok = tmp_path / "ok.jsonl"
    ok.write_text('{"id": 1, "query": "q", "document": "cats purr"}\n{"id": 2, "query": "q", "document": "\\ud800"}\n')
    run_batch(str(int8_artifact), str(ok), str(parquet))
    table = pq.read_table(parquet).to_pylist()
    assert [r["id"] for r in table] == [1, 2] and table[1]["document"] is None and "lone surrogate" in table[1]["error"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_serve_deployment_answers_the_server_routes(local_ray, int8_artifact: Path):
    import httpx

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(deployment(ServerSettings(str(int8_artifact)), replicas=2), name="rerank", route_prefix="/")
    base = f"http://127.0.0.1:{port}"
    try:
        body = {"query": QUERIES[0], "documents": DOCUMENTS[:4], "return_documents": False}
        answers = [httpx.post(f"{base}/v1/rerank", json=body, timeout=60) for _ in range(4)]
        assert all(a.status_code == 200 for a in answers)
        expected = Reranker(int8_artifact).rank(QUERIES[0], DOCUMENTS[:4], normalize=True)
        got = answers[0].json()["results"]
        assert [r["index"] for r in got] == [r.index for r in expected]
        np.testing.assert_allclose([r["relevance_score"] for r in got], [r.score for r in expected], atol=0.01)
        assert httpx.get(f"{base}/health").json()["status"] == "ok"
        assert httpx.get(f"{base}/v1/models").json()["data"][0]["family"] == "mxbai-rerank-v2"
        bad = httpx.post(f"{base}/v1/rerank", content=b"{not json", timeout=60)
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_request"
    finally:
        serve.delete("rerank")


def test_serve_builder_checks_its_arguments():
    with pytest.raises(InvalidInputError, match="expected model_dir=PATH"):
        build({"replicas": "2"})
    with pytest.raises(InvalidInputError, match="replicas: expected a positive integer"):
        build({"model_dir": "m", "replicas": "two"})
    with pytest.raises(InvalidInputError, match="backend / precision"):
        build({"model_dir": "m", "backend": "tensorrt"})
