"""Shared by threads, fed damaged files and hostile values: no wrong score, no 500, no hang (issue 32).

Each test here failed before its fix. The property tests throw generated JSON bodies (with NaN, infinities,
5,000-digit numbers and lone surrogates among their values) at the app in-process and at the serverless
handler: never a 5xx, every body strict UTF-8 JSON.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from fakes import FakeSession
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from rerank_onnx import InvalidInputError, ModelLoadError, Reranker, ScoringError
from rerank_onnx import artifact as artifact_module
from rerank_onnx.artifact import CONFIG_FILE, GRAPH_DATA_FILE
from rerank_onnx.backends import ScoreBatch
from rerank_onnx.backends.openvino import available as openvino_available
from rerank_onnx.cli import main
from rerank_onnx.errors import ExportError
from rerank_onnx.server import ServerSettings, create_app

QUERY = "what is a cat?"
DOCS = ["a cat is a feline", "bananas are yellow", "le chat est un félin", "dogs bark", "cats purr when happy"]
BACKENDS = [pytest.param("onnxruntime", id="onnxruntime")] + (
    [pytest.param("openvino", id="openvino")] if openvino_available() else []
)


def strict_json(text: str | bytes) -> object:
    """JSON as RFC 8259 has it: UTF-8, no NaN or Infinity."""
    raw = text.encode("utf-8") if isinstance(text, str) else text

    def refuse(name: str) -> None:
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(raw.decode("utf-8"), parse_constant=refuse)


# --- 1: one Reranker shared by threads ----------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_reranker_shared_by_8_threads_answers_as_serially(backend: str, int8_artifact: Path) -> None:
    reranker = Reranker(int8_artifact, backend=backend, compile_cache=False)  # `auto` precision: OpenVINO int8 here
    calls = [(f"{QUERY} {t}", DOCS[t % len(DOCS) :] + DOCS[: t % len(DOCS)] + [f"document {t}"]) for t in range(8)]
    serial = [[r.score for r in reranker.rank(q, d, sort=False)] for q, d in calls]
    start = threading.Barrier(len(calls))
    got: dict[int, list[list[float]]] = {t: [] for t in range(len(calls))}
    errors: list[BaseException] = []

    def work(t: int) -> None:
        start.wait()
        try:
            for _ in range(10):
                got[t].append([r.score for r in reranker.rank(*calls[t], sort=False)])
        except BaseException as exc:  # collected: the assertion below names it
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for t, answers in got.items():
        assert len(answers) == 10
        for answer in answers:
            np.testing.assert_array_equal(answer, serial[t])


# --- 2: damaged weights, the compile cache, non-finite scores ------------------------------------------------


def _damage(folder: Path) -> None:
    """Every 7th byte of the weights set to 255: the file keeps its size."""
    data = folder / GRAPH_DATA_FILE
    content = bytearray(data.read_bytes())
    content[::7] = b"\xff" * len(content[::7])
    data.write_bytes(bytes(content))


@pytest.mark.openvino
def test_damaged_weights_are_a_load_error_naming_the_file(fp32_artifact: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(fp32_artifact, tmp_path / "art"))
    _damage(copy)
    for backend in ("onnxruntime", "openvino") if openvino_available() else ("onnxruntime",):
        with pytest.raises(ModelLoadError, match=GRAPH_DATA_FILE + ".*damaged or was replaced"):
            Reranker(copy, backend=backend, compile_cache=False)
    assert main(["rank", str(copy), "--query", "q", str(tmp_path / "none.txt")]) == 2
    # without a cache the check runs beside the load: its verdict still wins over the tokenizer's own error
    tokenizer = Path(shutil.copytree(fp32_artifact, tmp_path / "tok")) / "tokenizer.json"
    tokenizer.write_bytes(b"x" * tokenizer.stat().st_size)
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json: its sha256 .* damaged"):
        Reranker(tokenizer.parent, compile_cache=False)


@pytest.mark.openvino
@pytest.mark.skipif(not openvino_available(), reason="the compile cache is OpenVINO's")
@pytest.mark.parametrize("healthy_first", [True, False], ids=["healthy-then-damaged", "damaged-then-healthy"])
def test_the_compile_cache_never_serves_other_weights(fp32_artifact: Path, tmp_path: Path, healthy_first: bool) -> None:
    copy = Path(shutil.copytree(fp32_artifact, tmp_path / "art"))
    pristine = (copy / GRAPH_DATA_FILE).read_bytes()
    cache = tmp_path / "cache"
    expected = Reranker(fp32_artifact, backend="openvino", precision="fp32", compile_cache=False).predict(
        [QUERY] * 3, DOCS[:3]
    )

    def healthy() -> None:
        (copy / GRAPH_DATA_FILE).write_bytes(pristine)
        model = Reranker(copy, backend="openvino", precision="fp32", cache_dir=cache)
        np.testing.assert_allclose(model.predict([QUERY] * 3, DOCS[:3]), expected, atol=1e-5)

    def damaged() -> None:
        _damage(copy)
        with pytest.raises(ModelLoadError, match="damaged or was replaced"):
            Reranker(copy, backend="openvino", precision="fp32", cache_dir=cache)

    for step in (healthy, damaged, healthy) if healthy_first else (damaged, healthy, damaged):
        step()


def test_a_file_is_hashed_once_per_state(fp32_artifact: Path, tmp_path: Path, monkeypatch) -> None:
    copy = Path(shutil.copytree(fp32_artifact, tmp_path / "art"))
    hashed: list[str] = []
    real = artifact_module.file_digest
    monkeypatch.setattr(artifact_module, "file_digest", lambda path: hashed.append(path.name) or real(path))
    records = tmp_path / "records"
    config = artifact_module.load_artifact(copy)
    artifact_module.check_files(config, records=records)
    first = sorted(hashed)
    assert GRAPH_DATA_FILE in first
    artifact_module._checked.clear()  # a new process: only the records on disk remain
    hashed.clear()
    artifact_module.check_files(config, records=records)
    assert hashed == []  # a warm start reads no file
    data = copy / GRAPH_DATA_FILE
    data.write_bytes(data.read_bytes())  # the same bytes written again: a new state, hashed again
    artifact_module.check_files(config, records=records)
    assert hashed == [GRAPH_DATA_FILE]


class NaNSession(FakeSession):
    def score(self, batch: ScoreBatch) -> np.ndarray:
        lengths = batch.lengths
        scores = np.zeros(len(lengths), dtype=np.float32)
        scores[-1] = np.nan
        return scores


def test_a_non_finite_score_is_never_returned(fp32_artifact: Path) -> None:
    reranker = Reranker(fp32_artifact, session=NaNSession())
    with pytest.raises(ScoringError, match="expected a finite score"):
        reranker.rank(QUERY, DOCS)
    app = create_app(ServerSettings(model_dir=str(fp32_artifact)), reranker=reranker)
    with TestClient(app) as client:
        response = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS})
    assert response.status_code == 500 and "error" in strict_json(response.content)


# --- 3, 4, 5: hostile values in a body, on the server and the serverless handler ------------------------------

HOSTILE_BODIES = [
    pytest.param(
        b'{"query": "q", "documents": ["a"], "top_n": ' + b"9" * 5000 + b"}",
        422,
        "Integer value out of range - at `$.top_n`",
        id="top_n-5000-digits",
    ),
    pytest.param(
        b'{"query": "q", "documents": [{"text": "a", "n": ' + b"9" * 5000 + b"}]}",
        422,
        "Integer value out of range - at `$.documents[0]",
        id="echoed-5000-digits",
    ),
    pytest.param(b'{"query": "q", "documents": [{"text": "a", "x": NaN}]}', 400, "no NaN", id="echoed-NaN"),
    pytest.param(
        b'{"query": "q", "documents": [{"text": "a", "x": -Infinity}]}', 400, "not valid JSON", id="echoed-Infinity"
    ),
    pytest.param(
        b'{"query": "q", "documents": [{"text": "a", "x": 1e400}]}',
        422,
        "Number out of range - at `$.documents[0]",
        id="echoed-1e400",
    ),
    pytest.param(b'{"query": "q", "documents": ["a"], "model": "\\ud800"}', 400, "surrogate", id="model-surrogate"),
    pytest.param(
        b'{"query": "q", "documents": [{"text": "a", "x": "\\udfff"}]}', 400, "surrogate", id="field-surrogate"
    ),
    pytest.param(b'{"query": "q", "documents": [{"text": "a", "\\ud800": 1}]}', 400, "surrogate", id="key-surrogate"),
]


class CountingSession(FakeSession):
    """Counts the graph runs, so that a test can say a request was refused before inference."""

    def __init__(self) -> None:
        self.runs = 0

    def score(self, batch: ScoreBatch) -> np.ndarray:
        lengths = batch.lengths
        self.runs += 1
        return np.zeros(len(lengths), dtype=np.float32)


@pytest.mark.parametrize(("body", "status", "message"), HOSTILE_BODIES)
def test_hostile_values_are_refused_before_inference(
    fp32_artifact: Path, body: bytes, status: int, message: str
) -> None:
    session = CountingSession()
    app = create_app(ServerSettings(model_dir=str(fp32_artifact)), reranker=Reranker(fp32_artifact, session=session))
    with TestClient(app) as client:
        response = client.post("/v1/rerank", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert message in strict_json(response.content)["error"]["message"]  # type: ignore[index]
    assert session.runs == 0


@pytest.fixture()
def handler(fp32_artifact: Path, monkeypatch):
    import rerank_onnx.serverless as serverless

    monkeypatch.setenv("RERANK_ONNX_MODEL", str(fp32_artifact))
    monkeypatch.setattr(serverless, "_loaded", None)
    return serverless.handler


@pytest.mark.parametrize(("body", "status", "message"), HOSTILE_BODIES)
def test_hostile_values_are_refused_serverless(handler, body: bytes, status: int, message: str) -> None:
    response = handler({"path": "/v1/rerank", "body": body.decode("ascii")})
    assert response["statusCode"] == status
    assert message in strict_json(response["body"])["error"]["message"]  # type: ignore[index]


def test_is_base64_encoded_must_be_a_boolean(handler) -> None:
    body = json.dumps({"query": QUERY, "documents": DOCS[:2]})
    response = handler({"path": "/v1/rerank", "body": body, "isBase64Encoded": "false"})
    assert response["statusCode"] == 400
    assert (
        "isBase64Encoded: expected true or false, got str 'false'" in strict_json(response["body"])["error"]["message"]
    )  # type: ignore[index]
    assert handler({"path": "/v1/rerank", "body": body, "isBase64Encoded": False})["statusCode"] == 200


# --- 6, 7, 8, 16: serve's settings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (
            [],
            {"RERANK_ONNX_COALESCE_MS": "inf"},
            "RERANK_ONNX_COALESCE_MS: expected a number from 0 to 1000, got float inf",
        ),
        ([], {"RERANK_ONNX_COALESCE_MS": "1e12"}, "RERANK_ONNX_COALESCE_MS: expected a number from 0 to 1000"),
        (["--coalesce-ms", "nan"], {}, "--coalesce-ms: expected a number from 0 to 1000, got float nan"),
        (["--port", "99999"], {}, "--port: expected a whole number from 1 to 65535, got int 99999"),
        ([], {"RERANK_ONNX_PORT": "99999"}, "RERANK_ONNX_PORT: expected a whole number from 1 to 65535"),
        (["--threads", "0"], {}, "--threads: expected a whole number from 1 to 1024, got int 0"),
        (["--max-queue-pairs", "0"], {}, "--max-queue-pairs: expected a whole number from 1"),
        (["--api-key", ""], {}, "--api-key: expected a non-empty key"),
        ([], {"RERANK_ONNX_API_KEY": ""}, "RERANK_ONNX_API_KEY: expected a non-empty key"),
    ],
)
def test_serve_refuses_settings_out_of_range(fp32_artifact: Path, monkeypatch, capsys, argv, env, message) -> None:
    import uvicorn

    def listen(*args: object, **kwargs: object) -> None:
        raise AssertionError("serve went on to listen")  # instead of serving forever

    monkeypatch.setattr(uvicorn, "run", listen)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["serve", str(fp32_artifact), *argv]) == 2  # refused before anything listens
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_server_settings_check_their_ranges(fp32_artifact: Path) -> None:
    for field, value in [("coalesce_ms", float("inf")), ("threads", 0), ("max_queue_pairs", -1), ("api_key", "")]:
        with pytest.raises(InvalidInputError, match=field):
            ServerSettings(model_dir=str(fp32_artifact), **{field: value})


# --- 9, 10, 16: the export -----------------------------------------------------------------------------------


def test_a_non_finite_estimated_max_is_refused(tiny_checkpoint: Path, fp32_artifact: Path, tmp_path: Path) -> None:
    from rerank_onnx_export.pipeline import export_checkpoint

    for value in (float("nan"), float("inf")):
        with pytest.raises(ExportError, match="estimated_max: expected a finite number"):
            export_checkpoint(str(tiny_checkpoint), tmp_path / "out", estimated_max=value, log=lambda m: None)
    assert not (tmp_path / "out").exists()
    copy = Path(shutil.copytree(fp32_artifact, tmp_path / "art"))
    config = json.loads((copy / CONFIG_FILE).read_text())
    config["normalization"]["estimated_max"] = float("nan")
    (copy / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="estimated_max: expected a finite number, got nan"):
        Reranker(copy)


def test_exporting_into_the_checkpoint_is_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    source = Path(shutil.copytree(tiny_checkpoint, tmp_path / "ck"))
    before = sorted(p.name for p in source.iterdir())
    for output in (source, tmp_path):
        assert main(["export", str(source), str(output), "--overwrite"]) == 2
    assert sorted(p.name for p in source.iterdir()) == before


@pytest.mark.subprocess
def test_sigterm_during_export_leaves_no_partial_folder(tiny_checkpoint: Path, tmp_path: Path) -> None:
    output = tmp_path / "out"
    partial = tmp_path / "out.partial"
    process = subprocess.Popen(
        [sys.executable, "-m", "rerank_onnx.cli", "export", str(tiny_checkpoint), str(output)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    for line in process.stderr:  # the export scores its built-in pairs once its staging folder holds the tokenizer
        if b"scoring the built-in pairs with the fp32 reference" in line:
            break
    assert partial.is_dir()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 128 + signal.SIGTERM
    assert not partial.exists() and not output.exists()


# --- 11: inputs far larger than what is scored ---------------------------------------------------------------


@pytest.mark.subprocess
def test_a_100_mb_one_line_document_is_cut_before_tokenizing(fp32_artifact: Path, tmp_path: Path) -> None:
    document = tmp_path / "one-line.txt"
    with document.open("w") as handle:
        for _ in range(100):
            handle.write("cats purr and sleep " * 50_000)  # 1 MB a write, one line in all
    script = (
        "import re, sys\n"
        "from rerank_onnx.cli import main\n"
        "code = main(sys.argv[1:])\n"
        # VmHWM is this program's own peak; ru_maxrss would carry over pytest's, from before the exec
        "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1), file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", script, "rank", str(fp32_artifact), "--query", QUERY, str(document), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr
    peak_kb = int(ran.stderr.strip().splitlines()[-1])
    assert peak_kb < 1_500_000, f"peak RSS {peak_kb / 1e6:.2f} GB"  # the text alone is 0.1 GB twice
    (row,) = json.loads(ran.stdout)
    direct = Reranker(fp32_artifact).rank(QUERY, ["cats purr and sleep " * 50_000])  # a shorter one, cut the same
    assert row["score"] == pytest.approx(direct[0].score, abs=1e-5)


def test_a_cut_text_gives_the_tokens_of_the_whole_text(fp32_artifact: Path) -> None:
    reranker = Reranker(fp32_artifact)
    long = "Paris is the capital of France, home of the tower. " * 40_000  # 2 MB: above every cap
    whole = reranker.model._encoder._encode_pairs([QUERY], [long], None, reranker.model.max_length, None)[0]  # type: ignore[union-attr]
    cut = reranker.model.encode([QUERY], [long])
    assert cut.input_ids == whole.input_ids and cut.truncated == [True]
    chunked = reranker.model.encode([QUERY], [long], max_chunks_per_doc=3)
    assert chunked.chunks is not None and chunked.chunks.complete == [False]


def test_the_cli_scores_its_input_in_blocks(fp32_artifact: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    import rerank_onnx.cli as cli

    monkeypatch.setattr(cli, "RANK_BLOCK_LINES", 7)
    lines = [f"document {i} about {'cats' if i % 3 else 'dogs'}" for i in range(30)]
    lines[4] = ""
    source = tmp_path / "docs.txt"
    source.write_text("\n".join(lines) + "\n")
    sizes: list[int] = []
    real = Reranker.rank

    def rank(self, query, documents, **options):  # type: ignore[no-untyped-def]
        sizes.append(len(documents))
        return real(self, query, documents, **options)

    monkeypatch.setattr(Reranker, "rank", rank)
    assert main(["rank", str(fp32_artifact), "--query", QUERY, str(source), "--json", "--top-k", "5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert max(sizes) <= 7 and sum(sizes) == 29
    whole = real(Reranker(fp32_artifact), QUERY, [line for line in lines if line], top_k=5)
    kept = [i for i, line in enumerate(lines) if line]
    assert [row["index"] for row in out] == [kept[r.index] for r in whole]
    np.testing.assert_allclose([row["score"] for row in out], [r.score for r in whole], atol=1e-6)


# --- 12: chunk mode and truncation ---------------------------------------------------------------------------


def test_chunk_mode_never_scores_below_truncation(fp32_artifact: Path) -> None:
    reranker = Reranker(fp32_artifact, max_length=128)
    words = ["cats", "purr", "rivers", "flood", "the", "capital", "of", "France", "is", "Paris", "tower", "bread"]
    rng = np.random.default_rng(0)
    documents = [" ".join(rng.choice(words, size=int(rng.integers(250, 400)))) for _ in range(20)]
    truncated = reranker.rank(QUERY, documents, sort=False)
    chunked = reranker.rank(QUERY, documents, sort=False, long_documents="chunk")
    assert all(c.score >= t.score for c, t in zip(chunked, truncated))
    encoded = reranker.model.encode([QUERY] * 20, documents, max_chunks_per_doc=10)
    plain = reranker.model.encode([QUERY] * 20, documents)
    assert encoded.chunks is not None
    firsts = [encoded.chunks.owner.index(i) for i in range(20)]
    assert [encoded.input_ids[row] for row in firsts] == plain.input_ids  # the first chunk: the truncated prompt
    assert not any(encoded.truncated) and all(encoded.chunks.complete)


# --- 15: /metrics counts every status ------------------------------------------------------------------------


def test_metrics_count_every_status(fp32_artifact: Path) -> None:
    app = create_app(ServerSettings(model_dir=str(fp32_artifact), api_key="k"), reranker=Reranker(fp32_artifact))
    with TestClient(app) as client:
        assert client.get("/no/such/route").status_code == 404
        assert client.get("/v1/rerank").status_code == 405
        assert client.get("/v1/models").status_code == 401
        assert client.post("/v1/rerank", json={"query": "q", "documents": ["d"]}).status_code == 401
        metrics = client.get("/metrics").text
    for line in (
        'rerank_requests_total{endpoint="other",status="404"} 1.0',
        'rerank_requests_total{endpoint="/v1/rerank",status="405"} 1.0',
        'rerank_requests_total{endpoint="/v1/models",status="401"} 1.0',
        'rerank_requests_total{endpoint="/v1/rerank",status="401"} 1.0',
    ):
        assert line in metrics


# --- 16: small edges -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", [None, 123, b"/tmp/artifact"])
def test_a_model_dir_that_is_no_path_is_a_typed_error(folder: object) -> None:
    with pytest.raises(InvalidInputError, match="model_dir: expected an artifact folder path"):
        Reranker(folder)  # type: ignore[arg-type]


def test_switches_are_booleans(fp32_artifact: Path) -> None:
    reranker = Reranker(fp32_artifact)
    for call, name in [
        (lambda: reranker.rank(QUERY, DOCS, truncate="no"), "truncate"),
        (lambda: reranker.rank(QUERY, DOCS, normalize="false"), "normalize"),
        (lambda: reranker.rank(QUERY, DOCS, sort=0), "sort"),
        (lambda: reranker.rank(QUERY, DOCS, return_documents=None), "return_documents"),
        (lambda: reranker.predict([QUERY], ["d"], truncate="no"), "truncate"),
        (lambda: reranker.predict([QUERY], ["d"], show_progress="yes"), "show_progress"),
    ]:
        with pytest.raises(InvalidInputError, match=f"{name}: expected True or False"):
            call()


# --- the property: generated bodies never get a 5xx, every answer is strict JSON -----------------------------

BIG = "\x00big"  # stands for a number of 5,000 digits (Python's json cannot write one): _encode_body puts it in
hostile = st.sampled_from([float("nan"), float("inf"), -float("inf"), BIG, "\ud800", "cat \udfff"])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | hostile,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
documents = st.lists(
    st.text(max_size=40) | st.fixed_dictionaries({"text": st.text(max_size=40)}, optional={"meta": json_values}),
    max_size=6,
)
request_like = st.fixed_dictionaries(
    {"query": st.text(max_size=30) | json_values},
    optional={
        "documents": documents | json_values,
        "texts": st.lists(st.text(max_size=30), max_size=4),
        "top_n": st.integers(-3, 10) | json_values,
        "return_documents": st.booleans() | json_values,
        "model": st.text(max_size=10) | json_values,
        "max_chunks_per_doc": st.integers(-1, 4) | json_values,
        "truncate_prompt_tokens": st.integers(-2, 100),
        "rank_fields": st.lists(st.text(max_size=5), max_size=2),
        "instruction": st.none() | st.text(max_size=10),
    },
)


def _encode_body(value: object, ascii_only: bool, mangle: int | None) -> bytes:
    body = json.dumps(value, ensure_ascii=ascii_only, allow_nan=True).encode("utf-8", "surrogatepass")
    body = body.replace(json.dumps(BIG).encode(), b"9" * 5000)
    if mangle is not None and body:
        position = mangle % len(body)
        body = body[:position] + b"\xff{" + body[position + 1 :]
    return body


bodies = st.builds(
    _encode_body,
    request_like | json_values,
    st.booleans(),
    st.none() | st.none() | st.integers(0, 10_000),
)
PATHS = ["/v1/rerank", "/v2/rerank", "/rerank"]


@pytest.fixture(scope="module")
def fuzz_client(fp32_artifact: Path):
    app = create_app(ServerSettings(model_dir=str(fp32_artifact)), reranker=Reranker(fp32_artifact, max_length=64))
    with TestClient(app) as client:
        yield client


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies, path=st.sampled_from(PATHS))
def test_generated_bodies_never_get_a_5xx_from_the_app(fuzz_client: TestClient, body: bytes, path: str) -> None:
    response = fuzz_client.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code < 500, response.text
    strict_json(response.content)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies, path=st.sampled_from(PATHS), base64=st.booleans())
def test_generated_bodies_never_get_a_5xx_serverless(handler, body: bytes, path: str, base64: bool) -> None:
    import base64 as b64

    event = {"path": path, "isBase64Encoded": base64}
    event["body"] = b64.b64encode(body).decode() if base64 else body.decode("utf-8", "surrogateescape")
    response = handler(event)
    assert response["statusCode"] < 500, response["body"]
    strict_json(response["body"].encode("utf-8"))
