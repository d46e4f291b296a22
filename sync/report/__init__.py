"""The reports: an interactive portfolio report and a customer-facing QBR page, each one HTML file.

Where things are:

    data.py       the state store read into DataFrames: every number starts here
    links.py      links from the report to each record's page in Salesforce / HubSpot
    payload.py    the data the portfolio page's script receives (compact, compressed, inlined)
    charts.py     the charts as Vega-Lite specs (Altair), compiled to Vega; the inlined Vega script
    render.py     the portfolio report: `write_report` (the run's report stage and `healthsync report`)
    customer.py   the customer-facing page: `write_customer_report` (`healthsync report --account ID --customer`)
    templates/    report.html.j2, customer.html.j2 (jinja2, autoescaped)
    assets/       report.js (the page's filters, tables and charts), report.css

Both files open from disk with no network: scripts, styles, data and charts are inside them.
"""

from healthsync.sync.report.data import NoMatchError
from healthsync.sync.report.render import ReportInfo, ReportStateError, redact_url, write_report

__all__ = ["NoMatchError", "ReportInfo", "ReportStateError", "redact_url", "write_report", "write_customer_report"]


def write_customer_report(*args, **kwargs):
    """See customer.write_customer_report (imported on use: the portfolio report does not need it)."""
    from healthsync.sync.report.customer import write_customer_report as write

    return write(*args, **kwargs)
