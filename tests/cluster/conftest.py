"""The KFP API double in both modes, so every cluster test runs single-user and multi-user unchanged."""

import pytest
from kfp_double import KfpApiDouble

from kubetune import kfp_api as gateway


@pytest.fixture
def isolated_pod(tmp_path, monkeypatch):
    """No token, no namespace and no pod namespace file unless a test puts them there."""
    monkeypatch.setenv(gateway.TOKEN_PATH_ENV, str(tmp_path / "no-token"))
    monkeypatch.delenv(gateway.NAMESPACE_ENV, raising=False)
    monkeypatch.setattr(gateway, "POD_NAMESPACE_FILE", str(tmp_path / "no-namespace"))
    return tmp_path


@pytest.fixture(params=["single-user", "multi-user"])
def kfp_api(request, isolated_pod, monkeypatch):
    """A running double; in multi-user mode this "pod" has the double's token and a profile namespace."""
    multi_user = request.param == "multi-user"
    with KfpApiDouble(multi_user=multi_user) as double:
        if multi_user:
            token = isolated_pod / "token"
            token.write_text(double.token)
            monkeypatch.setenv(gateway.TOKEN_PATH_ENV, str(token))
            monkeypatch.setenv(gateway.NAMESPACE_ENV, double.namespace)
        yield double
