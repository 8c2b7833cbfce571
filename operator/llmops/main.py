"""llmops-operator: the operator process.

    llmops-operator                       # all namespaces
    llmops-operator --namespace team-a    # only some
    llmops-operator --standalone          # no peering (development, tests)

Settings come from LLMOPS_* environment variables (see llmops.settings).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import socket
import sys

import kopf

from .runtime import metrics, peering
from .settings import FINALIZER, PREFIX, Settings

log = logging.getLogger("llmops")


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_) -> None:
    # Our own prefix for everything Kopf stores on objects; chosen once, since
    # changing storage later would make Kopf re-handle every object.
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=PREFIX, key="last-handled-configuration")
    settings.posting.reporting_component = "llmops-operator"
    settings.posting.event_name_prefix = "llmops-"
    settings.posting.level = logging.WARNING  # our reconcilers post their own, meaningful events
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    # Only our children: never watch every pod and Job of the cluster.
    selector = "app.kubernetes.io/managed-by=llmops-operator"
    for plural in ("jobs", "pods", "services", "configmaps"):
        settings.watching.label_selectors[plural] = selector
    settings.batching.worker_limit = 512
    settings.peering.name = "llmops"
    settings.peering.mandatory = False


@kopf.on.probe(id="alive")
def alive(**_) -> bool:
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmops-operator", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--namespace", "-n", action="append", default=[], help="watch this namespace (repeatable); default all")
    parser.add_argument("--standalone", action="store_true", help="no peering with other replicas")
    parser.add_argument("--priority", default=os.environ.get("LLMOPS_PEERING_PRIORITY", "0"),
                        help="peering priority: the highest-priority replica acts, the others stand by; "
                             "'auto' draws a random one (replicas of one Deployment must differ, or all of them pause)")
    parser.add_argument("--liveness", default=os.environ.get("LLMOPS_LIVENESS", "http://0.0.0.0:8080/healthz"))
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        # Kopf logs every watch event it hands us ("Handler ... succeeded"): a line per pod change.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings = Settings.from_env()
    priority = random.randint(1, 1_000_000) if args.priority == "auto" else int(args.priority)
    identity = f"llmops-{socket.gethostname()}-{os.getpid()}"
    peering.configure(peering.Peering(identity=identity, priority=priority, standalone=args.standalone, namespaces=args.namespace))
    metrics.serve(settings.metrics_port)
    from .controllers import CONTROLLERS
    from .runtime.controller import Runtime

    Runtime(CONTROLLERS, settings, namespaces=args.namespace).register()

    log.info("llmops-operator: metrics on :%d, namespaces %s, peering priority %d", settings.metrics_port, args.namespace or "all", priority)
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        standalone=args.standalone,
        priority=priority,
        identity=identity,
        peering_name="llmops",
        liveness_endpoint=args.liveness or None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
