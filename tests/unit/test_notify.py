"""Notifications: config, signed webhooks to a real local HTTP receiver, retries with backoff,
a dead or slow receiver, SMTP to a tiny local SMTP server, and the run/drift/rollout hooks."""

from __future__ import annotations

import json
import socket
import socketserver
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import ValidationError

from raypipe.config import NotifySink, PipelineConfig
from raypipe.config.platform import PlatformConfig
from raypipe.failures import Failure
from raypipe.notify import SIGNATURE_HEADER, TIMESTAMP_HEADER, Notification, Notifier, effective_sinks, verify
from raypipe.runner.events import RunResult, StageEvent
from raypipe.runner.notify_hook import RunNotifier
from raypipe.runner.states import RunStatus, StageEventKind, StageStatus

SECRET = "s3cret-key"


class Receiver:
    """A real HTTP server on 127.0.0.1 that records every POST; ``statuses`` are answered in
    order (then 200); ``hold`` blocks each request until set."""

    def __init__(self, statuses: list[int] | None = None, hold: threading.Event | None = None) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.statuses = list(statuses or [])
        self.hold = hold
        self.entered = threading.Event()
        self.got = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.entered.set()
                if outer.hold is not None:
                    outer.hold.wait(30)
                with outer.got:
                    outer.requests.append(({k: v for k, v in self.headers.items()}, body))
                    status = outer.statuses.pop(0) if outer.statuses else 200
                    outer.got.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, n: int, timeout: float = 30.0) -> list[tuple[dict[str, str], bytes]]:
        with self.got:
            self.got.wait_for(lambda: len(self.requests) >= n, timeout)
            return list(self.requests)

    def close(self) -> None:
        if self.hold is not None:
            self.hold.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def hook(url: str, **kw: Any) -> dict[str, Any]:
    extra = {k: kw.pop(k) for k in ("events", "waiting_minutes", "retries", "backoff_s") if k in kw}
    return {"webhook": {"url": url, "secret": "${env:RAYPIPE_TEST_HOOK_SECRET}", **kw}, **extra}


# --------------------------------------------------------------------------- config


def test_config_refuses_literal_secrets_and_bad_urls() -> None:
    with pytest.raises(ValidationError, match="reference"):
        NotifySink.model_validate({"webhook": {"url": "https://h/x", "secret": "plain"}})
    with pytest.raises(ValidationError, match="http"):
        NotifySink.model_validate({"webhook": {"url": "file:///etc/passwd"}})
    with pytest.raises(ValidationError, match="password or token"):
        NotifySink.model_validate({"webhook": {"url": "https://h/x?token=abc"}})
    with pytest.raises(ValidationError, match="exactly one"):
        NotifySink.model_validate({"events": ["run_failed"]})
    with pytest.raises(ValidationError, match="reference"):
        NotifySink.model_validate({"smtp": {"host": "h", "from": "a@b", "to": ["c@d"], "user": "u", "password": "pw"}})
    with pytest.raises(ValidationError, match="extra"):
        NotifySink.model_validate({"webhook": {"url": "https://h/x", "sign": True}})
    with pytest.raises(ValidationError, match="run_done"):
        NotifySink.model_validate({"webhook": {"url": "https://h/x"}, "events": ["run_done"]})


def test_pipeline_and_platform_notify_round_trip() -> None:
    doc = {
        "name": "p",
        "stages": [{"name": "a", "kind": "python", "params": {"function": "m:f"}}],
        "notify": [
            hook("${env:HOOK_URL}", format="slack", events=["run_failed"]),
            {"smtp": {"host": "mail", "from": "a@b.c", "to": ["d@e.f"], "user": "u", "password": "${file:/pw}"}},
        ],
    }
    cfg = PipelineConfig.model_validate(doc)
    again = PipelineConfig.model_validate(json.loads(cfg.model_dump_json()))  # what runs.config_json keeps
    assert again.notify == cfg.notify
    assert again.notify is not None and again.notify[1].smtp is not None and again.notify[1].smtp.from_ == "a@b.c"
    platform = PlatformConfig.model_validate({"kind": "platform", "notify": [hook("https://admin/hook")]})
    assert [s.describe() for s in effective_sinks(None, platform.notify)] == ["webhook https://admin"]
    assert effective_sinks([], platform.notify) == []  # the pipeline's own: none at all
    assert len(effective_sinks(cfg.notify, platform.notify)) == 2


# --------------------------------------------------------------------------- webhooks


def test_signed_json_and_slack_webhooks(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYPIPE_TEST_HOOK_SECRET", SECRET)
    monkeypatch.setenv("RAYPIPE_TEST_HOOK_URL", receiver.url)
    n = Notifier([hook(receiver.url), hook("${env:RAYPIPE_TEST_HOOK_URL}", format="slack")])
    event = Notification("run_failed", "raypipe: run r1 (p) failed: train: boom", {"run_id": "r1"})
    n.notify(event)
    assert n.close(30)
    got = receiver.wait_for(2)
    bodies = {}
    for headers, body in got:
        assert verify(SECRET, body, headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER])
        assert not verify("another key", body, headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER])
        old = str(int(headers[TIMESTAMP_HEADER]) - 3600)  # a replay an hour later
        assert not verify(SECRET, body, old, headers[SIGNATURE_HEADER])
        assert headers["X-Raypipe-Delivery"] == event.id
        doc = json.loads(body)
        bodies["slack" if set(doc) == {"text"} else "json"] = doc
    assert bodies["slack"] == {"text": event.text}
    assert bodies["json"]["event"] == "run_failed" and bodies["json"]["detail"] == {"run_id": "r1"}
    assert n.delivered == 2 and n.failed == 0


