"""Faults injected into a real job process, for the claims scenarios (scenarios/claims.py).

Python imports ``sitecustomize`` at start-up from ``sys.path``: a scenario starts the job
with this folder first on ``PYTHONPATH`` and ``MEDIMG_FAULT`` set, and the job runs its
own code with one fault wrapped around the sink. Never on a production path.

- ``retry_after_claim:N``: every Nth bundle of a sink fails after its claims and before
  anything is sent; the bundle is then run again in the same process and DoFn instance,
  as a runner retries a failed bundle (the local runner itself does not retry).
- ``kill_after_ack:N``: at the Nth bundle of a sink, once the broker acknowledged its
  outcomes and before the claims are marked done, the process SIGKILLs itself.

Each fault injected is a line in the file ``MEDIMG_FAULT_LOG`` names, so a scenario
reports how many it caused rather than assuming.
"""

import os
import signal

_FAULT = os.environ.get("MEDIMG_FAULT", "")
_LOG = os.environ.get("MEDIMG_FAULT_LOG")


def _note(what: str) -> None:
    if _LOG:
        with open(_LOG, "a") as log:
            log.write(what + "\n")
            log.flush()
            os.fsync(log.fileno())


class InjectedFault(RuntimeError):
    """The failure a scenario asked for."""


def _install(kind: str, every: int) -> None:
    from streaming.kafka import sink  # noqa: PLC0415 - after the job's own imports resolve

    publish, finish, process = (sink.PublishToKafka._publish, sink.PublishToKafka.finish_bundle,
                                sink.PublishToKafka.process)
    done = sink.Claims.done
    state = {"bundles": 0}

    def remembering_process(self, record):
        self.__dict__.setdefault("_inputs", []).append(record)
        return process(self, record)

    def failing_publish(self, records):
        if records and getattr(self, "_fail_next", False):
            self._fail_next = False
            _note("bundle failed after its claims")
            raise InjectedFault("injected: the bundle fails after its claims")
        return publish(self, records)

    def retried_finish(self, *args):
        inputs, self._inputs = self.__dict__.get("_inputs", []), []
        if inputs:
            state["bundles"] += 1
            self._fail_next = state["bundles"] % every == 0
        try:
            return finish(self, *args)
        except InjectedFault:
            # The runner's retry of the failed bundle: same process, same DoFn.
            self.start_bundle()
            for record in inputs:
                process(self, record)
            return finish(self, *args)

    def dying_done(self, acknowledged):
        if acknowledged:
            state["bundles"] += 1
            if state["bundles"] == every:
                _note("killed between the ack and mark_done")
                os.kill(os.getpid(), signal.SIGKILL)  # acknowledged, not yet marked done
        return done(self, acknowledged)

    if kind == "retry_after_claim":
        sink.PublishToKafka.process = remembering_process
        sink.PublishToKafka._publish = failing_publish
        sink.PublishToKafka.finish_bundle = retried_finish
    elif kind == "kill_after_ack":
        sink.Claims.done = dying_done
    else:
        raise ValueError(f"unknown MEDIMG_FAULT {kind!r}")


if _FAULT:
    _kind, _, _every = _FAULT.partition(":")
    _install(_kind, int(_every or 1))
