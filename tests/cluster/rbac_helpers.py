"""RBAC for tests: a ServiceAccount with exactly some rules, a kubeconfig that acts as it, and a
recording proxy that tells every request such a client made (and what the API server answered).
"""

from __future__ import annotations

import copy
import http.client
import ssl
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from waiting import wait_for


def kubeconfig_for(core, cluster, namespace: str, account: str, path: Path, server: str | None = None) -> Path:
    """A kubeconfig that authenticates as ServiceAccount `namespace/account` (a bound token, one hour),
    at the cluster's API server or at `server` (a RecordingProxy in front of it)."""
    token = core.create_namespaced_service_account_token(
        account, namespace, client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600))
    ).status.token
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    admin["users"] = [{"name": "operator", "user": {"token": token}}]
    admin["contexts"][0]["context"]["user"] = "operator"
    if server:
        admin["clusters"][0]["cluster"] = {"server": server}
    path.write_text(yaml.safe_dump(admin))
    return path


def user_of(namespace: str, account: str) -> str:
    return f"system:serviceaccount:{namespace}:{account}"


@contextmanager
def account_with_rules(api_client, cluster, namespace: str, rules: list[dict[str, Any]], path: Path,
                       account: str = "llmops-operator", server: str | None = None) -> Iterator[Path]:
    """A ServiceAccount bound to a ClusterRole of exactly `rules`; yields a kubeconfig acting as it
    (see `kubeconfig_for`), and removes the account, the role and the binding afterwards."""
    core, rbac = client.CoreV1Api(api_client), client.RbacAuthorizationV1Api(api_client)
    name = f"llmops-test-{namespace}-{account}-{uuid.uuid4().hex[:5]}"[:253]
    core.create_namespaced_service_account(namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=account)))
    rbac.create_cluster_role(client.V1ClusterRole(metadata=client.V1ObjectMeta(name=name), rules=copy.deepcopy(rules)))
    rbac.create_cluster_role_binding(client.V1ClusterRoleBinding(
        metadata=client.V1ObjectMeta(name=name),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=name),
        subjects=[client.RbacV1Subject(kind="ServiceAccount", name=account, namespace=namespace)],
    ))
    try:
        # The RBAC authorizer learns of new bindings through its informers: wait until one of the
        # rules is in force, so the first request of the account is not refused by that lag.
        probe = next(((r["apiGroups"][0], r["resources"][0], r["verbs"][0]) for r in rules if r.get("resources")), None)
        if probe:
            wait_for(lambda: allowed(api_client, user_of(namespace, account), probe[2], probe[0], probe[1], namespace),
                     timeout=30, what=f"the binding of {account} in force")
        yield kubeconfig_for(core, cluster, namespace, account, path, server=server)
    finally:
        for delete, *args in ((rbac.delete_cluster_role_binding, name), (rbac.delete_cluster_role, name),
                              (core.delete_namespaced_service_account, account, namespace)):
            try:
                delete(*args)
            except ApiException as exc:
                if exc.status != 404:
                    raise


def allowed(api_client, user: str, verb: str, group: str, resource: str, namespace: str | None = None,
            groups: list[str] | None = None) -> bool:
    """A SubjectAccessReview: may `user` (a ServiceAccount's user name gets its groups added) do this?"""
    resource, _, subresource = resource.partition("/")
    if groups is None and user.startswith("system:serviceaccount:"):
        groups = ["system:serviceaccounts", f"system:serviceaccounts:{user.split(':')[2]}", "system:authenticated"]
    review = client.AuthorizationV1Api(api_client).create_subject_access_review(client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
        user=user, groups=groups,
        resource_attributes=client.V1ResourceAttributes(verb=verb, group=group, resource=resource, subresource=subresource or None,
                                                        namespace=namespace))))
    return bool(review.status.allowed)


def without(rules: list[dict[str, Any]], group: str, resource: str, verbs: list[str] | None = None) -> list[dict[str, Any]]:
    """`rules` less some verbs (all of them when `verbs` is None) on one resource; the rule's other
    resources keep every verb they had."""
    out = []
    for rule in copy.deepcopy(rules):
        if group not in rule["apiGroups"] or resource not in rule["resources"]:
            out.append(rule)
            continue
        others = [r for r in rule["resources"] if r != resource]
        if others:
            out.append({**rule, "resources": others})
        kept = [v for v in rule["verbs"] if verbs is not None and v not in verbs]
        if kept:
            out.append({**rule, "resources": [resource], "verbs": kept})
    if granted(out) == granted(rules):
        raise AssertionError(f"no rule grants {verbs or 'any verb'} on {resource} in group {group!r}: nothing to remove")
    return out