def test_events_filter(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYPIPE_TEST_HOOK_SECRET", SECRET)
    n = Notifier([hook(receiver.url, events=["gate_failed"])])
    n.notify(Notification("run_succeeded", "ok"))
    n.notify(Notification("gate_failed", "gate"))
    assert n.close(30)
    assert [json.loads(b)["event"] for _, b in receiver.requests] == ["gate_failed"]


def test_retries_with_exponential_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYPIPE_TEST_HOOK_SECRET", SECRET)
    r = Receiver(statuses=[503, 500, 500])
    try:
        n = Notifier([hook(r.url, retries=4, backoff_s=0.05)])
        n.notify(Notification("run_failed", "x"))
        got = r.wait_for(4)
        assert n.close(30)
    finally:
        r.close()
    assert len(got) == 4 and len({h["X-Raypipe-Delivery"] for h, _ in got}) == 1
    assert [(a.attempt, a.ok, a.retry_in) for a in n.attempts] == [
        (0, False, 0.05),
        (1, False, 0.1),
        (2, False, 0.2),
        (3, True, None),
    ]
    assert "HTTP 503" in (n.attempts[0].error or "")
    assert n.delivered == 1


def test_client_errors_are_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYPIPE_TEST_HOOK_SECRET", SECRET)
    r = Receiver(statuses=[404])
    try:
        n = Notifier([hook(r.url, retries=3, backoff_s=0.01)])
        n.notify(Notification("run_failed", "x"))
        assert n.close(30)
    finally:
        r.close()
    assert [(a.ok, a.retry_in) for a in n.attempts] == [(False, None)] and n.failed == 1


def test_unset_secret_fails_that_delivery_only(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAYPIPE_TEST_HOOK_SECRET", raising=False)
    n = Notifier([hook(receiver.url, retries=3)])
    n.notify(Notification("run_failed", "x"))
    assert n.close(30)
    assert n.failed == 1 and "RAYPIPE_TEST_HOOK_SECRET is not set" in (n.attempts[0].error or "")
    assert receiver.requests == []


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def test_dead_receiver_gives_up_at_the_flush_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYPIPE_TEST_HOOK_SECRET", SECRET)
    n = Notifier([hook(f"http://127.0.0.1:{_closed_port()}/x", retries=5, backoff_s=600)])
    n.notify(Notification("run_failed", "x"))
    # the first attempt is refused; its retry (in 600 s) is past the bound: given up at close
    assert n.close(10)  # returns once the retry is given up, not after 600 s
    assert n.attempts and not n.attempts[0].ok and n.attempts[0].retry_in == 600
    assert n.delivered == 0 and n.failed == 1


def test_slow_receiver_never_blocks_notify_or_close(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYPIPE_TEST_HOOK_SECRET", SECRET)
    hold = threading.Event()
    r = Receiver(hold=hold)
    try:
        n = Notifier([hook(r.url, retries=0)], queue_size=2)
        n.notify(Notification("run_failed", "first"))
        assert r.entered.wait(30)  # the receiver holds the first request
        for i in range(5):  # the queue takes 2 more; the rest are dropped, nothing blocks
            n.notify(Notification("run_failed", f"more {i}"))
        assert n.dropped == 3
        assert not n.close(0.2)  # returned while the receiver still holds the request
        assert not hold.is_set() and n.pending() >= 1
    finally:
        r.close()


# --------------------------------------------------------------------------- SMTP


class _SmtpHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        server: Any = self.server
        self.wfile.write(b"220 test ESMTP\r\n")
        mail: dict[str, Any] = {"rcpt": []}
        while True:
            line = self.rfile.readline().decode().rstrip("\r\n")
            if not line:
                return
            cmd = line.split(" ", 1)[0].upper()
            if cmd in ("EHLO", "HELO"):
                self.wfile.write(b"250-test\r\n250 8BITMIME\r\n")
            elif cmd == "MAIL":
                mail["from"] = line
                self.wfile.write(b"250 ok\r\n")
            elif cmd == "RCPT":
                mail["rcpt"].append(line)
                self.wfile.write(b"250 ok\r\n")
            elif cmd == "DATA":
                self.wfile.write(b"354 go\r\n")
                data = []
                while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                    data.append(chunk)
                mail["data"] = b"".join(data).decode()
                server.mails.append(dict(mail))
                self.wfile.write(b"250 queued\r\n")
            elif cmd == "QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 ok\r\n")


def test_smtp_mail_to_a_local_server() -> None:
    server: Any = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SmtpHandler)
    server.daemon_threads = True
    server.mails = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        sink = {"smtp": {"host": "127.0.0.1", "port": port, "from": "raypipe@x.org", "to": ["a@x.org", "b@x.org"]}}
        sink["smtp"]["starttls"] = False
        n = Notifier([sink])
        n.notify(Notification("gate_failed", "raypipe: gate evaluate failed: accuracy 0.5 < 0.9", {"run_id": "r2"}))
        assert n.close(30) and n.delivered == 1
    finally:
        server.shutdown()
        server.server_close()
    [mail] = server.mails
    assert "raypipe@x.org" in mail["from"] and len(mail["rcpt"]) == 2
    assert "Subject: raypipe: gate evaluate failed" in mail["data"] and "run_id: r2" in mail["data"]


# --------------------------------------------------------------------------- hooks


class Collect:
    def __init__(self) -> None:
        self.sent: list[tuple[int, Notification]] = []

    def __call__(self, sink: NotifySink, n: Notification, where: str) -> None:
        self.sent.append((int(where.rsplit("[", 1)[1].rstrip("]")), n))


def test_run_notifier_waiting_gate_and_end() -> None:
    got = Collect()
    sinks = [hook("https://h/a", waiting_minutes=2), hook("https://h/b", events=["run_succeeded"])]
    now = [0.0]
    notes = RunNotifier(Notifier(sinks, sender=got), "p", "r1", clock=lambda: now[0])
    on = notes.on_event
    on(StageEvent("train", StageEventKind.QUEUED, attempt=1))
    for t in (60.0, 130.0, 200.0):  # the executor's "still waiting" notices
        now[0] = t
        on(StageEvent("train", StageEventKind.WAITING, attempt=1, message="needs 1 GPU"))
    on(StageEvent("train", StageEventKind.STARTED, attempt=1))
    now[0] = 500.0
    on(StageEvent("train", StageEventKind.WAITING, attempt=1))  # not queued any more: nothing
    failures = {"gate": Failure("accuracy 0.5 below 0.9", "gate")}
    notes.ended(
        RunResult("r1", RunStatus.FAILED, {"gate": StageStatus.FAILED}, {"gate": "GateFailed"}, 3.0, {}, failures)
    )
    notes.ended(RunResult("r2", RunStatus.SUCCEEDED, {}, {}, 1.0))
    notes.close(30)
    events = [(i, n.event) for i, n in got.sent]
    assert events == [
        (0, "stage_waiting"),
        (0, "gate_failed"),
        (0, "run_failed"),
        (0, "run_succeeded"),
        (1, "run_succeeded"),
    ]
    waiting = got.sent[0][1]
    assert waiting.detail["stage"] == "train" and waiting.detail["waited_s"] == 130.0
    assert "needs 1 GPU" in waiting.text
    assert got.sent[2][1].detail["categories"] == {"gate": "gate"}


def test_no_notify_no_thread() -> None:
    notes = RunNotifier.of(None, None, "p", "r")
    assert notes.notifier is None
    notes.on_event(StageEvent("a", StageEventKind.QUEUED))
    notes.ended(RunResult("r", RunStatus.FAILED))
    notes.close()


def test_drift_and_rollout_notifications() -> None:
    from raypipe.monitoring.monitor import NotifyingSink
    from raypipe.monitoring.monitor_core import NoMetrics
    from raypipe.serving.rollout.controller import rollout_notification
    from raypipe.serving.rollout.settings import Guardrails, RolloutPlan

    got = Collect()
    n = Notifier([hook("https://h/a")], sender=got)
    NotifyingSink("digits", NoMetrics(), n).event(
        {"id": 3, "variant": "v2", "kind": "data", "trigger": True, "drifted_features": ["age", "income"]}
    )
    plan = RolloutPlan(
        rollout_id="digits-1",
        app="digits",
        model="digits",
        baseline="v1",
        candidate="v2",
        steps=[10, 100],
        interval_s=60,
        guardrails=Guardrails(),
        notify=[hook("${env:HOOK_URL}")],
    )
    n.notify(rollout_notification(plan, "rolled_back", {"reason": "error rate 5% > 1%"}))
    n.close(30)
    drift, rollback = (x for _, x in got.sent)
    assert drift.event == "drift_event" and "age, income" in drift.text and drift.detail["app"] == "digits"
    assert rollback.event == "rollout_rolled_back" and "error rate" in rollback.text
    assert rollback.detail["candidate"] == "v2"


def test_loop_cycle_notification() -> None:
    from raypipe.loop.core import LOOP_SERIES, cycle_notification
    from raypipe.store.rollouts import LOOP_FINAL

    note = cycle_notification("digits", "c3", "gate_failed", {"reason": "accuracy 0.5 < 0.9"}, LOOP_FINAL)
    assert note is not None and note.event == "loop_cycle_ended" and note.detail["outcome"] == "gate_failed"
    assert "cycle c3 of app digits ended: gate_failed: accuracy" in note.text
    assert cycle_notification("digits", "c3", "retrain_started", {}, LOOP_FINAL) is None
    assert cycle_notification("digits", LOOP_SERIES, "failed", {}, LOOP_FINAL) is None
