"""The ready file tells connectors which HubSpot tier the sandbox enforces, so pacing matches it."""

from healthsync.config.settings import load_settings
from healthsync.connectors.hubspot import hubspot_from_ready
from healthsync.connectors.sandbox import Sandbox


def test_given_a_starter_sandbox_then_the_connector_paces_for_100_requests_per_10_seconds():
    settings = load_settings()
    with Sandbox(accounts=3, seed=1, hubspot_tier="starter") as sb:
        assert sb.ready["hubspot"]["tier"] == "starter"
        hs = hubspot_from_ready(sb.ready, settings.mapping.hubspot.model_dump())
        try:
            assert hs.tier == "starter"
        finally:
            hs.close()
