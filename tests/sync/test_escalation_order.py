"""Escalation posts to one conversation are spread out: Slack takes about one message per second per
conversation (crm-api-notes 3.6), so two posts back to back to one person waited out a 429."""

from healthsync.sync.escalation import _Route, _spread


def test_posts_to_one_conversation_are_spread_round_robin_keeping_their_own_order():
    def route(dest: str, kind: str, level: str) -> _Route:
        return _Route(dest=dest, channel=None, msgs=[], kind=kind, level=level)

    routes = [route("D_ANA", "alert", "owner"), route("D_ANA", "escalation", "manager"), route("D_BO", "alert", "owner"),
              route("C_FALLBACK", "alert", "owner"), route("D_ANA", "recovery", "manager"), route("D_BO", "escalation", "vp")]
    order = [(r.dest, r.kind) for r in _spread(routes)]
    assert order == [("D_ANA", "alert"), ("D_BO", "alert"), ("C_FALLBACK", "alert"),
                     ("D_ANA", "escalation"), ("D_BO", "escalation"), ("D_ANA", "recovery")]
    assert sorted(map(id, _spread(routes))) == sorted(map(id, routes))  # every route once
