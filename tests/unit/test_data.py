"""kubetune.data: each source, each validation rule, determinism and the split file round trip."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading

import numpy as np
import pytest

from kubetune import data
from kubetune.data import DataError, load_split, read_split, retrieve, s3_region, save_split
from kubetune.spec import parse_experiment

# builtin:mnist1d is generated offline; its digest pins that every machine gets the same data.
MNIST1D_SHA256 = "5f6effadbab495d98caf19a185413cb8164ad58e4673556c11fa4d0d965200d5"


@pytest.fixture(scope="module")
def digits():
    return load_split({"source": "builtin:digits", "seed": 0})


def _npz(path, x, y):
    np.savez(path, x=x, y=y)
    return path


def _classes(n=60, k=3):
    return np.arange(n) % k


def test_digits_is_split_normalised_and_typed(digits):
    assert digits.input_shape == (1, 8, 8)
    assert digits.num_classes == 10
    assert digits.x_train.shape[1:] == (1, 8, 8)
    assert digits.x_train.dtype == np.float32 and digits.y_train.dtype == np.int64
    assert len(digits.y_train) + len(digits.y_val) + len(digits.y_test) == 1797
    assert abs(float(digits.x_train.mean())) < 1e-4 and abs(float(digits.x_train.std()) - 1) < 1e-3
    assert set(np.unique(digits.y_val)) == set(range(10))


def test_mnist1d_is_generated_offline_with_a_fixed_digest():
    split = load_split({"source": "builtin:mnist1d"})
    assert split.input_shape == (1, 40)
    assert split.num_classes == 10
    assert sum(split.metadata["sizes"].values()) == 10_000
    assert split.metadata["sha256"] == MNIST1D_SHA256


def test_same_seed_same_split_and_metadata_recorded(digits):
    again = load_split({"source": "builtin:digits", "seed": 0})
    other = load_split({"source": "builtin:digits", "seed": 1})
    np.testing.assert_array_equal(digits.x_train, again.x_train)
    np.testing.assert_array_equal(digits.y_val, again.y_val)
    assert digits.metadata["sha256"] == other.metadata["sha256"]
    assert not np.array_equal(digits.y_train, other.y_train)
    meta = digits.metadata
    assert meta["sizes"] == {"train": 1077, "val": 360, "test": 360}
    assert (meta["seed"], meta["validationFraction"], meta["testFraction"]) == (0, 0.2, 0.2)
    assert meta["stratified"] is True and meta["classes"] == list(range(10))
    assert len(meta["normalisation"]["mean"]) == 1  # one channel


def test_the_retrieve_step_saves_the_split_and_returns_its_metadata_as_json(digits, minimal_spec, tmp_path):
    metadata = retrieve(parse_experiment(minimal_spec), tmp_path / "split.npz")
    assert metadata["sha256"] == digits.metadata["sha256"] and metadata["sizes"] == digits.metadata["sizes"]
    np.testing.assert_array_equal(read_split(tmp_path / "split.npz").y_val, digits.y_val)


@pytest.mark.parametrize(
    "shape, input_shape",
    [((60, 5), (5,)), ((60, 6, 7), (1, 6, 7)), ((60, 2, 30), (2, 30)), ((60, 3, 4, 5), (3, 4, 5))],
)
def test_file_npz_shape_rules(tmp_path, shape, input_shape):
    x = np.random.default_rng(0).normal(size=shape)
    path = _npz(tmp_path / "d.npz", x, _classes())
    split = load_split({"source": f"file://{path}"})
    assert split.input_shape == input_shape
    assert split.x_val.shape[1:] == input_shape


def test_file_npz_labels_are_mapped_to_codes(tmp_path):
    y = np.array([10, 20, 30] * 20)
    path = _npz(tmp_path / "d.npz", np.random.default_rng(0).normal(size=(60, 4)), y)
    split = load_split({"source": f"file://{path}"})
    assert split.metadata["classes"] == [10, 20, 30]
    assert set(np.unique(split.y_train)) == {0, 1, 2}


def test_file_csv_with_label_column(tmp_path):
    rows = ["a,species,b"] + [f"{i * 0.5},{['cat', 'dog'][i % 2]},{i}" for i in range(40)]
    path = tmp_path / "d.csv"
    path.write_text("\n".join(rows) + "\n")
    split = load_split({"source": f"file://{path}", "labelColumn": "species"})
    assert split.input_shape == (2,)
    assert split.metadata["classes"] == ["cat", "dog"]
    assert split.num_classes == 2


def test_missing_label_column_names_it_and_the_columns(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,b\n1,0\n2,1\n")
    with pytest.raises(DataError, match=r"labelColumn 'label' is not a column.*\['a', 'b'\]"):
        load_split({"source": f"file://{path}"})


def _serve(directory):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture()
def served(tmp_path):
    path = _npz(tmp_path / "d.npz", np.random.default_rng(0).normal(size=(60, 4)), _classes())
    server = _serve(tmp_path)
    yield f"http://127.0.0.1:{server.server_port}/d.npz", hashlib.sha256(path.read_bytes()).hexdigest()
    server.shutdown()
    server.server_close()


def test_http_download_verified(served):
    url, digest = served
    split = load_split({"source": url, "sha256": digest})
    assert split.input_shape == (4,)
    assert split.metadata["sha256"] == digest


def test_sha256_mismatch_names_both_digests(served):
    url, digest = served
    wrong = "0" * 64
    with pytest.raises(DataError, match=f"expected {wrong} but received {digest}"):
        load_split({"source": url, "sha256": wrong})


def test_http_needs_sha256(served):
    url, _ = served
    with pytest.raises(DataError, match=r"data\.sha256: is required for an https:// source"):
        load_split({"source": url})


def test_credentials_in_a_source_are_refused_without_echoing_them(served):
    url, digest = served
    with pytest.raises(DataError, match="must not carry credentials") as error:
        load_split({"source": url.replace("http://", "http://user:hunter2@"), "sha256": digest})
    assert "hunter2" not in str(error.value)


def test_http_error_names_the_status(served):
    url, _ = served
    with pytest.raises(DataError, match="HTTP 404"):
        load_split({"source": url.replace("d.npz", "absent.npz"), "sha256": "0" * 64})


def test_s3_without_endpoint_says_how_to_configure(monkeypatch):
    monkeypatch.delenv("KUBETUNE_S3_ENDPOINT", raising=False)
    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL", raising=False)
    with pytest.raises(DataError, match="set KUBETUNE_S3_ENDPOINT"):
        load_split({"source": "s3://bucket/data.npz"})


@pytest.mark.parametrize(
    "validation, test, rule",
    [
        (0.6, 0.4, "validationFraction \\+ testFraction must leave at least 10% for training but got 0.6 \\+ 0.4"),
        (0.0, 0.2, r"data.validationFraction: Input should be greater than 0 \(got 0.0\)"),
        (0.2, -0.1, r"data.testFraction: Input should be greater than or equal to 0 \(got -0.1\)"),
    ],
)
def test_bad_fractions(validation, test, rule):
    with pytest.raises(DataError, match=rule):
        load_split({"source": "builtin:digits", "validationFraction": validation, "testFraction": test})


def test_fractions_leaving_no_training_sample(tmp_path):
    path = _npz(tmp_path / "d.npz", np.zeros((4, 2)), np.array([0, 1, 0, 1]))
    with pytest.raises(DataError, match="leave no training samples out of 4"):
        load_split({"source": f"file://{path}", "validationFraction": 0.5, "testFraction": 0.3})


def test_zero_test_fraction_gives_an_empty_test_set(digits):
    split = load_split({"source": "builtin:digits", "testFraction": 0.0})
    assert len(split.y_test) == 0 and split.x_test.shape[1:] == (1, 8, 8)


@pytest.mark.parametrize(
    "source, message",
    [
        ("file:///no/such/file.npz", "does not exist"),
        ("ftp://host/d.npz", "data.source: must start with one of builtin:, file:, s3:, https:, http:"),
        ("file:///tmp/d.parquet", "must end in .npz or .csv"),
        ("builtin:cifar", "builtin datasets are builtin:digits and builtin:mnist1d"),
    ],
)
def test_unusable_sources(source, message):
    with pytest.raises(DataError, match=message):
        load_split({"source": source})


def test_corrupt_npz(tmp_path):
    path = tmp_path / "d.npz"
    path.write_bytes(b"not a zip file")
    with pytest.raises(DataError, match=r"not a readable \.npz"):
        load_split({"source": f"file://{path}"})


def test_npz_without_y(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((10, 2)))
    with pytest.raises(DataError, match=r"lacks \['y'\]"):
        load_split({"source": f"file://{path}"})


def test_unknown_option_is_named():
    with pytest.raises(DataError, match=r"data.validationFracton: unknown field"):
        load_split({"source": "builtin:digits", "validationFracton": 0.1})


def test_save_and_read_round_trip(tmp_path, digits):
    path = tmp_path / "nested" / "split.npz"
    save_split(digits, path)
    back = read_split(path)
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(back, name), getattr(digits, name))
    assert back.input_shape == digits.input_shape and back.num_classes == digits.num_classes
    assert back.metadata == digits.metadata


def test_read_missing_split(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_split(tmp_path / "absent.npz")


@pytest.mark.parametrize(
    "env, region",
    [
        ({"AWS_DEFAULT_REGION": "eu-west-1"}, "eu-west-1"),  # what a pipeline step gets from the ConfigMap
        ({"AWS_REGION": "eu-central-1", "AWS_DEFAULT_REGION": "eu-west-1"}, "eu-central-1"),
        ({}, "us-east-1"),
    ],
)
def test_s3_region_comes_from_either_aws_variable(monkeypatch, env, region):
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert s3_region() == region


def _csv_bytes(rows: int, columns: int) -> bytes:
    values = np.random.default_rng(0).normal(size=(rows, columns))
    lines = ["label," + ",".join(f"f{i}" for i in range(columns))]
    lines += [f"c{i % 3}," + ",".join(f"{v:.6f}" for v in row) for i, row in enumerate(values)]
    return ("\n".join(lines) + "\n").encode()


def test_csv_reader_peak_memory_stays_near_the_file_size(tmp_path):
    """A large CSV is read in chunks of rows: the reader never holds every cell as a Python string."""
    import tracemalloc

    raw = _csv_bytes(20_000, 20)  # about 4 MB
    path = tmp_path / "big.csv"
    path.write_bytes(raw)
    tracemalloc.start()
    try:
        x, y = data._parse_csv(raw, f"file://{path}", "label")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert x.shape == (20_000, 20) and x.dtype == np.float32
    assert list(y[:4]) == ["c0", "c1", "c2", "c0"]
    assert peak < 3 * len(raw), f"peak {peak / 1e6:.1f} MB for a {len(raw) / 1e6:.1f} MB CSV"


def test_csv_rows_of_different_widths_are_found_past_the_first_chunk(tmp_path):
    rows = ["a,label"] + [f"{i},{i % 2}" for i in range(data.CSV_CHUNK_ROWS + 5)] + ["1,0,7"]
    path = tmp_path / "d.csv"
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"every row must have 2 fields but found \[2, 3\]"):
        load_split({"source": f"file://{path}"})


def test_csv_with_a_header_only_is_refused(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,label\n\n")
    with pytest.raises(DataError, match="must have a header row and data rows but has 1 rows"):
        load_split({"source": f"file://{path}"})


def test_an_s3_error_answered_as_text_xml_is_read_from_minios_message():
    """rclone answers errors as text/xml, which minio does not parse: the code and status come from its message."""
    from minio.error import InvalidResponseError

    error = InvalidResponseError(403, "text/xml", "<Error><Code>SignatureDoesNotMatch</Code></Error>")
    assert data._s3_error_code(error) == ("SignatureDoesNotMatch", 403)
    assert data._s3_error_code(InvalidResponseError(404, "text/plain", "")) == (None, 404)
