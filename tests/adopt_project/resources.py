"""The team's own resources (a module named like dpe's repository's, on purpose)."""

import dagster as dg


class Greeting(dg.ConfigurableResource):
    text: str
