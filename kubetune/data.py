"""Retrieve a dataset once, verify it, and split it into normalised train/validation/test arrays.

The retrieve step runs this once per experiment and hands every trial the same ``.npz`` split, so
all trials train and validate on identical data. Sources are ``builtin:digits``, ``builtin:mnist1d``,
``file:///abs/path.npz|.csv``, ``s3://bucket/key.npz|.csv`` and ``https://...`` (which needs a
``sha256``). An ``.npz`` holds arrays ``x`` and ``y``; a ``.csv`` has a header row, a label column and
float feature columns.

The shape of ``x`` decides the model family (see :mod:`kubetune.nas`), per sample:

* ``(N, F)`` -> ``(F,)`` tabular features (flat sequences stay tabular too);
* ``(N, H, W)`` -> ``(1, H, W)`` one-channel images, unless ``x.shape[1] <= 4``: then ``(N, C, L)``
  is read as ``C`` channels of sequences of length ``L`` and kept as ``(C, L)``;
* ``(N, C, H, W)`` -> ``(C, H, W)`` images.

Example:
    >>> split = load_split({"source": "builtin:digits", "seed": 0})
    >>> split.input_shape, split.num_classes
    ((1, 8, 8), 10)
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import random
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from kubetune.errors import UserError
from kubetune.redaction import redact_url
from kubetune.spec import DataSpec, SpecError, parse_data

__all__ = ["DataError", "SplitData", "load_split", "read_split", "retrieve", "save_split"]

EXTENSIONS = (".npz", ".csv")
CSV_CHUNK_ROWS = 1024  # rows parsed at a time: bounds the strings held at once to a few MB
# A 3-D ``x`` whose second axis is at most this long is read as (N, C, L) sequences, else (N, H, W) images.
MAX_SEQUENCE_CHANNELS = 4
# Enough MNIST-1D samples for a small 1D CNN to learn it well: see benchmarks/README.md.
MNIST1D_SAMPLES = 10_000
DOWNLOAD_TIMEOUT_S = 60
ARRAYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")


class DataError(UserError, ValueError):
    """A dataset that cannot be retrieved or used; the message says which source, what rule, how to fix."""


@dataclass
class SplitData:
    """Normalised arrays for one experiment; ``input_shape`` is the per-sample shape fed to the model."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]
    metadata: dict = field(default_factory=dict)


def load_split(data: dict) -> SplitData:
    """Retrieve ``data["source"]``, verify its sha256 if given, and split it reproducibly.

    Args:
        data: the experiment's ``spec.data`` in camelCase: ``source``, ``sha256``, ``labelColumn``,
            ``validationFraction``, ``testFraction``, ``seed``. Missing keys take their defaults; the
            options are checked by the spec's rules (:func:`kubetune.spec.parse_data`).

    Raises:
        DataError: the source cannot be read, fails verification, or the options are invalid.
    """
    try:
        options = parse_data(data)
    except SpecError as error:
        raise DataError(str(error)) from None
    source = options.source
    x, y, digest = _retrieve(source, label_column=options.label_column, sha256=options.sha256)
    x, input_shape = _shape(x, source)
    classes, y = _labels(y, len(x), source)
    parts, stratified = _split(x, y, options)
    mean, std = _normalisation(parts["x_train"])
    for name in ("x_train", "x_val", "x_test"):
        parts[name] = ((parts[name] - mean) / std).astype(np.float32)
    metadata = {
        "source": redact_url(source),
        "sha256": digest,
        "seed": options.seed,
        "validationFraction": options.validation_fraction,
        "testFraction": options.test_fraction,
        "stratified": stratified,
        "sizes": {name: len(parts[f"y_{name}"]) for name in ("train", "val", "test")},
        "num_classes": len(classes),
        "classes": classes,
        "input_shape": list(input_shape),
        "normalisation": {
            "axis": "channel" if len(input_shape) > 1 else "feature",
            "mean": mean.ravel().tolist(),
            "std": std.ravel().tolist(),
        },
    }
    return SplitData(**parts, num_classes=len(classes), input_shape=input_shape, metadata=metadata)