# -- recording what a client asks of the API server ------------------------------------------------

@dataclass(frozen=True)
class Request:
    method: str
    path: str  # with its query
    status: int

    def attributes(self) -> tuple[str, str, str] | None:
        """(group, resource[/subresource], verb) as RBAC sees this request; None for non-resource URLs (discovery)."""
        url = urlsplit(self.path)
        parts = [p for p in url.path.split("/") if p]
        if parts[:1] == ["api"] and len(parts) >= 3:
            group, rest = "", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 4:
            group, rest = parts[1], parts[3:]
        else:
            return None
        if rest[:1] == ["namespaces"] and len(rest) >= 3:
            rest = rest[2:]  # namespaced: namespaces/<ns>/<resource>/...
        resource, name, sub = rest[0], rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else None
        query = parse_qs(url.query)
        watching = query.get("watch", [""])[0] in ("true", "1")
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(self.method)
        if verb is None and self.method == "DELETE":
            verb = "delete" if name else "deletecollection"
        if verb is None:  # GET
            verb = "watch" if watching else ("get" if name else "list")
        return group, f"{resource}/{sub}" if sub else resource, verb


class RecordingProxy:
    """A plain-HTTP proxy on 127.0.0.1 in front of the cluster's API server that records every request
    passing through it (method, path, status). The client's own credentials go through unchanged,
    so it is still the client's account that the API server authorizes; the proxy adds none."""

    _HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
            "content-length", "host", "date", "server"}

    def __init__(self, cluster):
        kubeconfig = yaml.safe_load(Path(cluster.kubeconfig).read_text())
        upstream = kubeconfig["clusters"][0]["cluster"]
        target = urlsplit(upstream["server"])
        context = ssl.create_default_context(cafile=upstream.get("certificate-authority"))
        if upstream.get("certificate-authority-data"):
            import base64
            context = ssl.create_default_context(cadata=base64.b64decode(upstream["certificate-authority-data"]).decode())
        self.requests: list[Request] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            upstream_conn: http.client.HTTPSConnection | None = None

            def log_message(self, *_: Any) -> None:
                pass

            def forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in proxy._HOP}
                if self.upstream_conn is None:
                    self.upstream_conn = http.client.HTTPSConnection(target.hostname, target.port, context=context)
                try:
                    self.upstream_conn.request(self.command, self.path, body=body, headers=headers)
                    resp = self.upstream_conn.getresponse()
                except (OSError, http.client.HTTPException):
                    self.upstream_conn.close()
                    self.upstream_conn = None
                    raise
                proxy.requests.append(Request(self.command, self.path, resp.status))
                self.send_response(resp.status)
                for key, value in resp.getheaders():
                    if key.lower() not in proxy._HOP:
                        self.send_header(key, value)
                if resp.status in (204, 304):
                    self.end_headers()
                    resp.read()
                    return
                # Re-chunked as it comes: watch responses are streams that never end on their own.
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                while chunk := resp.read1(65536):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                resp.read()  # marks the response done, so the upstream connection takes the next request
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = forward

            def finish(self) -> None:
                if self.upstream_conn is not None:
                    self.upstream_conn.close()
                super().finish()

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="recording-proxy", daemon=True)

    def __enter__(self) -> "RecordingProxy":
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def used(self) -> set[tuple[str, str, str]]:
        """Every (group, resource, verb) a request was made for, answered or refused. A server-side apply
        that created its object (201) was authorized as a create too, so it counts as both."""
        found = set()
        for request in list(self.requests):
            if (attributes := request.attributes()) is None:
                continue
            found.add(attributes)
            if request.method == "PATCH" and request.status == 201:
                found.add((attributes[0], attributes[1], "create"))
        return found

    def refused(self) -> list[Request]:
        return [r for r in list(self.requests) if r.status in (401, 403)]


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up on a watch stream: nothing to report


def granted(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """The (group, resource, verb) triples a list of rules grants (no wildcards expected)."""
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule.get("resources", []) for v in rule["verbs"]}

