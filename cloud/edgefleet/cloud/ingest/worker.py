"""One ingest worker: MQTT in, dedupe into the store in batches, commit-acks out after COMMIT."""

from __future__ import annotations

import logging
import selectors
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from edgefleet.cloud.commandsigner import CommandSigner
from edgefleet.cloud.errors import StoreError
from edgefleet.cloud.ingest.base import Chunk, Outcome, Raw, Stage
from edgefleet.cloud.ingest.settings import IngestSettings, IngestStats, WorkerMode
from edgefleet.cloud.ingest.stage_process import ProcessStage
from edgefleet.cloud.ingest.stage_thread import ThreadStage
from edgefleet.cloud.metrics import CloudMetrics
from edgefleet.cloud.mqtt import BrokerAddress, connect, make_client
from edgefleet.cloud.node import CloudNode
from edgefleet.cloud.store.base import TelemetryStore
from edgefleet.protocol import codec, topics
from edgefleet.protocol.messages import Commit

log = logging.getLogger(__name__)

# Where decoding and writing run, by IngestSettings.mode.
STAGES: dict[WorkerMode, Callable[[IngestSettings, TelemetryStore], Stage]] = {
    "process": ProcessStage,
    "thread": ThreadStage,
}


class IngestWorker:
    """Receives device messages, stores them exactly once, and acks what is committed.

    The network thread owns the paho client and does only MQTT: it reads packets (PUBACKing
    them), hands raw (topic, payload) chunks to the stage, and publishes the commit-acks of
    the outcomes the stage sends back. The stage (a child process by default, or a thread)
    checks, decodes, batches and writes each batch in one transaction; a commit-ack is built
    only from a batch the stage has committed. No asyncio object is touched from either side.
    """

    def __init__(
        self,
        settings: IngestSettings,
        store: TelemetryStore,
        node: CloudNode,
        metrics: CloudMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.node = node
        self.metrics = metrics
        self.stats = IngestStats()
        self._address = BrokerAddress.parse(settings.broker_url)
        self._stage = STAGES[settings.mode](settings, store)
        # One signer per worker (its own signer id and sequence): no counter is shared.
        key = settings.command_key
        self._signer = CommandSigner(Path(key)) if key else None
        self._chunk: list[tuple[bytes, Raw]] = []
        self._chunk_at = 0.0
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._thread: threading.Thread | None = None
        self._client, self._props = make_client(
            self._address,
            settings.client_id,
            version=settings.mqtt_version,
            persistent=True,
            session_expiry_s=settings.session_expiry_s,
            max_inflight=settings.max_inflight,
        )
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> IngestWorker:
        """Start the stage, run the network loop on a background thread; return once subscribed."""
        self._stage.start(max(timeout, 30.0))
        self._thread = threading.Thread(
            target=self.run, name=f"ingest-{self.settings.client_id}", daemon=True
        )
        self._thread.start()
        if not self._subscribed.wait(timeout):
            self.stop()
            raise StoreError(
                f"ingest could not subscribe on {self._address.url} within {timeout}s",
                reason="ingest-not-ready",
            )
        return self

    @property
    def ready(self) -> bool:
        """True once the subscription is acknowledged."""
        return self._subscribed.is_set()

    @property
    def stage_pid(self) -> int | None:
        """The process that decodes and writes (None in thread mode)."""
        return self._stage.pid

    def stop(self, timeout: float = 10.0) -> None:
        """Flush what is pending, disconnect and join the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def run(self) -> None:
        """The receive loop (blocking) until :meth:`stop`; the stage must be started."""
        client = self._client
        backoff = 0.1
        while not self._stop.is_set():
            try:
                connect(client, self._address, self._props, persistent=True)
            except OSError as exc:
                log.warning("ingest: cannot reach %s: %s", self._address.url, exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            if self.stats.connected_at is None:
                self.stats.connected_at = time.perf_counter()
            if self.settings.loop == "drain":
                self._drain_loop()
            else:
                self._paho_loop()
            self._submit()  # a lost connection still commits what was read
        self._submit()
        for outcome in self._stage.close(10.0):
            self._apply(outcome)
        client.disconnect()
        while client.want_write() and client.socket() is not None:
            client.loop_write()

    # -- receive loops ---------------------------------------------------------------------
    def _paho_loop(self) -> None:
        """paho's own loop: one select() and at most one packet per call."""
        client = self._client
        while not self._stop.is_set():
            rc = client.loop(timeout=0.01)
            if self._chunk and (
                len(self._chunk) >= self.settings.chunk_max_messages
                or time.time() - self._chunk_at >= 0.002
            ):
                self._submit()
            self._collect()
            if rc != mqtt.MQTT_ERR_SUCCESS:
                return

    def _drain_loop(self) -> None:
        """Wait for the socket, then read packets until it is empty (one wake-up, many packets)."""
        client = self._client
        sock = client.socket()
        if sock is None:
            return
        sel = selectors.DefaultSelector()
        sel.register(sock, selectors.EVENT_READ)
        stage_fd = -1
        try:
            while not self._stop.is_set():
                if client.socket() is not sock:
                    return
                stage_fd = self._watch_stage(sel, stage_fd)
                events = sel.select(0.5)
                if any(key.fileobj is sock for key, _ in events):
                    ok = self._drain(client)
                    self._submit()
                    if not ok:
                        return
                self._collect()
                if client.want_write() and client.loop_write() != mqtt.MQTT_ERR_SUCCESS:
                    return
                if client.loop_misc() != mqtt.MQTT_ERR_SUCCESS:
                    return
        finally:
            sel.close()

    def _watch_stage(self, sel: selectors.BaseSelector, registered: int) -> int:
        """Keep the stage's outcome descriptor in ``sel`` (it changes when a child is replaced)."""
        fd = self._stage.fileno()
        if fd != registered:
            if registered >= 0:
                sel.unregister(registered)
            if fd >= 0:
                sel.register(fd, selectors.EVENT_READ)
        return fd

    def _drain(self, client: mqtt.Client) -> bool:
        """Read packets until one read brings no message: the socket is empty (or a chunk full).

        paho's socket is non-blocking, so the read that finds it empty costs one failed
        ``recv``; asking first (a ``MSG_PEEK`` per packet) cost a system call per message. A
        non-PUBLISH packet also ends the pass early; the next select() resumes at once.
        """
        limit = self.settings.chunk_max_messages
        for _ in range(10_000):
            before = self.stats.messages
            if client.loop_read() != mqtt.MQTT_ERR_SUCCESS:
                return False
            if self.stats.messages == before or len(self._chunk) >= limit:
                break
        return True

    # -- callbacks (run on this worker's thread) ------------------------------------------
    def _on_connect(
        self, client: mqtt.Client, _u: Any, _flags: Any, rc: ReasonCode, _p: Any = None
    ) -> None:
        if rc.is_failure:
            log.error("ingest: broker refused the connection: %s", rc)
            return
        self.stats.connects += 1
        client.subscribe([(f, 1) for f in self.settings.filters()])

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, codes: Any, _p: Any) -> None:
        failed = [c for c in codes if getattr(c, "is_failure", False)]
        if failed:
            log.error("ingest: subscription refused: %s", failed)
            return
        self._subscribed.set()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        # Only collect: the stage checks and decodes. The raw topic bytes (paho's `topic`
        # would decode them) keep a non-UTF-8 topic intact for its quarantine row.
        if not self._chunk:
            self._chunk_at = time.time()
        self._chunk.append((msg._topic, msg.payload))
        self.stats.messages += 1

    # -- the stage -------------------------------------------------------------------------
    def _submit(self) -> None:
        """Hand the messages read so far to the stage (blocks while it is too far behind)."""
        if not self._chunk:
            return
        chunk, self._chunk = Chunk(self._chunk_at, self._chunk), []
        self._stage.submit(chunk)
        self._collect()

    def _collect(self) -> None:
        for outcome in self._stage.outcomes():
            self._apply(outcome)
        self.stats.stage_restarts = self._stage.restarts

    def _apply(self, o: Outcome) -> None:
        """Publish the commit-acks of a committed batch and count what the stage did."""
        now = time.time()
        signer = self._signer
        for fleet, device, ranges, mac_key in o.commits:
            commit = Commit(
                device_id=self.node.node_id,
                boot_id=self.node.boot_id,
                seq=self.node.next_seq(),
                sent_at=now,
                ranges=ranges,
            )
            topic = topics.command(fleet, device, "commit")
            payload = (
                signer.sign(topic, commit, mac_key=mac_key)
                if signer is not None
                else codec.encode(commit)
            )
            self._client.publish(topic, payload, qos=1)
        st = self.stats
        st.commits += len(o.commits)
        st.records += o.records
        st.inserted += sum(o.inserted.values())
        st.duplicates += o.duplicates
        st.throttled += o.throttled
        st.store_errors += o.store_errors
        st.stage_cpu_s += o.cpu_s
        for reason, n in o.quarantined.items():
            st.quarantined += n
            st.by_reason[reason] = st.by_reason.get(reason, 0) + n
        if o.batch_seconds is not None:
            st.batches += 1
        m = self.metrics
        if m is None:
            return
        m.messages.inc(o.valid)
        m.throttled.inc(o.throttled)
        m.store_errors.inc(o.store_errors)
        for reason, n in o.quarantined.items():
            m.quarantined.labels(reason).inc(n)
        if o.batch_seconds is None:
            return
        m.batches.observe(o.batch_seconds)
        for table, n in o.inserted.items():
            m.ingested.labels(table).inc(n)
        m.duplicates.inc(o.duplicates)
        m.commits.inc(len(o.commits))
        m.commit_delay.observe(now - o.batch_started)
        if o.newest_sent_at:
            m.lag.set(now - o.newest_sent_at)
