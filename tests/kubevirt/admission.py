"""A ValidatingAdmissionPolicy evaluated as the API server would, without an API server.

cel-python (celpy) evaluates the policy's CEL: matchConstraints' resource rules, matchConditions,
`variables` (in order, each visible to the next as `variables.NAME`), then every validation. The
CEL environment has what the API server gives a policy: `object`, `oldObject`, `request`,
`namespaceObject`, `variables` (no `params`: our policy has none; no `authorizer`). A validation
that evaluates to false or fails with an error refuses the request (failurePolicy Fail), with its
message. Variables are evaluated eagerly, which is stricter than the API server (lazy): an
expression that errors here on an unused branch would be harmless there, never the reverse.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from typing import Any

import celpy

Obj = dict[str, Any]

# apiVersion group + kind -> plural, for the resources labrador writes (and a few hostile ones).
PLURALS = {
    "Namespace": "namespaces", "Secret": "secrets", "Service": "services", "ConfigMap": "configmaps",
    "PersistentVolumeClaim": "persistentvolumeclaims", "Pod": "pods", "ServiceAccount": "serviceaccounts",
    "NetworkPolicy": "networkpolicies", "VirtualMachine": "virtualmachines", "DataVolume": "datavolumes",
    "VirtualMachineExport": "virtualmachineexports", "ClusterRoleBinding": "clusterrolebindings",
    "RoleBinding": "rolebindings",
}
CLUSTER_SCOPED = {"Namespace", "ClusterRoleBinding"}

WORKER = "system:serviceaccount:labrador:labrador-worker"


@dataclass
class Request:
    operation: str  # CREATE | UPDATE | DELETE
    object: Obj | None
    old_object: Obj | None = None
    namespace_object: Obj | None = None
    username: str = WORKER

    @property
    def target(self) -> Obj:
        target = self.object if self.object is not None else self.old_object
        assert target is not None
        return target

    def as_cel(self) -> dict[str, Any]:
        target = self.target
        group = target["apiVersion"].rpartition("/")[0]
        version = target["apiVersion"].rpartition("/")[2]
        kind = target["kind"]
        metadata = target.get("metadata", {})
        if kind not in CLUSTER_SCOPED and self.namespace_object is not None:
            # what the API server passes: the object's own namespace
            assert self.namespace_object["metadata"]["name"] == metadata.get("namespace"), "namespaceObject mismatch"
        request = {
            "operation": self.operation,
            "resource": {"group": group, "version": version, "resource": PLURALS[kind]},
            "kind": {"group": group, "version": version, "kind": kind},
            "subResource": "",
            "name": metadata.get("name", ""),
            "namespace": "" if kind in CLUSTER_SCOPED else metadata.get("namespace", ""),
            "userInfo": {"username": self.username, "groups": ["system:serviceaccounts", "system:authenticated"]},
            "dryRun": False,
        }
        return {
            "object": celpy.json_to_cel(self.object),
            "oldObject": celpy.json_to_cel(self.old_object),
            # null for cluster-scoped requests, Namespaces included
            "namespaceObject": celpy.json_to_cel(None if kind in CLUSTER_SCOPED else self.namespace_object),
            "request": celpy.json_to_cel(request),
        }


@dataclass
class Decision:
    matched: bool
    refusals: list[str] = field(default_factory=list)

    @property
    def allowed(self) -> bool:
        return not self.refusals


@functools.cache
def _program(expression: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(expression))


def evaluate(expression: str, activation: dict[str, Any]) -> Any:
    result = _program(expression).evaluate(activation)
    if isinstance(result, celpy.CELEvalError):
        raise result
    return result


def _rule_matches(rule: Obj, request: Request) -> bool:
    cel = request.as_cel()["request"]
    group, resource = str(cel["resource"]["group"]), str(cel["resource"]["resource"])
    version = str(cel["resource"]["version"])

    def has(values: list[str], value: str) -> bool:
        return "*" in values or value in values

    return (has(rule.get("apiGroups", []), group) and has(rule.get("apiVersions", []), version)
            and has(rule.get("resources", []), resource) and has(rule.get("operations", []), request.operation))


def decide(policy: Obj, request: Request) -> Decision:
    spec = policy["spec"]
    rules = spec.get("matchConstraints", {}).get("resourceRules", [])
    if not any(_rule_matches(rule, request) for rule in rules):
        return Decision(matched=False)
    activation = request.as_cel()
    for condition in spec.get("matchConditions", []):
        if not evaluate(condition["expression"], activation):
            return Decision(matched=False)
    variables = celpy.celtypes.MapType()
    for variable in spec.get("variables", []):
        activation["variables"] = variables
        value = evaluate(variable["expression"], activation)
        variables = celpy.celtypes.MapType({**variables, celpy.celtypes.StringType(variable["name"]): value})
    activation["variables"] = variables
    decision = Decision(matched=True)
    for validation in spec.get("validations", []):
        try:
            passed = evaluate(validation["expression"], activation)
        except Exception as exc:  # an error refuses too (failurePolicy: Fail)
            decision.refusals.append(f"{validation['message']} [error: {exc}]")
            continue
        if passed is not True and passed != celpy.celtypes.BoolType(True):
            decision.refusals.append(validation["message"])
    return decision


def merge_patch(target: Obj, patch: Obj) -> Obj:
    """RFC 7386 JSON merge patch (what the backend sends as a patch)."""
    result = copy.deepcopy(target)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge_patch(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def as_stored_namespace(namespace: Obj) -> Obj:
    """A Namespace as the API server stores it: the server sets kubernetes.io/metadata.name."""
    stored = copy.deepcopy(namespace)
    stored.setdefault("metadata", {}).setdefault("labels", {})["kubernetes.io/metadata.name"] = \
        stored["metadata"]["name"]
    return stored


def plain_namespace(name: str, labels: dict[str, str] | None = None) -> Obj:
    return as_stored_namespace({"apiVersion": "v1", "kind": "Namespace",
                                "metadata": {"name": name, "labels": dict(labels or {})}})
