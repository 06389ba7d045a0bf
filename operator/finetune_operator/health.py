"""/healthz and /readyz, served on the operator's own event loop from the first second (a standby too).

/healthz (liveness): the event loop answered. The loop runs kopf's watches and our endpoints, so a
blocked loop fails the probe and the kubelet restarts the pod; a leader that cannot renew its Lease
exits on its own (leader.py), so liveness need not know about the election.

/readyz (readiness): a standby is ready, and a leader is ready once its handlers have started (the
progress and metrics endpoints listen, the controllers run). A standby reports ready on purpose:
- the PodDisruptionBudget (maxUnavailable 1) counts ready pods. Were the standby never ready, the
  leader would be the only healthy pod and could never be evicted: a node drain would hang on it.
- a rolling update waits for the new pod to be ready; a new pod is a standby until the old leader goes.
Readiness and the Service do not fight: the Service selects the label finetune.dev/role=leader as well
(pod_role.py), which only the leader carries, so a ready standby is no endpoint of it and receives no
progress push and no scrape. Readiness keeps a marked pod out of the endpoints while it cannot answer
(a frozen or dying leader fails its probe); the progress endpoint's own check of the Lease covers the
moment before the probe notices. The body says which role answered.
"""

from __future__ import annotations

import asyncio
import enum

from aiohttp import web


class Role(enum.Enum):
    STANDBY = "standby"
    LEADER = "leader"
    SINGLE = "single"  # leader election off: the only copy, leading from the start


class Health:
    def __init__(self) -> None:
        self.role = Role.STANDBY
        self.started = asyncio.Event()  # kopf's ready flag: the startup handlers have finished

    def lead(self, role: Role = Role.LEADER) -> None:
        self.role = role

    def ready(self) -> tuple[bool, str]:
        if self.role is Role.STANDBY:
            return True, "standby: ready to take over"
        if self.started.is_set():
            return True, f"{self.role.value}: handlers started"
        return False, f"{self.role.value}: starting handlers"

    def app(self) -> web.Application:
        async def healthz(_: web.Request) -> web.Response:
            return web.Response(text="ok\n")

        async def readyz(_: web.Request) -> web.Response:
            ready, message = self.ready()
            return web.Response(status=200 if ready else 503, text=message + "\n")

        app = web.Application()
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        return app

    async def serve(self, port: int) -> web.AppRunner:
        """On all interfaces: the kubelet probes the pod's IP."""
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "0.0.0.0", port).start()  # noqa: S104
        return runner
