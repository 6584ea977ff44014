"""Read what the local tools need out of template.yaml: each function's code folder, handler and
HttpApi routes (with the authorizer each route gets), and import a handler as Lambda would.

CloudFormation short tags (`!Ref`, `!GetAtt`, `!Sub`, `!If`, ...) load as their long form
(`{"Ref": ...}`, `{"Fn::GetAtt": ...}`, ...), so any valid template loads with PyYAML's safe loader.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

AUTH_IAM = "AWS_IAM"
AUTH_JWT = "JWT"
AUTH_NONE = "NONE"


class CfnLoader(yaml.SafeLoader):
    """SafeLoader that accepts CloudFormation's short-form intrinsic function tags."""


def _cfn_tag(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> Any:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if tag_suffix == "Ref":
        return {"Ref": value}
    if tag_suffix == "Condition":
        return {"Condition": value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{tag_suffix}": value}


CfnLoader.add_multi_constructor("!", _cfn_tag)


@dataclass(frozen=True)
class Route:
    method: str  # upper case; "ANY" matches every method
    path: str  # as written in the template, e.g. /v1/users/{user_id}/summary; "$default" = catch-all
    auth: str  # AWS_IAM | JWT | NONE


@dataclass
class FunctionSpec:
    logical_id: str
    code_uri: Path
    handler: str
    routes: list[Route] = field(default_factory=list)
    timeout_s: int = 3
    memory_mb: int = 128


def load_template(template_path: str | Path) -> dict[str, Any]:
    with open(template_path, encoding="utf-8") as fh:
        doc = yaml.load(fh, Loader=CfnLoader)  # CfnLoader is a SafeLoader
    if not isinstance(doc, dict):
        raise ValueError(f"{template_path}: not a CloudFormation template")
    return doc


def _auth_kind(authorizer: object) -> str:
    if authorizer is None:
        return AUTH_NONE
    name = str(authorizer)
    if name == AUTH_IAM:
        return AUTH_IAM
    if name == AUTH_NONE:
        return AUTH_NONE
    return AUTH_JWT  # any named authorizer (the template's JWT authorizer)


def _default_authorizer(doc: dict[str, Any], api_id: object) -> object:
    """DefaultAuthorizer of the HttpApi an event attaches to (its ApiId, else the implicit API)."""
    globals_auth = ((doc.get("Globals") or {}).get("HttpApi") or {}).get("Auth") or {}
    default = globals_auth.get("DefaultAuthorizer")
    if isinstance(api_id, dict) and "Ref" in api_id:
        api = (doc.get("Resources") or {}).get(api_id["Ref"]) or {}
        api_auth = (api.get("Properties") or {}).get("Auth") or {}
        if "DefaultAuthorizer" in api_auth:
            default = api_auth["DefaultAuthorizer"]
    return default


def _method(value: object) -> str:
    method = str(value or "ANY").upper()
    return "ANY" if method in ("ANY", "X-AMAZON-APIGATEWAY-ANY-METHOD") else method


def _int(value: object, default: int) -> int:
    """A plain integer property, else the default (a !Ref or !If is not resolved here)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def functions(template_path: str | Path) -> dict[str, FunctionSpec]:
    """Every `AWS::Serverless::Function` with a zip handler, keyed by logical id."""
    template_path = Path(template_path).resolve()
    doc = load_template(template_path)
    base = template_path.parent
    g_fn = (doc.get("Globals") or {}).get("Function") or {}
    out: dict[str, FunctionSpec] = {}
    for logical_id, res in (doc.get("Resources") or {}).items():
        if not isinstance(res, dict) or res.get("Type") != "AWS::Serverless::Function":
            continue
        props = {**g_fn, **(res.get("Properties") or {})}
        code_uri, handler = props.get("CodeUri"), props.get("Handler")
        if not isinstance(code_uri, str) or not isinstance(handler, str):
            continue  # image functions or S3 code: nothing to run locally
        routes: list[Route] = []
        for event in (props.get("Events") or {}).values():
            if not isinstance(event, dict) or event.get("Type") != "HttpApi":
                continue
            ep = event.get("Properties") or {}
            auth = ep.get("Auth") or {}
            authorizer = (
                auth["Authorizer"] if "Authorizer" in auth else _default_authorizer(doc, ep.get("ApiId"))
            )
            routes.append(
                Route(
                    method=str(ep.get("Method", "ANY"))
                    .upper()
                    .replace("X-AMAZON-APIGATEWAY-ANY-METHOD", "ANY"),
                    path=str(ep.get("Path", "$default")),
                    auth=_auth_kind(authorizer),
                )
            )
        out[logical_id] = FunctionSpec(
            logical_id=logical_id,
            code_uri=(base / code_uri).resolve(),
            handler=handler,
            routes=routes,
            timeout_s=_int(props.get("Timeout"), 3),  # Lambda's defaults
            memory_mb=_int(props.get("MemorySize"), 128),
        )
    return out


_modules: dict[str, ModuleType] = {}


def _module_name(logical_id: str) -> str:
    return "lambda_" + re.sub(r"\W", "_", logical_id)


def load_handler(spec: FunctionSpec) -> Callable[[Any, Any], Any]:
    """Import `<CodeUri>/<module>.py` under a name unique to the function (every handler file is
    app.py), once per logical id, and return the callable named after the last dot of Handler."""
    module_path, _, attr = spec.handler.rpartition(".")
    if not module_path or not attr:
        raise ValueError(f"{spec.logical_id}: Handler {spec.handler!r} is not <module>.<function>")
    module = _modules.get(spec.logical_id)
    if module is None:
        file = spec.code_uri / (module_path.replace(".", "/") + ".py")
        if not file.is_file():
            raise FileNotFoundError(f"{spec.logical_id}: handler module {file} not found")
        # Lambda runs with the function folder on sys.path, so a handler's sibling modules import
        if str(spec.code_uri) not in sys.path:
            sys.path.append(str(spec.code_uri))
        name = _module_name(spec.logical_id)
        mod_spec = importlib.util.spec_from_file_location(name, file)
        if mod_spec is None or mod_spec.loader is None:
            raise ImportError(f"cannot load {file}")
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[name] = module
        try:
            mod_spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        _modules[spec.logical_id] = module
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise AttributeError(f"{spec.logical_id}: {module_path}.py has no callable {attr!r}")
    return fn
