"""`crm setup` on a HubSpot portal that refuses unique properties on tasks (issue 12 item 5).

HubSpot offers `hasUniqueValue` on companies, deals, tickets, contacts and custom objects;
the emulator refuses it on tasks (connectors/sandbox/BEHAVIOR.md). Setup must still create
the task key property and succeed, through the console script a user runs.
"""

import json
import subprocess
import sys
from pathlib import Path

from hubspot import HubSpot

from healthsync.connectors.sandbox import Sandbox

BIN = Path(sys.executable).with_name("healthsync")


def test_given_unique_task_properties_refused_when_crm_setup_runs_then_it_succeeds_and_the_key_property_exists(tmp_path):
    with Sandbox(accounts=3, seed=2) as sb:
        ready = tmp_path / "ready.json"
        ready.write_text(json.dumps(sb.ready))
        env = {"PATH": str(BIN.parent), "HOME": str(tmp_path), "HEALTHSYNC__STATE__URL": f"sqlite:///{tmp_path}/state.db"}
        done = subprocess.run([str(BIN), "crm", "setup", "--sandbox", str(ready), "--json"], capture_output=True, text=True,
                              env=env, cwd=tmp_path, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "Traceback" not in done.stderr
        client = HubSpot(access_token=sb.ready["hubspot"]["access_token"], host=sb.ready["hubspot"]["host"])
        prop = client.crm.properties.core_api.get_by_name("tasks", "healthsync_key")
        assert prop.name == "healthsync_key" and prop.has_unique_value is False
        checked = subprocess.run([str(BIN), "crm", "check", "--sandbox", str(ready), "--json"], capture_output=True, text=True,
                                 env=env, cwd=tmp_path, timeout=120)
        assert checked.returncode == 0, checked.stdout + checked.stderr[-2000:]
