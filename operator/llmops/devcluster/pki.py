"""Certificates and keys of the local control plane, made with the openssl CLI.

Clients authenticate with static bearer tokens (--token-auth-file) rather than
client certificates: it keeps the PKI to a CA, one serving certificate, the
service-account signing key and the API server's client certificate for the
kubelet (which authenticates its callers by certificate), while RBAC
authorization stays fully on.
"""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Identity:
    user: str
    groups: tuple[str, ...]


# Who talks to the API server. Bootstrap RBAC gives the named users and the
# system:masters group exactly the rights their components need.
IDENTITIES = {
    "admin": Identity("llmops-admin", ("system:masters",)),
    "controller-manager": Identity("system:kube-controller-manager", ()),
    "scheduler": Identity("system:kube-scheduler", ()),
    # kwok plays every kubelet; node status and pod status updates need broad rights.
    "kwok": Identity("llmops-kwok", ("system:masters",)),
    # The real node. Bootstrap RBAC binds system:node-proxier to system:kube-proxy; the cluster binds
    # system:node to the group system:nodes (there is no Node authorizer).
    "kubelet": Identity("system:node:{node}", ("system:nodes",)),
    "kube-proxy": Identity("system:kube-proxy", ()),
    "local-path-provisioner": Identity("llmops-local-path-provisioner", ("system:masters",)),
}


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(directory: Path, extra_ips: list[str] = (), node_name: str = "local-cpu") -> dict[str, str]:
    """Write CA, serving certificate (valid for `extra_ips` too), SA key, kubelet client certificate
    and token file; return tokens by identity."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    srv_key, srv_csr, srv_crt = directory / "apiserver.key", directory / "apiserver.csr", directory / "apiserver.crt"
    ext = directory / "apiserver.ext"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca_crt),
             "-days", "3650", "-subj", "/CN=llmops-local-ca")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(srv_key), "-out", str(srv_csr), "-subj", "/CN=kube-apiserver")
    ext.write_text(
        "subjectAltName=DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,"
        "IP:127.0.0.1,IP:10.96.0.1" + "".join(f",IP:{ip}" for ip in extra_ips) + "\nextendedKeyUsage=serverAuth\n"
    )
    _openssl("x509", "-req", "-in", str(srv_csr), "-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial",
             "-out", str(srv_crt), "-days", "3650", "-extfile", str(ext))
    # The API server calling kubelets (logs, exec): system:masters passes the kubelet's webhook authorization.
    client_key, client_csr = directory / "apiserver-kubelet-client.key", directory / "apiserver-kubelet-client.csr"
    client_ext = directory / "apiserver-kubelet-client.ext"
    client_ext.write_text("extendedKeyUsage=clientAuth\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(client_key), "-out", str(client_csr),
             "-subj", "/O=system:masters/CN=kube-apiserver-kubelet-client")
    _openssl("x509", "-req", "-in", str(client_csr), "-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial",
             "-out", str(directory / "apiserver-kubelet-client.crt"), "-days", "3650", "-extfile", str(client_ext))
    _openssl("genrsa", "-out", str(directory / "sa.key"), "2048")
    _openssl("rsa", "-in", str(directory / "sa.key"), "-pubout", "-out", str(directory / "sa.pub"))
    tokens = {name: secrets.token_hex(24) for name in IDENTITIES}
    lines = []
    for name, ident in IDENTITIES.items():
        groups, user = ",".join(ident.groups), ident.user.format(node=node_name)
        lines.append(f'{tokens[name]},{user},{user}' + (f',"{groups}"' if groups else ""))
    token_file = directory / "tokens.csv"
    token_file.write_text("\n".join(lines) + "\n")
    token_file.chmod(0o600)
    return tokens
