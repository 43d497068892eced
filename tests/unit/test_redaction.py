"""The one redaction module: every secret form that a URL or an error text can carry."""

from __future__ import annotations

import pytest

from kubetune.redaction import has_credentials, redact_url, scrub, url_secrets


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+psycopg://kt:s3cret@db:5432/optuna", "postgresql+psycopg://kt:***@db:5432/optuna"),
        (
            "postgresql://kt@db/optuna?password=s3cret&sslmode=require",
            "postgresql://kt@db/optuna?password=***&sslmode=require",
        ),
        ("https://token123@mlflow.example.com/api", "https://***@mlflow.example.com/api"),
        (
            "https://bucket.s3.amazonaws.com/d.npz?X-Amz-Signature=abc&X-Amz-Credential=AKIA%2F1&v=1",
            "https://bucket.s3.amazonaws.com/d.npz?X-Amz-Signature=***&X-Amz-Credential=***&v=1",
        ),
        ("s3://key:secret@bucket/d.npz", "s3://***@bucket/d.npz"),
        ("sqlite:////home/me/.kubetune/optuna.db", "sqlite:////home/me/.kubetune/optuna.db"),
        ("/plain/path", "/plain/path"),
        ("postgresql://kt:pw@db:notaport/x", "<unparseable URL>"),
        ("mysql+pymysql://root:S3cr3t-pw@127.0.0.1/optuna", "mysql+pymysql://root:***@127.0.0.1/optuna"),
        ("postgresql://kubetune@db/optuna", "postgresql://kubetune@db/optuna"),
        ("postgresql://kt:p%40ss%3Aw0rd@db/optuna", "postgresql://kt:***@db/optuna"),
        ("https://mlflow.example.com/?token=S3cr3t-pw&x=1", "https://mlflow.example.com/?token=***&x=1"),
        ("not a url", "not a url"),
    ],
)
def test_redact_url_masks_every_credential_form(url, shown):
    assert redact_url(url) == shown


def test_secrets_are_found_and_scrubbed_from_text():
    url = "postgresql://kt:p%40ss@db/optuna?sslpassword=key-pass"
    secrets = url_secrets(url)
    assert {"p@ss", "p%40ss", "key-pass"} <= set(secrets)
    text = 'FATAL: password authentication failed for "kt" (p@ss) with key-pass'
    assert scrub(text, *secrets) == 'FATAL: password authentication failed for "kt" (***) with ***'


def test_has_credentials_tells_plain_urls_from_signed_ones():
    assert not has_credentials("https://example.com/data.npz?version=2")
    assert has_credentials("https://example.com/data.npz?token=x")
    assert has_credentials("https://user:pw@example.com/data.npz")
    assert has_credentials("s3://key:secret@bucket:notaport/d.npz")
    assert not has_credentials("file:///home/me@work/data.npz")
    assert not has_credentials("builtin:digits")


def test_scrub_also_masks_the_percent_encoded_form():
    assert scrub("GET http://db/?key=p%40ss%2Fw failed for p@ss/w", "p@ss/w") == "GET http://db/?key=*** failed for ***"


def test_scrub_ignores_empty_secrets():
    assert scrub("nothing to hide", "", "") == "nothing to hide"
