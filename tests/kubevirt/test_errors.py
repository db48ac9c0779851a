"""The deliberate status -> error mapping, as a table."""

from __future__ import annotations

import pytest

from cluster.kubevirt.api import Conflict, Gone, NotFound, api_error
from cluster.port import ClusterUnavailable, PermanentClusterError

WHAT = "VirtualMachine lab-n1/n1"


@pytest.mark.parametrize(
    ("status", "message", "expected", "hint"),
    [
        (409, "the object has been modified", Conflict, "modified"),  # a retry re-reads
        (410, "too old resource version", Gone, "expired"),
        (429, "", ClusterUnavailable, "throttled"),
        (500, "etcdserver: request timed out", ClusterUnavailable, "etcdserver"),
        (502, "", ClusterUnavailable, "HTTP 502"),
        (503, "", ClusterUnavailable, "HTTP 503"),
        (504, "", ClusterUnavailable, "HTTP 504"),
        (401, "Unauthorized", ClusterUnavailable, "credentials"),
        (403, 'virtualmachines is forbidden: User "x" cannot create', PermanentClusterError, "RBAC"),
        (403, "unable to create new content in namespace lab-n1 because it is being terminated",
         ClusterUnavailable, "terminating"),
        (404, 'the server could not find the requested resource', NotFound, "API not installed"),
        (422, 'spec.template.spec.domain.cpu.cores: Invalid value', PermanentClusterError, "cpu.cores"),
        (400, "bad request", PermanentClusterError, "HTTP 400"),
    ],
)
def test_status_mapping(status: int, message: str, expected: type[Exception], hint: str) -> None:
    error = api_error(status, message, "create", WHAT)
    assert type(error) is expected
    assert WHAT in str(error) and hint in str(error)
    if issubclass(expected, PermanentClusterError):
        assert not isinstance(error, ClusterUnavailable)
