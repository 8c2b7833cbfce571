"""The generic runtime's parts, without a cluster: merge patches, the cache, the work queue."""

from __future__ import annotations

import threading
import time

from llmops.runtime.cache import Cache
from llmops.runtime.controller import merge_patch
from llmops.runtime.workqueue import RESYNC, WorkQueue


def settle(condition, timeout: float, interval: float = 0.01) -> None:
    """Poll until the worker threads have done what `condition` checks, or the time is up."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(interval)


def obj(kind, name, version, owner=None, namespace="ns"):
    meta = {"name": name, "namespace": namespace, "resourceVersion": str(version), "uid": f"uid-{kind}-{name}"}
    if owner:
        meta["ownerReferences"] = [{"uid": owner, "controller": True}]
    return {"kind": kind, "metadata": meta}


def test_merge_patch_nulls_what_is_gone_and_keeps_what_is_equal():
    old = {"phase": "Running", "progress": {"step": 3, "loss": 1.0}, "message": "x", "conditions": [1]}
    new = {"phase": "Running", "progress": {"step": 4}, "conditions": [1, 2]}
    assert merge_patch(old, new) == {"progress": {"step": 4, "loss": None}, "message": None, "conditions": [1, 2]}


def test_children_are_found_by_owner_uid_and_keys_carry_the_kind():
    cache = Cache()
    cache.put(obj("FineTuneJob", "m", 1))
    cache.put(obj("CompressionJob", "m", 2))
    cache.put(obj("Job", "m-ftj", 3, owner="uid-FineTuneJob-m"))
    cache.put(obj("Job", "m-cpj", 4, owner="uid-CompressionJob-m"))
    assert cache.get("FineTuneJob", "ns", "m")["metadata"]["resourceVersion"] == "1"
    assert cache.get("CompressionJob", "ns", "m")["metadata"]["resourceVersion"] == "2"
    assert [j["metadata"]["name"] for j in cache.owned_by("uid-FineTuneJob-m", "Job")] == ["m-ftj"]
    assert [j["metadata"]["name"] for j in cache.owned_by("uid-CompressionJob-m", "Job")] == ["m-cpj"]


def test_a_child_of_a_deleted_namesake_is_not_found_by_the_new_owner():
    cache = Cache()
    cache.put(obj("Service", "m-ftj-workers", 5, owner="old-uid"))
    assert cache.owned_by("new-uid", "Service") == []


def test_replace_drops_what_a_listing_no_longer_has_but_keeps_newer_objects():
    cache = Cache()
    cache.put(obj("Job", "kept", 10, owner="p"))
    cache.put(obj("Job", "deleted-in-gap", 11, owner="p"))
    cache.put(obj("Job", "created-after-listing", 30, owner="p"))
    cache.put(obj("Job", "other-namespace", 12, owner="q", namespace="elsewhere"))
    dropped = cache.replace("Job", ["ns"], [obj("Job", "kept", 20, owner="p")], list_version=25)
    assert [d["metadata"]["name"] for d in dropped] == ["deleted-in-gap"]
    assert [j["metadata"]["name"] for j in cache.owned_by("p", "Job")] == ["created-after-listing", "kept"]
    assert cache.get("Job", "ns", "kept")["metadata"]["resourceVersion"] == "20"
    assert cache.get("Job", "elsewhere", "other-namespace") is not None  # outside the listing's scope


def test_queue_hands_out_nothing_before_it_is_opened():
    seen = []
    queue = WorkQueue(seen.append, workers=2)
    queue.add("a")
    time.sleep(0.2)
    assert seen == []
    queue.open()
    settle(lambda: seen, 5)
    assert seen == ["a"]
    queue.stop()


def test_urgent_keys_pass_waiting_resyncs():
    order = []
    gate = threading.Event()

    def handle(key):
        gate.wait(5)
        order.append(key)

    queue = WorkQueue(handle, workers=1)
    for i in range(5):
        queue.add(f"resync-{i}", RESYNC)
    queue.add("new")
    queue.add("resync-3")  # an event for a waiting resync makes it urgent
    queue.open()
    gate.set()
    settle(lambda: len(order) >= 6, 5)
    assert order == ["new", "resync-3", "resync-0", "resync-1", "resync-2", "resync-4"]
    queue.stop()


def test_failures_come_back_after_a_delay_without_a_thread_each():
    calls = []

    def handle(key):
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise RuntimeError("transient")

    queue = WorkQueue(handle, workers=1, name="retry-probe", retry_delays=(0.1, 0.2))
    queue.open()
    queue.add("k")
    settle(lambda: len(calls) >= 3, 5)
    assert len(calls) == 3 and calls[1] - calls[0] >= 0.09 and calls[2] - calls[1] >= 0.19
    mine = [t.name for t in threading.enumerate() if t.name.startswith("retry-probe")]
    assert sorted(mine) == ["retry-probe-0", "retry-probe-delays"]  # one worker and the delay thread, nothing per retry
    queue.stop()


# -- the start-up barrier and a paused replica (one method each, with a stand-in for the API) --------

from llmops.controllers import CONTROLLERS  # noqa: E402
from llmops.runtime import peering  # noqa: E402
from llmops.runtime.controller import Runtime  # noqa: E402
from llmops.settings import Settings  # noqa: E402


class ListingKube:
    """Answers LISTs slowly and records what the runtime asked for and in which order."""

    def __init__(self, items_by_kind):
        self.items_by_kind = items_by_kind
        self.calls = []

    def list(self, resource, namespace=None, label_selector=None):
        time.sleep(0.05)
        self.calls.append(resource.kind)
        return [dict(i) for i in self.items_by_kind.get(resource.kind, [])], 100

    def flush_events(self):
        pass


def test_nothing_is_reconciled_before_every_watched_kind_is_listed(monkeypatch):
    ftj = obj("FineTuneJob", "a", 5)
    kube = ListingKube({"FineTuneJob": [ftj], "Job": [obj("Job", "a-ftj", 6, owner="uid-FineTuneJob-a")]})
    runtime = Runtime(CONTROLLERS, Settings(progress_interval=3600), kube=kube, namespaces=["ns"])
    handled = []
    monkeypatch.setattr(runtime, "reconcile", lambda key: handled.append((key, list(kube.calls))) or True)
    runtime.queue.add(("FineTuneJob", "ns", "a"))  # a watch event before the listing is done
    time.sleep(0.2)
    assert handled == []
    runtime.start()
    settle(lambda: handled, 5)
    (key, listed_before), = handled
    assert key == ("FineTuneJob", "ns", "a")
    assert sorted(listed_before) == sorted(r.kind for r, _ in runtime.watched())  # all of them, first
    runtime.stop()


def test_a_paused_replica_does_nothing(monkeypatch):
    runtime = Runtime(CONTROLLERS, Settings(progress_interval=3600), kube=ListingKube({}), namespaces=["ns"])
    handled = []
    monkeypatch.setattr(runtime, "reconcile", lambda key: handled.append(key) or True)
    paused = peering.Peering(identity="me", priority=1, standalone=False, cache_seconds=3600)
    paused._paused, paused._checked_at = True, time.monotonic()  # a peer of higher priority is alive
    monkeypatch.setattr(peering, "_current", paused)
    runtime._handle(("FineTuneJob", "ns", "a"))
    assert handled == [] and runtime.parked == {("FineTuneJob", "ns", "a")}  # kept for when it acts again
    paused._paused = False
    runtime._handle(("FineTuneJob", "ns", "a"))
    assert handled == [("FineTuneJob", "ns", "a")]
    runtime.stop()


def test_a_pending_retry_never_swallows_the_wake_up_of_a_worker():
    """The delay thread and the workers once shared one condition: notify() could wake the delay
    thread instead of the only idle worker, and a new key then sat in the queue until the next event."""
    done = []
    queue = WorkQueue(done.append, workers=1)
    queue.open()
    queue.add_after("later", 3600)  # the delay thread now waits, as a worker does
    for i in range(50):
        queue.add(i)
        settle(lambda: i in done, 2, interval=0.001)
        assert i in done, f"key {i} was never handed to the idle worker"
    queue.stop()


def test_the_cache_keeps_what_plans_read_and_drops_the_bulk():
    cache = Cache()
    job = obj("Job", "j", 1, owner="p")
    job["metadata"]["managedFields"] = [{"manager": "kube-controller-manager"}]
    job["spec"] = {"suspend": False, "parallelism": 2, "activeDeadlineSeconds": 40, "template": {"spec": {"containers": [{}]}}}
    pod = obj("Pod", "p0", 2, owner="uid-Job-j")
    pod["spec"] = {"nodeName": "gpu-0", "containers": [{"image": "x"}]}
    pod["status"] = {"phase": "Running"}
    cache.put(job)
    cache.put(pod)
    kept_job, kept_pod = cache.get("Job", "ns", "j"), cache.get("Pod", "ns", "p0")
    assert kept_job["spec"] == {"suspend": False, "parallelism": 2, "activeDeadlineSeconds": 40}
    assert "managedFields" not in kept_job["metadata"] and kept_job["metadata"]["ownerReferences"]
    assert kept_pod["spec"] == {"nodeName": "gpu-0"} and kept_pod["status"] == {"phase": "Running"}
    assert job["spec"]["template"] and job["metadata"]["managedFields"]  # the caller's object is untouched


def test_the_echo_of_our_own_write_is_not_news():
    cache = Cache()
    assert cache.put(obj("Job", "j", 7, owner="p"))  # our write's response (write-through)
    assert not cache.put(obj("Job", "j", 7, owner="p"))  # the same version again, from the watch
    assert not cache.put(obj("Job", "j", 6, owner="p"))  # an older one
    assert cache.put(obj("Job", "j", 8, owner="p"))


def test_objects_never_reconciled_go_before_events_of_running_ones():
    from llmops.runtime.workqueue import FIRST, URGENT

    order = []
    queue = WorkQueue(order.append, workers=1)
    queue.add("running-pod-event", URGENT)
    queue.add("resync", RESYNC)
    queue.add("new-object", FIRST)
    queue.open()
    settle(lambda: len(order) >= 3, 5)
    assert order == ["new-object", "running-pod-event", "resync"]
    queue.stop()


def test_reserved_workers_start_new_objects_while_the_others_are_busy():
    from llmops.runtime.workqueue import FIRST, URGENT

    busy, started = threading.Event(), []

    def handle(key):
        started.append(key)
        if key.startswith("slow"):
            busy.wait(5)

    queue = WorkQueue(handle, workers=3, first_only=1)
    queue.open()
    queue.add("slow-a", URGENT)
    queue.add("slow-b", URGENT)
    queue.add("slow-c", URGENT)  # both general workers are now stuck; this one waits
    settle(lambda: len(started) >= 2, 2)
    queue.add("new", FIRST)
    settle(lambda: "new" in started, 2)
    assert "new" in started and "slow-c" not in started  # the reserved worker took it, and only it
    busy.set()
    queue.stop()


def test_a_listing_answered_before_a_deletion_does_not_bring_the_object_back():
    """The informer race: LIST answered at rv 12 (the Job still there), DELETED (rv 13) applied,
    then the listing applied. Without a tombstone the deleted Job would live on in the cache."""
    cache = Cache()
    cache.put(obj("Job", "j", 10, owner="p"))
    listing = [obj("Job", "j", 10, owner="p")]
    cache.drop("Job", "ns", "j", version=13)
    assert cache.replace("Job", ["ns"], listing, list_version=12) == []
    assert cache.get("Job", "ns", "j") is None and cache.owned_by("p", "Job") == []
    recreated = obj("Job", "j", 20, owner="p")  # a later listing that really has it: a new incarnation
    cache.replace("Job", ["ns"], [recreated], list_version=21)
    assert cache.get("Job", "ns", "j")["metadata"]["resourceVersion"] == "20"


def test_a_read_answered_before_a_deletion_does_not_bring_the_object_back():
    cache = Cache()
    cache.drop("Job", "ns", "j", version=13)  # the DELETED event came first
    assert not cache.put(obj("Job", "j", 12, owner="p"))  # then a GET's answer from just before it
    assert cache.get("Job", "ns", "j") is None


class PruningKube:
    """An API server whose CRD schema lacks `attempt`: it drops it from every status write."""

    def __init__(self):
        self.patches = []

    def patch_status(self, resource, namespace, name, patch, resource_version):
        self.patches.append(patch)
        stored = {k: v for k, v in patch.items() if k != "attempt"}
        return {**obj(resource.kind, name, 2), "status": stored}

    def event(self, *args):
        pass

    def flush_events(self):
        pass


def test_a_status_field_the_server_prunes_is_written_once_not_forever():
    # The CompressionJob schema lacked attempt/restarts: each reconcile wrote them again, its own
    # write woke it, and the operator patched a finished job ~30 times a second.
    kube = PruningKube()
    runtime = Runtime(CONTROLLERS, Settings(progress_interval=3600), kube=kube, namespaces=["ns"])
    controller = runtime.controllers["CompressionJob"]
    status = {"phase": "Succeeded", "attempt": 0}
    body = {**obj("CompressionJob", "c", 1), "apiVersion": "llmops.dev/v1alpha1", "status": {}}
    runtime._write_status(controller, body, status, [])
    stored = runtime.cache.get("CompressionJob", "ns", "c")
    runtime._write_status(controller, stored, status, [])
    assert kube.patches == [{"phase": "Succeeded", "attempt": 0}]
    runtime.stop()