def retrieve(experiment, path: str | Path) -> dict:
    """The retrieve-data step: load and split the experiment's data, save it to ``path``; returns its metadata."""
    split = load_split(experiment.to_dict()["spec"]["data"])
    save_split(split, path)
    return json.loads(json.dumps(split.metadata))


def save_split(split: SplitData, path: str | Path) -> None:
    """Write the split as one ``.npz`` (arrays plus metadata JSON), atomically, for the trials to read."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {**split.metadata, "num_classes": split.num_classes, "input_shape": list(split.input_shape)}
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as handle:
        np.savez(handle, **{name: getattr(split, name) for name in ARRAYS}, metadata=np.array(json.dumps(metadata)))
    os.replace(partial, path)


def read_split(path: str | Path) -> SplitData:
    """Read a split written by :func:`save_split`."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in ARRAYS}
            metadata = json.loads(str(stored["metadata"]))
    except FileNotFoundError:
        raise DataError(f"split file {path} does not exist; run the retrieve step first") from None
    except (OSError, ValueError, KeyError) as error:
        raise DataError(f"split file {path} is not a split written by save_split: {error}") from None
    return SplitData(
        **arrays,
        num_classes=int(metadata["num_classes"]),
        input_shape=tuple(metadata["input_shape"]),
        metadata=metadata,
    )


