"""Loopback emulators of the Salesforce REST API, HubSpot CRM API and Slack Web API.

`Sandbox` starts all three plus an inspection endpoint; `serve.serve` runs them until
SIGTERM/SIGINT for `healthsync sandbox serve`; `save_world`/`load_world` keep a sandbox's
world between processes (the embedded demo). See BEHAVIOR.md for the behaviour chosen
where the API notes are unverified, and for the `--faults` SPEC syntax.
"""

from healthsync.connectors.sandbox.faults import FaultSettings, parse_spec
from healthsync.connectors.sandbox.sandbox import Sandbox
from healthsync.connectors.sandbox.world import WorldFileError, load_world, save_world

__all__ = ["Sandbox", "FaultSettings", "parse_spec", "save_world", "load_world", "WorldFileError"]
