"""Who the CRM users are and where each CRM lives, remembered for the report.

The report names CSMs (not just their e-mails) and links every account,
opportunity and task to its page in the CRM. Both facts come from the CRMs'
own APIs, once per run, right after the pull:

- owners: the owner/user directory (`connector.pull("owners")`: Salesforce
  Users, HubSpot owners), stored in the replica as object `owners`
  (`owner_id`, `email`, `name`, ...); owners no longer listed become tombstones;
- the instance: `connector.instance_info()` (Salesforce: the login's instance
  URL; HubSpot: portal id and UI domain from `GET /account-info/v3/details`),
  stored in the `crm_instances` table.

Neither is needed to sync, so a CRM that cannot answer (a missing scope, a
timeout) leaves a note and the run goes on; a stop (quota, auth) propagates
like any other call's.
"""

from __future__ import annotations

import logging
from datetime import datetime

from healthsync.config.canonical import as_records
from healthsync.connectors.base import CrmConnector, HealthsyncError, StopRunError
from healthsync.sync.state import StateStore, dumps

log = logging.getLogger(__name__)

#: the replica object holding each CRM's owners (users)
OWNERS = "owners"


def refresh_directory(store: StateStore, connector: CrmConnector, now: datetime) -> list[str]:
    """Store `connector`'s owners and instance information; returns notes for what could not be read."""
    notes: list[str] = []
    crm = connector.name
    try:
        frames = [page.records for page in connector.pull(OWNERS) if page.records is not None and len(page.records)]
        rows = [r for frame in frames for r in as_records(frame) if r.get("owner_id")]
        with store.begin() as conn:
            ids = [str(r["owner_id"]) for r in rows]
            store.upsert_replica(conn, crm, OWNERS, ids, [dumps(r) for r in rows], now)
            gone = sorted(store.live_ids(crm, OWNERS) - set(ids)) if rows else []
            if gone:
                store.mark_deleted(conn, crm, OWNERS, gone, now)
    except StopRunError:
        raise
    except HealthsyncError as exc:
        log.warning("owners of %s not stored: %s", crm, exc)
        notes.append(f"{crm} owners not read (the report shows e-mails only): {exc}")
    try:
        info = connector.instance_info()
        if info:
            store.set_crm_instance(crm, info, now)
    except StopRunError:
        raise
    except HealthsyncError as exc:
        log.warning("instance information of %s not stored: %s", crm, exc)
        notes.append(f"{crm} instance not read (the report links to its records once it is): {exc}")
    return notes