def _retrieve(source: str, *, label_column: str, sha256: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    """Returns ``(x, y, sha256)``; the digest is of the raw bytes, or of the generated arrays for builtins."""
    url = urlparse(source)  # its scheme and builtin name were checked by the spec
    if url.scheme == "builtin":
        x, y = {"digits": _digits, "mnist1d": _mnist1d}[url.path]()
        return x, y, _verified(_array_digest(x, y), sha256, source)
    readers = {"file": _read_file, "s3": _read_s3, "https": _read_http, "http": _read_http}
    extension = os.path.splitext(url.path)[1].lower()
    if extension not in EXTENSIONS:
        raise DataError(
            f"data.source {redact_url(source)!r} must end in .npz or .csv but ends in {extension or 'no extension'!r}"
        )
    raw = readers[url.scheme](url)
    digest = _verified(hashlib.sha256(raw).hexdigest(), sha256, source)
    x, y = _parse_npz(raw, source) if extension == ".npz" else _parse_csv(raw, source, label_column)
    return x, y, digest


def _verified(digest: str, expected: str | None, source: str) -> str:
    """Returns ``digest`` if it is the expected one (or none is expected); checked before the data is parsed."""
    if expected and expected.lower() != digest:
        raise DataError(
            f"data.sha256 does not match {redact_url(source)}: expected {expected.lower()} but received {digest}; "
            "fix data.sha256 if the data changed on purpose"
        )
    return digest


def _array_digest(x: np.ndarray, y: np.ndarray) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    digest.update(np.ascontiguousarray(y, dtype=np.int64).tobytes())
    return digest.hexdigest()


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images[:, None].astype(np.float32), digits.target


def _mnist1d() -> tuple[np.ndarray, np.ndarray]:
    """MNIST-1D from the package's offline generator; it reseeds the global RNGs, so they are restored."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = MNIST1D_SAMPLES
    states = random.getstate(), np.random.get_state()
    try:
        dataset = make_dataset(args)
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
    x = np.concatenate([dataset["x"], dataset["x_test"]])[:, None].astype(np.float32)
    return x, np.concatenate([dataset["y"], dataset["y_test"]])


def _read_file(url) -> bytes:
    path = Path(url.path)
    if url.netloc or not path.is_absolute():
        raise DataError(f"data.source file://{url.netloc}{url.path} must be an absolute path: file:///abs/path.npz")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"data.source {url.geturl()}: file {path} does not exist; check the path") from None
    except OSError as error:
        raise DataError(f"data.source {url.geturl()}: cannot read {path}: {error.strerror}") from None


# S3 error codes, as MinIO, AWS and rclone name them, and what the user should check.
S3_MISSING_BUCKET = {"NoSuchBucket"}
S3_MISSING_KEY = {"NoSuchKey", "NoSuchObject"}
S3_CREDENTIALS = {
    "AccessDenied",
    "SignatureDoesNotMatch",
    "InvalidAccessKeyId",
    "InvalidToken",
    "ExpiredToken",
    "AuthorizationHeaderMalformed",
    "InvalidSecurity",
    "AllAccessDisabled",
}


def _s3_error_code(error) -> tuple[str | None, int | None]:
    """(S3 error code, HTTP status) of a minio error. rclone answers errors as text/xml, which minio does
    not parse (InvalidResponseError): its message quotes the status and the body, so both are read from it."""
    code = getattr(error, "code", None)
    status = getattr(getattr(error, "response", None), "status", None)
    text = str(error)
    if not status:
        found = re.search(r"Response code: (\d+)", text)
        status = int(found.group(1)) if found else None
    if not code:
        found = re.search(r"<Code>([^<]+)</Code>", text)
        code = found.group(1) if found else None
    return code, status


def _s3_problem(code: str | None, status: int | None, bucket: str, key: str, endpoint: str) -> str:
    if code in S3_MISSING_BUCKET or (code is None and status == 404 and not key):
        return f"bucket {bucket!r} does not exist at S3 endpoint {endpoint}; check the bucket name in data.source"
    if code in S3_MISSING_KEY or (code is None and status == 404):
        return (
            f"key {key!r} does not exist in bucket {bucket!r} at S3 endpoint {endpoint}; check the key in data.source"
        )
    if code in S3_CREDENTIALS or status in (401, 403):
        given = "" if os.environ.get("AWS_ACCESS_KEY_ID") else " (AWS_ACCESS_KEY_ID is not set)"
        return (
            f"S3 endpoint {endpoint} refused the credentials{given} ({code or f'HTTP {status}'}); check "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and that they may read this bucket"
        )
    return f"S3 endpoint {endpoint} answered {code or f'HTTP {status}'}; check the bucket, the key and the credentials"


def s3_region() -> str:
    """``AWS_REGION``, else ``AWS_DEFAULT_REGION`` (what the cluster's ConfigMap gives every step), else us-east-1."""
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def _read_s3(url) -> bytes:
    from minio import Minio
    from minio.error import MinioException

    source = f"s3://{url.netloc}{url.path}"
    bucket, key = url.netloc, url.path.lstrip("/")
    if not bucket or not key:
        raise DataError(f"data.source {source} must name a bucket and a key: s3://bucket/path/data.npz")
    endpoint = os.environ.get("KUBETUNE_S3_ENDPOINT") or os.environ.get("MLFLOW_S3_ENDPOINT_URL")
    if not endpoint:
        raise DataError(
            f"data.source {source} needs an S3 endpoint; set KUBETUNE_S3_ENDPOINT (or MLFLOW_S3_ENDPOINT_URL), "
            "for example http://minio:9000"
        )
    server = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
    shown = redact_url(endpoint)
    response = None
    try:
        client = Minio(
            server.netloc,
            access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
            secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
            session_token=os.environ.get("AWS_SESSION_TOKEN"),
            region=s3_region(),
            secure=server.scheme == "https",
        )
        response = client.get_object(bucket, key)
        return response.read()
    except MinioException as error:  # S3Error from MinIO/AWS, InvalidResponseError from rclone and others
        code, status = _s3_error_code(error)
        if code is None and status is None:
            raise DataError(
                f"data.source {source}: S3 endpoint {shown} failed ({type(error).__name__}); check KUBETUNE_S3_ENDPOINT"
            ) from None
        raise DataError(f"data.source {source}: {_s3_problem(code, status, bucket, key, shown)}") from None
    except Exception as error:  # noqa: BLE001 - urllib3 raises many connection errors; the message names the endpoint instead
        raise DataError(
            f"data.source {source}: cannot reach S3 endpoint {shown} ({type(error).__name__}); "
            "check KUBETUNE_S3_ENDPOINT and that the server is up"
        ) from None
    finally:
        if response is not None:
            response.close()
            response.release_conn()


def _read_http(url) -> bytes:
    source = redact_url(url.geturl())
    try:
        with urllib.request.urlopen(url.geturl(), timeout=DOWNLOAD_TIMEOUT_S) as response:
            return response.read()
    except urllib.error.HTTPError as error:
        hint = {
            401: "; kubetune sends no credentials to https sources: use a public address or s3://",
            403: "; kubetune sends no credentials to https sources: use a public address or s3://",
            404: "; check the address",
        }.get(error.code, "")
        raise DataError(f"data.source {source}: the server answered HTTP {error.code} {error.reason}{hint}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DataError(f"data.source {source}: cannot download ({reason}); check the address") from None


def _parse_npz(raw: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as stored:
            missing = [name for name in ("x", "y") if name not in stored.files]
            if missing:
                raise DataError(
                    f"data.source {redact_url(source)} must hold arrays 'x' and 'y' but lacks {missing} "
                    f"(it holds {stored.files})"
                )
            x, y = stored["x"], stored["y"]
    except DataError:
        raise
    except Exception as error:  # noqa: BLE001 - zipfile, pickle and format errors all mean the same thing to the user
        raise DataError(f"data.source {redact_url(source)} is not a readable .npz file: {error}") from None
    try:
        return x.astype(np.float32), y
    except (TypeError, ValueError):
        raise DataError(f"data.source {redact_url(source)}: x must be numeric but has dtype {x.dtype}") from None


def _parse_csv(raw: bytes, source: str, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads the CSV in chunks of rows, so memory holds float32 features, never every cell as a string."""
    try:
        rows = csv.reader(io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8-sig", newline=""))
        header = [name.strip() for name in next((row for row in rows if row), [])]
        label, features = _csv_columns(header, source, label_column)
        chunks = [_csv_chunk(chunk, header, label, features, source) for chunk in _row_chunks(rows)]
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"data.source {redact_url(source)} is not a readable UTF-8 .csv file: {error}") from None
    if not chunks:
        raise DataError(
            f"data.source {redact_url(source)} must have a header row and data rows but has {1 if header else 0} rows"
        )
    x = np.concatenate([chunk[0] for chunk in chunks])
    return x, _typed_labels(np.concatenate([chunk[1] for chunk in chunks]))


def _csv_columns(header: list[str], source: str, label_column: str) -> tuple[int, list[int]]:
    """The label's column index and the feature columns' indices, checked against the header."""
    if not header:
        raise DataError(f"data.source {redact_url(source)} must have a header row and data rows but has 0 rows")
    if label_column not in header:
        raise DataError(
            f"data.labelColumn {label_column!r} is not a column of {redact_url(source)}; its columns are {header}"
        )
    label = header.index(label_column)
    features = [i for i in range(len(header)) if i != label]
    if not features:
        raise DataError(f"data.source {redact_url(source)} has no feature columns besides {label_column!r}")
    return label, features


def _row_chunks(rows, size: int = CSV_CHUNK_ROWS):
    """Non-empty rows in lists of at most ``size``."""
    chunk = []
    for row in rows:
        if row:
            chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _csv_chunk(
    rows: list[list[str]], header: list[str], label: int, features: list[int], source: str
) -> tuple[np.ndarray, np.ndarray]:
    """One chunk's float32 features and stripped label strings."""
    widths = {len(row) for row in rows} | {len(header)}
    if len(widths) != 1:
        raise DataError(
            f"data.source {redact_url(source)}: every row must have {len(header)} fields but found {sorted(widths)}"
        )
    table = np.array(rows, dtype=str)
    try:
        x = table[:, features].astype(np.float32)
    except ValueError as error:
        raise DataError(f"data.source {redact_url(source)}: feature columns must be numbers: {error}") from None
    return x, np.char.strip(table[:, label])


def _typed_labels(labels: np.ndarray) -> np.ndarray:
    """CSV labels as integers or floats when they all parse, so classes sort and record as numbers."""
    for dtype in (np.int64, np.float64):
        try:
            return labels.astype(dtype)
        except ValueError:
            continue
    return labels


def _shape(x: np.ndarray, source: str) -> tuple[np.ndarray, tuple[int, ...]]:
    if x.ndim == 3 and x.shape[1] > MAX_SEQUENCE_CHANNELS:
        x = x[:, None]
    if not 2 <= x.ndim <= 4:
        raise DataError(
            f"data.source {redact_url(source)}: x must have shape (N, F), (N, H, W), (N, C, L) or (N, C, H, W) "
            f"but has shape {x.shape}"
        )
    if not np.isfinite(x).all():
        raise DataError(f"data.source {redact_url(source)}: x contains NaN or infinite values; clean the data first")
    return x, tuple(int(d) for d in x.shape[1:])


def _labels(y: np.ndarray, count: int, source: str) -> tuple[list, np.ndarray]:
    """Maps labels to 0..K-1; returns the original labels (JSON-able, in order) and the codes."""
    if y.ndim != 1 or len(y) != count:
        raise DataError(f"data.source {redact_url(source)}: y must have shape ({count},) to match x but has {y.shape}")
    classes, codes = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise DataError(f"data.source {redact_url(source)}: needs at least 2 classes but has {classes.tolist()}")
    return classes.tolist(), codes.astype(np.int64)


def _split(x: np.ndarray, y: np.ndarray, options: DataSpec) -> tuple[dict[str, np.ndarray], bool]:
    """Stratified where every class can be spread over the parts; returns the parts and whether it was."""
    total = len(y)
    n_val = math.ceil(total * options.validation_fraction)
    n_test = math.ceil(total * options.test_fraction)
    if total - n_val - n_test < 1:
        raise DataError(
            f"data.validationFraction {options.validation_fraction} and data.testFraction "
            f"{options.test_fraction} leave no training samples out of {total}; lower them"
        )
    try:
        return _partition(x, y, n_val=n_val, n_test=n_test, seed=options.seed, stratify=True), True
    except ValueError:  # sklearn refuses to stratify when a class is too rare for a part
        return _partition(x, y, n_val=n_val, n_test=n_test, seed=options.seed, stratify=False), False


def _partition(x, y, *, n_val: int, n_test: int, seed: int, stratify: bool) -> dict[str, np.ndarray]:
    from sklearn.model_selection import train_test_split

    x_rest, x_test, y_rest, y_test = (
        (x, x[:0], y, y[:0])
        if n_test == 0
        else train_test_split(x, y, test_size=n_test, random_state=seed, stratify=y if stratify else None)
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=n_val, random_state=seed, stratify=y_rest if stratify else None
    )
    return {"x_train": x_train, "y_train": y_train, "x_val": x_val, "y_val": y_val, "x_test": x_test, "y_test": y_test}


def _normalisation(x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean/std for images and sequences, per-feature for tabular data; constant parts get std 1."""
    axes = (0,) if x_train.ndim == 2 else (0, *range(2, x_train.ndim))
    mean = x_train.mean(axis=axes, dtype=np.float64, keepdims=True)
    std = x_train.std(axis=axes, dtype=np.float64, keepdims=True)
    std[std < 1e-8] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)
