"""The inspection endpoint: what tests and operators use to look inside the running sandbox.

GET  /requests[?since=SEQ&api=NAME]   counts per API and endpoint, and every request after SEQ
GET  /slack/messages[?since=N]        every Slack message received (channel, text, blocks)
GET  /state/{api}/{object}            current records (salesforce: Account...; hubspot: companies...)
POST /state/{api}/{object}/{id}       change a record as a user would (timestamps move)
DELETE /state/{api}/{object}/{id}     delete (Salesforce) or archive (HubSpot) it
GET|POST /faults                      fault settings; POST {"salesforce": {"error_rate": 0.1}, ...}
GET|POST /clock                       emulator time; POST {"advance_seconds": N}
POST /reset_counters                  forget recorded requests (sequence numbers keep growing)
"""

from __future__ import annotations

from healthsync.connectors.sandbox.http_base import Api, HttpError, Request, Response, Router


class InspectApi(Api):
    name = "inspect"

    def __init__(self, sandbox) -> None:
        super().__init__(Router())
        self.sb = sandbox
        r = self.router.add
        r("GET", r"/requests/?", self.requests)
        r("GET", r"/slack/messages/?", self.messages)
        r("GET", r"/state/(?P<api>\w+)/(?P<obj>[\w-]+)/?", self.state)
        r("POST", r"/state/(?P<api>\w+)/(?P<obj>[\w-]+)/(?P<id>[^/]+)/?", self.modify)
        r("DELETE", r"/state/(?P<api>\w+)/(?P<obj>[\w-]+)/(?P<id>[^/]+)/?", self.delete)
        r("GET", r"/faults/?", self.faults_get)
        r("POST", r"/faults/?", self.faults_set)
        r("GET", r"/clock/?", self.clock_get)
        r("POST", r"/clock/?", self.clock_advance)
        r("POST", r"/reset_counters/?", self.reset_counters)

    def fault_exempt(self, req: Request) -> bool:
        return True

    def not_found(self, req: Request, method_mismatch: bool) -> Response:
        return Response.json(405 if method_mismatch else 404, {"error": f"no such inspection route: {req.method} {req.path}"})

    def _json(self, req: Request) -> dict:
        try:
            body = req.json() or {}
        except ValueError:
            raise HttpError(Response.json(400, {"error": "the body must be JSON"}))
        if not isinstance(body, dict):
            raise HttpError(Response.json(400, {"error": "the body must be a JSON object"}))
        return body

    def _guard(self, fn, *args):
        try:
            return fn(*args)
        except (KeyError, ValueError) as e:
            raise HttpError(Response.json(400, {"error": str(e).strip('"')}))

    def requests(self, req: Request) -> Response:
        since = int(req.arg("since") or 0)
        return Response.json(200, self.sb.requests(since=since, api=req.arg("api")))

    def messages(self, req: Request) -> Response:
        return Response.json(200, self.sb.slack_messages()[int(req.arg("since") or 0):])

    def state(self, req: Request) -> Response:
        return Response.json(200, self._guard(self.sb.records, req.params["api"], req.params["obj"]))

    def modify(self, req: Request) -> Response:
        p = req.params
        return Response.json(200, self._guard(self.sb.modify, p["api"], p["obj"], p["id"], self._json(req)))

    def delete(self, req: Request) -> Response:
        p = req.params
        self._guard(self.sb.delete, p["api"], p["obj"], p["id"])
        return Response(204)

    def faults_get(self, req: Request) -> Response:
        return Response.json(200, self.sb.faults.snapshot())

    def faults_set(self, req: Request) -> Response:
        body = self._json(req)
        self._guard(self.sb.set_faults, body)
        return Response.json(200, self.sb.faults.snapshot())

    def clock_get(self, req: Request) -> Response:
        return Response.json(200, {"now": self.sb.clock.now().isoformat(), "offset_seconds": self.sb.clock.offset_seconds})

    def clock_advance(self, req: Request) -> Response:
        body = self._json(req)
        try:
            seconds = float(body.get("advance_seconds", 0))
        except (TypeError, ValueError):
            return Response.json(400, {"error": "advance_seconds must be a number"})
        now = self._guard(self.sb.advance_clock, seconds)
        return Response.json(200, {"now": now.isoformat(), "offset_seconds": self.sb.clock.offset_seconds})

    def reset_counters(self, req: Request) -> Response:
        self.sb.recorder.reset()
        return Response.json(200, {"last_seq": self.sb.recorder.last_seq})
